"""The registry: every domain, in order, and the functions that dispatch on a record's "domain"."""

from __future__ import annotations

import re

from minipost.chat_formats import check_messages
from minipost.world import arithmetic, gsm8k, identity, instructions, knowledge, refusals, sql, tools
from minipost.world.base import Domain, Checker

# name -> Domain. The order is the order of every split (and of the seeded draws that build them).
REGISTRY: dict[str, Domain] = {d.name: d for d in (
    knowledge.DOMAIN,
    arithmetic.DOMAIN,
    instructions.DOMAIN,
    tools.DOMAIN,
    sql.DOMAIN,
    refusals.DOMAIN,
)}
DOMAINS = tuple(REGISTRY)
PROBE_DOMAINS = tuple(d.name for d in REGISTRY.values() if d.probes is not None)   # base-model probe columns
SCORED_DOMAINS = tuple(d.name for d in REGISTRY.values() if d.report_column)      # chat score columns
BENCHMARK = {d.name: d.benchmark for d in REGISTRY.values()}  # a read-only view, for printing

# Checkers for data a user brings in a public form (the world generates none of it): record["domain"] -> its
# checker. Their records are scored and validated like the world's, and a held-out set of them gets a column.
BROUGHT: dict[str, Checker] = {
    "gsm8k": Checker("gsm8k", gsm8k.check, {"answer": str}, gsm8k.validate),
    "identity": Checker("identity", identity.check, {"name": str, "old_name": str}, identity.validate),  # its lab
}


PROMPT_ONLY = "prompts"  # the domain of TRL's prompt-only records: no checker, a reward model scores them


def checker(domain) -> Domain | Checker | None:
    """The world's domain or a brought checker of that name (None: neither)."""
    return REGISTRY.get(domain) or BROUGHT.get(domain) if isinstance(domain, str) else None


def check(record: dict, completion: str) -> float:
    """Score a completion for a record of rl/eval/prefs: 0.0 or 1.0, dispatching on record["domain"]."""
    domain = record.get("domain")
    if domain == PROMPT_ONLY:
        raise ValueError("prompt-only records (a prompt, no domain or answer) have no checker for a term to "
                         "call: only a reward model scores them (rm:PATH alone)")
    d = checker(domain)
    if d is None:
        raise ValueError(f"record has domain {domain!r}; expected one of {DOMAINS + tuple(BROUGHT)}")
    missing = [f for f in d.check_fields if f not in record]
    if missing:
        raise ValueError(f"{domain} record lacks checker field(s) {missing}: {str(record)[:120]}")
    if not isinstance(completion, str):
        return 0.0
    return d.check(record, completion)


def check_probe(record: dict, completion: str) -> float:
    """Score a base-model continuation of a probe: only its first sentence/line counts, since a base model
    keeps writing after the answer ("85. 12 + 3 = 15." must score the 85)."""
    d = REGISTRY.get(record.get("domain"))
    if d is None or d.check_probe is None:
        raise ValueError(f"probe has domain {record.get('domain')!r}; expected one of {PROBE_DOMAINS}")
    first = re.split(r"\n|\.(?:\s|$)", completion.strip() + " ", maxsplit=1)[0]
    return d.check_probe(record, first)


def _type_name(t) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", float: "a number"}
    return " or ".join(names.get(x, x.__name__) for x in (t if isinstance(t, tuple) else (t,)))


def _has_type(value, t) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in types:  # JSON true is not an integer here
        return False
    return isinstance(value, types)


def validate_record(record: dict) -> str | None:
    """Check one rl/eval record before any training starts. None if it is usable, else one message that
    names the field, e.g. "field 'answer': gold SQL query does not run" (the caller adds file:line).

    Checks: "prompt" is a non-empty string; "domain" is a registered domain; that domain's checker fields
    are present with the right types; then the domain's own check (sql: the gold query runs in the sandbox;
    instructions: a known constraint with its parameters; tools: a call with a name and arguments)."""
    if not isinstance(record, dict):
        return f"record: expected a JSON object, got {type(record).__name__}"
    if "prompt" not in record:
        return "field 'prompt': missing"
    prompt = record["prompt"]
    if isinstance(prompt, list):  # TRL's conversational prompt: messages, the last one not an answer
        try:
            check_messages(prompt)  # (the chat template's own check)
        except ValueError as e:
            return f"field 'prompt': {e}"
        if not prompt:
            return "field 'prompt': an empty list of messages"
        if prompt[-1]["role"] == "assistant":
            return "field 'prompt': its last message is an answer; a prompt ends with the question"
    elif not isinstance(prompt, str) or not prompt.strip():
        return f"field 'prompt': expected a non-empty string or a list of messages, got {prompt!r:.40}"
    if "domain" not in record:
        return "field 'domain': missing"
    if record["domain"] == PROMPT_ONLY:
        return None
    d = checker(record["domain"])
    if d is None:
        return f"field 'domain': unknown domain {record['domain']!r:.40}; expected one of {DOMAINS + tuple(BROUGHT)}"
    for name, t in d.check_fields.items():
        if name not in record:
            article = "an" if d.name[0] in "aeiou" else "a"
            return f"field {name!r}: missing ({article} {d.name} record needs {list(d.check_fields)})"
        if not _has_type(record[name], t):
            return f"field {name!r}: expected {_type_name(t)}, got {type(record[name]).__name__}"
    return d.validate(record) if d.validate is not None else None
