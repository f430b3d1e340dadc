"""RLOO, GRPO and PPO objectives: advantages and losses against hand-computed values, and their invariants."""
import pytest
import torch

from minipost.grpo import group_advantages, grpo_loss, micro_batch_weight
from minipost.harness import read_metrics
from minipost.logprobs import whiten
from minipost.model import GPT, GPTConfig
from minipost.ppo import gae, ppo_policy_loss, ppo_value_loss
from minipost.reinforce import reinforce_loss, rloo_advantages
from minipost.rewards import token_rewards
from minipost.rollout import completion_logprobs, micro_batches, sample_completions

# 8 samples of one prompt, 3 correct (reward 1) and 5 wrong (reward 0)
R = torch.tensor([1.0, 0, 0, 1, 0, 0, 1, 0])


# ---------------------------------------------------------------------------------------------------------------
# advantages

def test_advantages_by_hand_8_samples_3_correct():
    # mean 3/8 = 0.375; unbiased std = sqrt((3 * 0.625^2 + 5 * 0.375^2) / 7) = sqrt(1.875 / 7) = 0.517549
    grpo = group_advantages(R, 8, eps=0.0)
    assert grpo[0].item() == pytest.approx(1.2076, abs=1e-4) and grpo[1].item() == pytest.approx(-0.7246, abs=1e-4)
    grpo_eps = group_advantages(R, 8)  # default eps 1e-4 in the denominator
    assert grpo_eps[0].item() == pytest.approx(0.625 / (0.517549 + 1e-4), abs=1e-5)
    rloo = rloo_advantages(R, 8)  # 1 - 2/7, 0 - 3/7
    assert rloo[0].item() == pytest.approx(0.7143, abs=1e-4) and rloo[1].item() == pytest.approx(-0.4286, abs=1e-4)
    dr = group_advantages(R, 8, scale=False)  # only centred
    assert dr[0].item() == pytest.approx(0.625, abs=1e-6) and dr[1].item() == pytest.approx(-0.375, abs=1e-6)
    for a in (grpo, rloo, dr):  # same value for every correct sample, and for every wrong one
        assert torch.allclose(a[R == 1], a[R == 1][0]) and torch.allclose(a[R == 0], a[R == 0][0])


def test_group_advantages_sum_to_zero_and_vanish_for_identical_rewards():
    torch.manual_seed(0)
    r = torch.rand(6 * 4)  # 6 groups of 4
    for a in (group_advantages(r, 4), group_advantages(r, 4, scale=False), rloo_advantages(r, 4)):
        torch.testing.assert_close(a.view(6, 4).sum(1), torch.zeros(6), atol=1e-6, rtol=0)
    same = torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1, 0.3, 0.3, 0.3, 0.3])
    for a in (group_advantages(same, 4), group_advantages(same, 4, scale=False), rloo_advantages(same, 4)):
        assert torch.all(a == 0)
    # eight equal rewards that float32 cannot hold exactly (1.3 + 0.3 restate, as in the nano preset): their
    # mean misses 1.3 by a rounding step, which the std + eps division would blow up to -0.0012 per answer
    equal = torch.full((8,), 1.3)
    assert equal.view(1, 8).mean(1).item() != equal[0].item()  # the rounding this guards against
    assert torch.all(group_advantages(equal, 8) == 0) and torch.all(group_advantages(equal, 8, scale=False) == 0)
    assert rloo_advantages(equal, 8).abs().max() < 1e-6  # RLOO does not divide by the spread: a 1e-7 residue
    # groups are independent: rows 0-3 and 4-7 of [1,0,0,0, 1,1,1,0] get mirrored advantages
    a = rloo_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0]), 4)
    torch.testing.assert_close(a[:4], -a[4:].flip(0))
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(R, 1)


# ---------------------------------------------------------------------------------------------------------------
# GRPO loss on a ragged batch, by hand

