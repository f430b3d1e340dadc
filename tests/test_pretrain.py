"""Pretraining runs end to end, writes its files, learns, and resumes exactly."""
import json

import torch

from minipost.common import load_checkpoint
from minipost.pretrain import PRESETS, Config, lr_at, train

TEXT = [{"text": f"The capital of Velo{i % 7} is Tarsk{i % 5}. {i % 9} + {i % 4} = {i % 9 + i % 4}."} for i in range(200)]


def small_cfg(tmp_path, name, **kw):
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TEXT))
    base = dict(PRESETS["nano"], out=str(tmp_path / name), data=str(data), val_data=str(data), max_steps=6,
                batch_size=2, block_size=32, eval_every=3, eval_windows=2, log_every=1, warmup_steps=2,
                progress=False, lr=3e-3)
    return Config(**{**base, **kw})


def test_pretrain_writes_its_outputs_and_loss_falls(tmp_path):
    summary = train(small_cfg(tmp_path, "run", max_steps=30, eval_every=10))
    out = tmp_path / "run"
    for f in ("config.json", "metrics.jsonl", "model.pt", "samples.txt"):
        assert (out / f).exists(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30 and rows[-1]["tokens_per_s"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0  # 30 steps on a repetitive text: clearly learning
    ckpt = load_checkpoint(out / "model.pt")
    assert {"model", "model_config", "tokenizer", "step"} <= set(ckpt) and ckpt["step"] == 30
    assert summary["val_loss"] < rows[0]["loss"]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    train(small_cfg(tmp_path, "straight"))
    train(small_cfg(tmp_path, "resumed", stop_after=3))
    train(small_cfg(tmp_path, "resumed", resume=True))
    a = load_checkpoint(tmp_path / "straight" / "model.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "model.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed run appends to the log


def test_learning_rate_schedule_warmup_then_cosine():
    cfg = Config(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert abs(lr_at(60, cfg) - 0.55) < 1e-9  # halfway through the cosine
    assert abs(lr_at(110, cfg) - 0.1) < 1e-9


def test_resume_without_state_is_an_error_and_a_crash_tail_is_dropped(tmp_path):
    import pytest
    with pytest.raises(FileNotFoundError, match="no .*state.pt"):
        train(small_cfg(tmp_path, "none", resume=True))
    train(small_cfg(tmp_path, "crash", stop_after=3))
    log = tmp_path / "crash" / "metrics.jsonl"
    log.write_text(log.read_text() + json.dumps({"step": 4, "loss": 9.9}) + "\n")  # logged, then crashed
    train(small_cfg(tmp_path, "crash", resume=True))
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
