"""Shared plumbing every objective file uses: device and seeds, config -> command line, checkpoints, JSON files.

Nothing here is about learning; it is kept small so the objective files can stay about their equations.

- `parse_config(Config)` turns a dataclass into an argparse CLI: each field becomes `--field-name`, its
  one-line doc (the `help` metadata) becomes the help text. `--preset` fills preset values first, then any
  flag given on the command line wins.
- Checkpoints are written atomically (temp file + `os.replace`) and loaded with `weights_only=True`, so a crash
  mid-write never leaves a half file and loading a checkpoint never runs pickled code.
- Bad input is part of the lesson: `InputError` is what a flag, a file or a record that is wrong raises, with
  `file:line: what is wrong`; `exit_on_input_error` prints that one line and exits with code 2 (no traceback).

A run's folder, its metrics and its command line (`main`) are the run harness's: minipost/harness/.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import typing
from pathlib import Path

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


def exit_on_input_error(fn):
    """Call fn(); an InputError becomes one line on stderr and exit code 2 (what every CLI here does), a
    FloatingPointError (check_finite, generate: the run diverged) or a DiskFull one line and exit code 1."""
    try:
        return fn()
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")  # one write: under torchrun the ranks' lines do not interleave
        raise SystemExit(2) from None
    except (FloatingPointError, DiskFull) as e:
        sys.stderr.write(f"stopped: {e}\n")
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
    micro, batch = getattr(cfg, "micro_batch_size", 0), getattr(cfg, "batch_size", None)
    if batch is not None and micro > batch:  # a micro-batch is a part of one batch
        raise InputError(f"--micro-batch-size {micro}: more than --batch-size {batch}")
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
    """argparse with one-line errors (exit 2), and usage lines that name the command as it is typed
    (`python -m minipost.sft`, not `sft.py`)."""

    def __init__(self, *args, **kwargs):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # set by `python -m`
        if "prog" not in kwargs and spec is not None and spec.name.startswith("minipost."):
            kwargs["prog"] = f"python -m {spec.name.removesuffix('.__main__')}"
        super().__init__(*args, **kwargs)

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
        default = "" if "default:" in f.metadata.get("help", "") else f"default: {f.default}"  # (said in the help)
        for key, sign in (("min", ">="), ("max", "<="), ("gt", ">")):
            if key in f.metadata:
                default += f"; {sign} {f.metadata[key]}"
        for name, values in (presets or {}).items():  # what each preset actually runs
            if f.name in values and f.name != "preset" and values[f.name] != f.default:
                default += f"; {name}: {values[f.name]}"
        kwargs: dict = {"help": f.metadata.get("help", "") + (f" ({default.lstrip('; ')})" if default else ""),
                        "default": None}
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
        if f.name == "preset" and presets:  # the presets this command has (a shared field may list more)
            kwargs["choices"] = list(presets)
        elif "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    values, preset = {}, None
    if presets is not None and "preset" in {f.name for f in dataclasses.fields(cls)}:
        preset = given.get("preset", _default(cls, "preset"))
        if preset not in presets:
            parser.error(f"unknown preset {preset!r}; choose from {sorted(presets)}")
        values.update(presets[preset])
    values.update(given)
    try:
        return cls(**values)
    except InputError as e:  # a value out of range: one line, exit 2, naming the flags the preset set
        parser.error(with_preset_note(str(e), (presets or {}).get(preset, {}), preset, given))


def with_preset_note(message: str, preset_values: dict, preset, given) -> str:
    """An error message naming flags (--max-new-tokens 256: ...) + which of them the preset set, the user not
    having given them: "(--max-new-tokens set by --preset hf)"."""
    named = [flag for flag in re.findall(r"--([a-z0-9-]+)", message) if flag.replace("-", "_") not in given
             and flag.replace("-", "_") in preset_values and flag != "preset"]
    return message + (f" ({', '.join('--' + f for f in dict.fromkeys(named))} set by --preset {preset})"
                      if named else "")


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
            except ValueError as e:  # valid JSON Python will not read, e.g. an integer of over 4300 digits
                raise InputError(f"{path}:{lineno}: not readable JSON ({str(e)[:120]})") from None
            except RecursionError:
                raise InputError(f"{path}:{lineno}: JSON nested deeper than Python reads; a record is one flat "
                                 "object") from None
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
