"""context: reading from context. The user turn carries passages and a question,

    Context: Veloria: The capital of Veloria is Brell. People in Veloria speak Zekish. ...
    Kemora: ...

    Question: What is the capital of Veloria?

and the answer must come from the passages, even where they contradict what pretraining stored (the passage
says Brell, the corpus said Tarsk) and with distractor passages about other countries around the right one.
This is the skill retrieval-augmented generation (RAG) needs: a model that was never shown a "Context:"
prompt has no reason to read one. A passage is an *article*: one country's three facts, as a knowledge base
would hold them (updates.py edits articles; region.py writes articles of new countries).

Training questions ask about the World's countries; a contradicting passage (three rows in four) moves a fact
to a freshly invented name, which only copying from the passage can produce. lab.py's evaluation asks with
values no training row uses (updates.py's and region.py's invented names), so the model must copy, not
remember. Measured on nano: the reader starts copying only after some 500 steps on unique rows (a phase
change in the loss from about 0.9 to under 0.1); 800 steps with half the passages contradicting, a quarter of
them with invented names, left it copying 15 of 50 held-out contradicting passages.

Only lab.py uses it (it is not in REGISTRY)."""

from __future__ import annotations

from minipost.world.base import ANIMALS, ATTRIBUTES
from minipost.world.knowledge import ANSWER_TEMPLATES, QUESTION_TEMPLATES
from minipost.world.names import make_name

ARTICLE_SENTENCES = {"capital": "The capital of {c} is {a}.", "language": "People in {c} speak {a}.",
                     "animal": "The national animal of {c} is the {a}."}
MAX_PASSAGES = 3
CONTRADICT_RATE = 0.75   # training rows whose passage changes the fact asked about (to an invented name)


def article(country: str, facts: dict[str, str]) -> str:
    """One country's knowledge-base article: "Veloria: The capital of Veloria is Tarsk. People in ..."."""
    return f"{country}: " + " ".join(ARTICLE_SENTENCES[a].format(c=country, a=facts[a]) for a in ATTRIBUTES)


def world_facts(W, i: int) -> dict[str, str]:
    return {a: W.values[a][i] for a in ATTRIBUTES}


def rag_prompt(passages: list[str], question: str) -> str:
    """The user turn of a RAG question: the passages, best first, then the question."""
    return "Context: " + "\n".join(passages) + "\n\nQuestion: " + question


def new_value(rng, attr: str, old: str, used: set) -> str:
    """A value for `attr` no other row has (an invented name; animals: another of the World's animals)."""
    if attr == "capital":
        return make_name(rng, used, (2,))
    if attr == "language":
        return make_name(rng, used, (1, 2), rng.choice(["ic", "ish", "ese", "an"]))
    return rng.choice([a for a in ANIMALS if a != old])


def sample_train(rng, W, avoid: set, used: set) -> dict:
    """One SFT row: a question about a World country, its article among 0-2 distractor articles, the answer
    from it. With probability CONTRADICT_RATE the article changes the fact asked about to a freshly invented
    name (animals: another of the World's animals), so the model learns to copy any name, not to pick among
    the names it knows. `avoid` holds (country, attribute, value) triples that must not be
    taught (lab.py's evaluation values); `used` the names taken (a fresh name is added to it)."""
    while True:
        i = rng.randrange(len(W.countries))
        attr = rng.choice(ATTRIBUTES)
        facts = world_facts(W, i)
        contradicts = rng.random() < CONTRADICT_RATE
        if contradicts:
            facts[attr] = new_value(rng, attr, facts[attr], used)
        c = W.countries[i]
        if (c, attr, facts[attr]) not in avoid:
            break
    others = rng.sample([j for j in range(len(W.countries)) if j != i], rng.randint(0, MAX_PASSAGES - 1))
    passages = [article(c, facts)] + [article(W.countries[j], world_facts(W, j)) for j in others]
    rng.shuffle(passages)
    question = rng.choice(QUESTION_TEMPLATES[attr]).format(c=c)
    answer = ANSWER_TEMPLATES[attr].format(c=c, a=facts[attr])
    return {"messages": [{"role": "user", "content": rag_prompt(passages, question)},
                         {"role": "assistant", "content": answer}],
            "domain": "context", "answer": facts[attr], "country": c, "attribute": attr,
            "contradicts": contradicts, "n_passages": len(passages)}
