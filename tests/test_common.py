"""Plumbing: KL estimators, config CLI, atomic checkpoints, JSONL errors, NaN stop."""
import dataclasses
import hashlib
import json
import os
import shutil

import pytest
import torch

from minipost.common import InputError, check_config, field, load_checkpoint, parse_config, read_jsonl, save_checkpoint
from minipost.harness import MetricsLogger, check_finite, save_state, start_run
from minipost.rl import kl_estimate


def test_kl_estimators_match_exact_kl_of_small_categoricals():
    torch.manual_seed(0)
    for _ in range(3):
        p = torch.softmax(torch.randn(5), 0)
        q = torch.softmax(torch.randn(5), 0)
        exact = (p * (p.log() - q.log())).sum()
        # expectation under p, computed exactly by weighting every outcome (no sampling noise)
        lp, lq = p.log(), q.log()
        k1 = (p * kl_estimate(lp, lq, "k1")).sum()
        k3 = (p * kl_estimate(lp, lq, "k3")).sum()
        torch.testing.assert_close(k1, exact)  # unbiased
        torch.testing.assert_close(k3, exact)  # unbiased
        assert (kl_estimate(lp, lq, "k3") >= 0).all() and (kl_estimate(lp, lq, "k2") >= 0).all()
        # and by sampling: the Monte Carlo mean approaches the exact value
        idx = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
        assert abs(kl_estimate(lp[idx], lq[idx], "k3").mean() - exact) < 0.01


def test_kl_estimators_are_zero_when_policies_are_equal():
    lp = torch.log_softmax(torch.randn(4, 7), -1)
    for kind in ("k1", "k2", "k3"):
        assert torch.equal(kl_estimate(lp, lp.clone(), kind), torch.zeros_like(lp))
    with pytest.raises(ValueError):
        kl_estimate(lp, lp, "k4")


@dataclasses.dataclass
class Cfg:
    preset: str = field("a", "preset")
    lr: float = field(1.0, "learning rate")
    steps: int = field(3, "steps")
    flag: bool = field(False, "a switch")


def test_parse_config_presets_then_flags():
    presets = {"a": {"lr": 2.0}, "b": {"lr": 3.0, "steps": 9}}
    assert parse_config(Cfg, [], presets) == Cfg(preset="a", lr=2.0, steps=3)
    assert parse_config(Cfg, ["--preset", "b", "--lr", "0.5", "--flag", "true"], presets) == Cfg("b", 0.5, 9, True)
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--preset", "zzz"], presets)


def test_a_bad_value_a_preset_set_says_so_and_the_help_lists_only_the_presets_there_are(capsys):
    @dataclasses.dataclass
    class Checked(Cfg):
        def __post_init__(self):
            if self.steps > 5:
                raise InputError(f"--steps {self.steps}: more than 5")
    with pytest.raises(SystemExit) as e:
        parse_config(Checked, ["--preset", "b"], {"a": {}, "b": {"steps": 9}})
    assert e.value.code == 2 and "--steps 9: more than 5 (--steps set by --preset b)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(Checked, ["--preset", "b", "--steps", "7"], {"a": {}, "b": {"steps": 9}})
    assert "set by" not in capsys.readouterr().err  # the user's own value: nothing to explain
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--help"], {"a": {}, "b": {}})
    assert "--preset {a,b}" in capsys.readouterr().out

    from minipost.harness import main

    def refuse(cfg):  # a check made once the run has its model (the objective's, not the dataclass's)
        raise InputError(f"--lr {cfg.lr}: too large for this model")
    for argv, note in ((["--preset", "b"], " (--lr set by --preset b)"), (["--preset", "b", "--lr", "3"], "")):
        with pytest.raises(SystemExit) as e:
            main(refuse, Cfg, {"a": {}, "b": {"lr": 3.0}}, argv)
        assert e.value.code == 2 and capsys.readouterr().err == f"error: --lr 3.0: too large for this model{note}\n"


