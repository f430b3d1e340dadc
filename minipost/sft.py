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
  tokens, so fewer pad tokens are computed. As in most SFT code (TRL's default packing, nanochat), attention is
  not reset at conversation boundaries: a conversation can attend to the one before it in the row. The loss
  mask is unchanged, so only the context differs.
- pretraining mix (`ptx_coef`): optionally add ptx_coef * (next-token loss on a packed batch of pretraining
  text) to every step, the "pretraining mix" InstructGPT uses in PPO-ptx (their eq. 2) to limit forgetting.
  Logged as `ptx_loss`; `val_loss` (held-out pretraining text) shows what SFT costs the base model. The defaults
  use it (ptx_coef 1): on nano, 100 SFT steps at lr 1e-3 *without* it raised the held-out pretraining loss (then
  measured on 32 windows) from 1.08 to 2.90; with it (lr 5e-4) the loss stayed at 0.88-1.00 and held-out
  knowledge QA reached 94%.
- the learning-rate schedule and optimizer are the shared ones (`optim.cosine_lr`, `optim.adamw`); `val_loss` is
  `evals.heldout_loss` with the report card's 64 windows of 256 tokens, so it equals the card's val_loss of the
  same checkpoint.

Run:  python -m minipost.sft --init runs/pretrain/model.pt --out runs/sft          (the defaults: nano, ~3 min on CPU)
      python -m minipost.sft --init BASE.pt --data my_chats.jsonl --out runs/my_sft   (your own data, TRL format)
      python -m minipost.sft --init runs/pretrain/model.pt --out runs/sft --resume true  (continue exactly)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from minipost import dist, threads
from minipost.common import (DATA_DIR, DEVICE_HELP, InputError, MetricsLogger, autocast, check_config, check_device,
                             check_finite, field, main, pick_device, read_jsonl, save_checkpoint, save_state,
                             seed_everything, start_run)
from minipost.data import (IGNORE, EpochBatches, collate, load_chats, load_texts, num_targets, pack, packed_batch,
                           tokenize_chats)
from minipost.evals import heldout_loss, per_domain, write_samples
from minipost.logprobs import token_logprobs
from minipost.lora import add_lora_from_flags, merge_lora, parse_targets, trainable, training_bytes
from minipost.model import load_model, model_checkpoint
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.tokenizer import special_id
from minipost.world import build as build_world


@dataclass
class Config:
    """Supervised fine-tuning on chat data: loss on the assistant's tokens only. The defaults are the nano preset."""
    preset: str = field("nano", "schedule: nano (laptop CPU) or small (one GPU); the model's size comes from --init",
                        choices=["nano", "small"])
    out: str = field("runs/sft", "output folder: config.json, metrics.jsonl, state.pt, model.pt, samples.txt")
    init: str = field("runs/pretrain/model.pt", "the base model to fine-tune (a minipost checkpoint)")
    data: str = field("", "chat data: JSONL of {'messages'} or {'prompt', 'completion'} (default: the world's)")
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
    resume: bool = field(False, "continue from OUT/state.pt: weights, optimizer, schedule, RNG, data position and step")
    allow_config_change: bool = field(False, "with --resume, accept a config that differs from the saved run's")
    stop_after: int = field(0, "save state and stop after this many steps, to --resume later (0: run to the end)",
                            min=0)
    logprobs_impl: str = field("auto", "token_logprobs implementation",
                               choices=["auto", "reference", "chunked", "triton"])
    lora_rank: int = field(0, "LoRA: adapters of this rank on --lora-targets and every other weight frozen; model.pt "
                           "has them merged (0: full fine-tuning; minipost/lora.py)", min=0)
    lora_alpha: float = field(16.0, "LoRA scale: the update is (alpha / rank) B A", gt=0)
    lora_targets: str = field("attn,mlp", "linear layers that get LoRA adapters: attn, mlp, qkv, proj, fc",
                              check=parse_targets)
    seed: int = field(1337, "random seed (data order)", min=0, max=2**32 - 1)
    device: str = field("auto", DEVICE_HELP, check=check_device)
    progress: bool = field(True, "show a tqdm progress bar")
    threads: str = field("auto", threads.HELP, check=threads.parse_threads)

    def __post_init__(self):
        check_config(self)
        if self.micro_batch_size > self.batch_size:
            raise InputError(f"--micro-batch-size {self.micro_batch_size}: more than --batch-size {self.batch_size}")


PRESETS = {
    "nano": {},
    "small": dict(preset="small", max_steps=600, batch_size=64, block_size=512, lr=3e-4),
}


def sft_loss(logits, targets, num_tokens=None, impl="auto"):
    """Sum of -log pi(target) over the targets that count, divided by num_tokens.

    logits (B, T, V), targets (B, T) with IGNORE (-100) where the loss mask is 0 -> scalar (float32).
    num_tokens defaults to this batch's count of targets; pass the count of the whole optimizer step when
    accumulating gradients, so every token weighs the same whichever micro-batch it is in.
    """
    mask = targets != IGNORE  # (B, T)
    logp = token_logprobs(logits, targets.clamp(min=0), impl=impl)  # (B, T); IGNORE -> id 0, masked below
    if num_tokens is None:
        num_tokens = mask.sum()
    return -(logp * mask).sum() / num_tokens


@torch.no_grad()
def token_accuracy(logits, targets) -> tuple[int, int]:
    """(correct, counted): greedy argmax == target over the targets that count. logits (B, T, V)."""
    mask = targets != IGNORE  # (B, T)
    correct = (logits.argmax(dim=-1) == targets) & mask
    return int(correct.sum()), int(mask.sum())


def pack_examples(examples: list[tuple[list[int], list[int]]], block_size: int):
    """Greedily concatenate (ids, loss_mask) examples, in order, into rows of at most block_size + 1 tokens.

    A row of block_size + 1 tokens gives block_size (input, target) pairs. Examples are never split; an
    example longer than a row is already cut by `tokenize_chats`.
    """
    rows, ids, mask = [], [], []
    for e_ids, e_mask in examples:
        if ids and len(ids) + len(e_ids) > block_size + 1:
            rows.append((ids, mask))
            ids, mask = [], []
        ids, mask = ids + e_ids, mask + e_mask
    if ids:
        rows.append((ids, mask))
    return rows


def train(cfg: Config) -> dict:
    ranks = dist.setup(pick_device(cfg.device))  # torchrun: this process's rank and device (else one process)
    device = ranks.device
    print(threads.configure(cfg.threads))
    seed_everything(cfg.seed)
    mine = dist.shard(cfg.batch_size, ranks)  # this rank's rows of every global batch (all of them alone)
    mine_ptx = dist.shard(cfg.ptx_batch_size, ranks, "--ptx-batch-size") if cfg.ptx_coef else slice(None)
    out = Path(cfg.out)

    # ---- model: the base checkpoint; its tokenizer comes with it
    if not Path(cfg.init).exists():
        raise InputError(f"--init {cfg.init}: no such checkpoint; pretrain first "
                         "(python -m minipost.pretrain --out runs/pretrain)")
    model, enc, ckpt = load_model(cfg.init, device)
    block_size = min(cfg.block_size, model.cfg.block_size)
    if block_size < cfg.block_size:
        print(f"--block-size {cfg.block_size}: the model sees at most {block_size} tokens; using {block_size}")
    print(f"model: {model.num_params() / 1e6:.2f}M parameters from {cfg.init} on {device}")
    print(add_lora_from_flags(model, cfg))  # --lora-rank > 0: adapters, every other weight frozen
    trainable_params = trainable(model)

    # ---- data: rendered with the chat template -> (ids, loss_mask); optionally packed into rows. The world's
    # held-out text (val_loss), corpus (the pretraining mix) and eval prompts (samples.txt) are read too.
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
    rows = pack_examples([kept[i] for i in order], block_size) if cfg.pack else kept
    n_targets = sum(sum(m[1:]) for _, m in kept)
    print(f"{len(kept)} chats, {n_targets:,} target tokens, {len(rows)} rows"
          f"{' (packed)' if cfg.pack else ''}; one epoch = {len(rows) / cfg.batch_size:.1f} steps")
    pad_id = special_id(enc, "<|pad|>")
    val_stream = pack(enc, load_texts(DATA_DIR / "pretrain_val.jsonl"))  # (M,)
    if len(val_stream) < min(256, model.cfg.block_size) + 1:
        raise InputError(f"{DATA_DIR / 'pretrain_val.jsonl'}: {len(val_stream)} tokens, too few for one "
                         "held-out window")
    ptx_stream = pack(enc, load_texts(DATA_DIR / "pretrain.jsonl")) if cfg.ptx_coef > 0 else None  # (N,)
    if ptx_stream is not None and len(ptx_stream) < block_size + 2:
        raise InputError(f"{DATA_DIR / 'pretrain.jsonl'}: {len(ptx_stream)} tokens, too few for one window of "
                         f"{block_size} for the pretraining mix (--ptx-coef 0 turns it off)")
    sample_records = per_domain(read_jsonl(DATA_DIR / "eval.jsonl", required={"prompt": str, "domain": str}), 2)

    # ---- optimizer and data order
    optimizer = adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    batches = EpochBatches(len(rows), cfg.batch_size, seed=cfg.seed + 1)
    ptx_gen = torch.Generator().manual_seed(cfg.seed + 2)

    # ---- the run folder: a fresh run, or everything an interrupted one saved
    state = start_run(out, cfg, write=ranks.main)
    steps_done, tokens_seen, val_loss, elapsed_s = 0, 0, float("nan"), 0.0
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["data"])
        ptx_gen.set_state(state["ptx_generator"])
        steps_done, tokens_seen, val_loss, elapsed_s = (state["step"], state["tokens_seen"], state["val_loss"],
                                                        state["elapsed_s"])
    logger = MetricsLogger(out, resume_step=steps_done if state else None, enabled=ranks.main)

    # ---- the loop
    model.train()
    if not state:
        val_loss = heldout_loss(model, val_stream, windows=cfg.eval_windows, impl=cfg.logprobs_impl)
        logger.log(0, val_loss=val_loss)
    micro = min(cfg.micro_batch_size or cfg.batch_size, mine.stop - mine.start)
    t0 = time.time() - elapsed_s
    loss_sum, correct, n_tok = float("nan"), 0, 0
    bar = tqdm(range(steps_done, cfg.max_steps), initial=steps_done, total=cfg.max_steps,
               disable=not (cfg.progress and ranks.main), desc="sft")
    for step in bar:
        lr = cosine_lr(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                       min_lr_ratio=cfg.min_lr_ratio)
        set_lr(optimizer, lr)
        batch = next(batches)  # batch_size row indices, the same on every rank
        n_tok = sum(num_targets(rows[i]) for i in batch)  # target tokens in the whole step (every rank's rows)
        batch = batch[mine]  # this rank's rows
        micro_batches = [collate([rows[i] for i in batch[s:s + micro]], pad_id)
                         for s in range(0, len(batch), micro)]  # [(x (b, T), y (b, T))]
        loss_sum, correct = 0.0, 0
        for x, y in micro_batches:
            x, y = x.to(device), y.to(device)  # (b, T) each
            with autocast(device):
                logits = model(x)  # (b, T, V)
            loss = sft_loss(logits, y, n_tok, cfg.logprobs_impl)  # this micro-batch's share of the step's mean
            check_finite(loss, "loss", step + 1, out)
            loss.backward()
            loss_sum += loss.item()
            correct += token_accuracy(logits, y)[0]
        ptx_loss = float("nan")
        if ptx_stream is not None:  # pretraining mix: a little next-token loss on the corpus (InstructGPT eq. 2)
            x, y = packed_batch(ptx_stream, cfg.ptx_batch_size, block_size, ptx_gen)  # (P, T) each
            x, y = x[mine_ptx], y[mine_ptx]  # this rank's rows, its loss its share of the mean over all P
            with autocast(device):
                loss = -token_logprobs(model(x.to(device)), y.to(device), impl=cfg.logprobs_impl).mean()
                loss = loss * (len(x) / cfg.ptx_batch_size)
            check_finite(loss, "ptx_loss", step + 1, out)
            (cfg.ptx_coef * loss).backward()
            ptx_loss = dist.all_reduce_sum(loss.item(), ranks)
        dist.all_reduce_grads(model, ranks)  # the ranks' gradients sum to the whole batch's
        loss_sum, correct = dist.all_reduce_sum(loss_sum, ranks), int(dist.all_reduce_sum(correct, ranks))
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += n_tok

        steps_done = step + 1
        if (cfg.eval_every and steps_done % cfg.eval_every == 0) or steps_done == cfg.max_steps:
            val_loss = heldout_loss(model, val_stream, windows=cfg.eval_windows, impl=cfg.logprobs_impl)
            check_finite(val_loss, "val_loss", steps_done, out)
        if steps_done % cfg.log_every == 0 or steps_done == cfg.max_steps:
            elapsed = time.time() - t0
            logger.log(steps_done, loss=loss_sum, token_acc=correct / max(n_tok, 1), tokens_seen=tokens_seen,
                       ptx_loss=ptx_loss, val_loss=val_loss, lr=lr, grad_norm=grad_norm,
                       steps_per_s=steps_done / elapsed, elapsed_s=elapsed)
            bar.set_postfix(loss=f"{loss_sum:.3f}", acc=f"{correct / max(n_tok, 1):.2f}", val=f"{val_loss:.3f}")
        if ranks.main and (steps_done % cfg.save_every == 0 or steps_done in (cfg.stop_after, cfg.max_steps)):
            save_state(out, steps_done, cfg, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       data=batches.state_dict(), ptx_generator=ptx_gen.get_state(), tokens_seen=tokens_seen,
                       val_loss=val_loss, elapsed_s=time.time() - t0)
        if steps_done == cfg.stop_after:
            break
    bar.close()
    logger.close()
    elapsed = time.time() - t0
    summary = {"loss": loss_sum, "token_acc": correct / max(n_tok, 1), "tokens_seen": tokens_seen,
               "val_loss": val_loss, "seconds": elapsed, "steps_per_s": steps_done / max(elapsed, 1e-9),
               "device": str(device), "steps": steps_done, "trainable_params": trainable_params,
               "training_bytes": training_bytes(model, optimizer)}
    if steps_done < cfg.max_steps:
        print(f"stopped after step {steps_done} (state in {out / 'state.pt'}); continue with --resume true")
        return summary

    # ---- the outputs later stages read
    merge_lora(model)  # (no adapters: nothing to do) model.pt holds plain weights that every command loads
    if ranks.main:
        save_checkpoint(out / "model.pt", model_checkpoint(model, ckpt["tokenizer"], steps_done))
        write_samples(model, enc, out / "samples.txt", sample_records)
    dist.barrier(ranks)  # the next stage (the pipeline) reads model.pt on every rank
    print(f"sft done: loss {loss_sum:.3f}, token accuracy {summary['token_acc']:.2f}, held-out pretraining loss "
          f"{val_loss:.3f}, {summary['steps_per_s']:.2f} steps/s, {elapsed:.0f} s on {device}")
    return summary


if __name__ == "__main__":
    main(train, Config, PRESETS)
