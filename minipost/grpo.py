"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, eq. 3).

For each prompt q, sample a group of G answers o_1..o_G from pi_old, score them r_1..r_G, and use the
group itself as the baseline (no critic):

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)                  same A_i for every token of o_i

    J(theta) = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1 - eps_c, 1 + eps_c) A_i)
                                         - beta * KL_k3(pi_theta || pi_ref)_it ]
    rho_it = pi_theta(o_it | q, o_i,<t) / pi_old(o_it | q, o_i,<t)
    KL_k3  = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1                (Schulman's k3, >= 0)

and minimise -J. Each rollout batch is reused for `num_iterations` optimizer steps against the frozen
pi_old log-probs (mu in the paper); with num_iterations = 1 the ratio is exactly 1 and the clip never acts.

Loss types (how token losses are averaged; they matter, see Liu et al. 2025, "Understanding R1-Zero-Like
Training", arXiv:2503.20783, "Dr. GRPO"):
    grpo     mean over sequences of each sequence's token mean (the paper): short answers weigh more per token
    bnpo     one token mean over the whole batch: every token counts the same
    dr_grpo  sum over tokens / (B * T_max): a constant normaliser, no length bias; pair it with
             `--scale-rewards false` (advantages only centred: dividing by the group std up-weights
             prompts that are nearly always right or wrong)

Deviations from the paper, all on purpose:
- beta defaults to 0 (no reference KL), as in DAPO and Dr. GRPO and TRL's default; the KL to the reference is
  still measured and logged. Set --beta 0.04 for the paper's value.
- the group std is the unbiased one (divide by G - 1), like torch.std.
- the reward is a verifiable checker (rewards.py), not a reward model; outcome supervision only.
- the model stays in eval mode throughout: dropout would make rho != 1 on the first iteration.

Run:  python -m minipost.grpo --init runs/dpo/model.pt --out runs/grpo          (nano preset: every domain)
      python -m minipost.grpo --init runs/dpo/model.pt --domains sql --out runs/grpo_sql
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
from minipost.rollout import (completion_logprobs, heldout_scores, load_prompts, micro_batches, per_domain,
                              rollout, write_samples)


@dataclass
class Config:
    """GRPO: group-relative advantages, clipped ratio, optional k3 KL to the reference."""
    preset: str = field("nano", "nano (laptop CPU) or small (one GPU)", choices=["nano", "small"])
    out: str = field("runs/grpo", "output folder: config.json, metrics.jsonl, model.pt, samples.txt")
    init: str = field("runs/dpo/model.pt", "checkpoint to start from (and the frozen reference)")
    data: str = field("", "RL prompts, JSONL with prompt, domain and checker fields (default: the world's rl.jsonl)")
    eval_data: str = field("", "held-out prompts in the same form (default: the world's eval.jsonl)")
    domains: str = field("arithmetic", "comma-separated domains to train on (empty: all)")
    oversample: str = field("", "domain:k,... repeats that domain's prompts k times (e.g. arithmetic:2)")
    reward: str = field("correct:1", "reward terms name:weight, see rewards.py (correct, answer, sql, tool, restate, "
                                     "format)")
    missing_stop_penalty: float = field(0.0, "subtracted from the reward of a completion without <|end|>")
    length_penalty: float = field(0.0, "subtracted times completion length / max_new_tokens")
    max_steps: int = field(100, "rollout batches (each followed by num_iterations optimizer steps)")
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
                                 "a run that max_seconds stops early ends above 0")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)")
    micro_batch: int = field(64, "rows per forward/backward (gradient accumulation); does not change the result")
    num_iterations: int = field(1, "optimizer steps per rollout batch (mu); > 1 makes the clip matter")
    clip_eps: float = field(0.2, "PPO-style clip range for the ratio")
    beta: float = field(0.0, "weight of the k3 KL to the reference in the loss")
    loss_type: str = field("grpo", "token averaging: grpo, bnpo or dr_grpo", choices=["grpo", "bnpo", "dr_grpo"])
    scale_rewards: bool = field(True, "divide advantages by the group std (false: Dr. GRPO, only centre)")
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
                 beta=0.04, eval_every=50),
    "small": dict(preset="small", max_steps=200, prompts_per_step=32, group_size=8, max_new_tokens=64, lr=5e-6,
                  num_iterations=2),
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
              loss_type: str = "grpo") -> torch.Tensor:
    """The negated GRPO objective -> scalar.

    logps, old_logps, ref_logps: (B, T) per-token log-probs under pi_theta, pi_old and pi_ref (ref_logps may be
    None when beta = 0); advantages (B,); mask (B, T) 1 on completion tokens.
    """
    mask = mask.float()  # (B, T)
    ratio = torch.exp(logps - old_logps)  # (B, T) rho
    adv = advantages[:, None]  # (B, 1), broadcast over tokens
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)  # (B, T)
    per_token = -surrogate  # (B, T)
    if beta != 0.0:
        per_token = per_token + beta * kl_estimate(logps, ref_logps, "k3")  # (B, T)
    if loss_type == "grpo":  # mean over sequences of per-sequence token means
        return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if loss_type == "bnpo":  # one token mean over the batch
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":  # constant normaliser B * T_max
        return (per_token * mask).sum() / (mask.shape[0] * mask.shape[1])
    raise ValueError(f"unknown loss_type {loss_type!r}; use grpo, bnpo or dr_grpo")


