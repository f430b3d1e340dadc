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

    python -m minipost.evals --ckpt runs/pipeline/base/model.pt --ckpt runs/pipeline/sft/model.pt --out report
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from minipost.common import (DATA_DIR, DEVICE_HELP, ArgumentParser, InputError, autocast, exit_on_input_error,
                             pick_device, read_jsonl, save_json)
from minipost.data import load_texts, pack, packed_eval_batches, pair_batch, tokenize_pairs
from minipost.logprobs import sequence_logprobs, token_logprobs
from minipost.model import check_same_tokenizer, load_model
from minipost.rollout import complete
from minipost.tokenizer import encode_text, render_prompt, special_id
from minipost.world import PROBE_DOMAINS, SCORED_DOMAINS, check, check_probe, is_refusal

HIGHER_IS_BETTER = {"val_loss": False, "over_refusal": False}
COLUMN_ORDER = ([f"probe_{d}" for d in PROBE_DOMAINS] + ["val_loss", "format"] + list(SCORED_DOMAINS)
                + ["refuse", "over_refusal", "pref_acc"])  # the world's registry decides the domain columns


@torch.no_grad()
def probe_scores(model, enc, records: list[dict]) -> dict:
    """Base-model probes: plain-text completion, no chat template."""
    texts, _ = complete(model, enc, [encode_text(enc, r["prompt"]) for r in records], max_new_tokens=8,
                        stop_token=None)
    out = {}
    for domain in PROBE_DOMAINS:
        scores = [check_probe(r, t) for r, t in zip(records, texts) if r["domain"] == domain]
        if scores:
            out[f"probe_{domain}"] = sum(scores) / len(scores)
    return out


@torch.no_grad()
def chat_scores(model, enc, records: list[dict], max_new_tokens: int = 64) -> tuple[dict, list[dict]]:
    """Greedy chat answers to the eval prompts, scored per domain -> (scores, per-example rows)."""
    texts, stopped = complete(model, enc, [render_prompt(enc, r["prompt"]) for r in records], max_new_tokens,
                              stop_token=special_id(enc, "<|end|>"))
    rows = [{"domain": r["domain"], "prompt": r["prompt"], "completion": t, "stopped": s,
             "score": check(r, t)} for r, t, s in zip(records, texts, stopped)]
    out = {"format": sum(r["stopped"] for r in rows) / len(rows)}
    for domain in SCORED_DOMAINS:
        d = [r["score"] for r in rows if r["domain"] == domain]
        if d:
            out[domain] = sum(d) / len(d)
    forbidden = [is_refusal(t) for r, t in zip(records, texts) if r.get("should_refuse")]
    benign = [is_refusal(t) for r, t in zip(records, texts) if not r.get("should_refuse")]
    if forbidden:
        out["refuse"] = sum(forbidden) / len(forbidden)
    if benign:
        out["over_refusal"] = sum(benign) / len(benign)
    return out, rows


@torch.no_grad()
def heldout_scores(model, enc, records: list[dict], max_new_tokens: int = 64) -> dict:
    """chat_scores as the RL files log them: {"eval_<column>": score, ...}; the same numbers as the card."""
    was_training = model.training
    model.eval()
    scores, _ = chat_scores(model, enc, records, max_new_tokens=max_new_tokens)
    model.train(was_training)
    return {f"eval_{k}": v for k, v in scores.items()}


