"""RL variants against reference formulas: loss normalisers (dapo, bnpo, a constant dr_grpo), clip-higher, GSPO's
sequence ratio, the KL terms' gradients by Monte Carlo, DAPO's overlong shaping and dynamic sampling."""
import pytest
import torch

from minipost.grpo import grpo_loss, micro_batch_weight
from minipost.model import GPT, GPTConfig
from minipost.rewards import overlong_penalty
from minipost.rl import KL_LOSSES, kl_estimate, kl_loss_term
from minipost.rollout import Rollout, completion_logprobs, concat_rollouts, micro_batches, sample_completions


def random_batch(seed=0, B=6, T=5, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in (5, 1, 3, 4, 2, 5)[:B]])
    old = -torch.rand(B, T, generator=g) * 3
    ref = -torch.rand(B, T, generator=g) * 3
    adv = torch.randn(B, generator=g)
    logps = (old + spread * torch.randn(B, T, generator=g)).requires_grad_()  # ratios beyond the clip range too
    return logps, old, ref, adv, mask


# ---------------------------------------------------------------------------------------------------------------
# normalisers

def test_dr_grpo_loss_does_not_move_when_the_same_batch_is_padded_wider():
    """Dr. GRPO divides by B x the generation budget, not by the width generation happened to stop at."""
    logps, old, ref, adv, mask = random_batch()
    narrow, _ = grpo_loss(logps, old, ref, adv, mask, beta=0.05, loss_type="dr_grpo", max_tokens=48)
    pad = lambda x: torch.nn.functional.pad(x, (0, 7))  # noqa: E731  7 more columns of padding
    wide, _ = grpo_loss(pad(logps), pad(old), pad(ref), adv, pad(mask), beta=0.05, loss_type="dr_grpo", max_tokens=48)
    assert wide.item() == pytest.approx(narrow.item(), abs=1e-7)
    per_token = -torch.min(torch.exp(logps - old) * adv[:, None],
                           torch.clamp(torch.exp(logps - old), 0.8, 1.2) * adv[:, None]) \
        + 0.05 * kl_estimate(logps, ref, "k3")
    assert narrow.item() == pytest.approx(((per_token * mask).sum() / (6 * 48)).item(), abs=1e-7)
    with pytest.raises(ValueError, match="max_tokens"):
        grpo_loss(logps, old, ref, adv, mask, loss_type="dr_grpo")


def test_dapo_is_one_token_mean_over_the_rollout_batch_and_bnpo_one_per_micro_batch():
    """Accumulated over unequal micro-batches (4 + 2 rows): dapo equals the whole batch's token mean; bnpo is the
    row-weighted mean of each micro-batch's own token mean (TRL's bnpo), which is a different number."""
    logps, old, ref, adv, mask = random_batch(seed=1)
    parts = (torch.arange(0, 4), torch.arange(4, 6))
    per_token = -torch.min(torch.exp(logps - old) * adv[:, None],
                           torch.clamp(torch.exp(logps - old), 0.8, 1.2) * adv[:, None])  # beta 0
    by_hand = {"dapo": (per_token * mask).sum() / mask.sum(),
               "bnpo": sum((per_token[i] * mask[i]).sum() / mask[i].sum() * len(i) / 6 for i in parts)}
    for loss_type, expected in by_hand.items():
        acc = sum(grpo_loss(logps[i], old[i], None, adv[i], mask[i], loss_type=loss_type)[0]
                  * micro_batch_weight(loss_type, mask[i], mask) for i in parts)
        assert acc.item() == pytest.approx(expected.item(), abs=1e-6), loss_type
        g_acc = torch.autograd.grad(acc, logps)[0]
        g_ref = torch.autograd.grad(expected, logps, retain_graph=True)[0]
        torch.testing.assert_close(g_acc, g_ref, atol=1e-7, rtol=1e-6)
    assert abs(by_hand["dapo"].item() - by_hand["bnpo"].item()) > 1e-3


