"""PPO for language models: a learned critic, per-token rewards with a KL penalty, GAE, clipped updates.

Schulman et al. 2017 ("Proximal Policy Optimization", arXiv:1707.06347) as applied to LMs by Ziegler et al.
2019 (arXiv:1909.08593) and InstructGPT (Ouyang et al. 2022, arXiv:2203.02155). Each completion is an
episode whose actions are its tokens; the state before token t is (x, y_<t).

    per-token reward   r_t = -beta * (log pi_old(y_t) - log pi_ref(y_t))      (k1 KL penalty, every token)
                           + score(x, y) at the last token                     (the checker, rewards.py)
    GAE                delta_t = r_t + gamma V(s_t+1) - V(s_t),   A_t = sum_l (gamma lam)^l delta_t+l
                       returns R_t = A_t + V(s_t);  A whitened over the batch's tokens
    policy loss        mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)),  rho_t = pi / pi_old
    value loss         1/2 mean_t max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -eps_v, eps_v) - R_t)^2)

The KL can go in the loss instead (`--kl-in loss --kl-loss k1|k2|k3|k3_corrected`, rl.kl_loss_term),
which is what GRPO does; in the reward it is the sequence-level estimator of the reverse KL's gradient.

Each rollout batch is reused for `ppo_epochs` passes of `num_minibatches` optimizer steps. A completion that
never emits <|end|> loses `missing_stop_penalty` from its score (InstructGPT-style), so the policy cannot
"win" by rambling until it is cut off.

The critic is a *separate copy* of the starting policy with a fresh value head (a linear layer on its final
hidden state), not a head on the policy itself: with a shared trunk, the value loss (whose scale has nothing
to do with the policy's) pushes the policy's features around, and the two need different learning rates
(the value head starts from scratch). The copy doubles memory and compute, which is cheap at nano size; it
is what InstructGPT and TRL's PPO trainer do. The saved model.pt is the policy alone, so load_model reads it
like any other stage.

What runs by default (the nano preset: `python -m minipost.ppo` and `train(Config())` are the same run):
200 steps of 16 prompts x 8 answers from every domain, arithmetic listed twice, reward correct + 0.3 restate,
lr 5e-5 decayed linearly to 0 (critic 1e-4, constant), beta 0.02, one pass of 2 minibatch steps per batch.

Deviations, all on purpose:
- gamma = 1 (the only reward that matters is at the end) and lam = 1, where TRL uses 0.95: with one score at
  the end, lam = 1 makes A_t = (rewards still to come) - V(s_t), unbiased however wrong the critic is, and
  the critic starts as an untrained head (measured: docs/rl-variants.md, "PPO's lambda").
- the reward is a verifiable checker (rewards.py), not a learned reward model.
- the model stays in eval mode throughout (no dropout), like the other RL files.
- where the score sits: on the last completion token (the <|end|> when the row stopped), and the value loss
  covers exactly the completion tokens. TRL's PPOTrainer adds the score one index later (sequence_length + 1,
  when that index exists) and its value mask keeps that one extra position.
- `group_size` samples per prompt, as in the GRPO and RLOO files, so the three spend the same compute;
  PPO itself does not need groups (its baseline is the critic).

What the loop leaves out: torchrun, the run folder, resume, the log/eval/save cadence, the finite checks, the optimizer
step (gradient all-reduce, clip, step) and the outputs go through `run` (minipost/harness/run.py).

Run:  python -m minipost.ppo --init runs/dpo/model.pt --out runs/ppo
      python -m minipost.ppo --out runs/ppo --resume true                        (continue from OUT/state.pt)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minipost import dist
from minipost.common import InputError, check_config, field
from minipost.data import per_domain
from minipost.harness import Run, main
from minipost.heldout import heldout_scores, write_samples
from minipost.logprobs import masked_mean
from minipost.checkpoints import load_model, model_checkpoint
from minipost.optim import adamw, linear_decay_lr, set_lr
from minipost.rewards import parse_reward, token_rewards, zero_spread
from minipost.rl import (KL_LOSSES, add_info, check_kl_flags, explained_variance, kl_estimate, kl_loss_term,
                         largest_weight, whiten_tokens)
from minipost.rollout import (RolloutConfig, completion_logprobs, completion_values, load_policy_and_prompts,
                              micro_batches, minibatches, next_prompts, sample_and_score)


@dataclass
class Config(RolloutConfig):
    """PPO: critic, per-token KL-penalised rewards, GAE, clipped policy and value losses."""
    out: str = field("runs/ppo", "output folder: config.json, inputs.json, metrics.jsonl, state.pt, "
                                     "model.pt, samples.txt, summary.json")
    init: str = field("runs/dpo/model.pt", "model to start from (and the frozen reference): a model.pt, or hf:PATH")
    missing_stop_penalty: float = field(1.0, "subtracted from the reward of a completion without <|end|>", min=0)
    max_steps: int = field(200, "rollout batches (each: ppo_epochs * num_minibatches optimizer steps)", min=1)
    group_size: int = field(8, "samples per prompt (G)", min=1)
    lr: float = field(5e-5, "Adam learning rate", gt=0)
    lr_decay: bool = field(True, "decay the learning rate linearly to 0 over max_steps (the critic's stays constant)")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)", min=0)
    micro_batch_size: int = field(64, "rows per forward/backward in a minibatch (0: all); exact accumulation", min=0)
    ppo_epochs: int = field(1, "passes over each rollout batch", min=1, max=100)
    num_minibatches: int = field(2, "optimizer steps per pass (unlike micro_batch_size, this changes the result)",
                                 min=1)
    clip_eps: float = field(0.2, "clip range for the policy ratio", gt=0)
    beta: float = field(0.02, "weight of the KL to the reference (per-token k1 in the reward by default)", min=0)
    kl_in: str = field("reward", "the KL in the reward (k1 on every token, PPO's usual place) or in the loss",
                       choices=["reward", "loss"])
    kl_loss: str = field("k3", "per-token KL term when kl_in is loss (rl.kl_loss_term)", choices=list(KL_LOSSES))
    gamma: float = field(1.0, "discount", min=0, max=1)
    lam: float = field(1.0, "GAE lambda (1: Monte Carlo advantages; < 1 trusts the critic more)", min=0, max=1)
    critic_lr: float = field(1e-4, "Adam learning rate of the critic", gt=0)
    vf_coef: float = field(0.5, "weight of the value loss", min=0)
    clip_value: float = field(0.2, "clip range for value updates around the old values", gt=0)
    eval_every: int = field(50, "steps between held-out evaluations (0: only at start and end)", min=0)

    def __post_init__(self):
        check_config(self)
        check_kl_flags(self)
        if self.num_minibatches > self.prompts_per_step * self.group_size:
            raise InputError(f"--num-minibatches {self.num_minibatches}: more than the "
                             f"{self.prompts_per_step * self.group_size} rows of a rollout batch")


PRESETS = {
    "nano": {},
    "small": dict(preset="small", prompts_per_step=32, max_new_tokens=64, lr=5e-6, ppo_epochs=2,
                  domains="arithmetic", oversample="", reward="correct:1", eval_every=20),
}


# ----------------------------------------------------------------------------------------------------------------
# the objective: pure functions of tensors

def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 1.0):
    """Generalised Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438) -> (advantages, returns).

    rewards, values, mask: (B, T), mask 1 on a prefix of each row (the completion); the episode ends after the
    last masked token, so V(s_T) = 0 there. Returns (B, T) advantages and returns R = A + V, 0 where mask is 0.
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
    """
    mask = mask.float()  # (B, T)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards, dtype=torch.float32)  # (B, T)
    next_adv = torch.zeros(B, dtype=torch.float32, device=rewards.device)  # (B,) A_{t+1}
    next_value = torch.zeros(B, dtype=torch.float32, device=rewards.device)  # (B,) V_{t+1}
    for t in reversed(range(T)):
        alive = mask[:, t + 1] if t + 1 < T else torch.zeros_like(next_adv)  # (B,) is there a step t+1?
        delta = rewards[:, t] + gamma * next_value * alive - values[:, t]  # (B,)
        next_adv = (delta + gamma * lam * next_adv * alive) * mask[:, t]  # (B,) A_t
        advantages[:, t] = next_adv
        next_value = values[:, t]
    returns = (advantages + values) * mask  # (B, T)
    return advantages, returns


def ppo_policy_loss(logps, old_logps, advantages, mask, clip_eps: float = 0.2,
                    ref_logps=None, *, beta: float = 0.0, kl_loss: str = "k3") -> tuple[torch.Tensor, dict]:
    """Clipped surrogate, token mean over the batch [+ beta * token mean of a KL term] -> (scalar loss, info).

    logps, old_logps, advantages, mask: (B, T); ref_logps (B, T) or None: the kl_ref metric, and with beta > 0
    the KL term kl_loss (rl.kl_loss_term) in the loss, for `--kl-in loss`; PPO's usual place for the KL is
    the reward (token_rewards), where beta here stays 0. info (detached scalars; the token metrics are means over
    this batch's completion tokens): policy_loss, clip_frac (ratio outside [1 - clip_eps, 1 + clip_eps]), ratio,
    approx_kl (k3 of pi_old vs pi_theta), kl_ref (k3 of pi_theta vs pi_ref, when ref_logps is given).
    """
    mask = mask.float()  # (B, T)
    ratio = torch.exp(logps - old_logps)  # (B, T) rho
    loss = masked_mean(torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)),
                       mask)
    if beta != 0.0:
        loss = loss + beta * masked_mean(kl_loss_term(logps, ref_logps, kl_loss, old_logps), mask)
    with torch.no_grad():  # what to watch: how often the clip acts, how far from pi_old and from the reference
        info = {"policy_loss": loss.detach(), "clip_frac": masked_mean(((ratio - 1).abs() > clip_eps).float(), mask),
                "ratio": masked_mean(ratio, mask), "approx_kl": masked_mean(kl_estimate(old_logps, logps, "k3"), mask)}
        if ref_logps is not None:
            info["kl_ref"] = masked_mean(kl_estimate(logps, ref_logps, "k3"), mask)
    return loss, info


def ppo_value_loss(values, old_values, returns, mask, clip_value: float = 0.2) -> tuple[torch.Tensor, dict]:
    """1/2 token mean of max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old). (B, T) ->
    (scalar loss, info: value_loss)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)  # (B, T)
    loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask.float())
    return loss, {"value_loss": loss.detach()}


