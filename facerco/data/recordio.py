"""dmlc RecordIO (the `.rec`/`.idx` pair used by MXNet and insightface datasets), read and written without mxnet.

Container (FORMATS.md §1): every record starts with the uint32 magic ``0xced7230a`` and a uint32 ``lrec`` whose top
3 bits are ``cflag`` and whose low 29 bits are the payload length; the payload is zero-padded to a multiple of 4.
When the magic appears at a 4-aligned position inside a payload, the writer cuts the payload there, drops those 4
bytes and writes the pieces as parts with cflag 1 (first), 2 (middle), 3 (last); the reader re-inserts the magic
between parts. Random access goes through the text ``.idx`` (``key<TAB>offset`` per line); without it the file is
scanned and records get keys 0, 1, 2, ... in file order, as im2rec numbers them.

Payload (mxnet's ``recordio.pack``): an ``IRHeader`` packed as little-endian ``'IfQQ'`` (flag, label, id, id2); when
``flag > 0`` the label is the ``flag`` float32 values that follow the header, then the image bytes.

insightface convention: record 0 has flag 2 and label ``(id_start, id_end)``; keys ``1 .. id_start-1`` are images and
keys ``id_start .. id_end-1`` are identity records whose label is ``(first_image_key, end_image_key)``. Labels are
float32, exact only up to 2**24; facerco's writer also stores the two integers exactly in ``id``/``id2`` of those
records and the reader prefers them when they agree with the float label.

The reader uses ``os.pread`` on a descriptor opened lazily in each process (the pid is tracked), so DataLoader
workers never share a file position and a pickled reader reopens the file on first use.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MAGIC",
    "IRHeader",
    "RecordIOError",
    "RecordReader",
    "RecordWriter",
    "DatasetHeader",
    "pack",
    "unpack",
    "unpack_header",
    "read_idx",
    "read_property",
    "write_property",
    "read_dataset_header",
    "identity_ranges",
    "InsightfaceWriter",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_BITS = 29
_LEN_MASK = (1 << _LEN_BITS) - 1
_MAX_LEN = 1 << _LEN_BITS
_IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_EXACT_F32 = 1 << 24  # integers above this are not all representable in float32


class RecordIOError(ValueError):
    """A malformed .rec/.idx/property file; the message names the file, and the key and byte offset when known."""


# ----------------------------------------------------------------------------------------------- IRHeader payloads


@dataclass(frozen=True)
class IRHeader:
    """The per-record header of mxnet's image records.

    Attributes:
        flag: 0 for a scalar label; otherwise the number of float32 label values that follow the header.
        label: a float (flag 0) or a float32 array of ``flag`` values.
        id: uint64, free for the writer (im2rec stores the image index).
        id2: uint64, free for the writer.
    """

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0


def pack(header: IRHeader, payload: bytes = b"") -> bytes:
    """Serialize a header and payload the way mxnet's ``recordio.pack`` does.

    As in mxnet, the label decides the flag: a number gives flag 0, a sequence gives flag = its length (the header's
    ``flag`` field is ignored).
    """
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        return struct.pack(_IR_FORMAT, 0, float(label), int(header.id), int(header.id2)) + bytes(payload)
    arr = np.asarray(label, dtype="<f4").reshape(-1)
    if arr.size == 0:
        raise ValueError("an array label needs at least one value (flag 0 means a scalar label)")
    return struct.pack(_IR_FORMAT, arr.size, 0.0, int(header.id), int(header.id2)) + arr.tobytes() + bytes(payload)


def unpack_header(record: bytes | memoryview) -> tuple[IRHeader, int]:
    """Parse the IRHeader (and array label) at the start of ``record``; returns it and the payload start offset."""
    if len(record) < IR_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {IR_SIZE}-byte IRHeader")
    flag, label, id1, id2 = struct.unpack_from(_IR_FORMAT, record, 0)
    if flag == 0:
        return IRHeader(0, label, id1, id2), IR_SIZE
    end = IR_SIZE + 4 * flag
    if len(record) < end:
        raise ValueError(f"IRHeader flag {flag} announces {flag} float labels but the record has {len(record)} bytes")
    values = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(flag, values, id1, id2), end


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record payload into its IRHeader and the bytes after the header (usually an encoded image)."""
    header, start = unpack_header(record)
    return header, record[start:]


