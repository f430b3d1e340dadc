"""tools (BFCL-like): reply with one JSON tool call such as
{"name": "get_weather", "arguments": {"city": "Tarsk"}}; the tools are listed in TOOLS."""

from __future__ import annotations

import json

from minipost.world.base import Domain

TOOLS = [
    {"name": "get_weather", "description": "Current weather for a city.", "parameters": {"city": "string"}},
    {"name": "convert_currency", "description": "Convert an amount of money from one currency to another.",
     "parameters": {"amount": "number", "from": "string", "to": "string"}},
    {"name": "set_timer", "description": "Start a timer that rings after some minutes.",
     "parameters": {"minutes": "integer"}},
    {"name": "find_book", "description": "Find books written by an author.", "parameters": {"author": "string"}},
]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF"]


# ----------------------------------------------------------------------------- sampler and wrong answers

def sample(rng, W, split):
    name = rng.choice([t["name"] for t in TOOLS])
    if name == "get_weather":
        city = rng.choice(W.values["capital"])
        args = {"city": city}
        prompt = rng.choice(["What's the weather in {city}?", "Is it raining in {city} today?",
                             "Tell me the weather for {city}.", "How warm is it in {city} right now?"]).format(city=city)
    elif name == "convert_currency":
        amount, (frm, to) = rng.randint(1, 500), rng.sample(CURRENCIES, 2)
        args = {"amount": amount, "from": frm, "to": to}
        prompt = rng.choice(["Convert {x} {f} to {t}.", "How much is {x} {f} in {t}?",
                             "Change {x} {f} into {t}."]).format(x=amount, f=frm, t=to)
    elif name == "set_timer":
        m = rng.randint(1, 90)
        args = {"minutes": m}
        prompt = rng.choice(["Set a timer for {m} minutes.", "Start a {m} minute timer.",
                             "Remind me in {m} minutes."]).format(m=m)
    else:
        author = rng.choice(W.authors)
        args = {"author": author}
        prompt = rng.choice(["Find a book by {a}.", "Look up books written by {a}.",
                             "Do you have anything by {a}?"]).format(a=author)
    call = {"name": name, "arguments": args}
    return dict(prompt=prompt, completion=json.dumps(call), fields={"answer": call}, keys=[("prompt", prompt)])


def wrong(rng, W, item):
    """The right tool with one wrong argument."""
    call = json.loads(json.dumps(item["fields"]["answer"]))  # deep copy
    args = call["arguments"]
    if "city" in args:
        args["city"] = rng.choice([c for c in W.values["capital"] if c != args["city"]])
    elif "amount" in args:
        args["from"], args["to"] = args["to"], args["from"]
    elif "minutes" in args:
        args["minutes"] += rng.choice([-1, 1, 10]) if args["minutes"] > 1 else 1
    else:
        args["author"] = rng.choice([a for a in W.authors if a != args["author"]])
    return json.dumps(call)


# ----------------------------------------------------------------------------- checker

def _same_value(a, b) -> bool:
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) < 1e-9
    return type(a) is type(b) and a == b


def check_tools(record: dict, completion: str) -> float:
    """json.loads the completion; tool name equal and arguments equal (numbers compared numerically)."""
    try:
        call = json.loads(completion.strip())
    except (json.JSONDecodeError, ValueError):
        return 0.0
    gold = record["answer"]
    if not isinstance(call, dict) or set(call) != {"name", "arguments"} or not isinstance(call["arguments"], dict):
        return 0.0
    args, gargs = call["arguments"], gold["arguments"]
    return float(call["name"] == gold["name"] and set(args) == set(gargs)
                 and all(_same_value(args[k], gargs[k]) for k in gargs))


def validate(record: dict) -> str | None:
    gold = record["answer"]
    if not isinstance(gold.get("name"), str) or not isinstance(gold.get("arguments"), dict):
        return 'field \'answer\': expected a call {"name": string, "arguments": object}'
    return None


# ----------------------------------------------------------------------------- corpus

def doc(rng, W, train_item):
    parts = []
    for _ in range(rng.randint(1, 3)):
        it = train_item("tools")
        tool = next(t for t in TOOLS if t["name"] == it["fields"]["answer"]["name"])
        parts.append(f"The {tool['name']} tool: {tool['description']} A request like \"{it['prompt']}\" "
                     f"becomes the call {it['completion']}")
    return " ".join(parts)


DOMAIN = Domain(name="tools", benchmark="BFCL-like", sample=sample, check=check_tools,
                check_fields={"answer": dict}, wrong=wrong, n_rl=200, validate=validate,
                doc=doc, corpus_weight=8, corpus_rank=3)
