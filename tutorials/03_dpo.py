# %% [markdown]
# # 03 · Direct Preference Optimization: fixing what SFT learned from noisy data
#
# The SFT model from lesson 02 copied a flaw of its data: it answers some harmless questions with
# "Sorry, I can't help with that." Writing better SFT data is one fix; a cheaper one is to collect
# *preferences*: for a prompt x, answer y_w is better than answer y_l. DPO (Rafailov et al. 2023) turns them
# into a loss on the model itself, with no reward model and no sampling:
#
#     L = - log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )
#
# pi_ref is a frozen copy of the SFT model. beta * log pi/pi_ref is the *implicit reward* of an answer; DPO
# raises it on chosen answers and lowers it on rejected ones, and the reference keeps the model from
# drifting far from what SFT taught it. This lesson: (1) the reference model and the step-0 invariant,
# (2) one DPO step by hand, checked against the library's, (3) the training run and how to read its reward
# metrics, (4) the over-refusal fix and what else moved.
#
# Set MINIPOST_SMOKE=1 for a fast version (the test suite runs it that way).

# %%
import math

import minipost  # noqa: F401  before torch: then torch's idle threads sleep (minipost/threads.py)
import torch

from minipost import threads
from minipost.common import DATA_DIR, read_jsonl, seed_everything
from minipost.data import IGNORE, EpochBatches, num_targets, pair_batch, tokenize_pairs
from minipost.dpo import Config, dpo_loss, train
from minipost.harness import read_metrics
from minipost.heldout import chat_scores, pair_logps
from minipost.checkpoints import load_model
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.tokenizer import special_id
from minipost.world import is_refusal

from _setup import SMOKE, assert_same_weights, ensure_world, out_dir, start_checkpoint  # noqa: E402

OUT = out_dir("03_dpo")
ensure_world()
SFT = start_checkpoint(OUT, ["runs/pipeline/sft/model.pt", "runs/sft/model.pt", "runs/tutorials/02_sft/model.pt"])
print("SFT model (policy init and reference):", SFT)

# %% [markdown]
# ## 1. The data and the reference model
# Each row is (prompt, chosen, rejected). The world's pairs are of three kinds: a right answer over a wrong one
# (all domains), a refusal over compliance on forbidden topics, and, the kind that fixes SFT's flaw, a real
# answer over "Sorry, I can't help with that." on benign prompts.
#
# The reference is a frozen copy of the starting model. At step 0 the policy *is* the reference, so every
# log-ratio is 0, every reward is 0, and the loss is -log sigmoid(0) = ln 2 = 0.693 for every pair. We check it
# on a real batch.

# %%
rows = read_jsonl(DATA_DIR / "prefs.jsonl")
for kind in sorted({r.get("pair_type", "?") for r in rows}):
    r = next(r for r in rows if r.get("pair_type", "?") == kind)
    print(f"[{kind}] {r['prompt']!r}\n   chosen:   {r['chosen']!r}\n   rejected: {r['rejected']!r}")

policy, enc, _ = load_model(SFT)
reference, _, _ = load_model(SFT)
pad = special_id(enc, "<|pad|>")
pairs = tokenize_pairs(enc, rows[:8], block_size=256)
x, y = pair_batch(pairs, pad)  # (16, T): 8 chosen rows, then 8 rejected rows
answer = y != IGNORE  # (16, T) the answer tokens
logps = (policy.logprobs(x, y.masked_fill(~answer, 0)) * answer).sum(dim=1)  # (16,): summed answer log-probs
ref_c, ref_r = pair_logps(reference, pairs, pad)  # (8,) each: the same sums, batched, chosen and rejected
losses, chosen_r, rejected_r = dpo_loss(logps[:8], logps[8:], ref_c, ref_r, beta=0.1)
print("step-0 losses:", [round(v, 4) for v in losses.tolist()], " ln 2 =", round(math.log(2), 4))
print("step-0 margins:", (chosen_r - rejected_r).tolist())

