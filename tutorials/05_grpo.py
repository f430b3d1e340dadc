# %% [markdown]
# # 05 · GRPO: group-relative advantages and a clipped ratio
#
# GRPO (DeepSeekMath, Shao et al. 2024) is RLOO's close cousin with two changes borrowed from PPO:
#
#     A_i = (r_i - mean(group)) / (std(group) + eps)        the group is the baseline, and the scale
#     loss = - mean_i mean_t min(rho_it A_i, clip(rho_it, 1 - 0.2, 1 + 0.2) A_i)  [+ beta * KL_k3]
#     rho_it = pi_theta(y_it) / pi_old(y_it)
#
# The ratio rho lets one batch of samples be reused for several optimizer steps (`num_iterations`); the clip
# stops any token's probability moving more than 20% away from where it was sampled. With one step per batch
# (the nano default) rho is exactly 1 and GRPO is REINFORCE with a scaled group baseline and per-token
# averaging. This lesson shows each piece on small tensors, then trains with lesson 04's prompts and reward.
#
# Set MINIPOST_SMOKE=1 for a few-second version (the test suite runs it that way).

# %%
from pathlib import Path

import minipost  # noqa: F401  first: it makes torch's idle threads sleep (minipost/threads.py)
import torch

from minipost.common import DATA_DIR, config_with_preset, read_jsonl
from minipost.grpo import PRESETS, Config, group_advantages, grpo_loss, train
from minipost.optim import adamw, linear_decay_lr
from minipost.rewards import parse_reward, score_rollout
from minipost.rollout import completion_logprobs, micro_batches, rollout

from _setup import (ONE_STEP, SMOKE, assert_same_weights, ensure_world,  # noqa: E402  (tutorials/_setup.py)
                    every_tenth, out_dir, report_run, rl_start, smoke_reward, start_checkpoint, step_size,
                    training_rows)

OUT = out_dir("05_grpo")
ensure_world()
INIT = start_checkpoint(OUT)
print("starting from", INIT)

# %% [markdown]
# ## Advantages: scaled or only centred
# The same 8 answers as in lesson 04 (3 right). GRPO divides by the group's std; Dr. GRPO (Liu et al. 2025)
# only centres, because dividing by the std gives prompts that are almost always right (or wrong) the same
# total weight as the informative ones.

# %%
r = torch.tensor([1.0, 0, 0, 1, 0, 0, 1, 0])
print("GRPO    ", [round(a, 4) for a in group_advantages(r, 8).tolist()])
print("Dr. GRPO", [round(a, 4) for a in group_advantages(r, 8, scale=False).tolist()])
print("1 of 8 right: GRPO gives the right one", round(group_advantages(torch.eye(8)[0], 8)[0].item(), 3),
      "while 4 of 8 right gives", round(group_advantages(torch.tensor([1.0] * 4 + [0.0] * 4), 8)[0].item(), 3))

# %% [markdown]
# ## Loss types: how tokens are averaged
# Two answers, one of 2 tokens (A = +1) and one of 3 tokens (A = -0.5), at ratio 1, generated with a budget of
# max_new_tokens = 4. The sum of token losses is divided by:
#
# | loss type | normaliser | who uses it |
# |---|---|---|
# | `grpo` | each answer's length, then the mean over answers | the GRPO paper; TRL `grpo` |
# | `dapo` | all tokens of the rollout batch | DAPO; TRL `dapo` (its default) |
# | `bnpo` | the tokens of each micro-batch | TRL `bnpo` (changes with the micro-batch size) |
# | `dr_grpo` | rows x the generation budget, a constant | Dr. GRPO; TRL `dr_grpo` |
#
# `grpo` gives the short answer's tokens 1/2 each and the long one's 1/3. `dapo` and `bnpo` average all 5
# tokens together (on one micro-batch they agree; over several, `bnpo` averages each micro-batch's own mean).
# `dr_grpo` divides by 2 x 4 = 8 whatever the lengths, and whatever width generation happened to stop at, so a
# token's weight never depends on how long its answer is (no length bias).

# %%
mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
adv = torch.tensor([1.0, -0.5])
logps = torch.log(torch.tensor([[0.2, 0.3, 0.4], [0.4, 0.1, 0.5]]))
for lt in ("grpo", "dapo", "bnpo", "dr_grpo"):
    print(f"{lt:8s} loss {grpo_loss(logps, logps, None, adv, mask, loss_type=lt, max_tokens=4)[0].item():+.4f}")

# %% [markdown]
# ## The clip
# A token whose ratio already moved past 1.2 in the direction its advantage wants gets no more gradient.

# %%
old = torch.log(torch.tensor([[0.2, 0.3]]))
for ratio in (1.0, 1.1, 1.3):
    new = (old + torch.log(torch.tensor([[ratio, 1.0]]))).requires_grad_()
    grpo_loss(new, old, None, torch.tensor([1.0]), torch.ones(1, 2))[0].backward()
    print(f"ratio {ratio}: gradient on that token {new.grad[0, 0].item():+.3f}")

