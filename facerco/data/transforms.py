"""Image decoding and the standard face-recognition transforms (FORMATS.md §1).

The reference recipe decodes to RGB, flips horizontally with p=0.5 and maps pixels to (x - 127.5) / 127.5.
``decode_image`` uses OpenCV's ``imdecode`` straight into RGB (``IMREAD_COLOR_RGB``, OpenCV >= 4.10): on these
machines it was the fastest of cv2 (BGR + cvtColor), cv2 RGB, PIL and imageio (benchmarks/loader.py measures them).
"""

from __future__ import annotations

import os
from typing import Literal

import cv2
import numpy as np
import torch

__all__ = [
    "decode_image",
    "encode_jpeg",
    "normalize",
    "normalize_batch",
    "resize_square",
    "TrainTransform",
    "EvalTransform",
]

_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)  # decodes directly to RGB, no extra colour conversion pass


def decode_image(buf: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, BMP, ...) to an RGB uint8 array of shape (H, W, 3).

    Grey images come back with three equal channels; an alpha channel is dropped.

    Raises:
        ValueError: when the bytes are not a decodable image.
    """
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    if arr.size == 0:
        raise ValueError("empty buffer is not an image")
    if _RGB_FLAG is not None:
        img = cv2.imdecode(arr, _RGB_FLAG)
        if img is None:
            raise ValueError(f"not a decodable image ({arr.size} bytes, starting {bytes(arr[:8])!r})")
        return img
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR)  # pragma: no cover - OpenCV < 4.10
    if img is None:  # pragma: no cover
        raise ValueError(f"not a decodable image ({arr.size} bytes, starting {bytes(arr[:8])!r})")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # pragma: no cover


def encode_jpeg(img_rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 image as JPEG the way insightface tools do (from the BGR array, quality 95)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - cv2 fails only on invalid arrays
        raise ValueError(f"could not encode an image of shape {img_rgb.shape} as JPEG")
    return buf.tobytes()


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (area filter when shrinking, bilinear when enlarging); no-op when it fits."""
    h, w = img.shape[:2]
    if h == size and w == size:
        return img
    interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


_HALF = np.float32(127.5)


def normalize(img: np.ndarray) -> torch.Tensor:
    """RGB uint8 HWC -> contiguous float32 CHW tensor (x - 127.5) / 127.5 (the ModelMeta mean/std convention).

    Each channel is converted and shifted in one strided numpy pass straight into CHW order; measured faster than
    torch's permute/float (whose result keeps the HWC layout and makes the batch ``stack`` a slow gather).
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects an RGB uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
    out = np.empty((3, img.shape[0], img.shape[1]), dtype=np.float32)
    for c in range(3):
        np.subtract(img[:, :, c], _HALF, out=out[c])
    out /= _HALF
    return torch.from_numpy(out)


def normalize_batch(batch: torch.Tensor) -> torch.Tensor:
    """uint8 batch (N, H, W, 3) RGB, as the ``output="uint8"`` transforms give -> float (N, 3, H, W) normalized.

    Call it after ``.to(device)``: on a GPU it is free and the loader workers move 4x fewer bytes. The result has
    the same values as :func:`normalize` per image, in ``torch.channels_last`` memory format (no transposing copy;
    convolutions take it as is, often faster under AMP); call ``.contiguous()`` when NCHW memory is needed.
    """
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"normalize_batch expects a uint8 (N, H, W, 3) tensor, got {batch.dtype} {tuple(batch.shape)}")
    return batch.float().sub_(127.5).div_(127.5).permute(0, 3, 1, 2)


class EvalTransform:
    """Decode if needed, resize to ``size`` when the image differs, normalize. No randomness.

    Args:
        size: network input side in pixels.
        output: ``"float"`` gives the normalized (3, H, W) float tensor; ``"uint8"`` gives the (H, W, 3) RGB uint8
            tensor for :func:`normalize_batch` on the device (faster loaders).
    """

    def __init__(self, size: int = 112, output: Literal["float", "uint8"] = "float") -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        self.size = int(size)
        self.output = output

    def _finish(self, img: np.ndarray) -> torch.Tensor:
        return normalize(img) if self.output == "float" else torch.from_numpy(np.ascontiguousarray(img))

    def prepare(self, img: np.ndarray | bytes) -> np.ndarray:
        """The RGB uint8 image at the network size (decoded from bytes when given bytes)."""
        if not isinstance(img, np.ndarray):
            img = decode_image(img)
        return resize_square(img, self.size)

    def __call__(self, img: np.ndarray | bytes) -> torch.Tensor:
        return self._finish(self.prepare(img))

    def prepare_into(self, img: np.ndarray | bytes, out: np.ndarray, flip: bool) -> None:
        """Write the network-size RGB uint8 image, mirrored when ``flip``, into ``out`` (a (size, size, 3) slot of a
        batch array): the engine's batch path fills one uint8 batch this way, with no tensor per image."""
        img = self.prepare(img)
        if flip:
            cv2.flip(img, 1, dst=out)  # same pixels as torch.flip of the normalized image: the flip is exact
        else:
            np.copyto(out, img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, output={self.output!r})"


class TrainTransform(EvalTransform):
    """The reference training transform: RGB, random horizontal flip (p=0.5), (x - 127.5) / 127.5.

    The flip draws from torch's RNG, which DataLoader seeds per worker and ``torch.manual_seed`` controls.

    Args:
        flip: apply the random horizontal flip.
        size: network input side in pixels.
        output: ``"float"`` (normalized CHW) or ``"uint8"`` (HWC, for :func:`normalize_batch`).
    """

    def __init__(self, flip: bool = True, size: int = 112, output: Literal["float", "uint8"] = "float") -> None:
        super().__init__(size, output)
        self.flip = bool(flip)
        self._coins: list[bool] = []
        self._pid = -1

    def _coin(self) -> bool:
        """A fair coin from torch's RNG, drawn 256 at a time; the buffer is per process so workers never share it."""
        if self._pid != os.getpid() or not self._coins:
            self._pid = os.getpid()
            self._coins = (torch.rand(256) < 0.5).tolist()
        return self._coins.pop()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_coins": [], "_pid": -1}

    def __call__(self, img: np.ndarray | bytes) -> torch.Tensor:
        img = self.prepare(img)
        if self.flip and self._coin():
            img = cv2.flip(img, 1)  # on uint8, before normalize; cv2.flip is ~20x faster than a copied [:, ::-1] view
        return self._finish(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flip={self.flip}, size={self.size}, output={self.output!r})"
