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
from minipost.logprobs import whiten
from minipost.optim import adamw, linear_decay_lr
from minipost.ppo import PRESETS, Config, gae, ppo_policy_loss, ppo_value_loss, train
from minipost.rewards import parse_reward, score_rollout, token_rewards
from minipost.rollout import completion_logprobs, completion_values, micro_batches, rollout

from _setup import (ONE_STEP, SMOKE, assert_same_weights, ensure_world,  # noqa: E402  (tutorials/_setup.py)
                    every_tenth, out_dir, report_run, rl_start, smoke_reward, start_checkpoint, step_size,
                    training_rows)

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
# ## One step by hand, checked against `train()`
# One PPO step is one rollout batch and the updates on it. Take it in the open, with the pure functions ppo.py
# uses, on a tiny batch (2 prompts x 4 answers of at most 12 tokens, on the CPU); then `train()` takes one step
# with the same seed and settings, and the policies, and the critics, must be equal bit for bit.
#
# Before its loop, ppo.py's `train()` builds what `_setup.rl_start` builds here, in the same order: `Run(cfg)`
# fixes the thread count and seeds the random number generator, then the policy, the prompts, the reference and
# the critic, whose fresh value head draws its initial weights from that seeded generator. Then an AdamW for
# each model and two random streams: sampling, and the order of the prompts (which later also shuffles the
# minibatches). (It also scores the held-out prompts before step 1: greedy answers draw no random numbers.)
# In smoke mode the start is usually a random model, which no checker ever scores above 0: every advantage
# would be 0 and the step would move nothing. So smoke mode scores the share of letters in each answer
# instead (`_setup.smoke_reward`).

# %%
cfg = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT / "one_step"), init=INIT,
                         **ONE_STEP)  # max_steps 1, 2 prompts x 4 answers, 12 tokens, one micro-batch, CPU
reward_fn = smoke_reward if SMOKE else parse_reward(cfg.reward)  # correct + 0.3 restate
policy, ref, critic, enc, records = rl_start(cfg, critic=True)
optimizer = adamw(policy, lr=linear_decay_lr(0, lr=cfg.lr, max_steps=cfg.max_steps), weight_decay=0.0,
                  betas=(0.9, 0.99))
critic_optimizer = adamw(critic, lr=cfg.critic_lr, weight_decay=0.0, betas=(0.9, 0.99))  # constant lr
gen = torch.Generator().manual_seed(cfg.seed)  # sampling
order_gen = torch.Generator().manual_seed(cfg.seed)  # prompt order, then the minibatch shuffles
perm = torch.randperm(len(records), generator=order_gen)  # a shuffled pass over the prompts
prompts = [records[i] for i in perm[:cfg.prompts_per_step].tolist()]  # next_prompts(): the first 2

# %% [markdown]
# **Rollout and scores** (`sample_and_score()`; in one process `rollout_share` is `rollout`). An answer
# without <|end|> loses `missing_stop_penalty` (1) from its score.

# %%
batch = rollout(policy, enc, prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature, generator=gen)
mask = batch.completion_mask  # (B, T): B = 2 prompts x 4 answers; T <= 12 tokens
with torch.no_grad():
    ref_logps = completion_logprobs(ref, batch, cfg.temperature)  # (B, T) log pi_ref of the sampled tokens
scores, _ = score_rollout(batch, reward_fn, cfg.max_new_tokens, cfg.missing_stop_penalty)  # (B,)

# %% [markdown]
# **Advantages** (`ppo_advantages()`): the critic's values of the sampled states, per-token rewards, GAE, and
# the advantages whitened over the batch's tokens.

# %%
with torch.no_grad():
    old_values = completion_values(critic, batch)  # (B, T) V(s_t), the critic before the update
rewards = token_rewards(scores, batch.logprobs, ref_logps, mask, cfg.beta)  # (B, T) -beta*k1, score at the end
advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (B, T) each
advantages = whiten(advantages, mask)  # (B, T) mean 0, std 1 over the batch's tokens
print("scores               ", [round(x, 3) for x in scores.tolist()])
print("advantages of answer 0", [round(x, 3) for x in advantages[0, :int(mask[0].sum())].tolist()])

# %% [markdown]
# **Minibatch updates** (`update()`, one pass: `ppo_epochs` 1). The order stream shuffles the rows into
# `num_minibatches` (2) minibatches; within each, `micro_batches` hands the rows over shortest first, so we take
# them in that order too (floats added in another order round differently in the last bit). Each minibatch:
# log-probs and values with gradients, the clipped policy loss plus `vf_coef` times the clipped value loss, one
# backward, and `run.optimizer_step` for the policy, then for the critic. The second minibatch's ratio is no
# longer exactly 1: the first step has moved the policy.

# %%
mb_size = -(-len(batch) // cfg.num_minibatches)  # rows per minibatch (ceil): 4
for minibatch in torch.randperm(len(batch), generator=order_gen).split(mb_size):  # (b,) shuffled rows
    rows = minibatch[micro_batches(batch.select(minibatch), len(minibatch))[0]]  # (b,) shortest first
    logps = completion_logprobs(policy, batch.select(rows), cfg.temperature)  # (b, T) with gradients
    values = completion_values(critic, batch.select(rows))  # (b, T) with gradients
    policy_loss, info = ppo_policy_loss(logps, batch.logprobs[rows], advantages[rows], mask[rows], cfg.clip_eps)
    value_loss, _ = ppo_value_loss(values, old_values[rows], returns[rows], mask[rows], cfg.clip_value)
    (policy_loss + cfg.vf_coef * value_loss).backward()  # two models: each gets its own term's gradient
    for model, opt in ((policy, optimizer), (critic, critic_optimizer)):  # run.optimizer_step, one per model
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(f"rows {rows.tolist()}: policy_loss {policy_loss.item():+.4f}  value_loss {value_loss.item():.4f}  "
          f"ratio {info['ratio'].item():.6f}")

# %% [markdown]
# **The same step by `train()`**, into OUT/one_step, then both models compared tensor by tensor (the critic is
# in OUT/one_step/state.pt, what a resumed run would continue from).

# %%
train(cfg, reward_fn=reward_fn)
assert_same_weights(policy, OUT / "one_step" / "model.pt")
assert_same_weights(critic, OUT / "one_step" / "state.pt", key="critic")
step_size(policy, INIT)

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
