"""Per-item scores -> the card: its cells (intervals, paired tests against the parent row), the table, the
heatmap, and report.json written and read back (read_report bounds what it reads)."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from minipost.card.stats import ALPHA, paired_test, score_interval
from minipost.common import InputError, save_json
from minipost.world import PROBE_DOMAINS, SCORED_DOMAINS

HIGHER_IS_BETTER = {"val_loss": False, "over_refusal": False}
COLUMN_ORDER = ([f"probe_{d}" for d in PROBE_DOMAINS] + ["val_loss", "format"] + list(SCORED_DOMAINS)
                + ["refuse", "over_refusal", "pref_acc", "win_rate", "judge_agree"])  # the registry decides domains
UNPAIRED = {"judge_agree"}  # columns whose items differ between rows: an interval, never a paired test


def card(items: dict[str, dict | list[dict]], parents: dict[str, str] | None = None) -> dict[str, dict]:
    """The report card from per-item scores (evaluate_items): name -> {column: [score per item]} for one run,
    or a list of such dicts, one per seed. Rows are compared with their parent: `parents[name]` if given (the
    stage the row started from), else the row above.
    -> {name: {column: cell}}, each cell a dict: value (the mean), lo and hi (its 95% interval,
    score_interval), n (items); over seeds also seeds, sd and per_seed (each seed's mean; value is their
    mean and the interval is over items of the seed-averaged scores); against a parent with the same items
    also vs, diff, p (paired_test) and mark: ▲ better / ▼ worse when p < ALPHA, else ""."""
    runs = {name: r if isinstance(r, list) else [r] for name, r in items.items()}
    cols = [c for c in COLUMN_ORDER if any(c in r for rs in runs.values() for r in rs)]
    pooled = {name: {c: np.concatenate([r[c] for r in rs]) if c in UNPAIRED else np.mean([r[c] for r in rs], axis=0)
                     for c in cols if all(c in r for r in rs) and (c in UNPAIRED or len({len(r[c]) for r in rs}) == 1)}
              for name, rs in runs.items()}  # the seed-averaged items (the seeds' items one after another if UNPAIRED)
    out, above = {}, None
    for name, rs in runs.items():
        parent = (parents or {}).get(name, above)
        out[name] = {}
        for c, x in pooled[name].items():
            lo, hi = score_interval(x)
            cell = {"value": float(x.mean()), "lo": lo, "hi": hi, "n": len(x)}
            if len(rs) > 1:
                per_seed = [float(np.mean(r[c])) for r in rs]
                cell.update(value=statistics.mean(per_seed), seeds=len(rs), sd=statistics.stdev(per_seed),
                            per_seed=per_seed)
            other = pooled.get(parent, {}).get(c)
            if other is not None and len(other) == len(x) and c not in UNPAIRED:
                test = paired_test(x, other)
                better = test["diff"] > 0 if HIGHER_IS_BETTER.get(c, True) else test["diff"] < 0
                mark = ("▲" if better else "▼") if test["p"] < ALPHA else ""
                cell.update(vs=parent, diff=test["diff"], p=test["p"], mark=mark)
            out[name][c] = cell
        above = name
    return out


def cell_text(column: str, cell: dict) -> str:
    """'45.0 ±9.7 ▲': the value in % (nats for val_loss), ± half its interval (the sd over seeds on rows over
    seeds), and the significance mark."""
    scale, digits = (1, 3) if column == "val_loss" else (100, 1)
    half = cell["sd"] if "sd" in cell else (cell["hi"] - cell["lo"]) / 2
    text = f"{scale * cell['value']:.{digits}f} ±{scale * half:.{digits}f}"
    return text + (f" {cell['mark']}" if cell.get("mark") else "")


def row_label(name: str, cells: dict) -> str:
    seeds = max((c.get("seeds", 1) for c in cells.values()), default=1)
    return f"{name} ({seeds} seeds)" if seeds > 1 else name


def report_table(report: dict[str, dict], markdown: bool = False) -> str:
    """The card (card()) as a text table, or a markdown one."""
    cols = [c for c in COLUMN_ORDER if any(c in r for r in report.values())]
    header = ["stage"] + cols
    lines = [[row_label(name, r)] + [cell_text(c, r[c]) if c in r else "-" for c in cols]
             for name, r in report.items()]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(c) + " |" for c in lines]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])


LEGEND = ("scores in % (val_loss in nats/token), each ± half its 95% interval (Wilson; for val_loss a bootstrap "
          "over 64 windows; on rows over seeds, ± is the sd over seeds). ▲ better / ▼ worse than the stage the "
          f"row started from (the row above, when not given), p < {ALPHA} on the same items: exact McNemar test "
          "(a paired bootstrap for val_loss and rows over seeds); no mark: the change is within the noise of "
          "these items. over_refusal: lower is better. With this many cells, about 1 in 20 cells that did not "
          "really change gets a mark by chance.")


def write_report(items: dict[str, dict | list[dict]], out_dir, parents: dict[str, str] | None = None) -> dict:
    """Print the card (card(items, parents)) and write into out_dir: report.md, report.png and report.json
    (rows: the means; card: every cell; items: the per-item scores, so --from-json can redraw it) -> the card."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = card(items, parents)
    print(report_table(report) + "\n" + LEGEND)
    markdown = report_table(report, markdown=True) + "\n\n" + LEGEND + "\n"
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    rows = {name: {c: cell["value"] for c, cell in r.items()} for name, r in report.items()}
    save_json(out_dir / "report.json", {"rows": rows, "card": report, "parents": parents or {}, "items": items})
    plot_report(report, out_dir / "report.png")
    return report


