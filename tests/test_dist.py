"""torchrun data parallelism (minipost/dist.py) on the CPU with gloo: 2 processes give the run of 1 process
with the same global batch (same losses, same weights up to float summation order), and only rank 0 writes."""
import json
import subprocess
import sys

import pytest
import torch

from minipost.common import load_checkpoint

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
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b):
    wa, wb = load_checkpoint(a / "model.pt")["model"], load_checkpoint(b / "model.pt")["model"]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], **TOL, msg=k)


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
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5) and ra["val_loss"] == pytest.approx(rb["val_loss"],
                                                                                                    rel=1e-5)
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


def test_sft_on_two_processes_is_the_one_process_run(base, tmp_path):
    """Token-weighted SFT loss: every rank divides by the whole step's target count, micro-batches inside a
    rank's half included; the pretraining mix (ptx) is split the same way."""
    flags = ["--init", str(base / "model.pt"), "--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "1",
             "--ptx-batch-size", "2", "--eval-every", "0", "--eval-windows", "2", "--log-every", "1"]
    launch(1, "sft", tmp_path / "one", *flags)
    launch(2, "sft", tmp_path / "two", *flags)
    same_weights(tmp_path / "one", tmp_path / "two")
    for ra, rb in zip(rows(tmp_path / "one"), rows(tmp_path / "two")):
        assert ra.keys() == rb.keys()
        for k in ("loss", "ptx_loss", "val_loss", "token_acc", "tokens_seen"):
            if k in ra:
                assert ra[k] == pytest.approx(rb[k], rel=1e-5), k


@pytest.fixture(scope="module")
def sft_model(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "sft"
    launch(1, "sft", out, "--init", str(base / "model.pt"), "--max-steps", "2", "--batch-size", "4",
           "--eval-windows", "2")
    return out / "model.pt"


def test_dpo_on_two_processes_is_the_one_process_run(sft_model, tmp_path):
    flags = ["--init", str(sft_model), "--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "1",
             "--max-pairs", "32", "--eval-pairs", "8", "--log-every", "1", "--lr", "1e-3"]
    launch(1, "dpo", tmp_path / "one", *flags)
    launch(2, "dpo", tmp_path / "two", *flags)
    same_weights(tmp_path / "one", tmp_path / "two")
    a, b = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert len(a) == len(b) == 3 and a[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # ln 2 on the first step
    for ra, rb in zip(a, b):
        for k in ("loss", "nll_loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "eval_pref_acc"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), k


def test_reward_model_on_two_processes_is_the_one_process_run(sft_model, tmp_path):
    flags = ["--init", str(sft_model), "--max-steps", "3", "--batch-size", "4", "--micro-batch-size", "1",
             "--max-pairs", "32", "--log-every", "1", "--eval-every", "3"]
    launch(1, "reward_model", tmp_path / "one", *flags)
    launch(2, "reward_model", tmp_path / "two", *flags)
    same_weights(tmp_path / "one", tmp_path / "two")
    for ra, rb in zip(rows(tmp_path / "one"), rows(tmp_path / "two")):
        for k in ("loss", "accuracy", "margin", "eval_accuracy"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), k


def test_the_rl_files_refuse_torchrun_until_they_split_their_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "minipost.grpo", "--out", str(tmp_path / "g"), "--max-steps", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "minipost.grpo does not run data-parallel yet" in proc.stderr
    assert not (tmp_path / "g").exists()
