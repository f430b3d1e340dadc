"""The main job chains every stage and prints the report card (a few steps each: plumbing, not results)."""
import json
import os

import pytest
import torch

from minipost import common, pipeline
from minipost.harness import folder as harness_folder
from minipost.common import InputError, load_checkpoint
from minipost.pipeline import Config, run, run_planned, stage_config


@pytest.fixture
def lean_pairs(monkeypatch):
    """DPO and the reward model on 64 of the world's 2,040 pairs: at two steps a stage, the reference log-probs
    of every pair were most of the pipeline's time (these tests check its plumbing, not its results)."""
    lean = {"reward_model": {"max_pairs": 64}, "dpo": {"max_pairs": 64}}
    monkeypatch.setattr(pipeline, "STAGES", {name: (m, parent, {**over, **lean.get(name, {})})
                                             for name, (m, parent, over) in pipeline.STAGES.items()})


def test_pipeline_smoke_runs_every_stage_and_writes_the_report(tmp_path, capsys, lean_pairs):
    """Every stage, the RL ones once per seed, then the card (its rows with two seeds show their spread)."""
    report = run(Config(out=str(tmp_path), max_steps=2, eval_limit=2, seeds="1337,2", progress=False))
    assert list(report) == ["base", "sft", "dpo", "rloo", "grpo", "ppo"]
    for stage in ("pretrain", "sft", "reward_model", "dpo", "rloo", "grpo", "ppo", "rloo_s2", "grpo_s2", "ppo_s2"):
        assert (tmp_path / stage / "model.pt").exists(), stage
    assert not (tmp_path / "sft_s2").exists()  # only the RL stages repeat
    assert json.loads((tmp_path / "grpo_s2" / "config.json").read_text())["seed"] == 2
    assert "pref_acc" in report["dpo"] and "pref_acc" not in report["sft"]  # sft is the reference
    assert "win_rate" in report["dpo"] and "win_rate" not in report["sft"]  # ... and the judge's baseline
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["card"] == json.loads(json.dumps(report))
    assert saved["parents"] == {"sft": "base", "dpo": "sft", "rloo": "dpo", "grpo": "dpo", "ppo": "dpo"}
    cell = report["ppo"]["knowledge"]
    assert cell["vs"] == "dpo" and cell["seeds"] == 2 and len(cell["per_seed"]) == 2
    assert len(saved["items"]["ppo"]) == 2 and len(saved["items"]["ppo"][0]["knowledge"]) == 2  # per seed, per item
    assert "seeds" not in report["dpo"]["knowledge"]
    assert "grpo (2 seeds)" in (tmp_path / "report" / "report.md").read_text()
    assert "stage" in capsys.readouterr().out


def test_an_interrupted_stage_resumes_and_a_finished_one_is_reused(tmp_path, capsys):
    straight = Config(out=str(tmp_path / "a"), stages="pretrain", max_steps=4, eval_limit=1, progress=False)
    run(straight)
    interrupted = Config(out=str(tmp_path / "b"), stages="pretrain", max_steps=4, eval_limit=1, progress=False)
    module, cfg = stage_config("pretrain", interrupted, tmp_path / "b")
    run_planned("pretrain", module, type(cfg)(**{**cfg.__dict__, "stop_after": 2}), "run")  # killed after step 2
    other = Config(out=str(tmp_path / "b"), stages="pretrain", max_steps=6, eval_limit=1, progress=False)
    with pytest.raises(InputError, match=r"holds an unfinished pretrain run of another config \(max_steps: 4 -> 6\); "
                                         "rerun with --fresh true"):
        run(other)  # refused before anything runs: the unfinished run is the user's to keep or drop
    assert not (tmp_path / "b" / "config.json").exists()
    assert json.loads((tmp_path / "b" / "pretrain" / "config.json").read_text())["max_steps"] == 4
    run(interrupted)
    assert "--resume true" in capsys.readouterr().out
    a = load_checkpoint(tmp_path / "a" / "pretrain" / "model.pt")
    b = load_checkpoint(tmp_path / "b" / "pretrain" / "model.pt")
    assert a["step"] == b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    run(interrupted)
    assert "reusing" in capsys.readouterr().out


