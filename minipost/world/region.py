"""region: 24 new countries (the "Far Isles") whose capitals, languages and national animals never occur in
the base pretraining corpus. They come with their own corpus, stating each fact in several phrasings
(knowledge.FACT_TEMPLATES; Allen-Zhu & Li 2023 find a fact extractable after fine-tuning only when
pretraining states it in several), and with chat questions. Half of the 72 facts are held out of every chat
split: a model can answer them only from what continued pretraining (or retrieval) gave it.

Only lab.py uses it (it is not in REGISTRY)."""

from __future__ import annotations

from minipost.world.base import ANIMALS, ATTRIBUTES
from minipost.world.context import article
from minipost.world.knowledge import ANSWER_TEMPLATES, FACT_TEMPLATES, FILLER_COUNTRY, QUESTION_TEMPLATES
from minipost.world.names import make_name

N_COUNTRIES = 24
N_DOCS = 1200
INTRO = ["{c} is one of the Far Isles.", "The Far Isles include {c}."]


def make_region(rng, used: set) -> dict:
    """{"countries", "values" {attr: [...]}, "sft_facts", "heldout_facts"}: half of each attribute held out."""
    countries = [make_name(rng, used, (1, 2), rng.choice(["ia", "a", "or", "and"])) for _ in range(N_COUNTRIES)]
    values = {"capital": [make_name(rng, used, (2,)) for _ in countries],
              "language": [make_name(rng, used, (1, 2), rng.choice(["ic", "ish", "ese", "an"])) for _ in countries],
              "animal": [rng.choice(ANIMALS) for _ in countries]}
    sft, held = [], []
    for attr in ATTRIBUTES:
        idx = list(range(N_COUNTRIES))
        rng.shuffle(idx)
        held += [(i, attr) for i in sorted(idx[:N_COUNTRIES // 2])]
        sft += [(i, attr) for i in sorted(idx[N_COUNTRIES // 2:])]
    return {"countries": countries, "values": values, "sft_facts": sft, "heldout_facts": held}


def docs(rng, R) -> list[str]:
    """The region's corpus: N_DOCS short documents, each stating 2-3 facts of one country and one of another,
    in randomly chosen phrasings, with an introduction or filler sentence now and then."""
    out = []
    for _ in range(N_DOCS):
        i, j = rng.randrange(N_COUNTRIES), rng.randrange(N_COUNTRIES)
        c = R["countries"][i]
        sents = [rng.choice(FACT_TEMPLATES[a]).format(c=c, a=R["values"][a][i])
                 for a in rng.sample(ATTRIBUTES, rng.randint(2, 3))]
        a = rng.choice(ATTRIBUTES)
        sents.append(rng.choice(FACT_TEMPLATES[a]).format(c=R["countries"][j], a=R["values"][a][j]))
        sents += [rng.choice(INTRO + FILLER_COUNTRY).format(c=c) for _ in range(rng.randint(0, 1))]
        rng.shuffle(sents)
        out.append(" ".join(sents))
    return out


def _qa(R, i, attr, template, **fields) -> dict:
    c, a = R["countries"][i], R["values"][attr][i]
    return {"prompt": QUESTION_TEMPLATES[attr][template].format(c=c),
            "completion": ANSWER_TEMPLATES[attr].format(c=c, a=a), "domain": "knowledge", "answer": a,
            "country": c, "attribute": attr, **fields}


def sft_rows(R) -> list[dict]:
    """Chat questions on the region's sft facts, every phrasing."""
    rows = []
    for i, attr in R["sft_facts"]:
        for t in range(len(QUESTION_TEMPLATES[attr])):
            q = _qa(R, i, attr, t)
            rows.append({"messages": [{"role": "user", "content": q["prompt"]},
                                      {"role": "assistant", "content": q["completion"]}],
                         "domain": "knowledge", "answer": q["answer"], "region": True})
    return rows


def eval_rows(R) -> list[dict]:
    """Two questions per fact: held-out facts (never in a chat split) and sft facts (taught by region SFT)."""
    return [_qa(R, i, attr, t, held_out=(i, attr) in R["heldout_facts"])
            for i, attr in sorted(R["heldout_facts"] + R["sft_facts"], key=lambda f: (f[1], f[0])) for t in (0, 3)]


def store(R) -> list[dict]:
    """The region's knowledge-base articles."""
    return [{"store": "region", "country": c, "text": article(c, {a: R["values"][a][i] for a in ATTRIBUTES})}
            for i, c in enumerate(R["countries"])]
