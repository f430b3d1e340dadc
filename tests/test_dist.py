"""torchrun data parallelism (minipost/dist.py) on the CPU with gloo: 2 processes give the run of 1 process
with the same global batch (same losses, same weights up to float summation order), and only rank 0 writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minipost.common import load_checkpoint
from minipost.harness import hold_folder, read_metrics, release_folder

TOL = dict(atol=2e-5, rtol=1e-4)  # float32 sums in another order (two half-batch gradients, then their sum)


def launch(n: int, module: str, out, *flags):
    """`torchrun --nproc_per_node n -m minipost.<module> ...` (1: plain python -m)."""
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1
            else [sys.executable])
    cmd = head + ["-m", f"minipost.{module}", "--out", str(out), "--progress", "false", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def rows(out):
    return read_metrics(out / "metrics.jsonl")


def same_value(a, b, **tol) -> bool:
    """Two logged held-out values agree: both None (not measured yet at that step), or both numbers within tol."""
    if a is None or b is None:
        return a is None and b is None
    return a == pytest.approx(b, **tol)


def same_weights(a, b, tol=TOL):
    wa, wb = load_checkpoint(a / "model.pt")["model"], load_checkpoint(b / "model.pt")["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], **tol, msg=k)


PRETRAIN = ["--max-steps", "4", "--batch-size", "4", "--block-size", "64", "--eval-every", "2", "--eval-windows",
            "2", "--log-every", "1", "--save-every", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "one"
    launch(1, "pretrain", out, *PRETRAIN)
    return out


def test_pretrain_on_two_processes_is_the_one_process_run(base, tmp_path):
    two = tmp_path / "two"
    proc = launch(2, "pretrain", two, *PRETRAIN)
    same_weights(base, two)
    a, b = rows(base), rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]  # one writer: no doubled rows
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert same_value(ra["val_loss"], rb["val_loss"], rel=1e-5)
    assert [r["val_loss"] is None for r in a] == [True, False, False, False]  # first measured at step 2
    assert proc.stdout.count("pretrain done") == 1  # only rank 0 prints
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in base.iterdir())


def test_two_processes_resume_and_refuse_a_batch_they_cannot_split(base, tmp_path):
    two = tmp_path / "two"
    launch(2, "pretrain", two, *PRETRAIN, "--stop-after", "2")
    assert not (two / "model.pt").exists()
    launch(2, "pretrain", two, *PRETRAIN, "--resume", "true")
    same_weights(base, two)
    bad = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "minipost.pretrain", "--out", str(tmp_path / "odd"), *PRETRAIN[:2], "--batch-size", "3"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--batch-size 3: not divisible by the 2 processes" in bad.stderr
    assert not (tmp_path / "odd").exists()
    hold_folder(two)  # another run holds the folder: every rank stops on rank 0's line, none trains into it
    try:
        held = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "minipost.pretrain", "--out", str(two), *PRETRAIN], capture_output=True, text=True,
                              timeout=300)
    finally:
        release_folder(two)
    line = f"error: --out {two}: another run is writing into this folder (pid {os.getpid()})"
    assert held.returncode != 0 and held.stderr.count(line) == 2, held.stderr[-3000:]
    assert "[rank" not in held.stderr  # no rank's traceback (torchrun's own report follows the two lines)
    same_weights(base, two)  # untouched


@pytest.fixture(scope="module")
def sft_model(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "sft"
    launch(1, "sft", out, "--init", str(base / "model.pt"), "--max-steps", "2", "--batch-size", "4",
           "--eval-windows", "2")
    return out / "model.pt"


RUNS = """
import importlib
import sys
from minipost.common import config_with_preset
from minipost.harness import hold_folder, read_metrics, release_folder

def vowels(prompt, completion, record):  # a reward that differs between answers, so groups carry a signal
    return sum(c in "aeiou" for c in completion) / max(len(completion), 1)

base, sft, out = sys.argv[1:4]
RL = dict(init=sft, max_steps=3, prompts_per_step=4, group_size=4, micro_batch_size=3, max_new_tokens=12,
          eval_every=0, eval_limit=1, log_every=1, lr=1e-3, domains="arithmetic")
RUNS = {  # micro-batches inside each rank's share of the rows, every objective's held-out evaluation
    "sft": dict(init=base, max_steps=3, batch_size=4, micro_batch_size=1, ptx_batch_size=2, eval_every=0,
                eval_windows=2, log_every=1),
    "dpo": dict(init=sft, max_steps=3, batch_size=4, micro_batch_size=1, max_pairs=32, eval_pairs=8, log_every=1,
                lr=1e-3),
    "reward_model": dict(init=sft, max_steps=3, batch_size=4, micro_batch_size=1, max_pairs=32, log_every=1,
                         eval_every=3),
    "grpo": dict(**RL, num_iterations=2),
    "reinforce": dict(**RL, num_iterations=2),
    "ppo": dict(**RL, ppo_epochs=2, num_minibatches=3),
}
for name, flags in RUNS.items():
    module = importlib.import_module(f"minipost.{name}")
    cfg = config_with_preset(module.Config, module.PRESETS, out=f"{out}/{name}", progress=False, **flags)
    module.train(cfg, reward_fn=vowels) if "prompts_per_step" in flags else module.train(cfg)