def plot_report(report: dict[str, dict], path) -> None:
    """The card as a heatmap, stages x columns: each cell shows its score and its change against the stage it
    started from; the colour is that change (blue better, red worse), strong when significant, pale when not."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    cols = [c for c in COLUMN_ORDER if any(c in r for r in report.values())]
    names = list(report)
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 1.4, 0.62 * len(names) + 1.5))
    cmap = plt.get_cmap("RdBu")
    for i, name in enumerate(names):
        for j, c in enumerate(cols):
            cell = report[name].get(c)
            colour, text, weight = (0.93, 0.93, 0.93), "-", "normal"
            if cell is not None:
                scale, digits = (1, 3) if c == "val_loss" else (100, 1)
                text = f"{scale * cell['value']:.{digits}f}"
                if "diff" in cell:
                    sign = 1 if HIGHER_IS_BETTER.get(c, True) else -1
                    strength = max(-1.0, min(1.0, sign * cell["diff"] / (0.05 if c == "val_loss" else 0.3)))
                    colour = to_rgb(cmap(0.5 + 0.45 * strength))
                    if not cell["mark"]:  # within the noise: blend towards white
                        colour = tuple(0.75 + 0.25 * v for v in colour)
                    text += f"\n{scale * cell['diff']:+.{digits}f}{' ' + cell['mark'] if cell['mark'] else ''}"
                    weight = "bold" if cell["mark"] else "normal"
                else:
                    colour = (1.0, 1.0, 1.0)
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=colour, edgecolor="white", lw=2))
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8.5, fontweight=weight)
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(names), 0)
    ax.set_xticks([j + 0.5 for j in range(len(cols))], cols, rotation=30, ha="right", fontsize=9)
    ax.set_yticks([i + 0.5 for i in range(len(names))], [row_label(n, report[n]) for n in names], fontsize=9)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("report card: score (%; val_loss in nats) and change against the stage it started from\n"
                 f"blue better, red worse; bold and strong: significant (paired test, p < {ALPHA}), "
                 "pale: within the noise", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MAX_REPORT_BYTES = 64 << 20  # a card's report.json is under 1 MB; a bigger file is not one (and is not read)
MAX_ITEMS = 10_000  # per column: the world's largest eval split holds a few hundred items (bootstraps cost n)
# in all: a full card row holds ~3,000 items, so the pipeline's card with --seeds 1,2,3,4,5 about 54,000
MAX_TOTAL_ITEMS = 200_000


def column_range(column: str) -> tuple[float, float]:
    """What a card column's scores can be: val_loss is in nats (at least 0), every other column a share."""
    return (0.0, math.inf) if column == "val_loss" else (0.0, 1.0)


def read_report(path) -> dict:
    """A report.json that write_report wrote, checked: its per-item scores are what the card is drawn from.
    What it reads is bounded (MAX_REPORT_BYTES, MAX_ITEMS per column and MAX_TOTAL_ITEMS in all, JSON nested no
    deeper than Python allows), so drawing its card takes seconds at most."""
    def check(ok: bool, why: str) -> None:
        if not ok:
            raise TypeError(why)

    try:
        size = Path(path).stat().st_size
        check(size <= MAX_REPORT_BYTES, f"{size:,} bytes, more than any card's ({MAX_REPORT_BYTES:,} at most)")
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
        items, parents = saved["items"], saved.get("parents") or {}
        check(isinstance(items, dict) and bool(items), "'items' holds no rows")
        check(isinstance(parents, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in
                                                parents.items()), "'parents' is not a {row: parent row} object")
        check(all(p in items for p in parents.values()), "'parents' names a row the report does not hold")
        total = 0
        for name, runs in items.items():
            runs = runs if isinstance(runs, list) else [runs]
            check(bool(runs) and all(isinstance(r, dict) and r for r in runs), f"row {name!r} holds no columns")
            for column, scores in runs[0].items():
                check(all(isinstance(r.get(column), list) and r[column] for r in runs),
                      f"row {name!r}, column {column!r}: not a list of scores in every seed")
                check(all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for r in runs for v in r[column]), f"row {name!r}, column {column!r}: a score that is "
                      "not a finite number")
                low, high = column_range(column)
                check(all(low <= v <= high for r in runs for v in r[column]),
                      f"row {name!r}, column {column!r}: a score outside [{low}, {high}]")
                check(column in UNPAIRED or len({len(r[column]) for r in runs}) == 1,
                      f"row {name!r}, column {column!r}: seeds with different numbers of items")
                check(all(len(r[column]) <= MAX_ITEMS for r in runs),
                      f"row {name!r}, column {column!r}: more than {MAX_ITEMS:,} items")
                total += sum(len(r[column]) for r in runs)
                check(total <= MAX_TOTAL_ITEMS, f"more than {MAX_TOTAL_ITEMS:,} items in all (a card holds tens of "
                      "thousands)")
    except RecursionError:
        raise InputError(f"{path}: not a report.json (JSON nested deeper than any report)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else (e.strerror or type(e).__name__)
        raise InputError(f"{path}: not a report.json with per-item scores, as python -m minipost.card writes it "
                         f"({reason})") from None
    return saved