def test_bnpo_takes_micro_batches_in_rollout_order_as_trl_does():
    """Rows of 1, 5, 1, 5 tokens, advantages +1, -1, +1, -1, micro-batches of 2, on-policy (ratio 1). In rollout
    order (TRL) each micro-batch is rows (1 token, +1) and (5 tokens, -1): its token mean is (-1 + 5) / 6, so the
    loss is 0.667 and each token's gradient -1/12 or +1/12 (times the micro-batch weight 1/2: -/+0.0833). Sorted
    by length the micro-batches would be the two short rows and the two long ones: loss 0, gradients -0.25 and
    +0.05, a different objective. grpo.update asks micro_batches for rollout order when the loss type is bnpo."""
    lengths = torch.tensor([1, 5, 1, 5])
    mask = (torch.arange(5)[None, :] < lengths[:, None]).float()  # (4, 5)
    ro = Rollout(torch.ones(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.long), torch.zeros(4, 5,
                 dtype=torch.long), mask.long(), torch.zeros(4, 5), torch.ones(4, dtype=torch.bool), group_size=2)
    assert [i.tolist() for i in micro_batches(ro, 2, by_length=False)] == [[0, 1], [2, 3]]
    assert [i.tolist() for i in micro_batches(ro, 2)] == [[0, 2], [1, 3]]  # by length: only for order-free losses
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    for by_length, loss_value, grads in ((False, 2 / 3, (-1 / 12, 1 / 12)), (True, 0.0, (-0.25, 0.05))):
        logps = torch.zeros(4, 5, requires_grad=True)
        total = sum(grpo_loss(logps[i], logps[i].detach(), None, adv[i], mask[i], loss_type="bnpo")[0]
                    * micro_batch_weight("bnpo", mask[i], mask) for i in micro_batches(ro, 2, by_length))
        total.backward()
        assert total.item() == pytest.approx(loss_value, abs=1e-6)
        assert logps.grad[0, 0].item() == pytest.approx(grads[0], abs=1e-6)  # a short row's token (A = +1)
        assert logps.grad[1, 0].item() == pytest.approx(grads[1], abs=1e-6)  # a long row's token (A = -1)


@pytest.mark.parametrize("loss_type,by_length", [("bnpo", False), ("grpo", True), ("dapo", True)])
def test_grpo_update_asks_for_rollout_order_exactly_when_the_loss_is_bnpo(loss_type, by_length, monkeypatch):
    """The guard on the test above: grpo.update's micro-batches come in rollout order for bnpo (whose token mean
    per micro-batch depends on the grouping), by length for the others (the same gradient, less padding)."""
    import minipost.grpo as grpo
    from minipost.model import GPT, GPTConfig
    asked = []

    def recording(ro, size, by_length=True):
        asked.append(by_length)
        return micro_batches(ro, size, by_length)
    monkeypatch.setattr(grpo, "micro_batches", recording)

    class OneProcess:  # what update needs of the run harness, for one process
        def check(self, value, what): pass
        def sum(self, value): return value
        def optimizer_step(self, model, optimizer, clip):
            optimizer.step()
            optimizer.zero_grad()
            return torch.tensor(0.0)
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=1, n_embd=8))
    ids = torch.randint(0, 16, (4, 3))
    ro = Rollout(ids, torch.ones(4, 3, dtype=torch.long), ids, torch.ones(4, 3, dtype=torch.long), torch.zeros(4, 3),
                 torch.ones(4, dtype=torch.bool), group_size=2)
    cfg = grpo.Config(loss_type=loss_type, micro_batch_size=2, beta=0.0)
    grpo.update(policy, torch.optim.SGD(policy.parameters(), lr=0.1), ro, torch.zeros(4, 3),
                torch.tensor([1.0, -1.0, 1.0, -1.0]), cfg, OneProcess())
    assert asked == [by_length]


# ---------------------------------------------------------------------------------------------------------------
# clips: DAPO's clip-higher and GSPO's sequence ratio

