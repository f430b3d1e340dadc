"""sql (the "customised model" case): "Write a SQL query for: ..." against the `employees` table built by
make_sql_db() (sqldb.py); check_sql() runs the query in the sandbox and compares result rows."""

from __future__ import annotations

import re
from collections import Counter

from minipost.world.base import Domain
from minipost.world.sqldb import DEPARTMENTS, EMPLOYEES, SQL_CITIES, make_sql_db, run_sql

# (template id, question phrasings, gold query). Parameters (see _sql_params) fill both.
SQL_TEMPLATES = [
    ("names_in_dept", ["list the names of employees in the {dept} department", "show the names of all {dept} employees"],
     "SELECT name FROM employees WHERE department = '{dept}';"),
    ("count_in_city", ["count the employees who work in {city}", "how many employees are based in {city}"],
     "SELECT COUNT(*) FROM employees WHERE city = '{city}';"),
    ("avg_in_dept", ["the average salary in the {dept} department", "the mean salary of {dept} employees"],
     "SELECT AVG(salary) FROM employees WHERE department = '{dept}';"),
    ("agg_by_group", ["the {aggw} salary in each {group}", "for every {group}, the {aggw} salary"],
     "SELECT {group}, {agg}(salary) FROM employees GROUP BY {group};"),
    ("count_by_group", ["the number of employees in each {group}", "how many employees there are per {group}"],
     "SELECT {group}, COUNT(*) FROM employees GROUP BY {group};"),
    ("top_n", ["the {n} {best} paid employees", "the names of the {n} {best} paid employees"],
     "SELECT name FROM employees ORDER BY salary {dir} LIMIT {n};"),
    ("dept_city", ["the names of {dept} employees in {city}", "list the {dept} staff based in {city}"],
     "SELECT name FROM employees WHERE department = '{dept}' AND city = '{city}';"),
    ("salary_cmp", ["the names of employees earning {cmpw} {x}", "list employees with a salary {cmpw} {x}"],
     "SELECT name FROM employees WHERE salary {cmp} {x};"),
    ("lookup", ["the {col} of {person}", "find the {col} of the employee {person}"],
     "SELECT {col} FROM employees WHERE name = '{person}';"),
    ("count_dept_above", ["how many {dept} employees earn more than {x}", "count the {dept} employees paid over {x}"],
     "SELECT COUNT(*) FROM employees WHERE department = '{dept}' AND salary > {x};"),
    ("city_above", ["the names of employees in {city} earning more than {x}", "list staff in {city} paid over {x}"],
     "SELECT name FROM employees WHERE city = '{city}' AND salary > {x};"),
]
# Templates with many distinct gold queries; eval holds some of their queries out of every training split.
# The small ones (a handful of queries each) stay training-only, so no query shape is never taught.
SQL_EVAL_TEMPLATES = ("salary_cmp", "lookup", "count_dept_above", "city_above")
SQL_PROMPT = "Write a SQL query for: {q}."


def _sql_params(rng, tid):
    aggw, agg = rng.choice([("highest", "MAX"), ("lowest", "MIN"), ("average", "AVG")])
    best, dir_ = rng.choice([("best", "DESC"), ("lowest", "ASC")])
    cmpw, cmp_ = rng.choice([("more than", ">"), ("less than", "<")])
    return dict(dept=rng.choice(DEPARTMENTS), city=rng.choice(SQL_CITIES), group=rng.choice(["department", "city"]),
                aggw=aggw, agg=agg, n=rng.randint(2, 6), best=best, dir=dir_, cmpw=cmpw, cmp=cmp_,
                x=rng.randrange(44_000, 118_000, 2000), col=rng.choice(["salary", "department", "city"]),
                person=rng.choice(EMPLOYEES)[1])


_GEN_DB = None


def _gold_rows(query: str) -> list:
    """Rows of a trusted (generated) query; used only while generating data."""
    global _GEN_DB
    if _GEN_DB is None:
        _GEN_DB = make_sql_db()
    return _GEN_DB.execute(query).fetchall()


