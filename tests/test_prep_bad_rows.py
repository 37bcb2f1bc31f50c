"""Damaged rows in a streamed conversion are skipped and listed (file, line, reason); --strict stops at the first.

The TSV is generated here: good rows of the MS-Celeb faces layout with one row of each kind of damage among them
(wrong column count, unusable MID, FaceRectangle not base64 / not 16 bytes, image not base64 / not an image).
"""

from __future__ import annotations

import base64
import csv
import json
import re
import runpy
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facerco.prep.align import encode_image
from facerco.prep.stream import BAD_ROWS_NAME

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "data_prep" / "msceleb_tsv.py"

# line number -> (the damaged TSV line's columns, a word its recorded reason must hold)
_RECT = base64.b64encode(struct.pack("<4f", 10.0, 20.0, 100.0, 110.0)).decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _good(mid: str, rank: int, img: np.ndarray) -> list[str]:
    return [mid, str(rank), "http://x/i.jpg", "http://x/p.html", "FaceId-0", _RECT, _b64(encode_image(img, ".jpg"))]


def _write_tsv(path: Path) -> tuple[list[str], dict[int, str]]:
    """14 good rows with 6 damaged ones among them; returns the good keys and {bad line: reason word}."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, size=(40, 36, 3), dtype=np.uint8)
    good = [_good(f"m.0{i % 3}", i, img) for i in range(14)]
    bad = {
        3: (["m.0x", "1", "u", "p", "FaceId-0"], "columns"),
        6: (_good("..", 1, img), "file name"),
        9: (_good("m.0y", 1, img)[:5] + ["@@not base64@@", good[0][6]], "base64"),
        11: (_good("m.0y", 2, img)[:5] + [_b64(b"twelve bytes"), good[0][6]], "16"),
        14: (_good("m.0y", 3, img)[:6] + ["%%%"], "base64"),
        17: (_good("m.0y", 4, img)[:6] + [_b64(b"this is not a JPEG")], "decodable"),
    }
    lines, it = [], iter(good)
    for line_no in range(1, len(good) + len(bad) + 1):
        lines.append(bad[line_no][0] if line_no in bad else next(it))
    path.write_text("".join("\t".join(cols) + "\n" for cols in lines))
    return [f"{cols[0]}/{cols[1]}-{cols[4]}.jpg" for cols in good], {k: v[1] for k, v in bad.items()}


_PROGRESS = re.compile(r"^(align|pack): .*img")  # tqdm bars, also on stderr


def _read_bad(out: Path) -> list[dict[str, str]]:
    with open(out / BAD_ROWS_NAME, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_rows_are_skipped_listed_and_counted_then_resume(tmp_path, workers, capsys):
    tsv = tmp_path / "faces.tsv"
    keys, bad = _write_tsv(tsv)
    out, rec = tmp_path / "out", tmp_path / "rec"
    main = runpy.run_path(str(RECIPE))["main"]
    # a first, partial run (the first 5 good images), then the full run resumes it
    assert main([str(tsv), str(out), "--extract-only", "--workers", workers, "--limit", "5"]) == 0
    assert main([str(tsv), str(out), "--extract-only", "--workers", workers, "--pack", str(rec)]) == 0
    printed = capsys.readouterr().out
    assert all((out / k).is_file() for k in keys)
    rows = _read_bad(out)
    assert sorted(int(r["line"]) for r in rows) == sorted(bad)  # each listed once, though met by both runs
    for r in rows:
        assert Path(r["file"]).name == "faces.tsv" and bad[int(r["line"])] in r["reason"], r
    summary = json.loads((out / "msceleb_report.json").read_text())
    assert summary["aligned"] == len(keys) - 5 and summary["skipped"] >= 5 and summary["failed"] == 0
    assert summary["bad_rows"] == len(bad) and summary["bad_rows_report"] == str(out / BAD_ROWS_NAME)
    assert f"{len(bad)} bad rows" in printed

    from facerco.data.datasets import RecordDataset

    assert len(RecordDataset(rec)) == len(keys)
    # a third run finds nothing new and lists nothing twice
    assert main([str(tsv), str(out), "--extract-only", "--workers", workers]) == 0
    summary = json.loads((out / "msceleb_report.json").read_text())
    assert summary["aligned"] == 0 and summary["bad"] == 0 and summary["bad_rows"] == len(bad)
    assert len(_read_bad(out)) == len(bad)


def test_strict_stops_at_the_first_bad_line_with_one_line_error(tmp_path):
    tsv = tmp_path / "faces.tsv"
    keys, _ = _write_tsv(tsv)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(RECIPE), str(tsv), str(out), "--extract-only", "--workers", "1", "--strict"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.strip() and not _PROGRESS.match(line)]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert err[0].startswith("msceleb_tsv: error: ")
    assert "faces.tsv: line 3:" in err[0] and "columns" in err[0]
    assert (out / keys[0]).is_file() and (out / keys[1]).is_file()  # what came before is converted
    assert not (out / BAD_ROWS_NAME).exists() or not _read_bad(out)


def test_damaged_rectangle_without_hint_is_not_a_bad_row(tmp_path):
    """--no-hint never reads the FaceRectangle, so a damaged one does not cost the image."""
    from facerco.prep.msceleb import convert_tsv

    tsv = tmp_path / "faces.tsv"
    keys, bad = _write_tsv(tsv)
    s = convert_tsv(tsv, tmp_path / "out", None, use_hint=False, progress=False)
    assert s["aligned"] == len(keys) + 2 and s["bad"] == len(bad) - 2


def test_damaged_records_of_a_rec_are_skipped_and_listed(tmp_path):
    """rec_realign: a record whose payload is not an image, and one whose part header is broken, are listed; the
    rest are re-aligned."""
    from facerco.data.datasets import RecordDataset
    from facerco.prep.pack import pack_folder
    from facerco.prep.realign import rec_items

    rng = np.random.default_rng(1)
    src = tmp_path / "faces"
    for i in range(6):
        (src / f"id{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"id{i % 2}" / f"{i}.jpg").write_bytes(encode_image(rng.integers(0, 255, (112, 112, 3), np.uint8)))
    pack_folder(src, tmp_path / "rec", progress=False)
    ds = RecordDataset(tmp_path / "rec")
    offsets = [int(o) for o in ds._offsets]
    raw = bytearray((tmp_path / "rec" / "train.rec").read_bytes())
    raw[offsets[1] + 8 + 24 : offsets[1] + 8 + 40] = b"\x00" * 16  # JPEG header of record 1 -> not an image
    lrec = struct.unpack_from("<I", raw, offsets[4] + 4)[0]
    struct.pack_into("<I", raw, offsets[4] + 4, lrec | 2 << 29)  # record 4 claims to continue a record: unreadable
    (tmp_path / "rec" / "train.rec").write_bytes(bytes(raw))
    keys = [it.key for it in rec_items(tmp_path / "rec") if hasattr(it, "data")]
    assert len(keys) == 5  # the broken header is a bad row already at reading
    main = runpy.run_path(str(ROOT / "data_prep" / "rec_realign.py"))["main"]
    lm = tmp_path / "lm.csv"
    from facerco.prep.align import ARCFACE_TEMPLATE_112

    with open(lm, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["path"] + [f"{a}{i}" for i in range(1, 6) for a in "xy"])
        w.writerows([k, *ARCFACE_TEMPLATE_112.reshape(-1)] for k in keys)
    args = [str(tmp_path / "rec"), str(tmp_path / "re"), "--detector", "landmarks", "--landmarks", str(lm)]
    assert main([*args, "--workers", "1"]) == 0
    rows = _read_bad(tmp_path / "re")
    assert len(rows) == 2 and all(Path(r["file"]).name == "train.rec" for r in rows)
    assert any("decodable" in r["reason"] for r in rows)
    summary = json.loads((tmp_path / "re" / "realign_report.json").read_text())
    assert summary["aligned"] == 4 and summary["bad_rows"] == 2


@pytest.mark.parametrize("recipe", ["msceleb_tsv", "folder_to_rec"])
def test_detector_that_cannot_start_in_workers_is_one_error_not_a_hang(tmp_path, recipe):
    """A bad landmarks file with --workers 2 used to make the pool restart crashing workers for ever."""
    tsv = tmp_path / "faces.tsv"
    _write_tsv(tsv)
    tsv.write_text("".join(tsv.read_text().splitlines(keepends=True)[:2]))  # two good lines
    (tmp_path / "photos" / "p0").mkdir(parents=True)
    (tmp_path / "photos" / "p0" / "a.jpg").write_bytes(encode_image(np.zeros((40, 40, 3), np.uint8)))
    (tmp_path / "lm.csv").write_text("path,x1\n")
    src = [str(tsv), str(tmp_path / "out")] if recipe == "msceleb_tsv" else [
        str(tmp_path / "photos"), str(tmp_path / "aligned"), str(tmp_path / "rec")]
    cmd = [sys.executable, str(ROOT / "data_prep" / f"{recipe}.py"), *src, "--workers", "2",
           "--detector", "landmarks", "--landmarks", str(tmp_path / "lm.csv")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    err = [line for line in proc.stderr.splitlines() if line.strip() and not _PROGRESS.match(line)]
    assert proc.returncode == 1 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "landmarks detector cannot start" in err[0] and "lm.csv" in err[0]
