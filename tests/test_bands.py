"""minipost.card.bands: bands from >= 3 cards, the inside/outside rule by hand, and the command's failure paths."""
import json
import math

import pytest

from minipost.card import bands
from minipost.card import card


def _items(k_base: int, k_sft: int, n: int = 100) -> dict:
    """Two rows of one 0/1 column: base gets its first k_base items right, sft its first k_sft."""
    return {"base": {"arithmetic": [1.0] * k_base + [0.0] * (n - k_base)},
            "sft": {"arithmetic": [1.0] * k_sft + [0.0] * (n - k_sft)}}


def _write(path, items):
    path.write_text(json.dumps({"items": items, "parents": {"sft": "base"}}), encoding="utf-8")
    return str(path)


def test_make_bands_by_hand():
    cards = [card(_items(k, 50)) for k in (40, 50, 60)]
    b = bands.make_bands(cards)["base"]["arithmetic"]
    assert b["mean"] == pytest.approx(0.5) and b["sd"] == pytest.approx(0.1)
    assert (b["min"], b["max"], b["n"], b["runs"]) == (0.4, 0.6, 100, [0.4, 0.5, 0.6])
    # se: each run's Wilson interval half-width / 1.96, averaged
    want = sum((c["base"]["arithmetic"]["hi"] - c["base"]["arithmetic"]["lo"]) / 3.92 for c in cards) / 3
    assert b["se"] == pytest.approx(want)
    lo, hi = bands.band_limits(b, "arithmetic")
    assert hi - 0.5 == pytest.approx(2 * math.sqrt(0.01 + want ** 2)) and 0.5 - lo == pytest.approx(hi - 0.5)
    # three runs that agree exactly still get the items' noise as their width
    flat = bands.make_bands([card(_items(50, 50)) for _ in range(3)])["sft"]["arithmetic"]
    assert flat["sd"] == 0 and bands.band_limits(flat, "arithmetic")[1] - 0.5 == pytest.approx(2 * flat["se"]) and flat["se"] > 0.04


def test_make_bands_needs_three_runs_and_equal_items():
    with pytest.raises(bands.InputError, match="at least 3"):
        bands.make_bands([card(_items(40, 50))] * 2)
    b = bands.make_bands([card(_items(40, 50)), card(_items(40, 50)), card(_items(20, 25, n=50))])
    assert b == {}  # a run with other items (--limit) gives no band


def test_compare_inside_above_below_and_not_comparable():
    b = bands.make_bands([card(_items(k, k)) for k in (48, 50, 52)])
    lo, hi = bands.band_limits(b["base"]["arithmetic"], "arithmetic")
    assert 0.3 < lo < 0.4 and 0.6 < hi < 0.7
    assert bands.band_limits({"mean": 0.0, "sd": 1e308, "se": 1e308}, "val_loss")[1] == math.inf  # no OverflowError
    wide = {"mean": 0.15, "sd": 0.2, "se": 0.05}  # mean - 2 sd is below 0: a rate's band stops at 0 (and at 1)
    assert bands.band_limits(wide, "arithmetic") == (0.0, pytest.approx(0.15 + bands.WIDTH * math.hypot(0.2, 0.05)))
    assert bands.band_limits({"mean": 0.9, "sd": 0.2, "se": 0.0}, "arithmetic")[1] == 1.0
    assert bands.band_limits({"mean": 0.9, "sd": 0.2, "se": 0.0}, "val_loss")[1] > 1.0  # nats: no upper end
    status = {r["row"]: r["status"] for r in bands.compare(card(_items(50, 90)), b)}
    assert status == {"base": "inside", "sft": "above"}
    status = {r["row"]: r["status"] for r in bands.compare(card(_items(10, 50)), b)}
    assert status == {"base": "below", "sft": "inside"}
    rows = bands.compare(card(_items(25, 25, n=50)), b)
    assert {r["status"] for r in rows} == {"not comparable"}
    text = bands.report(bands.compare(card(_items(10, 90)), b))
    assert "below the band" in text and "(worse)" in text and "(better)" in text
    assert text.splitlines()[-1].startswith("2 of 2 cells outside")