# ----------------------------------------------------------------------------- sampler and wrong answers

def sample(rng, W, split):
    while True:
        tid, phrasings, gold = rng.choice([t for t in SQL_TEMPLATES if split != "eval" or t[0] in SQL_EVAL_TEMPLATES])
        p = _sql_params(rng, tid)
        gold = gold.format(**p)
        rows = _gold_rows(gold)
        if rows and rows[0][0] not in (None, 0):  # an empty answer would teach nothing
            break
    q = rng.choice(phrasings).format(**p)
    prompt = SQL_PROMPT.format(q=q)
    return dict(prompt=prompt, completion=gold, fields={"answer": gold, "template": tid}, keys=[("sql", gold)])


_SQL_MUTATIONS = [(" > ", " < "), (" < ", " > "), ("DESC", "ASC"), ("ASC", "DESC"), ("MAX(", "MIN("), ("MIN(", "MAX("),
                  ("AVG(", "SUM("), ("SELECT name", "SELECT city"), ("SELECT salary", "SELECT id"),
                  ("SELECT department", "SELECT city"), ("SELECT city", "SELECT department"),
                  ("COUNT(*)", "COUNT(*) + 1"), (" AND ", " OR ")]


def wrong(rng, W, item):
    """A query that runs but answers a different question: one operator, column or value changed."""
    gold = item["completion"]
    options = [gold.replace(a, b, 1) for a, b in _SQL_MUTATIONS if a in gold]
    for pool in (DEPARTMENTS, SQL_CITIES, [r[1] for r in EMPLOYEES]):
        for value in pool:
            if f"'{value}'" in gold:
                options += [gold.replace(f"'{value}'", f"'{v}'") for v in rng.sample([v for v in pool if v != value], 2)]
    for m in re.findall(r"\b\d+\b", gold):
        options.append(gold.replace(m, str(int(m) + (10_000 if int(m) > 100 else 1)), 1))
    rng.shuffle(options)
    for cand in options:
        if check_sql(cand, gold) == 0.0 and run_sql(cand) is not None:
            return cand
    return "SELECT name FROM employees WHERE id < 0;"  # fallback (not reached for our templates): runs, returns nothing


# ----------------------------------------------------------------------------- checker

def _canon(rows: list) -> list:
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows]


def check_sql(pred: str, gold: str) -> float:
    """1.0 iff `pred` returns the same rows as `gold`: as a multiset, or in order when gold has ORDER BY."""
    want = run_sql(gold)
    if want is None:
        raise ValueError(f"gold SQL query does not run: {gold!r}")
    got = run_sql(pred)
    if got is None:
        return 0.0
    got, want = _canon(got), _canon(want)
    if re.search(r"\border\s+by\b", gold, re.IGNORECASE):
        return float(got == want)
    return float(Counter(got) == Counter(want))


def check_sql_record(record: dict, completion: str) -> float:
    return check_sql(completion, record["answer"])


def validate(record: dict) -> str | None:
    if run_sql(record["answer"]) is None:
        return "field 'answer': gold SQL query does not run"
    return None


# ----------------------------------------------------------------------------- corpus

def doc(rng, W, train_item):
    parts = ["The employees table has the columns id, name, department, salary and city."] if rng.random() < 0.3 else []
    for _ in range(rng.randint(1, 3)):
        it = train_item("sql")
        q = it["prompt"].split(": ", 1)[1].rstrip(".")
        parts.append(rng.choice(["For {q}, run: {s}", "Question: {q}. SQL: {s}", "The query for {q} is {s}"]).format(
            q=q, s=it["completion"]))
    return " ".join(parts)


DOMAIN = Domain(name="sql", benchmark="text-to-SQL (custom model)", sample=sample, check=check_sql_record,
                check_fields={"answer": str}, wrong=wrong, n_rl=600, validate=validate,
                doc=doc, corpus_weight=10, corpus_rank=2)