def test_checkpoint_roundtrip_atomic_and_weights_only(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"w": torch.ones(2), "step": 3})
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception):  # weights_only refuses arbitrary pickled objects
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(InputError, match="missing.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_read_jsonl_names_file_line_and_field(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(ValueError, match=r"d.jsonl:2: missing field\(s\) \['text'\]"):
        read_jsonl(p, required=("text",))
    p.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: not valid JSON"):
        read_jsonl(p)
    p.write_text('{"text": "ok"}\n' + "[" * 200_000 + "\n")  # a RecursionError in json, not a record
    with pytest.raises(InputError, match=r"d.jsonl:2: JSON nested deeper than Python reads"):
        read_jsonl(p)
    p.write_text('{"text": ' + "1" * 5000 + "}\n")  # valid JSON, an integer Python refuses to convert
    with pytest.raises(InputError, match=r"d.jsonl:1: not readable JSON"):
        read_jsonl(p)


def test_nan_loss_stops_with_a_message():
    with pytest.raises(FloatingPointError, match="loss is nan at step 7: stopping"):
        check_finite(torch.tensor(float("nan")), "loss", 7, "runs/x")
    with pytest.raises(FloatingPointError, match="held-out loss is inf"):
        check_finite(float("inf"), "held-out loss", 3, "runs/x")
    check_finite(torch.tensor(1.5), "loss", 1, "runs/x")  # finite: nothing happens


def test_read_jsonl_rejects_bad_bytes_types_and_empty_files(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')  # latin-1, not UTF-8
    with pytest.raises(InputError, match=r"d.jsonl:2: not UTF-8"):
        read_jsonl(p)
    p.write_text('{"text": 123}\n')
    with pytest.raises(InputError, match=r"d.jsonl:1: field 'text' must be str, got int"):
        read_jsonl(p, required={"text": str})
    p.write_text("\n   \n")
    with pytest.raises(InputError, match=r"d.jsonl: no records"):
        read_jsonl(p)
    assert read_jsonl(p, allow_empty=True) == []
    p.write_text("[1, 2]\n")
    with pytest.raises(InputError, match=r"d.jsonl:1: expected a JSON object, got list"):
        read_jsonl(p)
    with pytest.raises(InputError, match=r"nope.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


@dataclasses.dataclass
class Bounded:
    steps: int = field(3, "steps", min=1)
    lr: float = field(1e-3, "learning rate", gt=0)
    frac: float = field(0.5, "a fraction", min=0, max=1)
    kind: str = field("a", "a kind", choices=["a", "b"])

    def __post_init__(self):
        check_config(self)


def test_config_bounds_are_checked_wherever_the_config_is_built():
    for bad, msg in [({"steps": -5}, r"--steps -5: must be >= 1"), ({"lr": 0.0}, r"--lr 0.0: must be > 0"),
                     ({"lr": float("inf")}, r"--lr inf: must be a finite number"),
                     ({"lr": float("nan")}, r"--lr nan: must be a finite"), ({"frac": 1.5}, r"must be <= 1"),
                     ({"kind": "z"}, r"--kind 'z': choose from")]:
        with pytest.raises(InputError, match=msg):
            Bounded(**bad)
    with pytest.raises(SystemExit) as e:  # on the command line: one line, exit code 2
        parse_config(Bounded, ["--steps", "0"])
    assert e.value.code == 2


def test_cli_errors_and_divergence_stops_are_one_line(capsys):
    from minipost.common import exit_on_input_error

    def diverge():
        raise FloatingPointError("loss is nan at step 3: stopping. Checkpoints in runs/x are the last good ones")

    def bad_input():
        raise InputError("--lr inf: must be a finite number")

    for fn, code, prefix in ((bad_input, 2, "error: --lr inf"), (diverge, 1, "stopped: loss is nan at step 3")):
        with pytest.raises(SystemExit) as e:
            exit_on_input_error(fn)
        err = capsys.readouterr().err
        assert e.value.code == code and err.startswith(prefix) and err.count("\n") == 1 and "Traceback" not in err


def test_checkpoints_only_ever_hold_finite_tensors(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 1})
    with pytest.raises(FloatingPointError, match=r"not writing .*m.pt: model.w is not finite"):
        save_checkpoint(path, {"model": {"w": torch.tensor([1.0, float("nan")])}, "step": 2})
    assert load_checkpoint(path)["step"] == 1  # the good file is still there
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_load_checkpoint_says_what_it_expected(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match=r"text.pt: not a readable minipost checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "bare.pt")
    with pytest.raises(InputError, match=r"bare.pt: expected a checkpoint dict with keys \['model'\]"):
        load_checkpoint(tmp_path / "bare.pt", required=("model",))
    whole = (tmp_path / "bare.pt").read_bytes()
    for cut in (10, len(whole) // 2, len(whole) - 10):  # a copy or a download that stopped early
        (tmp_path / "cut.pt").write_bytes(whole[:cut])
        with pytest.raises(InputError, match=r"cut.pt: not a readable minipost checkpoint \(the file is truncated"):
            load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(InputError, match=r"a folder, not a checkpoint file \(did you mean .*model.pt\?\)"):
        load_checkpoint(tmp_path)


@dataclasses.dataclass
class RunCfg:
    out: str = field("", "out")
    lr: float = field(1.0, "lr")
    resume: bool = field(False, "resume")
    allow_config_change: bool = field(False, "allow")
    progress: bool = field(True, "bar")


def test_start_run_writes_config_resumes_and_refuses_a_changed_config(tmp_path):
    cfg = RunCfg(out=str(tmp_path))
    assert start_run(tmp_path, cfg) is None
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 1.0
    torch.manual_seed(5)
    save_state(tmp_path, 3, cfg, model={"w": torch.zeros(1)})
    expected = torch.rand(1)
    (tmp_path / "state.pt.abc.tmp").write_text("left by a kill")
    state = start_run(tmp_path, RunCfg(out=str(tmp_path), resume=True, progress=False))  # progress may change
    assert state["step"] == 3 and torch.equal(torch.rand(1), expected)  # the RNG continues where it was saved
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(InputError, match=r"config differs .*lr: 1.0 -> 2.0"):
        start_run(tmp_path, RunCfg(out=str(tmp_path), lr=2.0, resume=True))
    assert start_run(tmp_path, RunCfg(out=str(tmp_path), lr=2.0, resume=True, allow_config_change=True))["step"] == 3
    with pytest.raises(InputError, match=r"no .*state.pt to resume from"):
        start_run(tmp_path / "other", RunCfg(resume=True))


def test_a_fresh_start_over_an_earlier_run_keeps_that_run_in_previous(tmp_path):
    cfg = RunCfg(out=str(tmp_path))
    start_run(tmp_path, cfg)
    save_state(tmp_path, 3, cfg, model={"w": torch.ones(1)})
    (tmp_path / "metrics.jsonl").write_text('{"step": 3}\n')
    start_run(tmp_path, RunCfg(out=str(tmp_path), lr=1e6))  # a new run, by mistake, into the same folder
    kept = tmp_path / "previous"
    assert sorted(p.name for p in kept.iterdir()) == ["config.json", "inputs.json", "metrics.jsonl", "state.pt"]
    assert load_checkpoint(kept / "state.pt")["step"] == 3 and json.loads((kept / "config.json").read_text())["lr"] == 1
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 1e6 and not (tmp_path / "state.pt").exists()
    start_run(tmp_path, cfg)  # no state.pt or model.pt here now: nothing to keep, previous/ stays as it was
    assert load_checkpoint(kept / "state.pt")["step"] == 3


def test_a_killed_fresh_start_does_not_push_the_finished_run_out_of_previous(tmp_path):
    cfg = RunCfg(out=str(tmp_path))
    start_run(tmp_path, cfg)
    (tmp_path / "model.pt").write_bytes(b"finished weights")
    start_run(tmp_path, cfg)  # --fresh true: the finished run moves to previous/
    save_state(tmp_path, 2, cfg, model={"w": torch.ones(1)})  # ... and the new run is killed after step 2
    start_run(tmp_path, cfg)  # --fresh true again: previous/ keeps the finished run, the unfinished one goes below
    assert (tmp_path / "previous" / "model.pt").read_bytes() == b"finished weights"
    assert load_checkpoint(tmp_path / "previous" / "unfinished" / "state.pt")["step"] == 2


def test_a_move_to_previous_cut_short_by_a_kill_is_completed_and_loses_no_file(tmp_path):
    cfg = RunCfg(out=str(tmp_path))
    start_run(tmp_path, cfg)
    (tmp_path / "model.pt").write_bytes(b"finished weights")
    (tmp_path / "previous").mkdir()
    os.replace(tmp_path / "model.pt", tmp_path / "previous" / "model.pt")  # the weights move first; killed here
    start_run(tmp_path, RunCfg(out=str(tmp_path), lr=3.0))
    assert sorted(p.name for p in (tmp_path / "previous").iterdir()) == ["config.json", "inputs.json", "model.pt"]
    assert json.loads((tmp_path / "previous" / "config.json").read_text())["lr"] == 1.0


def test_a_cut_short_move_into_previous_unfinished_is_completed_and_a_file_in_the_way_refused(tmp_path):
    cfg = RunCfg(out=str(tmp_path))
    start_run(tmp_path, cfg)
    (tmp_path / "model.pt").write_bytes(b"finished weights")
    start_run(tmp_path, cfg)  # the finished run is now in previous/
    save_state(tmp_path, 2, cfg, model={"w": torch.ones(1)})
    (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n')
    (tmp_path / "previous" / "unfinished").mkdir()
    os.replace(tmp_path / "state.pt", tmp_path / "previous" / "unfinished" / "state.pt")  # killed after this move
    start_run(tmp_path, cfg)
    kept = tmp_path / "previous" / "unfinished"
    assert sorted(p.name for p in kept.iterdir()) == ["config.json", "inputs.json", "metrics.jsonl", "state.pt"]
    assert (tmp_path / "previous" / "model.pt").read_bytes() == b"finished weights"
    shutil.rmtree(kept)
    kept.write_text("in the way")
    save_state(tmp_path, 2, cfg, model={"w": torch.ones(1)})
    with pytest.raises(InputError, match=r"previous/unfinished is not a folder"):
        start_run(tmp_path, cfg)
    assert (tmp_path / "state.pt").exists()  # refused before anything moved


@dataclasses.dataclass
class DataCfg(RunCfg):
    data: str = field("", "data")


def test_a_resume_on_another_data_file_is_refused_unless_allowed_and_then_recorded(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    cfg = DataCfg(out=str(tmp_path / "o"), data=str(data))
    start_run(cfg.out, cfg)
    save_state(cfg.out, 2, cfg, model={"w": torch.ones(1)})
    data.write_text('{"text": "b"}\n')
    with pytest.raises(InputError, match=r"config differs from the saved run's \(the data file it names \(sha256 "):
        start_run(cfg.out, DataCfg(out=cfg.out, data=str(data), resume=True))
    start_run(cfg.out, DataCfg(out=cfg.out, data=str(data), resume=True, allow_config_change=True))
    saved = json.loads((tmp_path / "o" / "inputs.json").read_text())
    assert saved["changed_on_resume"] and saved["data"] == hashlib.sha256(data.read_bytes()).hexdigest()


def test_inputs_record_init_ref_and_data_or_only_the_world_files_a_run_reads(tmp_path):
    from minipost.common import DATA_DIR
    from minipost.harness.folder import WORLD_FILES, input_digests, world_digest
    for name in WORLD_FILES + ("tokenizer_nano.tiktoken",):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    world = world_digest("nano", tmp_path)
    (tmp_path / "my_prefs.jsonl").write_text("{}\n")  # a user's own file, or the other preset's tokenizer
    assert world_digest("nano", tmp_path) == world != world_digest("small", tmp_path)
    (tmp_path / "sft.jsonl").write_text("{}\n")
    assert world_digest("nano", tmp_path) != world

    @dataclasses.dataclass
    class DpoLike:
        init: str
        ref: str
        data: str = ""
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"weights")
    got = input_digests(DpoLike(init=str(ckpt), ref=str(ckpt)))
    assert got["init"] == got["ref"] == hashlib.sha256(b"weights").hexdigest() and "world" in got


def test_the_same_weights_give_the_same_checkpoint_bytes(tmp_path):
    obj = {"model": {"w": torch.arange(4.0)}, "step": 3}
    save_checkpoint(tmp_path / "a.pt", obj)
    save_checkpoint(tmp_path / "b.pt", obj)  # inputs.json compares checkpoints by sha256
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_metrics_logger_on_resume_drops_rows_after_the_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in (1, 2, 3, 4):
        log.log(step, loss=1.0 / step)
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a kill in the middle of a line
    log = MetricsLogger(tmp_path, resume_step=2)
    log.log(3, loss=0.5)
    log.close()
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_value_not_measured_is_null_and_a_measured_overflow_stays_visible(tmp_path):
    from minipost.harness import read_metrics
    log = MetricsLogger(tmp_path)
    row = log.log(1, loss=torch.tensor(0.25), val_loss=None, grad_norm=float("inf"), per={"a": float("nan")})
    log.close()
    assert row == {"step": 1, "loss": 0.25, "val_loss": None, "grad_norm": "inf", "per": {"a": "nan"}}
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text == '{"step": 1, "loss": 0.25, "val_loss": null, "grad_norm": "inf", "per": {"a": "nan"}}\n'
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))["val_loss"] is None
    read = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert read["val_loss"] is None and read["grad_norm"] == float("inf")  # a number again, for a plot
    # a file written when a held-out value not yet measured was the string "nan": it reads, and a resume keeps it
    old = '{"step": 1, "loss": 0.5, "val_loss": "nan"}\n{"step": 2, "loss": 0.25, "val_loss": 1.5}\n'
    (tmp_path / "metrics.jsonl").write_text(old + '{"step": "3"}\n')
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows[0]["val_loss"] != rows[0]["val_loss"] and rows[1]["val_loss"] == 1.5  # nan, then a number
    MetricsLogger(tmp_path, resume_step=2).close()  # a step that is not a number is dropped, not a TypeError
    assert (tmp_path / "metrics.jsonl").read_text() == old


def test_device_names_are_checked_with_one_line_errors():
    from minipost.common import check_device, pick_device

    for name in ("auto", "cpu"):
        check_device(name)
    assert pick_device("cpu").type == "cpu"
    for bad in ("tpu", "cuda:x", "", "cpu:0:1"):
        with pytest.raises(InputError, match="--device"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            pick_device("cuda")


def test_tool_clis_reject_bad_values_in_one_line(tmp_path, capsys):
    """The CLIs not built from a Config (world, the benchmarks) check their flags too: one line, exit 2."""
    from minipost.bench import evals as bench_evals, hf_load as bench_hf_load, rollout as bench_rollout
    from minipost.bench import threads as bench_threads
    from minipost.common import exit_on_input_error
    from minipost.world.generate import main as world_main

    (tmp_path / "a_file").write_text("")
    for stage in (*bench_evals.ROWS, bench_evals.JUDGE):  # a pipeline run whose checkpoints are all broken
        (tmp_path / "run" / stage).mkdir(parents=True)
        (tmp_path / "run" / stage / "model.pt").write_text("not a checkpoint")
    cases = [(bench_evals.main, ["--out", str(tmp_path / "run")], "pretrain/model.pt: not a readable"),
             (world_main, ["--out", str(tmp_path / "a_file")], "cannot write there"),
             (world_main, ["--seed", "abc"], "invalid int value"),
             (bench_rollout.main, ["--batch", "0"], "whole number >= 1"),
             (bench_hf_load.main, ["--layers", "0"], "whole number >= 1"),
             (bench_rollout.main, ["--prompt-tokens", "250", "--new-tokens", "64"], "block_size 256"),
             (bench_threads.main, ["--steps", "-1"], "whole number >= 1"),
             (bench_evals.main, ["--limits", "100,x"], "whole numbers >= 0"),
             (bench_evals.main, ["--limits", "-1"], "whole numbers >= 0"),
             (bench_evals.main, ["--out", str(tmp_path)], "not a finished pipeline run"),
             (bench_evals.main, ["--repeats", "0"], "whole number >= 1")]
    for fn, argv, msg in cases:
        with pytest.raises(SystemExit) as e:
            exit_on_input_error(lambda: fn(argv))
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and err.count("\n") == 1, (argv, err)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seeds_outside_what_numpy_accepts_are_input_errors(seed):
    from minipost import grpo, pretrain

    for cfg in (pretrain.Config, grpo.Config):
        with pytest.raises(InputError, match="--seed"):
            cfg(seed=seed)
