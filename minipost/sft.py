"""Supervised fine-tuning (SFT): teach the base model to answer in the chat format by imitating curated answers.

    L(theta) = - 1/N * sum_{i, t : m_it = 1} log pi_theta(y_it | y_i,<t)        N = sum_{i, t} m_it

where y_i is a whole rendered conversation (`<|user|>question<|end|><|assistant|>answer<|end|>`) and the loss
mask m_it is 1 exactly on the assistant's answer tokens *and the <|end|> that closes them*. Prompt tokens are
context, not targets: we want pi(answer | question), not a model of users. The <|end|> target is what teaches
the model to stop: at generation time <|end|> is the stop token, and a model never trained to emit it rambles
until max_new_tokens. This is the "instruction tuning" stage of InstructGPT (Ouyang et al. 2022, sec. 3.5) and
of every chat model since; the loss is plain next-token cross-entropy, only the mask is new.

Token-weighted averaging. N counts target tokens in the whole optimizer step, across all micro-batches of
gradient accumulation. Each micro-batch contributes (its sum of token losses) / N, so the accumulated gradient
is *exactly* the gradient of one big batch (tests/test_sft.py checks it). Averaging each micro-batch first and
then the micro-batch means (the common bug) over-weights the tokens of micro-batches with short answers.

Choices and deviations, all switchable in `Config`:
- packing (`pack`, off by default): several conversations are concatenated into one row of up to block_size + 1
  tokens, so fewer pad tokens are computed. Attention is not reset at conversation boundaries (nanochat packs
  this way too); the loss mask is unchanged. TRL 1.16 packs only when asked too, and its default packing
  ("bfd") restarts position ids at each conversation, which keeps attention inside it on FlashAttention-style
  kernels.
- pretraining mix (`ptx_coef`): optionally add ptx_coef * (next-token loss on a packed batch of pretraining
  text) to every step, the "pretraining mix" InstructGPT uses in PPO-ptx (their eq. 2) to limit forgetting.
  Logged as `ptx_loss`; `val_loss` (held-out pretraining text) shows what SFT costs the base model. The defaults
  use it (ptx_coef 1; why, measured: docs/faq.md, "Why mix pretraining text into SFT?").
- the learning-rate schedule and optimizer are the shared ones (`optim.cosine_lr`, `optim.adamw`); `val_loss` is
  `heldout.heldout_loss` with the report card's 64 windows of 256 tokens, so it equals the card's val_loss of the
  same checkpoint.

What the loop leaves out: torchrun, the run folder, resume, the log/eval/save cadence, the finite checks, the optimizer
step (gradient all-reduce, clip, step) and the outputs go through `run` (minipost/harness/run.py).

Run:  python -m minipost.sft --init runs/pretrain/model.pt --out runs/sft          (the defaults: nano, ~3 min on CPU)
      python -m minipost.sft --init BASE.pt --data my_chats.jsonl --out runs/my_sft   (your own data, TRL format)
      python -m minipost.sft --init runs/pretrain/model.pt --out runs/sft --resume true  (continue exactly)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from minipost.common import DATA_DIR, InputError, autocast, field, read_jsonl
from minipost.data import (IGNORE, EpochBatches, collate, load_chats, load_texts, num_targets, pack, pack_examples,
                           packed_batch, per_domain, tokenize_chats)
from minipost.harness import Run, RunConfig, logprobs_impl_field, main
from minipost.heldout import heldout_loss, write_samples
from minipost.lora import LoRAConfig, add_lora_from_flags, trainable, training_bytes
from minipost.checkpoints import load_init, model_checkpoint
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.tokenizer import special_id
from minipost.world import build as build_world


@dataclass
class Config(LoRAConfig, RunConfig):
    """Supervised fine-tuning on chat data: loss on the assistant's tokens only. The defaults are the nano preset."""
    out: str = field("runs/sft", "output folder: config.json, inputs.json, metrics.jsonl, state.pt, "
                                     "model.pt, samples.txt, summary.json")
    init: str = field("runs/pretrain/model.pt", "the base model to fine-tune: a model.pt, or hf:PATH (a Hugging "
                                                "Face folder)")
    data: str = field("", "chat data: JSONL of {'messages'} or {'prompt', 'completion'}, plain or conversational "
                          "(TRL's forms), or GSM8K's {'question', 'answer'} (default: the world's)")
    max_steps: int = field(300, "optimizer steps", min=1)
    batch_size: int = field(32, "rows per optimizer step (conversations, or packed rows with --pack)", min=1)
    micro_batch_size: int = field(0, "rows per forward/backward (0: the whole batch); token-weighted, so the same "
                                     "gradient as one batch up to float rounding", min=0)
    block_size: int = field(256, "longest row in tokens (at most the model's block_size); longer chats are cut",
                            min=1)
    pack: bool = field(False, "pack several conversations into each row of block_size tokens")
    ptx_coef: float = field(1.0, "weight of a next-token loss on pretraining text mixed into every step (0: off)",
                            min=0)
    ptx_batch_size: int = field(4, "pretraining windows of block_size tokens per step when ptx_coef > 0", min=1)
    lr: float = field(5e-4, "peak learning rate", gt=0)
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak", min=0, max=1)
    warmup_steps: int = field(20, "linear warmup steps", min=0)
    weight_decay: float = field(0.0, "AdamW weight decay on matrices", min=0)
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)", min=0)
    eval_every: int = field(100, "steps between held-out pretraining-loss evaluations (0: only at the end)", min=0)
    eval_windows: int = field(64, "held-out windows of 256 tokens per evaluation (64: the report card's val_loss)",
                              min=1)
    log_every: int = field(10, "steps between metrics.jsonl rows", min=1)
    save_every: int = field(100, "steps between OUT/state.pt saves (what --resume continues from)", min=1)
    logprobs_impl: str = logprobs_impl_field()


