"""Pretraining: teach a randomly initialised GPT to predict the next token.

    L(theta) = - 1/N * sum_t log pi_theta(x_t | x_<t)                      (next-token cross-entropy)

over packed windows of the world's corpus (or your own text). Everything later in minipost starts from the
model this file writes: post-training only *reshapes* what pretraining put in, which is why the report card
probes the base model's knowledge before any chat data is seen.

The loop is nanoGPT's: AdamW (decoupled weight decay, not on biases/LayerNorms), linear warmup then cosine
decay, gradient clipping, gradient accumulation, bf16 autocast on CUDA, optional torch.compile. The log-probs
go through `minipost.logprobs.token_logprobs`, the op every objective shares.

Run:  python -m minipost.pretrain --out runs/pretrain            (nano preset, a few minutes on a laptop CPU)
      python -m minipost.pretrain --out runs/pretrain --resume true   (continue an interrupted run exactly)
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from minipost.common import (DATA_DIR, MetricsLogger, autocast, check_finite, field, load_checkpoint,
                             parse_config, pick_device, read_jsonl, rng_state, save_checkpoint, save_json,
                             seed_everything, set_rng_state)
from minipost.data import load_texts, pack, packed_batch, packed_eval_batches
from minipost.logprobs import token_logprobs
from minipost.model import GPT, PRESETS as MODEL_PRESETS, GPTConfig, model_checkpoint


@dataclass
class Config:
    """Pretrain a tiny GPT on the synthetic world's corpus (or your own text)."""
    preset: str = field("nano", "model size and schedule: nano (laptop CPU) or small (one GPU)",
                        choices=["nano", "small"])
    out: str = field("runs/pretrain", "output folder: config.json, metrics.jsonl, model.pt, samples.txt")
    data: str = field("", "training text: JSONL of {'text'} or a .txt file (default: the world's corpus)")
    val_data: str = field("", "held-out text in the same form (default: the world's pretrain_val.jsonl)")
    init: str = field("", "start from this checkpoint's weights instead of random init")
    resume: bool = field(False, "continue from OUT/state.pt (optimizer, schedule, RNG and step restored)")
    max_steps: int = field(1600, "optimizer steps (the learning-rate schedule spans these)")
    stop_after: int = field(0, "checkpoint and stop after this many steps, to --resume later (0: run to the end)")
    batch_size: int = field(16, "sequences per micro-batch")
    grad_accum: int = field(1, "micro-batches per optimizer step")
    block_size: int = field(256, "tokens per sequence (at most the model's block_size)")
    lr: float = field(2e-3, "peak learning rate")
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak")
    warmup_steps: int = field(50, "linear warmup steps")
    weight_decay: float = field(0.1, "AdamW weight decay on matrices (not biases, LayerNorms)")
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)")
    eval_every: int = field(400, "steps between held-out loss evaluations and checkpoints")
    eval_windows: int = field(64, "held-out windows of block_size tokens per evaluation")
    log_every: int = field(10, "steps between metrics.jsonl rows")
    tokenizer: str = field("nano", "tokenizer name (data/tokenizer_<name>.tiktoken)")
    logprobs_impl: str = field("auto", "token_logprobs implementation",
                               choices=["auto", "reference", "chunked", "triton"])
    compile: bool = field(False, "torch.compile the model")
    seed: int = field(1337, "random seed (init, batches)")
    device: str = field("auto", "cuda, mps, cpu or auto")
    progress: bool = field(True, "show a tqdm progress bar")


PRESETS = {
    "nano": dict(preset="nano", max_steps=1600, batch_size=16, block_size=256, lr=2e-3, tokenizer="nano"),
    "small": dict(preset="small", max_steps=3000, batch_size=32, block_size=512, lr=1e-3, tokenizer="small"),
}


def next_token_loss(logits, targets, impl="auto"):
    """Mean of -log pi(target) over every position. logits (B, T, V), targets (B, T) -> scalar (float32)."""
    return -token_logprobs(logits, targets, impl=impl).mean()


def lr_at(step: int, cfg) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(model, cfg, device):
    """AdamW with weight decay on 2-D weights only (embeddings and matmuls), as in GPT-2 / nanoGPT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


@torch.no_grad()
def evaluate(model, stream, cfg, device) -> float:
    """Mean next-token loss over the first cfg.eval_windows held-out windows (deterministic)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in packed_eval_batches(stream[:cfg.eval_windows * cfg.block_size + 1], cfg.batch_size, cfg.block_size):
        x, y = x.to(device), y.to(device)
        with autocast(device):
            logits = model(x)
        total += next_token_loss(logits, y, cfg.logprobs_impl).item() * y.numel()
        count += y.numel()
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def write_samples(model, enc, path, prompts, device, max_new_tokens=40):
    """Greedy continuations of a few prompts, so you can read what the model learned."""
    from minipost.model import left_pad
    from minipost.tokenizer import encode_text, special_id

    model.eval()
    ids, mask = left_pad([encode_text(enc, p) for p in prompts], pad_id=special_id(enc, "<|pad|>"), device=device)
    toks, m, _ = model.generate(ids, mask, max_new_tokens=max_new_tokens, temperature=0,
                                stop_token=special_id(enc, "<|endoftext|>"))
    lines = []
    for p, t, mm in zip(prompts, toks.tolist(), m.tolist()):
        text = enc.decode([tok for tok, keep in zip(t, mm) if keep])
        lines.append(f"### {p}\n{p}{text}\n")
    Path(path).write_text("\n".join(lines), encoding="utf-8")
    model.train()
    return lines


