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
    "resize_to",
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
    return resize_to(img, size, size)


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to ``height`` x ``width``: area filter when either side shrinks, bilinear otherwise; no-op when it
    fits (a model whose input is not square, e.g. an ONNX file, gets its own shape)."""
    h, w = img.shape[:2]
    if h == height and w == width:
        return img
    interp = cv2.INTER_AREA if h > height or w > width else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def normalize(img: np.ndarray, mean: float = 127.5, std: float = 127.5) -> torch.Tensor:
    """RGB uint8 HWC -> contiguous float32 CHW tensor (x - mean) / std; the defaults are the ModelMeta convention.

    Each channel is converted and shifted in one strided numpy pass straight into CHW order; measured faster than
    torch's permute/float (whose result keeps the HWC layout and makes the batch ``stack`` a slow gather). ``mean``
    and ``std`` are rounded to float32 first and both steps run in float32, so the values equal torch's
    ``x.float().sub_(mean).div_(std)`` bit for bit (what evaluation computed before this function served it).
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects an RGB uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
    shift, scale = np.float32(mean), np.float32(std)
    out = np.empty((3, img.shape[0], img.shape[1]), dtype=np.float32)
    for c in range(3):
        np.subtract(img[:, :, c], shift, out=out[c])
    out /= scale
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
    """The one evaluation preprocessor: decode if needed, resize to the network input when the image differs,
    normalize ``(x - mean) / std``. No randomness.

    Training datasets, the anchor cache, the feature extractor (every evaluator), ONNX/embedding export and int8
    calibration all build this class (the extractor through ``Embedder.preprocessor()``, with the model's own size,
    mean and std), so a model sees the same pixels in every one of them.

    Args:
        size: network input side in pixels, or ``(height, width)`` for a model whose input is not square.
        output: ``"float"`` gives the normalized (3, H, W) float tensor; ``"uint8"`` gives the (H, W, 3) RGB uint8
            tensor for :func:`normalize_batch` on the device (faster loaders; only with the default mean and std,
            which is what :func:`normalize_batch` applies).
        mean, std: the model's normalization (ModelMeta: 127.5 and 127.5).
    """

    def __init__(self, size: int | tuple[int, int] = 112, output: Literal["float", "uint8"] = "float",
                 mean: float = 127.5, std: float = 127.5) -> None:
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if height <= 0 or width <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        if std == 0:
            raise ValueError("std must not be 0")
        if output == "uint8" and (mean, std) != (127.5, 127.5):
            raise ValueError(f"output='uint8' leaves normalizing to normalize_batch (127.5, 127.5); mean={mean} "
                             f"std={std} needs output='float'")
        self.input_size = (height, width)
        self.size: int | tuple[int, int] = height if height == width else (height, width)
        self.output = output
        self.mean, self.std = float(mean), float(std)

    @property
    def batch_decodable(self) -> bool:
        """Whether a batch of :meth:`prepare_into` images normalized by :func:`normalize_batch` (square, 127.5)
        gives exactly this transform's tensors: the engine's uint8 batch path is allowed only then."""
        return isinstance(self.size, int) and self.mean == 127.5 and self.std == 127.5

    def _finish(self, img: np.ndarray) -> torch.Tensor:
        if self.output == "float":
            return normalize(img, self.mean, self.std)
        return torch.from_numpy(np.ascontiguousarray(img))

    def prepare(self, img: np.ndarray | bytes) -> np.ndarray:
        """The RGB uint8 image at the network size (decoded from bytes when given bytes)."""
        if not isinstance(img, np.ndarray):
            img = decode_image(img)
        return resize_to(img, *self.input_size)

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
        norm = "" if (self.mean, self.std) == (127.5, 127.5) else f", mean={self.mean:g}, std={self.std:g}"
        return f"{type(self).__name__}(size={self.size}, output={self.output!r}{norm})"


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
