"""A run's metrics.jsonl: `MetricsLogger` appends one JSON object per logged step, `read_metrics` reads them
back, and `check_finite` stops a run whose loss or held-out value is NaN or inf."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from minipost.common import atomic_write_bytes, disk_full, read_jsonl


class MetricsLogger:
    """Appends one JSON object per call to OUT/metrics.jsonl (flushed at once, so a crash keeps what was logged).

    A value not measured at that step (None: a held-out loss before the first evaluation) is written as JSON
    `null`; a measured value that is not finite (a gradient norm that overflowed, the row before a run stops) as
    the string "nan", "inf" or "-inf", since JSON has no such numbers. A fresh run (resume_step None) starts the
    file anew. A resumed run keeps the rows up to resume_step as they are and drops any logged after it (a run
    killed after logging step 57 but checkpointing at 50 redoes 51-57)."""

    def __init__(self, out_dir: str | os.PathLike, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled  # False: log() and close() do nothing (the other ranks of a torchrun job)
        if not enabled:
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(out_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            rows = [r for r in self.path.read_text(encoding="utf-8").splitlines() if r.strip()]
            kept = [r for r in rows if _row_step(r) is not None and _row_step(r) <= resume_step]
            atomic_write_bytes(self.path, "".join(r + "\n" for r in kept).encode("utf-8"))
        self._f = open(self.path, "a" if resume_step is not None else "w", encoding="utf-8")

    def log(self, step: int, **metrics) -> dict:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        if self.enabled:
            try:
                self._f.write(json.dumps(row) + "\n")
                self._f.flush()
            except OSError as e:
                full = disk_full(e, self.path)
                if full:
                    raise full from None
                raise
        return row

    def close(self) -> None:
        if self.enabled:
            try:
                self._f.close()
            except OSError:  # the row a full disk refused, still buffered: log() has already said so (DiskFull)
                pass


NON_FINITE = ("nan", "inf", "-inf")  # how metrics.jsonl writes a measured value that is not a finite number


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl, one dict per logged step: None where a value was not measured (null), and a
    float for the strings "nan", "inf" and "-inf" (a measured value that was not finite; files written before
    missing values were null also used "nan" for a held-out value not yet measured)."""
    return [{k: float(v) if v in NON_FINITE else v for k, v in row.items()}
            for row in read_jsonl(path, allow_empty=True)]


def _row_step(line: str):
    try:
        step = json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):  # a half-written last line from a kill
        return None
    return step if isinstance(step, int) else None


def _plain(v):
    """A logged value as JSON: a number rounded to 6 decimals, None as null, a non-finite float as a string."""
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def check_finite(value, what: str, step: int, out_dir) -> None:
    """Stop the run with a clear message when a loss (or any logged number) is NaN/inf, before it reaches the
    weights or a checkpoint. Checkpoints already in out_dir were written atomically from finite weights and
    stay as they are."""
    v = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    if not bool(torch.isfinite(v).all()):
        raise FloatingPointError(
            f"{what} is {v.flatten()[0].item() if v.numel() else v} at step {step}: stopping. Checkpoints in "
            f"{out_dir} hold the last finite weights (an earlier run in that folder is in previous/). Usual "
            "causes: learning rate too high, fp16 overflow, or an empty loss mask (0/0).")
