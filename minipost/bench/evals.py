"""Benchmark: what the report card's evaluation costs, at fewer and at all of the held-out items.

The card of `python -m minipost.pipeline` scores every stage's checkpoint on every held-out item (200 per
chat domain, knowledge 100) and the judge compares each answer with the SFT model's. More items resolve
smaller changes (README, "What the card can resolve") and cost time; this script times the pipeline's own
evaluation step (the same calls, the same order) of a finished pipeline run at each `--limits` value
(items per domain; 0: all), alternating the limits `--repeats` times in one process, and prints the median
of each and its ratio to the first limit.

    python -m minipost.bench.evals --out runs/pipeline                    # 100 items per domain against all
    python -m minipost.bench.evals --out runs/pipeline --limits 50,100,0 --repeats 3
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from minipost.common import DEVICE_HELP, ArgumentParser, InputError, exit_on_input_error, pick_device, positive_int
from minipost.checkpoints import load_model
from minipost.pipeline import JUDGE, STAGES, card_items
from minipost.rewards import RewardModel

ROWS = tuple(s for s in STAGES if s != JUDGE)  # the card's rows, in the pipeline's order


def limits_arg(text: str) -> list[int]:
    """--limits: comma-separated whole numbers >= 0 (0: every item)."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--limits {text!r}: expected whole numbers >= 0 separated by commas, like 100,0")
    return [int(p) for p in parts]


def main(argv=None) -> dict:
    ap = ArgumentParser(description="Time the report card's evaluation at several numbers of items per domain.")
    ap.add_argument("--out", default="runs/pipeline", help="a finished pipeline run (its stage folders)")
    ap.add_argument("--limits", default="100,0", help="items per domain to time, comma-separated (0: all)")
    ap.add_argument("--repeats", type=positive_int, default=2)
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = ap.parse_args(argv)
    limits = limits_arg(args.limits)
    ckpts = {s: [Path(args.out) / s / "model.pt"] for s in STAGES}  # what the pipeline's evaluation step gets
    missing = [str(p) for (p,) in ckpts.values() if not p.is_file()]
    if missing:
        raise InputError(f"--out {args.out}: not a finished pipeline run (no {missing[0]})")
    device = pick_device(args.device)
    for s in ROWS:  # every checkpoint read once before any timing: a bad one is found now, not minutes in
        load_model(ckpts[s][0])  # a policy (a reward model in its place is refused)
    RewardModel(ckpts[JUDGE][0])

    times = {n: [] for n in limits}
    with tempfile.TemporaryDirectory() as tmp:  # the answers files land here, not in the run's report
        for _ in range(args.repeats):
            for n in limits:  # alternating, so a change in the machine's load hits every limit alike
                t = time.perf_counter()
                card_items(ckpts, device, n or None, Path(tmp) / str(n))
                times[n].append(time.perf_counter() - t)
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"card evaluation of {args.out} ({len(ROWS)} checkpoints + judge) on {device}, median of {args.repeats}:")
    for n in limits:
        print(f"  {'all' if n == 0 else n:>4} items per domain: {med[n]:7.1f} s  ({med[n] / med[limits[0]]:.2f}x)  "
              f"runs: {', '.join(f'{x:.1f}' for x in times[n])}")
    return {"median_s": med, "times_s": times}


if __name__ == "__main__":
    exit_on_input_error(main)