# row 0: 2 real tokens (a pad after), advantage +1; row 1: 3 tokens, advantage -0.5
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
ADV = torch.tensor([1.0, -0.5])
OLD = torch.log(torch.tensor([[0.2, 0.3, 0.4], [0.4, 0.1, 0.5]]))
RATIO = torch.tensor([[1.5, 1.0, 3.0], [0.5, 1.0, 1.1]])  # pi / pi_old; the 3.0 sits on padding
NEW = OLD + torch.log(RATIO)
# per-token loss -min(rho A, clip(rho) A), clip range 0.2:
#   row 0: rho 1.5 -> -min(1.5, 1.2) = -1.2;  rho 1.0 -> -1.0
#   row 1: rho 0.5 -> -min(-0.25, -0.4) = 0.4;  rho 1.0 -> 0.5;  rho 1.1 -> -min(-0.55, -0.55) = 0.55
BY_HAND = {"grpo": ((-1.2 - 1.0) / 2 + (0.4 + 0.5 + 0.55) / 3) / 2,  # mean of sequence means = -0.308333
           "bnpo": (-1.2 - 1.0 + 0.4 + 0.5 + 0.55) / 5,  # token mean = -0.15
           "dapo": (-1.2 - 1.0 + 0.4 + 0.5 + 0.55) / 5,  # the same on one batch (they differ across micro-batches)
           "dr_grpo": (-1.2 - 1.0 + 0.4 + 0.5 + 0.55) / (2 * 4)}  # sum / (B * max_tokens 4) = -0.09375


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_grpo_loss_types_on_a_ragged_batch_by_hand(loss_type):
    loss, info = grpo_loss(NEW, OLD, None, ADV, MASK, clip_eps=0.2, beta=0.0, loss_type=loss_type, max_tokens=4)
    assert info["loss"] == loss.detach() and info["clip_frac"].item() == pytest.approx(2 / 5)  # rho 1.5, 0.5
    assert loss.item() == pytest.approx(BY_HAND[loss_type], abs=1e-6)


def test_grpo_k3_kl_term_by_hand():
    # ratio 1 and zero advantage, so only the KL term is left; pi_ref = 2 pi on one token, = pi elsewhere
    # k3 = (r - 1) - log r with r = pi_ref / pi = 2: 1 - log 2 = 0.306853
    logps = torch.log(torch.tensor([[0.2, 0.3, 0.4], [0.4, 0.1, 0.5]]))
    ref = logps.clone()
    ref[1, 2] += torch.log(torch.tensor(2.0))
    loss, _ = grpo_loss(logps, logps, ref, torch.zeros(2), MASK, beta=0.1, loss_type="bnpo")
    assert loss.item() == pytest.approx(0.1 * (1 - 0.693147) / 5, abs=1e-6)
    with pytest.raises(ValueError, match="unknown loss_type"):
        grpo_loss(logps, logps, ref, torch.zeros(2), MASK, loss_type="bogus")


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gradient_accumulation_over_micro_batches_equals_one_batch(loss_type):
    torch.manual_seed(1)
    B, T = 6, 5
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in (5, 1, 3, 4, 2, 5)])
    old = -torch.rand(B, T) * 3
    ref = -torch.rand(B, T) * 3
    adv = torch.randn(B)
    theta = (old + 0.3 * torch.randn(B, T)).requires_grad_()  # some ratios beyond the clip range
    full, _ = grpo_loss(theta, old, ref, adv, mask, beta=0.05, loss_type=loss_type, max_tokens=T)
    (g_full,) = torch.autograd.grad(full, theta)
    acc, g_acc = 0.0, torch.zeros(B, T)
    for idx in (torch.arange(0, 4), torch.arange(4, 6)):  # unequal micro-batches
        part, _ = grpo_loss(theta[idx], old[idx], ref[idx], adv[idx], mask[idx], beta=0.05, loss_type=loss_type,
                            max_tokens=T)
        part = part * micro_batch_weight(loss_type, mask[idx], mask)
        (g,) = torch.autograd.grad(part, theta)
        acc, g_acc = acc + part.item(), g_acc + g
    assert acc == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(g_acc, g_full, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "reinforce"])
