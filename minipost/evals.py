"""The eval suite and the report card: what each stage gained, and what it cost elsewhere.

Every column is measured on held-out data that no training split contains (tests/test_world.py enforces it);
the world's registry (minipost/world/registry.py) decides which domains are columns:
- **probes** (PROBE_DOMAINS; base-model style, no chat template): greedy completion of "The capital of
  Veloria is" or "37 + 48 =", scored on the text up to the first full stop or line break (world.check_probe).
  They show what pretraining stored.
- **chat columns** (SCORED_DOMAINS): greedy answers to each domain's eval prompts, in the chat template,
  scored by the world's checkers; `format` is the share of answers that end with the stop token <|end|>.
- **refusals**: `refuse` is the refusal rate on forbidden topics (higher is better); `over_refusal` is the
  refusal rate on benign prompts of every domain (lower is better).
- **val_loss**: next-token loss on held-out pretraining text (what the model forgot about its corpus).
- **pref_acc**: held-out preference accuracy of the implicit DPO reward
  r(x, y) = log pi(y|x) - log pi_ref(y|x) against a reference checkpoint (`--ref`, the SFT model in the
  pipeline): the share of pairs with r(chosen) > r(rejected), strictly.
- **win_rate**: the judge's column, the share of chat eval prompts on which a reward model (`--judge`, the
  pipeline's reward_model stage) scores this checkpoint's answer above a baseline checkpoint's answer (the SFT
  model's in the pipeline; a tie, the same answer, counts one half). The exact checkers say what is right; the
  judge says what a learned preference likes, which is what LLM judges and arenas measure (tutorial 10).
- **judge_agree**: where the checkers pass one of the two answers (this checkpoint's, the baseline's) and
  fail the other, the share of those prompts on which the judge prefers the one that passes; its `n` in
  report.json is how many such prompts there were. No mark: each row holds different prompts.

A score on 100 items is one draw: the card shows every cell with its 95% interval (binomial_ci, Wilson; a
bootstrap for val_loss) and marks a change against the row's parent only when a paired test on the same
items finds it (mcnemar_p for 0/1 scores, paired_difference otherwise; p < 0.05). Rows can hold several
seeds (`python -m minipost.pipeline --seeds 1337,2,3`): their cells are the mean ± sd over seeds.

    python -m minipost.evals --ckpt runs/pipeline/base/model.pt --ckpt runs/pipeline/sft/model.pt --out report
    python -m minipost.evals --ckpt runs/pipeline/dpo/model.pt --ref runs/pipeline/sft/model.pt \
        --judge runs/pipeline/reward_model/model.pt --baseline runs/pipeline/sft/model.pt   # + win_rate
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from minipost.common import (DATA_DIR, DEVICE_HELP, ArgumentParser, InputError, check_can_create,
                             exit_on_input_error, pick_device, read_jsonl, save_json)
from minipost.data import load_probes, per_domain, tokenize_pairs
from minipost.heldout import chat_items, means, pair_logps, preference_wins, probe_items, val_losses
from minipost.model import check_same_tokenizer, load_model
from minipost.rewards import RewardModel
from minipost.tokenizer import special_id
from minipost.world import PROBE_DOMAINS, SCORED_DOMAINS, check

HIGHER_IS_BETTER = {"val_loss": False, "over_refusal": False}
COLUMN_ORDER = ([f"probe_{d}" for d in PROBE_DOMAINS] + ["val_loss", "format"] + list(SCORED_DOMAINS)
                + ["refuse", "over_refusal", "pref_acc", "win_rate", "judge_agree"])  # the registry decides domains
UNPAIRED = {"judge_agree"}  # columns whose items differ between rows: an interval, never a paired test


def eval_answers(path, device="cpu", limit: int | None = None) -> list[str]:
    """A checkpoint's greedy answers to the chat eval prompts (the judge's baseline), in eval.jsonl order."""
    model, enc, _ = load_model(path, device)
    _, rows = chat_items(model, enc, per_domain(read_jsonl(DATA_DIR / "eval.jsonl"), limit))
    return [r["completion"] for r in rows]


def win_items(judge, prompts: list, answers: list[str], baseline: list[str]) -> list[float]:
    """The judge's verdict per prompt: 1.0 when it scores the answer above the baseline's answer, 0.0 below,
    0.5 for a tie (the same text). judge(prompts, answers) -> (N,) scores: a reward_model.RewardModel here,
    the stand-in for an LLM judge or a human arena (their pairwise win rate against a fixed baseline)."""
    if len(answers) != len(baseline):
        raise ValueError(f"{len(answers)} answers but {len(baseline)} baseline answers: not the same prompts")
    mine, theirs = judge(prompts, answers).tolist(), judge(prompts, baseline).tolist()
    return [0.5 if a == b else 1.0 if x > y else 0.0 if x < y else 0.5
            for a, b, x, y in zip(answers, baseline, mine, theirs)]


def judge_agreement(records: list[dict], answers: list[str], baseline: list[str], wins: list[float]) -> list[float]:
    """Does the judge side with the exact checkers? On each prompt where the checker passes one answer and
    fails the other: 1.0 if the judge's verdict (win_items) picks the one that passes, else 0.0 (a tie counts
    as 0). Prompts the checker cannot separate are left out, so rows differ in which prompts they hold."""
    out = []
    for r, a, b, w in zip(records, answers, baseline, wins):
        mine, theirs = check(r, a), check(r, b)
        if mine != theirs:
            out.append(float((w == 1.0) if mine > theirs else (w == 0.0)))
    return out


def evaluate_items(path, device="cpu", ref_path=None, chat: bool = True, limit: int | None = None,
                   out_dir=None, judge=None, baseline: list[str] | None = None) -> dict[str, list[float]]:
    """Every column of the report card for one checkpoint, per item: {column: [score of each held-out item]}
    (0/1 for every share; nats per window for val_loss), in the same item order for every checkpoint, so two
    checkpoints can be compared item by item (paired_difference). With a judge and a baseline checkpoint's
    answers (eval_answers), also win_rate: win_items against them on every chat eval prompt."""
    model, enc, _ = load_model(path, device)
    items = probe_items(model, enc, per_domain(load_probes(DATA_DIR / "probes.jsonl"), limit))
    items["val_loss"] = val_losses(model, enc).tolist()
    if chat:
        records = per_domain(read_jsonl(DATA_DIR / "eval.jsonl"), limit)
        chat, rows = chat_items(model, enc, records)
        items.update(chat)
        if judge is not None and baseline is not None:
            answers = [r["completion"] for r in rows]
            items["win_rate"] = win_items(judge, [r["prompt"] for r in records], answers, baseline)
            agree = judge_agreement(records, answers, baseline, items["win_rate"])
            if agree:  # none when the checkers pass or fail both answers on every prompt
                items["judge_agree"] = agree
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / f"answers_{Path(path).parent.name}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if ref_path is not None and Path(ref_path).resolve() != Path(path).resolve():
        ref, ref_enc, _ = load_model(ref_path, device)
        check_same_tokenizer(enc, ref_enc, path, ref_path)
        records = per_domain(read_jsonl(DATA_DIR / "eval_prefs.jsonl"), limit)
        pairs = tokenize_pairs(enc, records, model.cfg.block_size, str(DATA_DIR / "eval_prefs.jsonl"))
        pad = special_id(enc, "<|pad|>")
        wins = preference_wins(*pair_logps(model, pairs, pad), *pair_logps(ref, pairs, pad))  # (N,) bool
        items["pref_acc"] = wins.double().tolist()
    return items


def evaluate_checkpoint(path, device="cpu", ref_path=None, chat: bool = True, limit: int | None = None,
                        out_dir=None, judge=None, baseline: list[str] | None = None) -> dict[str, float]:
    """Every column of the report card for one checkpoint: {column: score} (the means of evaluate_items)."""
    return means(evaluate_items(path, device, ref_path, chat, limit, out_dir, judge, baseline))


# ----------------------------------------------------------------------------------------------------------------
# uncertainty: a score on n items is one draw of n; how far could it move, and is a change real?

ALPHA = 0.05  # the card marks a change only when its paired test gives p < ALPHA


def binomial_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a share of k successes out of n: the values of p that a z-test
    at k/n would not reject. Unlike k/n ± z sqrt(p (1-p) / n), it stays inside [0, 1] and is not a single
    point at k = 0 or k = n (0 of 10 right still allows a true rate up to 28%)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"binomial_ci needs n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _bootstrap_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of n_boot resamples of x (n items drawn with replacement) -> (n_boot,)."""
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    return x[idx].mean(axis=1)


