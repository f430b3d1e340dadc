"""Is my card normal? Compare a run's report card with the published bands of full pipeline runs.

Two runs of the same command differ: another seed, another CPU (its float rounding changes every step of
training after the first few) or another torch build gives another model, and its scores move by several
points (README, "expected results"). The bands say how far. They are made from >= 3 full pipeline runs that
differ only in --seed (pretraining included), and hold, per row and column of the card, the runs' mean m,
their sd s, their range, and the noise of the eval items themselves (se, from each cell's 95% interval:
(hi - lo) / (2 * 1.96), averaged over the runs).

A cell x of your run is *inside* when |x - m| <= 2 * sqrt(s^2 + se^2). Think of a new run as one more draw:
it moves like another seed (s), and at the least like a fresh sample of the eval items would (se; three seeds
can by luck agree closely, so se is the floor). If the spread between runs were normal, about 95% of cells of
a run of the same code would be inside; the card has about 60 cells, so 2 or 3 cells outside are expected,
and what matters is a pattern (a whole row, or one column in every row).

    python -m minipost.card.bands runs/pipeline/report/report.json          # compare with data/bands_nano.json
    python -m minipost.card.bands --make runs/pipeline/report/report.json runs/pipeline_seed2/report/report.json \\
        runs/pipeline_seed3/report/report.json --out data/bands_nano.json   # how the bands were made
    python -m minipost.card.bands --table                                    # the bands as a markdown table
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
from pathlib import Path

from minipost.common import DATA_DIR, ArgumentParser, InputError, check_can_create, exit_on_input_error, save_json
from minipost.card import COLUMN_ORDER, HIGHER_IS_BETTER, card, column_range, read_report

Z = 1.96  # the cells' intervals are 95% ones
WIDTH = 2.0  # a cell is inside when |x - mean| <= WIDTH * sqrt(sd^2 + se^2)


def cell_se(cell: dict) -> float:
    """The standard error of a card cell's value from its 95% interval."""
    return (cell["hi"] - cell["lo"]) / (2 * Z)


def make_bands(cards: list[dict]) -> dict:
    """Bands from the cards (card.card) of >= 3 runs: {row: {column: dict(mean, sd, min, max, se, n, runs)}}
    for every cell that all of them have, with the same number of items."""
    if len(cards) < 3:
        raise InputError(f"bands need at least 3 runs to give a spread, got {len(cards)}")
    out = {}
    for row in cards[0]:
        for col in cards[0][row]:
            cells = [c.get(row, {}).get(col) for c in cards]
            if any(x is None or x["n"] != cells[0]["n"] for x in cells):
                continue
            values = [x["value"] for x in cells]
            out.setdefault(row, {})[col] = {
                "mean": statistics.mean(values), "sd": statistics.stdev(values), "min": min(values),
                "max": max(values), "se": statistics.mean(cell_se(x) for x in cells), "n": cells[0]["n"],
                "runs": values}
    return out


def band_limits(band: dict, column: str) -> tuple[float, float]:
    """The interval [lo, hi] a cell of a new run is expected in (WIDTH * sqrt(sd^2 + se^2) around the mean),
    cut to what the column can hold (report.column_range: a share in [0, 1], val_loss in nats at least 0)."""
    half = WIDTH * math.hypot(band["sd"], band["se"])  # sqrt(sd^2 + se^2) without overflow
    low, high = column_range(column)
    return max(band["mean"] - half, low), min(band["mean"] + half, high)


def compare(run_card: dict, bands: dict) -> list[dict]:
    """Every cell of run_card that the bands hold -> [dict(row, column, value, lo, hi, status)]; status is
    "inside", "above" or "below", or "not comparable" when the cell has another number of items (--limit)."""
    out = []
    for row, cells in run_card.items():
        for col in [c for c in COLUMN_ORDER if c in cells and c in bands.get(row, {})]:
            band, cell = bands[row][col], cells[col]
            lo, hi = band_limits(band, col)
            x = cell["value"]
            status = ("not comparable" if cell["n"] != band["n"] else
                      "inside" if lo <= x <= hi else "above" if x > hi else "below")
            out.append({"row": row, "column": col, "value": x, "lo": lo, "hi": hi, "status": status})
    return out


