# %% [markdown]
# # 09 · The RL variants the field runs today, on one budget, with error bars
#
# GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++ and PPO start from the same DPO checkpoint, train on the same
# arithmetic prompts for the same number of steps (16 prompts x 8 answers each), each with three seeds, and
# are scored on the same held-out items: arithmetic, which they train on, and every other domain, which they
# never see. A seed is one sample of a noisy process, so every number below is a mean over seeds with its
# spread (the standard deviation, `±`).
#
# | method | what changes (the file and flags) |
# |---|---|
# | GRPO | grpo.py preset: group-scaled advantages, sequence-mean loss, k3 KL in the loss (beta 0.04) |
# | Dr. GRPO | `--loss-type dr_grpo --scale-rewards false`: constant normaliser, advantages only centred |
# | DAPO | `--loss-type dapo --clip-eps-high 0.28 --dynamic-sampling true --overlong-buffer 8 --beta 0` |
# | GSPO | `--importance-sampling-level sequence --clip-eps 3e-4 --clip-eps-high 4e-4 --beta 0 --num-iterations 2` |
# | RLOO | reinforce.py preset: leave-one-out baseline, one on-policy step |
# | REINFORCE++ | `--baseline reinforce++ --kl-in reward`: per-token returns whitened over the batch |
# | PPO | ppo.py preset: critic, GAE, KL in the reward |
#
# GSPO takes two optimizer steps per batch because with one its ratio is 1 and it is GRPO exactly. Each
# method keeps its file's preset learning rate (RLOO and REINFORCE++ 1e-4, the others 5e-5; see lesson 07).
# The last sections answer, with these runs' own numbers, questions learners ask on the trackers of TRL
# and verl: why is my GRPO loss 0, why is my reward flat, why do DPO's chosen log-probs fall, which KL?
#
# Set MINIPOST_SMOKE=1 for a short version (the test suite runs it that way). The full version trains
# 7 methods x 3 seeds x 100 steps and 5 KL runs: about 40 minutes on a 2-core CPU.

# %%
import itertools
import json
import math
import statistics

import numpy as np

from minipost import grpo, ppo, reinforce
from minipost.common import DATA_DIR, config_with_preset, read_jsonl
from minipost.card import ALPHA, HIGHER_IS_BETTER, binomial_ci, evaluate_items, paired_test, write_report
from minipost.data import per_domain
from minipost.harness import read_metrics

from _setup import SMOKE, ensure_world, out_dir, start_checkpoint  # noqa: E402  (tutorials/_setup.py)

OUT = out_dir("09_rl_variants")
ensure_world()
INIT = start_checkpoint(OUT)
print("starting from", INIT)

METHODS = {
    "grpo": (grpo, {}),
    "dr_grpo": (grpo, dict(loss_type="dr_grpo", scale_rewards=False)),
    "dapo": (grpo, dict(loss_type="dapo", clip_eps_high=0.28, dynamic_sampling=True, overlong_buffer=8, beta=0.0)),
    "gspo": (grpo, dict(importance_sampling_level="sequence", clip_eps=3e-4, clip_eps_high=4e-4, beta=0.0,
                        num_iterations=2)),
    "rloo": (reinforce, dict(baseline="rloo")),
    "reinforce++": (reinforce, dict(baseline="reinforce++", kl_in="reward")),
    "ppo": (ppo, {}),
}
SEEDS = [1337] if SMOKE else [1337, 2, 3]
shared = dict(init=INIT, domains="arithmetic", oversample="", max_steps=100, eval_every=25, progress=False)
if SMOKE:
    shared.update(max_steps=2, prompts_per_step=2, group_size=4, max_new_tokens=12, eval_every=1, eval_limit=4)
LIMIT = 4 if SMOKE else None  # held-out items per domain for the report card (None: all)


def run(name, module, extra, seed, out):
    """Train one method with one seed (or reuse a finished run) -> its summary."""
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    cfg = config_with_preset(module.Config, module.PRESETS, preset="nano", out=str(out), seed=seed,
                             **{**shared, **extra})
    return module.train(cfg)


# %% [markdown]
# ## Train every method with every seed

# %%
summaries = {name: {seed: run(name, module, extra, seed, OUT / f"{name}_s{seed}") for seed in SEEDS}
             for name, (module, extra) in METHODS.items()}

# %% [markdown]
# ## The report card, mean ± sd over seeds
# One report-card evaluation per final checkpoint (every held-out column, card.evaluate_items), then the
# card over seeds (card.card): each cell is the mean ± sd of the three seeds, and its mark compares the
# seed-averaged items with `start`, the DPO model all of them began from, by a paired bootstrap on the same
# items. How large a difference between two methods must be to count is not guessed here: the next cell
# works it out from these runs' own spreads.

