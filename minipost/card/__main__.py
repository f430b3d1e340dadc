"""python -m minipost.card: evaluate checkpoints and print the report card, or redraw a saved report.json."""
from __future__ import annotations

from pathlib import Path

from minipost.card.evaluate import eval_answers, evaluate_items
from minipost.card.report import read_report, write_report
from minipost.common import ArgumentParser, DEVICE_HELP, check_can_create, exit_on_input_error, pick_device
from minipost.checkpoints import HF, load_model, split_hf
from minipost.rewards import RewardModel


def main(argv=None):
    return exit_on_input_error(lambda: _main(argv))


def _main(argv=None):
    ap = ArgumentParser(prog="python -m minipost.card", description="Evaluate checkpoints and print the report card.")
    ap.add_argument("--ckpt", action="append", help="checkpoint path (repeat for several rows)")
    ap.add_argument("--from-json", default=None, help="re-render a saved report.json instead of evaluating")
    ap.add_argument("--name", action="append", help="row names, in --ckpt order (default: the folder names: of a model.pt, of an hf:PATH)")
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
    names = args.name or [split_hf(c)[0].name if c.startswith(HF) else Path(c).parent.name for c in args.ckpt]
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


if __name__ == "__main__":
    main()
