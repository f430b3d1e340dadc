# %% [markdown]
# # 02 · Supervised fine-tuning: from a text continuer to an assistant
#
# The base model from lesson 01 continues text. Ask it a question in the chat format and it has no idea that
# an answer is expected, nor where the answer should end. SFT shows it a few thousand curated conversations
#
#     <|user|>What is the capital of Brerkia?<|end|><|assistant|>The capital of Brerkia is Gubus.<|end|>
#
# and trains the same next-token loss as pretraining, but only on the assistant's tokens:
#
#     L = - 1/N * sum_{t in answer} log pi(y_t | y_<t)        (N = number of answer tokens, <|end|> included)
#
# This lesson: (1) the base model on chat prompts, (2) the loss mask drawn on a real example, (3) one SFT step
# by hand, checked against the library's, (4) the SFT run, (5) SFT unlocking facts the base model read only in
# pretraining, never in a chat example.
#
# Set MINIPOST_SMOKE=1 for a fast version (the test suite runs it that way).

# %%
import os
from pathlib import Path

import minipost  # noqa: F401  before torch: then torch's idle threads sleep (minipost/threads.py)
import torch

from minipost import threads
from minipost.common import DATA_DIR, config_with_preset, read_jsonl, seed_everything
from minipost.data import EpochBatches, collate, load_chats, num_targets, tokenize_chats
from minipost.harness import read_metrics
from minipost.heldout import chat_scores, probe_scores
from minipost.logprobs import token_logprobs
from minipost.checkpoints import load_model
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.sft import PRESETS, Config, sft_loss, train
from minipost.tokenizer import render_chat, special_id
from minipost.world import is_refusal

from _setup import SMOKE, assert_same_weights, out_dir  # noqa: E402  (tutorials/_setup.py)

OUT = out_dir("02_sft")
OUT.mkdir(parents=True, exist_ok=True)


def base_checkpoint() -> str:
    """The base model: $MINIPOST_INIT, else a pretraining run we can find, else (smoke mode only) a few steps
    of pretraining right here."""
    for c in [os.environ.get("MINIPOST_INIT", ""), "runs/pipeline/pretrain/model.pt", "runs/base/model.pt",
              "runs/pretrain/model.pt", "runs/tutorials/01_pretraining/model.pt"]:
        if c and Path(c).exists():
            return c
    if not SMOKE:
        raise SystemExit("no base model found: run tutorials/01_pretraining.py or `python -m minipost.pretrain` "
                         "first, or set MINIPOST_INIT=path/to/model.pt")
    from minipost.pretrain import PRESETS as PT_PRESETS, Config as PTConfig, train as pretrain
    pretrain(config_with_preset(PTConfig, PT_PRESETS, out=str(OUT / "base"), max_steps=4, eval_every=4,
                                eval_windows=2, progress=False))
    return str(OUT / "base" / "model.pt")


if not (DATA_DIR / "sft.jsonl").exists():
    from minipost.world import build
    build(DATA_DIR)
BASE = base_checkpoint()
print("base model:", BASE)
EVAL = read_jsonl(DATA_DIR / "eval.jsonl")
PER_DOMAIN = 2 if SMOKE else 100
EVAL = [r for d in sorted({r["domain"] for r in EVAL}) for r in [x for x in EVAL if x["domain"] == d][:PER_DOMAIN]]

# %% [markdown]
# ## 1. The base model on chat prompts
# Same prompts, rendered with the chat template and ending in `<|assistant|>`. The base model never saw these
# special tokens in a conversation, so what follows is usually text-like noise, and it rarely emits `<|end|>`:
# the `format` score (share of answers that stop by themselves) is near zero.