# %%
items = {"start": evaluate_items(INIT, limit=LIMIT)}
for name in METHODS:
    items[name] = [evaluate_items(OUT / f"{name}_s{seed}" / "model.pt", limit=LIMIT) for seed in SEEDS]
report = write_report(items, OUT / "card", parents={name: "start" for name in METHODS})
seconds = {name: statistics.mean(s["seconds"] for s in summaries[name].values()) for name in METHODS}
print("\nseconds per run (mean over seeds): " + ", ".join(f"{n} {t:.0f}" for n, t in seconds.items()))
(OUT / "variants.json").write_text(json.dumps({"card": report, "seconds": seconds, "seeds": SEEDS}, indent=1))

# %% [markdown]
# ## What the card says, computed from it
# Two kinds of noise sit in every cell: which held-out items there are (the card's paired test against `start`
# measures it) and which seed a run drew (the sd over seeds measures it). The rule used below for two methods:
# they differ beyond the noise only when the gap between their means is larger than both seed spreads *and* a
# paired test on the same items gives p < 0.05. With one seed there is no spread to compare with, so no two
# methods can be told apart: one run of each is as much luck as method. For every column: how many methods the
# card marks better or worse than `start`, which change was best and which worst, and how many of the pairs of
# methods differ beyond the noise.

# %%
def seed_averaged(name, column):
    """A method's per-item scores on `column`, averaged over its seeds (the items the card tests)."""
    return np.mean([seed_items[column] for seed_items in items[name]], axis=0)


def apart(a, b, column) -> bool:
    """Do methods a and b differ on `column` beyond the noise: a gap larger than both seed spreads, and p < ALPHA
    on the same items? Never with one seed (no spread to compare with)."""
    if len(SEEDS) < 2:
        return False
    ca, cb = report[a][column], report[b][column]
    gap = abs(ca["value"] - cb["value"])
    p = paired_test(seed_averaged(a, column), seed_averaged(b, column))["p"]
    return gap > max(ca["sd"], cb["sd"]) and p < ALPHA


def who(names) -> str:
    return names[0] if len(names) == 1 else f"{len(names)} methods tied"


columns = [c for c in report["start"] if all("diff" in report[m].get(c, {}) for m in METHODS)]
pairs = list(itertools.combinations(METHODS, 2))
apart_pairs = {c: [(a, b) for a, b in pairs if apart(a, b, c)] for c in columns}
marked = {c: {mark: [m for m in METHODS if report[m][c]["mark"] == mark] for mark in "▲▼"} for c in columns}
print(f"{len(METHODS)} methods, {len(SEEDS)} seed(s) each; changes against start in points (val_loss in nats):")
for c in columns:
    scale, digits = (1, 3) if c == "val_loss" else (100, 1)
    better = {m: report[m][c]["diff"] * (1 if HIGHER_IS_BETTER.get(c, True) else -1) for m in METHODS}  # > 0: better
    top, bottom = max(better.values()), min(better.values())
    best, worst = [m for m in METHODS if better[m] == top], [m for m in METHODS if better[m] == bottom]
    moves = ("no method changed it" if top == bottom == 0 else
             f"best change {who(best)} {scale * report[best[0]][c]['diff']:+.{digits}f}, "
             f"worst {who(worst)} {scale * report[worst[0]][c]['diff']:+.{digits}f}")
    print(f"  {c:16s} {len(marked[c]['▲'])} better, {len(marked[c]['▼'])} worse than start (p < {ALPHA}); {moves}; "
          f"{len(apart_pairs[c])} of {len(pairs)} pairs of methods apart")

# %% [markdown]
# ## "Why is my GRPO loss 0 at the start?"
# Because it should be. On the first step the ratio is exactly 1 and the KL to the reference is 0, so the
# `grpo` loss is minus the mean of the advantages, and group advantages sum to zero in every group. The
# gradient need not be zero: each answer's log-probs are pushed up or down by its own advantage, and only a
# batch whose groups all scored alike has none. Watch `grad_norm` and `reward`, not `loss`, in the first
# steps. The cell checks both on this run's first step.

# %%
first = read_metrics(OUT / f"grpo_s{SEEDS[0]}" / "metrics.jsonl")
first = [r for r in first if "reward" in r][0]
print(f"GRPO step 1: loss {first['loss']:.2e}, ratio {first['ratio']:.6f}, kl_ref {first['kl_ref']:.2e}, "
      f"grad_norm {first['grad_norm']:.3f}")
print("the loss is " + ("0 up to float rounding (|loss| < 1e-5), as the equations say" if abs(first["loss"]) < 1e-5
                        else "not 0 (|loss| >= 1e-5): more than the mean advantage entered it; see ratio and kl_ref"))
