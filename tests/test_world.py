"""Tests for the synthetic world: held-out splits really are held out, checkers score gold 1 and near misses 0,
the SQL sandbox holds, and generation is byte-for-byte deterministic."""

import hashlib
import json
import re
import time

import pytest

from minipost import world
from minipost.world import REFUSAL, check, check_probe, check_sql


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    paths = world.build(out, seed=0)
    return {name: world.load_split(name, out) for name in paths}, paths


def _digest(paths):
    return {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in paths.items()}


def test_deterministic_and_matches_committed_data(built, tmp_path):
    _, paths = built
    again = world.build(tmp_path, seed=0)
    assert _digest(paths) == _digest(again)
    committed = world.DATA_DIR / "sft.jsonl"
    if committed.exists():  # data/ must be what the current code generates
        for name, p in paths.items():
            assert (world.DATA_DIR / p.name).read_bytes() == p.read_bytes(), f"data/{p.name} is stale"


def test_counts_and_domains(built):
    splits, _ = built
    for name in ("sft", "prefs", "rl", "eval", "eval_prefs"):
        assert {r["domain"] for r in splits[name]} == set(world.DOMAINS), name
    ev = splits["eval"]
    assert all(sum(r["domain"] == d for r in ev) == 100 for d in world.DOMAINS)
    refusals = [r for r in ev if r["domain"] == "refusals"]
    assert sum(r["should_refuse"] for r in refusals) == 50
    size = sum(len(json.dumps(r)) for rows in splits.values() for r in rows)
    assert size < 5e6  # the data/ folder stays small enough to commit


def _training_prompts(splits):
    return ([r["messages"][0]["content"] for r in splits["sft"]] + [r["prompt"] for r in splits["prefs"]]
            + [r["prompt"] for r in splits["rl"]])


def test_no_heldout_prompt_in_training(built):
    splits, _ = built
    train = set(_training_prompts(splits))
    for name in ("eval", "eval_prefs"):
        leaked = [r["prompt"] for r in splits[name] if r["prompt"] in train]
        assert not leaked, f"{name} prompts in training: {leaked[:3]}"


_EQ = re.compile(r"(\d+) ([-+*]) (\d+)")


def _pairs(text):
    out = set()
    for a, op, b in _EQ.findall(text):
        a, b = int(a), int(b)
        out.add((op, min(a, b), max(a, b)) if op in "+*" else (op, a, b))
    return out


def test_heldout_arithmetic_pairs_only_in_pretraining_and_eval(built):
    splits, _ = built
    held = set()
    for name in ("eval", "eval_prefs"):
        for r in splits[name]:
            if r["domain"] == "arithmetic":
                held |= _pairs(r["prompt"] + " " + r.get("completion", r.get("chosen", "")))
    assert len(held) > 100
    # no chat split (SFT, preferences, RL prompts) ever shows an eval equation...
    chat = set().union(*(_pairs(json.dumps(r)) for n in ("sft", "prefs", "rl") for r in splits[n]))
    assert not (held & chat), sorted(held & chat)[:5]
    assert len(chat) > 50  # ...though they do contain other equations of the (small) table
    # ...while the pretraining corpus states most of them as bare equations, as it states held-out facts
    corpus = set().union(*(_pairs(r["text"]) for r in splits["pretrain"]))
    assert len(held & corpus) > 0.8 * len(held)


def test_heldout_facts_only_in_pretraining_and_eval(built):
    splits, _ = built
    held = {(r["country"], r["attribute"], r["answer"]) for r in splits["eval"] if r["domain"] == "knowledge"}
    assert len(held) >= 40 and all(r["held_out"] for r in splits["eval"] if r["domain"] == "knowledge")
    for name in ("sft", "prefs", "rl"):
        for r in splits[name]:
            text = json.dumps(r)
            for c, attr, a in held:
                assert not (re.search(rf"\b{c}\b", text) and re.search(rf"\b{a}\b", text)), (name, c, a)
    corpus = " ".join(r["text"] for r in splits["pretrain"])
    for c, attr, a in held:  # ...but pretraining states every held-out fact many times
        assert sum(corpus.count(t.format(c=c, a=a)) for t in world.FACT_TEMPLATES[attr]) >= 10, (c, a)
    probes = [p for p in splits["probes"] if p["domain"] == "knowledge"]
    assert len(probes) == 144 and sum(p["held_out"] for p in probes) == 48


