"""The main job chains every stage and prints the report card (a few steps each: plumbing, not results)."""
import json

import pytest
import torch

from minipost.common import InputError, load_checkpoint
from minipost.pipeline import Config, run, stage_config


def test_pipeline_smoke_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    rows = run(Config(out=str(tmp_path), max_steps=2, eval_limit=2, progress=False))
    assert list(rows) == ["base", "sft", "dpo", "rloo", "grpo", "ppo"]
    for stage in ("pretrain", "sft", "dpo", "rloo", "grpo", "ppo"):
        assert (tmp_path / stage / "model.pt").exists(), stage
    assert "pref_acc" in rows["dpo"] and "pref_acc" not in rows["sft"]  # sft is the reference
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["rows"] == json.loads(json.dumps(rows))
    assert report["parents"] == {"sft": "base", "dpo": "sft", "rloo": "dpo", "grpo": "dpo", "ppo": "dpo"}
    assert "stage" in capsys.readouterr().out


def test_an_interrupted_stage_resumes_and_a_finished_one_is_reused(tmp_path, capsys):
    straight = Config(out=str(tmp_path / "a"), stages="pretrain", max_steps=4, eval_limit=1, progress=False)
    run(straight)
    interrupted = Config(out=str(tmp_path / "b"), stages="pretrain", max_steps=4, eval_limit=1, progress=False)
    module, cfg = stage_config("pretrain", interrupted, tmp_path / "b")
    module.train(type(cfg)(**{**cfg.__dict__, "stop_after": 2}))  # as if killed after its step-2 save
    run(interrupted)
    assert "--resume true" in capsys.readouterr().out
    a = load_checkpoint(tmp_path / "a" / "pretrain" / "model.pt")
    b = load_checkpoint(tmp_path / "b" / "pretrain" / "model.pt")
    assert a["step"] == b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    run(interrupted)
    assert "reusing" in capsys.readouterr().out


def test_bad_stage_names_and_flags_fail_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match="--stages 'pretrain,sfft'"):
        Config(out=str(tmp_path), stages="pretrain,sfft")
    with pytest.raises(InputError, match="--max-steps -1"):
        Config(out=str(tmp_path), max_steps=-1)
    assert not (tmp_path / "config.json").exists()
