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
import json
import statistics

from minipost import grpo, ppo, reinforce
from minipost.common import config_with_preset, read_metrics
from minipost.evals import evaluate_items, write_report

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
# One report-card evaluation per final checkpoint (every held-out column, evals.evaluate_items), then the
# card over seeds (evals.card): each cell is the mean ± sd of the three seeds, and its mark compares the
# seed-averaged items with `start`, the DPO model all of them began from, by a paired bootstrap on the same
# items. Read a difference between two methods as real only when it is larger than both spreads: with 100
# items per domain and three seeds, a few points is noise.

# %%
items = {"start": evaluate_items(INIT, limit=LIMIT)}
for name in METHODS:
    items[name] = [evaluate_items(OUT / f"{name}_s{seed}" / "model.pt", limit=LIMIT) for seed in SEEDS]
report = write_report(items, OUT / "card", parents={name: "start" for name in METHODS})
seconds = {name: statistics.mean(s["seconds"] for s in summaries[name].values()) for name in METHODS}
print("\nseconds per run (mean over seeds): " + ", ".join(f"{n} {t:.0f}" for n, t in seconds.items()))
(OUT / "variants.json").write_text(json.dumps({"card": report, "seconds": seconds, "seeds": SEEDS}, indent=1))

# %% [markdown]
# ## "Why is my GRPO loss 0 at the start?"
# Because it should be. On the first step the ratio is exactly 1 and the KL to the reference is 0, so the
# `grpo` loss is minus the mean of the advantages, and group advantages sum to zero in every group. The
# gradient is not zero: each answer's log-probs are pushed up or down by its own advantage. Watch
# `grad_norm` and `reward`, not `loss`, in the first steps.

# %%
first = read_metrics(OUT / f"grpo_s{SEEDS[0]}" / "metrics.jsonl")
first = [r for r in first if "reward" in r][0]
print(f"GRPO step 1: loss {first['loss']:.2e}, ratio {first['ratio']:.6f}, kl_ref {first['kl_ref']:.2e}, "
      f"grad_norm {first['grad_norm']:.3f}")

# %% [markdown]
# ## "Why is my reward flat?"
# A group whose G rewards are all equal (all right or all wrong) has zero advantage for every sample: it
# costs a rollout and teaches nothing. `zero_std_frac` is the share of such groups in each batch. When it is
# high, the batch carries little signal; DAPO's dynamic sampling drops those groups and samples more prompts
# (`dropped_groups`, `sample_rounds`), at the cost of extra rollouts.

# %%
for name in ("grpo", "dapo"):
    rows = [r for r in read_metrics(OUT / f"{name}_s{SEEDS[0]}" / "metrics.jsonl") if "reward" in r]
    zero = statistics.mean(r["zero_std_frac"] for r in rows)
    extra = ""
    if name == "dapo":
        extra = (f"; dropped {sum(r['dropped_groups'] for r in rows)} groups in {len(rows)} steps, "
                 f"{statistics.mean(r['sample_rounds'] for r in rows):.2f} rollout batches per step")
    print(f"{name}: mean zero_std_frac {zero:.2f} (after dynamic sampling for dapo){extra}")

# %% [markdown]
# ## "Why do DPO's chosen log-probs go down?"
# DPO's loss sees only the *difference* of two log-ratios, so it is satisfied when the rejected answer's
# log-prob falls faster than the chosen one's, even if both fall (Rafailov et al. 2024; Pal et al. 2024,
# "Smaug", arXiv:2402.13228). minipost's DPO adds an NLL term on the chosen answer (`rpo_alpha`, RPO) that
# holds it up. The pipeline's DPO run logged both:

# %%
dpo_metrics = "runs/pipeline/dpo/metrics.jsonl"
try:
    rows = [r for r in read_metrics(dpo_metrics) if "logps/chosen" in r]
    print(f"logps/chosen {rows[0]['logps/chosen']:.2f} -> {rows[-1]['logps/chosen']:.2f}, logps/rejected "
          f"{rows[0]['logps/rejected']:.2f} -> {rows[-1]['logps/rejected']:.2f} over {rows[-1]['step']} steps")
except Exception as e:  # no pipeline run yet
    print(f"({dpo_metrics} not found: run the pipeline first; {type(e).__name__})")

# %% [markdown]
# ## "Which KL estimator?"
# What matters in a loss is the gradient (common.kl_loss_term; Tang & Munos 2025, arXiv:2506.09477): k1 in
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
    kl_end = statistics.mean(r["kl_ref"] for r in rows[-10:])
    kl_table[name] = {"kl_ref": kl_end, "arithmetic": summary["end"]["eval_arithmetic"]}
    print(f"{name:14s} {kl_end:10.4f} {100 * summary['end']['eval_arithmetic']:10.1f}")
(OUT / "kl_choices.json").write_text(json.dumps(kl_table, indent=1))

# %% [markdown]
# ## What to take away
# README.md ("Questions learners ask") lists the numbers this lesson measured and on which machine. The
# variants differ in how they weigh tokens, where they clip and what they do with groups that carry no
# signal; on a short-answer task such as arithmetic those differences are small next to the seed-to-seed
# spread, which is the first lesson: compare methods over seeds, never one run against another.