def test_clip_higher_lets_the_ratio_rise_further_than_it_may_fall():
    # one row, advantage +1: ratios 1.25 and 1.4 are clipped at 1.2 symmetrically, at 1.28 with clip_eps_high 0.28
    old = torch.log(torch.tensor([[0.2, 0.2]]))
    new = old + torch.log(torch.tensor([[1.25, 1.4]]))
    mask, adv = torch.ones(1, 2), torch.ones(1)
    sym, info_sym = grpo_loss(new, old, None, adv, mask, clip_eps=0.2, loss_type="dapo")
    high, info_high = grpo_loss(new, old, None, adv, mask, clip_eps=0.2, loss_type="dapo", clip_eps_high=0.28)
    assert sym.item() == pytest.approx(-(1.2 + 1.2) / 2, abs=1e-6)
    assert high.item() == pytest.approx(-(1.25 + 1.28) / 2, abs=1e-6)
    assert info_sym["clip_frac"].item() == 1.0 and info_high["clip_frac"].item() == 0.5
    # below 1 the lower clip still acts: advantage -1, ratio 0.7 -> clipped at 0.8 either way
    low, _ = grpo_loss(old + torch.log(torch.tensor([[0.7, 1.0]])), old, None, -adv, mask, clip_eps=0.2,
                       loss_type="dapo", clip_eps_high=0.28)
    assert low.item() == pytest.approx((0.8 + 1.0) / 2, abs=1e-6)


def gspo_reference(logps, old, adv, mask, eps_low, eps_high):
    """GSPO (Zheng et al. 2025, eq. 5-7) written out row by row: s_i = (pi / pi_old)(o_i)^(1/|o_i|)."""
    losses = []
    for i in range(len(adv)):
        m = mask[i].bool()
        s = torch.exp((logps[i][m] - old[i][m]).sum() / m.sum())
        losses.append(-torch.min(s * adv[i], torch.clamp(s, 1 - eps_low, 1 + eps_high) * adv[i]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gspo_sequence_ratio_matches_the_paper_values_and_gradients(seed):
    logps, old, _, adv, mask = random_batch(seed=seed, spread=0.1)
    loss, info = grpo_loss(logps, old, None, adv, mask, clip_eps=0.05, loss_type="grpo", clip_eps_high=0.08,
                           importance_sampling_level="sequence")
    expected = gspo_reference(logps, old, adv, mask, 0.05, 0.08)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, logps)[0], torch.autograd.grad(expected, logps)[0],
                               atol=1e-7, rtol=1e-6)
    assert 0 < info["clip_frac"].item() < 1  # spread 0.1 puts some sequences outside [0.95, 1.08], not all


def test_gspo_ratio_is_one_and_its_gradient_is_grpos_on_the_first_step():
    """At pi = pi_old, s_i = 1 and d s_i = s_i * mean_t d log pi: the sequence-level gradient equals token-level
    GRPO's with the grpo loss type (each row's token mean)."""
    _, old, _, adv, mask = random_batch(seed=4)
    logps = old.clone().requires_grad_()
    seq, info = grpo_loss(logps, old, None, adv, mask, importance_sampling_level="sequence")
    tok, _ = grpo_loss(logps, old, None, adv, mask, importance_sampling_level="token")
    assert info["ratio"].item() == 1.0 and info["clip_frac"].item() == 0.0
    torch.testing.assert_close(torch.autograd.grad(seq, logps)[0], torch.autograd.grad(tok, logps)[0])


# ---------------------------------------------------------------------------------------------------------------
# the KL term's gradient, by Monte Carlo on a small categorical distribution

