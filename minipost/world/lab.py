"""The lab's data: four domains that only the "do you need post-training?" comparison uses
(minipost/lab.py), written into data/lab/ by `python -m minipost.world` next to the pipeline's files, from
their own random streams, so every file the pipeline reads stays byte for byte as it was.

    policies.py  "Do not discuss: a, b, c." system prompts with 1-30 topics (prompting vs post-training)
    updates.py   two news updates that change a quarter of the knowledge facts each (RAG vs fine-tuning)
    region.py    24 new countries, absent from the base corpus, with their own corpus (continued pretraining)
    context.py   "Context: ... Question: ..." chats answered from the passages (the skill RAG needs)

Files (JSONL) in data/lab/:

    policy_sft.jsonl     {"messages": [system, user, assistant], "topic", "should_refuse", "n_listed", "trigger"}
    policy_prefs.jsonl   {"prompt": [system, user], "chosen", "rejected", ...}: obey the list > not
    policy_eval.jsonl    {"prompt": [system, user], "domain": "policies", ...}: lists of held-out topics only
                         (never in a training list, though training asks about them unlisted), 20 per
                         (list length in 1 2 5 10 20 30) x (trigger or not) x (listed or not)
    update_docs.jsonl    {"update": k, "text"}: the news documents of update k (1, 2)
    update_sft.jsonl     {"messages", "update": k, "answer"}: the changed facts of update k, as chat
    update_eval.jsonl    {"prompt", "domain": "knowledge", "answer", "update": k, "changed", "known_answer"}:
                         every fact after update k (k = 0, 1, 2), in phrasings update_sft does not use
    kb.jsonl             {"store": 0 | 1 | 2 | "region", "country", "text"}: the knowledge base's articles
    region_pretrain.jsonl  {"text"}: the new region's corpus
    region_sft.jsonl     {"messages", "answer"}: chat questions on half the region's facts
    region_eval.jsonl    {"prompt", "domain": "knowledge", "answer", "held_out"}
    context_sft.jsonl    {"messages": [user with passages, assistant], "answer", "contradicts", ...}
    context_eval.jsonl   {"prompt", "domain": "knowledge", "answer", "contradicts"}: values no training row has

No evaluation item reaches a training split (tests/test_lab_world.py checks each): policy evaluation topics
are never forbidden in a training row, update and region evaluation phrasings or facts never in their SFT
rows, context evaluation values in no training file.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from minipost.common import DATA_DIR, InputError, read_jsonl, write_jsonl
from minipost.data import to_messages
from minipost.world import context, policies, region, updates
from minipost.world.base import ANIMALS, ATTRIBUTES, TRIGGER_RATE, World
from minipost.world.knowledge import check_knowledge
from minipost.world.sqldb import EMPLOYEES, SQL_CITIES

N_POLICY_SFT = 3000
N_POLICY_PREFS = 1500
N_POLICY_EVAL_CELL = 20
HELD_ASKED = 0.25   # policy training rows that ask (unlisted) about a held-out topic
N_CONTEXT_SFT = 3000
N_CONTEXT_EVAL = 100
N_READING = 34000   # more reading rows, drawn by reading_practice() when lab.py trains its reader (not committed)
FILES = ("policy_sft", "policy_prefs", "policy_eval", "update_docs", "update_sft", "update_eval", "kb",
         "region_pretrain", "region_sft", "region_eval", "context_sft", "context_eval")


def _used_names(W) -> set:
    """Every name the World already took (lowercase), so no new name repeats one."""
    used = {w.lower() for w in ANIMALS} | {r[1].lower() for r in EMPLOYEES} | {c.lower() for c in SQL_CITIES}
    used |= {c.lower() for c in W.countries} | {v.lower() for a in ("capital", "language") for v in W.values[a]}
    used |= {part.lower() for name in W.authors for part in name.split()}
    return used


def _policy_chat(rec: dict) -> dict:
    return {"messages": rec["prompt"] + [{"role": "assistant", "content": rec["completion"]}],
            **{k: rec[k] for k in ("topic", "should_refuse", "n_listed", "trigger")}}


def build_lab(out_dir=DATA_DIR, seed: int = 0) -> dict[str, Path]:
    """Write data/lab/*.jsonl deterministically (their own streams: the World's files are not touched)."""
    W = World(random.Random(seed))          # the same World build() makes from this seed
    used = _used_names(W)  # new names are drawn in this order: updates, region, context (each unique)

    # policies: a third of the topics are never in a training list
    rng = random.Random(f"policies-{seed}")  # each domain its own stream: changing one leaves the others as they are
    train_topics, held_topics = policies.split_pool(rng, W)
    answers = dict(train_topics + held_topics)
    def draw():
        """A training record: a list of training topics; the request on one of them (listed or not) or, in
        HELD_ASKED of the rows, on a held-out topic, unlisted (so no held-out topic is ever forbidden)."""
        n = rng.randint(1, policies.MAX_TOPICS)
        if rng.random() < HELD_ASKED:
            return policies.sample(rng, train_topics, n, False, rng.random() < TRIGGER_RATE,
                                   unlisted=rng.choice(held_topics))
        return policies.sample(rng, train_topics, n, rng.random() < 0.5, rng.random() < TRIGGER_RATE)
    policy_sft = [_policy_chat(draw()) for _ in range(N_POLICY_SFT)]
    policy_prefs = []
    for _ in range(N_POLICY_PREFS):
        rec = draw()
        policy_prefs.append({"prompt": rec["prompt"], "chosen": rec["completion"],
                             "rejected": policies.wrong(rec, answers), "domain": "policies",
                             **{k: rec[k] for k in ("topic", "should_refuse", "n_listed", "trigger")}})
    policy_eval = []
    for n in policies.LIST_LENGTHS:
        for trigger in (False, True):
            for listed in (True, False):
                for _ in range(N_POLICY_EVAL_CELL):
                    rec = policies.sample(rng, held_topics, n, listed, trigger)
                    policy_eval.append({k: v for k, v in rec.items() if k != "completion"})

    # updates: two news rounds; their new values are fresh names
    rng = random.Random(f"updates-{seed}")
    ups = updates.make_updates(rng, W, used)
    update_docs = [{"update": k, "text": t} for k in (1, 2) for t in updates.news_docs(rng, W, ups, k)]
    update_sft = [r for k in (1, 2) for r in updates.sft_rows(W, ups, k)]
    update_eval = [r for k in (0, 1, 2) for r in updates.eval_rows(W, ups, k)]

    # the new region
    rng = random.Random(f"region-{seed}")
    R = region.make_region(rng, used)
    region_pretrain = [{"text": t} for t in region.docs(rng, R)]
    kb = [r for k in (0, 1, 2) for r in updates.store(W, ups, k)] + region.store(R)

    # reading from context: training never teaches an update's new value
    rng = random.Random(f"context-{seed}")
    avoid = {(W.countries[i], a, v) for upd in ups for (i, a), v in upd.items()}
    context_sft = [context.sample_train(rng, W, avoid, used) for _ in range(N_CONTEXT_SFT)]
    context_eval = []
    for n in range(N_CONTEXT_EVAL):
        i, attr = rng.randrange(len(W.countries)), rng.choice(ATTRIBUTES)
        facts = context.world_facts(W, i)
        contradicts = n % 2 == 0
        if contradicts:  # a value no training row has
            facts[attr] = context.new_value(rng, attr, facts[attr], used)
        others = rng.sample([j for j in range(len(W.countries)) if j != i], rng.randint(0, context.MAX_PASSAGES - 1))
        passages = [context.article(W.countries[i], facts)] + [context.article(W.countries[j], context.world_facts(W, j))
                                                              for j in others]
        rng.shuffle(passages)
        question = rng.choice(context.QUESTION_TEMPLATES[attr]).format(c=W.countries[i])
        context_eval.append({"prompt": context.rag_prompt(passages, question), "domain": "knowledge",
                             "answer": facts[attr], "contradicts": contradicts, "n_passages": len(passages)})

    rows = dict(policy_sft=policy_sft, policy_prefs=policy_prefs, policy_eval=policy_eval,
                update_docs=update_docs, update_sft=update_sft, update_eval=update_eval, kb=kb,
                region_pretrain=region_pretrain, region_sft=region.sft_rows(R), region_eval=region.eval_rows(R),
                context_sft=context_sft, context_eval=context_eval)
    paths = {name: Path(out_dir) / "lab" / f"{name}.jsonl" for name in FILES}
    for name, path in paths.items():
        write_jsonl(path, rows[name])
    return paths


def reading_practice(n: int, seed: int = 0, data_dir=DATA_DIR) -> list[dict]:
    """n more rows like context_sft's, from a stream of their own, drawn when lab.py trains its reader: the
    nano reader starts copying from its context only after some 40,000 unique rows, 20 MB the repository need
    not hold. No row uses a word of any lab file as a new value, so every evaluation value stays unseen."""
    W = World(random.Random(seed))
    files = {name: load(name, data_dir) for name in FILES}
    used = _used_names(W) | set(re.findall(r"[a-z]+", json.dumps(files).lower()))
    avoid = {(r["country"], r["attribute"], r["answer"]) for r in files["update_eval"] if r["changed"]}
    rng = random.Random(f"reading-{seed}")
    return [context.sample_train(rng, W, avoid, used) for _ in range(n)]


# ----------------------------------------------------------------------------- reading and scoring

def check(record: dict, completion: str) -> float:
    """A lab evaluation record's score: 0.0 or 1.0 (policies or knowledge-style answers)."""
    if record.get("domain") == "policies":
        return policies.check_policies(record, completion)
    return check_knowledge(record, completion)


def load(name: str, data_dir=DATA_DIR) -> list[dict]:
    """One lab file, every line checked: a malformed line raises InputError naming file, line and field."""
    if name not in FILES:
        raise ValueError(f"unknown lab file {name!r}; expected one of {FILES}")
    path = Path(data_dir) / "lab" / f"{name}.jsonl"
    if not path.exists():
        raise InputError(f"{path}: no such file; run `python -m minipost.world --out {data_dir}`")
    lines = []
    rows = read_jsonl(path, lines=lines)
    for n, row in zip(lines, rows):
        where = f"{path}:{n}"
        if name == "policy_eval":
            try:
                policies.validate(row, where)
            except ValueError as e:
                raise InputError(str(e)) from None
        elif name.endswith("_eval"):
            for key in ("prompt", "answer"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise InputError(f"{where}: field {key!r}: expected a non-empty string, got {row.get(key)!r:.40}")
        elif name in ("update_docs", "kb", "region_pretrain"):
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise InputError(f"{where}: field 'text': expected a non-empty string, got {row.get('text')!r:.40}")
        elif name.endswith("_sft") or name.endswith("_prefs"):
            if name.endswith("_sft"):
                to_messages(row, where)
            else:
                for key in ("chosen", "rejected"):
                    if not isinstance(row.get(key), str) or not row[key].strip():
                        raise InputError(f"{where}: field {key!r}: expected a non-empty string, got "
                                         f"{row.get(key)!r:.40}")
                if not isinstance(row.get("prompt"), list) or not row["prompt"]:
                    raise InputError(f"{where}: field 'prompt': expected a list of messages")
        for key, kinds in USED_FIELDS.get(name, {}).items():  # the fields lab.py reads besides the text
            if key not in row or not isinstance(row[key], kinds) or (kinds is str and not row[key].strip()):
                raise InputError(f"{where}: field {key!r}: expected {_kind_names(kinds)}, got {row.get(key)!r:.40}")
    return rows


# every field of a lab file that lab.py reads, beyond the text checked above, with its types
USED_FIELDS = {
    "policy_eval": {"n_listed": int, "trigger": bool, "should_refuse": bool, "topic": str},
    "update_docs": {"update": int},
    "update_sft": {"update": int},
    "update_eval": {"update": int, "changed": bool, "country": str, "attribute": str},
    "kb": {"store": (int, str), "country": str},
    "region_eval": {"held_out": bool, "country": str},
    "context_eval": {"contradicts": bool},
}


def _kind_names(kinds) -> str:
    return " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
