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

Optional KL to the reference policy, weighted by beta (`--kl-in`):
    reward  r_i <- r_i - beta * sum_t (log pi(y_it) - log pi_ref(y_it))   (k1 per token, summed; as in RLOO's
            paper and InstructGPT; a constant to the gradient, so it shapes what counts as a good sample)
    loss    loss += beta * 1/B sum_i sum_t k3_it    (the k3 estimator, differentiated, as GRPO does)

Deviations, all on purpose:
- the whole completion is one action (sequence-level REINFORCE), so the loss sums token log-probs; longer
  answers get proportionally bigger gradients, which is what the estimator says. On a mixed batch the short
  arithmetic answers (~13 tokens) so move less per step than SQL (~25). The nano preset makes up for it
  with twice GRPO's lr, 1e-4, which also moves every other domain more (measured from the DPO model:
  arithmetic +15 and +12 with seeds 1337 and 2, tools -1 and -2; +8 with seed 2 at 5e-5).
- the reward is a verifiable checker (rewards.py), not a reward model.
- the model stays in eval mode throughout (no dropout), like the other RL files.

Run:  python -m minipost.reinforce --init runs/dpo/model.pt --out runs/rloo             (baseline rloo)
      python -m minipost.reinforce --init runs/dpo/model.pt --baseline mean --out runs/reinforce_mean
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
    """REINFORCE / RLOO: sequence-level policy gradient with a baseline, optional KL to the reference."""
    preset: str = field("nano", "nano (laptop CPU) or small (one GPU)", choices=["nano", "small"])
    out: str = field("runs/rloo", "output folder: config.json, metrics.jsonl, model.pt, samples.txt")
    init: str = field("runs/dpo/model.pt", "checkpoint to start from (and the frozen reference)")
    data: str = field("", "RL prompts, JSONL with prompt, domain and checker fields (default: the world's rl.jsonl)")
    eval_data: str = field("", "held-out prompts in the same form (default: the world's eval.jsonl)")
    domains: str = field("arithmetic", "comma-separated domains to train on (empty: all)")
    oversample: str = field("", "domain:k,... repeats that domain's prompts k times (e.g. arithmetic:2)")
    reward: str = field("correct:1", "reward terms name:weight, see rewards.py (correct, answer, sql, tool, restate, "
                                     "format)")
    missing_stop_penalty: float = field(0.0, "subtracted from the reward of a completion without <|end|>")
    length_penalty: float = field(0.0, "subtracted times completion length / max_new_tokens")
    max_steps: int = field(100, "rollout batches (each followed by one optimizer step)")
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
    baseline: str = field("rloo", "none, mean (running mean of rewards) or rloo (leave-one-out in the group)",
                          choices=["none", "mean", "rloo"])
    mean_momentum: float = field(0.9, "momentum m of the running-mean baseline")
    beta: float = field(0.0, "weight of the KL to the reference")
    kl_in: str = field("reward", "where the KL goes: reward (k1, subtracted from r) or loss (k3, added to the loss)",
                       choices=["reward", "loss"])
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
                 lr=1e-4, domains="", oversample="arithmetic:2", reward="correct:1,restate:0.3",
                 beta=0.04, kl_in="loss", eval_every=50),
    "small": dict(preset="small", max_steps=200, prompts_per_step=32, group_size=8, max_new_tokens=64, lr=5e-6),
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


def reinforce_loss(logps, advantages, mask, ref_logps=None, beta: float = 0.0) -> torch.Tensor:
    """- 1/B sum_i A_i * sum_t log pi(y_it)  [+ beta * 1/B sum_i sum_t k3_it when ref_logps is given] -> scalar.

    logps (B, T) per-token log-probs (differentiable), advantages (B,), mask (B, T); ref_logps (B, T) or None.
    """
    mask = mask.float()  # (B, T)
    seq_logps = (logps * mask).sum(dim=1)  # (B,) log pi(y | x)
    loss = -(advantages.detach() * seq_logps).mean()
    if ref_logps is not None and beta != 0.0:
        loss = loss + beta * (kl_estimate(logps, ref_logps, "k3") * mask).sum(dim=1).mean()
    return loss


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
    bar = tqdm(range(cfg.max_steps), disable=not cfg.progress, desc=f"reinforce ({cfg.baseline})")
    done, last = 0, first
    running_mean = 0.0  # the "mean" baseline b
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
        if cfg.beta and cfg.kl_in == "reward":  # k1 per token, summed over the sequence
            rewards = rewards - cfg.beta * ((old_logps - ref_logps) * mask).sum(dim=1)  # (B,)
        if cfg.baseline == "rloo":
            advantages = rloo_advantages(rewards, cfg.group_size)  # (B,)
        elif cfg.baseline == "mean":
            advantages = rewards - running_mean  # (B,)
            running_mean = cfg.mean_momentum * running_mean + (1 - cfg.mean_momentum) * rewards.mean().item()
        else:
            advantages = rewards  # (B,)
        zero_std = (rewards.view(-1, cfg.group_size).std(dim=1) == 0).float().mean().item()

        # 4. update: one on-policy optimizer step on this batch, micro-batched
        loss_sum, kl_sum = 0.0, 0.0
        kl_beta = cfg.beta if cfg.kl_in == "loss" else 0.0
        for idx in micro_batches(ro, cfg.micro_batch):
            logps = completion_logprobs(policy, ro.select(idx), cfg.temperature, cfg.logprobs_impl)  # (b, T)
            loss = reinforce_loss(logps, advantages[idx], mask[idx], ref_logps[idx], kl_beta)
            loss = loss * len(idx) / len(ro)  # a mean over sequences: weight each micro-batch by its rows
            check_finite(loss, step, out)
            loss.backward()
            loss_sum += loss.item()
            with torch.no_grad():  # what to watch: how far from the reference
                kl_sum += kl_estimate(logps, ref_logps[idx], "k3")[mask[idx].bool()].sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        # 5. log, evaluate
        done = step + 1
        n_tok = mask.sum().item()
        elapsed = time.time() - t0
        if done % cfg.log_every == 0:
            logger.log(done, loss=loss_sum, **stats, zero_std_frac=zero_std, baseline=running_mean,
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
    print(f"reinforce ({cfg.baseline}) done: {done} steps in {elapsed:.0f} s; held-out " +
          "  ".join(f"{k} {first[k]:.3f} -> {last[k]:.3f}" for k in last if k in first))
    return summary


if __name__ == "__main__":
    train(parse_config(Config, presets=PRESETS))
