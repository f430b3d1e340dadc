"""A run's folder: the lock that keeps it one run's (`hold_folder`), what it was trained from (inputs.json:
`input_digests`, `record_model`), the start of a run (`start_run`: previous/, config.json, the resume checks) and
its resume state (`save_state`), and what Ctrl-C says about it (`where_to_continue`)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

try:
    import fcntl  # advisory locks on run folders (Linux, macOS)
except ImportError:  # Windows
    fcntl = None

import torch

from minipost.checkpoints import HF, split_hf
from minipost.common import (DATA_DIR, InputError, load_checkpoint, read_json_dict, rng_state, save_checkpoint,
                             save_json, set_rng_state)


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


def hf_folder_digest(spec: str) -> str:
    """sha256 of what hf:PATH[#format] names: the format, and the folder's configs, tokenizer, template and weights."""
    folder, chosen = split_hf(spec)
    h = hashlib.sha256((chosen or "").encode() + b"\0")
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix in (".json", ".jinja", ".safetensors"):
            h.update(path.name.encode() + b"\0" + file_digest(path).encode())
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
        elif path and str(path).startswith(HF) and split_hf(path)[0].is_dir():
            got[f] = hf_folder_digest(path)
        elif f == "data" and path == "":
            got["world"] = world_digest(getattr(cfg, "preset", "nano"))
    return got


def record_model(out: Path) -> None:
    """A finished run adds the sha256 of the model.pt it wrote to OUT/inputs.json ("model"), so a model.pt that is
    later replaced (another stage's copied over it) is not reused as this run's (pipeline.plan checks it)."""
    stamp = read_json_dict(out / "inputs.json") or {}
    save_json(out / "inputs.json", {**stamp, "model": file_digest(out / "model.pt")})


RESUME_IGNORES = ("out", "resume", "allow_config_change", "progress", "device", "stop_after", "save_every", "threads",
                  "max_seconds", "checkpointing")  # fields that may change between a run and its resumption


def config_changes(cfg, saved: dict, ignored=RESUME_IGNORES) -> list[str]:
    """The fields whose values differ between cfg and a run's saved config, but `ignored`. A field the saved
    config lacks (a run of an older minipost, before the field existed) counts as holding its default."""
    now = dataclasses.asdict(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return sorted(k for k in set(now) | set(saved) if k not in ignored and now.get(k) != saved.get(k, defaults.get(k)))


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


def check_not_held(folder: str | os.PathLike, what: str = "--out") -> None:
    """Refuse (InputError naming the pid) a folder another process holds, without taking it: the stages of a
    pipeline, checked before the first one runs."""
    key = os.path.realpath(folder)
    if fcntl is None or key in _HELD or not Path(key).is_dir():
        return
    if _try_flock(key, fcntl.LOCK_SH, keep=False) is None:
        _refuse(folder, key, what)


def check_not_a_run(folder: Path, what: str) -> None:
    """A pipeline's or a lab's --out holds runs in subfolders; one that holds a run itself (its model.pt,
    state.pt or metrics.jsonl) is another command's folder, and writing config.json into it would make that run
    unusable."""
    held = [n for n in ("model.pt", "state.pt", "metrics.jsonl") if (Path(folder) / n).is_file()]
    if held:
        raise InputError(f"{what}: holds a single run ({' and '.join(held)}), not runs in subfolders; give "
                         "another folder")


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
    changed = config_changes(cfg, state["config"], RESUME_IGNORES)
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
    try:
        set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # edited, or another program's state.pt
        raise InputError(f"{out / 'state.pt'}: field 'rng' is not the random state a run saves ({type(e).__name__}: "
                         f"{str(e)[:100]}); start afresh without --resume, or give another --out") from None
    print(f"resumed from {out / 'state.pt'} at step {state['step']}")
    return state


def save_state(out_dir, step: int, cfg, **parts) -> None:
    """OUT/state.pt: the step, the config, every RNG, and `parts` (state_dicts of the model, optimizer, data
    order, ...). Written atomically and only from finite tensors, like every checkpoint."""
    save_checkpoint(Path(out_dir) / "state.pt", {"step": step, "config": dataclasses.asdict(cfg),
                                                 "rng": rng_state(), **parts})
