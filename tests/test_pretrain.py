"""Pretraining runs end to end, writes its files, learns, resumes exactly, and refuses bad flags, bad files and
non-finite weights with a true message."""
import json
import subprocess
import sys

import pytest
import torch

from minipost.common import InputError, load_checkpoint
from minipost.harness import read_metrics
from minipost.optim import cosine_lr
from minipost.pretrain import PRESETS, Config, train

TEXT = [{"text": f"The capital of Velo{i % 7} is Tarsk{i % 5}. {i % 9} + {i % 4} = {i % 9 + i % 4}."} for i in range(200)]
TIME_COLUMNS = ("tokens_per_s", "elapsed_s")


def small_cfg(tmp_path, name, **kw):
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TEXT))
    base = dict(PRESETS["nano"], out=str(tmp_path / name), data=str(data), val_data=str(data), max_steps=6,
                batch_size=2, block_size=32, eval_every=3, eval_windows=2, log_every=1, save_every=3,
                warmup_steps=2, progress=False, lr=3e-3, device="cpu")
    return Config(**{**base, **kw})


def metrics(run, drop=TIME_COLUMNS):
    rows = read_metrics(run / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_defaults_are_the_nano_preset():
    assert PRESETS["nano"] == {} and Config().preset == "nano" and Config().micro_batch_size == 0
    assert set(PRESETS["small"]) <= {f for f in Config.__dataclass_fields__}


def test_pretrain_writes_its_outputs_and_loss_falls(tmp_path):
    summary = train(small_cfg(tmp_path, "run", max_steps=30, eval_every=10, save_every=10))
    out = tmp_path / "run"
    for f in ("config.json", "metrics.jsonl", "state.pt", "model.pt", "samples.txt"):
        assert (out / f).exists(), f
    rows = metrics(out, drop=())
    assert rows[-1]["step"] == 30 and rows[-1]["tokens_per_s"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0  # 30 steps on a repetitive text: clearly learning
    ckpt = load_checkpoint(out / "model.pt")
    assert {"model", "model_config", "tokenizer", "step"} <= set(ckpt) and ckpt["step"] == 30
    assert summary["val_loss"] < rows[0]["loss"]
    for r in rows:  # the logged lr is the schedule's, for the step that was taken
        assert r["lr"] == pytest.approx(cosine_lr(r["step"] - 1, lr=3e-3, warmup_steps=2, max_steps=30,
                                                  min_lr_ratio=0.1), abs=1e-6)  # logged to 6 decimals
    assert "###" in (out / "samples.txt").read_text()  # greedy continuations of the world's probes


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    train(small_cfg(tmp_path, "straight"))
    train(small_cfg(tmp_path, "resumed", stop_after=3))
    assert not (tmp_path / "resumed" / "model.pt").exists()  # stopped: only state.pt
    (tmp_path / "resumed" / "model.pt.x1.tmp").write_text("left by a killed run")
    log = tmp_path / "resumed" / "metrics.jsonl"
    log.write_text(log.read_text() + json.dumps({"step": 4, "loss": 9.9}) + "\n")  # logged, then killed
    train(small_cfg(tmp_path, "resumed", resume=True))
    a = load_checkpoint(tmp_path / "straight" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "model.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "straight")  # same rows, the crash tail dropped
    assert not list((tmp_path / "resumed").glob("*.tmp"))


def test_resume_needs_state_and_the_same_config(tmp_path):
    with pytest.raises(InputError, match="no .*state.pt"):
        train(small_cfg(tmp_path, "none", resume=True))
    train(small_cfg(tmp_path, "run", stop_after=3))
    with pytest.raises(InputError, match="lr: 0.003 -> 0.001"):
        train(small_cfg(tmp_path, "run", resume=True, lr=1e-3))
    summary = train(small_cfg(tmp_path, "run", resume=True, lr=1e-3, allow_config_change=True))
    assert summary["steps"] == 6


def test_micro_batches_give_the_full_batch_update(tmp_path):
    train(small_cfg(tmp_path, "whole", max_steps=2, batch_size=4))
    train(small_cfg(tmp_path, "micro", max_steps=2, batch_size=4, micro_batch_size=1))
    a = load_checkpoint(tmp_path / "whole" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "micro" / "model.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    for ra, rb in zip(metrics(tmp_path / "whole"), metrics(tmp_path / "micro")):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)


def test_a_huge_learning_rate_stops_and_leaves_finite_checkpoints(tmp_path):
    train(small_cfg(tmp_path, "run", max_steps=3))  # a good model.pt and state.pt
    good = load_checkpoint(tmp_path / "run" / "model.pt")["model"]
    with pytest.raises(FloatingPointError, match="not finite|stopping"):
        train(small_cfg(tmp_path, "run", max_steps=20, lr=1e6, save_every=1))
    model = load_checkpoint(tmp_path / "run" / "previous" / "model.pt")["model"]  # the new run kept it aside
    assert all(torch.equal(model[k], good[k]) for k in good)  # the earlier good file, untouched
    for name in ("state.pt", "previous/state.pt"):  # what the diverging run saved before it stopped, and the old
        state = load_checkpoint(tmp_path / "run" / name)
        assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())


@pytest.mark.parametrize("bad", [dict(max_steps=-5), dict(batch_size=0), dict(eval_every=-1),
                                 dict(micro_batch_size=-1), dict(micro_batch_size=3, batch_size=2),
                                 dict(lr=float("inf")), dict(lr=0.0), dict(lr=float("nan")), dict(save_every=0),
                                 dict(stop_after=-1), dict(eval_windows=0), dict(preset="big")])
def test_bad_config_values_are_input_errors(bad):
    with pytest.raises(InputError):
        Config(**bad)


def test_block_size_larger_than_the_model_is_refused(tmp_path):
    with pytest.raises(InputError, match="--block-size 300: the model .*at most 256"):
        train(small_cfg(tmp_path, "run", block_size=300))


def test_a_failed_start_leaves_the_earlier_run_untouched(tmp_path):
    train(small_cfg(tmp_path, "run", max_steps=2))
    before = {f: (tmp_path / "run" / f).read_bytes() for f in ("config.json", "metrics.jsonl")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: missing field"):
        train(small_cfg(tmp_path, "run", data=str(bad)))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="empty.jsonl: no records"):
        train(small_cfg(tmp_path, "run", val_data=str(tmp_path / "empty.jsonl")))
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text('{"text": "too short"}\n')
    with pytest.raises(InputError, match="too few for one window"):
        train(small_cfg(tmp_path, "run", val_data=str(tiny)))
    assert before == {f: (tmp_path / "run" / f).read_bytes() for f in before}


def test_cli_bad_flag_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "minipost.pretrain", "--batch-size", "0"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--batch-size 0" in proc.stderr and "Traceback" not in proc.stderr