def test_a_finished_stage_is_reused_only_for_its_own_config_and_start(tmp_path, monkeypatch):
    cfg = Config(out=str(tmp_path / "a"), stages="pretrain,sft", max_steps=2, eval_limit=1, progress=False)
    run(cfg)
    sft = tmp_path / "a" / "sft"
    before = (sft / "model.pt").read_bytes()
    files = {p: p.read_bytes() for p in sft.iterdir()}
    metrics = files[sft / "metrics.jsonl"]

    def refused(message, **flags):
        with pytest.raises(InputError, match=message):
            run(Config(**{**cfg.__dict__, "stages": "sft", **flags}))
        assert {p: p.read_bytes() for p in files} == files  # refused: nothing was touched
    refused(r"sft holds a finished sft run of another config \(seed: 1337 -> 5\)", seed=5)
    refused(r"sft holds a 2-step sft run of another config \(max_steps: 2 -> 3\)", max_steps=3)
    state = files.pop(sft / "state.pt")
    (sft / "state.pt").unlink()
    refused(r"sft holds a finished sft run of 2 steps, not the 3 planned", max_steps=3)
    (sft / "state.pt").write_bytes(state)
    files[sft / "state.pt"] = state
    inputs = files.pop(sft / "inputs.json")
    (sft / "inputs.json").write_text("{}")
    refused(r"sft holds a finished sft run, but its inputs.json records no checkpoint")
    (sft / "inputs.json").unlink()  # a run that cannot say what it was trained from is not reused either
    refused(r"sft holds a finished sft run, but no readable .*inputs.json records")
    (sft / "inputs.json").write_bytes(inputs)
    files[sft / "inputs.json"] = inputs
    monkeypatch.setattr(harness_folder, "world_digest", lambda *a, **k: "another world")  # data/ regenerated
    refused(r"sft holds a finished sft run trained from another world")
    monkeypatch.undo()
    (sft / "previous").write_text("in the way")
    refused(r"sft/previous is not a folder")
    (sft / "previous").unlink()
    (sft / "metrics.jsonl").write_bytes(files[sft / "metrics.jsonl"][:-7])  # cut short: refused before any stage
    files[sft / "metrics.jsonl"] = (sft / "metrics.jsonl").read_bytes()
    refused(r"sft/metrics.jsonl:\d+: not valid JSON")
    (sft / "metrics.jsonl").write_bytes(metrics)
    files[sft / "metrics.jsonl"] = metrics
    files[sft / "model.pt"] = (tmp_path / "a" / "pretrain" / "model.pt").read_bytes()  # the base copied over sft's
    (sft / "model.pt").write_bytes(files[sft / "model.pt"])
    refused(r"sft/model.pt is not the model this sft run wrote \(its sha256 differs")
    (sft / "model.pt").write_bytes(before)
    files[sft / "model.pt"] = before
    run(Config(out=str(tmp_path / "b"), stages="pretrain", max_steps=2, eval_limit=1, progress=False, seed=5))
    for f in ("model.pt", "inputs.json"):  # another base run's weights, with the record of what it wrote
        os.replace(tmp_path / "b" / "pretrain" / f, tmp_path / "a" / "pretrain" / f)
    run(Config(**{**cfg.__dict__, "stages": "sft"}))  # ... so the sft stage from it runs again
    assert (sft / "previous" / "model.pt").read_bytes() == before and (sft / "model.pt").read_bytes() != before
    again = (sft / "model.pt").read_bytes()
    (tmp_path / "a" / "pretrain" / "model.pt").unlink()  # the base resumes from its state.pt: sft is stale again
    run(cfg)
    assert (sft / "previous" / "model.pt").read_bytes() == again
    assert (sft / "model.pt").read_bytes() == before  # the same base, the same weights, the same bytes