def test_length_grouped_trimmed_micro_batches_give_the_full_batch_gradient(loss_type):
    """What the training loops do: micro_batches + completion_logprobs (padding cut) == one untrimmed batch."""
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=8, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    ro = sample_completions(model, [[3, 4, 5, 6], [7], [5, 6]], group_size=4, max_new_tokens=10, temperature=1.0,
                            stop_token=2, generator=torch.Generator().manual_seed(3))
    assert len(set(ro.lengths.tolist())) > 2  # ragged: the stop token is drawn at different steps
    old, ref, adv, mask = ro.logprobs, ro.logprobs - 0.1, torch.randn(len(ro)), ro.completion_mask

    def loss_of(logps, idx):
        if loss_type == "reinforce":
            return reinforce_loss(logps, adv[idx], mask[idx], ref[idx], 0.05)[0] * len(idx) / len(ro)
        return grpo_loss(logps, old[idx], ref[idx], adv[idx], mask[idx], beta=0.05, loss_type=loss_type,
                         max_tokens=10)[0] \
            * micro_batch_weight(loss_type, mask[idx], mask)

    params = list(model.parameters())
    full = loss_of(completion_logprobs(model, ro), torch.arange(len(ro)))
    g_full = torch.autograd.grad(full, params)
    g_acc = [torch.zeros_like(p) for p in params]
    for idx in micro_batches(ro, 5):
        for acc, g in zip(g_acc, torch.autograd.grad(loss_of(completion_logprobs(model, ro.select(idx)), idx), params)):
            acc += g
    for a, b in zip(g_acc, g_full):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_first_update_has_ratio_one_and_zero_clip_fraction():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    ro = sample_completions(model, [[3, 4, 5], [6, 7]], group_size=4, max_new_tokens=8, temperature=0.9,
                            stop_token=2, generator=torch.Generator().manual_seed(0))
    logps = completion_logprobs(model, ro, temperature=0.9)  # the training pass, with gradients
    mask = ro.completion_mask
    ratio = torch.exp(logps - ro.logprobs)[mask.bool()]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=2e-6, rtol=0)
    fused = completion_logprobs(model, ro, temperature=0.9, impl="fused")  # the logits never whole: the same
    torch.testing.assert_close(torch.exp(fused - ro.logprobs)[mask.bool()], torch.ones_like(ratio), atol=2e-6, rtol=0)
    _, info = ppo_policy_loss(logps, ro.logprobs, torch.randn(mask.shape), mask)
    assert info["clip_frac"].item() == 0.0 and abs(info["approx_kl"].item()) < 1e-10
    # at ratio 1 the clipped loss's gradient is the plain policy gradient (the clip is inactive)
    adv = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1]), 4)
    (g_clip,) = torch.autograd.grad(grpo_loss(logps, ro.logprobs, None, adv, mask)[0], logps, retain_graph=True)
    pg = -((adv[:, None] * logps * mask).sum(1) / mask.sum(1)).mean()  # -mean_i A_i * mean_t log pi
    (g_pg,) = torch.autograd.grad(pg, logps)
    torch.testing.assert_close(g_clip, g_pg, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# REINFORCE loss

def test_reinforce_loss_by_hand():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]])).requires_grad_()
    adv = torch.tensor([2.0, -1.0])
    loss, _ = reinforce_loss(logps, adv, MASK)  # -(2 * log(0.125) - log(0.006)) / 2
    assert loss.item() == pytest.approx(-(2 * torch.log(torch.tensor(0.125)).item()
                                          - torch.log(torch.tensor(0.006)).item()) / 2, abs=1e-5)
    (g,) = torch.autograd.grad(loss, logps)  # d/d logp_it = -A_i / B on real tokens, 0 on padding
    torch.testing.assert_close(g, torch.tensor([[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]]))


# ---------------------------------------------------------------------------------------------------------------
# PPO

def test_gae_by_hand_4_steps():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[0.1, 0.0, -0.2, 1.0], [0.0, 2.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 0.3], [1.0, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1 ends after 2 tokens; 9s are padding garbage
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # row 0, backwards (V after the last token is 0):
    #   t3: delta = 1 - 0.3 = 0.7                               A3 = 0.7
    #   t2: delta = -0.2 + 0.9 * 0.3 - 0.6 = -0.53               A2 = -0.53 + 0.72 * 0.7 = -0.026
    #   t1: delta = 0 + 0.9 * 0.6 - 0.4 = 0.14                   A1 = 0.14 + 0.72 * -0.026 = 0.12128
    #   t0: delta = 0.1 + 0.9 * 0.4 - 0.5 = -0.04                A0 = -0.04 + 0.72 * 0.12128 = 0.0473216
    # row 1: t1: delta = 2 - 0.5 = 1.5, A1 = 1.5;  t0: delta = 0.9 * 0.5 - 1 = -0.55, A0 = -0.55 + 0.72 * 1.5 = 0.53
    expected = torch.tensor([[0.0473216, 0.12128, -0.026, 0.7], [0.53, 1.5, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, (expected + values) * mask, atol=1e-6, rtol=0)
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t
    adv1, _ = gae(rewards[:1], values[:1], mask[:1], 1.0, 1.0)
    torch.testing.assert_close(adv1[0], rewards[0].flip(0).cumsum(0).flip(0) - values[0], atol=1e-6, rtol=0)


def test_token_rewards_put_the_score_on_the_last_token():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-1.0, -1.0, -2.0]])
    r = token_rewards(torch.tensor([1.0, 0.5]), logps, ref, MASK, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.05, 0.1 + 1.0, 0.0], [0.0, 0.0, -0.1 + 0.5]]))
    r64 = token_rewards(torch.tensor([1.0, 0.5]), logps.double(), ref.double(), MASK, beta=0.1)  # float64 log-probs
    assert r64.dtype == torch.float64
    torch.testing.assert_close(r64, r.double())


