"""A real retriever: SQLite's FTS5 full-text index, ranked by BM25 (Python's own sqlite3, no new dependency).

Retrieval-augmented generation (RAG) answers from documents looked up at question time instead of from
what training stored in the weights: retrieve the top-k documents for the question and put them in the
user turn. Changing what the model knows is then an `index.add`, not a training run.

BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond") scores a
document d for a query of terms q_1..q_n as

    score(d) = sum_i IDF(q_i) * tf(q_i, d) * (k1 + 1) / (tf(q_i, d) + k1 * (1 - b + b * |d| / avgdl))

with tf the term's count in d, |d| its length in terms, avgdl the mean length, IDF(q) = ln((N - n_q + 0.5)
/ (n_q + 0.5)) over N documents of which n_q hold q, and k1 = 1.2, b = 0.75 (FTS5's built-in bm25()). Rare
terms weigh most: "Brerkia" decides, "the" hardly counts. FTS5 returns -score, so ascending order is best first.

    index = Index(["The capital of Brerkia is Gubus.", "People in Zorvia speak Melic."])
    index.search("What is the capital of Brerkia?", k=1)   # -> [0]
    index.add(["Brerkia moved its capital to Ostal."])      # positions 2, ...

A query is a question, not FTS5 syntax: it is split into words and each word is quoted, so quotes, `*`,
`-`, `NEAR(`, `AND`/`OR`/`NOT`, parentheses and non-ASCII text are plain words; a query with no word in it
(empty, only punctuation) and a search of an empty index return []. English function words ("what", "the",
"me") are dropped from the query; the other terms are OR-ed, so a document needs only one of them to be a
candidate, and BM25 orders the candidates. `python -m minipost.retrieval` measures recall@k on the held-out
knowledge questions over the pretraining corpus.
"""
from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from pathlib import Path

from minipost.common import ArgumentParser

WORD = re.compile(r"\w+", re.UNICODE)  # FTS5's unicode61 tokenizer also splits on everything that is not \w
# English function words, dropped from queries as IR systems commonly do (lists like NLTK's or SMART's).
# Without them "Tell me the capital city of Brerkia." ranks three tool documents ("Tell me the weather for
# a city") above every document about Brerkia: three common words beat one rare one (recall@3 90% -> 100%).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers him his how i if in into is it its just me more most my no nor not now of off on once only or other
our out over own same she should so some such than that the their them then there these they this those
through to too under until up very was we were what when where which while who whom why will with would
you your""".split())


def fts_query(text: str) -> str:
    """A question as an FTS5 query that cannot be a syntax error: its words but the stop words (all of them
    if that leaves none), each quoted, OR-ed; '' for a text without a word."""
    words = list(dict.fromkeys(w.lower() for w in WORD.findall(text)))  # unique, in order
    words = [w for w in words if w not in STOP_WORDS] or words
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


INDEX_TABLES = {"docs", "docs_data", "docs_idx", "docs_content", "docs_docsize", "docs_config"}  # what fts5 makes
INDEX_SQL = "CREATE VIRTUAL TABLE docs USING fts5(text, tokenize = 'porter unicode61 remove_diacritics 2')"


def check_index_file(path) -> None:
    """An existing file is an empty SQLite database or an index of ours, or ValueError. It is opened read-only:
    a check that opened it for writing could already change another program's file (SQLite rolls back a
    journal, or checkpoints a WAL file, that a crashed writer left)."""
    try:
        with contextlib.closing(sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)) as db:
            objects = {(r[0], r[1]): r[2] for r in db.execute("SELECT type, name, sql FROM sqlite_master")}
    except sqlite3.DatabaseError as e:  # not SQLite, or a journal only its writer may roll back
        raise ValueError(f"{path}: not an SQLite index file of ours, or one another program is writing "
                         f"({e})") from None
    ours = {("table", name) for name in INDEX_TABLES}
    if objects and (set(objects) != ours or objects["table", "docs"] != INDEX_SQL):
        found = ", ".join(f"{kind} {name}" for kind, name in sorted(objects))
        raise ValueError(f"{path}: an SQLite database of something else ({found}): not writing an index into it")


class Index:
    """A BM25 full-text index of texts, in memory (path None) or in an SQLite file (kept between runs:
    Index(path=...) reopens it, and its positions continue). Positions are indices into the texts in the
    order they were added, starting at 0."""

    def __init__(self, texts: list[str] = (), path: str | Path | None = None):
        if path is not None:
            if Path(path).is_dir():
                raise ValueError(f"{path}: is a folder, not an index file")
            if Path(path).is_symlink() and not Path(path).exists():
                raise ValueError(f"{path}: a link to {os.readlink(path)}, which does not exist")
            if not Path(path).parent.is_dir():
                raise ValueError(f"{path}: its folder {Path(path).parent} does not exist")
            if Path(path).exists():
                check_index_file(path)  # read-only: another program's file is never written into, not even rolled back
        self.db = sqlite3.connect(":memory:" if path is None else str(path))
        try:
            # porter: words match by their stem ("moved" = "move", "speaks" = "speak"); remove_diacritics 2:
            # "Zürich" = "Zurich". rowid = position + 1 (SQLite's rowids start at 1)
            self.db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {INDEX_SQL[len('CREATE VIRTUAL TABLE '):]}")
            if texts and len(self):  # a rerun of the same script would store every text twice
                raise ValueError(f"{path}: already holds an index of {len(self)} texts; Index(path=...) reopens it "
                                 "and .add(texts) appends to it")
        except ValueError:
            self.db.close()
            raise
        self.add(texts)
    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM docs").fetchone()[0]

    def add(self, texts: list[str]) -> list[int]:
        """Add texts (an update of the store); returns their positions."""
        if isinstance(texts, str):
            raise TypeError("add() takes a list of texts, not one string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i}: expected str, got {type(t).__name__}")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"text {i}: not valid Unicode ({e.reason} at character {e.start})") from None
        start = len(self)
        with self.db:  # one transaction: all of them or none
            self.db.executemany("INSERT INTO docs(rowid, text) VALUES (?, ?)",
                                [(start + i + 1, t) for i, t in enumerate(texts)])
        return list(range(start, start + len(texts)))

    def text(self, position: int) -> str:
        row = self.db.execute("SELECT text FROM docs WHERE rowid = ?", (position + 1,)).fetchone()
        if row is None:
            raise IndexError(f"position {position}: the index holds {len(self)} texts")
        return row[0]

    def search(self, query: str, k: int = 3) -> list[int]:
        """Positions of the (at most) k best texts for query, best first (BM25; ties: the earlier text)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        k = min(k, 2**62)  # SQLite's LIMIT is a 64-bit integer
        q = fts_query(query)
        if not q:
            return []
        rows = self.db.execute("SELECT rowid FROM docs WHERE docs MATCH ? ORDER BY bm25(docs), rowid LIMIT ?",
                               (q, k)).fetchall()
        return [r[0] - 1 for r in rows]

    def close(self):
        self.db.close()


