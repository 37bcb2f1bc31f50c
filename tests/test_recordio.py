"""RecordIO container, IRHeader payloads and insightface conventions, checked against hand-built bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from facerco.data.recordio import (
    MAGIC,
    InsightfaceWriter,
    IRHeader,
    RecordIOError,
    RecordReader,
    RecordWriter,
    encode_record,
    identity_ranges,
    pack,
    read_dataset_header,
    read_idx,
    read_property,
    unpack,
)

M = struct.pack("<I", MAGIC)


def _hand_record(cflag: int, payload: bytes) -> bytes:
    """One part written by hand from FORMATS.md §1 (independent of the writer)."""
    return struct.pack("<II", 0xCED7230A, (cflag << 29) | len(payload)) + payload + b"\0" * ((4 - len(payload) % 4) % 4)


def test_single_record_bytes_match_hand_encoding():
    assert encode_record(b"abcde") == _hand_record(0, b"abcde")
    assert encode_record(b"") == _hand_record(0, b"")
    assert len(encode_record(b"abcd")) == 12


def test_magic_at_aligned_positions_splits_into_parts():
    payload = b"abcd" + M + b"efgh" + M + b"xy"
    expected = _hand_record(1, b"abcd") + _hand_record(2, b"efgh") + _hand_record(3, b"xy")
    assert encode_record(payload) == expected
    # magic at the very start and at the end: empty first/last parts
    assert encode_record(M + b"ab") == _hand_record(1, b"") + _hand_record(3, b"ab")
    assert encode_record(b"abcd" + M) == _hand_record(1, b"abcd") + _hand_record(3, b"")
    # unaligned magic is left alone
    assert encode_record(b"a" + M + b"bcd") == _hand_record(0, b"a" + M + b"bcd")


def test_round_trip_with_and_without_index(tmp_path):
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(int(n)) for n in rng.integers(0, 300, 40)]
    payloads[3] = b"1234" + M + b"5678" + M + M + b"9"  # multi-part, with an empty middle part
    payloads[7] = M
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        offsets = [w.write(p) for p in payloads]
    keys, idx_offsets = read_idx(tmp_path / "a.idx")
    assert keys.tolist() == list(range(40)) and idx_offsets.tolist() == offsets
    with_idx = RecordReader(tmp_path / "a.rec")
    assert with_idx.idx_path is not None
    assert [with_idx.read(k) for k in range(40)] == payloads
    scanned = RecordReader(tmp_path / "a.rec", idx_path=None)
    assert scanned.offsets.tolist() == offsets and scanned.keys.tolist() == list(range(40))
    assert [p for _, p in scanned.scan()] == payloads
    assert [scanned.read(k) for k in reversed(range(40))] == payloads[::-1]


def test_custom_keys_random_access(tmp_path):
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        for key in (10, 5, 99):
            w.write(f"payload-{key}".encode(), key=key)
    r = RecordReader(tmp_path / "a.rec")
    assert r.read(99) == b"payload-99" and r.read(5) == b"payload-5"
    with pytest.raises(KeyError, match="key 7"):
        r.read(7)


def test_irheader_scalar_and_array_labels():
    rec = pack(IRHeader(0, 3.0, 7, 8), b"IMG")
    assert rec[:24] == struct.pack("<IfQQ", 0, 3.0, 7, 8)
    header, payload = unpack(rec)
    assert (header.flag, header.label, header.id, header.id2, payload) == (0, 3.0, 7, 8, b"IMG")
    rec = pack(IRHeader(0, [1.5, 2.0, -3.0], 1, 0), b"IMG")  # the label decides the flag, as in mxnet
    assert rec[:24] == struct.pack("<IfQQ", 3, 0.0, 1, 0)
    header, payload = unpack(rec)
    assert header.flag == 3 and header.label.dtype == np.float32
    np.testing.assert_array_equal(header.label, [1.5, 2.0, -3.0])
    assert payload == b"IMG"
    with pytest.raises(ValueError, match="shorter"):
        unpack(b"short")


def test_insightface_header_identity_records_and_property(tmp_path):
    labels = [0, 0, 0, 2, 2, 3]  # class 1 has no image: empty range
    with InsightfaceWriter(tmp_path / "train.rec", tmp_path / "train.idx", tmp_path / "property") as w:
        keys = [w.add(f"img{i}".encode() + M, lab) for i, lab in enumerate(labels)]
    assert keys == [1, 2, 3, 4, 5, 6]
    r = RecordReader(tmp_path / "train.rec")
    h = read_dataset_header(r)
    assert (h.id_start, h.id_end, h.num_images, h.num_identities) == (7, 11, 6, 4)
    h0 = unpack(r.read(0))[0]
    assert h0.flag == 2 and h0.label.tolist() == [7.0, 11.0]
    assert identity_ranges(r, h) == [(1, 4), (4, 4), (4, 6), (6, 7)]
    for key, lab in zip(keys, labels):
        header, payload = unpack(r.read(key))
        assert header.flag == 0 and header.label == lab and payload.endswith(M)
    assert read_property(tmp_path / "property") == (4, 112, 112)
    with (
        pytest.raises(ValueError, match="non-decreasing"),
        InsightfaceWriter(tmp_path / "b.rec", tmp_path / "b.idx") as w,
    ):
        w.add(b"x", 1)
        w.add(b"y", 0)


def test_plain_file_has_no_dataset_header(tmp_path):
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write(pack(IRHeader(0, 0.0, 0, 0), b"jpg"))
    assert read_dataset_header(RecordReader(tmp_path / "a.rec")) is None


def test_large_counts_are_exact_through_id_fields():
    big = (1 << 24) + 1  # not representable in float32
    header = IRHeader(2, np.array([big, big + 2], dtype=np.float32), big, big + 2)
    from facerco.data.recordio import _exact_pair

    assert _exact_pair(unpack(pack(header))[0]) == (big, big + 2)
    plain = IRHeader(2, np.array([5, 9], dtype=np.float32), 0, 0)  # files from other tools: label only
    assert _exact_pair(unpack(pack(plain))[0]) == (5, 9)


def test_header_reads_long_array_label_and_magic_inside_label(tmp_path):
    magic_float = np.frombuffer(M, dtype="<f4")[0]
    labels = [np.arange(30, dtype=np.float32), np.array([1.0, magic_float], dtype=np.float32)]
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        for lab in labels:
            w.write(pack(IRHeader(0, lab), b"z"))
    r = RecordReader(tmp_path / "a.rec")
    np.testing.assert_array_equal(r.header(0).label, labels[0])
    got = r.header(1).label
    assert got[0] == 1.0 and got.tobytes()[4:] == M


# ------------------------------------------------------------------------------------------------ corrupt inputs


def _two_records(tmp_path):
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write(b"first-record", key=0)
        off = w.write(b"second-record-payload", key=1)
    return tmp_path / "a.rec", off


def test_wrong_magic_names_file_key_offset(tmp_path):
    rec, off = _two_records(tmp_path)
    data = bytearray(rec.read_bytes())
    data[off : off + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(data))
    r = RecordReader(rec)
    with pytest.raises(RecordIOError, match=rf"a\.rec: key 1, offset {off}: wrong magic 0x00000000"):
        r.read(1)
    with pytest.raises(RecordIOError, match=rf"offset {off}: wrong magic"):
        RecordReader(rec, idx_path=None)


def test_truncated_record_names_file_key_offset(tmp_path):
    rec, off = _two_records(tmp_path)
    rec.write_bytes(rec.read_bytes()[: off + 12])
    r = RecordReader(rec)
    with pytest.raises(RecordIOError, match=rf"a\.rec: key 1, offset {off}: truncated record"):
        r.read(1)
    with pytest.raises(RecordIOError, match=rf"offset {off}: truncated record"):
        RecordReader(rec, idx_path=None)


def test_trailing_bytes_shorter_than_a_part_header(tmp_path):
    rec, off = _two_records(tmp_path)
    rec.write_bytes(rec.read_bytes() + b"\x0a\x23")
    size = rec.stat().st_size
    with pytest.raises(RecordIOError, match=rf"offset {size - 2}: truncated record \(needs an 8-byte header"):
        RecordReader(rec, idx_path=None)


def test_split_record_cut_inside_parts(tmp_path):
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write(b"abcd" + M + b"efgh")
    data = (tmp_path / "a.rec").read_bytes()
    (tmp_path / "a.rec").write_bytes(data[:12])  # first part only
    with pytest.raises(RecordIOError, match="key 0, offset 0: truncated record"):
        RecordReader(tmp_path / "a.rec").read(0)
    with pytest.raises(RecordIOError, match="offset 0: truncated record"):
        RecordReader(tmp_path / "a.rec", idx_path=None)


def test_idx_offset_past_eof_names_idx_key_offset(tmp_path):
    rec, _ = _two_records(tmp_path)
    (tmp_path / "a.idx").write_text("0\t0\n1\t99999\n")
    with pytest.raises(RecordIOError, match=r"a\.idx: key 1 has offset 99999, past the end of .*a\.rec"):
        RecordReader(rec)


def test_malformed_idx_line(tmp_path):
    rec, _ = _two_records(tmp_path)
    (tmp_path / "a.idx").write_text("0\t0\nbroken line here\n")
    with pytest.raises(RecordIOError, match=r"a\.idx: line 2"):
        RecordReader(rec)


def test_bad_property(tmp_path):
    (tmp_path / "property").write_text("abc\n")
    with pytest.raises(RecordIOError, match="property: line 1"):
        read_property(tmp_path / "property")


def test_single_read_with_size_hint_matches_careful_path(tmp_path):
    payloads = [b"a" * 13, b"1234" + M + b"5678" + M + b"x", M]
    with RecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        offsets = [w.write(p) for p in payloads]
    r = RecordReader(tmp_path / "a.rec")
    ends = [*offsets[1:], r.size]
    for payload, off, end in zip(payloads, offsets, ends):
        careful = r.read_at(off)
        assert careful == (payload, end)
        assert r.read_at(off, size_hint=end - off) == careful  # exact hint: one read
        assert r.read_at(off, size_hint=end - off - 4) == careful  # short hint: falls back
        assert r.read_at(off, size_hint=r.size - off + 100) == careful  # long hint: extra bytes ignored
