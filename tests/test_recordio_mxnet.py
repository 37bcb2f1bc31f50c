"""Cross-check against the reference implementation: mxnet 1.9.1's recordio, run in a separate interpreter.

FACERCO_MXNET_PYTHON must point to a python with mxnet (CI builds .mxvenv: mxnet==1.9.1 numpy==1.26.4
opencv-python==4.11.0.86; ENVIRONMENT.md). mxnet writes a .rec that facerco must read identically (multi-part records,
array labels, the insightface header) and that facerco's writer reproduces byte for byte; mxnet reads facerco's
insightface dataset identically.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from facerco.data.recordio import (
    MAGIC,
    InsightfaceWriter,
    IRHeader,
    RecordReader,
    RecordWriter,
    pack,
    read_dataset_header,
    unpack,
)

pytestmark = pytest.mark.mxnet

M = struct.pack("<I", MAGIC)

_SCRIPT = r"""
import json, sys
import numpy as np
np.bool = bool  # mxnet 1.9.1 predates numpy 1.24
import mxnet as mx

mode, spec_path, rec, idx, out = sys.argv[1:6]

def header_json(h, payload):
    label = h.label.tolist() if isinstance(h.label, np.ndarray) else float(h.label)
    return {"flag": int(h.flag), "label": label, "id": int(h.id), "id2": int(h.id2), "payload": payload.hex()}

if mode == "arcface":  # what insightface arcface_torch's MXFaceDataset does with a dataset folder
    r = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    h0, _ = mx.recordio.unpack(r.read_idx(0))
    keys = list(range(1, int(h0.label[0]))) if h0.flag > 0 else list(r.keys)
    rows = []
    for key in keys:
        h, img = mx.recordio.unpack(r.read_idx(key))
        label = h.label if not isinstance(h.label, np.ndarray) else h.label[0]
        arr = mx.image.imdecode(img).asnumpy()  # RGB
        mean = arr.reshape(-1, 3).mean(0).tolist()
        rows.append({"key": key, "label": int(label), "shape": list(arr.shape), "mean": mean})
    json.dump(rows, open(out, "w"))
elif mode == "write":
    spec = json.load(open(spec_path))
    w = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
    for item in spec:
        h = mx.recordio.IRHeader(0, item["label"], item["id"], item["id2"])
        w.write_idx(item["key"], mx.recordio.pack(h, bytes.fromhex(item["payload"])))
    w.close()
else:
    r = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    records = {}
    for key in r.keys:
        h, payload = mx.recordio.unpack(r.read_idx(key))
        records[str(key)] = header_json(h, payload)
    h0, _ = mx.recordio.unpack(r.read_idx(0))
    seq = mx.recordio.MXRecordIO(rec, "r")
    sequential = []
    while True:
        item = seq.read()
        if item is None:
            break
        sequential.append(item.hex())
    json.dump({"records": records, "header0": [int(x) for x in h0.label], "sequential": sequential}, open(out, "w"))