def _pct(col: str, v: float) -> str:
    return f"{v:.3f}" if col == "val_loss" else f"{100 * v:.1f}"


def table(bands: dict) -> str:
    """The bands as a markdown table: per cell the runs' mean ± sd and their range (min-max)."""
    rows = bands["rows"]
    cols = [c for c in COLUMN_ORDER if any(c in cells for cells in rows.values())]
    lines = ["| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row, cells in rows.items():
        out = []
        for c in cols:
            b = cells.get(c)
            out.append("-" if b is None else f"{_pct(c, b['mean'])} ±{_pct(c, b['sd'])} "
                       f"({_pct(c, b['min'])}-{_pct(c, b['max'])})")
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor() or ''}".strip()


def report(rows: list[dict]) -> str:
    """The comparison as text: the cells outside their bands, then a one-line summary."""
    outside = [r for r in rows if r["status"] in ("above", "below")]
    skipped = [r for r in rows if r["status"] == "not comparable"]
    lines = []
    for r in outside:
        better = (r["status"] == "above") == HIGHER_IS_BETTER.get(r["column"], True)
        c = r["column"]
        lines.append(f"  {r['row']:8s} {c:16s} {_pct(c, r['value']):>7s}  {r['status']} the band "
                     f"{_pct(c, r['lo'])} .. {_pct(c, r['hi'])} ({'better' if better else 'worse'})")
    compared = len(rows) - len(skipped)
    expected = round(0.05 * compared, 1)
    lines.append(f"{len(outside)} of {compared} cells outside the bands (about {expected} expected by chance)"
                 + (f"; {len(skipped)} cells not comparable (another number of items: --limit?)" if skipped else ""))
    return "\n".join(lines)


def eval_digest(data_dir=DATA_DIR) -> str:
    """sha256 of the eval splits the cards were scored on (bands only compare cards of the same items)."""
    h = hashlib.sha256()
    for name in ("eval.jsonl", "eval_prefs.jsonl", "probes.jsonl", "pretrain_val.jsonl"):
        path = Path(data_dir) / name
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()


BAND_KEYS = ("mean", "sd", "min", "max", "se", "n")