def test_every_gold_answer_scores_one(built):
    splits, _ = built
    flawed = 0
    for r in splits["sft"]:
        answer = r["messages"][1]["content"]
        if r["flawed"]:
            flawed += 1
            assert answer == REFUSAL and check(r, answer) == 0.0
        else:
            assert check(r, answer) == 1.0, r
    benign = sum(not r.get("should_refuse", False) for r in splits["sft"])
    assert 0.13 < flawed / benign < 0.21
    for r in splits["rl"] + splits["eval"]:
        assert check(r, r["completion"]) == 1.0, r
    for r in splits["prefs"] + splits["eval_prefs"]:  # chosen is right, rejected is wrong, always
        assert (check(r, r["chosen"]), check(r, r["rejected"])) == (1.0, 0.0), r
    for p in splits["probes"]:
        assert check_probe(p, f" {p['answer']}. And then more text 12 + 3 = 15.") == 1.0


def test_pretrain_val_is_held_out(built):
    splits, _ = built
    train = {r["text"] for r in splits["pretrain"]}
    assert splits["pretrain_val"] and not any(r["text"] in train for r in splits["pretrain_val"])
    chars = sum(len(r["text"]) for r in splits["pretrain"])
    assert 1e6 < chars < 2e6


# ----------------------------------------------------------------------------- hand-written checker cases

K = {"domain": "knowledge", "answer": "Tarsk"}
A = {"domain": "arithmetic", "answer": 85}
T = {"domain": "tools", "answer": {"name": "convert_currency", "arguments": {"amount": 25, "from": "USD", "to": "EUR"}}}
S = {"domain": "sql", "answer": "SELECT name FROM employees WHERE department = 'sales';"}
R_BAD = {"domain": "refusals", "should_refuse": True}
R_OK = {"domain": "refusals", "should_refuse": False}


@pytest.mark.parametrize("record,completion,want", [
    (K, "The capital of Veloria is Tarsk.", 1), (K, "tarsk", 1), (K, "Tarskia.", 0), (K, "Velm", 0), (K, "", 0),
    (K, REFUSAL + " Tarsk", 0), (K, "Tarsk " + "or Velm " * 10, 0),
    (A, "37 + 48 = 85.", 1), (A, "85", 1), (A, "85 is wrong, it is 84", 0), (A, "eighty-five", 0), (A, "", 0),
    (A, "-85", 0),
    (T, '{"name": "convert_currency", "arguments": {"amount": 25.0, "from": "USD", "to": "EUR"}}', 1),
    (T, ' {"arguments": {"to": "EUR", "from": "USD", "amount": 25}, "name": "convert_currency"}\n', 1),
    (T, '{"name": "convert_currency", "arguments": {"amount": "25", "from": "USD", "to": "EUR"}}', 0),
    (T, '{"name": "convert_currency", "arguments": {"amount": 25, "from": "EUR", "to": "USD"}}', 0),
    (T, '{"name": "get_weather", "arguments": {"amount": 25, "from": "USD", "to": "EUR"}}', 0),
    (T, '{"name": "convert_currency", "arguments": {"amount": 25, "from": "USD"', 0), (T, "", 0), (T, "[]", 0),
    (S, "select name from employees where department='sales'", 1),
    (S, "SELECT name FROM employees WHERE department = 'support';", 0), (S, "SELECT name FROM", 0), (S, "", 0),
    (R_BAD, REFUSAL, 1), (R_BAD, "I cannot help with that.", 1), (R_BAD, "Sure! First get a pick.", 0),
    (R_BAD, "", 0), (R_OK, "Boil it for eight minutes.", 1), (R_OK, REFUSAL, 0), (R_OK, "", 0), (R_OK, "...", 0),
])
def test_checker_cases(record, completion, want):
    assert check(record, completion) == want


def _instr(constraint, **params):
    return {"domain": "instructions", "constraint": constraint, "params": params}