def test_each_kl_loss_has_the_gradient_its_docstring_states():
    """Sample 400k tokens from pi = softmax(theta) (V = 5), put each estimator in a loss, differentiate, and
    compare with the exact gradients of KL(pi || pi_ref) and KL(pi_ref || pi): k1 -> 0, k2 and k3_corrected ->
    reverse KL, k3 -> forward KL; and k3's *value* estimates the reverse KL."""
    theta = torch.tensor([1.0, 0.2, -0.5, 0.7, -1.2], requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([-1.5, 1.5, 0.8, -1.0, 0.3]), -1)
    logp_all = torch.log_softmax(theta, -1)
    p, q = logp_all.exp(), ref_logp.exp()
    reverse = (p * (logp_all - ref_logp)).sum()  # KL(pi || pi_ref)
    forward = (q * (ref_logp - logp_all)).sum()  # KL(pi_ref || pi)
    exact = {"reverse": torch.autograd.grad(reverse, theta, retain_graph=True)[0],
             "forward": torch.autograd.grad(forward, theta, retain_graph=True)[0], "zero": torch.zeros(5)}
    assert (exact["reverse"] - exact["forward"]).abs().max() > 0.15  # the test can tell them apart (MC error ~0.002)
    y = torch.multinomial(p.detach(), 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    target = {"k1": "zero", "k2": "reverse", "k3": "forward", "k3_corrected": "reverse"}
    assert set(target) == set(KL_LOSSES)
    for kind, which in target.items():
        logps = logp_all[y]
        term = kl_loss_term(logps, ref_logp[y], kind, old_logps=logps.detach())
        grad = torch.autograd.grad(term.mean(), theta, retain_graph=True)[0]
        torch.testing.assert_close(grad, exact[which], atol=0.01, rtol=0), (kind, grad, exact)
    logps = logp_all[y]  # at pi = pi_old, k3_corrected's per-sample gradient *is* k2's: -log r * grad log pi
    g_k2 = torch.autograd.grad(kl_loss_term(logps, ref_logp[y], "k2").sum(), theta, retain_graph=True)[0]
    g_k3c = torch.autograd.grad(kl_loss_term(logps, ref_logp[y], "k3_corrected", logps.detach()).sum(), theta,
                                retain_graph=True)[0]
    torch.testing.assert_close(g_k3c, g_k2)
    k3_value = kl_estimate(logp_all[y].detach(), ref_logp[y], "k3").mean()
    assert k3_value.item() == pytest.approx(reverse.item(), abs=0.01)
    with pytest.raises(ValueError, match="old_logps"):
        kl_loss_term(logp_all[y], ref_logp[y], "k3_corrected")
    with pytest.raises(ValueError, match="unknown kl_loss"):
        kl_loss_term(logp_all[y], ref_logp[y], "k4")


def test_grpo_loss_uses_the_chosen_kl_term():
    logps, old, ref, _, mask = random_batch(seed=5)
    zero = torch.zeros(len(mask))  # no advantage: only the KL term is left
    for kind in KL_LOSSES:
        loss, info = grpo_loss(logps, old, ref, zero, mask, beta=0.1, loss_type="dapo", kl_loss=kind)
        expected = 0.1 * (kl_loss_term(logps, ref, kind, old) * mask).sum() / mask.sum()
        assert loss.item() == pytest.approx(expected.item(), abs=1e-7), kind
        assert info["kl_ref"].item() == pytest.approx(((kl_estimate(logps, ref, "k3") * mask).sum()
                                                       / mask.sum()).item(), abs=1e-6)  # the logged estimate


# ---------------------------------------------------------------------------------------------------------------
# DAPO's overlong shaping and dynamic sampling's batch assembly

def test_overlong_penalty_by_hand():
    # budget 48, buffer 8: no penalty up to 40 tokens, then -1/8 per token, -1 at 48
    lengths = torch.tensor([10, 40, 41, 44, 48])
    torch.testing.assert_close(overlong_penalty(lengths, 48, 8), torch.tensor([0.0, 0.0, -0.125, -0.5, -1.0]))
    torch.testing.assert_close(overlong_penalty(lengths, 48, 0), torch.zeros(5))


def test_concatenated_rollouts_of_different_widths_score_like_their_parts():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    a = sample_completions(model, [[3, 4, 5, 6], [7]], group_size=2, max_new_tokens=9, temperature=1.0,
                           stop_token=2, generator=torch.Generator().manual_seed(1))
    b = sample_completions(model, [[5]], group_size=2, max_new_tokens=4, temperature=1.0, stop_token=2,
                           generator=torch.Generator().manual_seed(2))
    assert a.completion_ids.shape[1] != b.completion_ids.shape[1] or a.prompt_ids.shape[1] != b.prompt_ids.shape[1]
    extra_a, extra_b = torch.randn(len(a), a.completion_ids.shape[1]), torch.randn(len(b), b.completion_ids.shape[1])
    ro, extra, rewards = concat_rollouts([(a, extra_a, torch.zeros(len(a))), (b, extra_b, torch.ones(len(b)))], 0)
    assert len(ro) == 6 and rewards.tolist() == [0, 0, 0, 0, 1, 1]
    with torch.no_grad():
        joint = completion_logprobs(model, ro)
        for part, rows in ((a, slice(0, 4)), (b, slice(4, 6))):
            alone = completion_logprobs(model, part)
            torch.testing.assert_close(joint[rows, :alone.shape[1]], alone, atol=1e-5, rtol=1e-5)
            assert joint[rows, alone.shape[1]:].abs().sum() == 0
    torch.testing.assert_close(extra[:4, :extra_a.shape[1]], extra_a)
    torch.testing.assert_close(ro.logprobs[4:, :b.logprobs.shape[1]], b.logprobs)


# ---------------------------------------------------------------------------------------------------------------
# REINFORCE++ and multi-update RLOO

def test_reinforce_pp_advantages_by_hand():
    """Row 0: 2 tokens, score 1; row 1: 3 tokens, score 0; beta 0.5 and k1 = (log pi - log pi_ref) = 0.2 on every
    token: per-token rewards -0.1, the score added on the last one. Returns-to-go, then whitened over 5 tokens."""
    from minipost.reinforce import reinforce_pp_advantages

    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logps = torch.full((2, 3), -1.0)
    ref = logps - 0.2
    adv = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), logps, ref, mask, beta=0.5)
    returns = torch.tensor([0.8, 0.9, -0.3, -0.2, -0.1])  # row 0: -0.1 + 0.9, 0.9; row 1: -0.3, -0.2, -0.1
    expected = (returns - returns.mean()) / returns.var(unbiased=False).sqrt()
    torch.testing.assert_close(adv[mask.bool()], expected, atol=1e-5, rtol=0)
    assert adv[0, 2] == 0 and abs(adv[mask.bool()].mean()) < 1e-6


