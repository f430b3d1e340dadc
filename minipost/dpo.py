"""Direct Preference Optimization (DPO): learn from pairs "answer A is better than answer B" without a reward
model or RL, by pushing the policy's log-ratio against a frozen reference up on A and down on B.

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model", eq. 7:

    L_DPO(theta) = - E_(x, y_w, y_l) [ log sigmoid( beta * h ) ]
    h = (log pi_theta(y_w|x) - log pi_ref(y_w|x)) - (log pi_theta(y_l|x) - log pi_ref(y_l|x))

y_w is the chosen (preferred) answer, y_l the rejected one, pi_ref the frozen starting model (here the SFT
model), beta how far from it the policy may move. log pi(y|x) is the *sum* of the response tokens' log-probs
(the <|end|> closing the answer included, exactly the tokens SFT trained on); prompt tokens are context.
The paper's insight: the optimal policy of KL-regularised reward maximisation satisfies
r(x, y) = beta * log pi(y|x)/pi_ref(y|x) + const, so this log-ratio *is* an implicit reward, and L_DPO is the
Bradley-Terry likelihood of the preferences under it. We log it as rewards/chosen and rewards/rejected.

Reading the metrics: at step 0 the policy equals the reference, so every reward is 0 and the loss is
ln 2 = 0.693. rewards/margins (chosen - rejected) should grow and rewards/accuracies (the share of pairs with
chosen reward strictly above rejected) rise towards 1. (At step 1 it is not exactly 0: the reference's log-probs
were computed in differently padded batches, and float rounding of ~1e-6 breaks some of the ties.)
Both rewards often go *down* together (the policy
lowers the probability of both answers, the rejected one faster); watch logps/chosen for that.

Loss types (`dpo_loss(..., loss_type=)`), all functions of h:
    sigmoid  -log sigmoid(beta h)                                          DPO (Rafailov et al. 2023)
    ipo      (h - 1 / (2 beta))^2                                          IPO (Azar et al. 2023, eq. 17)
    hinge    max(0, 1 - beta h)                                            SLiC-HF (Zhao et al. 2023)
    robust   ((1 - e) * -log sigmoid(beta h) - e * -log sigmoid(-beta h)) / (1 - 2e)
             an unbiased loss when a fraction e of the labels is flipped   rDPO (Chowdhury et al. 2024)
             (e = `label_smoothing`, used only by robust)

Deviations and choices:
- IPO's h uses summed log-probs, as in the paper's equation (TRL averages over tokens for IPO).
- The reference's log-probs are computed once for every training and held-out pair before training starts
  (the reference never changes), so each step runs only the policy.
- The policy is trained with dropout off (the nano and small models have none): its log-probs are compared with
  the reference's, and noise in one side would show up as a fake reward.
- The reference defaults to the init checkpoint; `--ref` can name another.
- `rpo_alpha` (the presets use 1.0) adds rpo_alpha * (mean per-token NLL of the chosen answers) to the loss,
  as in RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1). Plain DPO only constrains the
  *difference* of log-ratios, so both log-probs can fall together; the NLL term keeps the chosen ones up.
  Measured on nano: plain DPO (beta 0.1, lr 3e-4) took logps/chosen from -7 to -35 and knowledge QA from 94% to
  10%; with rpo_alpha 1, lr 1e-4, beta 0.5 logps/chosen rose from -7 to -3 and no domain score fell by
  more than 4 points.

Run:  python -m minipost.dpo --init runs/sft/model.pt --out runs/dpo          (nano preset, ~2 min on CPU)
      python -m minipost.dpo --init SFT.pt --data my_prefs.jsonl --loss-type ipo --out runs/my_dpo
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minipost.common import (DATA_DIR, MetricsLogger, autocast, check_finite, field, parse_config, pick_device,
                             save_checkpoint, save_json, seed_everything)
from minipost.data import IGNORE, collate, load_prefs
from minipost.logprobs import token_logprobs
from minipost.model import load_model, model_checkpoint
from minipost.pretrain import lr_at, make_optimizer
from minipost.sft import epoch_batches, sample_prompts, write_chat_samples

LOSS_TYPES = ["sigmoid", "ipo", "hinge", "robust"]


@dataclass
class Config:
    """Direct Preference Optimization on (prompt, chosen, rejected) pairs against a frozen reference."""
    preset: str = field("nano", "model size and schedule: nano (laptop CPU) or small (one GPU)",
                        choices=["nano", "small"])
    out: str = field("runs/dpo", "output folder: config.json, metrics.jsonl, model.pt, samples.txt")
    init: str = field("runs/sft/model.pt", "the model to start from (usually the SFT model)")
    ref: str = field("", "the frozen reference model (default: the init checkpoint)")
    data: str = field("", "preference pairs: JSONL of {'prompt', 'chosen', 'rejected'} (default: the world's)")
    eval_data: str = field("", "held-out pairs for preference accuracy (default: the world's eval_prefs.jsonl)")
    max_pairs: int = field(0, "train on the first N pairs only (0: all); for quick experiments")
    beta: float = field(0.1, "strength of the pull towards the reference (the KL coefficient)")
    loss_type: str = field("sigmoid", "sigmoid (DPO), ipo, hinge or robust", choices=LOSS_TYPES)
    label_smoothing: float = field(0.0, "assumed share of flipped labels, in [0, 0.5); robust loss only")
    rpo_alpha: float = field(0.0, "weight of an extra per-token NLL on the chosen answers (RPO; 0: plain DPO)")
    max_steps: int = field(100, "optimizer steps")
    batch_size: int = field(32, "pairs per micro-batch")
    grad_accum: int = field(1, "micro-batches per optimizer step")
    block_size: int = field(256, "longest prompt + answer in tokens (at most the model's block_size)")
    lr: float = field(3e-4, "peak learning rate")
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = field(10, "linear warmup steps")
    weight_decay: float = field(0.0, "AdamW weight decay on matrices")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)")
    eval_every: int = field(50, "steps between held-out preference-accuracy evaluations")
    eval_pairs: int = field(256, "held-out pairs per evaluation")
    log_every: int = field(5, "steps between metrics.jsonl rows")
    logprobs_impl: str = field("auto", "token_logprobs implementation",
                               choices=["auto", "reference", "chunked", "triton"])
    seed: int = field(1337, "random seed (data order)")
    device: str = field("auto", "cuda, mps, cpu or auto")
    progress: bool = field(True, "show a tqdm progress bar")


PRESETS = {
    "nano": dict(preset="nano", max_steps=100, batch_size=32, block_size=256, lr=1e-4, beta=0.5, rpo_alpha=1.0),
    "small": dict(preset="small", max_steps=200, batch_size=64, block_size=512, lr=5e-5, beta=0.5, rpo_alpha=1.0),
}


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
             loss_type="sigmoid", label_smoothing=0.0):
    """Per-pair preference losses and implicit rewards. Every input is (B,): summed response log-probs.

    Returns (losses, chosen_rewards, rejected_rewards), each (B,); rewards = beta * (logp - ref_logp),
    detached (they are for logging, not for the gradient). See the module docstring for each loss type.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; use one of {LOSS_TYPES}")
    if label_smoothing and loss_type != "robust":
        raise ValueError(f"label_smoothing={label_smoothing} is only used by loss_type='robust', not {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,) log pi/pi_ref on y_w
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,) log pi/pi_ref on y_l
    h = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2  # regress h onto a fixed target margin 1/(2 beta): cannot run off
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # robust: subtract the loss of the flipped label, rescale so the expectation over flips is unbiased
        e = label_smoothing
        losses = ((1 - e) * -F.logsigmoid(beta * h) - e * -F.logsigmoid(-beta * h)) / (1 - 2 * e)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def response_logps(logits, targets, impl="auto"):
    """Sum of log pi(target) over the response tokens (targets != IGNORE), one number per row.

    logits (B, T, V), targets (B, T) -> (B,) float32.
    """
    mask = targets != IGNORE  # (B, T)
    logp = token_logprobs(logits, targets.clamp(min=0), impl=impl)  # (B, T)
    return (logp * mask).sum(dim=1)  # (B,)


