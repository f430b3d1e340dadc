"""REINFORCE with a baseline, and RLOO (REINFORCE Leave-One-Out).

REINFORCE (Williams 1992) moves the policy along the score-function gradient of the expected reward:

    grad J = E_{y ~ pi}[ A(x, y) * grad log pi(y | x) ],   log pi(y | x) = sum_t log pi(y_t | x, y_<t)
    loss   = - 1/B sum_i A_i * sum_t log pi(y_it)           (one on-policy step per batch: no ratio, no clip)

with the advantage A = r - b. Any baseline b that does not depend on the sample itself keeps the gradient
unbiased and cuts its variance (`--baseline`):
    none   b = 0
    mean   b = a running mean of past rewards (b <- m * b + (1 - m) * batch mean, b_0 = 0, updated *after*
           the batch is used, so b never depends on the samples it is subtracted from)
    rloo   b_i = mean of the other G - 1 rewards of the same prompt (Kool et al. 2019, "Buy 4 REINFORCE
           samples, get a baseline for free!"; Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740):
           A_i = r_i - 1/(G-1) sum_{j != i} r_j = G/(G-1) * (r_i - mean_j r_j)

    reinforce++  REINFORCE++ (Hu 2025, arXiv:2501.03262): per-token rewards (the KL penalty on every token,
           the score on the last), each token's return-to-go G_it = sum_{s >= t} r_is, and the baseline is the
           whole batch: A_it = (G_it - mean) / std over all the batch's tokens (no groups needed)

KL to the reference policy, weighted by beta, in one of two places (`--kl-in`):
    reward  r_i <- r_i - beta * sum_t (log pi(y_it) - log pi_ref(y_it))   (k1 per token, summed; as in RLOO's
            paper and InstructGPT; a constant to the gradient, so it shapes what counts as a good sample;
            with reinforce++ each token's share stays on its token, inside the return-to-go)
    loss    loss += beta * 1/B sum_i sum_t kl_it    (`--kl-loss`, k3 by default, differentiated as GRPO does;
            rl.kl_loss_term says which KL each estimator's gradient follows)

Several optimizer steps per batch (`--num-iterations`, multi-update RLOO as in PPO): after the first step the
samples are off-policy, so the term becomes PPO's clipped surrogate, summed over tokens like the rest:
    loss = - 1/B sum_i sum_t min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i),  rho = pi / pi_old
whose gradient at rho = 1 is exactly REINFORCE's. With one iteration (the default) there is no ratio at all.

What runs by default (the nano preset: `python -m minipost.reinforce` and `train(Config())` are the same run):
RLOO, 200 steps of 16 prompts x 8 answers from every domain, arithmetic listed twice, reward correct + 0.3
restate, lr 1e-4 decayed linearly to 0, beta 0.04 with the KL in the loss.

Deviations, all on purpose:
- the whole completion is one action (sequence-level REINFORCE), so the loss sums token log-probs; longer
  answers get proportionally bigger gradients, which is what the estimator says. On a mixed batch the short
  arithmetic answers (~13 tokens) so move less per step than SQL (~25). The default makes up for it
  with twice GRPO's lr, 1e-4, which also moves every other domain more (measured: docs/rl-variants.md,
  "RLOO's learning rate").
- the reward is a verifiable checker (rewards.py), not a reward model.
- the model stays in eval mode throughout (no dropout), like the other RL files.
- reinforce++ keeps this file's loss (sum over each sequence's tokens, mean over sequences) where the paper
  trains with PPO's clipped token mean; its KL goes in the reward only with `--kl-in reward`.

What the loop leaves out: torchrun, the run folder, resume, the log/eval/save cadence, the finite checks, the optimizer
step (gradient all-reduce, clip, step) and the outputs go through `run` (minipost/harness/run.py).

Run:  python -m minipost.reinforce --init runs/dpo/model.pt --out runs/rloo             (baseline rloo)
      python -m minipost.reinforce --init runs/dpo/model.pt --baseline mean --out runs/reinforce_mean
      python -m minipost.reinforce --init runs/dpo/model.pt --baseline reinforce++ --kl-in reward --out runs/rpp
      python -m minipost.reinforce --init runs/dpo/model.pt --num-iterations 2 --out runs/rloo_x2   (multi-update)
      python -m minipost.reinforce --out runs/rloo --resume true                 (continue from OUT/state.pt)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minipost.common import InputError, check_config, field
from minipost.data import per_domain
from minipost.harness import Run, main
from minipost.heldout import heldout_scores, write_samples
from minipost.logprobs import masked_mean, whiten
from minipost.checkpoints import model_checkpoint
from minipost.optim import adamw, linear_decay_lr, set_lr
from minipost.rewards import parse_reward, token_rewards, zero_spread
from minipost.rl import (KL_LOSSES, add_info, check_kl_flags, kl_estimate, kl_in_reward, kl_loss_term,
                         largest_weight)
from minipost.rollout import (RolloutConfig, completion_logprobs, load_policy_and_prompts, micro_batches,
                              next_prompts, sample_and_score)


@dataclass
class Config(RolloutConfig):
    """REINFORCE / RLOO: sequence-level policy gradient with a baseline, KL to the reference."""
    out: str = field("runs/rloo", "output folder: config.json, inputs.json, metrics.jsonl, state.pt, "
                                     "model.pt, samples.txt, summary.json")
    init: str = field("runs/dpo/model.pt", "model to start from (and the frozen reference): a model.pt, or hf:PATH")
    max_steps: int = field(200, "rollout batches (each followed by one optimizer step)", min=1)
    group_size: int = field(8, "samples per prompt (G); >= 2 for --baseline rloo", min=1)
    lr: float = field(1e-4, "Adam learning rate", gt=0)
    lr_decay: bool = field(True, "decay the learning rate linearly to 0 over max_steps, set once per rollout step; "
                                 "a run that max_seconds stops early ends above 0")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)", min=0)
    micro_batch_size: int = field(64, "rows per forward/backward (0: all rows); exact gradient accumulation, does "
                                      "not change the result beyond float rounding", min=0)
    baseline: str = field("rloo", "none, mean (running mean of rewards), rloo (leave-one-out in the group) or "
                                  "reinforce++ (per-token returns whitened over the batch)",
                          choices=["none", "mean", "rloo", "reinforce++"])
    mean_momentum: float = field(0.9, "momentum m of the running-mean baseline", min=0, max=1)
    beta: float = field(0.04, "weight of the KL to the reference (0: no KL)", min=0)
    kl_in: str = field("loss", "where the KL goes: reward (k1, subtracted from r) or loss (kl_loss, added to the "
                               "loss)", choices=["reward", "loss"])
    kl_loss: str = field("k3", "per-token KL term in the loss: k1, k2, k3 or k3_corrected (rl.kl_loss_term)",
                         choices=list(KL_LOSSES))
    num_iterations: int = field(1, "optimizer steps per rollout batch; > 1 uses the clipped ratio pi / pi_old",
                                min=1, max=100)
    clip_eps: float = field(0.2, "clip range of the ratio when num_iterations > 1", gt=0)
    eval_every: int = field(50, "steps between held-out evaluations (0: only at start and end)", min=0)

    def __post_init__(self):
        check_config(self)
        check_kl_flags(self)
        if self.baseline == "rloo" and self.group_size < 2:
            raise InputError(f"--group-size {self.group_size}: the leave-one-out baseline needs >= 2 samples per "
                             "prompt (or pass --baseline mean or none)")


PRESETS = {
    "nano": {},
    "small": dict(preset="small", prompts_per_step=32, max_new_tokens=64, lr=5e-6,
                  domains="arithmetic", oversample="", reward="correct:1", beta=0.0, kl_in="reward", eval_every=20),
}


# ----------------------------------------------------------------------------------------------------------------
# the objective: pure functions of tensors

def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A_i = r_i - mean of the other G - 1 rewards of its group = G/(G-1) * (r_i - group mean).

    rewards (B,) laid out group after group -> (B,). Each group's advantages sum to zero.
    """
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2 (a leave-one-out baseline needs another sample)")
    r = rewards.float().view(-1, group_size)  # (B/G, G)
    others = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # (B/G, G) mean of the other samples
    return (r - others).view(-1)  # (B,)