print("the gradient is " + ("not 0: each answer was pushed by its own advantage" if first["grad_norm"] > 0 else
                            f"0 too: {first['zero_std_frac']:.0%} of the groups scored alike, and in such a group "
                            "every advantage is 0"))

# %% [markdown]
# ## "Why is my reward flat?"
# A group whose G rewards are all equal (all right or all wrong) has zero advantage for every sample: it
# costs a rollout and teaches nothing. `zero_std_frac` is the share of such groups in each batch. When it is
# high, the batch carries little signal; DAPO's dynamic sampling drops those groups and samples more prompts
# (`dropped_groups`, `sample_rounds`), at the cost of extra rollouts.

# %%
flat = {}
for name in ("grpo", "dapo"):
    rows = [r for r in read_metrics(OUT / f"{name}_s{SEEDS[0]}" / "metrics.jsonl") if "reward" in r]
    flat[name] = statistics.mean(r["zero_std_frac"] for r in rows)
    extra = ""
    if name == "dapo":
        rounds = statistics.mean(r["sample_rounds"] for r in rows)
        extra = (f"; dropped {sum(r['dropped_groups'] for r in rows)} groups in {len(rows)} steps, "
                 f"{rounds:.2f} rollout batches per step")
    print(f"{name}: mean zero_std_frac {flat[name]:.2f} (after dynamic sampling for dapo){extra}")
print(f"flat groups in a step's batch: {flat['grpo']:.0%} for grpo, {flat['dapo']:.0%} for dapo; " +
      ("dynamic sampling lowered that share" if flat["dapo"] < flat["grpo"] else
       "dynamic sampling did not lower it (a step whose rounds find too few informative groups trains on those)") +
      f", at {rounds:.2f} rollout batches per step and {seconds['dapo'] / seconds['grpo']:.1f}x grpo's seconds per run")

# %% [markdown]
# ## "Why do DPO's chosen log-probs go down?"
# DPO's loss sees only the *difference* of two log-ratios, so it is satisfied when the rejected answer's
# log-prob falls faster than the chosen one's, even if both fall (Rafailov et al. 2024; Pal et al. 2024,
# "Smaug", arXiv:2402.13228). minipost's DPO adds an NLL term on the chosen answer (`rpo_alpha`, RPO) meant
# to hold it up. The pipeline's DPO run logged both, and the cell says what they did:

# %%
dpo_metrics = "runs/pipeline/dpo/metrics.jsonl"
try:
    rows = [r for r in read_metrics(dpo_metrics) if "logps/chosen" in r]
    print(f"logps/chosen {rows[0]['logps/chosen']:.2f} -> {rows[-1]['logps/chosen']:.2f}, logps/rejected "
          f"{rows[0]['logps/rejected']:.2f} -> {rows[-1]['logps/rejected']:.2f} over {rows[-1]['step']} steps")
    chosen = rows[-1]["logps/chosen"] - rows[0]["logps/chosen"]
    margin = chosen - (rows[-1]["logps/rejected"] - rows[0]["logps/rejected"])
    print(f"in this run the chosen log-prob {'fell' if chosen < 0 else 'did not fall'} ({chosen:+.2f}) and the margin "
          f"chosen - rejected {'grew' if margin > 0 else 'did not grow'} ({margin:+.2f})")
except Exception as e:  # no pipeline run yet
    print(f"({dpo_metrics} not found: run the pipeline first; {type(e).__name__})")

# %% [markdown]
# ## "Which KL estimator?"
# What matters in a loss is the gradient (rl.kl_loss_term; Tang & Munos 2025, arXiv:2506.09477): k1 in
# the loss pulls toward the reference with zero force in expectation; k3 (GRPO's default) follows the
# *forward* KL; k2 and the importance-corrected k3 follow the reverse KL that the objective names; k1 in
# the reward does too, over whole sequences. Five GRPO runs (seed 1337, beta 0.1 so the KL term matters)
# differ only in that choice. `kl_ref` is the same k3 *estimate* of KL(pi || pi_ref) in every run.

# %%
KL_CHOICES = {"k1": dict(kl_loss="k1"), "k2": dict(kl_loss="k2"), "k3": dict(kl_loss="k3"),
              "k3_corrected": dict(kl_loss="k3_corrected"), "reward": dict(kl_in="reward")}
