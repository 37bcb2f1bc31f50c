"""Verification .bin read/write through the restricted unpickler, and the LFW pairs.txt parser."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from facerco.data.bins import BinFormatError, read_bin, write_bin
from facerco.data.pairs import PairsFormatError, read_lfw_pairs

IMAGES = [b"\xff\xd8\xff\xe0jpeg-one\x80\x99", b"\x89PNG\r\n\x1a\nimage-two", b"\xff\xd8three", b"\x00\xfffour"]


def test_round_trip(tmp_path):
    write_bin(tmp_path / "a.bin", IMAGES, [True, False])
    images, issame = read_bin(tmp_path / "a.bin")
    assert images == IMAGES
    assert issame.dtype == bool and issame.tolist() == [True, False]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_pickles_of_every_protocol(tmp_path, protocol):
    # protocol 2 stores bytes as _codecs.encode(str, 'latin1'): the one global the reader accepts
    (tmp_path / "a.bin").write_bytes(pickle.dumps((IMAGES, [False, True]), protocol=protocol))
    images, issame = read_bin(tmp_path / "a.bin")
    assert images == IMAGES and issame.tolist() == [False, True]
    (tmp_path / "e.bin").write_bytes(pickle.dumps(([b"", b"x"], [True]), protocol=protocol))  # empty: bytes()
    assert read_bin(tmp_path / "e.bin")[0] == [b"", b"x"]


def _py2_string(data: bytes) -> bytes:
    """Python 2's protocol-2 encoding of a str (raw bytes): SHORT_BINSTRING or BINSTRING."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def test_python2_pickle_needs_bytes_encoding(tmp_path):
    """A protocol-2 pickle as Python 2 writes it: str opcodes that Python 3 would decode as ASCII text."""
    big = bytes(range(256)) * 2
    images = [*IMAGES[:3], big]
    body = b"\x80\x02(" + b"(" + b"".join(_py2_string(i) for i in images) + b"l" + b"(\x88\x89l" + b"t."
    (tmp_path / "py2.bin").write_bytes(body)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(body)  # what a naive reader hits
    got, issame = read_bin(tmp_path / "py2.bin")
    assert got == images and issame.tolist() == [True, False]


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_Evil(str(marker)), b"x"], [True])))
    with pytest.raises(BinFormatError, match=r"evil\.bin: refusing to load global '(posix|os)\.system'"):
        read_bin(tmp_path / "evil.bin")
    assert not marker.exists()


def test_numpy_content_and_codecs_abuse_are_refused(tmp_path):
    (tmp_path / "np.bin").write_bytes(pickle.dumps((IMAGES[:2], np.array([True]))))
    with pytest.raises(BinFormatError, match="refusing to load global 'numpy"):
        read_bin(tmp_path / "np.bin")
    # _codecs.encode with another codec than latin1 is refused too
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R."
    (tmp_path / "codec.bin").write_bytes(payload)
    with pytest.raises(BinFormatError, match="latin1"):
        read_bin(tmp_path / "codec.bin")


def test_layout_errors(tmp_path):
    cases = {
        "notpair.bin": pickle.dumps([IMAGES]),
        "count.bin": pickle.dumps((IMAGES[:3], [True])),
        "flag.bin": pickle.dumps((IMAGES[:2], ["yes"])),
        "junk.bin": b"not a pickle at all",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BinFormatError, match=name.replace(".", r"\.")):
            read_bin(tmp_path / name)
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        write_bin(tmp_path / "w.bin", IMAGES[:3], [True])


# --------------------------------------------------------------------------------------------------- pairs.txt


def _lfw_tree(tmp_path, names=("Ann_A", "Bob_B", "Cy_C"), count=3):
    for name in names:
        (tmp_path / name).mkdir()
        for i in range(1, count + 1):
            (tmp_path / name / f"{name}_{i:04d}.jpg").write_bytes(b"x")
    return tmp_path


def test_pairs_two_folds(tmp_path):
    root = _lfw_tree(tmp_path)
    text = "2\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t3\nCy_C\t2\t3\nBob_B\t2\tCy_C\t1\n"
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt", root)
    assert [(a.name, b.name, s) for a, b, s in pairs] == [
        ("Ann_A_0001.jpg", "Ann_A_0002.jpg", True),
        ("Ann_A_0001.jpg", "Bob_B_0003.jpg", False),
        ("Cy_C_0002.jpg", "Cy_C_0003.jpg", True),
        ("Bob_B_0002.jpg", "Cy_C_0001.jpg", False),
    ]
    assert pairs[1][1] == root / "Bob_B" / "Bob_B_0003.jpg"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("x\ty\n", "line 1"),
        ("1\t1\nAnn_A\t1\t2\nAnn_A\t1\tBob_B\t3\t4\n", "line 3: expected 3 fields"),
        ("1\t1\nAnn_A\t1\ttwo\nAnn_A\t1\tBob_B\t3\n", "line 2: image number 'two'"),
        ("1\t1\nAnn_A\t1\tBob_B\t3\nAnn_A\t1\t2\n", "line 2: expected a matched pair"),
        ("1\t2\nAnn_A\t1\t2\nCy_C\t1\t2\nAnn_A\t1\tBob_B\t3\n", "announces 1 folds x 4 pairs = 4, found 3"),
        ("1\t1\nAnn_A\t1\t9\nAnn_A\t1\tBob_B\t3\n", "line 2: image .*Ann_A_0009.jpg not found"),
    ],
)
def test_pairs_errors_name_the_line(tmp_path, text, match):
    root = _lfw_tree(tmp_path)
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises((PairsFormatError, FileNotFoundError), match=match):
        read_lfw_pairs(tmp_path / "pairs.txt", root)


@pytest.mark.realdata
def test_real_lfw_pairs(real_data):
    root = real_data / "lfw_deepfunneled"
    if not (root / "pairs.txt").is_file():
        pytest.skip("lfw_deepfunneled/pairs.txt absent")
    pairs = read_lfw_pairs(root / "pairs.txt", root)
    assert len(pairs) == 6000 and sum(s for _, _, s in pairs) == 3000
    assert all(s == ((i % 600) < 300) for i, (_, _, s) in enumerate(pairs))
