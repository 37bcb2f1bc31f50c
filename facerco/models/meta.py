"""Metadata attached to every facerco model as ``model.meta``.

Export, evaluation and distillation read input size, normalisation and embedding size from here instead of
assuming them; a checkpoint stores ``name`` + ``arch_kwargs`` so ``create_model(name, **arch_kwargs)`` rebuilds
the exact architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ModelMeta"]


@dataclass
class ModelMeta:
    """What a consumer needs to feed a backbone and read its output.

    Attributes:
        name: registered architecture name (``create_model`` key).
        input_size: (height, width) in pixels.
        embedding_size: length D of the output embedding.
        mean: input = (rgb_uint8 - mean) / std, per channel value shared by R, G and B.
        std: see ``mean``.
        arch_kwargs: the overrides given to ``create_model`` (None values dropped) needed to rebuild the model.
    """

    name: str
    input_size: tuple[int, int] = (112, 112)
    embedding_size: int = 512
    mean: float = 127.5
    std: float = 127.5
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (tuples become lists)."""
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        """Inverse of :meth:`to_dict`; unknown keys are an error so a corrupt file cannot pass silently."""
        known = {"name", "input_size", "embedding_size", "mean", "std", "arch_kwargs"}
        extra = set(data) - known
        if extra:
            raise ValueError(f"ModelMeta: unknown keys {sorted(extra)}; valid keys: {sorted(known)}")
        values = dict(data)
        if "input_size" in values:
            values["input_size"] = tuple(int(v) for v in values["input_size"])
        return cls(**values)