def reinforce_pp_advantages(scores, logps, ref_logps, mask, beta: float) -> torch.Tensor:
    """REINFORCE++'s advantages: per-token rewards (-beta * k1 on every token, the score on the last), the
    return-to-go G_t = sum_{s >= t} r_s, whitened over every completion token of the batch.

    scores (B,); logps (pi_old), ref_logps, mask (B, T) -> (B, T), 0 where mask is 0.
    """
    rewards = token_rewards(scores, logps, ref_logps, mask, beta)  # (B, T)
    returns = rewards.flip(1).cumsum(dim=1).flip(1) * mask  # (B, T) G_t, gamma = 1
    return whiten(returns, mask.float())


def reinforce_loss(logps, advantages, mask, ref_logps=None, beta: float = 0.0, *, old_logps=None,
                   clip_eps: float = 0.2, kl_loss: str = "k3") -> tuple[torch.Tensor, dict]:
    """- 1/B sum_i sum_t A_it * log pi(y_it)  [+ beta * 1/B sum_i sum_t kl_it] -> (scalar loss, info).

    logps (B, T) per-token log-probs (differentiable); advantages (B,) for a sequence (the same on each of its
    tokens) or (B, T) per token (REINFORCE++); mask (B, T); ref_logps (B, T) or None. With old_logps (B, T),
    the policy term is the clipped surrogate -1/B sum_i sum_t min(rho A, clip(rho) A), rho = pi / pi_old, for
    the later optimizer steps on one batch. kl_loss: rl.kl_loss_term's k1, k2, k3 or k3_corrected.
    info (detached scalars): loss; with ref_logps kl_ref (k3 of pi_theta vs pi_ref, mean over completion
    tokens); with old_logps ratio and clip_frac (token means).
    """
    mask = mask.float()  # (B, T)
    adv = advantages.detach() if advantages.dim() == 2 else advantages.detach()[:, None]  # (B, T) or (B, 1)
    if old_logps is None:  # on-policy: the score-function estimator itself
        per_token = -adv * logps  # (B, T)
    else:
        ratio = torch.exp(logps - old_logps)  # (B, T)
        per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)  # (B, T)
    if ref_logps is not None and beta != 0.0:
        old = logps.detach() if old_logps is None else old_logps  # k3_corrected's ratio: 1 on-policy
        per_token = per_token + beta * kl_loss_term(logps, ref_logps, kl_loss, old)
    loss = (per_token * mask).sum(dim=1).mean()  # a sum over each sequence's tokens, a mean over sequences
    with torch.no_grad():  # what to watch: how far from the reference (and from pi_old)
        info = {"loss": loss.detach()}
        if ref_logps is not None:
            info["kl_ref"] = masked_mean(kl_estimate(logps, ref_logps, "k3"), mask)
        if old_logps is not None:
            info["ratio"] = masked_mean(ratio, mask)
            info["clip_frac"] = masked_mean(((ratio - 1).abs() > clip_eps).float(), mask)
    return loss, info