print(f"{'KL':14s} {'kl_ref end':>10s} {'arithmetic':>10s}")
kl_table = {}
for name, extra in KL_CHOICES.items():
    out = OUT / f"kl_{name}"
    summary = run(name, grpo, dict(beta=0.1, **extra), SEEDS[0], out)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    last = [r["kl_ref"] for r in rows[-10:]]  # the last 10 steps: their mean, and its standard error
    se = statistics.stdev(last) / math.sqrt(len(last)) if len(last) > 1 else math.inf
    limit = json.loads((out / "config.json").read_text())["eval_limit"]
    n = len(per_domain([r for r in read_jsonl(DATA_DIR / "eval.jsonl") if r["domain"] == "arithmetic"], limit))
    kl_table[name] = {"kl_ref": statistics.mean(last), "kl_ref_se": se, "arithmetic": summary["end"]["eval_arithmetic"],
                      "items": n}
    print(f"{name:14s} {kl_table[name]['kl_ref']:10.4f} {100 * summary['end']['eval_arithmetic']:10.1f}")
(OUT / "kl_choices.json").write_text(json.dumps(kl_table, indent=1))

# %% [markdown]
# What these five runs allow one to say, from their own numbers: whether the lowest and the highest `kl_ref`
# differ by more than twice the standard error of their difference (from the spread of the last 10 steps), and
# whether the held-out arithmetic scores' 95% intervals (Wilson, over the items) all overlap. One seed each:
# an ordering inside the noise is one draw, not a ranking.

# %%
low, high = min(kl_table, key=lambda k: kl_table[k]["kl_ref"]), max(kl_table, key=lambda k: kl_table[k]["kl_ref"])
gap = kl_table[high]["kl_ref"] - kl_table[low]["kl_ref"]
noise = 2 * math.hypot(kl_table[low]["kl_ref_se"], kl_table[high]["kl_ref_se"])
print(f"kl_ref: lowest {low} {kl_table[low]['kl_ref']:.4f}, highest {high} {kl_table[high]['kl_ref']:.4f}; the gap "
      f"{gap:.4f} is " + (f"more than twice its standard error ({noise:.4f}): the KL choice changed how far the "
                          f"policy drifted" if gap > noise else
                          f"within twice its standard error ({noise:.4f}): no KL choice measurably held the "
                          "policy closer"))
intervals = {k: binomial_ci(round(v["arithmetic"] * v["items"]), v["items"]) for k, v in kl_table.items()}
separate = [(a, b) for a in intervals for b in intervals if intervals[a][0] > intervals[b][1]]
print(f"held-out arithmetic over {kl_table[low]['items']} items: " + (
    "every 95% interval overlaps the others: the differences are within the noise of these items" if not separate
    else "intervals apart: " + ", ".join(f"{a} above {b}" for a, b in separate)))

# %% [markdown]
# ## What to take away
# docs/rl-variants.md lists the numbers this lesson measured on the full settings and on which machine. The
# variants differ in how they weigh tokens, where they clip and what they do with groups that carry no signal.
# Whether those differences show on held-out scores is a question for these runs' numbers, with their noise:
# the cell below states what the card above allows, for the domain the methods train on, for the ones they
# never see, and between the methods themselves.

# %%
trained = shared["domains"]
print(f"{trained} (trained on): {len(marked[trained]['▲'])} of {len(METHODS)} methods better than start, "
      f"{len(marked[trained]['▼'])} worse (paired test on the items, p < {ALPHA})")
fell = {c: len(marked[c]["▼"]) for c in columns if c != trained and marked[c]["▼"]}
print("never trained on: " + ("no column fell for any method" if not fell else "fell for some methods: " +
                              ", ".join(f"{c} ({k} of {len(METHODS)})" for c, k in fell.items())))
found = {c: ps for c, ps in apart_pairs.items() if ps}
if not found:
    print("between methods: no two differ beyond the noise on any column (" +
          ("one seed each: nothing to tell a method from its luck" if len(SEEDS) < 2 else
           "every gap is within a seed spread or the items' noise") +
          "): compare methods over seeds, never one run against another, and choose among these on cost or "
          "simplicity, not on these scores")
else:
    for c, ps in found.items():
        higher = lambda a, b: report[a][c]["value"] > report[b][c]["value"]  # noqa: E731
        print(f"between methods on {c}: " + ", ".join(
            f"{a} {'better' if higher(a, b) == HIGHER_IS_BETTER.get(c, True) else 'worse'} than {b}" for a, b in ps))
    print(f"({sum(map(len, found.values()))} of {len(pairs) * len(columns)} pairs x columns tested: a few can pass "
          "by chance, so a lone pair is a reason to run more seeds, not a result)")
print(f"cost: the cheapest run {min(seconds, key=seconds.get)} ({min(seconds.values()):.1f} s), the dearest "
      f"{max(seconds, key=seconds.get)} ({max(seconds.values()):.1f} s), mean over seeds on this machine")
