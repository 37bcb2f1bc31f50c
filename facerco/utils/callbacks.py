"""The training engine's callback protocol, in a leaf module so that ``route`` and ``train`` both use it.

:class:`facerco.train.engine.Engine` calls these hooks; route recording (``facerco.route.record``) and the student's
route following (``facerco.route.follow``) implement them without importing the engine.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callback"]


class Callback:
    """Hooks around the loop; ``step`` arguments count completed optimizer steps (1 after the first step).

    ``engine`` is the running :class:`facerco.train.engine.Engine` (its ``step``, ``lr``, ``validate()``, ...).
    """

    name = "callback"

    def on_train_start(self, engine: Any) -> None: ...

    def on_step_end(self, engine: Any, step: int, parts: dict[str, float]) -> None: ...

    def on_epoch_end(self, engine: Any, epoch: int) -> None: ...

    def on_train_end(self, engine: Any) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """State saved in last.pt so a resumed run behaves as the uninterrupted one (plain values/tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