# ----------------------------------------------------------------------------------------------------------------
# the loop, one phase per function: prompts -> sample and score -> advantages -> update

def baseline_advantages(rewards: torch.Tensor, cfg: Config, running_mean: float,
                        batch_mean=lambda r: r.mean().item()) -> tuple[torch.Tensor, float]:
    """A = r - b for the chosen baseline -> (advantages (B,), the running mean updated *after* this batch;
    `batch_mean` is the rewards' mean, over every process's rows under torchrun: Run.batch_mean)."""
    if cfg.baseline == "rloo":
        return rloo_advantages(rewards, cfg.group_size), running_mean
    if cfg.baseline == "reinforce++":
        raise ValueError("reinforce++ advantages are per token: use reinforce_pp_advantages")
    if cfg.baseline == "mean":
        updated = cfg.mean_momentum * running_mean + (1 - cfg.mean_momentum) * batch_mean(rewards)
        return rewards - running_mean, updated
    return rewards, running_mean


def update(policy, optimizer, batch_rollout, ref_logps, advantages, cfg: Config, run: Run) -> dict:
    """num_iterations optimizer steps on one rollout batch (the first on-policy, the later ones with the clipped
    ratio), each accumulated over micro-batches -> info, averaged over the batch's tokens (token metrics) or its
    optimizer steps (loss, grad_norm). Under torchrun the batch is this process's part: weights are shares of the
    whole batch, and gradients and info are summed over the processes."""
    mask = batch_rollout.completion_mask  # (B, T)
    rows, tokens = int(run.sum(mask.shape[0])), int(run.sum(mask.sum().item()))
    kl_beta = cfg.beta if cfg.kl_in == "loss" else 0.0
    old_logps = batch_rollout.logprobs if cfg.num_iterations > 1 else None  # pi_old, for the ratio
    totals = {}
    for _ in range(cfg.num_iterations):
        for idx in micro_batches(batch_rollout, cfg.micro_batch_size or len(batch_rollout)):
            logps, entropy = completion_logprobs(policy, batch_rollout.select(idx), cfg.temperature,
                                                 cfg.logprobs_impl, entropy=True)  # (b, T) each
            loss, info = reinforce_loss(logps, advantages[idx], mask[idx], ref_logps[idx], kl_beta,
                                        old_logps=None if old_logps is None else old_logps[idx],
                                        clip_eps=cfg.clip_eps, kl_loss=cfg.kl_loss)
            info["entropy"] = masked_mean(entropy, mask[idx])  # a metric, no gradient
            weight = len(idx) / rows  # a mean over sequences: weight each micro-batch by its rows
            run.check(loss, "loss")
            (loss * weight).backward()
            add_info(totals, info, weight / cfg.num_iterations, mask[idx].sum().item() / tokens / cfg.num_iterations)
        grad_norm = run.optimizer_step(policy, optimizer, cfg.grad_clip)
        totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm.item() / cfg.num_iterations
    run.check(largest_weight(policy), "the policy's largest |weight|")
    return {k: v if k == "grad_norm" else run.sum(v) for k, v in totals.items()}


