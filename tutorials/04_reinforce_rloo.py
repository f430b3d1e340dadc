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
from minipost.optim import adamw, linear_decay_lr
from minipost.reinforce import PRESETS, Config, reinforce_loss, rloo_advantages, train
from minipost.rewards import parse_reward, score_rollout
from minipost.rollout import completion_logprobs, micro_batches, rollout

from _setup import (ONE_STEP, SMOKE, assert_same_weights, ensure_world,  # noqa: E402  (tutorials/_setup.py)
                    every_tenth, out_dir, report_run, rl_start, smoke_reward, start_checkpoint, step_size,
                    training_rows)

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
# ## One step by hand, checked against `train()`
# Before handing the loop to `train()`, take one step of it in the open, with the pure functions reinforce.py
# uses, on a tiny batch: 2 prompts x 4 answers of at most 12 tokens, on the CPU. Then `train()` takes one step
# with the same seed and settings, and the two policies must be equal bit for bit: the lines below are what
# the library runs.
#
# First what reinforce.py's `train()` builds before its loop (`_setup.rl_start`): `Run(cfg)` fixes the thread
# count and the seeds, then come the policy, the prompts and the reference (a frozen copy of the start). Then,
# as in `train()`: AdamW at the schedule's first learning rate, and two random streams made in this order, one
# for sampling and one for the order of the prompts. (`train()` also scores the held-out prompts before step 1:
# greedy answers draw no random numbers, so the step does not depend on it.)
#
# In smoke mode the start is usually a random model, which no checker ever scores above 0: every advantage
# would be 0 and the step would move nothing. So smoke mode scores the share of letters in each answer
# instead (`_setup.smoke_reward`).

# %%
cfg = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT / "one_step"), init=INIT, baseline="rloo",
                         **ONE_STEP)  # max_steps 1, 2 prompts x 4 answers, 12 tokens, one micro-batch, CPU
reward_fn = smoke_reward if SMOKE else parse_reward(cfg.reward)  # correct + 0.3 restate
policy, ref, _, enc, records = rl_start(cfg)
optimizer = adamw(policy, lr=linear_decay_lr(0, lr=cfg.lr, max_steps=cfg.max_steps), weight_decay=0.0,
                  betas=(0.9, 0.99))
gen = torch.Generator().manual_seed(cfg.seed)  # sampling
order_gen = torch.Generator().manual_seed(cfg.seed)  # prompt order
perm = torch.randperm(len(records), generator=order_gen)  # a shuffled pass over the prompts
prompts = [records[i] for i in perm[:cfg.prompts_per_step].tolist()]  # next_prompts(): the first 2

# %% [markdown]
# **Rollout and rewards** (`sample_and_score()`; in one process `rollout_share` is `rollout`). The answers,
# each token's log-prob under the sampler, the reference's log-probs of the same tokens, one reward per answer.

# %%
batch = rollout(policy, enc, prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature, generator=gen)
mask = batch.completion_mask  # (B, T): B = 2 prompts x 4 answers, group after group; T <= 12 tokens
with torch.no_grad():
    ref_logps = completion_logprobs(ref, batch, cfg.temperature)  # (B, T) log pi_ref of the sampled tokens
rewards, _ = score_rollout(batch, reward_fn, cfg.max_new_tokens)  # (B,)
for text, reward in zip(batch.texts, rewards.tolist()):
    print(f"reward {reward:.3f}  {text[:70]!r}")

# %% [markdown]
# **Advantages** (`baseline_advantages()`, with `--baseline rloo`): each reward minus the mean of the other
# answers to the same prompt.

# %%
advantages = rloo_advantages(rewards, cfg.group_size)  # (B,)
print("rewards   ", [[round(x, 3) for x in row] for row in rewards.view(-1, cfg.group_size).tolist()])
print("advantages", [[round(x, 3) for x in row] for row in advantages.view(-1, cfg.group_size).tolist()])

# %% [markdown]
# **Loss, backward, optimizer step** (`update()`). `micro_batches` hands the rows over shortest first (less
# padding per forward pass), so we take them in that order too: the gradient is the same sum either way, but
# floats added in another order round differently in the last bit. Then `completion_logprobs` with gradients,
# `reinforce_loss` (- 1/B sum_i A_i sum_t log pi(y_it), plus beta times the k3 KL to the reference), and
# `run.optimizer_step`: clip the gradient norm, step AdamW, zero the gradients.

# %%
rows = micro_batches(batch, len(batch))[0]  # (B,) every row, shortest first
logps = completion_logprobs(policy, batch.select(rows), cfg.temperature)  # (B, T) log pi_theta, with gradients
loss, info = reinforce_loss(logps, advantages[rows], mask[rows], ref_logps[rows], cfg.beta)  # scalar
loss.backward()
grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
optimizer.step()
optimizer.zero_grad(set_to_none=True)
print(f"loss {loss.item():+.4f}  kl_ref {info['kl_ref'].item():.2e}  grad_norm {grad_norm.item():.4f}")

# %% [markdown]
# **The same step by `train()`**, into OUT/one_step, then the two policies compared tensor by tensor.

# %%
train(cfg, reward_fn=reward_fn)
assert_same_weights(policy, OUT / "one_step" / "model.pt")
step_size(policy, INIT)

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
# - `python -m minipost.card --ckpt INIT --ckpt OUT/model.pt` for the full report card: did anything else drop?
