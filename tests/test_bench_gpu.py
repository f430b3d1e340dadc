"""The GPU measurement script (minipost/bench/gpu.py) runs end to end at tiny shapes on the CPU (--smoke), so the
one call a GPU machine is lent for does not fail on a typo; its numbers there mean nothing."""
import json

import pytest

from minipost.bench import gpu


def test_the_gpu_script_runs_every_part_at_tiny_shapes(tmp_path, capsys):
    gpu.main(["--smoke", "--parts", "kernels,fused,grpo,pipeline", "--out", str(tmp_path)])
    (saved,) = tmp_path.glob("*-smoke.json")
    result = json.loads(saved.read_text())
    assert not [p for p, r in result["parts"].items() if "error" in r], result
    assert set(result["parts"]["fused"]["rows"]) >= {"eager", "linear_logprobs (fused)"}
    assert result["parts"]["grpo"]["rollout"]["tokens"] > 0
    assert {"plain, 2 rows a pass", "fused, 2 rows a pass", "plain, 4 rows a pass", "fused, 4 rows a pass"} <= set(
        result["parts"]["grpo"])
    assert all(result["parts"]["grpo"][k]["tokens_per_s"] > 0 for k in result["parts"]["grpo"] if "rows a pass" in k)
    floors = [r["x_floor"] for r in result["parts"]["kernels"]["rows"]]
    assert floors and all(x > 0 for x in floors)
    assert set(result["parts"]["pipeline"]["seconds_per_step"]) == {"pretrain", "sft"}
    assert result["parts"]["pipeline"]["estimate_s"] > 0


def test_seconds_per_step_leave_out_the_time_before_the_first_step(tmp_path):
    import json as j
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(j.dumps(r) + "\n" for r in [
        {"step": 0, "val_loss": 3.0, "elapsed_s": 5.0},  # an evaluation before training: not a step
        {"step": 1, "lr": 1e-3, "elapsed_s": 9.0}, {"step": 5, "lr": 1e-3, "elapsed_s": 11.0},
        {"step": 5, "eval_x": 0.5, "elapsed_s": 14.0}]))
    assert gpu.seconds_per_step(metrics) == (0.5, 5, 11.0)
    metrics.write_text(j.dumps({"step": 1, "lr": 1e-3, "elapsed_s": 9.0}) + "\n")
    assert gpu.seconds_per_step(metrics) is None


def test_a_bad_part_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        gpu.main(["--parts", "kernels,speed"])
    assert e.value.code == 2 and "--parts 'kernels,speed': choose among" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--vocab", "0"], ["--reps", "0"], ["--n", "-3"], ["--device", "tpu"],
                                  ["--json", "/nonexistent/rows.json"], ["--no-table"]])
def test_the_kernels_benchmarks_bad_flags_are_one_line(argv, capsys):
    from minipost.kernels import bench
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error:")


def test_an_out_that_is_a_file_is_one_line_before_anything_runs(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as e:
        gpu.main(["--smoke", "--out", str(tmp_path / "file")])
    out = capsys.readouterr()
    assert e.value.code == 2 and "cannot write there" in out.err and not out.out


def test_a_rerun_the_same_day_keeps_the_parts_it_does_not_run(tmp_path):
    gpu.main(["--smoke", "--parts", "fused", "--out", str(tmp_path)])
    gpu.main(["--smoke", "--parts", "grpo", "--out", str(tmp_path)])
    (saved,) = tmp_path.glob("*-smoke.json")
    assert set(json.loads(saved.read_text())["parts"]) == {"fused", "grpo"}
