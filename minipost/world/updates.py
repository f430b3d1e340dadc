"""updates: two successive "news" updates of the knowledge domain. Each changes a quarter of the World's 144
facts (a capital moves to a new city, a country adopts a new language, a new national animal), disjoint
between updates, and comes as a small set of news documents stating each change in several phrasings:

    News: Veloria has moved its capital from Tarsk to Brell. The capital of Veloria is Brell.

After update k the gold answer of every fact is its value after update k. The experiment (lab.py) asks
about every fact, in question phrasings no training row of this file uses, and splits the score into
*changed* facts (the value differs from the World's; update 2's table counts update 1's changes too) and
*unchanged* ones (what an update must not break; Gekhman et al. 2024 report that fine-tuning on new facts
raises wrong answers on known ones).

Only lab.py uses it (it is not in REGISTRY)."""

from __future__ import annotations

from minipost.world.base import ATTRIBUTES
from minipost.world.context import article, new_value
from minipost.world.knowledge import ANSWER_TEMPLATES, FACT_TEMPLATES, QUESTION_TEMPLATES

N_UPDATES = 2
CHANGE_FRACTION = 0.25   # of the 144 facts, per update
TRAIN_QUESTIONS = (0, 1, 2)   # question templates SFT on the updates uses; evaluation uses the others
EVAL_QUESTIONS = (3, 4)
DOCS_PER_CHANGE = 5
NEWS_TEMPLATES = {
    "capital": ["News: {c} has moved its capital from {old} to {a}.", "{c} moved its capital to {a} this year.",
                "The government of {c} now sits in {a}, no longer in {old}."],
    "language": ["News: {c} has made {a} its language, in place of {old}.", "People in {c} now speak {a}.",
                 "{c} switched from {old} to {a} this year."],
    "animal": ["News: {c} has chosen the {a} as its national animal, in place of the {old}.",
               "The {a} is now the national animal of {c}.", "{c} replaced the {old} with the {a} this year."],
}


def make_updates(rng, W, used: set) -> list[dict]:
    """[{(country index, attribute): new value}] for each update: disjoint quarters of the facts."""
    facts = [(i, a) for a in ATTRIBUTES for i in range(len(W.countries))]
    rng.shuffle(facts)
    n = round(CHANGE_FRACTION * len(facts))
    return [{f: new_value(rng, f[1], W.values[f[1]][f[0]], used) for f in sorted(facts[k * n:(k + 1) * n])}
            for k in range(N_UPDATES)]


def values_after(W, updates: list[dict], k: int) -> dict:
    """{(i, attr): value} of every fact after the first k updates (k = 0: the World as pretraining knows it)."""
    values = {(i, a): W.values[a][i] for a in ATTRIBUTES for i in range(len(W.countries))}
    for upd in updates[:k]:
        values.update(upd)
    return values


def news_docs(rng, W, updates: list[dict], k: int) -> list[str]:
    """Update k's documents: DOCS_PER_CHANGE per changed fact, a news sentence and a corpus-style one."""
    before = values_after(W, updates, k - 1)
    docs = []
    for (i, attr), a in updates[k - 1].items():
        c, old = W.countries[i], before[(i, attr)]
        for _ in range(DOCS_PER_CHANGE):
            sents = [rng.choice(NEWS_TEMPLATES[attr]).format(c=c, a=a, old=old),
                     rng.choice(FACT_TEMPLATES[attr]).format(c=c, a=a)]
            rng.shuffle(sents)
            docs.append(" ".join(sents))
    return docs


def sft_rows(W, updates: list[dict], k: int) -> list[dict]:
    """SFT on update k's facts: each changed fact asked in the TRAIN_QUESTIONS phrasings."""
    rows = []
    for (i, attr), a in updates[k - 1].items():
        c = W.countries[i]
        for t in TRAIN_QUESTIONS:
            rows.append({"messages": [{"role": "user", "content": QUESTION_TEMPLATES[attr][t].format(c=c)},
                                      {"role": "assistant", "content": ANSWER_TEMPLATES[attr].format(c=c, a=a)}],
                         "domain": "knowledge", "answer": a, "update": k})
    return rows


def eval_rows(W, updates: list[dict], k: int) -> list[dict]:
    """Every fact after update k (k = 0: before any), asked in the EVAL_QUESTIONS phrasings."""
    now, world = values_after(W, updates, k), values_after(W, updates, 0)
    return [{"prompt": QUESTION_TEMPLATES[attr][t].format(c=W.countries[i]), "domain": "knowledge",
             "answer": now[(i, attr)], "update": k, "changed": now[(i, attr)] != world[(i, attr)],
             "known_answer": world[(i, attr)], "country": W.countries[i], "attribute": attr}
            for (i, attr) in sorted(now, key=lambda f: (ATTRIBUTES.index(f[1]), f[0])) for t in EVAL_QUESTIONS]


def store(W, updates: list[dict], k: int) -> list[dict]:
    """The knowledge base after update k: one article per World country, its facts as of update k."""
    now = values_after(W, updates, k)
    return [{"store": k, "country": c, "text": article(c, {a: now[(i, a)] for a in ATTRIBUTES})}
            for i, c in enumerate(W.countries)]