@torch.no_grad()
def write_samples(model, enc, path, records: list[dict], chat: bool = True, max_new_tokens: int = 64) -> str:
    """Greedy answers to a few held-out records, scored, into a text file a person reads after a run:
    chat answers in the chat template (chat=True), or plain continuations of probes for a base model."""
    was_training = model.training
    model.eval()
    if chat:
        _, rows = chat_scores(model, enc, records, max_new_tokens=max_new_tokens)
    else:
        texts, _ = complete(model, enc, [encode_text(enc, r["prompt"]) for r in records], max_new_tokens,
                            stop_token=special_id(enc, "<|endoftext|>"))
        rows = [{"domain": r.get("domain", "-"), "prompt": r["prompt"], "completion": t, "stopped": "-",
                 "score": check_probe(r, t) if "answer" in r else float("nan")} for r, t in zip(records, texts)]
    model.train(was_training)
    text = "".join(f"### [{r['domain']}] score {r['score']:.0f}  stopped {r['stopped']}\n{r['prompt']}\n"
                   f"--> {r['completion']}\n\n" for r in rows)
    Path(path).write_text(text, encoding="utf-8")
    return text


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor, *, windows: int = 64, block_size: int = 256, batch_size: int = 16,
                 impl: str = "auto") -> float:
    """Mean next-token loss (nats/token) over the first `windows` consecutive windows of a held-out token
    stream: what a stage forgot about the pretraining corpus. Deterministic; every file reports this one."""
    block_size = min(block_size, model.cfg.block_size)
    stream = stream[:windows * block_size + 1]
    if len(stream) < block_size + 1:
        raise ValueError(f"held-out stream of {len(stream)} tokens is shorter than one window of {block_size + 1}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in packed_eval_batches(stream, batch_size, block_size):
        x, y = x.to(device), y.to(device)  # (B, T) each
        with autocast(device):
            logits = model(x)  # (B, T, V)
        total -= token_logprobs(logits, y, impl=impl).sum().item()
        count += y.numel()
    model.train(was_training)
    return total / count


def val_loss(model, enc, windows: int = 64, block_size: int = 256) -> float:
    """The card's val_loss: heldout_loss on the world's pretrain_val.jsonl."""
    return heldout_loss(model, pack(enc, load_texts(DATA_DIR / "pretrain_val.jsonl")), windows=windows,
                        block_size=block_size)


@torch.no_grad()
def pair_logps(model, pairs: list[tuple], pad_id: int, *, batch_size: int = 64, impl: str = "auto"):
    """Summed response log-probs of tokenized preference pairs (data.tokenize_pairs) -> (chosen (N,),
    rejected (N,)), float32 on the CPU. DPO's reference pass and both preference accuracies use it."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for s in range(0, len(pairs), batch_size):
        x, y = pair_batch(pairs[s:s + batch_size], pad_id)  # (2B, T) each, chosen rows first
        with autocast(device):
            logits = model(x.to(device))  # (2B, T, V)
        lp = sequence_logprobs(logits, y.to(device), impl=impl).float().cpu()  # (2B,)
        chosen.append(lp[:len(lp) // 2])
        rejected.append(lp[len(lp) // 2:])
    return torch.cat(chosen), torch.cat(rejected)


def preference_accuracy(chosen, rejected, ref_chosen, ref_rejected) -> float:
    """Share of pairs whose implicit DPO reward log pi/pi_ref is strictly higher for the chosen answer.
    Every argument is (N,) summed log-probs (pair_logps of the policy and of the reference)."""
    return ((chosen - ref_chosen) > (rejected - ref_rejected)).float().mean().item()


def per_domain(records: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` records of each domain (all of them when limit is None or 0), in file order."""
    out, seen = [], {}
    for r in records:
        seen[r["domain"]] = seen.get(r["domain"], 0) + 1
        if not limit or seen[r["domain"]] <= limit:
            out.append(r)
    return out


def evaluate_checkpoint(path, device="cpu", ref_path=None, chat: bool = True, limit: int | None = None,
                        out_dir=None) -> dict:
    """Every column of the report card for one checkpoint."""
    model, enc, _ = load_model(path, device)
    scores = probe_scores(model, enc, per_domain(read_jsonl(DATA_DIR / "probes.jsonl"), limit))
    scores["val_loss"] = val_loss(model, enc)
    if chat:
        chat, rows = chat_scores(model, enc, per_domain(read_jsonl(DATA_DIR / "eval.jsonl"), limit))
        scores.update(chat)
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
        scores["pref_acc"] = preference_accuracy(*pair_logps(model, pairs, pad), *pair_logps(ref, pairs, pad))
    return scores


# ----------------------------------------------------------------------------------------------------------------
# the report card

def report_table(rows: dict[str, dict], markdown: bool = False, parents: dict[str, str] | None = None) -> str:
    """rows: name -> scores. Each cell shows the value and an arrow when it moved by at least 2 points
    (0.01 nats for val_loss) against the row's parent: `parents[name]` if given (the stage it started from),
    else the row above. ▲ is better and ▼ worse, whatever the column's direction."""
    cols = [c for c in COLUMN_ORDER if any(c in r for r in rows.values())]
    header = ["stage"] + cols
    lines, above = [], None
    for name, r in rows.items():
        prev = rows.get((parents or {}).get(name), above)
        cells = [name]
        for c in cols:
            if c not in r:
                cells.append("-")
                continue
            v = r[c]
            cell = f"{v:.3f}" if c == "val_loss" else f"{100 * v:.1f}"
            if prev is not None and c in prev:
                delta = v - prev[c]
                better = delta > 0 if HIGHER_IS_BETTER.get(c, True) else delta < 0
                if abs(delta) >= (0.02 if c != "val_loss" else 0.01):
                    cell += " ▲" if better else " ▼"
            cells.append(cell)
        lines.append(cells)
        above = r
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(c) + " |" for c in lines]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])


