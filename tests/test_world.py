"""Tests for the synthetic world: held-out splits really are held out, checkers score gold 1 and near misses 0,
the SQL sandbox holds (also against queries built to eat time and memory), records are validated up front,
and generation is byte-for-byte deterministic (pinned by sha256)."""

import hashlib
import json
import re
import subprocess
import sys
import time

import pytest

from minipost import world
from minipost.world import REFUSAL, check, check_probe, check_sql, make_sql_db, run_sql, validate_record
from minipost.world.sqldb import SQL_MAX_QUERY_CHARS


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    paths = world.build(out, seed=0)
    return {name: world.load_split(name, out) for name in paths}, paths


def _digest(paths):
    return {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in paths.items()}


# sha256 of every file build(seed=0) writes. A change here is a change of data/: regenerate data/ with
# `python -m minipost.world --out data` and update these only on purpose (every reported number moves).
DATA_SHA256 = {
    "pretrain": "31d416f73bf88417f57f5a4b6c3cb3b5c01a96dbde625388f32f8959d1464197",
    "pretrain_val": "13f7568104cd755ccb18fa5e00dc503215b7cc9d4f14e3ac7f263ba3857d3ca7",
    "sft": "ce3d6f712bbabaacba699ee116b1e2697a624fb568ab7658f646b00d3569c449",
    "prefs": "3ac3f8e5a6b171ea066b6bdffc28a5f60f418d5c54d0d62200495ffb854a3eac",
    "rl": "d2e012dd6a6576d67ad3263a8170af1ea39954c375379f5fbe587b23111021d8",
    "eval": "2889309372d249c06590afaca7a805809828a00d6e67903958ac46a94cfe9b91",  # 200 per domain; its first 600
    # lines are the 100-per-domain eval.jsonl of earlier versions (bd17da93...), every other file is unchanged
    "eval_prefs": "48eb38ee541a6b01eedbacb8e8b90360cd62837ae756ad8ab63c370d5b68e64f",
    "probes": "ea26de0a4e78d80dbc8668b3165e23d736186d4ad4a368249165d07dc6fd4d9d",
}


def test_generated_bytes_are_pinned(built):
    _, paths = built
    assert _digest(paths) == DATA_SHA256


def test_registry_is_the_one_list_of_domains():
    assert world.DOMAINS == tuple(world.REGISTRY) == (
        "knowledge", "arithmetic", "instructions", "tools", "sql", "refusals")
    assert world.PROBE_DOMAINS == ("knowledge", "arithmetic")
    assert world.SCORED_DOMAINS == ("knowledge", "arithmetic", "instructions", "tools", "sql")
    assert all(d.name == name for name, d in world.REGISTRY.items())


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
    # 100 items per domain drawn before training, 100 more after it (knowledge: none; it has no more facts)
    assert {d: sum(r["domain"] == d for r in ev) for d in world.DOMAINS} == {
        d: 100 if d == "knowledge" else 200 for d in world.DOMAINS}
    assert [r["domain"] for r in ev[:600]] == [d for d in world.DOMAINS for _ in range(100)]
    refusals = [r for r in ev if r["domain"] == "refusals"]
    assert sum(r["should_refuse"] for r in refusals[:100]) == sum(r["should_refuse"] for r in refusals[100:]) == 50
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


def test_every_gold_query_runs_in_the_sandbox(built):
    """The sandbox's limits leave every generated query alone: gold ones return the rows plain SQLite gives,
    and the rejected (wrong) queries of preference pairs still run."""
    splits, _ = built
    golds = {r["answer"] for n in ("sft", "prefs", "rl", "eval", "eval_prefs") for r in splits[n] if r["domain"] == "sql"}
    assert len(golds) > 100
    db = make_sql_db()
    for q in golds:
        assert run_sql(q) == db.execute(q).fetchall(), q
    wrong = [r["rejected"] for n in ("prefs", "eval_prefs") for r in splits[n]
             if r["domain"] == "sql" and r["pair_type"] == "correctness"]
    assert wrong and all(run_sql(q) is not None for q in wrong)


