"""A reward model: learn a scalar score r(prompt, answer) from preference pairs, for RL to maximise later.

Bradley-Terry (1952): the probability that answer y_w is preferred to y_l is sigmoid(r(x, y_w) - r(x, y_l)).
Fitting r by maximum likelihood on human (here: the world's) preference pairs is the reward model of
Christiano et al. 2017 ("Deep reinforcement learning from human preferences") and of InstructGPT
(Ouyang et al. 2022, eq. 1):

    loss(theta) = - E_(x, y_w, y_l) [ log sigmoid( r(x, y_w) - r(x, y_l) - m ) ]  +  c * (r(x, y_w) + r(x, y_l))^2

- r_theta(x, y) is a linear head (GPT.value_head, a fresh one) on the final hidden state of the last token of
  the rendered conversation, the <|end|> that closes the answer: by then the model has read the prompt and the
  whole answer. The network under it starts as the SFT model, as in InstructGPT, so it starts out knowing the
  chat format.
- m is an optional per-pair margin (a "margin" number in the data, as in Llama 2 (Touvron et al. 2023, eq. 2):
  a larger margin for pairs rated further apart); 0 when the data has none.
- c (`center_coef`) pulls the two rewards' sum towards 0 so that r stays centred; the loss only sees their
  difference and is otherwise blind to a shift. TRL's RewardTrainer calls it center_rewards_coefficient and
  recommends 0.01 (after Eisenstein et al. 2023, arXiv:2312.09244); InstructGPT instead subtracts a constant
  after training. RL cares only about differences between rewards, but GRPO/RLOO baselines and PPO's critic are
  easier when the scale is fixed.

Reading the metrics: `accuracy` (the share of pairs with r(chosen) > r(rejected)) starts near 0.5 and `loss`
near ln 2 = 0.693 (the fresh head gives nearly equal rewards); `margin` is mean r(chosen) - r(rejected);
`eval_accuracy` is the same accuracy on the held-out eval_prefs.jsonl, the number to watch for overfitting.
samples.txt lists the held-out pairs the model gets most wrong.

On nano it ranks 83.7% of the held-out pairs right: every refusal pair, but only about half of the
correctness pairs that need a fact checked (measured, with the settings tried: docs/reward-models.md).

Deviations and choices:
- Every pair is scored in one batch of 2B rows (chosen rows first), right-padded; causal attention means the
  padding after a row's last token never reaches it, so no attention mask is needed.
- The loss is a mean over the batch's pairs; micro-batches weigh b / B (exact accumulation, up to rounding).
- A pair must fit block_size tokens (prompt + answer + the chat template); a longer one is refused by file and
  line before anything is written.
- The checkpoint is a GPT with its value head and kind "reward_model"; `rewards.RewardModel(path)` loads it to score
  answers (the RL files' `--reward rm:PATH` and the card's judge).

What the loop leaves out: torchrun, the run folder, resume, the log/eval/save cadence, the finite checks, the optimizer
step (gradient all-reduce, clip, step) and the outputs go through `run` (minipost/harness/run.py).

Run:  python -m minipost.reward_model --init runs/pipeline/sft/model.pt --out runs/reward_model    (~1 min CPU)
      python -m minipost.reward_model --init SFT.pt --data my_prefs.jsonl --out runs/my_rm
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from minipost.common import DATA_DIR, InputError, field
from minipost.data import EpochBatches, load_prefs, tokenize_pairs
from minipost.harness import Run, RunConfig, main
from minipost.checkpoints import load_init, model_checkpoint
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.rewards import KIND, pair_rewards, reward_scores, sequence_batch
from minipost.tokenizer import special_id
from minipost.world import build as build_world



@dataclass
class Config(RunConfig):
    """A Bradley-Terry reward model on (prompt, chosen, rejected) pairs, from the SFT model.
    The defaults are the nano preset (a laptop CPU, ~1 min); `--preset small` changes only what PRESETS lists."""
    preset: str = field("nano", "model size and schedule: nano (laptop CPU) or small (one GPU)",
                        choices=["nano", "small"])
    out: str = field("runs/reward_model", "output folder: config.json, inputs.json, metrics.jsonl, state.pt, "
                                     "model.pt, samples.txt, summary.json")
    init: str = field("runs/sft/model.pt", "the model to start from (usually the SFT model); a fresh head is added")
    data: str = field("", "preference pairs: JSONL of {'prompt', 'chosen', 'rejected'[, 'margin']} "
                      "(default: the world's)")
    eval_data: str = field("", "held-out pairs for eval_accuracy (default: the world's eval_prefs.jsonl)")
    max_pairs: int = field(0, "train on the first N pairs only (0: all); for quick experiments", min=0)
    center_coef: float = field(0.01, "weight of (r_chosen + r_rejected)^2, which keeps rewards centred (0: off)",
                               min=0)
    max_steps: int = field(150, "optimizer steps", min=1)
    batch_size: int = field(32, "pairs per optimizer step", min=1)
    micro_batch_size: int = field(0, "pairs per forward/backward (0: the whole batch); exact gradient accumulation",
                                  min=0)
    block_size: int = field(256, "longest prompt + answer in tokens (at most the model's block_size)", min=2)
    lr: float = field(1e-4, "peak learning rate", gt=0)
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak", min=0, max=1)
    warmup_steps: int = field(10, "linear warmup steps", min=0)
    weight_decay: float = field(0.0, "AdamW weight decay on matrices", min=0)
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)", min=0)
    eval_every: int = field(50, "steps between held-out accuracy evaluations (0: only at the end)", min=0)
    log_every: int = field(5, "steps between metrics.jsonl rows", min=1)
    save_every: int = field(50, "steps between OUT/state.pt saves (for --resume)", min=1)


PRESETS = {
    "nano": {},
    "small": dict(preset="small", max_steps=300, batch_size=64, block_size=512, lr=5e-5),
}


def reward_loss(r_chosen, r_rejected, margin=None, center_coef: float = 0.0):
    """Per-pair Bradley-Terry loss -> (B,): -log sigmoid(r_chosen - r_rejected - margin)
    + center_coef * (r_chosen + r_rejected)^2. r_chosen, r_rejected (B,) rewards; margin None, a float or (B,).
    At r_chosen = r_rejected (and no margin, no centring) every loss is ln 2; its gradient raises r_chosen and
    lowers r_rejected by the same amount, sigmoid(-(r_c - r_r - m)), the probability the model still gets wrong."""
    diff = r_chosen - r_rejected - (0.0 if margin is None else margin)  # (B,)
    return -F.logsigmoid(diff) + center_coef * (r_chosen + r_rejected) ** 2


def load_margins(rows: list[dict], lines: list[int], path) -> torch.Tensor | None:
    """The pairs' "margin" numbers (N,), or None when no pair has one; every pair needs one if any does."""
    if not any("margin" in r for r in rows):
        return None
    for n, r in zip(lines, rows):
        m = r.get("margin")
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not (math.isfinite(m) and abs(m) <= 1e6):
            raise InputError(f"{path}:{n}: field 'margin' must be a finite number of size at most 1e6 when any "
                             f"pair has one, got {m!r}")
    return torch.tensor([float(r["margin"]) for r in rows])


