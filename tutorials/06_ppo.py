# %% [markdown]
# # 06 · PPO: a critic, per-token rewards and GAE
#
# RLOO and GRPO give every token of an answer the same advantage. PPO (Schulman et al. 2017, applied to
# language models by Ziegler et al. 2019 and InstructGPT) learns a *critic* V(s_t): the expected final reward
# from the state "prompt + the first t tokens". Then each token gets its own advantage: did this token make
# a good ending more or less likely than the critic expected?
#
#     r_t = -beta * (log pi(y_t) - log pi_ref(y_t))  + (score at the last token)
#     A_t = GAE over delta_t = r_t + gamma V(s_t+1) - V(s_t)
#     loss = clipped policy loss (as in GRPO) + 0.5 * clipped value loss
#
# The price: a second network to train (here a copy of the policy with a value head), more hyperparameters,
# and a critic that starts knowing nothing. This lesson shows the per-token bookkeeping, then trains.
#
# Set MINIPOST_SMOKE=1 for a few-second version (the test suite runs it that way).

# %%
from pathlib import Path

import minipost  # noqa: F401  first: it makes torch's idle threads sleep (minipost/threads.py)
import torch

from minipost.common import DATA_DIR, config_with_preset, read_jsonl
from minipost.ppo import PRESETS, Config, gae, token_rewards, train

from _setup import (SMOKE, ensure_world, every_tenth, out_dir, report_run,  # noqa: E402  (tutorials/_setup.py)
                    start_checkpoint, training_rows)

OUT = out_dir("06_ppo")
ensure_world()
INIT = start_checkpoint(OUT)
print("starting from", INIT)

# %% [markdown]
# ## Per-token rewards
# A 4-token answer that scored 1. The KL penalty is paid on every token (here the policy likes token 2 more
# than the reference does); the checker's score arrives only at the last token.

# %%
logps = torch.tensor([[-1.0, -0.5, -2.0, -0.1]])
ref_logps = torch.tensor([[-1.0, -1.5, -2.0, -0.1]])
mask = torch.ones(1, 4)
rewards = token_rewards(torch.tensor([1.0]), logps, ref_logps, mask, beta=0.1)
print("per-token rewards", [round(x, 3) for x in rewards[0].tolist()])

# %% [markdown]
# ## GAE: from rewards and values to advantages
# With gamma = lam = 1, A_t is just (the rewards still to come) - V(s_t). lam < 1 trusts the critic more and
# the sampled future less: lower variance, some bias. Here the critic thought the answer was going badly
# (V = 0.2) until token 3 (V = 0.9): token 2 gets the biggest advantage, it is the one that turned things round.
# The nano preset uses lam = 1: its critic starts as an untrained head, and its episodes are 15 tokens long.

# %%
values = torch.tensor([[0.2, 0.2, 0.9, 1.0]])
for lam in (1.0, 0.95, 0.0):
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=lam)
    print(f"lam {lam}: advantages", [round(x, 3) for x in adv[0].tolist()],
          " returns", [round(x, 3) for x in ret[0].tolist()])

# %% [markdown]
# ## Train
# Same prompts and sampling budget as lessons 04 and 05 (16 prompts x 8 answers per step). PPO adds two
# minibatch updates per batch and the critic. An answer that runs out of tokens without <|end|> loses 1 from
# its score (`missing_stop_penalty`), so rambling never pays.
# What to watch: `explained_var` (how much of the return's variance the critic explains; it starts near 0 or
# below and should rise), `value_loss`, `approx_kl` (k3 estimate of KL(pi_old || pi) per minibatch: large
# values mean the updates are too big), `clip_frac`.

# %%
overrides = dict(max_steps=3, prompts_per_step=2, group_size=4, max_new_tokens=12, eval_every=0, eval_limit=4,
                 init=INIT) if SMOKE else dict(init=INIT)
cfg = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT), **overrides)
summary = train(cfg)

# %%
train_rows = training_rows(OUT)
print("step  reward  value_loss  explained_var  approx_kl  clip_frac")
for r in every_tenth(train_rows):
    print(f"{r['step']:4d}  {r['reward']:.3f}   {r['value_loss']:.4f}      {r['explained_var']:+.3f}         "
          f"{r['approx_kl']:.5f}    {r['clip_frac']:.3f}")
report_run(OUT, summary, train_rows, "explained_var", "critic's explained variance", "ppo.png")
print((OUT / "samples.txt").read_text()[:1000])

# %% [markdown]
# ## Try next
# - `--ppo-epochs 2 --num-minibatches 4`: more reuse of each batch; watch `approx_kl` and `clip_frac` rise.
# - `--beta 0`: no KL penalty; `kl_ref` grows faster. `--beta 0.1`: the policy barely moves.
# - `--lam 0.95` (TRL's default) against the preset's 1.0 (Monte Carlo returns), and `--critic-lr` 10x
#   lower: how quickly does `explained_var` rise, and does the reward curve care?
