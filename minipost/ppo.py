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

Each rollout batch is reused for `ppo_epochs` passes of `num_minibatches` optimizer steps. A completion that
never emits <|end|> loses `missing_stop_penalty` from its score (InstructGPT-style), so the policy cannot
"win" by rambling until it is cut off.

The critic is a *separate copy* of the starting policy with a fresh value head (a linear layer on its final
hidden state), not a head on the policy itself: with a shared trunk, the value loss (whose scale has nothing
to do with the policy's) pushes the policy's features around, and the two need different learning rates
(the value head starts from scratch). The copy doubles memory and compute, which is cheap at nano size; it
is what InstructGPT and TRL's PPO trainer do. The saved model.pt is the policy alone, so load_model reads it
like any other stage.

Deviations, all on purpose:
- gamma = 1 (the only reward that matters is at the end) and lam = 1, where TRL uses 0.95: with one score at
  the end, lam = 1 makes A_t = (rewards still to come) - V(s_t), unbiased however wrong the critic is, and
  the critic starts as an untrained head. Measured (nano, DPO start, arithmetic:2, 200 steps): arithmetic 34 -> 45
  with lam 1, 34 -> 39 with lam 0.95. The critic's bootstrapping pays off on long episodes, not 15 tokens.
- the reward is a verifiable checker (rewards.py), not a learned reward model.
- the model stays in eval mode throughout (no dropout), like the other RL files.
- `group_size` samples per prompt, as in the GRPO and RLOO files, so the three spend the same compute;
  PPO itself does not need groups (its baseline is the critic).

Run:  python -m minipost.ppo --init runs/dpo/model.pt --out runs/ppo
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from minipost.common import (DATA_DIR, MetricsLogger, check_finite, field, kl_estimate, parse_config, pick_device,
                             save_checkpoint, save_json, seed_everything)
from minipost.model import load_model, model_checkpoint
from minipost.rewards import parse_reward, score_rollout
from minipost.rollout import completion_logprobs, heldout_scores, load_prompts, per_domain, rollout, write_samples


@dataclass
class Config:
    """PPO: critic, per-token KL-penalised rewards, GAE, clipped policy and value losses."""
    preset: str = field("nano", "nano (laptop CPU) or small (one GPU)", choices=["nano", "small"])
    out: str = field("runs/ppo", "output folder: config.json, metrics.jsonl, model.pt, samples.txt")
    init: str = field("runs/dpo/model.pt", "checkpoint to start from (and the frozen reference)")
    data: str = field("", "RL prompts, JSONL with prompt, domain and checker fields (default: the world's rl.jsonl)")
    eval_data: str = field("", "held-out prompts in the same form (default: the world's eval.jsonl)")
    domains: str = field("arithmetic", "comma-separated domains to train on (empty: all)")
    oversample: str = field("", "domain:k,... repeats that domain's prompts k times (e.g. arithmetic:2)")
    reward: str = field("correct:1", "reward terms name:weight, see rewards.py (correct, answer, sql, tool, restate, "
                                     "format)")
    missing_stop_penalty: float = field(1.0, "subtracted from the reward of a completion without <|end|>")
    length_penalty: float = field(0.0, "subtracted times completion length / max_new_tokens")
    max_steps: int = field(100, "rollout batches (each followed by ppo_epochs * num_minibatches optimizer steps)")
    max_seconds: float = field(0.0, "stop after this many seconds (0: no limit); the nano preset caps a run at 230 s "
                                     "so the pipeline fits its budget on a busy CPU, which makes the step count "
                                     "machine-dependent (set 0 for exactly repeatable runs)")
    prompts_per_step: int = field(16, "prompts per rollout batch")
    group_size: int = field(8, "samples per prompt (G)")
    max_new_tokens: int = field(48, "longest completion")
    temperature: float = field(1.0, "sampling temperature (the log-probs use the same one)")
    top_k: int = field(0, "sample from the k most likely tokens only (0: off)")
    top_p: float = field(1.0, "nucleus sampling mass (1: off)")
    lr: float = field(3e-5, "Adam learning rate")
    lr_decay: bool = field(True, "decay the learning rate linearly to 0 over max_steps, set once per rollout step; "
                                 "a run that max_seconds stops early ends above 0 (the critic's stays constant)")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)")
    ppo_epochs: int = field(1, "passes over each rollout batch")
    num_minibatches: int = field(2, "optimizer steps per pass (the batch split into this many minibatches)")
    clip_eps: float = field(0.2, "clip range for the policy ratio")
    beta: float = field(0.02, "weight of the per-token k1 KL penalty in the reward")
    gamma: float = field(1.0, "discount")
    lam: float = field(1.0, "GAE lambda (1: Monte Carlo advantages; < 1 trusts the critic more)")
    critic_lr: float = field(1e-4, "Adam learning rate of the critic")
    vf_coef: float = field(0.5, "weight of the value loss")
    clip_value: float = field(0.2, "clip range for value updates around the old values")
    eval_every: int = field(20, "steps between held-out evaluations (0: only at start and end)")
    eval_limit: int = field(100, "held-out prompts per domain for those evaluations (0: all)")
    log_every: int = field(1, "steps between metrics.jsonl rows")
    logprobs_impl: str = field("auto", "token_logprobs implementation",
                               choices=["auto", "reference", "chunked", "triton"])
    seed: int = field(1337, "random seed (prompt order, sampling)")
    device: str = field("auto", "cuda, mps, cpu or auto")
    progress: bool = field(True, "show a tqdm progress bar")