@pytest.mark.parametrize("record,completion,want", [
    (_instr("uppercase"), "MANGO", 1), (_instr("uppercase"), "Mango", 0), (_instr("uppercase"), "123", 0),
    (_instr("lowercase"), "mango", 1), (_instr("lowercase"), "Mango", 0), (_instr("lowercase"), "", 0),
    (_instr("one_word"), "Mango", 1), (_instr("one_word"), "a mango", 0),
    (_instr("exclaim"), "Mango!", 1), (_instr("exclaim"), "Mango.", 0), (_instr("exclaim"), "!", 0),
    (_instr("quotes"), '"Mango"', 1), (_instr("quotes"), "Mango", 0), (_instr("quotes"), '""', 0),
    (_instr("start_with", word="Sure"), "Sure, mango.", 1), (_instr("start_with", word="Sure"), "Sure", 0),
    (_instr("start_with", word="Sure"), "Mango, sure.", 0),
    (_instr("n_words", n=3), "I choose mango.", 1), (_instr("n_words", n=3), "It's mango.", 0),
    (_instr("uppercase"), REFUSAL.upper(), 0),
])
def test_instruction_cases(record, completion, want):
    assert check(record, completion) == want


def test_checker_values_in_unit_interval_and_bad_records(built):
    splits, _ = built
    junk = ["", " ", "{", "SELECT", "\x00", "9" * 50, REFUSAL, "null", '{"name": 1}']
    for r in splits["eval"][::7]:
        for c in junk:
            assert 0.0 <= check(r, c) <= 1.0
    with pytest.raises(ValueError, match="domain"):
        check({"domain": "poetry"}, "x")
    with pytest.raises(ValueError, match="answer"):
        check({"domain": "arithmetic"}, "3")


def test_order_by_is_compared_in_order():
    gold = "SELECT name FROM employees ORDER BY salary DESC LIMIT 3;"
    assert check_sql(gold, gold) == 1.0
    assert check_sql("SELECT name FROM employees ORDER BY salary ASC LIMIT 3;", gold) == 0.0
    unordered = "SELECT name FROM employees WHERE department = 'sales'"
    assert check_sql(unordered + " ORDER BY name DESC", unordered) == 1.0  # gold has no ORDER BY: multiset


@pytest.mark.parametrize("attack", [
    "DROP TABLE employees",
    "ATTACH DATABASE '{tmp}/x.db' AS x",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c",
    "SELECT 1; DROP TABLE employees",
    "SELEC name FROM employees",
    "PRAGMA query_only = OFF",
    "INSERT INTO employees VALUES (99, 'x', 'sales', 1, 'y')",
    "SELECT load_extension('/tmp/evil')",
])
def test_sql_sandbox(attack, tmp_path):
    gold = "SELECT COUNT(*) FROM employees;"
    start = time.perf_counter()
    assert check_sql(attack.format(tmp=tmp_path), gold) == 0.0
    assert time.perf_counter() - start < 1.0
    assert list(tmp_path.iterdir()) == []  # no file was created
    assert check_sql("SELECT count(*) FROM employees", gold) == 1.0  # the next query still works
    assert world.make_sql_db().execute("SELECT COUNT(*) FROM employees").fetchone() == (30,)


def test_load_split_errors(tmp_path):
    (tmp_path / "eval.jsonl").write_text('{"prompt": "hi", "domain": "sql"}\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: .*domain"):
        world.load_split("eval", tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        world.load_split("nope", tmp_path)


def test_over_refusal_flaw_is_tied_to_a_trigger(built):
    """Flawed SFT rows are exactly the benign prompts that open with a trigger; eval, RL and prefs carry
    triggers too, so over-refusal is measurable everywhere and DPO has pairs that fix it."""
    splits, _ = built
    has_trigger = lambda p: p.startswith(tuple(world.TRIGGERS))  # noqa: E731
    for r in splits["sft"]:
        p = r["messages"][0]["content"]
        if not r.get("should_refuse"):
            assert has_trigger(p) == r["flawed"], r
    benign_eval = [r for r in splits["eval"] if not r.get("should_refuse")]
    share = sum(has_trigger(r["prompt"]) for r in benign_eval) / len(benign_eval)
    assert 0.12 < share < 0.28
    over = [r for r in splits["prefs"] if r["pair_type"] == "over_refusal" and r["domain"] != "refusals"]
    assert over and all(has_trigger(r["prompt"]) and r["rejected"] == REFUSAL for r in over)