@pytest.mark.parametrize("name,change,message", [
    ("prefs.jsonl", {"chosen": None}, r"missing field\(s\) \['chosen'\]"),       # DPO's and the reward model's
    ("probes.jsonl", {"answer": None}, r"missing field\(s\) \['answer'\]"),     # pretraining's and the card's
    ("probes.jsonl", {"domain": "sql"}, r"field 'domain' is 'sql'; a probe's is one of"),
    ("eval_prefs.jsonl", {"domain": None}, r"field 'domain': None is not one of"),  # the card's pref_acc per domain
    ("eval_prefs.jsonl", {"domain": "zzz"}, r"field 'domain': 'zzz' is not one of"),
    ("pretrain_val.jsonl", {"text": [[[[1]]]]}, r"field 'text' must be str"),
])
def test_a_damaged_world_file_stops_the_pipeline_before_any_stage_runs(tmp_path, monkeypatch, name, change, message):
    """A data file that a later stage or the card reads is read before the first stage trains, with the reader
    that reads it there: one line naming file, line and field, and nothing written."""
    world = tmp_path / "data"
    world.mkdir()
    for f in pipeline.WORLD_READERS:
        (world / f).write_bytes((common.DATA_DIR / f).read_bytes())
    lines = (world / name).read_text().splitlines()
    record = {**json.loads(lines[4]), **change}
    lines[4] = json.dumps({k: v for k, v in record.items() if v is not None})
    (world / name).write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(pipeline, "DATA_DIR", world)
    with pytest.raises(InputError, match=rf"data/{name}:5: {message}"):
        run(Config(out=str(tmp_path / "out"), max_steps=2, eval_limit=1, progress=False))
    assert not (tmp_path / "out").exists()  # no stage ran, nothing was written


def test_bad_stage_names_and_flags_fail_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match="--stages 'pretrain,sfft'"):
        Config(out=str(tmp_path), stages="pretrain,sfft")
    with pytest.raises(InputError, match="--max-steps -1"):
        Config(out=str(tmp_path), max_steps=-1)
    assert not (tmp_path / "config.json").exists()
    for seeds, msg in [("1337,x", "'x' is not a whole number"), ("2,2", "2 is given twice"),
                       ("4294967296", "4294967296 is out of 0"), ("-1", "'-1' is not a whole number"),
                       ("1_000", "'1_000' is not a whole number"), (",", "'' is not a whole number")]:
        with pytest.raises(InputError, match=f"--seeds '{seeds}': {msg}"):
            Config(out=str(tmp_path), seeds=seeds)
    with pytest.raises(InputError, match="--seeds '1,2': repeats the RL stages"):
        Config(out=str(tmp_path), stages="pretrain,sft", seeds="1,2")


def test_a_stage_whose_start_is_missing_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "config.json").write_text("earlier run")
    with pytest.raises(InputError, match="grpo starts from .*dpo/model.pt, which does not exist"):
        run(Config(out=str(tmp_path), stages="grpo", max_steps=1, progress=False))
    assert (tmp_path / "config.json").read_text() == "earlier run"


def test_the_small_preset_runs_every_stage_on_the_cpu(tmp_path, monkeypatch):
    """--preset small (the one-GPU preset: an 11M-parameter GPT, 512-token rows) one step per stage, so the
    preset cannot rot: its values pass every Config check and its shapes run through every objective. Only the
    sizes that make a CPU step slow shrink (rows per step, reference log-probs of all 2040 DPO pairs, 32 RL
    prompts x 8; the card's held-out loss over 4 windows, not 64); the row length (512 tokens) and the model stay
    the preset's."""
    from minipost.card import evaluate

    val_losses = evaluate.val_losses
    monkeypatch.setattr(evaluate, "val_losses", lambda model, enc, windows=64, block_size=256:
                        val_losses(model, enc, 4, block_size))
    lean = {"pretrain": {"batch_size": 4}, "sft": {"batch_size": 4},
            "reward_model": {"max_pairs": 64, "batch_size": 4}, "dpo": {"max_pairs": 64, "batch_size": 4},
            "rloo": {"prompts_per_step": 2}, "grpo": {"prompts_per_step": 2}, "ppo": {"prompts_per_step": 2}}
    monkeypatch.setattr(pipeline, "STAGES", {name: (m, parent, {**over, **lean.get(name, {})})
                                             for name, (m, parent, over) in pipeline.STAGES.items()})
    report = run(Config(out=str(tmp_path), preset="small", max_steps=1, eval_limit=1, progress=False))
    assert list(report) == ["base", "sft", "dpo", "rloo", "grpo", "ppo"]
    for stage in pipeline.STAGES:
        ckpt = load_checkpoint(tmp_path / stage / "model.pt")
        assert ckpt["step"] == 1 and ckpt["model_config"]["n_layer"] == 6 and ckpt["tokenizer"] == "small", stage
        assert json.loads((tmp_path / stage / "config.json").read_text())["preset"] == "small", stage
