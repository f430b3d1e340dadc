# %% [markdown]
# # 04 · Online RL with REINFORCE and RLOO
#
# SFT and DPO learn from answers someone else wrote. Online RL lets the model learn from its *own* answers:
#
#     1. sample:  for each prompt x, draw G answers y ~ pi(. | x)            (minipost/rollout.py)
#     2. score:   r = checker(x, y), e.g. "is the last number the right sum?" (minipost/rewards.py)
#     3. update:  make the answers that scored well more likely
#
# REINFORCE (Williams 1992) is step 3 in its plainest form:
#
#     loss = - 1/B sum_i A_i * log pi(y_i | x_i),      A_i = r_i - b
#
# The baseline b does not change the expected gradient, only its noise. RLOO (REINFORCE Leave-One-Out) uses
# the *other* G - 1 answers to the same prompt as the baseline: no critic, no extra model, and it is unbiased.
# This lesson starts from the SFT (or DPO) model and trains it for a few minutes on every domain's prompts,
# arithmetic twice as often (the nano preset's `oversample`), with reward = correct + 0.3 * restate (rewards.py).
#
# Set MINIPOST_SMOKE=1 for a few-second version (the test suite runs it that way).

# %%
import json
from pathlib import Path

import minipost  # noqa: F401  first: it makes torch's idle threads sleep (minipost/threads.py)
import torch

from minipost.common import DATA_DIR, config_with_preset, read_jsonl
from minipost.reinforce import PRESETS, Config, rloo_advantages, train

from _setup import (SMOKE, ensure_world, every_tenth, out_dir, report_run,  # noqa: E402  (tutorials/_setup.py)
                    start_checkpoint, training_rows)

OUT = out_dir("04_reinforce_rloo")
ensure_world()
INIT = start_checkpoint(OUT)
print("starting from", INIT)

# %% [markdown]
# ## The data: prompts with a checker, no answers
# An RL record has a prompt and what the checker needs (here the exact answer). The model never sees the
# answer; it only learns which of its own attempts were right.

# %%
rl = [r for r in read_jsonl(DATA_DIR / "rl.jsonl") if r["domain"] == "arithmetic"]
print(len(rl), "arithmetic prompts, e.g.", json.dumps(rl[0]))

# %% [markdown]
# ## Advantages: which answers to push up, which to push down
# Eight answers to one prompt, three of them right (reward 1). With the leave-one-out baseline a right answer
# gets A = 1 - 2/7 = +0.714 (the other seven average 2/7) and a wrong one A = 0 - 3/7 = -0.429. The advantages
# of a group sum to zero: RLOO only ever *redistributes* probability between answers to the same prompt.
# A group where every answer scored the same has A = 0 everywhere: nothing to learn from it.

# %%
r = torch.tensor([1.0, 0, 0, 1, 0, 0, 1, 0])
print("rewards   ", r.tolist())
print("RLOO A    ", [round(a, 4) for a in rloo_advantages(r, 8).tolist()])
print("no baseline: A = r, so every sampled answer is pushed up, the wrong ones too (only less often).")
print("all equal ", rloo_advantages(torch.ones(8), 8).tolist())

# %% [markdown]
# ## Train
# Per step: 16 prompts x 8 answers, one on-policy gradient step. The progress bar shows the mean reward; the
# held-out accuracy (greedy answers to eval.jsonl prompts the model never trains on) is measured at the start,
# every `eval_every` steps and at the end.

# %%
overrides = dict(max_steps=3, prompts_per_step=2, group_size=4, max_new_tokens=12, eval_every=0, eval_limit=4,
                 init=INIT) if SMOKE else dict(init=INIT)
cfg = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT), baseline="rloo", **overrides)
summary = train(cfg)

# %% [markdown]
# ## Is my run normal?
# `reward` should climb from the SFT model's accuracy; `zero_std_frac` (groups where all G answers scored the
# same) falls as the model gets some prompts right some of the time; `kl_ref` (k3 estimate of KL to the start
# model, per token) grows slowly: the policy drifts only as far as it needs to. README.md lists measured
# numbers for this CPU.

# %%
train_rows = training_rows(OUT)
print("step  reward  zero_std  kl_ref  length")
for r in every_tenth(train_rows):
    print(f"{r['step']:4d}  {r['reward']:.3f}   {r['zero_std_frac']:.2f}     {r['kl_ref']:.4f}  {r['length']:.1f}")
report_run(OUT, summary, train_rows, "kl_ref", "KL to the start model (k3, per token)", "rloo.png")

# %% [markdown]
# ## Read the answers
# `samples.txt` holds greedy answers to a few held-out prompts of the trained domain, with their scores.

# %%
print((OUT / "samples.txt").read_text()[:1200])

# %% [markdown]
# ## Try next
# - `--baseline none` and `--baseline mean` with the same seed: slower, noisier reward curves.
# - `--beta 0.05 --kl-in reward` keeps the policy near the start model; compare `kl_ref` and the other domains.
# - `python -m minipost.evals --ckpt INIT --ckpt OUT/model.pt` for the full report card: did anything else drop?
