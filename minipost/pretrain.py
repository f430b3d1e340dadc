"""Pretraining: teach a randomly initialised GPT to predict the next token.

    L(theta) = - 1/N * sum_t log pi_theta(x_t | x_<t)                      (next-token cross-entropy)

over packed windows of the world's corpus (or your own text). Everything later in minipost starts from the
model this file writes: post-training only *reshapes* what pretraining put in, which is why the report card
probes the base model's knowledge before any chat data is seen.

The loop is nanoGPT's: AdamW (decoupled weight decay, not on biases/LayerNorms), linear warmup then cosine
decay, gradient clipping, exact gradient accumulation over micro-batches, bf16 autocast on CUDA, optional
torch.compile. The log-probs go through `minipost.logprobs.token_logprobs`, the op every objective shares; the
held-out loss is `heldout.heldout_loss`, the report card's val_loss.

Batches depend on (seed, step) only: step s draws batch_size random windows from a generator seeded with
seed * 100003 + s. So a resumed run draws exactly the batches the uninterrupted one would have, and
micro_batch_size only changes how the same windows are split into forward passes.

What the loop leaves out, here and in every objective file: torchrun (each process's share of a batch),
the run folder (previous/, inputs.json, its lock), resume (weights, optimizer, every RNG, data position, step,
clock), the log/eval/save cadence, the finite checks, the optimizer step (gradient all-reduce, clip, step,
zero) and the outputs (model.pt, samples.txt). They go through `run`, the one object of minipost/harness/run.py,
so that train() reads batch -> forward -> loss -> backward -> run.optimizer_step() -> run.log().

Run:  python -m minipost.pretrain --out runs/pretrain            (the defaults: nano, a few minutes on a laptop CPU)
      python -m minipost.pretrain --out runs/pretrain --resume true   (continue an interrupted run exactly)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minipost.common import DATA_DIR, InputError, autocast, field
from minipost.data import load_texts, pack, packed_batch, per_domain
from minipost.harness import Run, RunConfig, main
from minipost.heldout import heldout_loss, load_probes, write_samples
from minipost.logprobs import token_logprobs
from minipost.model import GPT, PRESETS as MODEL_PRESETS, GPTConfig
from minipost.checkpoints import check_same_tokenizer, load_model, model_checkpoint
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.tokenizer import VOCAB_SIZES, get_tokenizer
from minipost.world import build as build_world


@dataclass
class Config(RunConfig):
    """Pretrain a tiny GPT on the synthetic world's corpus (or your own text). The defaults are the nano preset."""
    preset: str = field("nano", "model size: nano (~1M parameters, laptop CPU) or small (~11M, one GPU)",
                        choices=["nano", "small"])
    out: str = field("runs/pretrain", "output folder: config.json, inputs.json, metrics.jsonl, state.pt, "
                                     "model.pt, samples.txt, summary.json")
    data: str = field("", "training text: JSONL of {'text'} or a .txt file (default: the world's corpus)")
    val_data: str = field("", "held-out text in the same form (default: the world's pretrain_val.jsonl)")
    init: str = field("", "start from this checkpoint's weights (and size) instead of random init")
    tokenizer: str = field("nano", "tokenizer name (data/tokenizer_<name>.tiktoken)", choices=sorted(VOCAB_SIZES))
    max_steps: int = field(1600, "optimizer steps (the learning-rate schedule spans these)", min=1)
    batch_size: int = field(16, "sequences per optimizer step", min=1)
    micro_batch_size: int = field(0, "sequences per forward/backward (0: the whole batch); exact gradient "
                                     "accumulation, the same result up to float rounding", min=0)
    block_size: int = field(256, "tokens per sequence (at most the model's block_size: nano 256, small 512)", min=1)
    lr: float = field(2e-3, "peak learning rate", gt=0)
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak", min=0, max=1)
    warmup_steps: int = field(50, "linear warmup steps", min=0)
    weight_decay: float = field(0.1, "AdamW weight decay on matrices (not biases, LayerNorms)", min=0)
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)", min=0)
    eval_every: int = field(400, "steps between held-out loss evaluations (0: only at the end)", min=0)
    eval_windows: int = field(64, "held-out windows of block_size tokens per evaluation (64: the report card's)",
                              min=1)
    log_every: int = field(10, "steps between metrics.jsonl rows", min=1)
    save_every: int = field(400, "steps between OUT/state.pt saves (what --resume continues from)", min=1)
    logprobs_impl: str = field("auto", "token_logprobs implementation",
                               choices=["auto", "reference", "chunked", "triton"])
    compile: bool = field(False, "torch.compile the model")


PRESETS = {
    "nano": {},
    "small": dict(preset="small", max_steps=3000, batch_size=32, block_size=512, lr=1e-3, tokenizer="small"),
}


def next_token_loss(logits, targets, impl="auto"):
    """Mean of -log pi(target) over every position. logits (B, T, V), targets (B, T) -> scalar (float32)."""
    return -token_logprobs(logits, targets, impl=impl).mean()