# %%
base, enc, _ = load_model(BASE)
NEW_TOKENS = 16 if SMOKE else 64
base_scores, base_rows = chat_scores(base, enc, EVAL, NEW_TOKENS)
for r in base_rows[:: max(1, len(base_rows) // 4)][:4]:
    print(f"Q: {r['prompt']}\nA: {r['completion'][:100]!r}  (stopped: {r['stopped']})\n")
print({k: round(v, 3) for k, v in base_scores.items()})

# %% [markdown]
# ## 2. The loss mask, on a real example
# `render_chat` returns the token ids and a mask: 1 where the model is trained to predict the token. `collate`
# shifts by one (input t predicts token t+1) and writes -100 (ignored) where the mask is 0. Below, each token
# is shown with its mask: `[...]` is a target, plain text is context only. The closing `<|end|>` of the answer
# is a target: that is how the model learns to stop.

# %%
chat = next(c for c in load_chats(DATA_DIR / "sft.jsonl") if not is_refusal(c[-1]["content"]))
ids, mask = render_chat(enc, chat)
print("".join(f"[{enc.decode([t])}]" if m else enc.decode([t]) for t, m in zip(ids, mask)))
x, y = collate([(ids, mask)], special_id(enc, "<|pad|>"))
print(f"{len(ids)} tokens, {sum(mask)} targets; targets decode to {enc.decode(y[0][y[0] >= 0].tolist())!r}")

# %% [markdown]
# ## 3. One SFT step by hand
# `train(cfg)` in minipost/sft.py is a loop of such steps. We take its first step ourselves, on 4 conversations,
# then check that `train()` with `max_steps=1` ends with exactly the same weights. The setup, as in `train()`:
# - `threads.configure` and `seed_everything` are what `Run(cfg, "sft")` does first. Nothing here draws from the
#   seeded RNG (the model is loaded, batches have their own generators), but the thread count matters: it fixes
#   how a few CPU kernels split their sums, and another count changes the last bit of some gradients
#   (minipost/threads.py). Both sides run with 1 thread.
# - the next two lines are `load_sft_data`: every chat rendered and cut to block_size + 1 tokens, and the chats
#   with no answer token left dropped. The rows stay in file order (only `pack=True` shuffles the chats first,
#   which decides the ones that share a packed row).
# - `EpochBatches` is the data order: B row indices per step, a fresh seeded shuffle (seed + 1) every epoch.
# - `ptx_coef=0`: no pretraining mix here. With it, `train()` adds ptx_coef times a next-token loss on a batch of
#   corpus text (lesson 01's loss) to every step; the run in section 4 uses it.

# %%
one = config_with_preset(Config, PRESETS, preset="nano", init=BASE, out=str(OUT / "one_step"), max_steps=1,
                         batch_size=4, ptx_coef=0, eval_windows=2, device="cpu", threads="1", progress=False)
print(threads.configure(one.threads))  # Run(cfg, ...): the CPU threads
seed_everything(one.seed)  # Run(cfg, ...): the seeds
model, enc, _ = load_model(one.init)  # the base model
examples = tokenize_chats(enc, load_chats(DATA_DIR / "sft.jsonl"), one.block_size)  # [(ids, loss_mask)]
rows = [e for e in examples if sum(e[1][1:]) > 0]  # a chat cut before its answer has nothing to learn
optimizer = adamw(model, lr=one.lr, weight_decay=one.weight_decay)
batches = EpochBatches(len(rows), one.batch_size, seed=one.seed + 1)

# %% [markdown]
# The step, each line one line of `train()`'s loop at `step = 0`:
# - the learning rate from the warmup (`cosine_lr`, set by `set_lr`);
# - the batch: B rows, `n_tok` the number of answer tokens (targets) in all of them, and `collate` pads them into
#   (B, T) tensors, y = -100 wherever the loss mask is 0;
# - `token_logprobs`: log pi of each next token, from the logits (`train()` gets the same numbers from
#   `model.logprobs(x, y)`, which at a real model's vocabulary never makes the logits whole: lesson 13);
# - `sft_loss`: the sum of -log pi over the targets, divided by `n_tok` (with micro-batches, each one divides by
#   the whole step's `n_tok`, so every token weighs the same);
# - `run.optimizer_step`: clip the global gradient norm to `grad_clip`, then AdamW's update.
# (`train()` also measures the held-out pretraining loss before the first step and after the last: forward
# passes only, they change no weight.)

# %%
step = 0
lr = set_lr(optimizer, cosine_lr(step, lr=one.lr, warmup_steps=one.warmup_steps, max_steps=one.max_steps,
                                 min_lr_ratio=one.min_lr_ratio))
batch = next(batches)  # B row indices
n_tok = sum(num_targets(rows[i]) for i in batch)  # answer tokens (targets) in the batch
x, y = collate([rows[i] for i in batch], special_id(enc, "<|pad|>"))  # (B, T) each; y -100 off the answers
model.train()
logits = model(x)  # (B, T, V)
logp = token_logprobs(logits, y.clamp(min=0))  # (B, T) log pi of each next token (-100 read as 0)
loss = sft_loss(logp, y, n_tok)  # scalar: mean -log pi over the n_tok answer tokens (y -100: masked)
loss.backward()  # .grad of every weight
grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), one.grad_clip)  # the norm before clipping
optimizer.step()
print(f"x {tuple(x.shape)}, {n_tok} answer tokens; loss {loss.item():.4f}, grad norm {grad_norm.item():.3f} "
      f"clipped to {one.grad_clip}, lr {lr:.1e}")

