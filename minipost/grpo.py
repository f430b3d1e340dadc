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

Loss types (how the token losses of a rollout batch become one number; they matter, see Liu et al. 2025,
"Understanding R1-Zero-Like Training", arXiv:2503.20783, "Dr. GRPO"). |o_i| is completion i's length, B the
rows of the rollout batch, L the generation budget (max_new_tokens):

    loss type | sum of token losses divided by                     | who uses it
    grpo      | |o_i| per row, then the mean over rows             | the GRPO paper; TRL `grpo`
    dapo      | all tokens of the rollout batch                    | DAPO (Yu et al. 2025); TRL `dapo` (its default)
    bnpo      | the tokens of each micro-batch (mean of those)     | TRL `bnpo`; changes with micro_batch_size
                (micro-batches of rows in rollout order, as in TRL; the other types group rows by length)
    dr_grpo   | B x L, the same every step                         | Dr. GRPO; TRL `dr_grpo`

grpo weighs a short answer's tokens more; dapo and dr_grpo weigh every token alike (docs/rl-variants.md).

Variants, each one option (docs/rl-variants.md has the table and their measurements):
- DAPO (Yu et al. 2025, arXiv:2503.14476): `--loss-type dapo`, clip-higher `--clip-eps-high 0.28`, dynamic
  sampling `--dynamic-sampling true` (groups whose rewards are all equal carry no signal: replace them with
  fresh prompts; rollout.sample_informative_groups), overlong shaping `--overlong-buffer N` (a penalty over
  the last N tokens of the budget).
- GSPO (Zheng et al. 2025, arXiv:2507.18071): `--importance-sampling-level sequence`, one ratio per completion
  s_i = (pi / pi_old)(o_i)^(1/|o_i|), clipped per sequence.
- the KL term: `--kl-loss k1|k2|k3|k3_corrected` in the loss (rl.kl_loss_term), or `--kl-in reward`:
  r_i <- r_i - beta * sum_t (log pi_old - log pi_ref)(o_it) before the group advantages.

What runs by default (the nano preset: `python -m minipost.grpo` and `train(Config())` are the same run):
200 steps of 16 prompts x 8 answers from every domain, arithmetic listed twice, reward correct + 0.3 restate,
lr 5e-5 decayed linearly to 0, beta 0.04 (the paper's value), one optimizer step per batch.

Deviations from the paper, all on purpose:
- the group std is the unbiased one (divide by G - 1), like torch.std.
- the reward is a verifiable checker (rewards.py), not a reward model; outcome supervision only.
- the model stays in eval mode throughout: dropout would make rho != 1 on the first iteration.
- DAPO, Dr. GRPO and TRL's default drop the KL term (`--beta 0`); the default keeps the paper's 0.04, and
  the KL to the reference is logged either way (`kl_ref`).

What the loop leaves out: torchrun, the run folder, resume, the log/eval/save cadence, the finite checks, the optimizer
step (gradient all-reduce, clip, step) and the outputs go through `run` (minipost/harness/run.py).

Run:  python -m minipost.grpo --init runs/dpo/model.pt --out runs/grpo          (every domain)
      python -m minipost.grpo --init runs/dpo/model.pt --domains sql --out runs/grpo_sql
      python -m minipost.grpo --out runs/grpo --resume true                      (continue from OUT/state.pt)
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
from minipost.checkpoints import model_checkpoint
from minipost.optim import adamw, linear_decay_lr, set_lr
from minipost.rewards import parse_reward, zero_spread
from minipost.rl import (KL_LOSSES, add_info, check_kl_flags, kl_estimate, kl_in_reward, kl_loss_term,
                         largest_weight)
from minipost.rollout import (RolloutConfig, completion_logprobs, load_policy_and_prompts, micro_batches,
                              next_prompts, sample_and_score, sample_informative_groups)
from minipost.tokenizer import special_id


LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")  # how token losses become one number: the docstring's table


@dataclass
class Config(RolloutConfig):
    """GRPO: group-relative advantages, clipped ratio, k3 KL to the reference in the loss."""
    out: str = field("runs/grpo", "output folder: config.json, inputs.json, metrics.jsonl, state.pt, "
                                     "model.pt, samples.txt, summary.json")
    init: str = field("runs/dpo/model.pt", "model to start from (and the frozen reference): a model.pt, or hf:PATH")
    max_steps: int = field(200, "rollout batches (each followed by num_iterations optimizer steps)", min=1)
    group_size: int = field(8, "samples per prompt (G); a group of one has no baseline to compare with", min=2)
    lr: float = field(5e-5, "Adam learning rate", gt=0)
    lr_decay: bool = field(True, "decay the learning rate linearly to 0 over max_steps (once per rollout step)")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)", min=0)
    micro_batch_size: int = field(64, "rows per forward/backward (0: all); exact gradient accumulation", min=0)
    num_iterations: int = field(1, "optimizer steps per rollout batch (mu); > 1 makes the clip act", min=1, max=100)
    clip_eps: float = field(0.2, "PPO-style clip range for the ratio", gt=0)
    beta: float = field(0.04, "weight of the KL to the reference (0: no KL term)", min=0)
    loss_type: str = field("grpo", "how token losses average (the docstring's table)", choices=list(LOSS_TYPES))
    clip_eps_high: float = field(0.0, "DAPO's clip-higher: ratio <= 1 + this (0.28); 0: clip_eps", min=0)
    importance_sampling_level: str = field("token", "token (GRPO) or sequence (GSPO: one ratio per completion)",
                                           choices=["token", "sequence"])
    kl_in: str = field("loss", "the KL to the reference in the loss (kl_loss) or in the reward (k1 per completion)",
                       choices=["loss", "reward"])
    kl_loss: str = field("k3", "per-token KL term in the loss (rl.kl_loss_term)", choices=list(KL_LOSSES))
    dynamic_sampling: bool = field(False, "DAPO: replace groups whose rewards are all equal with fresh prompts")
    max_sample_rounds: int = field(4, "with dynamic_sampling, rollout batches per step at most", min=1)
    overlong_buffer: int = field(0, "DAPO: a penalty rising to 1 over the last N tokens of max_new_tokens", min=0)
    scale_rewards: bool = field(True, "divide advantages by the group std (false: Dr. GRPO, only centre)")
    eval_every: int = field(50, "steps between held-out evaluations (0: only at start and end)", min=0)

    def __post_init__(self):
        check_config(self)
        check_kl_flags(self)
        if self.overlong_buffer > self.max_new_tokens:
            raise InputError(f"--overlong-buffer {self.overlong_buffer}: more than --max-new-tokens "
                             f"{self.max_new_tokens}")
        if self.clip_eps_high and self.clip_eps_high < self.clip_eps:
            raise InputError(f"--clip-eps-high {self.clip_eps_high}: below --clip-eps {self.clip_eps}; clip-higher "
                             "widens the upper range (0 keeps it equal to --clip-eps)")


