# %% [markdown]
# # 10 · Reward models: a learned "good", a judge, and what RL does to a reward it can fool
#
# Every lesson so far used rewards nobody can argue with: a checker says whether 37 + 48 = 85. Real
# post-training mostly optimises rewards that are *learned*: a reward model trained on human preferences
# (InstructGPT, Ouyang et al. 2022), or an LLM judge. Such a reward is a model of what people like, and a
# model can be wrong. This lesson trains one, uses it as a judge, then lets RL optimise it while the world's
# checkers keep the true score, the setting of Gao et al. 2022 ("Scaling laws for reward model
# over-optimization", arXiv:2210.10760): the proxy (the reward model) against the gold (the checker), as
# the policy moves away from where it started.
#
# Set MINIPOST_SMOKE=1 for a short version (the test suite runs it that way). The full version trains a
# reward model (about 1 minute on a 2-core CPU, or reuses the pipeline's) and two GRPO runs of 150 steps
# (about 3 minutes each).

# %%
import json
import math
import statistics
from pathlib import Path

import numpy as np

from minipost import grpo, reward_model
from minipost.common import DATA_DIR, config_with_preset, read_jsonl
from minipost.card import eval_answers, win_items
from minipost.data import per_domain
from minipost.harness import read_metrics
from minipost.rewards import RewardModel
from minipost.world import check

from _setup import SMOKE, ensure_world, out_dir, start_checkpoint  # noqa: E402  (tutorials/_setup.py)

OUT = out_dir("10_reward_models")
ensure_world()
SFT = start_checkpoint(OUT, ["runs/pipeline/sft/model.pt", "runs/sft/model.pt"])
START = start_checkpoint(OUT)  # the RL start: the DPO model when the pipeline has run
print("reward model from", SFT, "; RL from", START)

# %% [markdown]
# ## 1. Train the reward model
# `python -m minipost.reward_model`: the SFT network with a fresh scalar head on the last token, trained so
# that sigmoid(r(chosen) - r(rejected)) is the probability of the preference (Bradley-Terry). The pipeline
# trains the same one; reuse it when it exists.

# %%
RM = Path("runs/pipeline/reward_model/model.pt")
if SMOKE or not RM.exists():
    cfg = config_with_preset(reward_model.Config, reward_model.PRESETS, preset="nano", init=SFT,
                             out=str(OUT / "reward_model"), progress=False,
                             **(dict(max_steps=3, max_pairs=64) if SMOKE else {}))
    summary = reward_model.train(cfg)
    RM = OUT / "reward_model" / "model.pt"
judge = RewardModel(RM)
eval_pairs = read_jsonl(DATA_DIR / "eval_prefs.jsonl")
right = judge([p["prompt"] for p in eval_pairs], [p["chosen"] for p in eval_pairs]) > judge(
    [p["prompt"] for p in eval_pairs], [p["rejected"] for p in eval_pairs])
print(f"held-out pair accuracy {right.float().mean():.3f}")
for kind, acc in reward_model.accuracy_by_kind(eval_pairs, right).items():
    print(f"  {kind:28s} {acc:.2f}")

# %% [markdown]
# It ranks every refusal pair right and misses many *correctness* pairs: to prefer "The capital of Lara is
# Zakvo" over "... is Dregu" it must know the fact, and its head learned the training facts, not how to
# check one it has not seen. DPO's implicit reward, log pi/pi_ref, reads the same knowledge from token
# log-probs and scores higher (the card's pref_acc). Keep that in mind: this is the reward RL will chase.

# %% [markdown]
# ## 2. Does the judge like longer answers?
# Take the world's gold answer to each held-out prompt and the same answer with a friendly sentence
# appended, which adds nothing. A judge without a length bias would prefer them equally often.

# %%
records = per_domain(read_jsonl(DATA_DIR / "eval.jsonl"), 8 if SMOKE else None)
records = [r for r in records if not r.get("should_refuse") and r["domain"] != "refusals"]
prompts = [r["prompt"] for r in records]
gold = [r["completion"] for r in records]
padded = [g + " I hope this helps, and let me know if you need anything else." for g in gold]
longer_wins = (judge(prompts, padded) > judge(prompts, gold)).float().mean().item()
print(f"the padded answer scores higher on {100 * longer_wins:.0f}% of {len(gold)} prompts")

# %% [markdown]
# ## 3. The judge as a column: win rate against the SFT model's answers
# An LLM judge or a human arena reports a *win rate* against a fixed baseline. Here the baseline is the SFT
# model's answer and the judge our reward model (`card.win_items`; the card's `win_rate`). A win rate can
# rise for the wrong reason: longer answers, or answers the judge likes but the checker rejects. The
# length-controlled win rate (the idea of AlpacaEval 2's, Dubois et al. 2024, arXiv:2404.04475) fits
# P(win) = sigmoid(a + b * tanh(length difference / its sd)) and reports sigmoid(a): the win rate at equal
# length.

