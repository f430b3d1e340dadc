"""The SQL domain's database and its sandbox: the fixed `employees` table, and run_sql(), which runs one
untrusted query (a model's completion) on a fresh copy of it.

The sandbox, layer by layer (each stops something the others would let through):
- one statement, read-only: `PRAGMA query_only`, and an allow-list authorizer that vets the statement while
  it is compiled (no ATTACH, PRAGMA, writes, load_extension, printf/format...);
- bounded size: SQLite's own limits (`conn.setlimit`) cap the query text, every string or blob it builds
  (so `randomblob(1e9)`, `zeroblob`, `printf('%.*c', 1e9, 'x')` and string doubling fail at once with
  "string or blob too big"), expression depth and compound selects; the Python side caps the rows and bytes
  it fetches;
- bounded work: a progress handler aborts the statement after SQL_MAX_VM_STEPS virtual-machine steps or
  SQL_TIME_LIMIT_S, checked every SQL_PROGRESS_STEPS steps. SQLite calls it only at the jumps of its
  virtual machine, and so does `connection.interrupt()`: an expression of many calls with no jump between
  them (`1 IN (glob(p, v), glob(p, v), ...)`) is never interrupted. What bounds it is the cost of each call:
  a LIKE/GLOB pattern of at most 100 characters on a value of at most 1,000 bytes, and at most 1,000
  characters of query, so at most ~100 such calls;
- bounded compilation: SQLite copies a common table expression into every place that reads it, and merges a
  subquery into the query around it (each use of its column becomes a copy of the column's expression),
  before any limit above applies: a chain of 20 CTEs that each read the previous one twice (704 characters)
  took 2.9 s and 914 MB to compile, 6 nested subqueries that each use the inner column 16 times (292
  characters) 17 s and 3.4 GB. So a query holds at most two SELECTs (SQL_MAX_SELECTS, VALUES counted: a
  subquery or one plain CTE; a recursive CTE holds three), and its compiled program is capped
  (SQLITE_LIMIT_VDBE_OP);
- no files: temporary tables and sorts stay in memory (`temp_store = MEMORY`), and the step bound caps
  what they can hold (a recursive query filling a sorter stops at ~13 MB).
Measured on a shared 2-core CPU, every hostile query in tests/test_world.py returns within 0.3 s, raises
the peak memory of the process by under 20 MB and writes no file. Before these limits: up to 15 s and 4 GB
per call; 880 glob() calls on a 9.8 KB value took 10-42 s, and a recursive query wrote 260 MB of temporary
files in its 0.2 s.
SQLite's memory limit (`PRAGMA hard_heap_limit`) is not used: it is process-wide and would also cap every
other SQLite connection (retrieval.py's index).
"""

from __future__ import annotations

import itertools
import random
import re
import sqlite3
import time

from minipost.world.names import make_name

# The SQL table is fixed (make_sql_db() takes no seed), so its rows come from their own constant seed.
DEPARTMENTS = ("sales", "engineering", "support", "marketing", "finance")


def _sql_rows():
    rng, used = random.Random(1234), set()
    cities = [make_name(rng, used, (2,)) for _ in range(5)]
    salaries = rng.sample(range(40_000, 120_000, 1000), 30)  # distinct, so ORDER BY salary has no ties
    rows = [(i + 1, make_name(rng, used, (2,)), DEPARTMENTS[i % 5], salaries[i], cities[rng.randrange(5)])
            for i in range(30)]
    return tuple(cities), tuple(rows)


SQL_CITIES, EMPLOYEES = _sql_rows()
SQL_SCHEMA = "CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, department TEXT, salary INTEGER, city TEXT)"