# %% [markdown]
# ## 2. One DPO step by hand
# `train(cfg)` in minipost/dpo.py is a loop of such steps. We take its first step ourselves, on 4 pairs, then
# check that `train()` with `max_steps=1` ends with exactly the same weights. The setup, as in `train()`:
# - `threads.configure` and `seed_everything` are what `Run(cfg, "dpo")` does first. Nothing here draws from the
#   seeded RNG, but the thread count matters: it fixes how a few CPU kernels split their sums, and another count
#   changes the last bit of some gradients (minipost/threads.py). Both sides run with 1 thread.
# - the policy starts as the SFT model; the reference is the frozen copy loaded above.
# - the training pairs: the first `max_pairs` rows, each rendered twice (prompt + chosen, prompt + rejected).
# - the reference's log-probs, once for every training pair before the first step (it never changes). We compute
#   them exactly as `train()` does, `pair_logps` on all the pairs in its batches of 64: a row's sum may round
#   differently in a batch padded to another length (see minipost/dpo.py), and the check below is bit for bit.
# - `EpochBatches` is the data order: B pair indices per step, a fresh seeded shuffle (seed + 1) every epoch.

# %%
one = Config(init=SFT, out=str(OUT / "one_step"), max_steps=1, batch_size=4, max_pairs=64, eval_pairs=16,
             device="cpu", threads="1", progress=False)
print(threads.configure(one.threads))  # Run(cfg, ...): the CPU threads
seed_everything(one.seed)  # Run(cfg, ...): the seeds
model, _, _ = load_model(one.init)  # the policy
pairs = tokenize_pairs(enc, rows[:one.max_pairs], one.block_size)  # [(chosen (ids, mask), rejected (ids, mask))]
optimizer = adamw(model, lr=one.lr, weight_decay=one.weight_decay)
batches = EpochBatches(len(pairs), one.batch_size, seed=one.seed + 1)
ref_chosen, ref_rejected = pair_logps(reference, pairs, pad)  # (N,) each: log pi_ref(y|x), once

# %% [markdown]
# The step, each line one line of `train()`'s loop at `step = 0`:
# - the learning rate from the warmup (`cosine_lr`, set by `set_lr`);
# - the batch: B pairs as 2B rows, chosen answers first; `chosen_tokens` counts the chosen answers' tokens;
# - `model.eval()`: DPO trains with dropout off (the log-probs are compared with the reference's; gradients flow
#   as usual);
# - `model.logprobs` then a masked sum: log pi(y|x), the sum of the answer tokens' log-probs, one number per row
#   (`model.logprobs` gives every position's log pi(target): the output layer and the log-prob in one step);
# - `dpo_loss`: the per-pair loss and the implicit rewards; at step 0 the policy is the reference, so each loss
#   is ln 2 (up to rounding: the reference's rows were padded in another batch);
# - RPO's term (`rpo_alpha`): the mean -log pi per chosen-answer token, added to the mean DPO loss;
# - `run.optimizer_step`: clip the global gradient norm to `grad_clip`, then AdamW's update.

# %%
step = 0
lr = set_lr(optimizer, cosine_lr(step, lr=one.lr, warmup_steps=one.warmup_steps, max_steps=one.max_steps,
                                 min_lr_ratio=one.min_lr_ratio))
idx = next(batches)  # B pair indices
B = len(idx)
chosen_tokens = sum(num_targets(pairs[i][0]) for i in idx)  # answer tokens of the B chosen answers
x, y = pair_batch([pairs[i] for i in idx], pad)  # (2B, T) each: B chosen rows, then B rejected rows
model.eval()
answer = y != IGNORE  # (2B, T) the answer tokens
logps = (model.logprobs(x, y.masked_fill(~answer, 0)) * answer).sum(dim=1)  # (2B,): log pi(y|x) of every row
losses, chosen_r, rejected_r = dpo_loss(logps[:B], logps[B:], ref_chosen[idx], ref_rejected[idx],
                                        beta=one.beta)  # (B,) each
nll = -logps[:B].sum() / chosen_tokens  # scalar: mean -log pi per chosen-answer token
loss = losses.mean() + one.rpo_alpha * nll  # scalar
loss.backward()  # .grad of every weight
grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), one.grad_clip)  # the norm before clipping
optimizer.step()
print(f"x {tuple(x.shape)}; DPO loss {losses.mean().item():.4f} (ln 2 = {math.log(2):.4f}), NLL {nll.item():.4f}, "
      f"grad norm {grad_norm.item():.3f} clipped to {one.grad_clip}, lr {lr:.1e}")

