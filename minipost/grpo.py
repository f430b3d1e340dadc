"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, eq. 3).

For each prompt q, sample a group of G answers o_1..o_G from pi_old, score them r_1..r_G, and use the
group itself as the baseline (no critic):

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)                  same A_i for every token of o_i

    J(theta) = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1 - eps_c, 1 + eps_c) A_i)
                                         - beta * KL_k3(pi_theta || pi_ref)_it ]
    rho_it = pi_theta(o_it | q, o_i,<t) / pi_old(o_it | q, o_i,<t)
    KL_k3  = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1                (Schulman's k3, >= 0)

and minimise -J. Each rollout batch is reused for `num_iterations` optimizer steps against the frozen
pi_old log-probs (mu in the paper); with num_iterations = 1 (the default) the ratio is exactly 1 and the
clip never acts.

Loss types (how token losses are averaged; they matter, see Liu et al. 2025, "Understanding R1-Zero-Like
Training", arXiv:2503.20783, "Dr. GRPO"):
    grpo     mean over sequences of each sequence's token mean (the paper): short answers weigh more per token
    bnpo     one token mean over the whole batch: every token counts the same
    dr_grpo  sum over tokens / (B * T_max): a constant normaliser, no length bias; pair it with
             `--scale-rewards false` (advantages only centred: dividing by the group std up-weights
             prompts that are nearly always right or wrong)

What runs by default (the nano preset: `python -m minipost.grpo` and `train(Config())` are the same run):
200 steps of 16 prompts x 8 answers from every domain, arithmetic listed twice, reward correct + 0.3 restate,
lr 5e-5 decayed linearly to 0, beta 0.04 (the paper's value), one optimizer step per batch.

Deviations from the paper, all on purpose:
- the group std is the unbiased one (divide by G - 1), like torch.std.
- the reward is a verifiable checker (rewards.py), not a reward model; outcome supervision only.
- the model stays in eval mode throughout: dropout would make rho != 1 on the first iteration.
- DAPO, Dr. GRPO and TRL's default drop the KL term (`--beta 0`); the default keeps the paper's 0.04, and
  the KL to the reference is logged either way (`kl_ref`).

Run:  python -m minipost.grpo --init runs/dpo/model.pt --out runs/grpo          (every domain)
      python -m minipost.grpo --init runs/dpo/model.pt --domains sql --out runs/grpo_sql
      python -m minipost.grpo --out runs/grpo --resume true                      (continue from OUT/state.pt)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from minipost import threads
from minipost.common import (DATA_DIR, InputError, MetricsLogger, add_info, check_config, check_finite, field,
                             kl_estimate, largest_weight, main, pick_device, save_checkpoint, save_json, save_state,
                             seed_everything, start_run)
from minipost.evals import log_heldout, per_domain, write_samples
from minipost.logprobs import masked_mean
from minipost.model import load_model, model_checkpoint
from minipost.optim import adamw, linear_decay_lr, set_lr
from minipost.rewards import parse_reward, score_rollout
from minipost.rollout import completion_logprobs, load_rl_prompts, micro_batches, next_prompts, rollout
from minipost.world import build as build_world


@dataclass
class Config:
    """GRPO: group-relative advantages, clipped ratio, k3 KL to the reference in the loss."""
    preset: str = field("nano", "nano (laptop CPU; the defaults) or small (one GPU)", choices=["nano", "small"])
    out: str = field("runs/grpo", "output folder: config.json, metrics.jsonl, state.pt, model.pt, samples.txt")
    init: str = field("runs/dpo/model.pt", "checkpoint to start from (and the frozen reference)")
    data: str = field("", "RL prompts, JSONL with prompt, domain and checker fields (default: the world's rl.jsonl)")
    eval_data: str = field("", "held-out prompts in the same form (default: the world's eval.jsonl)")
    domains: str = field("", "comma-separated domains to train on (empty: all)")
    oversample: str = field("arithmetic:2", "domain:k,... repeats that domain's prompts k times (empty: none)")
    reward: str = field("correct:1,restate:0.3", "reward terms name:weight, see rewards.py (correct, answer, sql, "
                                                 "tool, restate, format)")
    missing_stop_penalty: float = field(0.0, "subtracted from the reward of a completion without <|end|>", min=0)
    length_penalty: float = field(0.0, "subtracted times completion length / max_new_tokens", min=0)
    max_steps: int = field(200, "rollout batches (each followed by num_iterations optimizer steps)", min=1)
    max_seconds: float = field(0.0, "stop after this many seconds (0: no limit); a cap makes the step count "
                                     "machine-dependent", min=0)
    prompts_per_step: int = field(16, "prompts per rollout batch", min=1)
    group_size: int = field(8, "samples per prompt (G); >= 2 unless --scale-rewards false", min=1)
    max_new_tokens: int = field(48, "longest completion", min=1)
    temperature: float = field(1.0, "sampling temperature (the log-probs use the same one)", gt=0)
    top_k: int = field(0, "sample from the k most likely tokens only (0: off)", min=0)
    top_p: float = field(1.0, "nucleus sampling mass (1: off)", gt=0, max=1)
    lr: float = field(5e-5, "Adam learning rate", gt=0)
    lr_decay: bool = field(True, "decay the learning rate linearly to 0 over max_steps, set once per rollout step; "
                                 "a run that max_seconds stops early ends above 0")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)", min=0)
    micro_batch_size: int = field(64, "rows per forward/backward (0: all rows); exact gradient accumulation, does "
                                      "not change the result beyond float rounding", min=0)
    num_iterations: int = field(1, "optimizer steps per rollout batch (mu); > 1 makes the clip matter", min=1)
    clip_eps: float = field(0.2, "PPO-style clip range for the ratio", gt=0)
    beta: float = field(0.04, "weight of the k3 KL to the reference in the loss (0: no KL term)", min=0)
    loss_type: str = field("grpo", "token averaging: grpo, bnpo or dr_grpo", choices=["grpo", "bnpo", "dr_grpo"])
    scale_rewards: bool = field(True, "divide advantages by the group std (false: Dr. GRPO, only centre)")
    eval_every: int = field(50, "steps between held-out evaluations (0: only at start and end)", min=0)
    eval_limit: int = field(100, "held-out prompts per domain for those evaluations (0: all)", min=0)
    log_every: int = field(1, "steps between metrics.jsonl rows", min=1)
    logprobs_impl: str = field("auto", "token_logprobs implementation",
                               choices=["auto", "reference", "chunked", "triton"])
    seed: int = field(1337, "random seed (prompt order, sampling)")
    device: str = field("auto", "cuda, mps, cpu or auto")
    progress: bool = field(True, "show a tqdm progress bar")
    threads: str = field("auto", threads.HELP, check=threads.parse_threads)
    resume: bool = field(False, "continue from OUT/state.pt: weights, optimizer, schedule, RNG, data position and step")
    allow_config_change: bool = field(False, "with --resume, accept a config that differs from the saved run's")
    save_every: int = field(50, "steps between OUT/state.pt saves", min=1)
    stop_after: int = field(0, "save state and stop after this many steps, to --resume later (0: run to the end)",
                            min=0)

    def __post_init__(self):
        check_config(self)
        if self.scale_rewards and self.group_size < 2:
            raise InputError(f"--group-size {self.group_size}: scaling by the group std needs >= 2 samples per "
                             "prompt (or pass --scale-rewards false)")


PRESETS = {
    "nano": {},
    "small": dict(preset="small", prompts_per_step=32, max_new_tokens=64, lr=5e-6, num_iterations=2,
                  domains="arithmetic", oversample="", reward="correct:1", beta=0.0, eval_every=20),
}


# ----------------------------------------------------------------------------------------------------------------
# the objective: pure functions of tensors

def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - group mean) / (group std + eps), unbiased std; only centred when scale=False (Dr. GRPO).

    rewards (B,) laid out group after group -> (B,). Each group's advantages sum to zero; a group whose
    rewards are all equal gets zero advantage (it carries no learning signal).
    """
    if scale and group_size < 2:
        raise ValueError("group_size must be >= 2 to scale by the group's std (or pass scale=False)")
    r = rewards.float().view(-1, group_size)  # (B/G, G)
    centred = r - r.mean(dim=1, keepdim=True)  # (B/G, G)
    if scale:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)  # unbiased: divides by G - 1
    return centred.view(-1)  # (B,)


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip_eps: float = 0.2, beta: float = 0.0,
              loss_type: str = "grpo") -> tuple[torch.Tensor, dict]:
    """The negated GRPO objective -> (scalar loss, info).

    logps, old_logps, ref_logps: (B, T) per-token log-probs under pi_theta, pi_old and pi_ref (ref_logps may be
    None when beta = 0); advantages (B,); mask (B, T) 1 on completion tokens.
    info (detached scalars; the token metrics are means over this batch's completion tokens): loss, clip_frac
    (ratio outside [1 - clip_eps, 1 + clip_eps]), ratio, approx_kl (k3 of pi_old vs pi_theta), kl_ref (k3 of
    pi_theta vs pi_ref, when ref_logps is given).
    """
    mask = mask.float()  # (B, T)
    ratio = torch.exp(logps - old_logps)  # (B, T) rho
    adv = advantages[:, None]  # (B, 1), broadcast over tokens
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)  # (B, T)
    per_token = -surrogate  # (B, T)
    if beta != 0.0:
        per_token = per_token + beta * kl_estimate(logps, ref_logps, "k3")  # (B, T)
    if loss_type == "grpo":  # mean over sequences of per-sequence token means
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    elif loss_type == "bnpo":  # one token mean over the batch
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":  # constant normaliser B * T_max
        loss = (per_token * mask).sum() / (mask.shape[0] * mask.shape[1])
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; use grpo, bnpo or dr_grpo")
    with torch.no_grad():  # what to watch: how often the clip acts, how far from pi_old and from the reference
        info = {"loss": loss.detach(), "clip_frac": masked_mean(((ratio - 1).abs() > clip_eps).float(), mask),
                "ratio": masked_mean(ratio, mask), "approx_kl": masked_mean(kl_estimate(old_logps, logps, "k3"), mask)}
        if ref_logps is not None:
            info["kl_ref"] = masked_mean(kl_estimate(logps, ref_logps, "k3"), mask)
    return loss, info


def micro_batch_weight(loss_type: str, mb_mask: torch.Tensor, full_mask: torch.Tensor) -> float:
    """Scale of one micro-batch's loss so that the accumulated gradient equals the full batch's.

    grpo and dr_grpo average over sequences (dr_grpo with the same T_max in every micro-batch, since all rows
    share the rollout's width): weight = rows / all rows. bnpo averages over tokens: weight = tokens / all tokens.
    """
    if loss_type == "bnpo":
        return mb_mask.sum().item() / max(full_mask.sum().item(), 1)
    return mb_mask.shape[0] / full_mask.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# the loop, one phase per function: prompts -> sample and score -> advantages -> update

def sample_and_score(policy, ref, enc, prompts: list[dict], reward_fn, cfg: Config, gen: torch.Generator):
    """G answers per prompt with the sampler's log-probs pi_old, the reference's log-probs of the same tokens,
    and the rewards -> (rollout, ref_logps (B, T), rewards (B,), reward stats for the log)."""
    batch_rollout = rollout(policy, enc, prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                            cfg.top_k or None, cfg.top_p, generator=gen)
    with torch.no_grad():
        ref_logps = completion_logprobs(ref, batch_rollout, cfg.temperature, cfg.logprobs_impl)  # (B, T)
    rewards, stats = score_rollout(batch_rollout, reward_fn, cfg.max_new_tokens, cfg.missing_stop_penalty,
                                   cfg.length_penalty)  # (B,)
    return batch_rollout, ref_logps, rewards, stats


def update(policy, optimizer, batch_rollout, ref_logps, advantages, cfg: Config, step: int, out: Path) -> dict:
    """num_iterations optimizer steps on one rollout batch, each accumulated over micro-batches -> info, averaged
    over the batch's tokens (token metrics) or its optimizer steps (loss, grad_norm)."""
    mask, old_logps = batch_rollout.completion_mask, batch_rollout.logprobs  # (B, T) each
    totals = {}
    for _ in range(cfg.num_iterations):
        for idx in micro_batches(batch_rollout, cfg.micro_batch_size or len(batch_rollout)):
            logps = completion_logprobs(policy, batch_rollout.select(idx), cfg.temperature,
                                        cfg.logprobs_impl)  # (b, T)
            loss, info = grpo_loss(logps, old_logps[idx], ref_logps[idx], advantages[idx], mask[idx], cfg.clip_eps,
                                   cfg.beta, cfg.loss_type)
            weight = micro_batch_weight(cfg.loss_type, mask[idx], mask)
            check_finite(loss, "loss", step, out)
            (loss * weight).backward()
            add_info(totals, info, weight / cfg.num_iterations,
                     mask[idx].sum().item() / mask.sum().item() / cfg.num_iterations)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm.item() / cfg.num_iterations
    check_finite(largest_weight(policy), "the policy's largest |weight|", step, out)
    return totals


def train(cfg: Config, reward_fn=None) -> dict:
    """Run the objective; `reward_fn(prompt, completion, record) -> float` replaces cfg.reward if given."""
    device = pick_device(cfg.device)
    print(threads.configure(cfg.threads))
    seed_everything(cfg.seed)
    out = Path(cfg.out)

    # ---- inputs, every one checked before anything is written: reward, the policy, prompts, the reference
    reward_fn = reward_fn or parse_reward(cfg.reward)
    if not (cfg.data and cfg.eval_data) and not (DATA_DIR / "rl.jsonl").exists():
        build_world(DATA_DIR)
    policy, enc, ckpt = load_model(cfg.init, device)  # the policy we train
    records, eval_records = load_rl_prompts(
        cfg.data or DATA_DIR / "rl.jsonl", cfg.eval_data or DATA_DIR / "eval.jsonl", domains=cfg.domains,
        oversample=cfg.oversample, prompts_per_step=cfg.prompts_per_step, enc=enc, block_size=policy.cfg.block_size,
        max_new_tokens=cfg.max_new_tokens, model_path=cfg.init)
    eval_records = per_domain(eval_records, cfg.eval_limit)
    ref, _, _ = load_model(cfg.init, device)  # a frozen copy of the start, the reference
    ref.requires_grad_(False)
    print(f"{len(records)} RL prompts, {len(eval_records)} held-out prompts, domains: {cfg.domains or 'all'}")
    print(f"policy: {policy.num_params() / 1e6:.2f}M parameters on {device}, from {cfg.init}")

    # ---- optimizer, random streams, data order; then the run folder (a resume restores all of them here)
    optimizer = adamw(policy, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99), device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)  # sampling
    order_gen = torch.Generator().manual_seed(cfg.seed)  # prompt order
    perm, pos = torch.randperm(len(records), generator=order_gen), 0
    state = start_run(out, cfg)
    if state:
        policy.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["sample_generator"])
        order_gen.set_state(state["order_generator"])
        perm, pos = state["perm"], state["pos"]
    logger = MetricsLogger(out, resume_step=state["step"] if state else None)
    steps_done, elapsed_before = (state["step"], state["elapsed_s"]) if state else (0, 0.0)
    t0 = time.time()
    start_scores = state["start_scores"] if state else log_heldout(logger, 0, policy, enc, eval_records, 0.0)
    end_scores = state["end_scores"] if state else start_scores
    print("held-out at start: " + "  ".join(f"{k} {v:.3f}" for k, v in start_scores.items()))

    # ---- the loop: prompts, sample and score, advantages, update, log
    bar = tqdm(range(steps_done, cfg.max_steps), initial=steps_done, total=cfg.max_steps, disable=not cfg.progress,
               desc="grpo")
    for step in bar:
        set_lr(optimizer, linear_decay_lr(step, lr=cfg.lr, max_steps=cfg.max_steps) if cfg.lr_decay else cfg.lr)
        prompts, perm, pos = next_prompts(records, perm, pos, cfg.prompts_per_step, order_gen)
        batch_rollout, ref_logps, rewards, stats = sample_and_score(policy, ref, enc, prompts, reward_fn, cfg, gen)
        advantages = group_advantages(rewards, cfg.group_size, scale=cfg.scale_rewards)  # (B,)
        zero_std = (rewards.view(-1, cfg.group_size).std(dim=1) == 0).float().mean().item()
        info = update(policy, optimizer, batch_rollout, ref_logps, advantages, cfg, step, out)

        steps_done = step + 1
        elapsed = elapsed_before + time.time() - t0
        if steps_done % cfg.log_every == 0:
            logger.log(steps_done, **stats, zero_std_frac=zero_std, **info, lr=optimizer.param_groups[0]["lr"],
                       steps_per_s=steps_done / elapsed, elapsed_s=elapsed)
        bar.set_postfix(reward=f"{stats['reward']:.3f}", kl=f"{info['kl_ref']:.4f}")
        out_of_time = bool(cfg.max_seconds) and elapsed > cfg.max_seconds
        if (cfg.eval_every and steps_done % cfg.eval_every == 0) or steps_done == cfg.max_steps or out_of_time:
            end_scores = log_heldout(logger, steps_done, policy, enc, eval_records, elapsed)
        stop = steps_done == cfg.stop_after or out_of_time
        if steps_done % cfg.save_every == 0 or steps_done == cfg.max_steps or stop:
            save_state(out, steps_done, cfg, model=policy.state_dict(), optimizer=optimizer.state_dict(),
                       sample_generator=gen.get_state(), order_generator=order_gen.get_state(), perm=perm, pos=pos,
                       start_scores=start_scores, end_scores=end_scores, elapsed_s=elapsed)
        if stop:
            print(f"stopping after {steps_done} steps: " + (f"max_seconds={cfg.max_seconds} reached" if out_of_time
                  else f"--stop-after {cfg.stop_after}; continue with --resume true"))
            break
    bar.close()
    logger.close()
    elapsed = elapsed_before + time.time() - t0
    summary = {"steps": steps_done, "seconds": elapsed, "steps_per_s": steps_done / max(elapsed, 1e-9),
               "start": start_scores, "end": end_scores, "device": str(device)}
    if steps_done == cfg.stop_after and steps_done < cfg.max_steps:
        return summary  # the run is not over: state.pt holds it, model.pt is written at the end
    save_checkpoint(out / "model.pt", model_checkpoint(policy, ckpt["tokenizer"], steps_done))
    write_samples(policy, enc, out / "samples.txt", per_domain(eval_records, 4))
    save_json(out / "summary.json", summary)
    print(f"grpo done: {steps_done} steps in {elapsed:.0f} s; held-out " +
          "  ".join(f"{k} {start_scores[k]:.3f} -> {end_scores[k]:.3f}" for k in end_scores if k in start_scores))
    return summary


if __name__ == "__main__":
    main(train, Config, PRESETS)