PRESETS = {
    "nano": {},
    "small": dict(preset="small", max_steps=600, batch_size=64, block_size=512, lr=3e-4),
    "hf": dict(preset="hf", max_steps=500, batch_size=16, micro_batch_size=4, block_size=512, lr=1e-5, ptx_coef=0.0,
               checkpointing=True),  # full fine-tuning of a ~0.5B model; with --lora-rank, --lr about 1e-4
}


def sft_loss(logp, targets, num_tokens=None):
    """Sum of -log pi(target) over the targets that count, divided by num_tokens.

    logp (B, T) float32 log-probs of the targets (model.logprobs), targets (B, T) with IGNORE (-100) where the
    loss mask is 0 -> scalar. num_tokens defaults to this batch's count of targets; pass the count of the whole
    optimizer step when accumulating gradients, so every token weighs the same whichever micro-batch it is in.
    """
    mask = targets != IGNORE  # (B, T)
    if num_tokens is None:
        num_tokens = mask.sum()
    return -(logp * mask).sum() / num_tokens


def train(cfg: Config) -> dict:
    run = Run(cfg, "sft")  # torchrun ranks, CPU threads, seeds, the run folder: minipost/harness/run.py
    run.shard(cfg.batch_size)  # torchrun: a global batch must split evenly over the processes (checked now)
    mine_ptx = run.shard(cfg.ptx_batch_size, "--ptx-batch-size") if cfg.ptx_coef else slice(None)

    # ---- model: the base checkpoint; its tokenizer comes with it
    model, enc, ckpt = load_init(cfg.init, run.device, hint="pretrain first (python -m minipost.pretrain)")
    block_size = min(cfg.block_size, model.cfg.block_size)
    if block_size < cfg.block_size:
        print(f"--block-size {cfg.block_size}: the model sees at most {block_size} tokens; using {block_size}")
    print(f"model: {model.num_params() / 1e6:.2f}M parameters from {cfg.init} on {run.device}")
    print(add_lora_from_flags(model, cfg))  # --lora-rank > 0: adapters, every other weight frozen
    trainable_params = trainable(model)

    # ---- data: conversations -> rows of (ids, loss_mask); the world's held-out text, corpus and eval prompts
    rows, val_stream, ptx_stream, sample_records = load_sft_data(cfg, enc, block_size, model.cfg.block_size)
    pad_id = special_id(enc, "<|pad|>")

    # ---- optimizer and data order; then the run folder (a resume restores all of them here)
    optimizer = adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=run.device)
    batches = EpochBatches(len(rows), cfg.batch_size, seed=cfg.seed + 1)
    ptx_gen = torch.Generator().manual_seed(cfg.seed + 2)
    run.start(model=model, optimizer=optimizer, data=batches, ptx_generator=ptx_gen)
    tokens_seen, val_loss = run.resumed_value("tokens_seen", 0), run.resumed_value("val_loss", None)

    # ---- the loop
    model.train()
    if not run.resumed:
        val_loss = heldout_loss(model, val_stream, windows=cfg.eval_windows, impl=cfg.logprobs_impl)
        run.log(0, val_loss=val_loss)  # before any step: what SFT starts from
    loss_sum, token_acc = run.resumed_value("loss", None), run.resumed_value("token_acc", 0.0)  # the last step's
    for step in run.steps():
        lr = set_lr(optimizer, cosine_lr(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                         min_lr_ratio=cfg.min_lr_ratio))
        batch = next(batches)  # batch_size row indices, the same on every process
        n_tok = sum(num_targets(rows[i]) for i in batch)  # target tokens in the whole step (every process's rows)
        loss_sum, correct = 0.0, 0
        for part in run.micro_batches(batch, cfg.micro_batch_size):  # this process's rows, a micro-batch at a time
            x, y = collate([rows[i] for i in part], pad_id)
            x, y = x.to(run.device), y.to(run.device)  # (b, T) each
            with autocast(run.device):  # log pi of every next token, and whether it is the model's first choice
                logp, top1 = model.logprobs(x, y.clamp(min=0), impl=cfg.logprobs_impl, top1=True)  # (b, T) each
            loss = sft_loss(logp, y, n_tok)  # this micro-batch's share of the step's mean
            run.check(loss, "loss")
            loss.backward()
            loss_sum += loss.item()
            correct += int((top1 & (y != IGNORE)).sum())  # token accuracy: greedy decoding writes the target
        ptx_loss = None
        if ptx_stream is not None:  # pretraining mix: a little next-token loss on the corpus (InstructGPT eq. 2)
            x, y = packed_batch(ptx_stream, cfg.ptx_batch_size, block_size, ptx_gen)  # (P, T) each
            x, y = x[mine_ptx], y[mine_ptx]  # this process's rows, its loss its share of the mean over all P
            with autocast(run.device):
                loss = -model.logprobs(x.to(run.device), y.to(run.device), impl=cfg.logprobs_impl).mean()
                loss = loss * (len(x) / cfg.ptx_batch_size)
            run.check(loss, "ptx_loss")
            (cfg.ptx_coef * loss).backward()
            ptx_loss = run.sum(loss.item())
        grad_norm = run.optimizer_step(model, optimizer, cfg.grad_clip)
        loss_sum, token_acc = run.sum(loss_sum), int(run.sum(correct)) / max(n_tok, 1)
        tokens_seen += n_tok

        if run.eval_due(cfg.eval_every):
            val_loss = heldout_loss(model, val_stream, windows=cfg.eval_windows, impl=cfg.logprobs_impl)
            run.check(val_loss, "val_loss")
        run.log(loss=loss_sum, token_acc=token_acc, tokens_seen=tokens_seen, ptx_loss=ptx_loss,
                val_loss=val_loss, lr=lr, grad_norm=grad_norm, steps_per_s=run.step / run.elapsed)
        run.end_step(tokens_seen=tokens_seen, val_loss=val_loss, loss=loss_sum, token_acc=token_acc)

    # ---- the outputs later stages read: model.pt (plain weights: LoRA adapters merged), samples.txt, summary.json
    summary = run.summary(loss=loss_sum, token_acc=token_acc, tokens_seen=tokens_seen,
                          val_loss=val_loss, trainable_params=trainable_params,
                          training_bytes=training_bytes(model, optimizer))
    if run.finish(model_checkpoint(model, ckpt["tokenizer"], run.step), summary=summary,
                  samples=lambda path: write_samples(model, enc, path, sample_records)):
        print(f"sft done: loss {loss_sum:.3f}, token accuracy {summary['token_acc']:.2f}, held-out pretraining "
              f"loss {val_loss:.3f}, {summary['steps_per_s']:.2f} steps/s, {run.elapsed:.0f} s on {run.device}")
    return summary