def bootstrap_ci(values, n_boot: int = 4000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (Efron & Tibshirani 1993, ch. 13)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 1:
        raise ValueError("bootstrap_ci needs at least one value")
    lo, hi = np.quantile(_bootstrap_means(x, n_boot, seed), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def score_interval(values) -> tuple[float, float]:
    """The card's 95% interval of a column's mean: Wilson when every item scores 0 or 1, else the bootstrap."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) and np.isin(x, (0.0, 1.0)).all():
        return binomial_ci(int(x.sum()), len(x))
    return bootstrap_ci(x)


def paired_difference(a, b, n_boot: int = 4000, seed: int = 0) -> dict:
    """Is mean(a) - mean(b) real? a[i] and b[i] score the same item i (two checkpoints on one eval split), so
    resample items, not scores: the bootstrap of the per-item differences d = a - b.
    -> dict(diff=mean(d), lo, hi (its 95% percentile interval), p (two-sided)). p comes from the bootstrap
    shifted to the null of no difference (Efron & Tibshirani 1993, sec. 16.4): the share of resampled means
    at least as far from mean(d) as mean(d) is from 0, counting the observed one (so p >= 1/(n_boot+1)).
    Items both get right, or both get wrong, add nothing: only the items that changed carry evidence."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 1:
        raise ValueError(f"paired_difference needs two score lists of one equal length, got {a.shape} and {b.shape}")
    d = a - b
    diff = float(d.mean())
    boot = _bootstrap_means(d, n_boot, seed)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    p = 1.0 if diff == 0 else float((1 + np.sum(np.abs(boot - diff) >= abs(diff))) / (n_boot + 1))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "p": p}


def mcnemar_p(a, b) -> float:
    """Exact McNemar test (McNemar 1947) for two 0/1 score lists on the same items: of the items whose score
    changed, u went up and v went down; under no difference each change is a fair coin, so
    p = P(a Binomial(u + v, 1/2) is as lopsided as min(u, v)), two-sided. 1.0 when nothing changed."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        raise ValueError("mcnemar_p needs two 0/1 score lists of one equal length")
    up, down = int(np.sum(a > b)), int(np.sum(a < b))
    n = up + down
    tail = sum(math.comb(n, i) for i in range(min(up, down) + 1))  # an exact integer; 2**n is too
    return min(1.0, 2 * tail / 2**n)


def paired_test(a, b) -> dict:
    """The card's test of a change on the same items -> dict(diff, lo, hi, p): paired_difference, with p from
    the exact McNemar test when every score is 0 or 1 (the bootstrap's p is too small when few items changed)."""
    test = paired_difference(a, b)
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        test["p"] = mcnemar_p(a, b)
    return test


# ----------------------------------------------------------------------------------------------------------------
# the report card

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


def main(argv=None):
    return exit_on_input_error(lambda: _main(argv))


def _main(argv=None):
    ap = ArgumentParser(description="Evaluate checkpoints and print the report card.")
    ap.add_argument("--ckpt", action="append", help="checkpoint path (repeat for several rows)")
    ap.add_argument("--from-json", default=None, help="re-render a saved report.json instead of evaluating")
    ap.add_argument("--name", action="append", help="row names, in --ckpt order (default: the folder names)")
    ap.add_argument("--ref", default=None, help="reference checkpoint for preference accuracy (e.g. the SFT model)")
    ap.add_argument("--out", default="runs/report", help="folder for report.md, report.json, report.png")
    ap.add_argument("--vs", default=None, help="row every other row's arrows compare with (default: the row above)")
    ap.add_argument("--no-chat", action="store_true", help="probes and held-out loss only (base models)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate at most this many items per domain")
    ap.add_argument("--judge", default=None, help="a reward model (minipost.reward_model) for the win_rate column")
    ap.add_argument("--baseline", default=None,
                    help="the checkpoint whose answers win_rate compares with (goes with --judge)")
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = ap.parse_args(argv)
    if bool(args.judge) != bool(args.baseline):
        ap.error("--judge and --baseline go together: the judge compares each row's answers with the baseline's")
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit {args.limit}: must be >= 1")
    if args.name and len(args.name) != len(args.ckpt or []):
        ap.error(f"--name given {len(args.name)} times for {len(args.ckpt or [])} --ckpt")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        ap.error(f"--out {args.out}: exists and is not a folder")
    check_can_create(args.out, f"--out {args.out}")
    if args.judge and args.no_chat:
        ap.error("--judge needs the chat answers that --no-chat skips")
    if args.from_json:
        saved = read_report(args.from_json)
        return write_report(saved["items"], args.out, saved.get("parents"))
    if not args.ckpt:
        ap.error("give --ckpt (one or more) or --from-json")
    device = pick_device(args.device)
    names = args.name or [Path(c).parent.name for c in args.ckpt]
    if args.vs and args.vs not in names:
        ap.error(f"--vs {args.vs!r} is not a row name; the rows are {names}")
    if len(set(names)) < len(names):
        ap.error(f"row names {names} repeat; name the rows with --name")
    for c in args.ckpt + [p for p in (args.ref, args.baseline) if p]:  # every file checked before the first evaluation
        load_model(c)
    judge = RewardModel(args.judge, device) if args.judge else None
    baseline = eval_answers(args.baseline, device, args.limit) if judge else None
    items = {n: evaluate_items(c, device, args.ref, chat=not args.no_chat, limit=args.limit, out_dir=args.out,
                               judge=judge, baseline=baseline) for n, c in zip(names, args.ckpt)}
    return write_report(items, args.out, {n: args.vs for n in items if n != args.vs} if args.vs else None)


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
        raise InputError(f"{path}: not a report.json with per-item scores, as minipost.evals writes it "
                         f"({reason})") from None
    return saved


if __name__ == "__main__":
    main()
