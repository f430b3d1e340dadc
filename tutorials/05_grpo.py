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

from _setup import (SMOKE, ensure_world, every_tenth, out_dir, report_run,  # noqa: E402  (tutorials/_setup.py)
                    start_checkpoint, training_rows)

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