def test_whiten_and_ppo_losses_by_hand():
    x = torch.tensor([[1.0, 3.0, 100.0], [2.0, 4.0, 5.0]])
    w = whiten(x, MASK)  # real values 1, 3, 2, 4, 5: mean 3, biased var 2
    torch.testing.assert_close(w, torch.tensor([[-2.0, 0.0, 0.0], [-1.0, 1.0, 2.0]]) / 2 ** 0.5, atol=1e-6, rtol=0)
    loss, info = ppo_policy_loss(NEW, OLD, ADV[:, None].expand(2, 3), MASK, clip_eps=0.2)
    assert loss.item() == pytest.approx(BY_HAND["bnpo"], abs=1e-6)  # same per-token terms, token mean
    assert info["clip_frac"].item() == pytest.approx(2 / 5)  # rho 1.5 and 0.5 are outside [0.8, 1.2]
    v = torch.tensor([[0.5, 1.0, 7.0], [0.0, 0.0, 0.0]])
    old_v = torch.tensor([[0.0, 0.9, 0.0], [0.0, 0.3, 0.0]])
    ret = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, -1.0]])
    # token 00: max((0.5-1)^2, (0.2-1)^2) = 0.64; 01: max(0, (1.0-1)^2) = 0; 10: 0; 11: max(1, (0.1-1)^2) = 1;
    # 12: max(1, (0-(-1))^2) = 1  ->  0.5 * (0.64 + 0 + 0 + 1 + 1) / 5 = 0.264
    assert ppo_value_loss(v, old_v, ret, MASK, clip_value=0.2)[0].item() == pytest.approx(0.264, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# train() end to end on a tiny random model with a byte-level tokenizer (no world files needed)

def ascii_share(prompt, completion, record):
    """A dense toy reward: the share of ASCII characters in the completion (a random byte model gets ~1/2)."""
    return sum(ord(c) < 128 for c in completion) / max(len(completion), 1)


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    import json

    import minipost.tokenizer as tokenizer
    from minipost.common import save_checkpoint
    from minipost.checkpoints import model_checkpoint

    enc = tokenizer.build_encoding("bytes", {bytes([i]): i for i in range(256)})
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda name, *a, **k: enc)
    torch.set_num_threads(1)
    rows = [{"prompt": f"What is {i} + {i % 5}?", "domain": "arithmetic", "answer": i + i % 5} for i in range(40)]
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(tmp_path / "init.pt", model_checkpoint(model, "bytes", 0))
    return dict(init=str(tmp_path / "init.pt"), data=str(tmp_path / "rl.jsonl"), eval_data=str(tmp_path / "eval.jsonl"),
                prompts_per_step=4, group_size=4, max_new_tokens=8, eval_every=0, eval_limit=4, device="cpu",
                progress=False)


@pytest.mark.parametrize("objective,extra", [("reinforce", dict(baseline="rloo", lr=1e-2)),
                                             ("grpo", dict(lr=1e-2, num_iterations=2, beta=0.01)),
                                             ("ppo", dict(lr=1e-2, critic_lr=1e-2, beta=0.01))])
