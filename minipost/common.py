"""Shared plumbing every objective file uses: device and seeds, config -> command line, checkpoints, metrics.

Nothing here is about learning; it is kept small so the objective files can stay about their equations.

- `parse_config(Config)` turns a dataclass into an argparse CLI: each field becomes `--field-name`, its
  one-line doc (the `help` metadata) becomes the help text. `--preset` fills preset values first, then any
  flag given on the command line wins.
- Checkpoints are written atomically (temp file + `os.replace`) and loaded with `weights_only=True`, so a crash
  mid-write never leaves a half file and loading a checkpoint never runs pickled code.
- `MetricsLogger` appends one JSON object per logged step to `metrics.jsonl`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import tempfile
import typing
from pathlib import Path

import numpy as np
import torch

REPO_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_DIR / "data"


# ----------------------------------------------------------------------------------------------------------------
# device, dtype, seeds

def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu (or the device you name)."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU bf16 is slow and MPS support varies)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a run touches, so resuming continues the exact same random stream."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # keys is an ndarray: store it as a tensor
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------------
# config dataclass -> command line

def field(default, help: str, **kw):
    """A dataclass field with a one-line doc that becomes its `--help` text."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _str2bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if s.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def parse_config(cls, argv: list[str] | None = None, presets: dict[str, dict] | None = None):
    """Build `cls` (a dataclass) from the command line.

    Every field becomes a flag (`max_steps` -> `--max-steps`). If the dataclass has a `preset` field and
    `presets` maps preset names to field overrides, those overrides apply first and explicit flags win.
    """
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        default = f"default: {f.default}"
        for name, values in (presets or {}).items():  # what each preset actually runs
            if f.name in values and f.name != "preset" and values[f.name] != f.default:
                default += f"; {name}: {values[f.name]}"
        kwargs: dict = {"help": f.metadata.get("help", "") + f" ({default})", "default": None}
        if typ is bool:
            kwargs["type"] = _str2bool
            kwargs["metavar"] = "BOOL"
        elif typing.get_origin(typ) in (list, tuple):
            kwargs["type"] = typing.get_args(typ)[0]
            kwargs["nargs"] = "*"
        elif typ in (int, float, str):
            kwargs["type"] = typ
        else:  # Optional[str] and friends: take the first concrete type
            kwargs["type"] = next(a for a in typing.get_args(typ) if a is not type(None))
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    values = {}
    if presets is not None and "preset" in {f.name for f in dataclasses.fields(cls)}:
        preset = given.get("preset", cls().preset)
        if preset not in presets:
            parser.error(f"unknown preset {preset!r}; choose from {sorted(presets)}")
        values.update(presets[preset])
    values.update(given)
    return cls(**values)


def config_with_preset(cls, presets: dict[str, dict], **overrides):
    """Python-side twin of parse_config: `config_with_preset(Config, PRESETS, preset="nano", max_steps=5)`."""
    preset = overrides.get("preset", cls().preset)
    return cls(**{**presets[preset], **overrides})


# ----------------------------------------------------------------------------------------------------------------
# files: JSONL, checkpoints, metrics

def read_jsonl(path: str | os.PathLike, required: typing.Sequence[str] = ()) -> list[dict]:
    """Read a JSONL file; a malformed line raises ValueError naming the file, the line and the problem."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing field(s) {missing}; has {sorted(row)}")
            rows.append(row)
    return rows


def write_jsonl(path: str | os.PathLike, rows: typing.Iterable[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files private (0600); these are ordinary outputs
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_checkpoint(path: str | os.PathLike, obj: dict) -> None:
    """torch.save to a temp file in the same folder, then os.replace: the old file stays valid until the new
    one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load with weights_only=True: tensors, numbers, strings, lists and dicts only, never arbitrary code."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def save_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8"))


class MetricsLogger:
    """Appends one JSON object per call to OUT/metrics.jsonl (flushed at once, so a crash keeps what was logged)."""

    def __init__(self, out_dir: str | os.PathLike, append: bool = False):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(out_dir) / "metrics.jsonl"
        self._f = open(self.path, "a" if append else "w", encoding="utf-8")

    def log(self, step: int, **metrics) -> dict:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        return row

    def close(self) -> None:
        self._f.close()


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if math.isfinite(v) else str(v)
    return v


def check_finite(loss: torch.Tensor, step: int, out_dir) -> None:
    """Stop the run with a clear message on a NaN/inf loss, before the bad step reaches the weights. Nothing is
    written after this point: checkpoints already on disk (written atomically) stay as they were."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(
            f"loss is {loss.item()} at step {step}; stopping before the optimizer step. Checkpoints already in "
            f"{out_dir} are untouched (this run writes no more). Usual causes: learning rate too high, fp16 "
            "overflow, or an empty loss mask (0/0).")


# ----------------------------------------------------------------------------------------------------------------
# KL estimators

def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-sample estimates of KL(pi || pi_ref) from log-probs of tokens *sampled from pi* (Schulman 2020,
    "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html). With log r = ref_logps - logps:

        k1 = -log r                 unbiased, high variance, can be negative
        k2 = (log r)^2 / 2          biased, low variance, >= 0
        k3 = (r - 1) - log r        unbiased, low variance, >= 0   (GRPO's choice)

    Elementwise: returns the shape of `logps`; average over samples (tokens) for the estimate.
    """
    log_r = ref_logps - logps
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r ** 2
    if kind == "k3":
        return torch.expm1(log_r) - log_r  # expm1: exact near r = 1, where (r - 1) would lose digits
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")