"""


def _mxnet_python() -> str:
    exe = os.environ.get("FACERCO_MXNET_PYTHON", "")
    if not exe:
        pytest.skip("FACERCO_MXNET_PYTHON not set (a python with mxnet 1.9.1; see ENVIRONMENT.md)")
    if not Path(exe).is_file():
        pytest.fail(f"FACERCO_MXNET_PYTHON={exe} does not exist")
    return exe


def _run(tmp_path: Path, *args: str) -> None:
    script = tmp_path / "mx_script.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([_mxnet_python(), str(script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mxnet script failed:\n{proc.stderr[-3000:]}"


def _spec() -> list[dict]:
    rng = np.random.default_rng(1)
    items = []
    # insightface layout: record 0 header (images 1..4, identities 5..6), array labels, magic-bearing payloads
    items.append({"key": 0, "label": [5.0, 7.0], "id": 0, "id2": 0, "payload": ""})
    payloads = [
        rng.bytes(37),
        b"JPEG" + M + rng.bytes(9) + M + b"end!",  # two aligned magics (after the 24-byte header): 3 parts
        M + rng.bytes(100),
        rng.bytes(3) + M + rng.bytes(5),  # unaligned: one part
    ]
    labels: list = [0.0, [1.0, 0.25, -7.5], 1.0, [1.0, 2.0]]
    for k, (payload, label) in enumerate(zip(payloads, labels), 1):
        items.append({"key": k, "label": label, "id": k, "id2": 0, "payload": payload.hex()})
    items.append({"key": 5, "label": [1.0, 3.0], "id": 0, "id2": 0, "payload": ""})
    items.append({"key": 6, "label": [3.0, 5.0], "id": 0, "id2": 0, "payload": ""})
    return items


def test_facerco_reads_mxnet_rec_identically_and_writes_the_same_bytes(tmp_path):
    spec = _spec()
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _run(tmp_path, "write", str(tmp_path / "spec.json"), str(tmp_path / "mx.rec"), str(tmp_path / "mx.idx"), "-")
    mx_rec = (tmp_path / "mx.rec").read_bytes()
    assert mx_rec.count(M) > len(spec), "mxnet should have split the magic-bearing payloads into parts"

    for reader in (RecordReader(tmp_path / "mx.rec"), RecordReader(tmp_path / "mx.rec", idx_path=None)):
        assert reader.keys.tolist() == [item["key"] for item in spec]
        for item in spec:
            header, payload = unpack(reader.read(item["key"]))
            assert payload == bytes.fromhex(item["payload"])
            assert (header.id, header.id2) == (item["id"], item["id2"])
            if isinstance(item["label"], list):
                assert header.flag == len(item["label"])
                np.testing.assert_array_equal(header.label, np.asarray(item["label"], dtype=np.float32))
            else:
                assert header.flag == 0 and header.label == item["label"]
    dataset_header = read_dataset_header(RecordReader(tmp_path / "mx.rec"))
    assert (dataset_header.id_start, dataset_header.id_end) == (5, 7)

    with RecordWriter(tmp_path / "fc.rec", tmp_path / "fc.idx") as w:
        for item in spec:
            w.write(
                pack(IRHeader(0, item["label"], item["id"], item["id2"]), bytes.fromhex(item["payload"])), item["key"]
            )
    assert (tmp_path / "fc.rec").read_bytes() == mx_rec
    assert (tmp_path / "fc.idx").read_text() == (tmp_path / "mx.idx").read_text()


def test_mxnet_reads_facerco_dataset_identically(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.bytes(50) + M + rng.bytes(7), M + M + rng.bytes(20), rng.bytes(64), rng.bytes(1) + M]
    labels = [0, 0, 1, 3]
    with InsightfaceWriter(tmp_path / "train.rec", tmp_path / "train.idx", tmp_path / "property") as w:
        for img, lab in zip(images, labels):
            w.add(img, lab)
    _run(tmp_path, "read", "-", str(tmp_path / "train.rec"), str(tmp_path / "train.idx"), str(tmp_path / "out.json"))
    got = json.loads((tmp_path / "out.json").read_text())
    reader = RecordReader(tmp_path / "train.rec")
    assert got["header0"] == [5, 9]
    assert sorted(int(k) for k in got["records"]) == reader.keys.tolist()
    assert got["sequential"] == [reader.read(int(k)).hex() for k in reader.keys]
    for key in reader.keys.tolist():
        header, payload = unpack(reader.read(key))
        mx = got["records"][str(key)]
        assert bytes.fromhex(mx["payload"]) == payload
        assert (mx["flag"], mx["id"], mx["id2"]) == (header.flag, header.id, header.id2)
        label = header.label.tolist() if header.flag else float(header.label)
        assert mx["label"] == label
    for key, (img, lab) in enumerate(zip(images, labels), 1):
        mx = got["records"][str(key)]
        assert bytes.fromhex(mx["payload"]) == img and mx["label"] == float(lab)
    # identity records, as insightface readers use them
    assert [got["records"][str(k)]["label"] for k in range(5, 9)] == [[1.0, 3.0], [3.0, 4.0], [4.0, 4.0], [4.0, 5.0]]


def test_insightface_reader_accepts_a_packed_folder(tmp_path):
    """`facerco pack` output read the way arcface_torch's MXFaceDataset reads it (mxnet recordio + mx.image)."""
    import cv2

    from facerco.data.datasets import RecordDataset
    from facerco.prep.pack import pack_folder

    rng = np.random.default_rng(3)
    for ident in ("id_a", "id_b", "id_c"):
        (tmp_path / "src" / ident).mkdir(parents=True)
        for j in range(2):
            img = cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (0, 0), 3)
            cv2.imwrite(str(tmp_path / "src" / ident / f"{j}.png"), img)
    pack_folder(tmp_path / "src", tmp_path / "ds", progress=False)
    ds = tmp_path / "ds"
    _run(tmp_path, "arcface", "-", str(ds / "train.rec"), str(ds / "train.idx"), str(tmp_path / "out.json"))
    rows = json.loads((tmp_path / "out.json").read_text())
    dataset = RecordDataset(ds)
    assert [r["key"] for r in rows] == dataset.keys.tolist()
    assert [r["label"] for r in rows] == dataset.labels.tolist() == [0, 0, 1, 1, 2, 2]
    for i, row in enumerate(rows):
        img = dataset.read_image(i)
        assert row["shape"] == [112, 112, 3]
        np.testing.assert_allclose(row["mean"], img.reshape(-1, 3).mean(0), atol=1.0)  # decoders may differ slightly
