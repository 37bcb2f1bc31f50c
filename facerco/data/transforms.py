"""Image decoding and the standard face-recognition transforms (FORMATS.md §1).

The reference recipe decodes to RGB, flips horizontally with p=0.5 and maps pixels to (x - 127.5) / 127.5.
``decode_image`` uses OpenCV's ``imdecode`` straight into RGB (``IMREAD_COLOR_RGB``, OpenCV >= 4.10): on these
machines it was the fastest of cv2 (BGR + cvtColor), cv2 RGB, PIL and imageio (benchmarks/loader.py measures them).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["decode_image", "encode_jpeg", "normalize", "resize_square", "TrainTransform", "EvalTransform"]

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


def normalize(img: np.ndarray) -> torch.Tensor:
    """RGB uint8 HWC -> float32 CHW tensor (x - 127.5) / 127.5, the network input convention (ModelMeta mean/std)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects an RGB uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return t.sub_(127.5).div_(127.5)


class EvalTransform:
    """Decode if needed, resize to ``size`` when the image differs, normalize. No randomness.

    Args:
        size: network input side in pixels.
    """

    def __init__(self, size: int = 112) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)

    def prepare(self, img: np.ndarray | bytes) -> np.ndarray:
        """The RGB uint8 image at the network size (decoded from bytes when given bytes)."""
        if not isinstance(img, np.ndarray):
            img = decode_image(img)
        return resize_square(img, self.size)

    def __call__(self, img: np.ndarray | bytes) -> torch.Tensor:
        return normalize(self.prepare(img))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class TrainTransform(EvalTransform):
    """The reference training transform: RGB, random horizontal flip (p=0.5), (x - 127.5) / 127.5.

    The flip draws from torch's RNG, which DataLoader seeds per worker and ``torch.manual_seed`` controls.

    Args:
        flip: apply the random horizontal flip.
        size: network input side in pixels.
    """

    def __init__(self, flip: bool = True, size: int = 112) -> None:
        super().__init__(size)
        self.flip = bool(flip)

    def __call__(self, img: np.ndarray | bytes) -> torch.Tensor:
        img = self.prepare(img)
        if self.flip and torch.rand(()) < 0.5:
            img = img[:, ::-1]  # flipping uint8 before normalize copies 4x fewer bytes than flipping the float tensor
        return normalize(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(flip={self.flip}, size={self.size})"