# ----------------------------------------------------------------------------------------------------------------
# the loop, one phase per function: prompts -> sample and score -> advantages -> update

def ppo_advantages(critic, batch_rollout, scores, ref_logps, cfg: Config, ranks: dist.Ranks = dist.Ranks()):
    """The critic's values of the sampled states, per-token rewards, GAE -> (whitened advantages, returns,
    old values), each (B, T); whitened over every rank's tokens."""
    mask = batch_rollout.completion_mask  # (B, T)
    with torch.no_grad():
        old_values = completion_values(critic, batch_rollout)  # (B, T)
    rewards = token_rewards(scores, batch_rollout.logprobs, ref_logps, mask,
                            cfg.beta if cfg.kl_in == "reward" else 0.0)  # (B, T)
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (B, T) each
    return whiten_tokens(advantages, mask, ranks), returns, old_values


def update(policy, critic, optimizer, critic_optimizer, batch_rollout, ref_logps, advantages, returns, old_values,
           cfg: Config, order_gen: torch.Generator, run: Run) -> dict:
    """ppo_epochs passes over one rollout batch, each num_minibatches optimizer steps of policy and critic
    together, each accumulated over micro-batches -> info, averaged over the batch's tokens and passes (token
    metrics) or its optimizer steps (losses, grad_norm). Under torchrun the batch is this rank's part of the
    whole one: every rank shuffles the whole batch into the same minibatches and works on its own rows of each;
    weights are token shares of the whole minibatch, and gradients and info are summed over the ranks."""
    mask, old_logps = batch_rollout.completion_mask, batch_rollout.logprobs  # (B, T) each
    all_tokens = int(run.sum(mask.sum().item()))  # of the whole batch, every rank's rows
    totals = {}
    for _ in range(cfg.ppo_epochs):
        parts = minibatches(batch_rollout, cfg.num_minibatches, order_gen, run.ranks)  # a fresh shuffle each pass
        n_steps = cfg.ppo_epochs * len(parts)  # optimizer steps on this batch
        for minibatch, mb_tokens in parts:  # this rank's rows of the minibatch, the whole minibatch's tokens
            mb_rollout = batch_rollout.select(minibatch)
            for part in (micro_batches(mb_rollout, cfg.micro_batch_size or len(minibatch)) if len(minibatch) else []):
                idx = minibatch[part]  # rows of the rollout batch
                sub = mb_rollout.select(part)
                logps, entropy = completion_logprobs(policy, sub, cfg.temperature, cfg.logprobs_impl,
                                                     entropy=True)  # (b, T) each
                values = completion_values(critic, sub)  # (b, T)
                policy_loss, policy_info = ppo_policy_loss(logps, old_logps[idx], advantages[idx], mask[idx],
                                                           cfg.clip_eps, ref_logps[idx], kl_loss=cfg.kl_loss,
                                                           beta=cfg.beta if cfg.kl_in == "loss" else 0.0)
                value_loss, value_info = ppo_value_loss(values, old_values[idx], returns[idx], mask[idx],
                                                        cfg.clip_value)
                loss = policy_loss + cfg.vf_coef * value_loss  # two separate models: each gets its own term's gradient
                info = {"loss": loss.detach(), **policy_info, **value_info,
                        "entropy": masked_mean(entropy, mask[idx])}  # a metric, no gradient
                weight = mask[idx].sum().item() / mb_tokens  # token means: token share
                run.check(loss, "loss")
                (loss * weight).backward()
                add_info(totals, info, weight / n_steps, mask[idx].sum().item() / all_tokens / cfg.ppo_epochs)
            grad_norm = run.optimizer_step(policy, optimizer, cfg.grad_clip)  # (the policy's norm is the one logged)
            run.optimizer_step(critic, critic_optimizer, cfg.grad_clip)
            totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm.item() / n_steps
    run.check(largest_weight(policy), "the policy's largest |weight|")
    run.check(largest_weight(critic), "the critic's largest |weight|")
    return {k: v if k == "grad_norm" else run.sum(v) for k, v in totals.items()}