PRESETS = {
    "nano": {},
    "small": dict(preset="small", prompts_per_step=32, max_new_tokens=64, lr=5e-6, num_iterations=2,
                  domains="arithmetic", oversample="", reward="correct:1", beta=0.0, eval_every=20),
    "hf": dict(preset="hf", max_steps=50, prompts_per_step=16, max_new_tokens=256, micro_batch_size=8, lr=1e-6,
               oversample="", reward="correct:1,format:0.1", eval_every=10, eval_limit=200, checkpointing=True),
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
    # A group of equal rewards is exactly 0: its float mean can miss the common value by one rounding step
    # (eight rewards of 1.3 average to 1.3000001), and dividing that 1e-7 by std + eps = 1e-4 would give
    # every answer of the group the same advantage of about -0.001, a push with no signal in it.
    same = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)  # (B/G, 1)
    return centred.masked_fill(same, 0.0).view(-1)  # (B,)


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip_eps: float = 0.2, beta: float = 0.0,
              loss_type: str = "grpo", *, max_tokens: int | None = None, clip_eps_high: float | None = None,
              importance_sampling_level: str = "token", kl_loss: str = "k3") -> tuple[torch.Tensor, dict]:
    """The negated GRPO objective and its variants -> (scalar loss, info).

    logps, old_logps, ref_logps: (B, T) per-token log-probs under pi_theta, pi_old and pi_ref (ref_logps may be
    None when beta = 0); advantages (B,); mask (B, T) 1 on completion tokens.
    loss_type      the module docstring's table (dr_grpo's normaliser needs max_tokens, the generation budget)
    clip_eps_high  upper clip 1 + clip_eps_high (DAPO's clip-higher); None: the symmetric clip_eps
    importance_sampling_level  "token": rho_t = pi / pi_old (GRPO); "sequence": s_i = exp(mean_t log rho_t) on
                   every token of completion i, clipped per sequence (GSPO)
    kl_loss        the KL term times beta (rl.kl_loss_term; k3_corrected uses the token ratio, also under
                   GSPO, where TRL uses s_i: docs/rl-variants.md#which-kl-estimator)
    info (detached; token metrics are means over the completion tokens): loss, clip_frac (ratio outside the
    clip range), ratio, approx_kl (k3 of pi_old vs pi_theta), kl_ref (k3 of pi_theta vs pi_ref, whatever kl_loss).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; use one of {', '.join(LOSS_TYPES)}")
    mask = mask.float()  # (B, T)
    log_ratio = logps - old_logps  # (B, T)
    if importance_sampling_level == "sequence":  # GSPO: log s_i = mean over o_i's tokens of log rho_t
        log_ratio = ((log_ratio * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1))
    elif importance_sampling_level != "token":
        raise ValueError(f"importance_sampling_level must be token or sequence, got {importance_sampling_level!r}")
    ratio = torch.exp(log_ratio).expand_as(mask)  # (B, T) rho_t, or s_i on every token of row i
    low, high = 1 - clip_eps, 1 + (clip_eps if clip_eps_high is None else clip_eps_high)
    adv = advantages[:, None]  # (B, 1), broadcast over tokens
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, low, high) * adv)  # (B, T)
    if beta != 0.0:
        per_token = per_token + beta * kl_loss_term(logps, ref_logps, kl_loss, old_logps)  # (B, T)
    if loss_type == "grpo":  # mean over sequences of per-sequence token means
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    elif loss_type in ("bnpo", "dapo"):  # a token mean over these rows (they differ in micro_batch_weight)
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:  # dr_grpo: a constant normaliser, rows x the generation budget
        if max_tokens is None:
            raise ValueError("loss_type dr_grpo needs max_tokens (the rollout's max_new_tokens)")
        loss = (per_token * mask).sum() / (mask.shape[0] * max_tokens)
    with torch.no_grad():  # what to watch: how often the clip acts, how far from pi_old and from the reference
        info = {"loss": loss.detach(), "clip_frac": masked_mean(((ratio < low) | (ratio > high)).float(), mask),
                "ratio": masked_mean(ratio, mask), "approx_kl": masked_mean(kl_estimate(old_logps, logps, "k3"), mask)}
        if ref_logps is not None:
            info["kl_ref"] = masked_mean(kl_estimate(logps, ref_logps, "k3"), mask)
    return loss, info


def micro_batch_weight(loss_type: str, mb_mask: torch.Tensor, full_mask: torch.Tensor,
                       total: tuple[int, int] | None = None) -> float:
    """Scale of one micro-batch's loss so that the accumulated gradient is that of the loss type's normaliser.

    grpo and dr_grpo average over rows (each micro-batch's loss is already per row): weight = rows / all rows.
    dapo is one token mean over the whole rollout batch: weight = tokens / all tokens. bnpo, a token mean per
    micro-batch, weighs micro-batches by their rows (equal weights when they are equal in size, as in TRL).
    `total` (rows, tokens) of the whole rollout batch when full_mask is one rank's part of it (torchrun).
    """
    rows, tokens = total or (full_mask.shape[0], full_mask.sum().item())
    if loss_type == "dapo":
        return mb_mask.sum().item() / max(tokens, 1)
    return mb_mask.shape[0] / rows


# ----------------------------------------------------------------------------------------------------------------
# the loop, one phase per function: prompts -> sample and score -> advantages -> update

def sample_scored(policy, ref, enc, prompts: list[dict], reward_fn, cfg: Config, gen: torch.Generator,
                  ranks: dist.Ranks = dist.Ranks()):
    """rollout.sample_and_score (G answers per prompt, their pi_old and pi_ref log-probs, the rewards) with DAPO's
    overlong penalty, and with --kl-in reward the KL to the reference taken from each reward."""
    batch_rollout, ref_logps, rewards, stats = sample_and_score(policy, ref, enc, prompts, reward_fn, cfg, gen, ranks,
                                                                cfg.overlong_buffer)
    if cfg.kl_in == "reward" and cfg.beta:  # k1 summed over each completion, a constant to the gradient
        rewards = kl_in_reward(rewards, batch_rollout.logprobs, ref_logps, batch_rollout.completion_mask, cfg.beta)
    return batch_rollout, ref_logps, rewards, stats


def update(policy, optimizer, batch_rollout, ref_logps, advantages, cfg: Config, run: Run) -> dict:
    """num_iterations optimizer steps on one rollout batch, each accumulated over micro-batches -> info, averaged
    over the batch's tokens (token metrics) or its optimizer steps (loss, grad_norm). Under torchrun the batch is
    this process's part: weights are shares of the whole batch, and gradients and info are summed over them."""
    mask, old_logps = batch_rollout.completion_mask, batch_rollout.logprobs  # (B, T) each
    total = (int(run.sum(mask.shape[0])), int(run.sum(mask.sum().item())))
    totals = {}
    for _ in range(cfg.num_iterations):
        for idx in micro_batches(batch_rollout, cfg.micro_batch_size or len(batch_rollout),
                                 by_length=cfg.loss_type != "bnpo"):  # bnpo's mean depends on the grouping
            logps, entropy = completion_logprobs(policy, batch_rollout.select(idx), cfg.temperature,
                                                 cfg.logprobs_impl, entropy=True)  # (b, T) each
            loss, info = grpo_loss(logps, old_logps[idx], ref_logps[idx], advantages[idx], mask[idx], cfg.clip_eps,
                                   cfg.beta if cfg.kl_in == "loss" else 0.0, cfg.loss_type,
                                   max_tokens=cfg.max_new_tokens, clip_eps_high=cfg.clip_eps_high or None,
                                   importance_sampling_level=cfg.importance_sampling_level, kl_loss=cfg.kl_loss)
            info["entropy"] = masked_mean(entropy, mask[idx])  # a metric, no gradient
            weight = micro_batch_weight(cfg.loss_type, mask[idx], mask, total)
            run.check(loss, "loss")
            (loss * weight).backward()
            add_info(totals, info, weight / cfg.num_iterations, mask[idx].sum().item() / total[1] / cfg.num_iterations)
        grad_norm = run.optimizer_step(policy, optimizer, cfg.grad_clip)
        totals["grad_norm"] = totals.get("grad_norm", 0.0) + grad_norm.item() / cfg.num_iterations
    run.check(largest_weight(policy), "the policy's largest |weight|")
    return {k: v if k == "grad_norm" else run.sum(v) for k, v in totals.items()}


def train(cfg: Config, reward_fn=None) -> dict:
    """Run the objective; `reward_fn(prompt, completion, record) -> float` replaces cfg.reward if given."""
    run = Run(cfg, "grpo")  # torchrun ranks, CPU threads, seeds, the run folder: minipost/harness/run.py
    device, ranks = run.device, run.ranks
    run.shard(cfg.prompts_per_step, "--prompts-per-step")  # whole groups per process: checked before anything
    if cfg.dynamic_sampling and ranks.world > 1:
        raise InputError("--dynamic-sampling true runs as one process only (its extra rounds are not split yet)")

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
    start_scores = run.scores_at_start(lambda: heldout_scores(policy, enc, eval_records))
    end_scores = run.resumed_value("end_scores", start_scores)

    # ---- the loop: prompts, sample and score, advantages, update, log
    for step in run.steps():
        lr = set_lr(optimizer, linear_decay_lr(step, lr=cfg.lr, max_steps=cfg.max_steps) if cfg.lr_decay else cfg.lr)
        if cfg.dynamic_sampling:  # DAPO: batches of fresh prompts until prompts_per_step groups carry a signal
            batch_rollout, ref_logps, rewards, stats, perm, pos = sample_informative_groups(
                lambda prompts: sample_scored(policy, ref, enc, prompts, reward_fn, cfg, gen), records, perm, pos,
                cfg.prompts_per_step, cfg.group_size, cfg.max_sample_rounds, order_gen, special_id(enc, "<|pad|>"))
        else:
            prompts, perm, pos = next_prompts(records, perm, pos, cfg.prompts_per_step, order_gen)
            batch_rollout, ref_logps, rewards, stats = sample_scored(policy, ref, enc, prompts, reward_fn, cfg, gen,
                                                                     ranks)
        advantages = group_advantages(rewards, cfg.group_size, scale=cfg.scale_rewards)  # (B,)
        zero_std = run.mean(zero_spread(rewards, cfg.group_size).float().mean().item())
        info = update(policy, optimizer, batch_rollout, ref_logps, advantages, cfg, run)

        run.log(**stats, zero_std_frac=zero_std, **info, lr=lr, steps_per_s=run.step / run.elapsed)
        if run.eval_due(cfg.eval_every):
            end_scores = heldout_scores(policy, enc, eval_records)
            run.log(run.step, **end_scores)
        run.end_step(perm=perm, pos=pos, start_scores=start_scores, end_scores=end_scores)

    # ---- the outputs: model.pt, samples.txt, summary.json
    summary = run.summary(start=start_scores, end=end_scores)
    if run.finish(model_checkpoint(policy, ckpt["tokenizer"], run.step), summary=summary,
                  samples=lambda path: write_samples(policy, enc, path, per_domain(eval_records, 4))):
        print(f"grpo done: {run.step} steps in {run.elapsed:.0f} s; held-out " +
              "  ".join(f"{k} {start_scores[k]:.3f} -> {end_scores[k]:.3f}" for k in end_scores if k in start_scores))
    return summary


if __name__ == "__main__":
    main(train, Config, PRESETS)