def class_of(header: IRHeader) -> float:
    """The class stored in an image header: the scalar label, or ``label[0]`` for array labels."""
    return float(header.label[0]) if header.flag > 0 else float(header.label)


# ------------------------------------------------------------------------------------------------- index, property


def read_idx(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.idx`` file into (keys, offsets), both int64, in file order; errors name the line."""
    p = Path(path)
    data = p.read_bytes()
    tokens = data.split()
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    if tokens and len(tokens) == 2 * lines:  # fast path (millions of lines): parse in C, check, else go careful
        try:
            pairs = np.array(tokens).astype(np.int64).reshape(-1, 2)
        except ValueError:
            pairs = None
        if pairs is not None and (pairs[:, 1] >= 0).all():
            return pairs[:, 0].copy(), pairs[:, 1].copy()
    return _read_idx_careful(p)


def _read_idx_careful(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """Line-by-line parse that reports the first bad line."""
    keys: list[int] = []
    offsets: list[int] = []
    with open(p, encoding="ascii", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                key, offset = int(fields[0]), int(fields[1])
            except ValueError:
                raise RecordIOError(f"{p}: line {lineno}: expected 'key<TAB>offset', got {line.rstrip()!r}") from None
            if offset < 0:
                raise RecordIOError(f"{p}: line {lineno}: key {key} has a negative offset {offset}")
            keys.append(key)
            offsets.append(offset)
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


def read_property(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Read a ``property`` file: first line ``num_classes,height,width`` (later lines are ignored)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: property file not found")
    first = p.read_text(encoding="utf-8").strip().splitlines()
    try:
        num_classes, height, width = (int(v) for v in first[0].split(","))
    except (IndexError, ValueError):
        raise RecordIOError(f"{p}: line 1: expected 'num_classes,height,width', got {first[:1]!r}") from None
    if num_classes <= 0 or height <= 0 or width <= 0:
        raise RecordIOError(f"{p}: line 1: values must be positive, got {num_classes},{height},{width}")
    return num_classes, height, width


def write_property(path: str | os.PathLike[str], num_classes: int, height: int = 112, width: int = 112) -> None:
    """Write ``num_classes,height,width`` (atomically)."""
    from facerco.utils.io import atomic_write_text

    atomic_write_text(path, f"{int(num_classes)},{int(height)},{int(width)}\n")


# ---------------------------------------------------------------------------------------------------------- reader


class RecordReader:
    """Random access to a ``.rec`` file, through its ``.idx`` or through one scan of the file.

    Args:
        rec_path: the ``.rec`` file.
        idx_path: the ``.idx`` file; ``"auto"`` (default) uses ``<rec without .rec>.idx`` when it exists and scans
            otherwise; ``None`` always scans.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = "auto") -> None:
        self.path = Path(rec_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: record file not found")
        self.size = self.path.stat().st_size
        self._fd: int | None = None
        self._pid: int | None = None
        if idx_path == "auto":
            guess = self.path.with_suffix(".idx")
            idx_path = guess if guess.is_file() else None
        self.idx_path = Path(idx_path) if idx_path is not None else None
        if self.idx_path is not None:
            self.keys, self.offsets = read_idx(self.idx_path)
            self._check_offsets()
        else:
            self.offsets = np.asarray([off for off, _ in self._scan_headers()], dtype=np.int64)
            self.keys = np.arange(len(self.offsets), dtype=np.int64)
        # key -> position without a per-key dict (millions of records): sorted keys + their positions
        self._order = np.argsort(self.keys, kind="stable")
        self._sorted_keys = self.keys[self._order]
        if len(self.keys) > 1 and (np.diff(self._sorted_keys) == 0).any():
            dup = int(self._sorted_keys[np.flatnonzero(np.diff(self._sorted_keys) == 0)[0]])
            raise RecordIOError(f"{self.idx_path}: key {dup} appears more than once in the index")

    # -- file handle, one per process
    def _handle(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = pid
        return self._fd

    def close(self) -> None:
        """Close this process's descriptor (a later read reopens it)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        return self._position(int(key)) is not None

    def _position(self, key: int) -> int | None:
        j = int(np.searchsorted(self._sorted_keys, key))
        if j < len(self._sorted_keys) and int(self._sorted_keys[j]) == key:
            return int(self._order[j])
        return None

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Index positions of many keys at once (vectorized); raises KeyError naming the first missing key."""
        keys = np.asarray(keys, dtype=np.int64)
        j = np.searchsorted(self._sorted_keys, keys).clip(0, max(len(self._sorted_keys) - 1, 0))
        found = (self._sorted_keys[j] == keys) if len(self._sorted_keys) else np.zeros(len(keys), bool)
        if not found.all():
            raise KeyError(f"{self.path}: no record with key {int(keys[~found][0])}")
        return self._order[j]

    # -- low level
    def _where(self, key: int | None, offset: int) -> str:
        return f"{self.path}: " + (f"key {key}, " if key is not None else "") + f"offset {offset}"

    def _check_offsets(self) -> None:
        if len(self.offsets) == 0:
            return
        i = int(np.argmax(self.offsets))
        if int(self.offsets[i]) + 8 > self.size:
            raise RecordIOError(
                f"{self.idx_path}: key {int(self.keys[i])} has offset {int(self.offsets[i])}, past the end of "
                f"{self.path} ({self.size} bytes)"
            )

    def _pread(self, n: int, offset: int) -> bytes:
        return os.pread(self._handle(), n, offset)

    def _part_header(self, offset: int, key: int | None, start: int | None = None) -> tuple[int, int]:
        """(cflag, length) of the part at ``offset``; errors cite the record's ``start`` offset and the part's."""
        start = offset if start is None else start
        part = "" if start == offset else f"part at offset {offset}: "
        head = self._pread(8, offset)
        if len(head) < 8:
            raise RecordIOError(
                f"{self._where(key, start)}: truncated record ({part}needs an 8-byte header, {len(head)} bytes left)"
            )
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"{self._where(key, start)}: {part}wrong magic 0x{magic:08x} (expected 0x{MAGIC:08x})")
        return lrec >> _LEN_BITS, lrec & _LEN_MASK

    def read_at(self, offset: int, key: int | None = None, size_hint: int | None = None) -> tuple[bytes, int]:
        """Read the (joined) record starting at ``offset``; returns the payload and the offset of the next record.

        With ``size_hint`` (the record's bytes on disk, e.g. the distance to the next offset) the record is read with
        one system call; when the hint does not hold the whole record, the part-by-part path below is used.
        """
        if size_hint is not None and 8 <= size_hint <= 1 << 24:
            fast = _parse_parts(self._pread(size_hint, offset))
            if fast is not None:
                return fast[0], offset + fast[1]
        start = offset
        parts: list[bytes] = []
        while True:
            cflag, length = self._part_header(offset, key, start)
            if cflag > 3 or (not parts and cflag in (2, 3)) or (parts and cflag in (0, 1)):
                raise RecordIOError(
                    f"{self._where(key, start)}: bad part sequence (cflag {cflag} at offset {offset} after "
                    f"{len(parts)} part(s))"
                )
            data = self._pread(length, offset + 8)
            if len(data) < length:
                raise RecordIOError(
                    f"{self._where(key, start)}: truncated record (part at offset {offset} announces {length} bytes, "
                    f"{len(data)} left in the file)"
                )
            parts.append(data)
            offset += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                break
        return (parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)), offset

    def read(self, key: int) -> bytes:
        """The payload of record ``key``."""
        i = self._position(int(key))
        if i is None:
            raise KeyError(f"{self.path}: no record with key {key}")
        return self.read_at(int(self.offsets[i]), int(key))[0]

    def read_idx(self, i: int) -> bytes:
        """The payload of the i-th record of the index (position, not key)."""
        return self.read_at(int(self.offsets[i]), int(self.keys[i]))[0]

    def header(self, key: int) -> IRHeader:
        """The IRHeader of record ``key``, reading only its first bytes when possible."""
        i = self._position(int(key))
        if i is None:
            raise KeyError(f"{self.path}: no record with key {key}")
        return self.header_at(int(self.offsets[i]), int(key))

    def header_at(self, offset: int, key: int | None = None) -> IRHeader:
        """The IRHeader of the record at ``offset`` (one small read in the usual case)."""
        buf = self._pread(8 + 64, offset)
        if len(buf) < 8 or struct.unpack_from("<I", buf)[0] != MAGIC:
            self._part_header(offset, key)  # raises the precise error
        length = struct.unpack_from("<I", buf, 4)[0] & _LEN_MASK
        head = buf[8 : 8 + min(length, 64)]
        # a split record's first part holds the header unless the magic sits inside it (handled below)
        try:
            header, end = unpack_header(head)
        except ValueError:
            header, end = None, 0
        if header is None or end > len(head) or len(head) < min(length, 64):
            # long array label, or a first part that ends inside the header (magic in it): read the whole record
            try:
                header, _ = unpack_header(self.read_at(offset, key)[0])
            except ValueError as exc:
                raise RecordIOError(f"{self._where(key, offset)}: {exc}") from None
        return header

    def class_labels(self, offsets: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The class of each record (scalar label, or ``label[0]``) as float64, one small read per record.

        The tight loop handles the usual layout (header in the first part); anything else goes through
        :meth:`header_at`, which reads the whole record and reports errors with key and offset.
        """
        out = np.empty(len(offsets), dtype=np.float64)
        fd = self._handle()
        pread, unpack_from = os.pread, struct.unpack_from
        for i, (offset, key) in enumerate(zip(offsets.tolist(), keys.tolist())):
            buf = pread(fd, 40, offset)
            if len(buf) == 40:
                magic, lrec, flag, label = unpack_from("<IIIf", buf)
                length = lrec & _LEN_MASK
                if magic == MAGIC and flag == 0 and length >= IR_SIZE:
                    out[i] = label
                    continue
                if magic == MAGIC and flag > 0 and length >= IR_SIZE + 4 * flag:
                    out[i] = unpack_from("<f", buf, 8 + IR_SIZE)[0]
                    continue
            out[i] = class_of(self.header_at(offset, key))
        return out

    def _scan_headers(self) -> Iterator[tuple[int, int]]:
        """Yield (offset, total bytes) of every record by walking part headers, without reading payloads."""
        offset = 0
        while offset < self.size:
            start = offset
            while True:
                cflag, length = self._part_header(offset, None, start)
                end = offset + 8 + ((length + 3) & ~3)
                if offset + 8 + length > self.size:
                    raise RecordIOError(
                        f"{self.path}: offset {offset}: truncated record (announces {length} bytes, "
                        f"{self.size - offset - 8} left in the file)"
                    )
                offset = end
                if cflag in (0, 3):
                    break
                if offset >= self.size:
                    raise RecordIOError(
                        f"{self.path}: offset {start}: truncated record (file ends inside a split record)"
                    )
            yield start, offset - start

    def scan(self) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, payload) for every record in file order, ignoring the index."""
        offset = 0
        while offset < self.size:
            payload, nxt = self.read_at(offset)
            yield offset, payload
            offset = nxt


def _parse_parts(buf: bytes) -> tuple[bytes, int] | None:
    """Join the parts of the record at the start of ``buf``; (payload, bytes used), or None when ``buf`` is short or
    malformed (the caller then takes the careful path, which reports the exact error)."""
    pos = 0
    parts: list[bytes] = []
    while True:
        if pos + 8 > len(buf):
            return None
        magic, lrec = struct.unpack_from("<II", buf, pos)
        cflag, length = lrec >> _LEN_BITS, lrec & _LEN_MASK
        if magic != MAGIC or cflag > 3 or (not parts and cflag in (2, 3)) or (parts and cflag in (0, 1)):
            return None
        if pos + 8 + length > len(buf):
            return None
        parts.append(buf[pos + 8 : pos + 8 + length])
        pos += 8 + ((length + 3) & ~3)
        if cflag in (0, 3):
            return (parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts)), pos


