"""The main job chains every stage and prints the report card (a few steps each: plumbing, not results)."""
import json

from minipost.pipeline import Config, main


def test_pipeline_smoke_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    rows = main(Config(out=str(tmp_path), max_steps=2, eval_limit=2, progress=False))
    assert list(rows) == ["base", "sft", "dpo", "rloo", "grpo", "ppo"]
    for stage in ("pretrain", "sft", "dpo", "rloo", "grpo", "ppo"):
        assert (tmp_path / stage / "model.pt").exists(), stage
    assert "pref_acc" in rows["dpo"] and "pref_acc" not in rows["sft"]  # sft is the reference
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["rows"] == json.loads(json.dumps(rows))
    assert report["parents"] == {"sft": "base", "dpo": "sft", "rloo": "dpo", "grpo": "dpo", "ppo": "dpo"}
    assert "stage" in capsys.readouterr().out
