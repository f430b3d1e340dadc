"""The reward model: the Bradley-Terry loss against hand-computed values (ln 2 at equal rewards, the margin, the
centring term, gradient signs), rewards read at each row's last token whatever the padding, train() end to
end on a tiny model, RewardModel scoring, and the run contract (exact resume, bad margins and files refused
before anything is written)."""
import importlib
import json
import math
import subprocess
import sys

import pytest
import torch

import minipost.reward_model as rm
import minipost.tokenizer as tokenizer
from minipost.common import InputError, config_with_preset, save_checkpoint
from minipost.harness import read_metrics
from minipost.model import GPT, GPTConfig
from minipost.checkpoints import load_model, model_checkpoint
from minipost.rewards import KIND, RewardModel

ENC = tokenizer.build_encoding("bytes", {bytes([i]): i for i in range(256)})  # byte-level, no trained file
PAD = tokenizer.special_id(ENC, "<|pad|>")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_gpt(seed=0, value_head=False):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=ENC.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=32,
                         value_head=value_head))


def test_equal_rewards_give_ln2_and_the_gradient_raises_chosen_and_lowers_rejected():
    r_c = torch.tensor([0.3, -1.0, 2.0], requires_grad=True)
    r_r = r_c.detach().clone().requires_grad_(True)
    losses = rm.reward_loss(r_c, r_r)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2)))
    losses.sum().backward()
    # d/d r_c of -log sigmoid(r_c - r_r) = -sigmoid(-(r_c - r_r)) = -1/2 at a tie; +1/2 for r_r
    torch.testing.assert_close(r_c.grad, torch.full((3,), -0.5))
    torch.testing.assert_close(r_r.grad, torch.full((3,), 0.5))


def test_margin_and_centring_match_their_formulas():
    torch.manual_seed(0)
    r_c, r_r, m = torch.randn(16), torch.randn(16), torch.rand(16)
    sig = lambda z: 1 / (1 + torch.exp(-z))  # noqa: E731
    expected = -torch.log(sig(r_c - r_r - m)) + 0.01 * (r_c + r_r) ** 2
    torch.testing.assert_close(rm.reward_loss(r_c, r_r, m, center_coef=0.01), expected)
    # a pair exactly at its margin is a tie again: ln 2
    assert rm.reward_loss(torch.tensor([2.5]), torch.tensor([1.0]), 1.5).item() == pytest.approx(math.log(2))
    # a margin demands more: the same pair costs more with it
    assert (rm.reward_loss(r_c, r_r, 1.0) > rm.reward_loss(r_c, r_r)).all()
    # centring pulls the sum of the two rewards to 0 and leaves the difference alone
    r = torch.tensor([3.0, 3.0], requires_grad=True)
    rm.reward_loss(r[:1], r[1:], center_coef=1.0).sum().backward()
    assert r.grad[0] > 0 and r.grad[1] > 0  # both rewards pushed down (towards a zero sum)


def test_a_rows_reward_is_read_at_its_last_token_whatever_the_padding():
    model = tiny_gpt(value_head=True).eval()
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    ids, last = rm.sequence_batch(seqs, PAD)
    assert ids.shape == (3, 6) and last.tolist() == [2, 5, 0] and ids[0, 3:].eq(PAD).all()
    together = rm.reward_scores(model, ids, last)  # (3,)
    alone = torch.cat([rm.reward_scores(model, *rm.sequence_batch([s], PAD)) for s in seqs])
    torch.testing.assert_close(together, alone)
    # and it is the value head on that token's final hidden state
    _, h = model(torch.tensor([seqs[1]]), return_hidden=True)
    torch.testing.assert_close(together[1], model.value_head(h[0, -1]).squeeze())


WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "glass", "paper"]
REFUSAL = "Sorry, I can't help with that."


def tiny_run(tmp_path, monkeypatch, rows=None, **overrides) -> rm.Config:
    """Six training pairs and two held-out ones (a word over a refusal), a tiny random "SFT" checkpoint."""
    monkeypatch.setattr(rm, "DATA_DIR", tmp_path / "no_world")
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda name, *a, **k: ENC)
    rows = rows or [{"prompt": f"name {w}", "chosen": w, "rejected": REFUSAL} for w in WORDS]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    if not (tmp_path / "sft.pt").exists():
        save_checkpoint(tmp_path / "sft.pt", model_checkpoint(tiny_gpt(), "bytes", 0))
    kw = dict(init=str(tmp_path / "sft.pt"), out=str(tmp_path / "run"), data=str(tmp_path / "prefs.jsonl"),
              eval_data=str(tmp_path / "eval.jsonl"), max_steps=20, batch_size=6, micro_batch_size=3, lr=3e-3,
              warmup_steps=1, log_every=5, device="cpu", progress=False)
    return rm.Config(**{**kw, **overrides})


