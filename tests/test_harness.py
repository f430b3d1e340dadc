"""The run harness (minipost/harness/run.py) on a toy objective: its cadence (log, eval, save, --stop-after,
--max-seconds), resume of every registered object and value with the clock carried on, and the end of a run;
and the import rules that keep it below the objectives."""
import ast
import dataclasses
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from minipost.common import DiskFull, InputError, field, load_checkpoint, save_checkpoint
from minipost.harness import Run, hold_folder, main, read_metrics, release_folder, where_to_continue
from minipost.harness import metrics as harness_metrics

ROOT = Path(__file__).resolve().parent.parent
OBJECTIVES = ("pretrain", "sft", "dpo", "reward_model", "reinforce", "grpo", "ppo")


@dataclasses.dataclass
class ToyConfig:
    out: str = field("", "run folder")
    max_steps: int = field(6, "steps")
    log_every: int = field(2, "log cadence")
    save_every: int = field(4, "state.pt cadence")
    stop_after: int = field(0, "stop early")
    max_seconds: float = field(0.0, "time limit")
    resume: bool = field(False, "resume")
    allow_config_change: bool = field(False, "resume a changed config")
    seed: int = field(0, "seed")
    device: str = field("cpu", "device")
    threads: str = field("1", "threads")
    progress: bool = field(False, "bar")


def toy_train(cfg: ToyConfig, clock=None) -> tuple[Run, torch.nn.Linear, list[float]]:
    """Least squares on a fixed batch with a data generator that a resume must restore."""
    run = Run(cfg, "toy")
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(7)
    run.start(model=model, optimizer=optimizer, data=gen)
    seen = run.resumed_value("seen", 0)
    evals = []
    for _ in run.steps():
        if clock is not None:
            run.t0 -= clock  # pretend each step took `clock` seconds
        x = torch.randn(4, 3, generator=gen)  # (B, 3): depends on the generator's state
        loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
        run.check(loss, "loss")
        loss.backward()
        grad_norm = run.optimizer_step(model, optimizer, grad_clip=1.0)
        seen += len(x)
        if run.eval_due(3):
            evals.append(run.step)
        run.log(loss=loss.item(), grad_norm=grad_norm, seen=seen)
        run.end_step(seen=seen)
    run.finish({"model": model.state_dict(), "step": run.step}, summary={"seen": seen})
    return run, model, evals


def test_cadence_logs_at_step_1_every_log_every_and_at_the_last(tmp_path):
    run, _, evals = toy_train(ToyConfig(out=str(tmp_path)))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 4, 6]
    assert all(r["elapsed_s"] >= 0 for r in rows) and [r["seen"] for r in rows] == [4, 8, 16, 24]
    assert evals == [3, 6]  # every 3 steps, and the last
    assert load_checkpoint(tmp_path / "state.pt")["step"] == 6 and load_checkpoint(tmp_path / "model.pt")["step"] == 6
    assert (tmp_path / "summary.json").is_file() and run.done


def test_stop_after_then_resume_is_bit_exact_and_carries_the_clock_and_values(tmp_path):
    _, straight, _ = toy_train(ToyConfig(out=str(tmp_path / "a")))
    run, _, _ = toy_train(ToyConfig(out=str(tmp_path / "b"), stop_after=3), clock=10.0)
    assert run.stopped == "--stop-after" and not run.done and not (tmp_path / "b" / "model.pt").exists()
    state = load_checkpoint(tmp_path / "b" / "state.pt")
    assert state["step"] == 3 and state["seen"] == 12 and state["elapsed_s"] >= 30  # saved at --stop-after
    run, resumed, _ = toy_train(ToyConfig(out=str(tmp_path / "b"), resume=True))
    assert run.resumed and run.step == 6
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    rows_a, rows_b = (read_metrics(tmp_path / d / "metrics.jsonl") for d in "ab")
    assert [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows_a] == \
           [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows_b]
    assert rows_b[-1]["elapsed_s"] >= 30  # the seconds before the resume count


def test_max_seconds_stops_the_run_and_keeps_the_model_it_trained(tmp_path):
    run, _, evals = toy_train(ToyConfig(out=str(tmp_path), max_seconds=25.0), clock=10.0)
    assert run.stopped == "--max-seconds 25.0" and run.step == 3 and run.done
    assert evals == [3]  # the held-out evaluation runs at the step the time ran out
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]  # ... and it is logged
    assert load_checkpoint(tmp_path / "model.pt")["step"] == 3