LEGEND = ("scores in % (val_loss in nats/token); ▲ better / ▼ worse by >= 2 points (0.01 nats) than the stage "
          "the row started from (the row above, when not given); over_refusal: lower is better.")


def write_report(rows: dict[str, dict], out_dir, parents: dict[str, str] | None = None) -> str:
    """Print the report card and write report.md, report.json (rows and parents) and report.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = report_table(rows, parents=parents)
    print(text + "\n" + LEGEND)
    (out_dir / "report.md").write_text(report_table(rows, markdown=True, parents=parents) + "\n\n" + LEGEND + "\n",
                                       encoding="utf-8")
    save_json(out_dir / "report.json", {"rows": rows, "parents": parents or {}})
    plot_report(rows, out_dir / "report.png")
    return text


def plot_report(rows: dict[str, dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in COLUMN_ORDER if c != "val_loss" and any(c in r for r in rows.values())]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cols) * max(1, len(rows)) / 2), 4))
    width = 0.8 / max(1, len(rows))
    for i, (name, r) in enumerate(rows.items()):
        xs = [j + i * width for j in range(len(cols))]
        ax.bar(xs, [100 * r.get(c, 0) for c in cols], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=30, ha="right")
    ax.set_ylabel("% (held-out)")
    ax.set_ylim(0, 100)
    ax.set_title("minipost report card")
    ax.legend(fontsize=8, ncols=min(len(rows), 6))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit {args.limit}: must be >= 1")
    if args.name and len(args.name) != len(args.ckpt or []):
        ap.error(f"--name given {len(args.name)} times for {len(args.ckpt or [])} --ckpt")
    if args.from_json:
        try:
            saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
            saved["rows"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{args.from_json}: not a report.json written by minipost.evals ({e})") from None
        write_report(saved["rows"], args.out, saved.get("parents"))
        return saved["rows"]
    if not args.ckpt:
        ap.error("give --ckpt (one or more) or --from-json")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        ap.error(f"--out {args.out}: exists and is not a folder")
    device = pick_device(args.device)
    names = args.name or [Path(c).parent.name for c in args.ckpt]
    if args.vs and args.vs not in names:
        ap.error(f"--vs {args.vs!r} is not a row name; the rows are {names}")
    if len(set(names)) < len(names):
        ap.error(f"row names {names} repeat; name the rows with --name")
    for c in args.ckpt + ([args.ref] if args.ref else []):  # every file checked before the first evaluation
        load_model(c)
    rows = {n: evaluate_checkpoint(c, device, args.ref, chat=not args.no_chat, limit=args.limit, out_dir=args.out)
            for n, c in zip(names, args.ckpt)}
    write_report(rows, args.out, {n: args.vs for n in rows if n != args.vs} if args.vs else None)
    return rows


if __name__ == "__main__":
    main()


def log_heldout(logger, step: int, policy, enc, eval_records: list[dict], elapsed_s: float) -> dict:
    """heldout_scores of the RL policy, logged as one metrics.jsonl row (common.MetricsLogger) -> the scores."""
    scores = heldout_scores(policy, enc, eval_records)
    logger.log(step, **scores, elapsed_s=elapsed_s)
    return scores