"""


@pytest.fixture(scope="module")
def runs(base, sft_model, tmp_path_factory):
    """SFT, DPO, the reward model, GRPO, RLOO and PPO, trained one after another by one process and by two
    (one launch each: the tests below compare their folders one/<objective> and two/<objective>)."""
    root = tmp_path_factory.mktemp("runs")
    (root / "runs.py").write_text(RUNS)
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    for n, out in ((1, "one"), (2, "two")):
        head = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1
                                   else [])
        proc = subprocess.run(head + [str(root / "runs.py"), str(base / "model.pt"), str(sft_model), str(root / out)],
                              capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return root / "one", root / "two"


def test_sft_on_two_processes_is_the_one_process_run(runs):
    """Token-weighted SFT loss: every rank divides by the whole step's target count, micro-batches inside a
    rank's half included; the pretraining mix (ptx) is split the same way."""
    one, two = (r / "sft" for r in runs)
    same_weights(one, two)
    for ra, rb in zip(rows(one), rows(two)):
        assert ra.keys() == rb.keys()
        for k in ("loss", "ptx_loss", "token_acc", "tokens_seen"):
            if k in ra:
                assert ra[k] == pytest.approx(rb[k], rel=1e-5), k
        assert same_value(ra["val_loss"], rb["val_loss"], rel=1e-5)


def test_dpo_on_two_processes_is_the_one_process_run(runs):
    one, two = (r / "dpo" for r in runs)
    same_weights(one, two)
    a, b = rows(one), rows(two)
    assert len(a) == len(b) == 3 and a[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # ln 2 on the first step
    for ra, rb in zip(a, b):
        for k in ("loss", "nll_loss", "rewards/margins", "rewards/accuracies", "logps/chosen"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), k
        assert same_value(ra["eval_pref_acc"], rb["eval_pref_acc"], rel=1e-4, abs=1e-6)
    assert [r["eval_pref_acc"] is None for r in a] == [True, True, False]  # measured at the last step only


def test_reward_model_on_two_processes_is_the_one_process_run(runs):
    one, two = (r / "reward_model" for r in runs)
    same_weights(one, two)
    a, b = rows(one), rows(two)
    for ra, rb in zip(a, b):
        for k in ("loss", "accuracy", "margin"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), k
        assert same_value(ra["eval_accuracy"], rb["eval_accuracy"], rel=1e-4, abs=1e-6)
    assert [r["eval_accuracy"] is None for r in a] == [True, True, False]  # --eval-every 3: at step 3


@pytest.mark.parametrize("module", ["grpo", "reinforce", "ppo"])
def test_rl_on_two_processes_is_the_one_process_run(runs, module):
    """Each rank samples the groups of half the prompts with the random draws one process uses for those rows
    (GPT.generate rows_of, dist.skip_draws), so the answers, rewards and advantages are one process's, and the
    update is too, up to float rounding (the rows' log-probs come from batches of another size)."""
    one, two = (r / module for r in runs)
    a = [r for r in rows(one) if "reward" in r]
    b = [r for r in rows(two) if "reward" in r]
    assert len(a) == len(b) == 3 and a[0]["zero_std_frac"] < 1  # the groups had a signal
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ("reward", "reward_std", "length", "stop_rate", "zero_std_frac"):  # the same answers
            assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-7), k
        for k in ("loss", "kl_ref", "grad_norm", "clip_frac"):
            if k in ra:
                assert ra[k] == pytest.approx(rb[k], rel=1e-3, abs=1e-5), k
    # Adam divides each gradient by its own running size, so a weight whose gradient is float noise can move by
    # up to lr per step either way, in one run and not the other. Measured: GRPO and RLOO (6 steps) agree to
    # 2.1e-5 everywhere; PPO (18 steps) has 1 weight in 65536 at 3e-4, every other within 1e-4. So: at most one
    # weight in 10,000 beyond 1e-4, and none beyond the total step of 18 Adam steps at lr 1e-3
    wa, wb = (load_checkpoint(d / "model.pt")["model"] for d in (one, two))
    diff = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    assert (diff > 1e-4).float().mean() <= 1e-4 and diff.max() < 18 * 1e-3, (diff.max(), (diff > 1e-4).sum())


def test_the_pipeline_runs_on_two_processes(tmp_path):
    """torchrun -m minipost.pipeline: every stage on both ranks, the card from rank 0 (plumbing: a few steps)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "minipost.pipeline", "--out", str(tmp_path), "--max-steps", "2", "--eval-limit", "1",
                           "--stages", "pretrain,sft", "--progress", "false"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for stage in ("pretrain", "sft"):  # (DPO and the RL stages on two processes: the runs fixture)
        logged = read_metrics(tmp_path / stage / "metrics.jsonl")
        kinds = [(r["step"], tuple(sorted(r))) for r in logged]  # one writer: no row twice
        assert len(kinds) == len(set(kinds)), (stage, kinds)
        assert load_checkpoint(tmp_path / stage / "model.pt")["step"] == 2
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert list(saved["card"]) == ["base", "sft"]
    assert proc.stdout.count("seconds per stage") == 1
    hold_folder(tmp_path)  # another pipeline holds the folder: every rank stops on rank 0's line
    try:
        held = subprocess.run(proc.args, capture_output=True, text=True, timeout=300)
    finally:
        release_folder(tmp_path)
    line = f"error: --out {tmp_path}: another run is writing into this folder (pid {os.getpid()})"
    assert held.returncode != 0 and held.stderr.count(line) == 2 and "[rank" not in held.stderr, held.stderr[-3000:]