def train(cfg: Config) -> dict:
    from minipost.tokenizer import get_tokenizer
    from minipost.world import build as build_world

    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", asdict(cfg))
    seed_everything(cfg.seed)

    # ---- data: the world's corpus unless you pass your own
    if not cfg.data and not (DATA_DIR / "pretrain.jsonl").exists():
        build_world(DATA_DIR)
    enc = get_tokenizer(cfg.tokenizer)
    train_stream = pack(enc, load_texts(cfg.data or DATA_DIR / "pretrain.jsonl"))  # (N,)
    val_stream = pack(enc, load_texts(cfg.val_data or DATA_DIR / "pretrain_val.jsonl"))
    print(f"train tokens {len(train_stream):,}  held-out tokens {len(val_stream):,}  vocab {enc.n_vocab}")

    # ---- model and optimizer
    mcfg = GPTConfig(vocab_size=enc.n_vocab, **{**MODEL_PRESETS[cfg.preset], "block_size": max(
        cfg.block_size, MODEL_PRESETS[cfg.preset]["block_size"])})
    model = GPT(mcfg)
    if cfg.init:
        model.load_state_dict(load_checkpoint(cfg.init)["model"])
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    step = 0
    if cfg.resume:
        if not (out / "state.pt").exists():
            raise FileNotFoundError(f"--resume: no {out / 'state.pt'} to resume from")
        state = load_checkpoint(out / "state.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
        print(f"resumed from {out / 'state.pt'} at step {step}")
    print(f"model: {model.num_params() / 1e6:.2f}M parameters on {device}")
    fwd = torch.compile(model) if cfg.compile else model
    if step > 0:  # drop rows logged after the checkpoint we resume from (a crash can leave some)
        rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        kept = [r for r in rows if json.loads(r)["step"] <= step]
        (out / "metrics.jsonl").write_text("".join(r + "\n" for r in kept))
    logger = MetricsLogger(out, append=step > 0)

    def checkpoint(step):  # model.pt: what later stages load; state.pt: everything needed to resume exactly
        save_checkpoint(out / "model.pt", model_checkpoint(model, cfg.tokenizer, step))
        save_checkpoint(out / "state.pt", {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                           "rng": rng_state(), "step": step, "config": asdict(cfg)})

    # ---- the loop
    model.train()
    t0, tokens_seen, val_loss = time.time(), 0, float("nan")
    bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, disable=not cfg.progress,
               desc="pretrain")
    for step in bar:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + step)  # batches depend on (seed, step) only
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            x, y = packed_batch(train_stream, cfg.batch_size, cfg.block_size, batch_gen)
            x, y = x.to(device), y.to(device)  # (B, T) each
            with autocast(device):
                logits = fwd(x)  # (B, T, V)
            loss = next_token_loss(logits, y, cfg.logprobs_impl) / cfg.grad_accum
            check_finite(loss, step, out)
            loss.backward()
            loss_sum += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += cfg.grad_accum * cfg.batch_size * cfg.block_size

        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            val_loss = evaluate(model, val_stream, cfg, device)
            checkpoint(done)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            elapsed = time.time() - t0
            logger.log(done, loss=loss_sum, val_loss=val_loss, lr=lr, grad_norm=grad_norm,
                       tokens_per_s=tokens_seen / elapsed, elapsed_s=elapsed)
            bar.set_postfix(loss=f"{loss_sum:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tokens_seen / elapsed:,.0f}")
        if cfg.stop_after and done == cfg.stop_after:
            checkpoint(done)
            print(f"stopping after step {done}; continue with --resume true")
            break
    bar.close()
    logger.close()
    elapsed = time.time() - t0
    summary = {"val_loss": val_loss, "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "seconds": elapsed,
               "params": model.num_params(), "device": str(device)}
    probes = DATA_DIR / "probes.jsonl"
    samples = [r["prompt"] for r in read_jsonl(probes)[::50]][:8] if probes.exists() else ["The"]
    write_samples(model, enc, out / "samples.txt", samples, device)
    print(f"pretrain done: held-out loss {val_loss:.3f}, {summary['tokens_per_s']:,.0f} tokens/s, "
          f"{elapsed:.0f} s on {device}")
    return summary


if __name__ == "__main__":
    train(parse_config(Config, presets=PRESETS))
