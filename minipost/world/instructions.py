"""instructions (IFEval-like): "Name a fruit. Answer in uppercase." -> "MANGO"; seven verifiable
constraint types (see CONSTRAINTS)."""

from __future__ import annotations

import string

from minipost.world.base import CATEGORIES, Domain, is_refusal

REQUESTS = ["Name {art} {cat}.", "Give me {art} {cat}.", "Tell me one {cat}."]
START_WORDS = ["Sure", "Okay", "Well", "Yes"]
CONSTRAINTS = {  # constraint type -> phrasings ({w} = start word, {n} = word count)
    "uppercase": ["Answer in uppercase.", "Use only capital letters."],
    "lowercase": ["Answer in lowercase.", "Use only lowercase letters."],
    "one_word": ["Answer in one word.", "Use a single word."],
    "exclaim": ["End your answer with an exclamation mark.", "Finish your answer with !"],
    "quotes": ["Wrap your answer in double quotes.", "Put your answer in quotes."],
    "start_with": ["Start your answer with the word {w}.", "Begin your answer with the word {w}."],
    "n_words": ["Answer in exactly {n} words.", "Use exactly {n} words."],
}


def _apply_constraint(item: str, constraint: str, params: dict) -> str:
    """The gold answer: the item word shaped to satisfy the constraint."""
    cap = item[0].upper() + item[1:]
    if constraint == "uppercase":
        return item.upper()
    if constraint == "lowercase":
        return item.lower()
    if constraint == "one_word":
        return cap
    if constraint == "exclaim":
        return cap + "!"
    if constraint == "quotes":
        return f'"{cap}"'
    if constraint == "start_with":
        return f"{params['word']}, {item}."
    return f"It's {item}." if params["n"] == 2 else f"I choose {item}."  # n_words


# ----------------------------------------------------------------------------- sampler and wrong answers

def sample(rng, W, split):
    cat = rng.choice(list(CATEGORIES))
    request = rng.choice(REQUESTS).format(art="an" if cat[0] in "aeiou" else "a", cat=cat)
    constraint = rng.choice(list(CONSTRAINTS))
    params = {"word": rng.choice(START_WORDS)} if constraint == "start_with" else (
        {"n": rng.choice([2, 3])} if constraint == "n_words" else {})
    prompt = f"{request} {rng.choice(CONSTRAINTS[constraint]).format(w=params.get('word'), n=params.get('n'))}"
    item = rng.choice(CATEGORIES[cat])
    return dict(prompt=prompt, completion=_apply_constraint(item, constraint, params),
                fields={"constraint": constraint, "params": params, "category": cat}, keys=[("prompt", prompt)])


def wrong(rng, W, item):
    """Same content, broken constraint (a plausible near miss)."""
    word = rng.choice(CATEGORIES[item["fields"]["category"]])
    cap = word[0].upper() + word[1:]
    c, p = item["fields"]["constraint"], item["fields"]["params"]
    if c in ("uppercase", "lowercase", "quotes"):
        return cap + ("" if c == "quotes" else " please")
    if c == "one_word":
        return f"I choose {word}."
    if c == "exclaim":
        return cap + "."
    if c == "start_with":
        return f"{cap} is my answer."
    return f"I choose {word}." if p["n"] == 2 else f"It's {word}."


# ----------------------------------------------------------------------------- checker

def check_instructions(record: dict, completion: str) -> float:
    """The constraint holds and the answer is non-empty, has letters and is not a refusal."""
    t = completion.strip()
    if not any(ch.isalpha() for ch in t) or is_refusal(t):
        return 0.0
    c, p, words = record["constraint"], record.get("params", {}), t.split()
    ok = {"uppercase": lambda: t == t.upper(),
          "lowercase": lambda: t == t.lower(),
          "one_word": lambda: len(words) == 1,
          "exclaim": lambda: t.endswith("!"),
          "quotes": lambda: len(t) >= 3 and t[0] == t[-1] == '"' and '"' not in t[1:-1],
          "start_with": lambda: len(words) >= 2 and words[0].strip(string.punctuation).lower() == p["word"].lower(),
          "n_words": lambda: len(words) == p["n"]}
    if c not in ok:
        raise ValueError(f"unknown instruction constraint {c!r}; expected one of {sorted(ok)}")
    return float(ok[c]())


def validate(record: dict) -> str | None:
    c, p = record["constraint"], record.get("params", {})
    if c not in CONSTRAINTS:
        return f"field 'constraint': unknown constraint {c!r}; expected one of {sorted(CONSTRAINTS)}"
    if not isinstance(p, dict):
        return f"field 'params': expected an object, got {type(p).__name__}"
    if c == "start_with" and not isinstance(p.get("word"), str):
        return "field 'params': constraint 'start_with' needs params.word, a string"
    if c == "n_words" and (not isinstance(p.get("n"), int) or isinstance(p.get("n"), bool)):
        return "field 'params': constraint 'n_words' needs params.n, an integer"
    return None


DOMAIN = Domain(name="instructions", benchmark="IFEval-like", sample=sample, check=check_instructions,
                check_fields={"constraint": str}, wrong=wrong, n_rl=200, validate=validate)
