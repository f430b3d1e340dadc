"""The GPU measurement script (minipost/bench/gpu.py) runs end to end at tiny shapes on the CPU (--smoke), so the
one call a GPU session has time for does not fail on a typo; its numbers there mean nothing."""
import json

import pytest

from minipost.bench import gpu


def test_the_gpu_script_runs_every_part_at_tiny_shapes(tmp_path, capsys):
    gpu.main(["--smoke", "--parts", "kernels,fused,grpo,pipeline", "--out", str(tmp_path)])
    (saved,) = tmp_path.glob("*-smoke.json")
    result = json.loads(saved.read_text())
    assert not [p for p, r in result["parts"].items() if "error" in r], result
    assert set(result["parts"]["fused"]["rows"]) >= {"eager", "linear_logprobs (fused)"}
    assert result["parts"]["grpo"]["fused"]["tokens"] > 0
    assert result["parts"]["pipeline"]["estimate_s"] > 0


def test_a_bad_part_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        gpu.main(["--parts", "kernels,speed"])
    assert e.value.code == 2 and "--parts 'kernels,speed': choose among" in capsys.readouterr().err