def train(cfg: Config) -> dict:
    run = Run(cfg, "pretrain")  # torchrun ranks, CPU threads, seeds, the run folder: minipost/harness/run.py
    run.shard(cfg.batch_size)  # torchrun: a global batch must split evenly over the processes (checked now)

    # ---- data: the world's corpus unless you pass your own; every file is checked before OUT is touched
    enc, train_stream, val_stream, probes = load_corpus(cfg)

    # ---- model and optimizer
    if cfg.init:
        model, init_enc, _ = load_model(cfg.init)
        check_same_tokenizer(enc, init_enc, f"--tokenizer {cfg.tokenizer}", cfg.init)
    else:
        model = GPT(GPTConfig(vocab_size=enc.n_vocab, **MODEL_PRESETS[cfg.preset]))
    if cfg.block_size > model.cfg.block_size:
        raise InputError(f"--block-size {cfg.block_size}: the model ({cfg.init or cfg.preset + ' preset'}) sees at "
                         f"most {model.cfg.block_size} tokens")
    model.to(run.device)
    optimizer = adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=run.device)
    fwd = torch.compile(model) if cfg.compile else model
    print(f"model: {model.num_params() / 1e6:.2f}M parameters on {run.device}")
    run.start(model=model, optimizer=optimizer)  # a resume restores these, the RNGs, the step and the clock
    tokens_seen, val_loss = run.resumed_value("tokens_seen", 0), run.resumed_value("val_loss", None)

    # ---- the loop
    model.train()
    for step in run.steps():
        lr = set_lr(optimizer, cosine_lr(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                         min_lr_ratio=cfg.min_lr_ratio))
        batch_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + step)  # batches depend on (seed, step) only
        batch_x, batch_y = packed_batch(train_stream, cfg.batch_size, cfg.block_size, batch_gen)  # (B, T) each
        loss_sum = 0.0
        for rows in run.micro_batches(torch.arange(cfg.batch_size), cfg.micro_batch_size):  # this process's rows
            x, y = batch_x[rows].to(run.device), batch_y[rows].to(run.device)  # (b, T) each
            with autocast(run.device):
                logits = fwd(x)  # (b, T, V)
            # every window has T targets, so the b/B share of the batch mean makes the sum the full-batch mean
            loss = next_token_loss(logits, y, cfg.logprobs_impl) * (len(x) / cfg.batch_size)
            run.check(loss, "loss")
            loss.backward()
            loss_sum += loss.item()
        grad_norm = run.optimizer_step(model, optimizer, cfg.grad_clip)
        tokens_seen += cfg.batch_size * cfg.block_size

        if run.eval_due(cfg.eval_every):
            val_loss = heldout_loss(model, val_stream, windows=cfg.eval_windows, block_size=cfg.block_size,
                                    impl=cfg.logprobs_impl)
            run.check(val_loss, "val_loss")
        run.log(loss=run.sum(loss_sum), val_loss=val_loss, lr=lr, grad_norm=grad_norm,
                tokens_per_s=tokens_seen / run.elapsed)
        run.end_step(tokens_seen=tokens_seen, val_loss=val_loss)

    # ---- the outputs later stages read: model.pt, samples.txt, summary.json
    summary = run.summary(val_loss=val_loss, tokens_per_s=tokens_seen / max(run.elapsed, 1e-9),
                          params=model.num_params())
    if run.finish(model_checkpoint(model, cfg.tokenizer, run.step), summary=summary,
                  samples=lambda path: write_samples(model, enc, path, probes, chat=False)):
        print(f"pretrain done: held-out loss {val_loss:.3f}, {summary['tokens_per_s']:,.0f} tokens/s, "
              f"{run.elapsed:.0f} s on {run.device}")
    return summary


def load_corpus(cfg: Config):
    """The tokenizer, the training and held-out token streams ((N,) and (M,)), and the probes samples.txt
    answers; the world is built first if data/ lacks it. A file too short for one window is refused."""
    train_path = cfg.data or DATA_DIR / "pretrain.jsonl"
    val_path = cfg.val_data or DATA_DIR / "pretrain_val.jsonl"
    if not all((DATA_DIR / f).exists() for f in ("pretrain.jsonl", "pretrain_val.jsonl", "probes.jsonl")):
        build_world(DATA_DIR)
    enc = get_tokenizer(cfg.tokenizer)
    train_stream = pack(enc, load_texts(train_path))  # (N,)
    val_stream = pack(enc, load_texts(val_path))  # (M,)
    for path, stream in ((train_path, train_stream), (val_path, val_stream)):
        if len(stream) < cfg.block_size + 2:
            raise InputError(f"{path}: {len(stream)} tokens, too few for one window of --block-size "
                             f"{cfg.block_size} (+1 target)")
    probes = per_domain(load_probes(DATA_DIR / "probes.jsonl"), 4)
    print(f"train tokens {len(train_stream):,}  held-out tokens {len(val_stream):,}  vocab {enc.n_vocab}")
    return enc, train_stream, val_stream, probes


if __name__ == "__main__":
    main(train, Config, PRESETS)
