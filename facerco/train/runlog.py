"""Run logs: a JSON-lines file and TensorBoard scalars, written by rank 0 only.

On resume the JSON-lines file is cut back to the resumed step (a kill can leave a half-written last line and
records past the checkpoint), and TensorBoard is opened with ``purge_step`` so curves do not fork.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "truncate_jsonl"]


def truncate_jsonl(path: Path, keep_through_step: int) -> None:
    """Drop malformed lines and records whose ``step`` is above ``keep_through_step``; atomic rewrite."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= keep_through_step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{k}\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class RunLogger:
    """Append-only JSON lines plus optional TensorBoard; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, *, enabled: bool, tensorboard: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self._tb = None
        self._t0 = time.time()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if start_step > 0:
            truncate_jsonl(self.path, start_step)
        elif self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step if start_step > 0 else None)

    def log(self, event: str, step: int, values: dict[str, Any]) -> None:
        """One JSON line ``{"event", "step", "time", **values}`` and TB scalars ``event/name``."""
        if not self.enabled:
            return
        rec = {"event": event, "step": step, "time": round(time.time() - self._t0, 3), **_clean(values)}
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, val in values.items():
                if isinstance(val, int | float) and not isinstance(val, bool):
                    self._tb.add_scalar(f"{event}/{key}", val, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
