"""minipost.retrieval: BM25 order by hand, updates, an index on disk, queries that are not FTS5 syntax, recall."""
import pytest

from minipost.retrieval import Index, fts_query, knowledge_recall, recall_at_k

DOCS = ["The capital of Brerkia is Gubus.",
        "People in Zorvia speak Melic. The capital of Zorvia is Ostal.",
        "The weather in Gubus is cold in winter.",
        "Farmers grow wheat and apples."]


def test_search_ranks_by_bm25():
    index = Index(DOCS)
    assert len(index) == 4
    assert index.search("What is the capital of Brerkia?", k=1) == [0]
    assert index.search("What language do people speak in Zorvia?", k=1) == [1]
    # "capital" is in two documents, "Brerkia" in one: the rarer term weighs more
    assert index.search("capital Brerkia", k=2) == [0, 1]
    assert index.search("capital", k=3) == [0, 1]  # only the documents that hold a term are candidates
    # the shorter of two documents with the same term count ranks first (BM25's length normalisation)
    assert Index(["gubus is far away from here today", "gubus town"]).search("gubus") == [1, 0]
    assert index.search("submarine") == [] and index.text(2) == DOCS[2]


def test_add_is_an_update_and_positions_continue(tmp_path):
    index = Index(DOCS[:2])
    assert index.add(["Brerkia moved its capital to Ostal."]) == [2]
    assert index.search("Where did Brerkia move its capital?", k=1) == [2]
    path = tmp_path / "store.sqlite"
    disk = Index(DOCS, path=path)
    disk.close()
    again = Index(path=path)  # reopened: the same texts, positions continue
    assert len(again) == 4 and again.add(["Gubus hosts a fair."]) == [4] and again.search("fair") == [4]
    with pytest.raises(ValueError, match="folder"):
        Index(path=tmp_path)
    with pytest.raises(TypeError):
        index.add("one string")
    with pytest.raises(TypeError, match="text 1"):
        index.add(["fine", 3])
    with pytest.raises(ValueError, match="text 0: not valid Unicode"):
        index.add(["\ud800"])
    assert len(index) == 3  # a refused update adds nothing
    with pytest.raises(IndexError):
        index.text(99)
    for k in (0, True, 1.0):
        with pytest.raises(ValueError, match="k must be an int"):
            index.search("capital", k=k)
    assert index.search("Ostal", k=2**63) == index.search("Ostal", k=10) != []  # k beyond SQLite: every match


def test_a_file_is_never_written_into_unless_it_is_an_index_of_ours(tmp_path):
    """Another program's database, a non-database file and a rerun that would store every text twice are
    refused and left as they were."""
    import sqlite3

    store = tmp_path / "store.sqlite"
    Index(DOCS, path=store).close()
    with pytest.raises(ValueError, match="already holds an index of 4 texts"):
        Index(DOCS, path=store)  # the same script run again
    assert len(Index(path=store)) == 4
    app = tmp_path / "app.db"
    with sqlite3.connect(app) as db:
        db.execute("CREATE TABLE users(name)")
    db.close()
    with pytest.raises(ValueError, match=r"database of something else \(table users\)"):
        Index(DOCS, path=app)
    with sqlite3.connect(app) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["users"]
    db.close()
    views = tmp_path / "views.db"  # a database holding only a view (or only an index or trigger) is not empty
    with sqlite3.connect(views) as db:
        db.execute("CREATE VIEW answer AS SELECT 42")
    db.close()
    with pytest.raises(ValueError, match=r"database of something else \(view answer\)"):
        Index(DOCS, path=views)
    notes = tmp_path / "notes.sqlite"  # another program's full-text table that happens to be called docs
    with sqlite3.connect(notes) as db:
        db.execute("CREATE VIRTUAL TABLE docs USING fts5(text, author)")
        db.execute("INSERT INTO docs VALUES ('my note', 'me')")
    db.close()
    before = notes.read_bytes()
    for texts in (DOCS, []):
        with pytest.raises(ValueError, match="database of something else"):
            Index(texts, path=notes)
    assert notes.read_bytes() == before
    (tmp_path / "link.db").symlink_to(tmp_path / "gone" / "x.db")
    with pytest.raises(ValueError, match="a link to .*gone/x.db, which does not exist"):
        Index(DOCS, path=tmp_path / "link.db")
    with sqlite3.connect(views) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["answer"]
    db.close()
    junk = tmp_path / "notes.db"
    junk.write_text("my notes " * 100)
    with pytest.raises(ValueError, match="not an SQLite index file"):
        Index(DOCS, path=junk)
    assert junk.read_text() == "my notes " * 100
    with pytest.raises(ValueError, match="does not exist"):
        Index(DOCS, path=tmp_path / "no" / "x.db")


@pytest.mark.parametrize("query", ['"', '""', "'", "NEAR(", "NEAR(capital Brerkia, 2)", "*", "capit*", "-", "-capital",
                                   "AND", "capital AND", "OR NOT", "(", ")", "capital:", "text:Gubus", "^Gubus", "{",
                                   "", "   ", "?!.", "Zürich", "東京の天気", "'; DROP TABLE docs; --", "a\x00b",
                                   "capital " * 500])
def test_any_query_is_safe(query):
    index = Index(DOCS)
    got = index.search(query, k=3)
    assert isinstance(got, list) and all(0 <= i < 4 for i in got) and len(got) <= 3
    assert len(index) == 4  # nothing was dropped
    assert Index().search(query) == []  # an empty store returns nothing


def test_query_words_stop_words_and_unicode():
    assert fts_query("What is the capital of Brerkia?") == '"capital" OR "brerkia"'
    assert fts_query("What is it?") == '"what" OR "is" OR "it"'  # only stop words: keep them all
    assert fts_query('say "NEAR(" *') == '"say" OR "near"' and fts_query("?!") == ""
    index = Index(["Zurich is a city.", "東京 is a city too."])
    assert index.search("Zürich") == [0] and index.search("東京") == [1]
    with pytest.raises(ValueError, match="k must be"):
        index.search("city", k=0)


def test_recall_at_k_by_hand():
    index = Index(DOCS)
    queries = ["capital of Brerkia", "Melic", "submarine"]
    assert recall_at_k(index, queries, [{0}, {1}, {3}], k=1) == pytest.approx(2 / 3)
    assert recall_at_k(index, queries, [{2}, {1}, {3}], k=1) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        recall_at_k(index, queries, [{0}], k=1)


def test_knowledge_questions_find_their_fact():
    """Recall@3 >= 95% on the held-out knowledge questions over the whole corpus: RAG needs the fact found."""
    r = knowledge_recall(ks=(3,))
    assert r["questions"] == 100 and r["documents"] > 5000
    assert r["recall"][3] >= 0.95