def train(cfg: Config, reward_fn=None) -> dict:
    """Run the objective; `reward_fn(prompt, completion, record) -> float` replaces cfg.reward if given."""
    run = Run(cfg, "ppo")  # torchrun ranks, CPU threads, seeds, the run folder: minipost/harness/run.py
    device, ranks = run.device, run.ranks
    run.shard(cfg.prompts_per_step, "--prompts-per-step")  # whole groups per process: checked before anything

    # ---- inputs, every one checked before anything is written: the reward, the policy and its frozen copy
    # (the reference), the prompts
    reward_fn = reward_fn or parse_reward(cfg.reward)
    policy, ref, enc, ckpt, records, eval_records = load_policy_and_prompts(cfg, device, reward_fn)
    critic, _, _ = load_model(cfg.init, device, value_head=True)  # a copy of the policy + a fresh value head

    # ---- optimizer, random streams, data order; then the run folder (a resume restores all of them here)
    optimizer = adamw(policy, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99), device=device)
    critic_optimizer = adamw(critic, lr=cfg.critic_lr, weight_decay=0.0, betas=(0.9, 0.99), device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # sampling
    order_gen = torch.Generator().manual_seed(cfg.seed)  # prompt order, then each batch's minibatch shuffles
    perm, pos = torch.randperm(len(records), generator=order_gen), 0
    run.start(model=policy, optimizer=optimizer, critic=critic, critic_optimizer=critic_optimizer,
              sample_generator=gen, order_generator=order_gen)
    perm, pos = run.resumed_value("perm", perm), run.resumed_value("pos", pos)
    start_scores = run.scores_at_start(lambda: heldout_scores(policy, enc, eval_records))
    end_scores = run.resumed_value("end_scores", start_scores)

    # ---- the loop: prompts, sample and score, advantages, update, log
    for step in run.steps():
        lr = set_lr(optimizer, linear_decay_lr(step, lr=cfg.lr, max_steps=cfg.max_steps) if cfg.lr_decay else cfg.lr)
        prompts, perm, pos = next_prompts(records, perm, pos, cfg.prompts_per_step, order_gen)
        batch_rollout, ref_logps, scores, stats = sample_and_score(policy, ref, enc, prompts, reward_fn, cfg, gen,
                                                                   ranks)
        advantages, returns, old_values = ppo_advantages(critic, batch_rollout, scores, ref_logps, cfg,
                                                         ranks)  # (B, T) x3
        zero_std = run.mean(zero_spread(scores, cfg.group_size).float().mean().item())
        explained_var = explained_variance(old_values, returns, batch_rollout.completion_mask, ranks)
        info = update(policy, critic, optimizer, critic_optimizer, batch_rollout, ref_logps, advantages, returns,
                      old_values, cfg, order_gen, run)

        run.log(**stats, zero_std_frac=zero_std, **info, explained_var=explained_var, lr=lr,
                steps_per_s=run.step / run.elapsed)
        if run.eval_due(cfg.eval_every):
            end_scores = heldout_scores(policy, enc, eval_records)
            run.log(run.step, **end_scores)
        run.end_step(perm=perm, pos=pos, start_scores=start_scores, end_scores=end_scores)

    # ---- the outputs: model.pt, samples.txt, summary.json
    summary = run.summary(start=start_scores, end=end_scores)
    if run.finish(model_checkpoint(policy, ckpt["tokenizer"], run.step), summary=summary,
                  samples=lambda path: write_samples(policy, enc, path, per_domain(eval_records, 4))):
        print(f"ppo done: {run.step} steps in {run.elapsed:.0f} s; held-out " +
              "  ".join(f"{k} {start_scores[k]:.3f} -> {end_scores[k]:.3f}" for k in end_scores if k in start_scores))
    return summary


if __name__ == "__main__":
    main(train, Config, PRESETS)
