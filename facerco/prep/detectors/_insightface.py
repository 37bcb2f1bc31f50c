"""insightface backend: an SCRFD / RetinaFace ONNX detector loaded from a file the user brings.

``insightface.model_zoo.get_model(path)`` routes a file with >= 5 outputs to its SCRFD class, which also decodes
RetinaFace-style outputs. Nothing is downloaded: the path must exist. insightface is imported only when this
backend is built. Its detector reads BGR images; this wrapper takes RGB like every facerco backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerco.prep.detectors._base import Detector, Face

__all__ = ["InsightFaceDetector"]


class InsightFaceDetector(Detector):
    """SCRFD/RetinaFace from an ONNX file.

    Args:
        model_path: the ``.onnx`` detector (e.g. ``det_10g.onnx``, ``scrfd_2.5g_bnkps.onnx``).
        input_size: detector input (width, height); ignored for models with a fixed input.
        threshold: score threshold.
        nms_threshold: IoU threshold of non-maximum suppression.
        threads: onnxruntime intra-op threads (0 = its default, all cores); ``facerco align`` workers should use 1.
    """

    name = "insightface"

    def __init__(
        self,
        model_path: str,
        input_size: tuple[int, int] = (640, 640),
        threshold: float = 0.5,
        nms_threshold: float = 0.4,
        threads: int = 0,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: detector ONNX file not found (insightface backend never downloads)")
        if path.suffix.lower() != ".onnx":
            raise ValueError(f"{path}: the insightface backend loads .onnx files only")
        try:
            from insightface.model_zoo import get_model
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("the insightface detector needs: pip install 'facerco[insightface]'") from exc
        kwargs: dict = {"providers": ["CPUExecutionProvider"]}
        if threads > 0:
            import onnxruntime

            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
            kwargs["sess_options"] = opts
        model = get_model(str(path), **kwargs)
        if model is None or getattr(model, "taskname", None) != "detection":
            raise ValueError(f"{path}: not a face detection model (insightface routed it to {type(model).__name__})")
        if not getattr(model, "use_kps", False):
            raise ValueError(f"{path}: detector has no landmark outputs; alignment needs a *_kps model")
        model.prepare(ctx_id=-1, input_size=tuple(input_size), det_thresh=threshold, nms_thresh=nms_threshold)
        self._model = model
        self.threshold = float(threshold)

    def detect(self, image: np.ndarray, *, key: str | None = None, hint: np.ndarray | None = None) -> list[Face]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        dets, kpss = self._model.detect(bgr, det_thresh=self.threshold)
        if dets is None or len(dets) == 0:
            return []
        faces = [Face(box=d[:4], landmarks=k, score=d[4]) for d, k in zip(dets, kpss)]
        return sorted(faces, key=lambda f: f.score, reverse=True)