def test_train_end_to_end_raises_a_toy_reward(objective, extra, tiny_setup, tmp_path):
    import importlib

    from minipost.common import config_with_preset
    from minipost.checkpoints import load_model

    mod = importlib.import_module(f"minipost.{objective}")
    cfg = config_with_preset(mod.Config, mod.PRESETS, out=str(tmp_path / objective), max_steps=25, **tiny_setup,
                             **extra)
    summary = mod.train(cfg, reward_fn=ascii_share)
    run = tmp_path / objective
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "model.pt", "samples.txt"}
    rows = read_metrics(run / "metrics.jsonl")
    train_rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 26)) and summary["steps"] == 25
    assert {"eval_arithmetic", "eval_format"} <= set(rows[0]) and rows[0]["step"] == 0
    first = sum(r["reward"] for r in train_rows[:5]) / 5
    last = sum(r["reward"] for r in train_rows[-5:]) / 5
    assert last > first + 0.15, (first, last)  # the policy moved toward what scored well
    assert train_rows[-1]["kl_ref"] > 0
    lr = extra["lr"]  # linear decay, set at the start of each rollout step: lr * (1 - step / max_steps)
    assert train_rows[0]["lr"] == lr and train_rows[-1]["lr"] == pytest.approx(lr * (1 - 24 / 25))
    if objective == "ppo":
        assert {"approx_kl", "value_loss", "explained_var"} <= set(train_rows[0])
    model, _, ckpt = load_model(run / "model.pt")  # PPO saves the policy only: loads like any stage
    assert model.value_head is None and ckpt["tokenizer"] == "bytes" and ckpt["step"] == 25


# ---------------------------------------------------------------------------------------------------------------
# runs that never lose work: resume, refused configs, NaN, bad flags, failed starts, the CLI

RL_FILES = {"reinforce": dict(baseline="rloo", lr=1e-2), "grpo": dict(lr=1e-2, beta=0.01),
            "ppo": dict(lr=1e-2, critic_lr=1e-2, beta=0.01)}
WALL_CLOCK = ("elapsed_s", "steps_per_s")


def _rows(path):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_metrics(path / "metrics.jsonl")]


@pytest.mark.parametrize("objective", list(RL_FILES))
def test_rl_resume_is_bit_exact_and_refuses_a_changed_config(objective, tiny_setup, tmp_path):
    import importlib

    from minipost.common import InputError, load_checkpoint

    mod = importlib.import_module(f"minipost.{objective}")
    base = dict(max_steps=4, save_every=10, **tiny_setup, **RL_FILES[objective])
    mod.train(mod.Config(out=str(tmp_path / "straight"), **base), reward_fn=ascii_share)
    resumed = tmp_path / "resumed"
    mod.train(mod.Config(out=str(resumed), stop_after=2, **base), reward_fn=ascii_share)
    assert (resumed / "state.pt").exists() and not (resumed / "model.pt").exists()
    with pytest.raises(InputError, match="config differs"):
        mod.train(mod.Config(out=str(resumed), resume=True, **{**base, "max_new_tokens": 6}), reward_fn=ascii_share)
    (resumed / "model.pt.x.tmp").write_text("left by a kill")
    mod.train(mod.Config(out=str(resumed), resume=True, **base), reward_fn=ascii_share)
    assert not list(resumed.glob("*.tmp"))
    a, b = (load_checkpoint(p / "model.pt")["model"] for p in (tmp_path / "straight", resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(tmp_path / "straight") == _rows(resumed)
    if objective == "ppo":  # the critic and its optimizer come back too
        sa, sb = (load_checkpoint(p / "state.pt") for p in (tmp_path / "straight", resumed))
        assert all(torch.equal(sa["critic"][k], sb["critic"][k]) for k in sa["critic"])


@pytest.mark.parametrize("objective", list(RL_FILES))
def test_rl_blowup_stops_and_leaves_only_finite_checkpoints(objective, tiny_setup, tmp_path):
    import importlib

    from minipost.common import load_checkpoint, non_finite

    mod = importlib.import_module(f"minipost.{objective}")
    cfg = mod.Config(out=str(tmp_path / "run"), max_steps=6, save_every=1, **{**tiny_setup, **RL_FILES[objective],
                                                                               "lr": 1e30, "critic_lr": 1e30}) \
        if objective == "ppo" else mod.Config(out=str(tmp_path / "run"), max_steps=6, save_every=1,
                                              **{**tiny_setup, **RL_FILES[objective], "lr": 1e30})
    with pytest.raises(FloatingPointError, match="stopping"):
        mod.train(cfg, reward_fn=ascii_share)
    for name in ("model.pt", "state.pt"):
        if (tmp_path / "run" / name).exists():
            assert next(non_finite(load_checkpoint(tmp_path / "run" / name)), None) is None


@pytest.mark.parametrize("objective", list(RL_FILES))
def test_rl_bad_flags_and_bad_files_fail_before_anything_is_written(objective, tiny_setup, tmp_path):
    import importlib
    import json

    from minipost.common import InputError

    mod = importlib.import_module(f"minipost.{objective}")
    bad = [dict(max_steps=-5), dict(prompts_per_step=0), dict(group_size=0), dict(micro_batch_size=-1),
           dict(eval_every=-1), dict(lr=float("inf")), dict(lr=0.0), dict(temperature=0.0)]
    bad += [dict(num_iterations=0)] if objective == "grpo" else []
    bad += [dict(ppo_epochs=0), dict(num_minibatches=0)] if objective == "ppo" else [dict(group_size=1)]
    bad += [dict(ppo_epochs=101)] if objective == "ppo" else [dict(num_iterations=101)]
    if objective == "grpo":  # a group of one never learns; clip-higher below the clip range makes no sense
        bad += [dict(group_size=1, scale_rewards=False), dict(clip_eps=0.2, clip_eps_high=0.1)]
    bad += [dict(kl_in="reward", kl_loss="k2")]  # a KL term of the loss when the KL is in the reward: ignored
    for kw in bad:
        with pytest.raises(InputError):
            mod.Config(**kw)
    with pytest.raises(InputError, match="--kl-loss k2: used only with --kl-in loss"):
        mod.Config(kl_in="reward", kl_loss="k2")
    run = tmp_path / "run"
    mod.train(mod.Config(out=str(run), max_steps=1, **tiny_setup, **RL_FILES[objective]), reward_fn=ascii_share)
    before = {f: (run / f).read_bytes() for f in ("config.json", "metrics.jsonl")}
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"prompt": "What is 1 + 1?", "domain": "arithmetic"}) + "\n")  # no answer
    with pytest.raises(InputError, match=r"broken.jsonl:1: field 'answer'"):
        mod.train(mod.Config(out=str(run), max_steps=1, **{**tiny_setup, "data": str(broken)},
                             **RL_FILES[objective]), reward_fn=ascii_share)
    assert {f: (run / f).read_bytes() for f in before} == before



