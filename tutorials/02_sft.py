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
# This lesson: (1) the base model on chat prompts, (2) the loss mask drawn on a real example, (3) the SFT run,
# (4) SFT unlocking facts the base model read only in pretraining, never in a chat example.
#
# Set MINIPOST_SMOKE=1 for a fast version (the test suite runs it that way).

# %%
import os
from pathlib import Path

from minipost.common import DATA_DIR, config_with_preset, read_jsonl, read_metrics
from minipost.data import collate, load_chats
from minipost.evals import chat_scores, probe_scores
from minipost.model import load_model
from minipost.sft import PRESETS, Config, train
from minipost.tokenizer import render_chat, special_id
from minipost.world import is_refusal

SMOKE = os.environ.get("MINIPOST_SMOKE") == "1"
OUT = Path(os.environ.get("MINIPOST_OUT", "runs/tutorials")) / "02_sft"
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
# ## 3. Train
# The nano preset: batches of 32 conversations, AdamW, a short warmup and cosine decay; about 3 minutes on a
# 2-core CPU. The metrics: `loss` (answer tokens only), `token_acc` (greedy next token right), `tokens_seen`
# (answer tokens), and `val_loss`, the held-out *pretraining* loss: it rises a little, the price of SFT.

# %%
overrides = dict(max_steps=6, log_every=2, eval_every=6, eval_windows=2) if SMOKE else {}
cfg = config_with_preset(Config, PRESETS, preset="nano", init=BASE, out=str(OUT), **overrides)
summary = train(cfg)
rows = read_metrics(OUT / "metrics.jsonl")
print("step  loss   token_acc  held-out pretraining loss")
for r in [r for r in rows if "loss" in r][:: max(1, len(rows) // 8)] + rows[-1:]:
    held_out = "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}"  # "-": not measured yet
    print(f"{r['step']:4d}  {r['loss']:.3f}  {r['token_acc']:.3f}      {held_out}")

# %% [markdown]
# ## 4. What SFT changed
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
# ## 5. The flaw we planted
# About one benign SFT answer in six is "Sorry, I can't help with that." (a realistic annotation flaw). The
# SFT model copies it: see `over_refusal` above, the share of benign eval prompts it refuses. Lesson 03 fixes
# this with preference data (DPO), without retraining from scratch.

# %%
refused = [row for rec, row in zip(EVAL, sft_rows) if not rec.get("should_refuse") and is_refusal(row["completion"])]
print(f"over-refusal {100 * sft_scores.get('over_refusal', 0):.1f}%; e.g.:")
for r in refused[:3]:
    print(" ", r["prompt"], "->", r["completion"])