def tokenize_pairs(enc, rows: list[dict], block_size: int, where: str = "") -> list[tuple]:
    """Each {"prompt", "chosen", "rejected"} row -> (chosen (ids, mask), rejected (ids, mask)), rendered with
    the chat template. prompt/chosen/rejected may be strings (a user turn, an assistant answer) or, as in TRL's
    conversational format, lists of messages."""
    from minipost.tokenizer import render_chat

    def as_messages(value, role, i, key):
        if isinstance(value, str):
            return [{"role": role, "content": value}]
        if isinstance(value, list):
            return value
        raise ValueError(f"{where}:{i + 1}: '{key}' must be a string or a list of messages, got "
                         f"{type(value).__name__}")

    pairs = []
    for i, row in enumerate(rows):
        prompt = as_messages(row["prompt"], "user", i, "prompt")
        pair = []
        for key in ("chosen", "rejected"):
            ids, mask = render_chat(enc, prompt + as_messages(row[key], "assistant", i, key))
            if len(ids) > block_size + 1:
                raise ValueError(f"{where}:{i + 1}: prompt + {key} is {len(ids)} tokens, more than "
                                 f"block_size + 1 = {block_size + 1}")
            pair.append((ids, mask))
        pairs.append(tuple(pair))
    return pairs


def pair_batch(pairs: list[tuple], pad_id: int):
    """B pairs -> one padded batch of 2B rows, chosen rows first: x (2B, T), y (2B, T)."""
    return collate([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


@torch.no_grad()
def all_logps(model, pairs: list[tuple], pad_id: int, device, impl="auto", batch_size=64):
    """Summed response log-probs of every pair -> (chosen (N,), rejected (N,)), float32 on the CPU."""
    chosen, rejected = [], []
    for s in range(0, len(pairs), batch_size):
        x, y = pair_batch(pairs[s:s + batch_size], pad_id)
        with autocast(device):
            logits = model(x.to(device))  # (2B, T, V)
        lp = response_logps(logits, y.to(device), impl).float().cpu()  # (2B,)
        chosen.append(lp[:len(lp) // 2])
        rejected.append(lp[len(lp) // 2:])
    return torch.cat(chosen), torch.cat(rejected)


@torch.no_grad()
def preference_accuracy(model, pairs, ref_chosen, ref_rejected, pad_id, device, impl="auto") -> float:
    """Share of pairs whose implicit reward log pi/pi_ref is strictly higher for the chosen answer."""
    chosen, rejected = all_logps(model, pairs, pad_id, device, impl)
    return ((chosen - ref_chosen) > (rejected - ref_rejected)).float().mean().item()


def train(cfg: Config) -> dict:
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", asdict(cfg))
    seed_everything(cfg.seed)

    # ---- models: the policy starts as the init checkpoint; the reference is a frozen copy of it
    for path in (cfg.init, cfg.ref):
        if path and not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such checkpoint; run SFT first "
                                    "(python -m minipost.sft --init runs/pretrain/model.pt --out runs/sft)")
    model, enc, ckpt = load_model(cfg.init, device)
    ref_model, _, _ = load_model(cfg.ref or cfg.init, device)  # load_model returns it in eval mode
    ref_model.requires_grad_(False)
    block_size = min(cfg.block_size, model.cfg.block_size)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters from {cfg.init} on {device}; "
          f"reference {cfg.ref or cfg.init}")

    # ---- data: each pair rendered twice with the chat template (prompt + chosen, prompt + rejected)
    from minipost.tokenizer import special_id

    if not cfg.data and not (DATA_DIR / "prefs.jsonl").exists():
        from minipost.world import build as build_world
        build_world(DATA_DIR)
    data_path = cfg.data or DATA_DIR / "prefs.jsonl"
    rows = load_prefs(data_path)[:cfg.max_pairs or None]
    pairs = tokenize_pairs(enc, rows, block_size, str(data_path))
    eval_path = cfg.eval_data or (DATA_DIR / "eval_prefs.jsonl" if not cfg.data else "")
    eval_pairs = tokenize_pairs(enc, load_prefs(eval_path), block_size, str(eval_path))[:cfg.eval_pairs] if (
        eval_path and Path(eval_path).exists()) else []
    pad_id = special_id(enc, "<|pad|>")

    # ---- the reference's log-probs, once: it never changes
    t_ref = time.time()
    ref_chosen, ref_rejected = all_logps(ref_model, pairs, pad_id, device, cfg.logprobs_impl)  # (N,) each
    eval_ref = all_logps(ref_model, eval_pairs, pad_id, device, cfg.logprobs_impl) if eval_pairs else None
    del ref_model
    print(f"{len(pairs)} training pairs, {len(eval_pairs)} held-out pairs; reference log-probs in "
          f"{time.time() - t_ref:.1f} s")
    t0 = time.time()

    # ---- optimizer
    optimizer = make_optimizer(model, cfg, device)
    logger = MetricsLogger(out)
    batches = epoch_batches(len(pairs), cfg.batch_size, torch.Generator().manual_seed(cfg.seed + 1))

    # ---- the loop
    model.eval()  # dropout off (see the docstring); gradients flow as usual
    eval_acc = float("nan")
    bar = tqdm(range(cfg.max_steps), disable=not cfg.progress, desc="dpo")
    for step in bar:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        stats = {k: 0.0 for k in ("loss", "nll_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                  "rewards/accuracies", "logps/chosen", "logps/rejected")}
        for _ in range(cfg.grad_accum):
            idx = next(batches)  # B pair indices
            x, y = pair_batch([pairs[i] for i in idx], pad_id)
            x, y = x.to(device), y.to(device)  # (2B, T) each
            with autocast(device):
                logits = model(x)  # (2B, T, V)
            logps = response_logps(logits, y, cfg.logprobs_impl)  # (2B,)
            B = len(idx)
            losses, chosen_r, rejected_r = dpo_loss(
                logps[:B], logps[B:], ref_chosen[idx].to(device), ref_rejected[idx].to(device),
                beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)  # (B,) each
            loss = losses.mean()  # logged as `loss`: the DPO term alone
            nll = -logps[:B].sum() / (y[:B] != IGNORE).sum()  # per-token NLL of the chosen answers
            if cfg.rpo_alpha:  # RPO: also imitate the chosen answers; logged as `nll_loss`
                loss = loss + cfg.rpo_alpha * nll
            loss = loss / cfg.grad_accum
            check_finite(loss, step, out)
            loss.backward()
            for k, v in (("loss", losses.mean()), ("nll_loss", nll.detach()), ("rewards/chosen", chosen_r.mean()),
                         ("rewards/rejected", rejected_r.mean()), ("rewards/margins", (chosen_r - rejected_r).mean()),
                         ("rewards/accuracies", (chosen_r > rejected_r).float().mean()),
                         ("logps/chosen", logps[:B].detach().mean()), ("logps/rejected", logps[B:].detach().mean())):
                stats[k] += v.item() / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        if eval_ref is not None and (done % cfg.eval_every == 0 or done == cfg.max_steps):
            eval_acc = preference_accuracy(model, eval_pairs, *eval_ref, pad_id, device, cfg.logprobs_impl)
        if done % cfg.log_every == 0 or done == 1 or done == cfg.max_steps:
            elapsed = time.time() - t0
            logger.log(done, **stats, eval_pref_acc=eval_acc, lr=lr, grad_norm=grad_norm,
                       steps_per_s=done / elapsed, elapsed_s=elapsed)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", margin=f"{stats['rewards/margins']:.2f}",
                            acc=f"{stats['rewards/accuracies']:.2f}")
    bar.close()
    logger.close()
    elapsed = time.time() - t0
    save_checkpoint(out / "model.pt", model_checkpoint(model, ckpt["tokenizer"], cfg.max_steps))
    train_prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows if isinstance(r["prompt"], str)]
    write_chat_samples(model, enc, out / "samples.txt", sample_prompts(train_prompts), device)
    summary = {**stats, "eval_pref_acc": eval_acc, "seconds": elapsed,
               "steps_per_s": cfg.max_steps / max(elapsed, 1e-9), "device": str(device)}
    print(f"dpo done: loss {stats['loss']:.3f}, margin {stats['rewards/margins']:.2f}, held-out preference "
          f"accuracy {eval_acc:.3f}, {summary['steps_per_s']:.2f} steps/s, {elapsed:.0f} s on {device}")
    return summary


if __name__ == "__main__":
    train(parse_config(Config, presets=PRESETS))