def train(cfg: Config, reward_fn=None) -> dict:
    """Run the objective; `reward_fn(prompt, completion, record) -> float` replaces cfg.reward if given."""
    run = Run(cfg, f"reinforce ({cfg.baseline})")  # torchrun, threads, seeds, run folder: minipost/harness/run.py
    device, ranks = run.device, run.ranks
    run.shard(cfg.prompts_per_step, "--prompts-per-step")  # whole groups per process: checked before anything
    if cfg.baseline == "reinforce++" and ranks.world > 1:
        raise InputError("--baseline reinforce++ runs as one process only (its whitening over the batch is not "
                         "split yet)")

    # ---- inputs, every one checked before anything is written: the reward, the policy and its frozen copy
    # (the reference), the prompts
    reward_fn = reward_fn or parse_reward(cfg.reward)
    policy, ref, enc, ckpt, records, eval_records = load_policy_and_prompts(cfg, device, reward_fn)

    # ---- optimizer, random streams, data order; then the run folder (a resume restores all of them here)
    optimizer = adamw(policy, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99), device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # sampling
    order_gen = torch.Generator().manual_seed(cfg.seed)  # prompt order
    perm, pos = torch.randperm(len(records), generator=order_gen), 0
    run.start(model=policy, optimizer=optimizer, sample_generator=gen, order_generator=order_gen)
    perm, pos = run.resumed_value("perm", perm), run.resumed_value("pos", pos)
    running_mean = run.resumed_value("running_mean", 0.0)  # the "mean" baseline b
    start_scores = run.scores_at_start(lambda: heldout_scores(policy, enc, eval_records))
    end_scores = run.resumed_value("end_scores", start_scores)

    # ---- the loop: prompts, sample and score, advantages, update, log
    for step in run.steps():
        lr = set_lr(optimizer, linear_decay_lr(step, lr=cfg.lr, max_steps=cfg.max_steps) if cfg.lr_decay else cfg.lr)
        prompts, perm, pos = next_prompts(records, perm, pos, cfg.prompts_per_step, order_gen)
        batch_rollout, ref_logps, rewards, stats = sample_and_score(policy, ref, enc, prompts, reward_fn, cfg, gen,
                                                                    ranks)
        if cfg.baseline == "reinforce++":  # per token: the KL penalty stays on its token, whitened over the batch
            advantages = reinforce_pp_advantages(rewards, batch_rollout.logprobs, ref_logps,
                                                 batch_rollout.completion_mask,
                                                 cfg.beta if cfg.kl_in == "reward" else 0.0)  # (B, T)
        else:
            if cfg.beta and cfg.kl_in == "reward":  # k1 per token, summed over the sequence
                rewards = kl_in_reward(rewards, batch_rollout.logprobs, ref_logps, batch_rollout.completion_mask,
                                       cfg.beta)  # (B,)
            advantages, running_mean = baseline_advantages(rewards, cfg, running_mean, run.batch_mean)  # (B,)
        zero_std = run.mean(zero_spread(rewards, cfg.group_size).float().mean().item())
        info = update(policy, optimizer, batch_rollout, ref_logps, advantages, cfg, run)

        run.log(**stats, zero_std_frac=zero_std, baseline=running_mean, **info, lr=lr,
                steps_per_s=run.step / run.elapsed)
        if run.eval_due(cfg.eval_every):
            end_scores = heldout_scores(policy, enc, eval_records)
            run.log(run.step, **end_scores)
        run.end_step(perm=perm, pos=pos, running_mean=running_mean, start_scores=start_scores, end_scores=end_scores)

    # ---- the outputs: model.pt, samples.txt, summary.json
    summary = run.summary(start=start_scores, end=end_scores)
    if run.finish(model_checkpoint(policy, ckpt["tokenizer"], run.step), summary=summary,
                  samples=lambda path: write_samples(policy, enc, path, per_domain(eval_records, 4))):
        print(f"reinforce ({cfg.baseline}) done: {run.step} steps in {run.elapsed:.0f} s; held-out " +
              "  ".join(f"{k} {start_scores[k]:.3f} -> {end_scores[k]:.3f}" for k in end_scores if k in start_scores))
    return summary


if __name__ == "__main__":
    main(train, Config, PRESETS)