# %% [markdown]
# The library's loop for one step, on the same settings, and the check that both give the same weights: bit for
# bit, since the same weights, rows, shapes, thread count and operations in the same order give the same floats.

# %%
train(one)
assert_same_weights(model, OUT / "one_step" / "model.pt")

# %% [markdown]
# ## 4. Train
# The nano preset: batches of 32 conversations, AdamW, a short warmup and cosine decay; about 3 minutes on a
# 2-core CPU. The metrics: `loss` (answer tokens only), `token_acc` (greedy next token right), `tokens_seen`
# (answer tokens), and `val_loss`, the held-out *pretraining* loss: it rises a little, the price of SFT.

# %%
overrides = dict(max_steps=6, log_every=2, eval_every=6, eval_windows=2) if SMOKE else {}
cfg = config_with_preset(Config, PRESETS, preset="nano", init=BASE, out=str(OUT), **overrides)
summary = train(cfg)
metrics = read_metrics(OUT / "metrics.jsonl")
print("step  loss   token_acc  held-out pretraining loss")
for r in [r for r in metrics if "loss" in r][:: max(1, len(metrics) // 8)] + metrics[-1:]:
    held_out = "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}"  # "-": not measured yet
    print(f"{r['step']:4d}  {r['loss']:.3f}  {r['token_acc']:.3f}      {held_out}")

# %% [markdown]
# ## 5. What SFT changed
# The same eval prompts, now answered by the SFT model. `format` jumps to ~100%. The interesting column is
# `knowledge`: its eval questions ask about facts marked `held_out`, which appear in the pretraining corpus but
# in *no* SFT conversation. SFT taught the question-answering *format*; the facts come from pretraining.
# (Compare with the base model's completion probes, which read the same facts without any chat format.)

# %%
sft_model, _, _ = load_model(OUT / "model.pt")
sft_scores, sft_rows = chat_scores(sft_model, enc, EVAL, NEW_TOKENS)
print(f"{'column':14s} {'base':>6s} {'sft':>6s}")
for k in sft_scores:
    print(f"{k:14s} {100 * base_scores.get(k, 0):6.1f} {100 * sft_scores[k]:6.1f}")
probes = [r for r in read_jsonl(DATA_DIR / "probes.jsonl") if r["domain"] == "knowledge"][:PER_DOMAIN]
print("base-model completion probes on knowledge:", probe_scores(base, enc, probes))
held = [r for r in sft_rows if r["domain"] == "knowledge"][:3]
for r in held:
    print(f"Q: {r['prompt']}\nA: {r['completion']}  (score {r['score']})")

# %% [markdown]
# ## 6. The flaw we planted
# About one benign SFT answer in six is "Sorry, I can't help with that." (a realistic annotation flaw). The
# SFT model copies it: see `over_refusal` above, the share of benign eval prompts it refuses. Lesson 03 fixes
# this with preference data (DPO), without retraining from scratch.

# %%
refused = [row for rec, row in zip(EVAL, sft_rows) if not rec.get("should_refuse") and is_refusal(row["completion"])]
print(f"over-refusal {100 * sft_scores.get('over_refusal', 0):.1f}%; e.g.:")
for r in refused[:3]:
    print(" ", r["prompt"], "->", r["completion"])