PRESETS = {
    "nano": dict(preset="nano", max_steps=200, max_seconds=230, prompts_per_step=16, group_size=8, max_new_tokens=48,
                 lr=5e-5, domains="", oversample="arithmetic:2", reward="correct:1,restate:0.3",
                 eval_every=50),
    "small": dict(preset="small", max_steps=200, prompts_per_step=32, group_size=8, max_new_tokens=64, lr=5e-6,
                  ppo_epochs=2),
}


# ----------------------------------------------------------------------------------------------------------------
# the objective: pure functions of tensors

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 -> scalar."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (biased std); 0 elsewhere. x, mask (B, T) -> (B, T)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def token_rewards(scores, logps, ref_logps, mask, beta: float) -> torch.Tensor:
    """Per-token reward: -beta * (log pi - log pi_ref) on every token, plus the score at each row's last token.

    scores (B,), logps / ref_logps / mask (B, T) -> (B, T), 0 where mask is 0.
    """
    mask = mask.float()  # (B, T)
    rewards = -beta * (logps - ref_logps) * mask  # (B, T) k1 KL penalty
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last completion token
    return rewards.scatter_add(1, last[:, None], scores.float()[:, None] * (mask.sum(dim=1, keepdim=True) > 0))


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


def ppo_policy_loss(logps, old_logps, advantages, mask, clip_eps: float = 0.2):
    """Clipped surrogate, token mean over the batch -> (loss, clip fraction, approx KL(pi_old || pi), k3).

    logps, old_logps, advantages, mask: (B, T).
    """
    mask = mask.float()  # (B, T)
    ratio = torch.exp(logps - old_logps)  # (B, T)
    loss = masked_mean(torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)),
                       mask)
    with torch.no_grad():
        clip_frac = masked_mean(((ratio - 1).abs() > clip_eps).float(), mask)
        approx_kl = masked_mean(kl_estimate(old_logps, logps, "k3"), mask)  # samples come from pi_old
    return loss, clip_frac, approx_kl


def ppo_value_loss(values, old_values, returns, mask, clip_value: float = 0.2) -> torch.Tensor:
    """1/2 token mean of max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old). (B, T) -> scalar."""
    clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)  # (B, T)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask.float())


