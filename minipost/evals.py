"""The eval suite and the report card: what each stage gained, and what it cost elsewhere.

Every column is measured on held-out data that no training split contains (world.py's tests enforce it):
- **probes** (base-model style, no chat template): greedy completion of "The capital of Veloria is" or
  "37 + 48 =", scored on the text up to the first full stop or line break (world.check_probe). They show
  what pretraining stored.
- **chat columns**: greedy answers to each domain's eval prompts, in the chat template, scored by world.py's
  checkers; `format` is the share of answers that end with the stop token <|end|>.
- **refusals**: `refuse` is the refusal rate on forbidden topics (higher is better); `over_refusal` is the
  refusal rate on benign prompts of every domain (lower is better).
- **val_loss**: next-token loss on held-out pretraining text (what the model forgot about its corpus).
- **pref_acc**: held-out preference accuracy of the implicit DPO reward
  r(x, y) = log pi(y|x) - log pi_ref(y|x) against a reference checkpoint (`--ref`, the SFT model in the
  pipeline): the share of pairs with r(chosen) > r(rejected), strictly.

    python -m minipost.evals --ckpt runs/pipeline/base/model.pt --ckpt runs/pipeline/sft/model.pt --out report
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from minipost.common import DATA_DIR, pick_device, read_jsonl, save_json

HIGHER_IS_BETTER = {"val_loss": False, "over_refusal": False}
COLUMN_ORDER = ["probe_knowledge", "probe_arithmetic", "val_loss", "format", "knowledge", "arithmetic",
                "instructions", "tools", "sql", "refuse", "over_refusal", "pref_acc"]


@torch.no_grad()
def complete(model, enc, prompts: list[list[int]], max_new_tokens: int, stop_token: int | None,
             batch_size: int = 64, temperature: float = 0.0) -> tuple[list[str], list[bool]]:
    """Generate for many token prompts in left-padded batches -> (texts without the stop token, stopped?)."""
    from minipost.model import left_pad
    from minipost.tokenizer import special_id

    device = next(model.parameters()).device
    pad = special_id(enc, "<|pad|>")
    texts, stopped = [], []
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
    results = {}
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], pad, device)
        toks, m, _ = model.generate(ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                                    stop_token=stop_token, pad_id=pad)
        for i, row, rm in zip(idx, toks.tolist(), m.tolist()):
            out = [t for t, keep in zip(row, rm) if keep]
            hit = stop_token is not None and len(out) > 0 and out[-1] == stop_token
            results[i] = (enc.decode(out[:-1] if hit else out), hit)
    for i in range(len(prompts)):
        texts.append(results[i][0])
        stopped.append(results[i][1])
    return texts, stopped


@torch.no_grad()
def probe_scores(model, enc, records: list[dict]) -> dict:
    """Base-model probes: plain-text completion, no chat template."""
    from minipost.tokenizer import encode_text
    from minipost.world import check_probe

    texts, _ = complete(model, enc, [encode_text(enc, r["prompt"]) for r in records], max_new_tokens=8,
                        stop_token=None)
    out = {}
    for domain in ("knowledge", "arithmetic"):
        scores = [check_probe(r, t) for r, t in zip(records, texts) if r["domain"] == domain]
        if scores:
            out[f"probe_{domain}"] = sum(scores) / len(scores)
    return out


@torch.no_grad()
def chat_scores(model, enc, records: list[dict], max_new_tokens: int = 64) -> tuple[dict, list[dict]]:
    """Greedy chat answers to the eval prompts, scored per domain -> (scores, per-example rows)."""
    from minipost.tokenizer import render_prompt, special_id
    from minipost.world import check, is_refusal

    texts, stopped = complete(model, enc, [render_prompt(enc, r["prompt"]) for r in records], max_new_tokens,
                              stop_token=special_id(enc, "<|end|>"))
    rows = [{"domain": r["domain"], "prompt": r["prompt"], "completion": t, "stopped": s,
             "score": check(r, t)} for r, t, s in zip(records, texts, stopped)]
    out = {"format": sum(r["stopped"] for r in rows) / len(rows)}
    for domain in ("knowledge", "arithmetic", "instructions", "tools", "sql"):
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
def val_loss(model, enc, windows: int = 64, block_size: int = 256) -> float:
    from minipost.data import load_texts, pack, packed_eval_batches
    from minipost.logprobs import token_logprobs

    device = next(model.parameters()).device
    block_size = min(block_size, model.cfg.block_size)
    stream = pack(enc, load_texts(DATA_DIR / "pretrain_val.jsonl"))[:windows * block_size + 1]
    total, n = 0.0, 0
    for x, y in packed_eval_batches(stream, 16, block_size):
        lp = token_logprobs(model(x.to(device)), y.to(device))
        total, n = total - lp.sum().item(), n + lp.numel()
    return total / n


@torch.no_grad()
def sequence_logps(model, enc, prompts: list[str], responses: list[str], batch_size: int = 32) -> torch.Tensor:
    """Sum of log pi(response tokens | prompt) in the chat template, one number per pair. -> (N,) float32"""
    from minipost.data import collate, IGNORE
    from minipost.logprobs import token_logprobs
    from minipost.tokenizer import render_chat, special_id

    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), batch_size):
        ex = [render_chat(enc, [{"role": "user", "content": p}, {"role": "assistant", "content": r}])
              for p, r in zip(prompts[s:s + batch_size], responses[s:s + batch_size])]
        x, y = collate(ex, special_id(enc, "<|pad|>"))
        x, y = x.to(device), y.to(device)
        mask = y != IGNORE  # (B, T)
        lp = token_logprobs(model(x), y.clamp(min=0))  # (B, T)
        out.append((lp * mask).sum(1).float().cpu())
    return torch.cat(out)


def preference_accuracy(model, ref_model, enc, pairs: list[dict]) -> float:
    """Share of held-out pairs whose implicit reward log pi/pi_ref is strictly higher for chosen."""
    p = [r["prompt"] for r in pairs]
    chosen = sequence_logps(model, enc, p, [r["chosen"] for r in pairs])
    rejected = sequence_logps(model, enc, p, [r["rejected"] for r in pairs])
    chosen = chosen - sequence_logps(ref_model, enc, p, [r["chosen"] for r in pairs])
    rejected = rejected - sequence_logps(ref_model, enc, p, [r["rejected"] for r in pairs])
    return (chosen > rejected).float().mean().item()


def per_domain(records: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` records of every domain (all of them when limit is None): quick smoke evals."""
    if not limit:
        return records
    return [r for d in sorted({r["domain"] for r in records}) for r in [x for x in records if x["domain"] == d][:limit]]