def test_a_resume_cannot_go_back_below_the_saved_step(tmp_path):
    toy_train(ToyConfig(out=str(tmp_path), stop_after=5))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(InputError, match="--max-steps 4: .*state.pt is at step 5 already"):
        toy_train(ToyConfig(out=str(tmp_path), max_steps=4, resume=True, allow_config_change=True))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # refused before anything changed


def test_a_resume_whose_inputs_json_is_gone_needs_the_flag_and_records_what_it_goes_on_with(tmp_path):
    toy_train(ToyConfig(out=str(tmp_path), stop_after=3))
    (tmp_path / "inputs.json").unlink()
    with pytest.raises(InputError, match="inputs.json is missing or unreadable: what the run started from cannot"):
        toy_train(ToyConfig(out=str(tmp_path), resume=True))
    assert not (tmp_path / "inputs.json").exists()
    toy_train(ToyConfig(out=str(tmp_path), resume=True, allow_config_change=True))
    assert json.loads((tmp_path / "inputs.json").read_text())["changed_on_resume"] is True


def test_ctrl_c_or_a_full_disk_while_a_checkpoint_is_written_leave_the_old_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "state.pt", {"step": 1})

    def interrupted(obj, f):  # torch's zip writer fails while Ctrl-C unwinds it
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8339200 vs 8339092")
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "state.pt", {"step": 2})

    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8339200 vs 8339092")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(8 << 20, 8 << 20, 0))
    with pytest.raises(DiskFull, match=f"no space left on the device writing {tmp_path / 'state.pt'}; the last good "
                                       f"checkpoint is {tmp_path / 'state.pt'}"):
        save_checkpoint(tmp_path / "state.pt", {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "state.pt")["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full (a device that is always full) is Linux's")
@pytest.mark.parametrize("name", ["metrics.jsonl", "summary.json", "model.pt"])
def test_a_full_disk_on_any_file_of_a_run_is_one_line_naming_the_last_good_checkpoint(tmp_path, monkeypatch, capsys,
                                                                                     name):
    """The device fills up while one of the run's files is written (/dev/full stands in for it): one line that
    names the file and the checkpoint --resume true continues from, exit 1, no traceback."""
    real_open, real_mkstemp = open, tempfile.mkstemp

    def mkstemp(dir, prefix, suffix):  # the temp file of an atomic write of `name` is on the full device
        fd, tmp = real_mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        if prefix == name + ".":
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, tmp
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(harness_metrics, "open", lambda path, *a, **k: real_open("/dev/full" if Path(path).name == name
                                                                        else path, *a, **k), raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(8 << 20, 8 << 20, 0))
    with pytest.raises(SystemExit) as stop:
        main(toy_train, ToyConfig, argv=["--out", str(tmp_path)])
    monkeypatch.undo()
    last = ("no checkpoint was written before" if name == "metrics.jsonl" else  # (its first row fails)
            f"the last good checkpoint is {tmp_path / 'state.pt'}")
    assert stop.value.code == 1
    assert capsys.readouterr().err == f"stopped: no space left on the device writing {tmp_path / name}; {last}\n"


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_refuses_a_bad_flag_in_one_line_with_exit_2(objective, tmp_path, capsys):
    """`python -m minipost.<objective> --max-steps 0` (main is what that command runs; tests/test_pretrain.py runs
    one as a real process): one line naming the flag, exit 2, and nothing written."""
    module = importlib.import_module(f"minipost.{objective}")
    with pytest.raises(SystemExit) as stop:
        main(module.train, module.Config, module.PRESETS, argv=["--max-steps", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "--max-steps 0: must be >= 1" in err, err
    assert not (tmp_path / "run").exists()


def test_a_resume_state_of_another_run_is_one_line_naming_the_field(tmp_path):
    toy_train(ToyConfig(out=str(tmp_path), stop_after=4))
    state = load_checkpoint(tmp_path / "state.pt")
    for edit, message in [(lambda st: st.pop("optimizer"), "field 'optimizer' missing"),
                          (lambda st: st["model"].update(weight=torch.zeros(2, 5)), "field 'model' does not fit"),
                          (lambda st: st.update(step="4"), "fields 'step' and 'elapsed_s' must be numbers"),
                          (lambda st: st.update(step=-5), "fields 'step' and 'elapsed_s' must be numbers, step >= 0"),
                          (lambda st: st.update(rng={}), "field 'rng' is not the random state a run saves")]:
        edited = {**state, "model": dict(state["model"])}
        edit(edited)
        save_checkpoint(tmp_path / "state.pt", edited)
        with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'state.pt'}: {message}")):
            toy_train(ToyConfig(out=str(tmp_path), resume=True))
    save_checkpoint(tmp_path / "state.pt", state)
    toy_train(ToyConfig(out=str(tmp_path), resume=True))  # the run's own state still resumes
    assert (tmp_path / "model.pt").is_file()


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("bad,message", [(dict(max_steps=0), "--max-steps 0: must be >= 1"),
                                         (dict(lr=0.0), "--lr 0.0: must be > 0"),
                                         (dict(lr=float("nan")), "--lr nan: must be a finite number"),
                                         (dict(eval_every=-1), "--eval-every -1: must be >= 0"),
                                         (dict(save_every=0), "--save-every 0: must be >= 1"),
                                         (dict(device="tpu"), "--device 'tpu'"),
                                         (dict(threads="many"), "--threads 'many'")])
def test_every_objective_refuses_a_bad_shared_field_when_its_config_is_made(objective, bad, message):
    """The fields RunConfig gives every objective are checked the same way in each (before any file is read)."""
    module = importlib.import_module(f"minipost.{objective}")
    with pytest.raises(InputError, match=re.escape(message)):
        module.Config(**bad)


@pytest.mark.parametrize("objective", ("pretrain", "sft", "dpo", "reward_model"))
def test_a_micro_batch_larger_than_the_batch_is_refused(objective):
    module = importlib.import_module(f"minipost.{objective}")
    with pytest.raises(InputError, match=re.escape("--micro-batch-size 8: more than --batch-size 4")):
        module.Config(batch_size=4, micro_batch_size=8)


def test_a_non_finite_loss_stops_with_the_step(tmp_path):
    run = Run(ToyConfig(out=str(tmp_path)), "toy")
    run.start(model=torch.nn.Linear(1, 1))
    next(run.steps())
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        run.check(torch.tensor(float("nan")), "loss")


LIBRARY = ("common", "dist", "threads", "optim", "model", "decoder", "hf", "checkpoints", "tokenizer", "chat_formats",
           "data", "logprobs", "rollout", "rewards", "heldout", "rl", "lora", "retrieval", "harness", "kernels",
           "world")  # below the objectives
APPLICATIONS = ("pipeline", "lab", "chat", "card", "evals", "bench", "export")  # evals: the card command's first name


def import_graph() -> dict[str, set[str]]:
    """minipost module -> the minipost modules it imports, at any depth of the file (function-level imports too).
    `from minipost.world import knowledge` is an import of the submodule, not of the package's __init__."""
    files = {}
    for path in (ROOT / "minipost").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("minipost"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(files)
                deps |= subs | ({node.module} if len(subs) < len(node.names) else set())
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} & set(files)
        graph[name] = deps - {name}
    return graph


def layer(module: str) -> str:
    if module == "minipost":  # the package's __init__ (the thread rule's environment): below everything
        return "library"
    top = module.split(".")[1]
    return "objective" if top in OBJECTIVES else "application" if top in APPLICATIONS else \
        "library" if top in LIBRARY else "other"


def test_layers_point_down_and_no_module_imports_itself_through_others():
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer(m) == "other")
    assert not unplaced, f"modules in no layer (add them to LIBRARY, OBJECTIVES or APPLICATIONS): {unplaced}"
    for module, deps in graph.items():
        for dep in deps:
            if layer(module) == "library":
                assert layer(dep) == "library", f"{module} (library) imports {dep} ({layer(dep)})"
            if layer(module) == "objective":
                assert layer(dep) == "library", f"{module} (an objective) imports {dep} ({layer(dep)})"
    state = {}  # a depth-first search: a module met again while still on the path closes a circle

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            assert state.get(dep) != "open", "import circle: " + " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"
    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


PRETRAIN_CLI = [sys.executable, "-m", "minipost.pretrain", "--batch-size", "2", "--block-size", "32", "--eval-every",
                "0", "--eval-windows", "2", "--progress", "false", "--threads", "1"]


def test_a_second_process_writing_into_a_held_folder_stops_at_once_naming_the_holder(tmp_path):
    hold_folder(tmp_path)  # this process is "the first run"
    try:
        proc = subprocess.run(PRETRAIN_CLI + ["--out", str(tmp_path), "--max-steps", "2"], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"--out {tmp_path}: another run is writing into this folder (pid {os.getpid()})" in proc.stderr
        assert list(tmp_path.iterdir()) == []  # it wrote nothing
    finally:
        release_folder(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom minipost.harness import hold_folder\n"
                           "hold_folder(sys.argv[1])", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # released: another process may take the folder now
    hold_folder(tmp_path)  # a pipeline's folder: a stage run into a folder inside it stops too
    try:
        proc = subprocess.run(PRETRAIN_CLI + ["--out", str(tmp_path / "pretrain"), "--max-steps", "2"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and f"another run is writing into {tmp_path}, the folder it is in (pid " \
            f"{os.getpid()})" in proc.stderr, proc.stderr
    finally:
        release_folder(tmp_path)


_HOLDER = ("import sys, time\nfrom minipost.harness import hold_folder\nhold_folder(sys.argv[1])\n"
           "print('held', flush=True)\ntime.sleep(300)\n")


def test_the_pipeline_and_the_lab_stop_at_once_in_a_folder_another_process_holds(tmp_path):
    from minipost import lab, pipeline
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        busy = f"{tmp_path}: another run is writing into this folder (pid {holder.pid})"
        with pytest.raises(InputError, match=re.escape(f"--out {busy}")):
            pipeline.run(pipeline.Config(out=str(tmp_path), max_steps=1, progress=False))
        with pytest.raises(InputError, match=re.escape(f"--out {busy}")):
            lab.run_lab(lab.Config(out=str(tmp_path)))
        with pytest.raises(InputError, match=re.escape(f"--pipeline {busy}")):  # a pipeline retraining what it reads
            lab.run_lab(lab.Config(out=str(tmp_path.parent / f"{tmp_path.name}_lab"), pipeline=str(tmp_path)))
        assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / f"{tmp_path.name}_lab").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_pipeline_whose_stage_folder_another_process_holds_stops_before_the_first_stage(tmp_path):
    from minipost import pipeline
    (tmp_path / "sft").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "sft")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        busy = f"--out {tmp_path / 'sft'}: another run is writing into this folder (pid {holder.pid})"
        with pytest.raises(InputError, match=re.escape(busy)):
            pipeline.run(pipeline.Config(out=str(tmp_path), max_steps=1, progress=False))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]  # pretraining did not run
    finally:
        holder.kill()
        holder.wait()


def test_a_pipeline_or_lab_into_a_single_runs_folder_is_refused(tmp_path):
    from minipost import lab, pipeline
    (tmp_path / "metrics.jsonl").write_text("")  # a run killed before its first save leaves only its records
    for command in (lambda: pipeline.run(pipeline.Config(out=str(tmp_path), max_steps=1, progress=False)),):
        with pytest.raises(InputError, match=re.escape(f"--out {tmp_path}: holds a single run (metrics.jsonl)")):
            command()
    save_checkpoint(tmp_path / "model.pt", {"step": 1})  # what `python -m minipost.sft --out tmp_path` leaves
    (tmp_path / "metrics.jsonl").unlink()
    for command in (lambda: pipeline.run(pipeline.Config(out=str(tmp_path), max_steps=1, progress=False)),
                    lambda: lab.run_lab(lab.Config(out=str(tmp_path)))):
        with pytest.raises(InputError, match=re.escape(f"--out {tmp_path}: holds a single run (model.pt)")):
            command()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no config.json written over the run's


def test_ctrl_c_names_what_a_run_pipeline_or_lab_folder_holds(tmp_path):
    assert where_to_continue(tmp_path) == (f"the run had not started: nothing in {tmp_path} changed; the same "
                                           "command starts it again")
    hold_folder(tmp_path)
    try:
        save_checkpoint(tmp_path / "pretrain" / "state.pt", {"step": 3})  # a pipeline with one stage under way
        assert where_to_continue(tmp_path) == (f"{tmp_path} holds the runs finished so far; the same command again "
                                               "reuses them and resumes the interrupted one from its last state.pt")
        save_checkpoint(tmp_path / "state.pt", {"step": 7})  # a run's own folder
        assert where_to_continue(tmp_path).startswith(f"{tmp_path / 'state.pt'} holds step 7; the same command with "
                                                      "--resume true continues from it")
    finally:
        release_folder(tmp_path)


def test_ctrl_c_says_where_the_state_is_and_exits_130(tmp_path):
    proc = subprocess.Popen(PRETRAIN_CLI + ["--out", str(tmp_path), "--max-steps", "100000", "--save-every", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not (tmp_path / "state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"interrupted: {tmp_path / 'state.pt'} holds step " in err and "--resume true continues" in err


def test_a_saved_config_without_a_newer_field_counts_it_as_its_default():
    """A run folder written before a field existed (its config.json lacks it) is resumed and reused as long
    as the field keeps its default; another value is a change."""
    import dataclasses
    from minipost import grpo
    from minipost.harness import config_changes
    cfg = grpo.Config()
    saved = dataclasses.asdict(cfg)
    del saved["lora_rank"], saved["checkpointing"]
    assert config_changes(cfg, saved) == []
    assert config_changes(dataclasses.replace(cfg, lora_rank=4), saved) == ["lora_rank"]
