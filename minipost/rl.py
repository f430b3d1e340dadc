"""The RL math the three RL files (reinforce.py, grpo.py, ppo.py) share: Schulman's KL estimators, the KL term a
loss differentiates, and the bookkeeping of a rollout batch's metrics over micro-batches.

    kl_estimate(logps, ref_logps, kind)     k1, k2, k3: per-token estimates of KL(pi || pi_ref) from samples of pi
    kl_loss_term(logps, ref_logps, kind)    the per-token term a loss adds times beta, and which KL its gradient follows
    add_info(totals, info, ...)             a micro-batch's metrics into the rollout batch's means
    largest_weight(model)                   max |w|: inf or NaN as soon as one weight is, checked after each update
    kl_in_reward(rewards, logps, ...)       r - beta * sum_t (log pi_old - log pi_ref): the KL as a reward penalty
    whiten_tokens(x, mask, ranks)           logprobs.whiten over the tokens of every torchrun rank's rows
    explained_variance(values, returns, ...) how much of the returns' variance a critic explains
"""
from __future__ import annotations

import torch

from minipost import dist
from minipost.common import InputError
from minipost.logprobs import whiten


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-sample estimates of KL(pi || pi_ref) from log-probs of tokens *sampled from pi* (Schulman 2020,
    "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html). With log r = ref_logps - logps:

        k1 = -log r                 unbiased, high variance, can be negative
        k2 = (log r)^2 / 2          biased, low variance, >= 0
        k3 = (r - 1) - log r        unbiased, low variance, >= 0   (GRPO's choice)

    Elementwise: returns the shape of `logps`; average over samples (tokens) for the estimate.
    """
    log_r = ref_logps - logps
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r ** 2
    if kind == "k3":
        return torch.expm1(log_r) - log_r  # expm1: exact near r = 1, where (r - 1) would lose digits
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


KL_LOSSES = ("k1", "k2", "k3", "k3_corrected")


def check_kl_flags(cfg) -> None:
    """--kl-loss chooses the KL term of the loss; with --kl-in reward there is none, so a choice would be ignored."""
    if cfg.kl_in == "reward" and cfg.kl_loss != "k3":
        raise InputError(f"--kl-loss {cfg.kl_loss}: used only with --kl-in loss (with --kl-in reward the KL is "
                         "the k1 estimate subtracted from the reward)")


def kl_loss_term(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k3",
                 old_logps: torch.Tensor | None = None) -> torch.Tensor:
    """The per-token KL term an RL loss adds (times beta) and *differentiates*, for tokens sampled from pi_old.

    What matters in a loss is the expected gradient, not the value, and it differs from what the names say
    (Tang & Munos 2025, "On a few pitfalls in KL divergence gradient estimation for RL", arXiv:2506.09477).
    With y ~ pi and log r = log pi_ref(y) - log pi(y), in expectation over the samples:

        k1            -log r                 gradient E[grad log pi] = 0: no pull toward pi_ref at all
        k2            (log r)^2 / 2          gradient E[-log r grad log pi] = grad KL(pi || pi_ref)  (reverse KL)
        k3            (r - 1) - log r        gradient E[(1 - r) grad log pi] = grad KL(pi_ref || pi)  (forward KL,
                                             GRPO's choice: its value estimates the reverse KL, its gradient not)
        k3_corrected  k3 * pi / pi_old       k3 times the importance ratio (DeepSeek-V3.2, TRL's
                                             use_bias_correction_kl): gradient grad KL(pi || pi_ref); at
                                             pi = pi_old each sample's gradient is exactly k2's

    KL in the *reward* instead (REINFORCE's and PPO's `kl_in reward`: -beta * k1 summed into the return, no
    gradient through it) is the score-function estimator of the reverse KL's gradient over whole sequences;
    these per-token terms see only the token's own KL, not its effect on later tokens (Tang & Munos, section 4).
    logps, ref_logps, old_logps (k3_corrected only): (B, T) -> (B, T).
    """
    if kind == "k3_corrected":
        if old_logps is None:
            raise ValueError("kl_loss k3_corrected needs old_logps (the importance ratio pi / pi_old)")
        return kl_estimate(logps, ref_logps, "k3") * torch.exp(logps - old_logps)
    if kind not in KL_LOSSES:
        raise ValueError(f"unknown kl_loss {kind!r}; use one of {', '.join(KL_LOSSES)}")
    return kl_estimate(logps, ref_logps, kind)


def kl_in_reward(rewards, logps, ref_logps, mask, beta: float) -> torch.Tensor:
    """Each completion's reward minus beta times its k1 KL to the reference, summed over its tokens (`--kl-in
    reward`): rewards (B,), logps / ref_logps / mask (B, T) -> (B,). A constant to the gradient: the policy
    feels the KL through the advantages, as in InstructGPT's reward."""
    return rewards - beta * ((logps - ref_logps) * mask).sum(dim=1)


def add_info(totals: dict, info: dict, loss_weight: float, token_weight: float) -> None:
    """Accumulate one micro-batch's info into the rollout batch's: the losses with the weight their gradient got,
    the per-token metrics with the micro-batch's share of the tokens. Both weights already divide by the number
    of optimizer steps (losses) or passes (tokens) made on the batch, so `totals` ends as the mean."""
    for name, value in info.items():
        totals[name] = totals.get(name, 0.0) + value.item() * (loss_weight if name.endswith("loss") else token_weight)


def largest_weight(model) -> torch.Tensor:
    """max |w| over every parameter: inf or NaN as soon as one weight is (checked after each update, before the
    next rollout samples from broken weights)."""
    return torch.stack([p.detach().abs().max() for p in model.parameters()]).max()


def explained_variance(values, returns, mask, ranks: dist.Ranks = dist.Ranks()) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens (of every rank's rows): 1 = perfect critic, 0 = no better
    than a constant."""
    m = mask.bool()
    r, v = returns[m], values[m]
    if ranks.world > 1:
        r, v = (torch.tensor(dist.all_gather_lists(t.tolist(), ranks)) for t in (r, v))
    return (1 - (r - v).var() / r.var().clamp(min=1e-8)).item()


def whiten_tokens(x, mask, ranks: dist.Ranks = dist.Ranks()):
    """logprobs.whiten over the masked tokens of every rank's rows (torchrun: their values gathered)."""
    if ranks.world == 1:
        return whiten(x, mask)
    values = torch.tensor(dist.all_gather_lists(x[mask.bool()].tolist(), ranks), device=x.device)
    return (x - values.mean()) * torch.rsqrt(values.var(unbiased=False) + 1e-8) * mask