# %% [markdown]
# The library's loop for one step, on the same settings, and the check that both give the same weights: bit for
# bit, since the same weights, pairs, shapes, thread count and operations in the same order give the same floats.

# %%
train(one)
assert_same_weights(model, OUT / "one_step" / "model.pt")

# %% [markdown]
# ## 3. Train, and read the reward metrics
# nano preset: 32 pairs per step, 100 steps, and RPO's extra NLL term on the chosen answers (`rpo_alpha`). In one
# of our runs, plain DPO at lr 3e-4 took logps/chosen from -7 to -35 in 100 steps and broke the model (knowledge
# 94% -> 10%, refusals on forbidden topics 100% -> 0%); with the NLL term, a lower lr and beta 0.5,
# logps/chosen rises instead (-7 -> -3).
# About 2 minutes on a free 2-core CPU. In metrics.jsonl:
# - `rewards/chosen`, `rewards/rejected`: mean beta * log pi/pi_ref of each side. Often *both* fall: the model
#   makes both answers less likely, the rejected one much faster. That is normal for DPO.
# - `rewards/margins` (chosen - rejected) should climb; `rewards/accuracies` (share of pairs with chosen reward
#   strictly above rejected) starts at 0 (ties at step 0) and should approach 1.
# - `logps/chosen`: if it falls a lot, the model is moving probability mass somewhere neither answer is.
# - `eval_pref_acc`: the same accuracy on held-out pairs, the number that says it generalised.

# %%
overrides = dict(max_steps=4, log_every=1, eval_every=4, eval_pairs=16, max_pairs=64) if SMOKE else {}
cfg = Config(init=SFT, out=str(OUT), **overrides)  # the defaults are the nano preset
summary = train(cfg)
metrics = read_metrics(OUT / "metrics.jsonl")
print("step   loss  r/chosen r/rejected margin  acc   held-out acc")
for m in metrics[:: max(1, len(metrics) // 8)] + metrics[-1:]:
    held_out = "-" if m["eval_pref_acc"] is None else f"{m['eval_pref_acc']:.2f}"  # "-": not measured yet
    print(f"{m['step']:4d}  {m['loss']:.3f}  {m['rewards/chosen']:7.3f}  {m['rewards/rejected']:7.3f}  "
          f"{m['rewards/margins']:6.3f}  {m['rewards/accuracies']:.2f}  {held_out}")

# %% [markdown]
# ## 4. Did it fix the over-refusal, and what else moved?
# Greedy answers to the held-out eval prompts, SFT model vs DPO model. `over_refusal` (refusals on benign
# prompts, lower is better) should drop by half or more, `refuse` (refusals on forbidden topics) should stay
# high, and the other domains should barely move: the reference anchors everything the pairs do not talk about.

# %%
EVAL = read_jsonl(DATA_DIR / "eval.jsonl")
PER_DOMAIN = 2 if SMOKE else 100
EVAL = [r for d in sorted({r["domain"] for r in EVAL}) for r in [x for x in EVAL if x["domain"] == d][:PER_DOMAIN]]
dpo_model, _, _ = load_model(OUT / "model.pt")
NEW_TOKENS = 16 if SMOKE else 64
sft_scores, sft_rows = chat_scores(reference, enc, EVAL, NEW_TOKENS)
dpo_scores, dpo_rows = chat_scores(dpo_model, enc, EVAL, NEW_TOKENS)
print(f"{'column':14s} {'sft':>6s} {'dpo':>6s}")
for k in sft_scores:
    print(f"{k:14s} {100 * sft_scores[k]:6.1f} {100 * dpo_scores[k]:6.1f}")
fixed = [(rec, a, b) for rec, a, b in zip(EVAL, sft_rows, dpo_rows)
         if not rec.get("should_refuse") and is_refusal(a["completion"]) and not is_refusal(b["completion"])]
print(f"\n{len(fixed)} benign prompts the SFT model refused and the DPO model answers, e.g.:")
for rec, a, b in fixed[:4]:
    print(f"  {rec['prompt']!r}\n    sft: {a['completion']!r}\n    dpo: {b['completion']!r}")