def metrics_rows(out):
    return [{k: v for k, v in r.items() if k not in ("steps_per_s", "elapsed_s")}
            for r in read_metrics(out / "metrics.jsonl")]


def test_train_end_to_end_learns_the_preference_and_scores_new_answers(tmp_path, monkeypatch):
    summary = rm.train(tiny_run(tmp_path, monkeypatch))
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "model.pt", "samples.txt"}
    metrics = metrics_rows(run)
    assert metrics[0]["step"] == 1 and metrics[0]["loss"] == pytest.approx(math.log(2), abs=0.05)  # a fresh head
    assert metrics[-1]["accuracy"] == 1.0 and metrics[-1]["margin"] > 1.0
    assert summary["eval_accuracy"] == 1.0  # the refusal is scored below a word on unseen prompts too
    judge = RewardModel(run / "model.pt")
    r = judge(["name tiger", "name glass"], ["tiger", REFUSAL])  # (2,)
    assert r.shape == (2,) and r[0] > r[1]
    assert "r(chosen)" in (run / "samples.txt").read_text()
    # the saved model is a GPT with its value head; RewardModel refuses a checkpoint that is not a reward model,
    # and everything that wants a policy (every objective's --init and --ref, chat, the card) refuses a reward model
    assert load_model(run / "model.pt", policy=False)[0].value_head is not None
    with pytest.raises(InputError, match=r"run/model.pt is a reward model \(kind 'reward_model'\), not a policy"):
        load_model(run / "model.pt")
    for module, flags in [("sft", {"init": run / "model.pt"}), ("grpo", {"init": run / "model.pt"}),
                          ("dpo", {"init": tmp_path / "sft.pt", "ref": run / "model.pt"})]:  # each objective's own flags
        objective = importlib.import_module(f"minipost.{module}")
        with pytest.raises(InputError, match=r"run/model.pt is a reward model"):
            objective.train(objective.Config(out=str(tmp_path / module), **{k: str(v) for k, v in flags.items()}))
        assert not (tmp_path / module).exists()
    chat = subprocess.run([sys.executable, "-m", "minipost.chat", "--ckpt", str(run / "model.pt")], input="hi\n",
                          capture_output=True, text=True, timeout=120)
    assert chat.returncode == 2 and "is a reward model" in chat.stderr and "Traceback" not in chat.stderr
    with pytest.raises(InputError, match="not a reward model"):
        RewardModel(tmp_path / "sft.pt")
    with pytest.raises(InputError, match="no such reward model"):
        RewardModel(tmp_path / "nope.pt")


def test_without_held_out_pairs_nothing_is_logged_as_nan(tmp_path, monkeypatch):
    summary = rm.train(tiny_run(tmp_path, monkeypatch, eval_data="", max_steps=5))
    assert summary["eval_accuracy"] is None
    assert all("eval_accuracy" not in row for row in metrics_rows(tmp_path / "run"))
    assert "NaN" not in (tmp_path / "run" / "summary.json").read_text()
    with pytest.raises(InputError, match=r"a folder, not a checkpoint file"):
        rm.train(tiny_run(tmp_path, monkeypatch, init=str(tmp_path)))


def test_margins_from_the_data_are_used_and_bad_ones_refused_by_line(tmp_path, monkeypatch):
    rows = [{"prompt": f"name {w}", "chosen": w, "rejected": REFUSAL, "margin": 1.0} for w in WORDS]
    rm.train(tiny_run(tmp_path, monkeypatch, rows=rows, max_steps=2))
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    rows[3]["margin"] = "big"
    with pytest.raises(InputError, match="prefs.jsonl:4: field 'margin'"):
        rm.train(tiny_run(tmp_path, monkeypatch, rows=rows, max_steps=2))
    del rows[3]["margin"]  # one pair without a margin while the others have one
    with pytest.raises(InputError, match="prefs.jsonl:4: field 'margin'"):
        rm.train(tiny_run(tmp_path, monkeypatch, rows=rows, max_steps=2))
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    common = dict(max_steps=7, eval_every=3, log_every=1, save_every=5)
    rm.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "once"), **common))
    rm.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "twice"), stop_after=4, **common))
    twice = tmp_path / "twice"
    assert not (twice / "model.pt").exists()
    rm.train(tiny_run(tmp_path, monkeypatch, out=str(twice), resume=True, **common))
    a, b = load_model(tmp_path / "once" / "model.pt", policy=False)[0], load_model(twice / "model.pt", policy=False)[0]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert metrics_rows(tmp_path / "once") == metrics_rows(twice)


