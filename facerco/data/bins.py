"""insightface verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``; FORMATS.md §2).

A ``.bin`` is a pickle of ``(bins, issame_list)``: 2·P encoded images (pair k is images 2k and 2k+1) and P bools.
Pickles can run code, so reading goes through an unpickler that builds only bytes, str, bool, int, float, None,
lists and tuples and refuses every global (class or function) except ``_codecs.encode(text, "latin1")`` and
``bytes()``, which is how Python 3 writes ``bytes`` (and empty ``bytes``) into protocol-2 pickles. Python 2 pickles
are read with ``encoding="bytes"`` so that their ``str`` images come back as bytes.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facerco.utils.io import atomic_path

__all__ = ["BinFormatError", "read_bin", "write_bin", "safe_loads"]


class BinFormatError(ValueError):
    """A verification .bin that is unsafe or not ``(list of images, list of bools)``; the message names the file."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """The only global a safe .bin may use: ``_codecs.encode(str, 'latin1')`` (bytes in protocol-2 pickles)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode allowed only as (str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()``: how protocol-2 pickles write an empty ``bytes``; anything but no argument is refused."""
    if args:
        raise pickle.UnpicklingError("bytes(...) allowed only without arguments (an empty image)")
    return b""


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds plain data only; any class or function reference raises UnpicklingError naming it."""

    def find_class(self, module: str, name: str) -> object:
        if module in ("_codecs", "codecs") and name == "encode":
            return _latin1_encode
        if module in ("__builtin__", "builtins") and name == "bytes":
            return _empty_bytes
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}': a .bin may contain only bytes, str, bool, int, list and tuple"
        )

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError(f"refusing persistent id {pid!r}")


def safe_loads(data: bytes, encoding: str = "ASCII") -> object:
    """Unpickle ``data`` allowing only plain built-in data (see module docstring)."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def read_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], np.ndarray]:
    """Read a verification .bin safely.

    Returns:
        (images, issame): 2·P encoded images as bytes, and a bool array of length P.

    Raises:
        BinFormatError: unsafe content (names the refused global), or a layout other than (images, issame).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: verification .bin not found")
    data = p.read_bytes()
    try:
        obj = safe_loads(data, encoding="bytes")  # Python 2 pickles: str -> bytes; Python 3 pickles unaffected
    except pickle.UnpicklingError as exc:
        raise BinFormatError(f"{p}: {exc}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise BinFormatError(f"{p}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    return _validate(p, obj)


def _validate(p: Path, obj: object) -> tuple[list[bytes], np.ndarray]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFormatError(f"{p}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise BinFormatError(f"{p}: images and issame must be lists")
    out: list[bytes] = []
    for i, item in enumerate(images):
        if isinstance(item, str):  # a Python 2 pickle read with a text encoding
            item = item.encode("latin1")
        if not isinstance(item, (bytes, bytearray)):
            raise BinFormatError(f"{p}: image {i} is {type(item).__name__}, expected encoded bytes")
        out.append(bytes(item))
    flags = []
    for i, flag in enumerate(issame):
        if not isinstance(flag, (bool, int)) or flag not in (0, 1):
            raise BinFormatError(f"{p}: issame[{i}] is {flag!r}, expected a bool")
        flags.append(bool(flag))
    if len(out) != 2 * len(flags):
        raise BinFormatError(f"{p}: {len(out)} images for {len(flags)} pairs (expected {2 * len(flags)})")
    return out, np.asarray(flags, dtype=bool)


def write_bin(path: str | os.PathLike[str], images: Sequence[bytes], issame: Sequence[bool] | np.ndarray) -> None:
    """Write ``(images, issame)`` as insightface does (pickle protocol 4, readable by Python >= 3.4), atomically."""
    flags = [bool(x) for x in np.asarray(issame).reshape(-1)]
    blobs = [bytes(b) for b in images]
    if len(blobs) != 2 * len(flags):
        raise ValueError(f"{path}: {len(blobs)} images for {len(flags)} pairs (expected {2 * len(flags)})")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump((blobs, flags), handle, protocol=4)


def make_bin(
    pairs_txt: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int | None = None,
    quality: int = 95,
    ext: str = "jpg",
    progress: bool = True,
) -> int:
    """Build a verification .bin from an LFW-style pairs file; returns the number of pairs.

    Images are stored as they are on disk (aligning them is ``facerco align``'s job); with ``size`` each image is
    decoded, resized to ``size`` x ``size`` and re-encoded as JPEG (from BGR, ``quality``).
    """
    import cv2
    from tqdm import tqdm

    from facerco.data.pairs import read_lfw_pairs
    from facerco.data.transforms import resize_square

    pairs = read_lfw_pairs(pairs_txt, image_root, ext=ext)
    cache: dict[Path, bytes] = {}

    def load(path: Path) -> bytes:
        if path not in cache:
            data = path.read_bytes()
            if size:
                img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
                if img is None:
                    raise ValueError(f"{path}: not a decodable image")
                ok, buf = cv2.imencode(".jpg", resize_square(img, size), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
                if not ok:  # pragma: no cover
                    raise ValueError(f"{path}: JPEG encoding failed")
                data = buf.tobytes()
            cache[path] = data
        return cache[path]

    images: list[bytes] = []
    for a, b, _ in tqdm(pairs, unit="pair", desc="make-bin", disable=not progress):
        images += [load(a), load(b)]
    write_bin(out, images, [same for _, _, same in pairs])
    return len(pairs)
