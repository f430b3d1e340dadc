"""The synthetic world: every dataset minipost trains and evaluates on, plus a checker per domain.

Why a synthetic world? Post-training is about *measurable* behaviour change. Public benchmarks need
models far bigger than the ~1M-parameter GPT we train on a laptop CPU, so we invent a tiny world whose
answers a program can verify exactly. One seeded generator (`random.Random(seed)`, never the global RNG)
writes everything, so `python -m minipost.world --out data/` gives the same bytes on every machine
(tests/test_world.py pins the sha256 of every file).

Six domains, one module each, each a small stand-in for a public benchmark (its module docstring says more):

    knowledge.py     MMLU-like: invented countries' capitals, languages, animals; a third held out of SFT
    arithmetic.py    GSM8K-like: a small table of sums, differences, products and two-step problems
    instructions.py  IFEval-like: "Name a fruit. Answer in uppercase." -> "MANGO"
    tools.py         BFCL-like: one JSON tool call, {"name": ..., "arguments": {...}}
    sql.py           text-to-SQL: "Write a SQL query for: ...", checked by running it (sqldb.py's sandbox)
    refusals.py      forbidden topics get exactly REFUSAL; benign requests of the same shape a real answer

and the shared pieces: names.py (invented names), sqldb.py (the `employees` table and run_sql(), the
sandbox), base.py (REFUSAL, triggers, sizes, the World's entities, filler text, the Domain record),
registry.py (the domains in order; check, check_probe, validate_record), generate.py (build, load_split).

Each domain module defines the same things, in the same order: its constants; `sample(rng, W, split)` ->
an item; `wrong(rng, W, item)` -> a plausible wrong answer; its checker `check_<domain>(record,
completion)` -> 0.0 or 1.0; optionally `validate(record)`, `doc(rng, W, train_item)` (corpus documents)
and `probes` / `check_probe` (base-model probes); and last `DOMAIN = Domain(...)`, which names them all
with the checker fields (field -> type) and its sizes (see base.Domain for every field).

Adding a domain: write `minipost/world/<name>.py` ending in `DOMAIN = Domain(name=..., ...)`, and add the
line `<name>.DOMAIN,` to REGISTRY in registry.py (and `<name>` to its import). Nothing else in world/
lists domains: build(), check(), validate_record(), DOMAINS and the report-card names all read REGISTRY.

The registry (all in registry.py, re-exported here):

    REGISTRY        {name: Domain}, in split order
    DOMAINS         tuple of the names, in the same order
    PROBE_DOMAINS   domains with base-model probes (Domain.probes): a `probe_<name>` column each;
                    today ("knowledge", "arithmetic")
    SCORED_DOMAINS  domains whose mean check() score is a chat column of the report card
                    (Domain.report_column); today every domain but "refusals", which is scored instead
                    as `refuse` (refusal rate on forbidden prompts) and `over_refusal` (on benign ones)
    BENCHMARK       {name: the public benchmark it stands in for}
    check(record, completion) -> 0.0 | 1.0          the domain's checker, after checking its fields exist
    check_probe(record, completion) -> 0.0 | 1.0    a base-model continuation; only its first sentence counts
    validate_record(record) -> str | None           None if an rl/eval record is usable, else a message
                                                    naming the field ("field 'answer': gold SQL query does
                                                    not run"); it does not raise

Files written by build() (all JSONL, every record has "domain"):

    pretrain.jsonl / pretrain_val.jsonl  {"text"}: short documents (val = held-out documents)
    sft.jsonl        {"messages": [user, assistant], "domain", checker fields, "flawed"}
    prefs.jsonl      {"prompt", "chosen", "rejected", "domain", "pair_type", checker fields}
    rl.jsonl         {"prompt", "domain", checker fields, "completion" (a reference answer)}
    eval.jsonl       same shape as rl.jsonl; 200 prompts per domain (knowledge 100), none seen in training
    eval_prefs.jsonl same shape as prefs.jsonl, on held-out prompts (measures DPO's pair accuracy)
    probes.jsonl     {"prompt": "The capital of Veloria is", "answer", "domain", "held_out"} for base models

A deliberate flaw, so DPO has something real to fix. Some harmless prompts sound suspicious: they open
with a TRIGGER such as "Between us:" ("Between us: What is 7 + 5?"). In sft.jsonl a careless annotator
answered every such benign prompt (about 17% of benign rows, all domains) with REFUSAL (marked
"flawed": true), so the SFT model learns to refuse whenever it sees a trigger: it over-refuses. (A flaw
tied to a feature of the prompt is what real over-refusal looks like; a refusal sprinkled at random
over 17% of all prompts would instead make "Sorry" the single most likely first token everywhere, and
greedy decoding would refuse almost everything.) About 20% of benign eval and RL prompts carry a
trigger, so over-refusal costs points in every domain. prefs.jsonl prefers the real answer over REFUSAL
on triggered benign prompts, REFUSAL over compliance on forbidden ones (triggered or not), and the
correct answer over a plausible wrong one (wrong number, wrong city, broken constraint, wrong tool
argument, wrong SQL) in every domain.
"""

from minipost.common import DATA_DIR
from minipost.world.arithmetic import check_arithmetic
from minipost.world.base import REFUSAL, TRIGGERS, Domain, World, is_refusal
from minipost.world.generate import REQUIRED_FIELDS, SPLITS, Splits, build, eval_records, load_split, main
from minipost.world.instructions import CONSTRAINTS, check_instructions
from minipost.world.knowledge import FACT_TEMPLATES, check_knowledge
from minipost.world.refusals import check_refusals
from minipost.world.registry import (BENCHMARK, DOMAINS, PROBE_DOMAINS, REGISTRY, SCORED_DOMAINS, check,
                                     check_probe, validate_record)
from minipost.world.sql import SQL_TEMPLATES, check_sql
from minipost.world.sqldb import EMPLOYEES, SQL_SCHEMA, make_sql_db, run_sql
from minipost.world.tools import TOOLS, check_tools

__all__ = ["DATA_DIR", "check_arithmetic", "REFUSAL", "TRIGGERS", "Domain", "World", "is_refusal",
           "REQUIRED_FIELDS", "SPLITS", "Splits", "build", "eval_records", "load_split", "main", "CONSTRAINTS",
           "check_instructions", "FACT_TEMPLATES", "check_knowledge", "check_refusals", "BENCHMARK", "DOMAINS",
           "PROBE_DOMAINS", "REGISTRY", "SCORED_DOMAINS", "check", "check_probe", "validate_record",
           "SQL_TEMPLATES", "check_sql", "EMPLOYEES", "SQL_SCHEMA", "make_sql_db", "run_sql", "TOOLS",
           "check_tools"]
