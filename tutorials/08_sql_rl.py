# %% [markdown]
# # 08 · Customising a model: RL on SQL with an execution reward
#
# The seed's use case: "Write me a SQL query for ...". The world has a small SQLite table
# (`employees(id, name, department, salary, city)`); a query is right when it *returns the right rows*,
# whatever its text. That is a perfect RL reward: `rewards.sql_execution` runs the model's query in a
# read-only, time-limited sandbox on a fresh in-memory database and compares the rows with the gold query's.
# No one has to write the "right" SQL for the RL prompts: the checker is enough.
#
# Set MINIPOST_SMOKE=1 for a few-second version (the test suite runs it that way).

# %%
import json
from pathlib import Path

import minipost  # noqa: F401  first: it makes torch's idle threads sleep (minipost/threads.py)
import torch

from minipost.common import DATA_DIR, config_with_preset, read_jsonl
from minipost.grpo import PRESETS, Config, train
from minipost.rewards import sql_execution

from _setup import SMOKE, ensure_world, out_dir, start_checkpoint  # noqa: E402  (tutorials/_setup.py)

OUT = out_dir("08_sql_rl")
ensure_world()
INIT = start_checkpoint(OUT)
print("starting from", INIT)

# %% [markdown]
# ## The reward: execution match, not string match

# %%
rec = next(r for r in read_jsonl(DATA_DIR / "rl.jsonl") if r["domain"] == "sql")
print(rec["prompt"], "\ngold:", rec["answer"])
for attempt in [rec["answer"], rec["answer"].replace("SELECT", "select").rstrip(";"),
                rec["answer"].replace("employees", "staff"), "DROP TABLE employees"]:
    print(f"  {sql_execution(rec['prompt'], attempt, rec):.0f}  {attempt}")

# %% [markdown]
# ## Before: what does the start model write?

# %%
from minipost.checkpoints import load_model
from minipost.data import per_domain
from minipost.heldout import heldout_scores
from minipost.rollout import load_prompts

model, enc, _ = load_model(INIT)
held = per_domain(load_prompts(DATA_DIR / "eval.jsonl", "sql"), 8 if SMOKE else 0)
print(f"held-out SQL prompts: {len(held)}; execution accuracy before RL:",
      round(heldout_scores(model, enc, held)["eval_sql"], 3))

# %% [markdown]
# What do the wrong answers get wrong? Compare each with the gold query.

# %%
from minipost.rollout import complete
from minipost.tokenizer import render_prompt, special_id

answers, _ = complete(model, enc, [render_prompt(enc, r["prompt"]) for r in held], 64, special_id(enc, "<|end|>"))
wrong = [(r, a) for r, a in zip(held, answers) if not sql_execution(r["prompt"], a, r)]
for r, a in wrong[:5]:
    print(f"{r['prompt']}\n    gold: {r['answer']}\n    got:  {a}")

# %% [markdown]
# ## Train: GRPO on the sql domain, reward = execution match
# A small format term (the query runs at all) helps early on, when most sampled queries are broken.
# The learning rate is twice the preset's: every batch is SQL, and what is left to learn is narrow (the
# failures above: mostly a name, city or department copied wrongly from the question, not a wrong query
# shape). Measured from the pipeline's DPO model: lr 3e-5 held constant for 180 steps (reward correct:1) moved
# SQL 76 -> 78; this cell (1e-4 decayed over 200 steps) moved it 76 -> 86 (README).

# %%
overrides = dict(max_steps=3, prompts_per_step=2, group_size=4, max_new_tokens=24, eval_every=0, eval_limit=4,
                 init=INIT) if SMOKE else dict(init=INIT)
cfg = config_with_preset(Config, PRESETS, preset="nano", out=str(OUT), domains="sql", reward="sql:1,format:0.1",
                         lr=1e-4, **overrides)
summary = train(cfg)
print("held-out SQL execution accuracy:", f"{summary['start']['eval_sql']:.3f} -> {summary['end']['eval_sql']:.3f}")

# %% [markdown]
# ## After: "Write me a SQL query"

# %%
tuned, _, _ = load_model(OUT / "model.pt")
asks = ["Write a SQL query for: the names of engineering employees.",
        "Write a SQL query for: the number of employees in sales."]
for name, m in (("before", model), ("after", tuned)):
    texts, _ = complete(m, enc, [render_prompt(enc, a) for a in asks], 64, special_id(enc, "<|end|>"))
    for a, t in zip(asks, texts):
        print(f"[{name}] {a}\n    {t}")

# %% [markdown]
# ## Try next
# - `--reward sql:1` alone: slower start? `--reward correct:1` is the same checker through world.check.
# - Bring your own schema: write rl.jsonl rows {"prompt", "domain": "sql", "answer": gold query} and pass
#   `--data`, or pass any `reward(prompt, completion, record) -> float` to `train(cfg, reward_fn=...)`.
