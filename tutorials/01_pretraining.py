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
import os
from pathlib import Path

from minipost.common import DATA_DIR, config_with_preset, read_jsonl, read_metrics
from minipost.evals import probe_scores
from minipost.model import load_model
from minipost.pretrain import PRESETS, Config, train

SMOKE = os.environ.get("MINIPOST_SMOKE") == "1"
OUT = Path(os.environ.get("MINIPOST_OUT", "runs/tutorials")) / "01_pretraining"

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