def evaluate_checkpoint(path, device="cpu", ref_path=None, chat: bool = True, limit: int | None = None,
                        out_dir=None) -> dict:
    """Every column of the report card for one checkpoint."""
    from minipost.model import load_model

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
        ref, _, _ = load_model(ref_path, device)
        pairs = per_domain(read_jsonl(DATA_DIR / "eval_prefs.jsonl"), limit)
        scores["pref_acc"] = preference_accuracy(model, ref, enc, pairs)
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
    ap = argparse.ArgumentParser(description="Evaluate checkpoints and print the report card.")
    ap.add_argument("--ckpt", action="append", help="checkpoint path (repeat for several rows)")
    ap.add_argument("--from-json", default=None, help="re-render a saved report.json instead of evaluating")
    ap.add_argument("--name", action="append", help="row names, in --ckpt order (default: the folder names)")
    ap.add_argument("--ref", default=None, help="reference checkpoint for preference accuracy (e.g. the SFT model)")
    ap.add_argument("--out", default="runs/report", help="folder for report.md, report.json, report.png")
    ap.add_argument("--vs", default=None, help="row every other row's arrows compare with (default: the row above)")
    ap.add_argument("--no-chat", action="store_true", help="probes and held-out loss only (base models)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate at most this many items per domain")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        write_report(saved["rows"], args.out, saved.get("parents"))
        return saved["rows"]
    if not args.ckpt:
        ap.error("give --ckpt (one or more) or --from-json")
    device = pick_device(args.device)
    names = args.name or [Path(c).parent.name for c in args.ckpt]
    if args.vs and args.vs not in names:
        ap.error(f"--vs {args.vs!r} is not a row name; the rows are {names}")
    rows = {n: evaluate_checkpoint(c, device, args.ref, chat=not args.no_chat, limit=args.limit, out_dir=args.out)
            for n, c in zip(names, args.ckpt)}
    write_report(rows, args.out, {n: args.vs for n in rows if n != args.vs} if args.vs else None)
    return rows


if __name__ == "__main__":
    main()