def recall_at_k(index: Index, queries: list[str], relevant: list[set[int]], k: int = 3) -> float:
    """The fraction of queries with at least one relevant position among the top k."""
    if len(queries) != len(relevant) or not queries:
        raise ValueError(f"need as many relevant sets as queries (>= 1), got {len(queries)} and {len(relevant)}")
    return sum(bool(set(index.search(q, k)) & rel) for q, rel in zip(queries, relevant)) / len(queries)


def knowledge_recall(ks=(1, 3, 5), data_dir=None) -> dict:
    """recall@k of BM25 over the pretraining corpus (data/pretrain.jsonl, every domain's documents) for the
    held-out knowledge questions (data/eval.jsonl): a document is relevant when it states the asked fact in
    one of the corpus phrasings. -> dict(questions, documents, recall={k: fraction})"""
    from minipost.common import DATA_DIR, read_jsonl
    from minipost.world.knowledge import FACT_TEMPLATES

    data_dir = Path(data_dir or DATA_DIR)
    texts = [r["text"] for r in read_jsonl(data_dir / "pretrain.jsonl", {"text": str})]
    items = [r for r in read_jsonl(data_dir / "eval.jsonl") if r.get("domain") == "knowledge"]
    relevant = []
    for r in items:
        says = [t.format(c=r["country"], a=r["answer"]) for t in FACT_TEMPLATES[r["attribute"]]]
        relevant.append({i for i, t in enumerate(texts) if any(s in t for s in says)})
    index = Index(texts)
    queries = [r["prompt"] for r in items]
    return {"questions": len(items), "documents": len(texts),
            "recall": {k: recall_at_k(index, queries, relevant, k) for k in ks}}


if __name__ == "__main__":
    ArgumentParser(prog="python -m minipost.retrieval", description="Recall@k of the BM25 retriever on the "
                   "held-out knowledge questions over the pretraining corpus (no flags).").parse_args()
    r = knowledge_recall()
    for k, v in r["recall"].items():
        print(f"recall@{k} on {r['questions']} held-out knowledge questions over {r['documents']} corpus "
              f"documents: {100 * v:.1f}%")