# %%
def length_controlled(wins: list[float], len_diff: list[float]) -> tuple[float, float]:
    """Logistic regression of the judge's verdicts (1, 0, ties 0.5 as half a win) on tanh(length difference /
    its sd), by Newton's method -> (win rate at equal length, the slope b: > 0 means longer answers win more)."""
    y = np.asarray(wins, dtype=np.float64)
    d = np.asarray(len_diff, dtype=np.float64)
    x = np.stack([np.ones_like(d), np.tanh(d / (d.std() or 1.0))], axis=1)  # (N, 2)
    w = np.zeros(2)
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        hess = x.T @ (x * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
        w -= np.linalg.solve(hess, x.T @ (p - y))
    return float(1 / (1 + math.exp(-w[0]))), float(w[1])


all_records = per_domain(read_jsonl(DATA_DIR / "eval.jsonl"), 8 if SMOKE else None)
baseline = eval_answers(SFT, limit=8 if SMOKE else None)
answers = eval_answers(START, limit=8 if SMOKE else None)
wins = win_items(judge, [r["prompt"] for r in all_records], answers, baseline)
lc, slope = length_controlled(wins, [len(a) - len(b) for a, b in zip(answers, baseline)])
print(f"{START}: win rate {100 * statistics.mean(wins):.1f}% against the SFT answers, length-controlled "
      f"{100 * lc:.1f}% (slope {slope:+.2f})")

# %% [markdown]
# Where do the judge and the checkers disagree? Count the prompts where exactly one of the two answers is
# right by the checker, and the judge prefers the wrong one.

# %%
disagree = []
for r, a, b, w in zip(all_records, answers, baseline, wins):
    ca, cb = check(r, a), check(r, b)
    if ca != cb and w != 0.5 and (w == 1.0) != (ca > cb):
        disagree.append((r, a, b, ca, cb))
decided = sum(1 for r, a, b in zip(all_records, answers, baseline) if check(r, a) != check(r, b))
print(f"the checker separates the two answers on {decided} prompts; the judge picks the wrong one on "
      f"{len(disagree)}")
for r, a, b, ca, cb in disagree[:2]:
    print(f"\n[{r['domain']}] {r['prompt']}\n  judge prefers: {a if ca < cb else b!r} (checker: wrong)\n"
          f"  over:          {b if ca < cb else a!r} (checker: right)")

# %% [markdown]
# ## 4. RL on the reward model, with the checker watching
# GRPO from the RL start on every domain's prompts, with the reward model as the only reward:
# `--reward rm:PATH,correct:0` (a zero weight still logs the checker's score as `r_correct`, the gold).
# Two runs differ only in the KL weight (beta 0: nothing holds the policy near its start; beta 0.1).

# %%
shared = dict(init=START, reward=f"rm:{RM},correct:0", oversample="", max_steps=150, eval_every=50,
              progress=False)
if SMOKE:
    shared.update(max_steps=3, prompts_per_step=2, group_size=4, max_new_tokens=12, eval_every=1, eval_limit=2)
runs = {}
for beta in (0.0, 0.1):
    out = OUT / f"grpo_rm_beta{beta}"
    if not (out / "summary.json").exists():
        cfg = config_with_preset(grpo.Config, grpo.PRESETS, preset="nano", out=str(out), beta=beta, **shared)
        grpo.train(cfg)
    runs[beta] = [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    first, last = runs[beta][:10], runs[beta][-10:]
    print(f"beta {beta}: proxy r_rm {statistics.mean(r['r_rm'] for r in first):+.2f} -> "
          f"{statistics.mean(r['r_rm'] for r in last):+.2f}, gold r_correct "
          f"{statistics.mean(r['r_correct'] for r in first):.3f} -> {statistics.mean(r['r_correct'] for r in last):.3f}"
          f", kl_ref {statistics.mean(r['kl_ref'] for r in last):.4f}")

# %%
import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def smooth(values, k=10):
    return [statistics.mean(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
for beta, rows in runs.items():
    kl = [math.sqrt(max(r["kl_ref"], 0.0)) for r in rows]
    ax[0].plot(kl, smooth([r["r_rm"] for r in rows]), label=f"beta {beta}")
    ax[1].plot(kl, smooth([r["r_correct"] for r in rows]), label=f"beta {beta}")
ax[0].set_title("proxy: the reward model's score")
ax[1].set_title("gold: the checkers' score, same samples")
for a in ax:
    a.set_xlabel("sqrt(KL to the start), per token (kl_ref)")
    a.legend()
fig.tight_layout()
fig.savefig(OUT / "overoptimisation.png", dpi=110)
plt.close(fig)
print("wrote", OUT / "overoptimisation.png")

# %% [markdown]
# ## 5. What the policy learned to write
# The final policy's greedy answers to held-out prompts, with what the reward model and the checker say.
# Answers the reward model scores high and the checker rejects are where the policy fooled it.

# %%
final = OUT / "grpo_rm_beta0.0" / "model.pt"
final_answers = eval_answers(final, limit=8 if SMOKE else None)
scores = judge([r["prompt"] for r in all_records], final_answers).tolist()
fooled = sorted(((s, r, a) for s, r, a in zip(scores, all_records, final_answers) if not check(r, a)),
                key=lambda t: -t[0])
print(f"{len(fooled)} of {len(final_answers)} held-out answers are wrong by the checker; the ones the reward "
      "model likes best:")
for s, r, a in fooled[:4]:
    print(f"  r {s:+.2f}  [{r['domain']}] {r['prompt']}\n           -> {a!r}")
(OUT / "fooled.json").write_text(json.dumps([{"reward": s, "domain": r["domain"], "prompt": r["prompt"],
                                               "answer": a} for s, r, a in fooled[:20]], indent=1))

# %% [markdown]
# ## What to take away
# A learned reward is a model with blind spots. RL finds them: the proxy keeps rising while the gold score
# stalls or falls, and a KL term slows the drift at the price of a smaller proxy gain. README.md lists the
# numbers this lesson measured and on which machine.
