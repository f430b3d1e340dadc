"""knowledge (MMLU-like): 48 invented countries, each with a capital, a language and a national animal
(144 facts). The pretraining corpus states every fact many times in several phrasings. Two thirds are
"sft facts" that also appear as chat questions in SFT/prefs/RL. One third are "held-out facts": they appear
ONLY in pretraining and in eval. If the SFT model answers those, SFT did not teach the fact; it taught the
model to *use* what pretraining had already stored."""

from __future__ import annotations

from minipost.world.base import ATTRIBUTES, Domain, is_refusal, norm_words

FACT_TEMPLATES = {  # how the corpus states a fact; the first one (cut before the answer) is the probe
    "capital": ["The capital of {c} is {a}.", "{a} is the capital of {c}.", "{c} has its capital in {a}.",
                "The capital city of {c} is {a}.", "In {c}, the capital is {a}."],
    "language": ["The language of {c} is {a}.", "People in {c} speak {a}.", "{a} is the language of {c}.",
                 "In {c}, people speak {a}."],
    "animal": ["The national animal of {c} is the {a}.", "{c} has the {a} as its national animal.",
               "The {a} is the national animal of {c}.", "In {c}, the national animal is the {a}."],
}
QUESTION_TEMPLATES = {
    "capital": ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}.",
                "Tell me the capital city of {c}.", "What city is the capital of {c}?"],
    "language": ["What language do people speak in {c}?", "What is the language of {c}?",
                 "Which language is spoken in {c}?", "Name the language of {c}.", "Tell me the language of {c}."],
    "animal": ["What is the national animal of {c}?", "Which animal is the national animal of {c}?",
               "Name the national animal of {c}.", "Tell me the national animal of {c}.",
               "What animal is the national animal of {c}?"],
}
# Answers reuse the corpus phrasing, so SFT only has to teach "answer like the corpus does".
ANSWER_TEMPLATES = {a: FACT_TEMPLATES[a][0] for a in ATTRIBUTES}
PROBE_TEMPLATES = {a: FACT_TEMPLATES[a][0].split("{a}")[0].strip() for a in ATTRIBUTES}
FILLER_COUNTRY = ["{c} is a small country with green hills.", "Many travelers visit {c} in the summer.",
                  "The roads of {c} are old and narrow.", "{c} is known for its quiet lakes.",
                  "Winters in {c} are long and cold.", "Farmers in {c} grow wheat and apples."]


# ----------------------------------------------------------------------------- sampler and wrong answers

def sample(rng, W, split):
    i, attr = rng.choice(W.heldout_facts if split == "eval" else W.sft_facts)
    c, a = W.fact(i, attr)
    prompt = rng.choice(QUESTION_TEMPLATES[attr]).format(c=c)
    return dict(prompt=prompt, completion=ANSWER_TEMPLATES[attr].format(c=c, a=a),
                fields={"answer": a, "country": c, "attribute": attr, "held_out": split == "eval"},
                keys=[("fact", i, attr)])


def wrong(rng, W, item):
    attr, a = item["fields"]["attribute"], item["fields"]["answer"]
    other = rng.choice([v for v in W.values[attr] if v != a])
    return ANSWER_TEMPLATES[attr].format(c=item["fields"]["country"], a=other)


# ----------------------------------------------------------------------------- checker

def check_knowledge(record: dict, completion: str) -> float:
    """The answer appears as a whole word. Long answers score 0, so listing many candidates does not pay."""
    if is_refusal(completion) or len(completion.split()) > 16:
        return 0.0
    return float(norm_words(record["answer"]) in norm_words(completion))


def validate(record: dict) -> str | None:
    if not norm_words(record["answer"]).strip():
        return "field 'answer': has no letters or digits"
    return None


# ----------------------------------------------------------------------------- corpus and probes

def doc(rng, W, train_item):
    i = rng.randrange(len(W.countries))
    sents = [rng.choice(FACT_TEMPLATES[a]).format(c=W.countries[i], a=W.values[a][i])
             for a in rng.sample(ATTRIBUTES, rng.randint(2, 3))]
    j = rng.randrange(len(W.countries))  # a second country's fact, so facts mix inside paragraphs
    a = rng.choice(ATTRIBUTES)
    sents.append(rng.choice(FACT_TEMPLATES[a]).format(c=W.countries[j], a=W.values[a][j]))
    sents += [rng.choice(FILLER_COUNTRY).format(c=W.countries[i]) for _ in range(rng.randint(0, 2))]
    rng.shuffle(sents)
    return " ".join(sents)


def probes(W, eval_rows):
    """Every fact, in corpus phrasing cut before the answer: "The capital of Veloria is"."""
    return [{"prompt": PROBE_TEMPLATES[a].format(c=W.countries[i]), "answer": W.values[a][i],
             "domain": "knowledge", "held_out": (i, a) in W.heldout_facts}
            for a in ATTRIBUTES for i in range(len(W.countries))]


def check_probe(record: dict, first: str) -> float:
    return float(norm_words(record["answer"]) in norm_words(first))


DOMAIN = Domain(name="knowledge", benchmark="MMLU-like", sample=sample, check=check_knowledge,
                check_fields={"answer": str}, wrong=wrong, n_rl=150, validate=validate,
                doc=doc, corpus_weight=34, corpus_rank=0, probes=probes, check_probe=check_probe,
                more_eval=False)  # its 100 eval items already ask about all 48 held-out facts