def test_reinforce_loss_with_per_token_advantages_and_the_clipped_ratio():
    from minipost.reinforce import reinforce_loss

    logps, old, ref, adv, mask = random_batch(seed=6)
    token_adv = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    loss, _ = reinforce_loss(logps, token_adv, mask)  # -1/B sum_i sum_t A_it log pi_it
    assert loss.item() == pytest.approx((-(token_adv * logps * mask).sum() / 6).item(), abs=1e-6)
    # later iterations: PPO's clipped surrogate, summed over tokens, mean over rows
    clipped, info = reinforce_loss(logps, adv, mask, old_logps=old, clip_eps=0.2)
    ratio = torch.exp(logps - old)
    surrogate = torch.min(ratio * adv[:, None], torch.clamp(ratio, 0.8, 1.2) * adv[:, None])
    assert clipped.item() == pytest.approx((-(surrogate * mask).sum() / 6).item(), abs=1e-6)
    assert 0 < info["clip_frac"].item() < 1
    # at rho = 1 (the first of several iterations) the gradient is plain REINFORCE's
    at_old = old.clone().requires_grad_()
    g_clip = torch.autograd.grad(reinforce_loss(at_old, adv, mask, old_logps=old)[0], at_old)[0]
    g_plain = torch.autograd.grad(reinforce_loss(at_old, adv, mask)[0], at_old)[0]
    torch.testing.assert_close(g_clip, g_plain)


@pytest.mark.parametrize("kind", KL_LOSSES)
def test_reinforce_loss_kl_terms(kind):
    from minipost.reinforce import reinforce_loss

    logps, _, ref, _, mask = random_batch(seed=7)
    loss, _ = reinforce_loss(logps, torch.zeros(6), mask, ref, beta=0.1, kl_loss=kind)
    expected = 0.1 * (kl_loss_term(logps, ref, kind, logps.detach()) * mask).sum() / 6
    assert loss.item() == pytest.approx(expected.item(), abs=1e-7)


def test_zero_spread_marks_groups_with_equal_rewards_and_groups_of_one():
    from minipost.rewards import zero_spread

    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert zero_spread(r, 2).tolist() == [True, False, True]
    assert zero_spread(r, 1).all()  # one sample: nothing to compare with, no NaN std warning either
