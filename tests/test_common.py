"""Plumbing: KL estimators, config CLI, atomic checkpoints, JSONL errors, NaN stop."""
import dataclasses
import json

import pytest
import torch

from minipost.common import (check_finite, field, kl_estimate, load_checkpoint, parse_config, read_jsonl,
                             save_checkpoint)


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
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_read_jsonl_names_file_line_and_field(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"txt": "typo"}) + "\n")
    with pytest.raises(ValueError, match=r"d.jsonl:2: missing field\(s\) \['text'\]"):
        read_jsonl(p, required=("text",))
    p.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: not valid JSON"):
        read_jsonl(p)


def test_nan_loss_stops_with_a_message():
    with pytest.raises(FloatingPointError, match="stopping before the optimizer step"):
        check_finite(torch.tensor(float("nan")), 7, "runs/x")