def read_bands(path) -> dict:
    """A bands file as --make writes it, every cell checked; else an InputError naming the file and the cell."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = saved["rows"]
        if not isinstance(saved.get("made_from", []), list):
            raise TypeError("made_from must be the list of report.json files the bands came from")
        for row, cols in rows.items():
            for col, b in cols.items():
                if not all(isinstance(b.get(k), (int, float)) and not isinstance(b[k], bool) and math.isfinite(b[k])
                           for k in BAND_KEYS) or min(b["sd"], b["se"]) < 0 or b["n"] < 1 or b["min"] > b["max"]:
                    raise TypeError(f"row {row!r}, column {col!r}: {', '.join(BAND_KEYS)} must be finite numbers "
                                    "(sd, se >= 0, n >= 1, min <= max)")
    except RecursionError:
        raise InputError(f"{path}: not a bands file (JSON nested deeper than any bands file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else (e.strerror or type(e).__name__)
        raise InputError(f"{path}: not a bands file as `python -m minipost.card.bands --make` writes it "
                         f"({reason})") from None
    return saved


def _run_preset(report_path: Path) -> str | None:
    """The preset of the pipeline run a report.json came from (OUT/config.json), if it says."""
    try:
        return json.loads((report_path.parent.parent / "config.json").read_text(encoding="utf-8")).get("preset")
    except (OSError, ValueError, AttributeError):
        return None


def main(argv=None):
    return exit_on_input_error(lambda: _main(argv))


def _main(argv=None):
    ap = ArgumentParser(prog="python -m minipost.card.bands", description="Is my card normal? Compare a report.json "
                        "with the published bands (or make the bands from >= 3 runs with --make).")
    ap.add_argument("reports", nargs="*", help="report.json of a pipeline run (OUT/report/report.json)")
    ap.add_argument("--bands", default=str(DATA_DIR / "bands_nano.json"), help="the bands to compare with")
    ap.add_argument("--make", action="store_true", help="write bands from the given runs (>= 3) to --out")
    ap.add_argument("--out", default=None, help="with --make: where to write the bands")
    ap.add_argument("--table", action="store_true", help="print the bands (--bands) as a markdown table")
    args = ap.parse_args(argv)
    if args.table:
        if args.reports or args.make:
            ap.error("--table prints the bands file alone: give no report.json and no --make")
        text = table(read_bands(args.bands))
        print(text)
        return text
    if args.out and not args.make:
        ap.error("--out is where --make writes the bands: give --make too")
    if not args.reports:
        ap.error("give a report.json to compare (or --make with >= 3 of them, or --table)")
    saved = [read_report(p) for p in args.reports]  # every file checked before anything is written
    cards = [card(s["items"], s.get("parents")) for s in saved]
    if args.make:
        if not args.out:
            ap.error("--make needs --out (where to write the bands)")
        for i in range(len(saved)):
            for j in range(i):
                if saved[i]["items"] == saved[j]["items"]:
                    raise InputError(f"{args.reports[i]} and {args.reports[j]} hold the same scores item for item: "
                                     "one run twice gives no spread (use runs that differ in --seed)")
        out = Path(args.out)
        if out.resolve() in {Path(p).resolve() for p in args.reports}:
            raise InputError(f"--out {args.out} is one of the report.json files: it would be overwritten")
        if out.is_dir():
            raise InputError(f"--out {args.out} is a folder: give the bands file's path")
        check_can_create(out.parent, f"--out {args.out}")
        if out.exists():
            try:
                read_bands(out)
            except InputError:
                raise InputError(f"--out {args.out} exists and is not a bands file: not overwriting it") from None
        presets = {_run_preset(Path(p)) for p in args.reports}
        bands = {"made_from": [str(p) for p in args.reports], "preset": presets.pop() if len(presets) == 1 else None,
                 "machine": cpu_name(), "eval_sha256": eval_digest(),
                 "rule": f"inside when |x - mean| <= {WIDTH} * sqrt(sd^2 + se^2)", "rows": make_bands(cards)}
        try:
            save_json(args.out, bands)
        except OSError as e:
            raise InputError(f"--out {args.out}: cannot write there ({e.strerror or type(e).__name__})") from None
        print(f"wrote {args.out}: bands of {sum(len(c) for c in bands['rows'].values())} cells from {len(cards)} runs")
        return bands
    if len(args.reports) != 1:
        ap.error(f"compare one report.json at a time (got {len(args.reports)}), or make bands with --make")
    bands = read_bands(args.bands)
    preset = _run_preset(Path(args.reports[0]))
    if preset and bands.get("preset") and preset != bands["preset"]:
        raise InputError(f"{args.reports[0]} is a --preset {preset} run; {args.bands} holds {bands['preset']} runs")
    if bands.get("eval_sha256") and bands["eval_sha256"] != eval_digest():
        print(f"note: {DATA_DIR} holds other eval items than the runs behind {args.bands} were scored on "
              "(a regenerated world?); the comparison means little")
    rows = compare(cards[0], bands["rows"])
    if not rows:
        raise InputError(f"{args.reports[0]}: no row and column in common with {args.bands} "
                         f"(rows there: {list(bands['rows'])})")
    print(f"{args.reports[0]} against {args.bands} ({len(bands.get('made_from', []))} runs, {bands.get('machine')}):")
    print(report(rows))
    return rows


if __name__ == "__main__":
    main()
