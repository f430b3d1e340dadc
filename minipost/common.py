"""Shared plumbing every objective file uses: device and seeds, config -> command line, checkpoints, metrics.

Nothing here is about learning; it is kept small so the objective files can stay about their equations.

- `parse_config(Config)` turns a dataclass into an argparse CLI: each field becomes `--field-name`, its
  one-line doc (the `help` metadata) becomes the help text. `--preset` fills preset values first, then any
  flag given on the command line wins.
- Checkpoints are written atomically (temp file + `os.replace`) and loaded with `weights_only=True`, so a crash
  mid-write never leaves a half file and loading a checkpoint never runs pickled code.
- `MetricsLogger` appends one JSON object per logged step to `metrics.jsonl`.
- Bad input is part of the lesson: `InputError` is what a flag, a file or a record that is wrong raises, with
  `file:line: what is wrong`; `main()` prints that one line and exits with code 2 (no traceback).
- A run folder: `start_run` checks and writes config.json only once every input has been validated;
  `save_state` / `load_state` hold everything `--resume true` needs (weights, optimizer, RNGs, data position,
  step) in OUT/state.pt, and `load_state` refuses a changed config unless told otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import typing
from pathlib import Path

try:
    import fcntl  # advisory locks on run folders (Linux, macOS)
except ImportError:  # Windows
    fcntl = None

import numpy as np
import torch

REPO_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_DIR / "data"


# ----------------------------------------------------------------------------------------------------------------
# device, dtype, seeds

DEVICE_HELP = "cuda, cuda:N, mps, cpu or auto (cuda, then mps, then cpu)"


def check_device(name: str) -> None:
    """A --device value that names a device this machine has; anything else is an InputError that says why."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name!r}: expected {DEVICE_HELP}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name!r}: no CUDA device on this machine (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                     and torch.backends.mps.is_available()):
        raise InputError(f"--device {name!r}: MPS is not available on this machine (use cpu or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {name!r}: expected {DEVICE_HELP}")


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu (or the device you name, checked by check_device)."""
    if name != "auto":
        check_device(name)
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
# errors a user can read

class DiskFull(OSError):
    """A run's file could not be written for lack of space (disk_full); `main` prints it in one line."""


class InputError(ValueError):
    """Something the user gave is wrong: a flag, a file, a record. The message is one line that names where
    (`--lr`, `data/sft.jsonl:12: field 'content'`) and what; `main` prints it and exits with code 2."""


def main(train_fn, cls, presets: dict[str, dict] | None = None, argv: list[str] | None = None):
    """`python -m minipost.<objective>`: flags -> Config -> train(cfg). A wrong flag, file or record prints
    one line `error: ...` and exits 2; a run stopped by a non-finite value prints one line `stopped: ...` and
    exits 1; Ctrl-C prints where the run's state is and how to continue, and exits 130; anything else is a bug
    and keeps its traceback."""
    cfg = parse_config(cls, argv, presets)
    try:
        return exit_on_input_error(lambda: train_fn(cfg))
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 holds the folder and speaks for every rank
            print(f"\ninterrupted: {where_to_continue(Path(cfg.out))}", file=sys.stderr)
        raise SystemExit(130) from None


def where_to_continue(out: Path) -> str:
    """After Ctrl-C: what OUT holds and the command that continues. A run folder keeps state.pt (step N); the
    pipeline and the lab keep finished stages in OUT/<stage>/, which their next start reuses or resumes."""
    if os.path.realpath(out) not in _HELD and not any(k.startswith(os.path.realpath(out) + os.sep) for k in _HELD):
        return f"the run had not started: nothing in {out} changed; the same command starts it again"
    if (out / "state.pt").is_file():
        try:
            step = torch.load(out / "state.pt", map_location="cpu", weights_only=True, mmap=True)["step"]
        except Exception:  # noqa: BLE001  (a message about a message: never a second traceback)
            step = "?"
        return (f"{out / 'state.pt'} holds step {step}; the same command with --resume true continues from it "
                "(steps after it are done again)")
    if any(out.glob("*/state.pt")) or any(out.glob("*/*/state.pt")):  # the pipeline's stages, the lab's runs
        return (f"{out} holds the runs finished so far; the same command again reuses them and resumes the "
                "interrupted one from its last state.pt")
    return f"nothing in {out} to resume yet (no state.pt was saved); the same command starts again"