# %% [markdown]
# ## One step by hand, checked against `train()`
# The pieces above make one GRPO step. Take it in the open, with the pure functions grpo.py uses, on a tiny
# batch (2 prompts x 4 answers of at most 12 tokens, on the CPU); then `train()` takes one step with the same
# seed and settings, and the two policies must be equal bit for bit.
#
# Before its loop, grpo.py's `train()` builds what `_setup.rl_start` builds here, in the same order: `Run(cfg)`
# fixes the thread count and the seeds, then the policy, the prompts and the reference (a frozen copy of the
# start); then AdamW at the schedule's first learning rate and two random streams, sampling first, prompt order
# second. (It also scores the held-out prompts before step 1: greedy answers draw no random numbers.)
# In smoke mode the start is usually a random model, which no checker ever scores above 0: every advantage
# would be 0 and the step would move nothing. So smoke mode scores the share of letters in each answer
# instead (`_setup.smoke_reward`).

# %%
cfg = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT / "one_step"), init=INIT,
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
# **Rollout and rewards** (`sample_and_score()`; in one process `rollout_share` is `rollout`). `batch.logprobs`
# are log pi_old, the sampler's log-probs: the denominator of the ratio.

# %%
batch = rollout(policy, enc, prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature, generator=gen)
mask = batch.completion_mask  # (B, T): B = 2 prompts x 4 answers, group after group; T <= 12 tokens
with torch.no_grad():
    ref_logps = completion_logprobs(ref, batch, cfg.temperature)  # (B, T) log pi_ref of the sampled tokens
rewards, _ = score_rollout(batch, reward_fn, cfg.max_new_tokens)  # (B,)

# %% [markdown]
# **Advantages** (`group_advantages` in `train()`'s loop): centred and scaled within each group.

# %%
advantages = group_advantages(rewards, cfg.group_size)  # (B,) (r - group mean) / (group std + eps)
print("rewards   ", [[round(x, 3) for x in row] for row in rewards.view(-1, cfg.group_size).tolist()])
print("advantages", [[round(x, 3) for x in row] for row in advantages.view(-1, cfg.group_size).tolist()])

# %% [markdown]
# **Loss, backward, optimizer step** (`update()`, one iteration). `micro_batches` hands the rows over shortest
# first (less padding per forward pass), so we take them in that order too: floats added in another order
# round differently in the last bit. Then `completion_logprobs` with gradients, `grpo_loss` (clipped ratio,
# each answer's token mean, beta times k3), and `run.optimizer_step`: clip the gradient norm, step, zero.
# On this first and only iteration the policy is pi_old, so the ratio is 1 up to float rounding.

# %%
rows = micro_batches(batch, len(batch))[0]  # (B,) every row, shortest first
logps = completion_logprobs(policy, batch.select(rows), cfg.temperature)  # (B, T) log pi_theta, with gradients
loss, info = grpo_loss(logps, batch.logprobs[rows], ref_logps[rows], advantages[rows], mask[rows], cfg.clip_eps,
                       cfg.beta)  # scalar
loss.backward()
grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
optimizer.step()
optimizer.zero_grad(set_to_none=True)
print(f"loss {loss.item():+.2e}  ratio {info['ratio'].item():.6f}  clip_frac {info['clip_frac'].item():.3f}  "
      f"grad_norm {grad_norm.item():.4f}")

# %% [markdown]
# **The same step by `train()`**, into OUT/one_step, then the two policies compared tensor by tensor.

# %%
train(cfg, reward_fn=reward_fn)
assert_same_weights(policy, OUT / "one_step" / "model.pt")
step_size(policy, INIT)

# %% [markdown]
# ## Train
# Same task, prompts and compute as lesson 04: 16 prompts x 8 answers per step. Watch `zero_std_frac`: the
# share of groups whose 8 answers all scored the same. Those groups have A = 0 and teach nothing, so GRPO
# learns fastest on prompts the model gets right *sometimes*.

# %%
overrides = dict(max_steps=3, prompts_per_step=2, group_size=4, max_new_tokens=12, eval_every=0, eval_limit=4,
                 init=INIT) if SMOKE else dict(init=INIT)
cfg = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT), **overrides)
summary = train(cfg)

# %%
train_rows = training_rows(OUT)
print("step  reward  zero_std  clip_frac  kl_ref")
for r in every_tenth(train_rows):
    print(f"{r['step']:4d}  {r['reward']:.3f}   {r['zero_std_frac']:.2f}      {r['clip_frac']:.3f}"
          f"     {r['kl_ref']:.4f}")
report_run(OUT, summary, train_rows, "zero_std_frac", "groups with zero reward spread", "grpo.png")
print((OUT / "samples.txt").read_text()[:1000])

# %% [markdown]
# ## Try next
# - `--num-iterations 4`: four updates per batch; `clip_frac` becomes non-zero, and you get more learning per
#   sample until the ratio drifts too far; is it more per second too? (`steps_per_s` is logged)
# - `--loss-type dr_grpo --scale-rewards false`: Dr. GRPO. Compare completion `length` over training.
# - `--beta 0`: no KL term (DAPO and Dr. GRPO drop it; the preset keeps the paper's 0.04). `kl_ref` grows
#   faster; do the domains that are not arithmetic hold?