def load_sft_data(cfg: Config, enc, block_size: int, model_block_size: int):
    """The training rows (ids, loss_mask), rendered with the chat template and optionally packed, in a seeded
    order; the held-out pretraining stream (val_loss), the pretraining mix's stream (None without --ptx-coef) and
    a few eval prompts per domain (samples.txt). Every file is checked here, before OUT is touched."""
    world_files = ["pretrain.jsonl", "pretrain_val.jsonl", "eval.jsonl"] + ([] if cfg.data else ["sft.jsonl"])
    if not all((DATA_DIR / f).exists() for f in world_files):
        build_world(DATA_DIR)
    data_path = cfg.data or DATA_DIR / "sft.jsonl"
    chats = load_chats(data_path)
    examples = tokenize_chats(enc, chats, block_size)
    kept = [e for e in examples if sum(e[1][1:]) > 0]  # a chat cut before its answer has nothing to learn
    if not kept:
        raise InputError(f"{data_path}: every conversation is cut before its answer at --block-size {block_size}, "
                         "so there is nothing to train on")
    if len(kept) < len(examples):
        print(f"dropped {len(examples) - len(kept)} chats with no assistant token within {block_size} tokens")
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    # packing concatenates the chats in this seeded order; unpacked, a row is one chat in file order (the batches
    # are drawn from a shuffle of the rows every epoch either way: EpochBatches)
    rows = pack_examples([kept[i] for i in order], block_size) if cfg.pack else kept
    n_targets = sum(sum(m[1:]) for _, m in kept)
    print(f"{len(kept)} chats, {n_targets:,} target tokens, {len(rows)} rows"
          f"{' (packed)' if cfg.pack else ''}; one epoch = {len(rows) / cfg.batch_size:.1f} steps")
    val_stream = pack(enc, load_texts(DATA_DIR / "pretrain_val.jsonl"))  # (M,)
    if len(val_stream) < min(256, model_block_size) + 1:
        raise InputError(f"{DATA_DIR / 'pretrain_val.jsonl'}: {len(val_stream)} tokens, too few for one "
                         "held-out window")
    ptx_stream = pack(enc, load_texts(DATA_DIR / "pretrain.jsonl")) if cfg.ptx_coef > 0 else None  # (N,)
    if ptx_stream is not None and len(ptx_stream) < block_size + 2:
        raise InputError(f"{DATA_DIR / 'pretrain.jsonl'}: {len(ptx_stream)} tokens, too few for one window of "
                         f"{block_size} for the pretraining mix (--ptx-coef 0 turns it off)")
    sample_records = per_domain(read_jsonl(DATA_DIR / "eval.jsonl", required={"prompt": str, "domain": str}), 2)
    return rows, val_stream, ptx_stream, sample_records


if __name__ == "__main__":
    main(train, Config, PRESETS)