def micro_batch_weight(loss_type: str, mb_mask: torch.Tensor, full_mask: torch.Tensor) -> float:
    """Scale of one micro-batch's loss so that the accumulated gradient equals the full batch's.

    grpo and dr_grpo average over sequences (dr_grpo with the same T_max in every micro-batch, since all rows
    share the rollout's width): weight = rows / all rows. bnpo averages over tokens: weight = tokens / all tokens.
    """
    if loss_type == "bnpo":
        return mb_mask.sum().item() / max(full_mask.sum().item(), 1)
    return mb_mask.shape[0] / full_mask.shape[0]


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

    # ---- models: the policy we train and a frozen copy of the start, the reference
    policy, enc, ckpt = load_model(cfg.init, device)
    ref, _, _ = load_model(cfg.init, device)
    ref.requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
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
    bar = tqdm(range(cfg.max_steps), disable=not cfg.progress, desc="grpo")
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
        rewards, stats = score_rollout(ro, reward_fn, cfg.max_new_tokens, cfg.missing_stop_penalty,
                                       cfg.length_penalty)  # (B,)
        advantages = group_advantages(rewards, cfg.group_size, scale=cfg.scale_rewards)  # (B,)
        zero_std = (rewards.view(-1, cfg.group_size).std(dim=1) == 0).float().mean().item()

        # 4. update: num_iterations optimizer steps on this batch, micro-batched
        for _ in range(cfg.num_iterations):
            loss_sum, clipped, kl_sum = 0.0, 0.0, 0.0
            for idx in micro_batches(ro, cfg.micro_batch):
                logps = completion_logprobs(policy, ro.select(idx), cfg.temperature, cfg.logprobs_impl)  # (b, T)
                loss = grpo_loss(logps, old_logps[idx], ref_logps[idx], advantages[idx], mask[idx], cfg.clip_eps,
                                 cfg.beta, cfg.loss_type)
                loss = loss * micro_batch_weight(cfg.loss_type, mask[idx], mask)
                check_finite(loss, step, out)
                loss.backward()
                loss_sum += loss.item()
                with torch.no_grad():  # what to watch: how often the clip acts, how far from the reference
                    m = mask[idx].bool()
                    ratio = torch.exp(logps - old_logps[idx])[m]
                    clipped += ((ratio - 1).abs() > cfg.clip_eps).float().sum().item()
                    kl_sum += kl_estimate(logps, ref_logps[idx], "k3")[m].sum().item()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # 5. log, evaluate
        done = step + 1
        n_tok = mask.sum().item()
        elapsed = time.time() - t0
        if done % cfg.log_every == 0:
            logger.log(done, loss=loss_sum, **stats, zero_std_frac=zero_std, clip_frac=clipped / n_tok,
                       kl_ref=kl_sum / n_tok, grad_norm=grad_norm, lr=optimizer.param_groups[0]["lr"],
                       steps_per_s=done / elapsed, elapsed_s=elapsed)
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
    print(f"grpo done: {done} steps in {elapsed:.0f} s; held-out " +
          "  ".join(f"{k} {first[k]:.3f} -> {last[k]:.3f}" for k in last if k in first))
    return summary


if __name__ == "__main__":
    train(parse_config(Config, presets=PRESETS))