def test_micro_batches_give_the_whole_batch_gradient(tmp_path, monkeypatch):
    whole = rm.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "a"), max_steps=3, micro_batch_size=0))
    split = rm.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "b"), max_steps=3, micro_batch_size=2))
    assert whole["loss"] == pytest.approx(split["loss"], abs=1e-5)
    a, b = (load_model(tmp_path / d / "model.pt", policy=False)[0] for d in "ab")
    assert all(torch.allclose(v, b.state_dict()[k], atol=1e-5) for k, v in a.state_dict().items())


def test_defaults_and_bad_flags():
    assert config_with_preset(rm.Config, rm.PRESETS, preset="nano") == rm.Config()
    for bad in [dict(max_steps=0), dict(center_coef=-1.0), dict(batch_size=4, micro_batch_size=8),
                dict(lr=0.0)]:
        with pytest.raises(InputError):
            rm.Config(**bad)


def test_reward_spec_rm_path_weight_and_its_errors(tmp_path, monkeypatch):
    """--reward rm:PATH[:W] composes with the checkers; a missing path, a missing file or a checkpoint that is
    not a reward model is refused with the flag named; batch scoring equals one answer at a time."""
    from minipost.rewards import ModelReward, WeightedReward, parse_reward
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda name, *a, **k: ENC)
    save_checkpoint(tmp_path / "rm.pt", model_checkpoint(tiny_gpt(value_head=True), "bytes", 0, kind=KIND))
    save_checkpoint(tmp_path / "sft.pt", model_checkpoint(tiny_gpt(), "bytes", 0))
    reward = parse_reward(f"correct:1,rm:{tmp_path / 'rm.pt'}:0.5")
    assert isinstance(reward, WeightedReward) and isinstance(reward.terms["rm"][0], ModelReward)
    assert reward.terms["rm"][1] == 0.5 and parse_reward(f"rm:{tmp_path / 'rm.pt'}").terms["rm"][1] == 1.0
    records = [{"prompt": f"What is {i} + 1?", "domain": "arithmetic", "answer": i + 1} for i in range(3)]
    answers = ["1 + 1 = 2.", "no idea", "2 + 1 = 3."]
    parts = reward.batch_parts([r["prompt"] for r in records], answers, records)
    judge = RewardModel(tmp_path / "rm.pt")
    for p, rec, a in zip(parts, records, answers):
        assert p["rm"] == pytest.approx(judge([rec["prompt"]], [a]).item(), abs=1e-6)
        assert p == pytest.approx(reward.parts(rec["prompt"], a, rec), abs=1e-6)
    assert [p["correct"] for p in parts] == [0.0, 0.0, 1.0]
    for spec, msg in [("rm:", "'rm' needs a path"), (f"rm:{tmp_path / 'nope.pt'}", "no such reward model"),
                      (f"rm:{tmp_path / 'sft.pt'}:2", "not a reward model")]:
        with pytest.raises(InputError, match=f"--reward '{spec}': .*{msg}" if spec != "rm:" else msg):
            parse_reward(spec)


def test_reward_specs_that_would_overflow_or_repeat_are_refused(tmp_path):
    from minipost.rewards import parse_reward
    save_checkpoint(tmp_path / "rm.pt", model_checkpoint(tiny_gpt(value_head=True), "bytes", 0, kind=KIND))
    for spec, msg in [("correct:1e39", "at most 1e\\+06"), ("correct:3e38,format:3e38", "at most"),
                      (f"rm:{tmp_path / 'rm.pt'}:nan", "must be a finite number"),
                      ("correct:1,correct:5", "'correct' is given twice"),
                      (f"rm:{tmp_path / 'rm.pt'},rm:{tmp_path / 'rm.pt'}", "'rm' is given twice")]:
        with pytest.raises(InputError, match=msg):
            parse_reward(spec)


def test_a_huge_margin_is_refused_and_a_too_long_pair_names_the_reward_models_limit(tmp_path, monkeypatch):
    rows = [{"prompt": f"name {w}", "chosen": w, "rejected": REFUSAL, "margin": 1e39} for w in WORDS]
    with pytest.raises(InputError, match="prefs.jsonl:1: field 'margin' must be a finite number of size"):
        rm.train(tiny_run(tmp_path, monkeypatch, rows=rows, max_steps=2))
    rows = [{"prompt": "x" * 60, "chosen": "y", "rejected": "z"}] * 8  # 60 bytes + the template > 64
    with pytest.raises(InputError, match="prefs.jsonl:1: prompt \\+ chosen is .* tokens, more than block_size 64"):
        rm.train(tiny_run(tmp_path, monkeypatch, rows=rows, max_steps=2))