# ---------------------------------------------------------------------------------------------------------------
# the variants (DAPO, GSPO, KL choices, REINFORCE++, multi-update RLOO) train, log what they add, resume exactly

def length_over_3(prompt, completion, record):
    """A 0/1 reward, so that many groups of 4 have no spread at all (what dynamic sampling drops)."""
    return float(len(completion) > 3)


VARIANTS = {
    "reinforce++": ("reinforce", dict(lr=1e-2, baseline="reinforce++", kl_in="reward", beta=0.05)),
    "rloo_x2": ("reinforce", dict(lr=1e-2, num_iterations=2, kl_loss="k2")),
    "dapo": ("grpo", dict(lr=1e-2, beta=0.0, loss_type="dapo", clip_eps_high=0.28, num_iterations=2,
                          dynamic_sampling=True, max_sample_rounds=3, overlong_buffer=4)),
    "gspo": ("grpo", dict(lr=1e-2, beta=0.0, importance_sampling_level="sequence", clip_eps=3e-4,
                          clip_eps_high=4e-4, num_iterations=2)),
    "grpo_kl": ("grpo", dict(lr=1e-2, beta=0.05, kl_loss="k3_corrected", loss_type="dr_grpo",
                             scale_rewards=False)),
    "grpo_kl_reward": ("grpo", dict(lr=1e-2, beta=0.05, kl_in="reward")),
    "ppo_kl_loss": ("ppo", dict(lr=1e-2, critic_lr=1e-2, beta=0.05, kl_in="loss", kl_loss="k2")),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rl_variants_train_log_and_resume_bit_exact(variant, tiny_setup, tmp_path):
    import importlib

    from minipost.common import load_checkpoint

    name, extra = VARIANTS[variant]
    mod = importlib.import_module(f"minipost.{name}")
    base = dict(max_steps=4, save_every=10, **tiny_setup, **extra)
    mod.train(mod.Config(out=str(tmp_path / "straight"), **base), reward_fn=length_over_3)
    mod.train(mod.Config(out=str(tmp_path / "resumed"), stop_after=2, **base), reward_fn=length_over_3)
    mod.train(mod.Config(out=str(tmp_path / "resumed"), resume=True, **base), reward_fn=length_over_3)
    a, b = (load_checkpoint(tmp_path / p / "model.pt")["model"] for p in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = _rows(tmp_path / "straight")
    assert rows == _rows(tmp_path / "resumed")
    train_rows = [r for r in rows if "reward" in r]
    assert len(train_rows) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows)
    if variant == "dapo":  # groups were dropped, and a full batch of informative groups has no zero-spread group
        assert sum(r["dropped_groups"] for r in train_rows) > 0
        assert all(r["zero_std_frac"] == 0 for r in train_rows if r["sample_rounds"] < 3 or r["dropped_groups"] == 0)


@pytest.mark.parametrize("objective", list(RL_FILES))
def test_rl_trains_on_a_reward_model_named_on_the_command_line(objective, tiny_setup, tmp_path):
    """--reward rm:PATH:W (composable with the checkers): the reward model scores every answer, logged as r_rm."""
    import importlib
    import math

    import minipost.tokenizer as tokenizer
    from minipost.common import save_checkpoint
    from minipost.checkpoints import model_checkpoint
    from minipost.rewards import KIND

    torch.manual_seed(1)
    vocab = tokenizer.get_tokenizer("bytes").n_vocab  # tiny_setup's byte-level tokenizer
    rm_model = GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=1, n_head=2, n_embd=16, value_head=True))
    save_checkpoint(tmp_path / "rm.pt", model_checkpoint(rm_model, "bytes", 0, kind=KIND))
    mod = importlib.import_module(f"minipost.{objective}")
    cfg = mod.Config(out=str(tmp_path / "run"), max_steps=2, reward=f"correct:1,rm:{tmp_path / 'rm.pt'}:0.5",
                     **tiny_setup, **RL_FILES[objective])
    mod.train(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    train_rows = [r for r in rows if "reward" in r]
    assert len(train_rows) == 2 and all(math.isfinite(r["r_rm"]) and r["r_rm"] != 0 for r in train_rows)
    r = train_rows[0]  # the logged reward is the weighted sum of the logged terms, minus the missing-stop penalty
    expected = r["r_correct"] + 0.5 * r["r_rm"] - cfg.missing_stop_penalty * (1 - r["stop_rate"])
    assert r["reward"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("objective", ["grpo", "reinforce", "ppo"])
def test_checkpointing_recomputes_the_policys_blocks_and_trains_the_same_weights(objective, tiny_setup, tmp_path,
                                                                                 monkeypatch):
    """The RL policies train in eval mode (no dropout while the log-probs are compared): --checkpointing must
    still recompute their blocks in backward, and give the same weights bit for bit."""
    import importlib

    import minipost.model as model_module
    from minipost.common import load_checkpoint
    mod = importlib.import_module(f"minipost.{objective}")
    calls = []
    real = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    for on in (False, True):
        mod.train(mod.Config(out=str(tmp_path / str(on)), max_steps=2, checkpointing=on,
                             **{**tiny_setup, **RL_FILES[objective]}), reward_fn=ascii_share)
        assert bool(calls) == on, objective
    a, b = (load_checkpoint(tmp_path / d / "model.pt")["model"] for d in ("False", "True"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("objective", ["grpo", "reinforce", "ppo"])
def test_resuming_a_finished_rl_run_rewrites_what_it_had(objective, tiny_setup, tmp_path):
    import importlib
    import json
    mod = importlib.import_module(f"minipost.{objective}")
    kw = dict(out=str(tmp_path / "run"), max_steps=2, **{**tiny_setup, **RL_FILES[objective]})
    mod.train(mod.Config(**kw), reward_fn=ascii_share)
    before = json.loads((tmp_path / "run" / "summary.json").read_text())
    mod.train(mod.Config(**kw, resume=True), reward_fn=ascii_share)
    after = json.loads((tmp_path / "run" / "summary.json").read_text())
    drop = ("elapsed_s", "steps_per_s", "seconds")
    assert {k: v for k, v in after.items() if k not in drop} == {k: v for k, v in before.items() if k not in drop}