def exit_on_input_error(fn):
    """Call fn(); an InputError becomes one line on stderr and exit code 2 (what every CLI here does), a
    FloatingPointError (check_finite, generate: the run diverged) or a DiskFull one line and exit code 1."""
    try:
        return fn()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (FloatingPointError, DiskFull) as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise SystemExit(1) from None


# ----------------------------------------------------------------------------------------------------------------
# config dataclass -> command line

def field(default, help: str, *, min=None, max=None, gt=None, **kw):
    """A dataclass field with a one-line doc that becomes its `--help` text, and optional bounds that
    `check_config` enforces: `min`/`max` inclusive, `gt` exclusive (`gt=0`: must be positive); `check=fn`
    runs fn(value), which raises InputError for a bad value."""
    bounds = {k: v for k, v in (("min", min), ("max", max), ("gt", gt)) if v is not None}
    return dataclasses.field(default=default, metadata={"help": help, **bounds, **kw})


def check_config(cfg) -> None:
    """Raise InputError on the first field outside its bounds or choices, or a float that is not finite.
    Objective configs call it in `__post_init__`, so `Config(max_steps=-5)` fails wherever it is built,
    before any data or model is loaded."""
    for f in dataclasses.fields(cfg):
        v, meta, flag = getattr(cfg, f.name), f.metadata, "--" + f.name.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"{flag} {v}: must be a finite number")
        if "choices" in meta and v not in meta["choices"]:
            raise InputError(f"{flag} {v!r}: choose from {list(meta['choices'])}")
        if "min" in meta and v < meta["min"]:
            raise InputError(f"{flag} {v}: must be >= {meta['min']}")
        if "max" in meta and v > meta["max"]:
            raise InputError(f"{flag} {v}: must be <= {meta['max']}")
        if "gt" in meta and not v > meta["gt"]:
            raise InputError(f"{flag} {v}: must be > {meta['gt']}")
        if "check" in meta:  # a field's own check, e.g. threads.parse_threads; raises InputError
            meta["check"](v)
    if getattr(cfg, "out", ""):
        check_out_dir(cfg)


def check_can_create(path: str | os.PathLike, what: str) -> None:
    """Before any work: `path` (a file or folder to write) could be created, without creating anything: the
    first existing folder on its way up must be a folder we can write in; else an InputError naming `what`."""
    parent = Path(path)
    while not parent.exists():  # the first folder that exists on the way up: can we create ours in it?
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what}: cannot write in {parent}" + (" (a file, not a folder)" if parent.is_file() else ""))


