# %% [markdown]
# # 01 · Pretraining: next-token prediction
#
# A randomly initialised GPT learns to predict the next token of the world's corpus:
#
#     L = -1/N * sum_t log pi(x_t | x_<t)
#
# After a few minutes on a CPU it has *stored* facts ("The capital of Veloria is Tarsk") and equations, but it
# does not answer questions: it only continues text. Post-training (lessons 02-07) changes its behaviour; this
# lesson makes the base model they all start from, and measures what it knows with completion probes.
#
# Set MINIPOST_SMOKE=1 for a 20-second version (the test suite runs it that way).

# %%
import math

import minipost  # noqa: F401  before torch: then torch's idle threads sleep (minipost/threads.py)
import torch

from minipost import threads
from minipost.common import DATA_DIR, config_with_preset, read_jsonl, seed_everything
from minipost.data import load_texts, pack, packed_batch
from minipost.harness import read_metrics
from minipost.heldout import probe_scores
from minipost.model import GPT, GPTConfig, PRESETS as MODEL_PRESETS
from minipost.checkpoints import load_model
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.pretrain import PRESETS, Config, next_token_loss, train
from minipost.tokenizer import get_tokenizer

from _setup import SMOKE, assert_same_weights, ensure_world, out_dir  # noqa: E402  (tutorials/_setup.py)

OUT = out_dir("01_pretraining")
ensure_world()

# %% [markdown]
# ## One training step by hand
# `train(cfg)` below runs 1600 steps of the loop in minipost/pretrain.py. Before using it as a black box, we take
# its first step ourselves, with small shapes (4 windows of 64 tokens), and then check that `train()` with
# `max_steps=1` ends with exactly the same weights. The setup, line by line as in `train()`:
# - `threads.configure` and `seed_everything` are what `Run(cfg, "pretrain")` does first. The seed fixes the random
#   initial weights, so it must come before `GPT(...)`. The thread count fixes how a few CPU kernels split their
#   sums (LayerNorm's backward, for one); another count changes the last bit of some gradients
#   (minipost/threads.py), so the comparison runs both sides with 1 thread.
# - `pack` is what `load_corpus` does to the training text: every document tokenised, the documents joined into
#   one stream of token ids.
# - `adamw` is the shared optimizer (minipost/optim.py): weight decay on matrices only.
# - `device="cpu"`: on a GPU, `train()` would run in bf16 autocast; the step here is float32 on the CPU, and so is
#   the run it is compared with.

# %%
one = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT / "one_step"), max_steps=1, batch_size=4,
                         block_size=64, eval_windows=2, device="cpu", threads="1", progress=False)
print(threads.configure(one.threads))  # Run(cfg, ...): the CPU threads
seed_everything(one.seed)  # Run(cfg, ...): the seeds, before the model draws its random init
enc = get_tokenizer(one.tokenizer)
stream = pack(enc, load_texts(DATA_DIR / "pretrain.jsonl"))  # (N,) the whole corpus as token ids
model = GPT(GPTConfig(vocab_size=enc.n_vocab, **MODEL_PRESETS[one.preset]))
optimizer = adamw(model, lr=one.lr, weight_decay=one.weight_decay)
start = [p.detach().clone() for p in model.parameters()]  # to see how far the step moves them

# %% [markdown]
# The step itself, each line one line of `train()`'s loop at `step = 0`:
# - the learning rate: warmup starts at lr / warmup_steps (`cosine_lr`, set by `set_lr`);
# - the batch: B random windows of the stream, drawn from a generator seeded by (seed, step) only, so a resumed
#   run draws the same ones; y is x shifted by one token;
# - forward and loss: `next_token_loss` is the mean of -log pi(x_t+1 | x_<=t) over all B * T positions (with one
#   micro-batch, `train()`'s factor len(x) / batch_size is 1);
# - `run.optimizer_step`: clip the global gradient norm to `grad_clip`, then AdamW's update.

# %%
step = 0
lr = set_lr(optimizer, cosine_lr(step, lr=one.lr, warmup_steps=one.warmup_steps, max_steps=one.max_steps,
                                 min_lr_ratio=one.min_lr_ratio))
batch_gen = torch.Generator().manual_seed(one.seed * 100_003 + step)
x, y = packed_batch(stream, one.batch_size, one.block_size, batch_gen)  # (B, T) each: y[:, t] = x[:, t + 1]
model.train()
logits = model(x)  # (B, T, V)
loss = next_token_loss(logits, y)  # scalar: mean over B * T positions
loss.backward()  # .grad of every weight
grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), one.grad_clip)  # the norm before clipping
optimizer.step()
moved = max((p - p0).abs().max().item() for p, p0 in zip(model.parameters(), start))
print(f"x {tuple(x.shape)}, logits {tuple(logits.shape)}; loss {loss.item():.4f} (ln V = {math.log(enc.n_vocab):.4f}), "
      f"grad norm {grad_norm.item():.3f} clipped to {one.grad_clip}, lr {lr:.1e}, largest weight change {moved:.1e}")

# %% [markdown]
# Now the library's loop for one step, on the same settings, and the check that both give the same weights.
# They match bit for bit: the same seed, data, shapes, thread count and operations in the same order give the same
# floats, so the lines above are exactly what `train()` computes.

# %%
train(one)
assert_same_weights(model, OUT / "one_step" / "model.pt")

# %% [markdown]
# ## Train
# The nano preset: ~1M parameters, batches of 16 x 256 tokens, AdamW with warmup and cosine decay.
# Watch the held-out loss fall in the progress bar. (Smoke mode trains a few steps only.)

# %%
overrides = dict(max_steps=8, eval_every=4, eval_windows=2, log_every=2) if SMOKE else {}
cfg = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT), **overrides)
summary = train(cfg)
print(summary)

# %% [markdown]
# ## Is my loss normal?
# The loss starts near ln(vocabulary size) = ln(1030) = 6.9 (a uniform guess) and falls fast: the corpus is
# small and repetitive. README.md lists the numbers measured on a 2-core CPU.

# %%
rows = read_metrics(OUT / "metrics.jsonl")  # one dict per logged step; None: not measured at that step
print("step  loss   held-out")
for r in rows[:: max(1, len(rows) // 10)] + rows[-1:]:
    held_out = "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}"  # "-": not measured yet
    print(f"{r['step']:4d}  {r['loss']:.3f}  {held_out}")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train")
    plt.xlabel("step"); plt.ylabel("loss (nats/token)"); plt.legend()
    plt.savefig(OUT / "loss.png", dpi=100)
    print("wrote", OUT / "loss.png")
except ImportError:
    pass

# %% [markdown]
# ## What did it learn? Completion probes
# We ask the base model to continue "The capital of X is" and "37 + 48 =" (held-out sums) and score what
# comes before the first full stop. The knowledge probes use a phrasing the corpus contains; the arithmetic
# probes use operand pairs the corpus never shows, so they measure generalisation, not memory.

# %%
model, enc, _ = load_model(OUT / "model.pt")
probes = read_jsonl(DATA_DIR / "probes.jsonl")
if SMOKE:
    probes = probes[:8] + probes[-8:]
print(probe_scores(model, enc, probes))
print((OUT / "samples.txt").read_text()[:600])
