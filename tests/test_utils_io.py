"""Atomic writes: all-or-nothing replacement, ordinary permissions, checksums."""

from __future__ import annotations

import hashlib
import os

import pytest

from facerco.utils.io import atomic_path, atomic_write_text, read_json, sha256_file, write_json


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("killed mid-write")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_permissions_follow_umask_even_when_writer_recreates_file(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "a.bin"
    with atomic_path(target) as tmp:
        tmp.unlink()  # a writer that replaces the temp file with its own (as safetensors does)
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"x")
        os.close(fd)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_sha256_and_read_json_errors(tmp_path):
    f = tmp_path / "x.txt"
    atomic_write_text(f, "abc")
    assert sha256_file(f) == hashlib.sha256(b"abc").hexdigest()
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match=r"bad.json.*not valid JSON"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")


def test_fsync_false_skips_only_the_flush(tmp_path, monkeypatch):
    """The aligned-crop writer (prep.align.write_bytes_public) uses this path: same rename, same mode, no fsync."""
    from facerco.prep.align import write_bytes_public

    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    umask = os.umask(0o022)
    os.umask(umask)
    target = tmp_path / "id0" / "0.jpg"
    write_bytes_public(target, b"crop")
    assert calls == []
    assert target.read_bytes() == b"crop"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["0.jpg"]
    atomic_write_text(tmp_path / "r.json", "{}")
    assert len(calls) == 1