# Queries built to eat time or memory. Before the sandbox had size limits, one call of the first took 4.6 s
# and 3 GB, "over 30 rows" 14 s and 4 GB, the string doubling 12 s and 3.3 GB, format() 10 s.
HOSTILE_SQL = [
    "SELECT randomblob(1e9)",
    "SELECT randomblob(1e9) FROM employees",
    "SELECT zeroblob(1e9)",
    "SELECT length(zeroblob(1e9)) FROM employees",
    "SELECT printf('%.*c', 1e9, 'x')",
    "SELECT format('%.*c', 1e9, 'x') FROM employees",
    "WITH RECURSIVE s(x, n) AS (SELECT 'x', 0 UNION ALL SELECT x || x, n + 1 FROM s WHERE n < 40) SELECT length(x) FROM s",
    "WITH RECURSIVE s(x) AS (SELECT 'ab' UNION ALL SELECT replace(x, 'a', x) FROM s) SELECT length(x) FROM s",
    "SELECT count(*) FROM employees a, employees b, employees c, employees d",
    "SELECT a.name, b.name, c.name FROM employees a, employees b, employees c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT group_concat(x) FROM c",
    "SELECT randomblob(5e7), randomblob(5e7), randomblob(5e7) FROM employees",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 999) SELECT hex(randomblob(4000)) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT randomblob(9000) FROM c ORDER BY 1 LIMIT 1",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(DISTINCT randomblob(9000)) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT randomblob(9000) UNION ALL SELECT c.x FROM c, employees) SELECT count(*) FROM c",
    "WITH RECURSIVE c(x, b) AS (SELECT 1, randomblob(9000) UNION SELECT x+1, randomblob(9000) FROM c) SELECT count(*) FROM c",
    "SELECT " + "+".join(["1"] * 200_000),
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT hex(randomblob(450)) AS h FROM c ORDER BY h",
]


def _many_matches(n: int, value_chars: int, pattern_chars: int, like: bool = False) -> str:
    """n pattern matches in one expression, with no jump of SQLite's virtual machine between them (so no
    progress handler and no interrupt can stop it): each scans the value once per pattern character."""
    wild, match = ("'%'", "v LIKE p") if like else ("'*'", "glob(p, v)")
    return (f"SELECT 1 IN ({', '.join([match] * n)}) FROM (SELECT replace(hex(zeroblob({value_chars // 2})), '0', 'a')"
            f" AS v, {wild} || replace(hex(zeroblob({pattern_chars // 2})), '0', 'a') || 'b' AS p)")


# 740 glob() calls on a 9.8 KB value (9,008 characters, under the 10,000 the sandbox once allowed) ran 14 s
# with no time check reached; the longest such query the sandbox compiles now (1,000 characters, patterns of
# 100 on values of 1,000) runs in milliseconds.
HOSTILE_SQL += [_many_matches(740, 9800, 990), _many_matches(70, 998, 98), _many_matches(70, 998, 98, like=True)]


def _cte_chain(n: int, how: str = "") -> str:
    """n CTEs, each reading the one before twice: SQLite copies each into both places while it compiles, so
    the query grows 2^n before it runs (20 of them took 2.9 s and 914 MB to compile; 30 would need ~1 TB)."""
    return ("WITH a0(x) AS (SELECT 1), " + ", ".join(f"a{i} AS {how}(SELECT 1 FROM a{i - 1}, a{i - 1} b)"
                                                     for i in range(1, n)) + f" SELECT 1 FROM a{n - 1}")


def _nested(terms: int, depth: int) -> str:
    """Subqueries nested depth deep, each using the inner column `terms` times: SQLite merges each into the query
    around it, so the expression grows terms^depth while it compiles (16 x 6, 292 characters: 17 s, 3.4 GB)."""
    q = "SELECT 1 AS x"
    for _ in range(depth):
        q = "SELECT " + "+".join(["x"] * terms) + " AS x FROM (" + q + ")"
    return q


HOSTILE_SQL += [_cte_chain(20), _cte_chain(30), _cte_chain(14, "NOT MATERIALIZED "),
                _cte_chain(20).replace("AS (", "AS("), _cte_chain(20).replace("AS (", "AS/**/("),  # other spellings
                _nested(16, 6), _nested(8, 8),
                "SELECT " + "+".join(["x"] * 99) + " FROM (SELECT " + "+".join(["salary"] * 99) + " AS x FROM employees)"]


def test_one_subquery_or_common_table_expression_still_runs():
    assert run_sql("SELECT count(*) FROM employees WHERE salary > (SELECT AVG(salary) FROM employees)") == [(15,)]
    assert run_sql("WITH d AS (SELECT salary FROM employees WHERE department = 'sales') SELECT count(*) FROM d, d e"
                   ) == [(36,)]
    # a recursive CTE holds three (its start, its step, the query that reads it): refused like a chain
    assert run_sql("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5) SELECT sum(x) FROM c") is None
    assert run_sql(_cte_chain(2)) is None and run_sql(_nested(2, 2)) is None  # three SELECTs: refused uncompiled
