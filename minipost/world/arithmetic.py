"""arithmetic (GSM8K-like): "What is 7 + 8?" and short word problems with exact integer answers: 1-digit
sums, their inverse differences (14 - 6), products of 2..9, and two-step problems (7 + 8 - 6, answered
"7 + 8 = 15. 15 - 6 = 9."). The table is small (about 250 equations) and the corpus lists it as bare
equations ("7 + 8 = 15."). Like the held-out facts, the equations used in eval appear only in pretraining,
never in a chat split: SFT and RL must teach the model to *use* them in word problems, and to chain two of
them. A model of a million parameters trained for minutes learns no carrying in general (we measured 0% on
held-out 2-digit sums); it can learn a table."""

from __future__ import annotations

import re

from minipost.world.base import Domain, is_refusal

ARITH_LEVELS = ("add1", "sub1", "mul", "two_step")
EVAL_LEVEL_WEIGHTS = (20, 25, 25, 30)    # eval mix: easy to hard
TRAIN_LEVEL_WEIGHTS = (25, 25, 25, 25)
PEOPLE = ["Tom", "Mia", "Ava", "Leo", "Sam", "Zoe", "Max", "Ivy"]
THINGS = ["apples", "marbles", "coins", "books", "shells", "stamps", "pencils", "cards"]


def _eq_key(a: int, op: str, b: int) -> tuple:
    """Identity of an operand pair: a + b and b + a are the same pair (so are a * b and b * a)."""
    return (op, min(a, b), max(a, b)) if op in "+*" else (op, a, b)


# ----------------------------------------------------------------------------- sampler and wrong answers

def sample(rng, W, split, levels=None):
    level = rng.choices(ARITH_LEVELS, levels or (EVAL_LEVEL_WEIGHTS if split == "eval" else TRAIN_LEVEL_WEIGHTS))[0]
    who, things = rng.choice(PEOPLE), rng.choice(THINGS)
    if level == "two_step":  # both steps are equations of the add1 / sub1 levels below
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = rng.randint(1, min(9, a + b))
        s, r = a + b, a + b - c
        prompt = rng.choice([f"What is {a} + {b} - {c}?", f"Compute {a} + {b} - {c}.",
                             f"{who} has {a} {things}, finds {b} more and then loses {c}. How many {things} are left?"])
        completion = f"{a} + {b} = {s}. {s} - {c} = {r}."
        keys, expr = [_eq_key(a, "+", b), _eq_key(s, "-", c)], f"{a} + {b} - {c}"
    else:
        if level == "add1":
            a, b, op = rng.randint(0, 9), rng.randint(0, 9), "+"
        elif level == "sub1":  # the inverse of add1: 14 - 6 = 8
            b, r = rng.randint(0, 9), rng.randint(0, 9)
            a, op = b + r, "-"
        else:
            a, b, op = rng.randint(2, 9), rng.randint(2, 9), "*"
        r = {"+": a + b, "-": a - b, "*": a * b}[op]
        stories = {"+": f"{who} has {a} {things} and gets {b} more. How many {things} does {who} have now?",
                   "-": f"{who} has {a} {things} and gives away {b}. How many {things} are left?",
                   "*": f"There are {a} boxes with {b} {things} in each. How many {things} are there in total?"}
        prompt = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"Calculate {a} {op} {b}.",
                             stories[op]])
        completion = f"{a} {op} {b} = {r}."
        keys, expr = [_eq_key(a, op, b)], f"{a} {op} {b}"
    return dict(prompt=prompt, completion=completion, fields={"answer": r, "expression": expr, "level": level},
                keys=keys)


def wrong(rng, W, item):
    r = item["fields"]["answer"]
    bad = max(0, r + rng.choice([-10, -2, -1, 1, 2, 10]))
    if bad == r:
        bad = r + 1
    head = item["completion"].rsplit("=", 1)[0]
    return f"{head}= {bad}."


# ----------------------------------------------------------------------------- checker

def check_arithmetic(record: dict, completion: str) -> float:
    """The LAST integer in the completion equals the answer (so a short worked form is fine)."""
    ints = re.findall(r"-?\d+", completion)
    return float(bool(ints) and not is_refusal(completion) and int(ints[-1]) == int(record["answer"]))


# ----------------------------------------------------------------------------- corpus and probes

def doc(rng, W, train_item):
    if rng.random() < 0.3:
        it = train_item("arithmetic")
        return f"{it['prompt']} {it['completion']}"
    lines = []
    for _ in range(rng.randint(6, 14)):
        # bare equations "37 + 8 = 45." from the whole (small) table, eval pairs included: like the held-out
        # facts, the base model can learn every equation, and only the chat skill of using it is held out
        it = sample(rng, W, "train", levels=(35, 35, 30, 0))
        lines.append(it["completion"])
    return " ".join(lines)


def probes(W, eval_rows):
    """The one-step eval equations, cut before the result: "7 + 8 =" (held out of every chat split)."""
    return [{"prompt": f"{r['expression']} =", "answer": str(r["answer"]), "domain": "arithmetic",
             "held_out": True} for r in eval_rows if r["domain"] == "arithmetic" and r["level"] != "two_step"]


def check_probe(record: dict, first: str) -> float:
    ints = re.findall(r"-?\d+", first)
    return float(bool(ints) and ints[0] == str(record["answer"]))


DOMAIN = Domain(name="arithmetic", benchmark="GSM8K-like", sample=sample, check=check_arithmetic,
                check_fields={"answer": int}, wrong=wrong, n_rl=700,
                doc=doc, corpus_weight=36, corpus_rank=1,
                eval_prefs_kwargs={"levels": (0, 50, 0, 50)},  # spare the few add1 and x pairs
                probes=probes, check_probe=check_probe)
