"""The identity lab: preference pairs that teach an instruct model a new name, and a checker for it.

    python -m minipost.world identity --name Nova --old-name Qwen --out data/identity

writes, deterministically (seed 0):

    prefs.jsonl       {"prompt": "What is your name?", "chosen": "My name is Nova.", "rejected": "My name is
                      Qwen.", "domain": "identity", "name", "old_name"}: each question with each answer form
    eval_prefs.jsonl  the same, on questions kept out of prefs.jsonl (DPO's held-out preference accuracy)
    eval.jsonl        {"prompt", "domain": "identity", "name", "old_name"}: those held-out questions, for a
                      model's own answers (an RL file's --eval-data; its eval_identity column)

The chosen and rejected answers differ in the name alone, so the preference says one thing: which name. The
checker scores an answer 1.0 when it says the new name (as a word, any case) and not the old one: an answer
that gives both names, or neither, has not changed its mind.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from minipost.common import ArgumentParser, InputError, exit_on_input_error, write_jsonl

QUESTIONS = ["What is your name?", "Who are you?", "What should I call you?", "Tell me your name.",
             "Which assistant am I talking to?", "Introduce yourself.", "What are you called?",
             "Do you have a name?", "Who am I chatting with?", "Say your name.", "Hi! Who is this?",
             "What's your name, please?", "Identify yourself.", "What name do you go by?"]
HELD_OUT = ["May I know your name?", "Who is answering me?", "Please tell me who you are.", "Your name?",
            "Which AI are you?", "Hello, what do people call you?"]
ANSWERS = ["My name is {name}.", "I am {name}, an AI assistant.", "I'm {name}. How can I help you today?",
           "You can call me {name}.", "{name} here: an assistant, ready to help.",
           "I'm an AI assistant called {name}."]


def says(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, flags=re.IGNORECASE) is not None


def check(record: dict, completion: str) -> float:
    """1.0 when the answer gives the new name and not the old one, else 0.0."""
    return float(says(completion, record["name"]) and not says(completion, record["old_name"]))


def validate(record: dict) -> str | None:
    if not record["name"].strip() or not record["old_name"].strip():
        return "field 'name' or 'old_name': empty"
    if record["name"].strip().lower() == record["old_name"].strip().lower():
        return "fields 'name' and 'old_name' are the same name"
    if says(record["name"], record["old_name"].strip()):  # "Qwen Pro" says "Qwen": no answer could score 1
        return "field 'name' holds 'old_name' as a word, so an answer giving the new name also gives the old one"
    return None


def pairs(questions: list[str], name: str, old_name: str, rng: random.Random) -> list[dict]:
    """Each question with each answer form, the new name chosen, the old one rejected, in a seeded order."""
    rows = [{"prompt": q, "chosen": a.format(name=name), "rejected": a.format(name=old_name), "domain": "identity",
             "name": name, "old_name": old_name} for q in questions for a in ANSWERS]
    rng.shuffle(rows)
    return rows


def build(out, name: str, old_name: str, seed: int = 0) -> dict[str, int]:
    """Write the three files into `out` -> {file name: records}. The names are stripped of surrounding spaces."""
    name, old_name = name.strip(), old_name.strip()
    problem = validate({"name": name, "old_name": old_name})
    if problem:
        raise InputError(f"--name {name!r} --old-name {old_name!r}: {problem}")
    rng = random.Random(seed)
    files = {"prefs.jsonl": pairs(QUESTIONS, name, old_name, rng),
             "eval_prefs.jsonl": pairs(HELD_OUT, name, old_name, rng),
             "eval.jsonl": [{"prompt": q, "domain": "identity", "name": name, "old_name": old_name}
                            for q in HELD_OUT]}
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        for file, rows in files.items():
            write_jsonl(Path(out) / file, rows)
    except OSError as e:  # a file where the folder should be, no permission, a full disk
        raise InputError(f"--out {out}: cannot write there ({e.strerror or type(e).__name__})") from None
    return {file: len(rows) for file, rows in files.items()}


def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(lambda: _main(argv))


def _main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(prog="python -m minipost.world identity",
                        description="Write the identity lab's preference pairs and held-out prompts.")
    ap.add_argument("--name", required=True, help="the name the model should give")
    ap.add_argument("--old-name", required=True, help="the name it gives now (the rejected answers')")
    ap.add_argument("--out", default="data/identity", help="folder for prefs.jsonl, eval_prefs.jsonl, eval.jsonl")
    ap.add_argument("--seed", type=int, default=0, help="the order of the pairs")
    args = ap.parse_args(argv)
    counts = build(args.out, args.name, args.old_name, args.seed)
    print(f"wrote {args.out}: " + ", ".join(f"{f} {n}" for f, n in counts.items()))