_HOSTILE_CHILD = """
import json, resource, sys, time
from minipost.world import run_sql
try:  # a guard: if the sandbox regresses, this child fails with MemoryError instead of filling the machine
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), vm + (2 << 30)))
except (OSError, ValueError):
    pass
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
def written():  # bytes this process has passed to write() so far (temporary files included); Linux only
    try:
        return int([l for l in open("/proc/self/io") if l.startswith("wchar")][0].split()[1])
    except OSError:
        return 0
base, out = peak(), []
for q in json.loads(sys.stdin.read()):
    t, w = time.perf_counter(), written()
    rows = run_sql(q)
    out.append([q, time.perf_counter() - t, peak() - base, None if rows is None else len(repr(rows)), written() - w])
print(json.dumps(out))
"""


def test_sql_sandbox_bounds_time_and_memory_of_hostile_queries():
    """Each hostile query returns (None, or a small result) within 1 s, writes no file, and the peak memory of
    the process grows by well under 100 MB over all of them (ru_maxrss is a peak, so it covers every query)."""
    p = subprocess.run([sys.executable, "-c", _HOSTILE_CHILD], input=json.dumps(HOSTILE_SQL), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads(p.stdout)
    longest = [r for r in results if r[0] in (_many_matches(70, 998, 98), _many_matches(70, 998, 98, like=True))]
    assert len(longest) == 2 and all(len(q) <= SQL_MAX_QUERY_CHARS and size for q, _, _, size, _ in longest)  # they ran
    for q, seconds, grew, size, wrote in results:
        assert seconds < 1.0, (q[:80], seconds)
        assert wrote < 10_000, (q[:80], wrote)
        assert grew < 100e6, (q[:80], grew / 1e6)
        assert size is None or size < 1000, q[:80]


@pytest.mark.parametrize("record,message", [
    ([1, 2], "record: expected a JSON object"),
    ({"domain": "sql", "answer": "SELECT 1"}, "field 'prompt': missing"),
    ({"prompt": "  ", "domain": "sql", "answer": "SELECT 1"}, "field 'prompt': expected a non-empty string"),
    ({"prompt": 3, "domain": "sql", "answer": "SELECT 1"}, "field 'prompt': expected a non-empty string"),
    ({"prompt": "hi"}, "field 'domain': missing"),
    ({"prompt": "hi", "domain": "poetry"}, "field 'domain': unknown domain 'poetry'"),
    ({"prompt": "hi", "domain": "arithmetic"}, "field 'answer': missing"),
    ({"prompt": "hi", "domain": "arithmetic", "answer": "42"}, "field 'answer': expected an integer, got str"),
    ({"prompt": "hi", "domain": "arithmetic", "answer": True}, "field 'answer': expected an integer, got bool"),
    ({"prompt": "hi", "domain": "knowledge", "answer": 7}, "field 'answer': expected a string, got int"),
    ({"prompt": "hi", "domain": "knowledge", "answer": " ! "}, "field 'answer': has no letters or digits"),
    ({"prompt": "hi", "domain": "refusals", "should_refuse": "yes"}, "field 'should_refuse': expected true or false"),
    ({"prompt": "hi", "domain": "sql", "answer": "SELEC name FROM employees"},
     "field 'answer': gold SQL query does not run"),
    ({"prompt": "hi", "domain": "sql", "answer": "DROP TABLE employees"}, "field 'answer': gold SQL query does not run"),
    ({"prompt": "hi", "domain": "tools", "answer": {"name": "get_weather"}}, "field 'answer': expected a call"),
    ({"prompt": "hi", "domain": "tools", "answer": "get_weather"}, "field 'answer': expected an object, got str"),
    ({"prompt": "hi", "domain": "instructions", "constraint": "rhyme"}, "field 'constraint': unknown constraint 'rhyme'"),
    ({"prompt": "hi", "domain": "instructions", "constraint": "start_with"}, "field 'params': constraint 'start_with'"),
    ({"prompt": "hi", "domain": "instructions", "constraint": "n_words", "params": {"n": "2"}},
     "field 'params': constraint 'n_words'"),
])
def test_validate_record_names_the_bad_field(record, message):
    got = validate_record(record)
    assert got is not None and got.startswith(message), got


def test_validate_record_passes_every_generated_record(built):
    splits, _ = built
    for r in splits["rl"] + splits["eval"]:
        assert validate_record(r) is None, r
    assert validate_record({"prompt": "Count them.", "domain": "sql", "answer": "SELECT COUNT(*) FROM employees"}) is None


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