def test_cli_make_then_check(tmp_path, capsys):
    runs = [_write(tmp_path / f"r{k}.json", _items(k, 60)) for k in (40, 45, 50)]
    out = tmp_path / "bands.json"
    bands.main(runs + ["--make", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["made_from"] == runs and saved["rows"]["base"]["arithmetic"]["n"] == 100
    mine = _write(tmp_path / "mine.json", _items(90, 60))
    rows = bands.main([mine, "--bands", str(out)])
    assert {r["row"]: r["status"] for r in rows} == {"base": "above", "sft": "inside"}
    assert "1 of 2 cells outside" in capsys.readouterr().out
    text = bands.main(["--table", "--bands", str(out)])
    assert text.splitlines()[0] == "| stage | arithmetic |"
    assert text.splitlines()[2] == "| base | 45.0 ±5.0 (40.0-50.0) |"  # mean ±sd (min-max) over the 3 runs


@pytest.mark.parametrize("case", ["missing", "not_json", "no_rows", "nan", "negative_sd", "no_min_max", "made_from",
                                  "deep"])
def test_cli_bad_files_exit_2(tmp_path, capsys, case):
    mine = _write(tmp_path / "mine.json", _items(50, 60))
    path = tmp_path / "bands.json"
    if case == "not_json":
        path.write_text("{not json")
    elif case == "deep":  # nested deeper than json can read: a RecursionError, not a bands file
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif case == "no_rows":
        path.write_text(json.dumps({"made_from": []}))
    elif case == "nan":
        nan = {"mean": float("nan"), "sd": 0, "se": 0, "n": 1}
        path.write_text(json.dumps({"rows": {"base": {"arithmetic": nan}}}))
    elif case == "made_from":
        cell = {"mean": 0.5, "sd": 0.1, "min": 0.4, "max": 0.6, "se": 0.05, "n": 100}
        path.write_text(json.dumps({"made_from": 5, "rows": {"base": {"arithmetic": cell}}}))
    elif case in ("negative_sd", "no_min_max"):
        cell = {"mean": 0.5, "sd": -0.1, "min": 0.4, "max": 0.6, "se": 0.05, "n": 100}
        if case == "no_min_max":
            cell = {"mean": 0.5, "sd": 0.1, "se": 0.05, "n": 100}
        path.write_text(json.dumps({"made_from": [], "rows": {"base": {"arithmetic": cell}}}))
    with pytest.raises(SystemExit) as e:
        bands.main([mine, "--bands", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "bands.json" in err


def test_cli_refuses_bad_reports_and_flags(tmp_path, capsys):
    runs = [_write(tmp_path / f"r{k}.json", _items(k, 60)) for k in (40, 45, 50)]
    (tmp_path / "broken.json").write_text('{"items": {}}')
    for argv in ([str(tmp_path / "broken.json")], runs[:2] + ["--make", "--out", str(tmp_path / "b.json")],
                 runs + ["--make"], runs[:2], [], ["--table", runs[0]]):
        with pytest.raises(SystemExit) as e:
            bands.main(argv)
        assert e.value.code == 2, argv
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()  # nothing written when the input is refused


def test_make_refuses_one_run_twice_and_an_out_it_would_destroy(tmp_path, capsys):
    runs = [_write(tmp_path / f"r{k}.json", _items(k, 60)) for k in (40, 45, 50)]
    copy = tmp_path / "copy.json"
    copy.write_text(open(runs[0]).read())
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "folder").mkdir()
    cases = [(runs[:2] + [str(copy)], tmp_path / "b.json", "same scores item for item"),
             (runs, tmp_path / "r40.json", "one of the report.json files"),
             (runs, tmp_path / "notes.txt", "not a bands file: not overwriting"),
             (runs, tmp_path / "folder", "is a folder"),
             (runs, tmp_path / "notes.txt" / "b.json", "cannot write in"),
             (runs[:1], tmp_path / "b.json", "--out is where --make writes")]
    for reports, out, msg in cases:
        with pytest.raises(SystemExit) as e:
            bands.main(reports + (["--make"] if len(reports) > 1 else []) + ["--out", str(out)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, (out, err)
    assert not (tmp_path / "b.json").exists() and (tmp_path / "notes.txt").read_text() == "my notes"
    assert json.loads(open(runs[0]).read())["items"] == _items(40, 60)
    bands.main(runs + ["--make", "--out", str(tmp_path / "b.json")])
    bands.main(runs + ["--make", "--out", str(tmp_path / "b.json")])  # a bands file may be remade in place


def test_cli_refuses_another_preset(tmp_path):
    runs = [_write(tmp_path / f"r{k}.json", _items(k, 60)) for k in (40, 45, 50)]
    bands.main(runs + ["--make", "--out", str(tmp_path / "b.json")])
    run = tmp_path / "small_run"
    (run / "report").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": "small"}))
    saved = json.loads((tmp_path / "b.json").read_text())
    saved["preset"] = "nano"
    (tmp_path / "b.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit) as e:
        bands.main([_write(run / "report" / "report.json", _items(50, 60)), "--bands", str(tmp_path / "b.json")])
    assert e.value.code == 2


def test_published_bands_are_readable_and_match_the_data():
    saved = bands.read_bands(bands.DATA_DIR / "bands_nano.json")
    assert len(saved["made_from"]) >= 3 and saved["preset"] == "nano"
    assert saved["eval_sha256"] == bands.eval_digest()  # regenerate the bands when the eval items change
    assert {"base", "sft", "dpo", "rloo", "grpo", "ppo"} <= set(saved["rows"])