def check_out_dir(cfg) -> None:
    """--out must be a folder we could create or write (checked without creating it), and must not be where
    the run's own starting checkpoints (--init, --ref) live: a new run there would move them aside."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {cfg.out}: exists and is not a folder")
    check_can_create(out, f"--out {cfg.out}")
    for name in ("init", "ref"):
        start = getattr(cfg, name, "")
        if start and Path(start).resolve() in {(out / n).resolve() for n in ("model.pt", "state.pt")}:
            raise InputError(f"--out {cfg.out} holds --{name} {start}: a run there would move its own starting "
                             "checkpoint aside; pick another --out")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), for the CLIs that are not built from a Config."""

    def error(self, message):  # one line, exit 2 (argparse's default also prints the whole usage)
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    """argparse type for the CLIs not built from a Config: a whole number >= 1, else a one-line error."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {n}")
    return n


def str2bool(s: str) -> bool:
    """argparse type for true/false flags: true, yes, 1, on or false, no, 0, off."""
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
    parser = ArgumentParser(description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        default = f"default: {f.default}"
        for key, sign in (("min", ">="), ("max", "<="), ("gt", ">")):
            if key in f.metadata:
                default += f"; {sign} {f.metadata[key]}"
        for name, values in (presets or {}).items():  # what each preset actually runs
            if f.name in values and f.name != "preset" and values[f.name] != f.default:
                default += f"; {name}: {values[f.name]}"
        kwargs: dict = {"help": f.metadata.get("help", "") + f" ({default})", "default": None}
        if typ is bool:
            kwargs["type"] = str2bool
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
        preset = given.get("preset", _default(cls, "preset"))
        if preset not in presets:
            parser.error(f"unknown preset {preset!r}; choose from {sorted(presets)}")
        values.update(presets[preset])
    values.update(given)
    try:
        return cls(**values)
    except InputError as e:  # a value out of range: one line, exit 2
        parser.error(str(e))


def _default(cls, name):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def config_with_preset(cls, presets: dict[str, dict], **overrides):
    """Python-side twin of parse_config: `config_with_preset(Config, PRESETS, preset="small", max_steps=5)`.
    The dataclass defaults are the nano preset; a preset lists only what it changes."""
    preset = overrides.get("preset", _default(cls, "preset"))
    if preset not in presets:
        raise InputError(f"--preset {preset!r}: choose from {sorted(presets)}")
    return cls(**{**presets[preset], **overrides})


# ----------------------------------------------------------------------------------------------------------------
# files: JSONL, checkpoints, metrics

def read_jsonl(path: str | os.PathLike, required: typing.Sequence[str] | dict = (),
               allow_empty: bool = False, lines: list[int] | None = None) -> list[dict]:
    """Read a JSONL file (blank lines skipped). Anything wrong raises InputError naming the file, the line and
    the problem: no such file, bytes that are not UTF-8, a line that is not a JSON object, a missing field, or
    (when `required` maps field -> type, e.g. {"text": str}) a field of the wrong type; and a file without a
    single record unless `allow_empty`. With `lines` (a list), each record's line number is appended to it, so
    a caller's later checks can name the right line even after blank lines."""
    if os.path.isdir(path):
        raise InputError(f"{path}: a folder, not a JSONL file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    types = required if isinstance(required, dict) else {}
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#x} at column {e.start + 1})"
                                 ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise InputError(f"{path}:{lineno}: missing field(s) {missing}; has {sorted(row)}")
            for k, typ in types.items():
                if not isinstance(row[k], typ) or isinstance(row[k], bool) and typ is not bool:
                    want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
                    raise InputError(f"{path}:{lineno}: field {k!r} must be {want}, got {type(row[k]).__name__}")
            rows.append(row)
            if lines is not None:
                lines.append(lineno)
    if not rows and not allow_empty:
        raise InputError(f"{path}: no records (the file is empty or blank)")
    return rows


def jsonl_bytes(rows: typing.Iterable[dict]) -> bytes:
    """The bytes write_jsonl writes: one JSON object per line, UTF-8."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl(path: str | os.PathLike, rows: typing.Iterable[dict]) -> None:
    atomic_write_bytes(path, jsonl_bytes(rows))


def read_json_dict(path: str | os.PathLike) -> dict | None:
    """A JSON object saved by save_json; None when the file is missing, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def disk_full(e: BaseException, path: Path) -> DiskFull | None:
    """The one-line DiskFull for an error writing `path` that a full device caused (ENOSPC, or less than 1 MB
    free: torch's zip writer reports it as a RuntimeError), naming the last good checkpoint of its folder, the
    file itself or the run's state.pt; None for any other error."""
    if not isinstance(e, (OSError, RuntimeError)):
        return None
    try:
        full = getattr(e, "errno", None) == errno.ENOSPC or shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        full = False
    if not full:
        return None
    good = [p for p in (path, path.parent / "state.pt") if p.suffix == ".pt" and p.is_file()]
    last = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was written before"
    return DiskFull(f"no space left on the device writing {path}; {last}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes files private (0600); these are ordinary outputs
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        full = disk_full(e, path)
        if full:
            raise full from None
        raise


def save_checkpoint(path: str | os.PathLike, obj: dict) -> None:
    """torch.save to a temp file in the same folder, then os.replace: the old file stays valid until the new
    one is complete. Refuses (FloatingPointError) to write a tensor holding NaN or inf, so a checkpoint on
    disk only ever holds finite weights and optimizer state. A full disk raises DiskFull (one line naming the
    last good checkpoint); Ctrl-C while torch writes raises KeyboardInterrupt, not the writer's error."""
    bad = next(non_finite(obj), None)
    if bad is not None:
        raise FloatingPointError(f"not writing {path}: {bad} is not finite (the file on disk, if any, is the "
                                 "last finite one). Usual causes: learning rate too high, fp16 overflow.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object: the archive inside is not named after the temp file,
            torch.save(obj, f)          # so the same weights give the same bytes (and sha256, see inputs.json)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C inside torch's zip writer, which then fails too
            raise KeyboardInterrupt from None
        full = disk_full(e, path)
        if full:
            raise full from None
        raise


def non_finite(obj, name: str = ""):
    """Yield the name of every floating-point tensor inside `obj` (dicts, lists, tuples) with a NaN or inf."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            yield name or "tensor"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from non_finite(v, f"{name}.{k}" if name else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from non_finite(v, f"{name}[{i}]")


def load_checkpoint(path: str | os.PathLike, map_location="cpu", required: typing.Sequence[str] = ()) -> dict:
    """Load with weights_only=True: tensors, numbers, strings, lists and dicts only, never arbitrary code.
    A missing, unreadable or foreign file, or one without the `required` keys, raises InputError."""
    if os.path.isdir(path):
        raise InputError(f"{path}: a folder, not a checkpoint file (did you mean {Path(path) / 'model.pt'}?)")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, pickled code that weights_only refuses
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "weights_only" in first.lower() or len(first) < 8:  # torch's advice, or a bare pickle opcode ('101')
            first = "not a torch checkpoint, or one holding objects other than tensors, numbers, strings, lists, dicts"
        elif isinstance(e, OSError) or "zip archive" in first:  # a cut file: torch says Errno 22 or miniz's words
            first = "the file is truncated or is not a torch checkpoint"
        raise InputError(f"{path}: not a readable minipost checkpoint ({first})") from None
    if not isinstance(obj, dict) or any(k not in obj for k in required):
        has = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{path}: expected a checkpoint dict with keys {list(required)}, found {has}")
    return obj


def save_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8"))


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
            self._f.close()


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


# ----------------------------------------------------------------------------------------------------------------
# a run folder: config.json, and state.pt for --resume

RUN_FILES = ("model.pt", "state.pt", "inputs.json", "metrics.jsonl", "samples.txt", "summary.json",
             "config.json")  # a run's own, in the order start_run moves them: config.json last
INPUT_FIELDS = {"init": "checkpoint", "ref": "reference checkpoint", "data": "data file"}  # inputs.json: their sha256
WORLD_FILES = ("pretrain.jsonl", "pretrain_val.jsonl", "sft.jsonl", "prefs.jsonl", "rl.jsonl", "eval.jsonl",
               "eval_prefs.jsonl", "probes.jsonl")  # what minipost.world writes into DATA_DIR (its docstring)


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def world_digest(preset: str = "nano", data_dir=None) -> str:
    """sha256 of the world's files and the preset's tokenizer: what a run reads when --data is its default.
    Other files in DATA_DIR (the lab's, a user's own) reach a run only as its --data."""
    h = hashlib.sha256()
    for name in WORLD_FILES + (f"tokenizer_{preset}.tiktoken",):
        path = Path(data_dir or DATA_DIR) / name
        h.update(name.encode() + b"\0" + (file_digest(path).encode() if path.is_file() else b"-"))
    return h.hexdigest()


def input_digests(cfg, known: dict | None = None) -> dict:
    """What a run is trained from: {"init": sha256 of its --init checkpoint, "ref": of DPO's --ref, "data": of
    its --data file, or "world": of the world's files when --data is the default}. `known` overrides a field (None: the file
    will be rewritten before the run starts). A missing file is left out: it is refused where it is read."""
    got = {}
    for f in INPUT_FIELDS:
        path = getattr(cfg, f, None)
        if known and f in known:
            got[f] = known[f]
        elif path and Path(path).is_file():
            got[f] = file_digest(path)
        elif f == "data" and path == "":
            got["world"] = world_digest(getattr(cfg, "preset", "nano"))
    return got


def record_model(out: Path) -> None:
    """A finished run adds the sha256 of the model.pt it wrote to OUT/inputs.json ("model"), so a model.pt that is
    later replaced (another stage's copied over it) is not reused as this run's (pipeline.plan checks it)."""
    stamp = read_json_dict(out / "inputs.json") or {}
    save_json(out / "inputs.json", {**stamp, "model": file_digest(out / "model.pt")})


RESUME_IGNORES = ("out", "resume", "allow_config_change", "progress", "device", "stop_after", "save_every", "threads",
                  "max_seconds")  # fields that may change between a run and its resumption


_HELD: dict[str, int] = {}  # folder -> the descriptor whose lock this process holds (see hold_folder)


def hold_folder(folder: str | os.PathLike, shared: bool = False, what: str = "--out") -> None:
    """Take an exclusive advisory lock on a run folder (flock on the folder's own descriptor: no file is written),
    so a second process writing into it, or into a folder inside it (a stage of a pipeline that is running),
    stops at once with one line naming the holder's pid. `shared`: a folder this process only reads (the lab's
    --pipeline): nobody may write into it meanwhile, others may read it too. The OS drops the lock when this
    process ends, however it ends (kill -9 included): it never goes stale. A process may take a folder it
    already holds again (a notebook that trains twice in one folder); release_folder lets it go."""
    key = os.path.realpath(folder)
    if key in _HELD or fcntl is None:  # (no flock on Windows: no lock)
        return
    for above in Path(key).parents:  # a folder above, held by another process that writes into it (the pipeline)
        if str(above) not in _HELD and above.is_dir() and _try_flock(str(above), fcntl.LOCK_SH, keep=False) is None:
            _refuse(folder, str(above), what)
    fd = _try_flock(key, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, keep=True)
    if fd is None:
        _refuse(folder, key, what)
    if fd >= 0:  # (-1: a folder this process may not open, so nothing to hold; writing into it fails on its own)
        _HELD[key] = fd


def _try_flock(path: str, how: int, keep: bool) -> int | None:
    """flock(path, how) without waiting -> the descriptor holding it (keep), else released at once; None: held
    by another process."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder we may not open: nothing of ours can be in it
        return -1
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not keep:
        os.close(fd)
    return fd


def _refuse(folder, held: str, what: str) -> None:
    pid, mode = folder_lock_holder(held)
    doing = "reading" if mode == "READ" else "writing into"
    where = "this folder" if os.path.realpath(folder) == held else f"{held}, the folder it is in"
    raise InputError(f"{what} {folder}: another run is {doing} {where} ({f'pid {pid}' if pid else 'another process'}"
                     "); wait for it to end or choose another folder")


def release_folder(folder: str | os.PathLike) -> None:
    fd = _HELD.pop(os.path.realpath(folder), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops its lock


def folder_lock_holder(folder: str) -> tuple[int | None, str]:
    """(pid, "READ" or "WRITE") of a process holding a flock on `folder`, from /proc/locks (Linux); (None, "")
    where that cannot be read."""
    try:
        st = os.stat(folder)
        device_inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:  # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF": pid, then major:minor:inode
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == device_inode:
                    return int(parts[4]), parts[3]
    except (OSError, ValueError):
        pass
    return None, ""


def check_previous(out: Path, what: str) -> None:
    """OUT/previous/ and previous/unfinished/, where a run keeps an earlier one, must be folders if they exist."""
    for folder in (out / "previous", out / "previous" / "unfinished"):
        if folder.exists() and not folder.is_dir() or folder.is_symlink():
            raise InputError(f"{what}: {folder} is not a folder (a run keeps an earlier one there); move it away")


def cut_short_move(out: Path) -> Path | None:
    """previous/unfinished/ or previous/ when it holds weights but no config.json: start_run moved a run's
    files there (the weights first, config.json last) and was killed before it finished."""
    for folder in (out / "previous" / "unfinished", out / "previous"):
        if folder.is_dir() and not (folder / "config.json").exists() and \
                any((folder / w).exists() for w in ("model.pt", "state.pt")):
            return folder
    return None


def start_run(out_dir, cfg, write: bool = True) -> dict | None:
    """Call once every flag, file and model has been checked, and after the models are built (their random
    init draws from the global RNG that a resume restores here). Removes *.tmp files a killed run left behind;
    with cfg.resume, loads OUT/state.pt (refusing a changed config unless cfg.allow_config_change) and returns
    it; without, moves an earlier run's files to OUT/previous/ (one generation is kept, so a fresh start in the
    wrong folder loses nothing; an unfinished one goes to previous/unfinished/ when previous/ holds a finished
    run), writes config.json and inputs.json (input_digests) and returns None. Nothing in out_dir changes
    before this point. `write` False (the ranks of a torchrun job other than 0): change nothing, only load the state."""
    out = Path(out_dir)
    if cfg.resume and not (out / "state.pt").exists():
        raise InputError(f"--resume: no {out / 'state.pt'} to resume from (a run saves it every --save-every steps)")
    check_previous(out, f"--out {out_dir}")
    if not write and not cfg.resume:
        return None
    try:
        if write:
            out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # /proc/x, a read-only disk: check_out_dir cannot foresee every case (root passes access())
        raise InputError(f"--out {out_dir}: cannot create it ({e.strerror or type(e).__name__})") from None
    if write:
        hold_folder(out)  # a second process into this folder stops here, before anything in it changes
    for tmp in out.glob("*.tmp") if write else ():
        tmp.unlink()
    if not cfg.resume:
        weights = [out / n for n in ("model.pt", "state.pt") if (out / n).exists()]
        earlier = [out / n for n in RUN_FILES if (out / n).exists()]
        backup, cut = out / "previous", cut_short_move(out)
        if cut is not None:  # a move that a kill cut short (weights go first, config.json last): complete it
            backup, earlier = cut, [p for p in earlier if not (cut / p.name).exists()]
        elif weights:
            if (backup / "model.pt").is_file() and not (out / "model.pt").exists():
                backup = backup / "unfinished"  # keep the finished run previous/ holds: it may be the only one
            shutil.rmtree(backup, ignore_errors=True)
            backup.mkdir()
        else:
            earlier = []  # only the records of a run killed before its first save: nothing to keep
        for p in earlier:
            os.replace(p, backup / p.name)
        if earlier:
            print(f"{out} held an earlier run: moved its {', '.join(p.name for p in earlier)} to {backup}/ "
                  "(use --resume true to continue a run instead)")
        save_json(out / "inputs.json", input_digests(cfg))  # what plan() checks before it reuses or resumes
        save_json(out / "config.json", dataclasses.asdict(cfg))
        return None
    state = load_checkpoint(out / "state.pt", required=("step", "config", "rng"))  # exists: checked above
    if isinstance(state["step"], int) and state["step"] > getattr(cfg, "max_steps", state["step"]):
        raise InputError(f"--max-steps {cfg.max_steps}: {out / 'state.pt'} is at step {state['step']} already; a "
                         "resumed run only goes on from there (give --max-steps of at least that)")
    now = dataclasses.asdict(cfg)
    changed = sorted(k for k in set(now) | set(state["config"]) if k not in RESUME_IGNORES
                     and now.get(k) != state["config"].get(k))
    # and what it was started from: without inputs.json (deleted, or a run of an older minipost) that cannot be
    # checked, so it takes the same flag as a change, and the inputs it goes on with are recorded
    saved_inputs, inputs = read_json_dict(out / "inputs.json"), input_digests(cfg)
    if saved_inputs is None:
        changed.append(f"{out / 'inputs.json'} is missing or unreadable: what the run started from cannot be checked")
    else:
        changed += [f"the {INPUT_FIELDS.get(k, 'world (data/)')} it names (sha256 {saved_inputs.get(k, '-')!s:.8} "
                    f"-> {v:.8})" for k, v in inputs.items() if saved_inputs.get(k) != v]
    if changed and not cfg.allow_config_change:
        diff = ", ".join(f"{k}: {state['config'].get(k)!r} -> {now.get(k)!r}" if k in now else k for k in changed)
        raise InputError(f"--resume: the config differs from the saved run's ({diff}); "
                         "pass --allow-config-change true to resume anyway")
    if changed and write:  # resumed anyway: from now on the run is recorded as what it continues with
        save_json(out / "inputs.json", {**inputs, "changed_on_resume": True})
        save_json(out / "config.json", now)
    set_rng_state(state["rng"])
    print(f"resumed from {out / 'state.pt'} at step {state['step']}")
    return state


def save_state(out_dir, step: int, cfg, **parts) -> None:
    """OUT/state.pt: the step, the config, every RNG, and `parts` (state_dicts of the model, optimizer, data
    order, ...). Written atomically and only from finite tensors, like every checkpoint."""
    save_checkpoint(Path(out_dir) / "state.pt", {"step": step, "config": dataclasses.asdict(cfg),
                                                 "rng": rng_state(), **parts})