def write_samples(path, records: list[dict], chosen: torch.Tensor, rejected: torch.Tensor, n: int = 12) -> None:
    """The held-out pairs the reward model gets most wrong (lowest r(chosen) - r(rejected)), then a few right."""
    order = torch.argsort(chosen - rejected).tolist()
    picks = order[:n] + order[-3:]
    text = "".join(
        f"### [{records[i].get('domain', '-')}] r(chosen) {chosen[i]:+.2f}  r(rejected) {rejected[i]:+.2f}  "
        f"{'right' if chosen[i] > rejected[i] else 'WRONG'}\n{records[i]['prompt']}\n"
        f"chosen  : {records[i]['chosen']}\nrejected: {records[i]['rejected']}\n\n" for i in picks)
    Path(path).write_text(text, encoding="utf-8")


def train(cfg: Config) -> dict:
    run = Run(cfg, "reward_model")  # torchrun ranks, CPU threads, seeds, the run folder: minipost/harness/run.py
    run.shard(cfg.batch_size)  # torchrun: a global batch must split evenly over the processes (checked now)
    device = run.device

    # ---- the model: the init checkpoint plus a fresh scalar head
    model, enc, ckpt = load_init(cfg.init, device, hint="run SFT first (python -m minipost.sft)", value_head=True)
    block_size = min(cfg.block_size, model.cfg.block_size)
    print(f"reward model: {model.num_params() / 1e6:.2f}M parameters from {cfg.init} on {device}")

    # ---- data: each pair rendered twice with the chat template (prompt + chosen, prompt + rejected)
    pairs, margins, eval_pairs, eval_rows = load_reward_data(cfg, enc, block_size)
    pad_id = special_id(enc, "<|pad|>")

    # ---- optimizer and data order; then the run folder (a resume restores them here)
    optimizer = adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    batches = EpochBatches(len(pairs), cfg.batch_size, seed=cfg.seed + 1)  # B pair indices per step
    run.start(model=model, optimizer=optimizer, data=batches)
    eval_acc = run.resumed_value("eval_accuracy", None)  # the last held-out accuracy, logged every row
    stats = run.resumed_value("stats", {})
    final_eval = None  # the held-out rewards after the last step, for samples.txt and the accuracy by kind
    print(f"{len(pairs)} training pairs{' with margins' if margins is not None else ''}, {len(eval_pairs)} held-out"
          + ("" if eval_pairs else " (no --eval-data: held-out accuracy is not measured)"))

    # ---- the loop
    model.train()
    for step in run.steps():
        lr = set_lr(optimizer, cosine_lr(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                         min_lr_ratio=cfg.min_lr_ratio))
        idx = next(batches)  # B pair indices, the same on every process
        B = len(idx)
        stats = {k: 0.0 for k in ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected")}
        for mb in run.micro_batches(idx, cfg.micro_batch_size):  # this process's pairs, a micro-batch at a time
            b = len(mb)
            ids, last = sequence_batch([pairs[i][0][0] for i in mb] + [pairs[i][1][0] for i in mb], pad_id)
            r = reward_scores(model, ids, last)  # (2b,), chosen rows first
            m = margins[mb].to(device) if margins is not None else None
            losses = reward_loss(r[:b], r[b:], m, cfg.center_coef)  # (b,)
            loss = losses.mean() * b / B  # the loss is a mean over the batch's pairs: this micro-batch's share
            run.check(loss, "loss")
            loss.backward()
            rc, rr = r[:b].detach(), r[b:].detach()
            for k, v in (("loss", losses.mean()), ("accuracy", (rc > rr).float().mean()),
                         ("margin", (rc - rr).mean()), ("rewards/chosen", rc.mean()), ("rewards/rejected", rr.mean())):
                stats[k] += v.item() * b / B
        grad_norm = run.optimizer_step(model, optimizer, cfg.grad_clip)
        stats = {k: run.sum(v) for k, v in stats.items()}

        if eval_pairs and run.eval_due(cfg.eval_every):
            eval_chosen, eval_rejected = final_eval = pair_rewards(model, eval_pairs, pad_id)  # (M,) each
            run.check(torch.cat([eval_chosen, eval_rejected]), "held-out rewards")
            eval_acc = (eval_chosen > eval_rejected).float().mean().item()
        held = {"eval_accuracy": eval_acc} if eval_pairs else {}
        run.log(**stats, **held, lr=lr, grad_norm=grad_norm, steps_per_s=run.step / run.elapsed)
        run.end_step(eval_accuracy=eval_acc, stats=stats)

    # ---- the outputs: model.pt (kind "reward_model"), samples.txt (the held-out pairs' rewards), summary.json
    summary = run.summary(**stats, eval_accuracy=eval_acc if eval_pairs else None)
    if eval_pairs and run.done:
        chosen, rejected = final_eval if final_eval is not None else pair_rewards(model, eval_pairs, pad_id)
        summary["eval_accuracy_by_kind"] = accuracy_by_kind(eval_rows, chosen > rejected)
    if run.finish(model_checkpoint(model, ckpt["tokenizer"], run.step, kind=KIND), summary=summary,
                  samples=(lambda path: write_samples(path, eval_rows, chosen, rejected)) if eval_pairs else None):
        held = f"held-out accuracy {eval_acc:.3f}" if eval_pairs else "no held-out pairs"
        print(f"reward_model done: loss {stats['loss']:.3f}, accuracy {stats['accuracy']:.3f}, {held}, "
              f"{run.elapsed:.0f} s on {device}")
        if eval_pairs:
            print("held-out accuracy by kind: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                            summary["eval_accuracy_by_kind"].items()))
    return summary


def load_reward_data(cfg: Config, enc, block_size: int):
    """The training pairs (tokenized twice with the chat template, no targets: a reward model reads the last
    token) with their margins (None without a "margin" field), and the held-out pairs with their rows (for the
    accuracy by kind). Every file is checked here, its line named, before OUT is touched."""
    if not cfg.data and not (DATA_DIR / "prefs.jsonl").exists():
        build_world(DATA_DIR)
    data_path = cfg.data or DATA_DIR / "prefs.jsonl"
    lines, eval_lines = [], []  # each pair's line in its file, for error messages
    rows = load_prefs(data_path, lines)[:cfg.max_pairs or None]
    margins = load_margins(rows, lines, data_path)
    pairs = tokenize_pairs(enc, rows, block_size, str(data_path), lines, targets=False)  # <= block_size tokens
    eval_path = cfg.eval_data or ("" if cfg.data else DATA_DIR / "eval_prefs.jsonl")
    eval_rows = load_prefs(eval_path, eval_lines) if eval_path else []
    eval_pairs = tokenize_pairs(enc, eval_rows, block_size, str(eval_path), eval_lines, targets=False)
    return pairs, margins, eval_pairs, eval_rows


def accuracy_by_kind(rows: list[dict], right: torch.Tensor) -> dict[str, float]:
    """Held-out accuracy per "domain/pair_type" (the world's fields; "-" where a pair has none)."""
    groups: dict[str, list[float]] = {}
    for r, ok in zip(rows, right.tolist()):
        groups.setdefault(f"{r.get('domain', '-')}/{r.get('pair_type', '-')}", []).append(float(ok))
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


if __name__ == "__main__":
    main(train, Config, PRESETS)