def explained_variance(values, returns, mask) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 = perfect critic, 0 = no better than a constant."""
    m = mask.bool()
    r, v = returns[m], values[m]
    return (1 - (r - v).var() / r.var().clamp(min=1e-8)).item()


def completion_values(critic, ro) -> torch.Tensor:
    """The critic's V(s_t) for the state before each completion token -> (B, T), 0 where the mask is 0."""
    _, hidden = completion_logprobs(critic, ro, return_hidden=True)  # (B, T, C)
    return critic.values(hidden) * ro.completion_mask  # (B, T)


# ----------------------------------------------------------------------------------------------------------------
# the loop

def train(cfg: Config, reward_fn=None) -> dict:
    """Run the objective; `reward_fn(prompt, completion, record) -> float` replaces cfg.reward if given."""
    from minipost.world import build as build_world

    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", asdict(cfg))
    seed_everything(cfg.seed)

    # ---- data: prompts with checkers, and held-out prompts of the same domains
    if not (cfg.data and cfg.eval_data) and not (DATA_DIR / "rl.jsonl").exists():
        build_world(DATA_DIR)
    records = load_prompts(cfg.data or DATA_DIR / "rl.jsonl", cfg.domains, cfg.oversample)
    eval_records = per_domain(load_prompts(cfg.eval_data or DATA_DIR / "eval.jsonl", cfg.domains), cfg.eval_limit)
    reward_fn = reward_fn or parse_reward(cfg.reward)
    print(f"{len(records)} RL prompts, {len(eval_records)} held-out prompts, domains: {cfg.domains or 'all'}")

    # ---- models: the policy we train, a frozen copy of the start (the reference), the critic
    policy, enc, ckpt = load_model(cfg.init, device)
    ref, _, _ = load_model(cfg.init, device)
    ref.requires_grad_(False)
    critic, _, _ = load_model(cfg.init, device, value_head=True)  # a copy of the policy + a fresh value head
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, betas=(0.9, 0.99), weight_decay=0.0)
    print(f"policy: {policy.num_params() / 1e6:.2f}M parameters on {device}, from {cfg.init}")
    logger = MetricsLogger(out)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # sampling
    order_gen = torch.Generator().manual_seed(cfg.seed)  # prompt order

    def evaluate(step):
        scores = heldout_scores(policy, enc, eval_records)  # 64 tokens, as the report card
        logger.log(step, **scores, elapsed_s=time.time() - t0)
        return scores

    # ---- the loop: sample, score, advantages, update
    t0 = time.time()
    first = evaluate(0)
    print("held-out at start: " + "  ".join(f"{k} {v:.3f}" for k, v in first.items()))
    perm, pos = torch.randperm(len(records), generator=order_gen), 0
    bar = tqdm(range(cfg.max_steps), disable=not cfg.progress, desc="ppo")
    done, last = 0, first
    for step in bar:
        for group in optimizer.param_groups:  # linear decay: the last updates are the smallest
            group["lr"] = cfg.lr * (1 - step / cfg.max_steps) if cfg.lr_decay else cfg.lr
        if pos + cfg.prompts_per_step > len(records):  # next epoch over the prompts
            perm, pos = torch.randperm(len(records), generator=order_gen), 0
        batch = [records[i] for i in perm[pos:pos + cfg.prompts_per_step].tolist()]
        pos += cfg.prompts_per_step

        # 1. rollouts: G answers per prompt, with the sampler's log-probs pi_old
        ro = rollout(policy, enc, batch, cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                     cfg.top_k or None, cfg.top_p, generator=gen)
        mask = ro.completion_mask  # (B, T)
        old_logps = ro.logprobs  # (B, T)
        with torch.no_grad():
            ref_logps = completion_logprobs(ref, ro, cfg.temperature, cfg.logprobs_impl)  # (B, T)

        # 2. rewards and 3. advantages
        scores, stats = score_rollout(ro, reward_fn, cfg.max_new_tokens, cfg.missing_stop_penalty,
                                      cfg.length_penalty)  # (B,)
        with torch.no_grad():
            old_values = completion_values(critic, ro)  # (B, T)
        rewards = token_rewards(scores, old_logps, ref_logps, mask, cfg.beta)  # (B, T)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (B, T) each
        advantages = whiten(advantages, mask)  # (B, T)
        zero_std = (scores.view(-1, cfg.group_size).std(dim=1) == 0).float().mean().item()

        # 4. update: ppo_epochs passes, each num_minibatches optimizer steps, policy and critic together
        mb_size = -(-len(ro) // cfg.num_minibatches)
        loss_sum, clipped, approx_kl, v_loss, kl_sum, n_mb = 0.0, 0.0, 0.0, 0.0, 0.0, 0
        for _ in range(cfg.ppo_epochs):
            shuffle = torch.randperm(len(ro), generator=order_gen).to(mask.device)
            for s in range(0, len(ro), mb_size):
                idx = shuffle[s:s + mb_size]
                sub = ro.select(idx)
                logps = completion_logprobs(policy, sub, cfg.temperature, cfg.logprobs_impl)  # (b, T)
                values = completion_values(critic, sub)  # (b, T)
                pg_loss, clip_frac, kl_old = ppo_policy_loss(logps, old_logps[idx], advantages[idx], mask[idx],
                                                             cfg.clip_eps)
                vf_loss = ppo_value_loss(values, old_values[idx], returns[idx], mask[idx], cfg.clip_value)
                loss = pg_loss + cfg.vf_coef * vf_loss  # two separate models: each gets its own term's gradient
                check_finite(loss, step, out)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or float("inf"))
                torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip or float("inf"))
                optimizer.step()
                critic_optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                critic_optimizer.zero_grad(set_to_none=True)
                loss_sum, clipped, approx_kl, v_loss = (loss_sum + pg_loss.item(), clipped + clip_frac.item(),
                                                        approx_kl + kl_old.item(), v_loss + vf_loss.item())
                n_mb += 1
                with torch.no_grad():  # what to watch: how far from the reference
                    kl_sum += kl_estimate(logps, ref_logps[idx], "k3")[mask[idx].bool()].sum().item()
        kl_sum /= cfg.ppo_epochs  # every token was seen once per epoch
        ev = explained_variance(old_values, returns, mask)

        # 5. log, evaluate
        done = step + 1
        n_tok = mask.sum().item()
        elapsed = time.time() - t0
        if done % cfg.log_every == 0:
            logger.log(done, loss=loss_sum / n_mb, **stats, zero_std_frac=zero_std, clip_frac=clipped / n_mb,
                       approx_kl=approx_kl / n_mb, value_loss=v_loss / n_mb, explained_var=ev, kl_ref=kl_sum / n_tok,
                       grad_norm=grad_norm, lr=optimizer.param_groups[0]["lr"], steps_per_s=done / elapsed,
                       elapsed_s=elapsed)
        bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{kl_sum / n_tok:.4f}")
        out_of_time = cfg.max_seconds and elapsed > cfg.max_seconds
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps or out_of_time:
            last = evaluate(done)
        if out_of_time:
            print(f"stopping after {done} steps: max_seconds={cfg.max_seconds} reached")
            break
    bar.close()
    logger.close()
    elapsed = time.time() - t0
    save_checkpoint(out / "model.pt", model_checkpoint(policy, ckpt["tokenizer"], done))
    write_samples(policy, enc, out / "samples.txt", per_domain(eval_records, 4))
    summary = {"steps": done, "seconds": elapsed, "steps_per_s": done / elapsed, "start": first, "end": last,
               "device": str(device)}
    save_json(out / "summary.json", summary)
    print(f"ppo done: {done} steps in {elapsed:.0f} s; held-out " +
          "  ".join(f"{k} {first[k]:.3f} -> {last[k]:.3f}" for k in last if k in first))
    return summary


if __name__ == "__main__":
    train(parse_config(Config, presets=PRESETS))