# Sandbox limits. Every gold query is under 120 characters, runs in at most 542 VM steps and returns at
# most 30 short rows.
SQL_TIME_LIMIT_S = 0.2            # wall time of one query, compile + run + fetch
SQL_MAX_VM_STEPS = 100_000        # virtual-machine steps of one query (185x the longest gold query)
SQL_PROGRESS_STEPS = 100          # both are checked every this many VM steps
SQL_MAX_ROWS = 1000               # more rows than this: the query scores 0
SQL_MAX_RESULT_BYTES = 1_000_000  # total size of the fetched values (numbers count 8 bytes)
SQL_MAX_VALUE_BYTES = 1_000       # SQLITE_LIMIT_LENGTH: the longest string, blob or row SQLite may build
SQL_MAX_QUERY_CHARS = 1_000       # SQLITE_LIMIT_SQL_LENGTH: the longest query text
SQL_MAX_SELECTS = 2               # SELECT and VALUES keywords in one query (gold queries: 1)
# every SELECT or VALUES keyword, wherever it stands (a CTE's body, a subquery, a compound); the same words in a
# string or a comment count too, so such a query is refused, never compiled: a count no spelling can dodge
_SELECT = re.compile(r"\b(?:SELECT|VALUES)\b", re.IGNORECASE)
SQL_LIMITS = {  # passed to conn.setlimit(); SQLite's defaults are in brackets
    sqlite3.SQLITE_LIMIT_LENGTH: SQL_MAX_VALUE_BYTES,        # [1e9]
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: SQL_MAX_QUERY_CHARS,    # [1e9]
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 100,                    # [1000] nesting of expressions
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 20,                # [500] terms of a UNION / EXCEPT chain
    sqlite3.SQLITE_LIMIT_COLUMN: 100,                        # [2000] columns of a result or index
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 16,                   # [127] arguments of one function call
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 100,           # [50000] length of a LIKE / GLOB pattern
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,                        # [10] attached databases (ATTACH is denied anyway)
    sqlite3.SQLITE_LIMIT_WORKER_THREADS: 0,                  # [0] sorter helper threads
    sqlite3.SQLITE_LIMIT_VDBE_OP: 5_000,                     # [250M] instructions of the compiled program (gold: 45)
}
_SQL_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
# printf / format: a huge width ("%.*c", 1e9) spins for seconds inside one VM step, where no time check
# reaches, and its result is NULL anyway (longer than SQL_MAX_VALUE_BYTES); no gold query needs them.
_SQL_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "printf", "format"}


def make_sql_db() -> sqlite3.Connection:
    """A fresh in-memory database holding the fixed `employees` table (30 rows, the same every call)."""
    conn = sqlite3.connect(":memory:")
    conn.execute(SQL_SCHEMA)
    conn.executemany("INSERT INTO employees VALUES (?, ?, ?, ?, ?)", EMPLOYEES)
    conn.commit()
    return conn


def _authorizer(action, arg1, arg2, db_name, trigger):
    """Allow only reading: SELECT, column reads, (safe) functions, recursive CTEs. Deny everything else
    (ATTACH, DETACH, PRAGMA, INSERT/UPDATE/DELETE, CREATE, DROP, transactions...)."""
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _SQL_DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in _SQL_ALLOWED else sqlite3.SQLITE_DENY


def _value_bytes(v) -> int:
    return len(v) if isinstance(v, (str, bytes)) else 8


def run_sql(query: str) -> list | None:
    """Rows of `query` on a fresh sandboxed db, or None on any error, timeout or too large a result."""
    if not isinstance(query, str) or not query.strip() or len(query) > SQL_MAX_QUERY_CHARS:
        return None
    body = query.strip().rstrip(";").strip()
    if ";" in body:  # one statement only (this also rejects ';' inside string literals: fine for us)
        return None
    if len(_SELECT.findall(body)) > SQL_MAX_SELECTS:  # before SQLite compiles it (see the module docstring)
        return None
    conn = make_sql_db()
    try:
        for limit, value in SQL_LIMITS.items():
            conn.setlimit(limit, value)
        conn.execute("PRAGMA temp_store = MEMORY")  # sorts and temporary tables write no file
        conn.execute("PRAGMA query_only = ON")  # belt: the engine itself refuses writes
        conn.set_authorizer(_authorizer)        # braces: the statement is vetted while it is compiled
        deadline, checks = time.perf_counter() + SQL_TIME_LIMIT_S, itertools.count(1)

        def too_much() -> int:  # SQLite calls it every SQL_PROGRESS_STEPS steps; nonzero aborts the statement
            return int(next(checks) * SQL_PROGRESS_STEPS > SQL_MAX_VM_STEPS or time.perf_counter() > deadline)
        conn.set_progress_handler(too_much, SQL_PROGRESS_STEPS)
        rows, size = [], 0
        for row in conn.execute(body):  # one row at a time, so a too-large result stops early
            size += sum(_value_bytes(v) for v in row)
            rows.append(row)
            if len(rows) > SQL_MAX_ROWS or size > SQL_MAX_RESULT_BYTES or time.perf_counter() > deadline:
                return None
        return rows
    except Exception:  # sqlite3.Error, OverflowError, MemoryError from a hostile query...: all score 0
        return None
    finally:
        conn.close()