# ---------------------------------------------------------------------------------------------------------- writer


def _split_on_magic(payload: bytes) -> list[bytes]:
    """Cut ``payload`` at every 4-aligned occurrence of the magic (dropping it), as dmlc's writer does."""
    pieces: list[bytes] = []
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            pieces.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    pieces.append(payload[start:])
    return pieces


def encode_record(payload: bytes) -> bytes:
    """The on-disk bytes of one record (parts, headers and padding)."""
    if len(payload) >= _MAX_LEN:
        raise ValueError(f"a RecordIO record must be shorter than 2**29 bytes, got {len(payload)}")
    pieces = _split_on_magic(payload)
    out = bytearray()
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        cflag = 0 if last == 0 else (1 if i == 0 else (3 if i == last else 2))
        out += struct.pack("<II", MAGIC, (cflag << _LEN_BITS) | len(piece))
        out += piece
        out += b"\0" * (-len(piece) % 4)
    return bytes(out)


class RecordWriter:
    """Append records to a ``.rec`` and, when ``idx_path`` is given, their ``key<TAB>offset`` lines to a ``.idx``.

    Args:
        rec_path: output ``.rec`` (created or truncated).
        idx_path: output ``.idx``, or None for no index.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(rec_path)
        self._rec = open(self.path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._idx = open(idx_path, "w", encoding="ascii") if idx_path is not None else None  # noqa: SIM115
        self._next_key = 0
        self.offset = 0

    def write(self, payload: bytes, key: int | None = None) -> int:
        """Append one record; returns its offset. Keys default to 0, 1, 2, ... (then last key + 1)."""
        key = self._next_key if key is None else int(key)
        data = encode_record(payload)
        offset = self.offset
        self._rec.write(data)
        self.offset += len(data)
        if self._idx is not None:
            self._idx.write(f"{key}\t{offset}\n")
        self._next_key = key + 1
        return offset

    def overwrite(self, offset: int, payload: bytes, old_size: int) -> None:
        """Replace the record at ``offset`` (``old_size`` bytes on disk) with one of identical encoded size."""
        data = encode_record(payload)
        if len(data) != old_size:
            raise ValueError(
                f"{self.path}: cannot rewrite the record at offset {offset}: size {len(data)} != {old_size}"
            )
        end = self._rec.tell()
        self._rec.seek(offset)
        self._rec.write(data)
        self._rec.seek(end)

    def close(self) -> None:
        """Flush and close both files."""
        for handle in (self._rec, self._idx):
            if handle is not None and not handle.closed:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- insightface conventions


@dataclass(frozen=True)
class DatasetHeader:
    """Record 0 of an insightface dataset: images are keys ``1 .. id_start-1``, identities ``id_start .. id_end-1``."""

    id_start: int
    id_end: int

    @property
    def num_images(self) -> int:
        return self.id_start - 1

    @property
    def num_identities(self) -> int:
        return self.id_end - self.id_start


def _exact_pair(header: IRHeader) -> tuple[int, int]:
    """The integer pair of a header/identity record; ``id``/``id2`` when they match the float32 label."""
    a, b = float(header.label[0]), float(header.label[1])
    if (header.id or header.id2) and np.float32(header.id) == np.float32(a) and np.float32(header.id2) == np.float32(b):
        return int(header.id), int(header.id2)
    return int(a), int(b)


def read_dataset_header(reader: RecordReader) -> DatasetHeader | None:
    """The insightface header, or None for a plain im2rec file.

    Record 0 is the header when its label is an array of at least 2 values and nothing follows the label (insightface
    packs it with an empty payload); a record 0 carrying image bytes is an image of a plain file, even with an
    array label.
    """
    if 0 not in reader or len(reader) == 0:
        return None
    header, payload = unpack(reader.read(0))
    if header.flag < 2 or payload:  # insightface writes the header with an empty payload; an image has bytes
        return None
    id_start, id_end = _exact_pair(header)
    if not 1 <= id_start <= id_end:
        raise RecordIOError(f"{reader.path}: key 0: header label ({id_start}, {id_end}) is not a valid key range")
    return DatasetHeader(id_start, id_end)


def identity_ranges(reader: RecordReader, header: DatasetHeader) -> list[tuple[int, int]]:
    """(first_image_key, end_image_key) of each identity record, in identity order."""
    out = []
    for key in range(header.id_start, header.id_end):
        rec = reader.header(key)
        if rec.flag < 2:
            raise RecordIOError(f"{reader.path}: key {key}: identity record without a (start, end) label")
        out.append(_exact_pair(rec))
    return out


class InsightfaceWriter:
    """Write a complete insightface dataset: header record 0, image records, identity records, ``property``.

    Images must arrive grouped by class with non-decreasing labels (an identity's images are a contiguous key range).
    Record 0 is written first as a fixed-size placeholder and rewritten in place by :meth:`close`.

    Args:
        rec_path: output ``.rec``.
        idx_path: output ``.idx``.
        property_path: output ``property`` (None to skip).
        image_size: (height, width) written to ``property``.
    """

    def __init__(
        self,
        rec_path: str | os.PathLike[str],
        idx_path: str | os.PathLike[str],
        property_path: str | os.PathLike[str] | None = None,
        image_size: tuple[int, int] = (112, 112),
        num_classes: int | None = None,
    ) -> None:
        self._writer = RecordWriter(rec_path, idx_path)
        self._property = property_path
        self._image_size = image_size
        self._num_classes = num_classes
        self._header_size = len(encode_record(self._header_payload(0, 0)))
        self._writer.write(self._header_payload(0, 0), key=0)
        self._ranges: list[tuple[int, int]] = []
        self._key = 1
        self._closed = False

    @staticmethod
    def _header_payload(start: int, end: int) -> bytes:
        return pack(IRHeader(2, np.array([start, end], dtype=np.float32), start, end))

    def add(self, image: bytes, label: int) -> int:
        """Append one encoded image of class ``label``; returns its key."""
        label = int(label)
        current = len(self._ranges) - 1
        if label < current:
            raise ValueError(f"labels must be non-decreasing (got {label} after {current})")
        if label >= _EXACT_F32:
            raise ValueError(f"class label {label} is not exactly representable as float32")
        while len(self._ranges) <= label:
            self._ranges.append((self._key, self._key))
        start, _ = self._ranges[label]
        key = self._key
        self._writer.write(pack(IRHeader(0, float(label), key, 0), image), key=key)
        self._ranges[label] = (start, key + 1)
        self._key += 1
        return key

    def close(self) -> None:
        """Write identity records, rewrite the header, write ``property``."""
        if self._closed:
            return
        self._closed = True
        num_classes = self._num_classes if self._num_classes is not None else len(self._ranges)
        if num_classes < len(self._ranges):
            raise ValueError(f"num_classes={num_classes} but labels up to {len(self._ranges) - 1} were written")
        while len(self._ranges) < num_classes:
            self._ranges.append((self._key, self._key))
        id_start = self._key
        for i, (start, end) in enumerate(self._ranges):
            payload = pack(IRHeader(2, np.array([start, end], dtype=np.float32), start, end))
            self._writer.write(payload, key=id_start + i)
        id_end = id_start + len(self._ranges)
        self._writer.overwrite(0, self._header_payload(id_start, id_end), self._header_size)
        self._writer.close()
        if self._property is not None:
            write_property(self._property, num_classes, *self._image_size)

    def __enter__(self) -> InsightfaceWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()
