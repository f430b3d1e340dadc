# %% [markdown]
# # 11 · LoRA: fine-tune a few low-rank matrices instead of every weight
#
# Full fine-tuning updates every weight and keeps a gradient and two AdamW moments for each: three extra
# copies of the model in memory. LoRA (Hu et al. 2021, arXiv:2106.09685) freezes the model and learns, for
# each linear layer W, a low-rank update (alpha / r) B A with A (r x in) and B (out x r):
#
#     y = W x + (alpha / r) B A x          B = 0 at the start, so the adapted model starts as the base model
#
# Only A and B train (minipost/lora.py). "LoRA Learns Less and Forgets Less" (Biderman et al. 2024,
# arXiv:2405.09673) found, on billion-parameter models, that LoRA gains less on the target task than full
# fine-tuning and also loses less of what the base model knew. This lesson asks the same of our world: SFT
# and DPO, full against LoRA, on the same data and steps, on the report card: the chat scores (learned),
# val_loss and the probes (forgotten), plus what each costs.
#
# Set MINIPOST_SMOKE=1 for a short version (the test suite runs it that way). The full version trains four
# SFT runs (about 1.5 minutes each on a 2-core CPU), three DPO runs (about half a minute each) and evaluates
# the seven models (about 40 s each); a rerun reuses the finished runs.

# %%
import json
import time

from minipost import dpo, sft
from minipost.common import config_with_preset
from minipost.card import card, evaluate_items, report_table

from _setup import SMOKE, ensure_world, out_dir, start_checkpoint  # noqa: E402  (tutorials/_setup.py)

OUT = out_dir("11_lora")
ensure_world()
BASE = start_checkpoint(OUT, ["runs/pipeline/pretrain/model.pt", "runs/pretrain/model.pt"])
print("base model:", BASE)
SMOKE_FLAGS = {sft: dict(max_steps=3, eval_windows=4), dpo: dict(max_steps=3, eval_pairs=16, max_pairs=64)} if SMOKE else {}
LIMIT = 4 if SMOKE else None  # held-out items per domain for the card (None: all)

# %% [markdown]
# ## 1. SFT: full against LoRA
# The same 300 steps of the nano preset from the same base model. LoRA gets rank 8 and alpha 16 on every
# attention and MLP projection, at the SFT learning rate and at 4x it: an adapter that starts at zero and
# moves through a small subspace usually wants a larger step (Biderman et al. tune it separately too); and
# rank 64 (alpha 128, so alpha / r stays 2) at 4x, half the width of this model's layers.

# %%
RUNS = {  # name: (objective, start, flags)
    "sft": (sft, BASE, {}),
    "sft_lora": (sft, BASE, dict(lora_rank=8, lora_alpha=16)),
    "sft_lora_4x": (sft, BASE, dict(lora_rank=8, lora_alpha=16, lr=4 * sft.Config().lr)),
    "sft_lora_r64_4x": (sft, BASE, dict(lora_rank=64, lora_alpha=128, lr=4 * sft.Config().lr)),
}
costs = {}


def train(name, objective, start, flags):
    """Train one run into OUT/name (a finished one is reused: rerunning the lesson only trains what is new)."""
    done = OUT / name / "costs.json"
    if done.exists() and (OUT / name / "model.pt").exists() and not SMOKE:
        costs[name] = json.loads(done.read_text())
        return OUT / name / "model.pt"
    cfg = config_with_preset(objective.Config, objective.PRESETS, preset="nano", init=start,
                             out=str(OUT / name), progress=False, **SMOKE_FLAGS.get(objective, {}), **flags)
    t0 = time.time()
    summary = objective.train(cfg)
    costs[name] = dict(trainable=summary["trainable_params"], train_mb=summary["training_bytes"] / 2**20,
                       seconds=time.time() - t0)
    done.write_text(json.dumps(costs[name]))
    return OUT / name / "model.pt"


paths = {name: train(name, *run) for name, run in RUNS.items()}

# %% [markdown]
# ## 2. DPO: full against LoRA, both from the full SFT model
# Starting both from the same SFT model isolates what LoRA changes in DPO; the reference is that SFT model.

# %%
DPO_RUNS = {
    "dpo": (dpo, str(paths["sft"]), {}),
    "dpo_lora": (dpo, str(paths["sft"]), dict(lora_rank=8, lora_alpha=16)),
    "dpo_lora_4x": (dpo, str(paths["sft"]), dict(lora_rank=8, lora_alpha=16, lr=4 * dpo.Config().lr)),
}
paths.update({name: train(name, *run) for name, run in DPO_RUNS.items()})
for name, c in costs.items():
    print(f"{name:12s} trainable {c['trainable']:>8,d}  gradients + AdamW state {c['train_mb']:5.2f} MB  "
          f"{c['seconds']:5.0f} s")

# %% [markdown]
# ## 3. The card: what each learned, what each forgot
# Each LoRA row is compared with its full fine-tuning twin (the arrows), on the same items: a mark means
# LoRA differs from full fine-tuning by a paired test, p < 0.05. The SFT rows' val_loss and probes say what
# the base model kept; base's own row is the starting point.

# %%
items = {"base": evaluate_items(BASE, limit=LIMIT, chat=False)}
for name, path in paths.items():
    items[name] = evaluate_items(path, ref_path=paths["sft"] if name.startswith("dpo") else None, limit=LIMIT)
parents = {name: "dpo" if name.startswith("dpo_") else "sft" for name in paths}
parents.update(sft="base", dpo="sft")
report = card(items, parents)
print(report_table(report))
(OUT / "report.json").write_text(json.dumps({"card": report, "costs": costs}, indent=1))
print("wrote", OUT / "report.json")

# %% [markdown]
# ## 4. What to read off it
# - **Cost**: the adapters are a small share of the weights, and the gradients and optimizer moments
#   shrink with them. The seconds barely move: on a model this small the forward and backward passes
#   through the frozen weights cost the same as before, and they are most of a step.
# - **Learning**: compare each LoRA row's chat columns with its full twin; a ▼ is a skill LoRA did not
#   reach in the same steps.
# - **Forgetting**: val_loss (lower is better) and the probes against base. The README reads off the
#   full run's numbers and says whether our tiny world shows Biderman et al.'s pattern.
