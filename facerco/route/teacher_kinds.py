"""The kinds of published teacher ``facerco route import`` reads, in a module without torch: the CLI builds its
parser from them, and importing :mod:`facerco.route.published` there cost every command (``--help`` included) the
2 s torch import."""

from __future__ import annotations

__all__ = ["KINDS"]

KINDS = ("auto", "facerco", "insightface", "onnx", "dlib")
