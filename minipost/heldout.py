"""The held-out measurements the objectives log while they train, and the report card builds on (minipost/card/):
the same functions, so a number in metrics.jsonl and the card's cell for the same checkpoint agree.

- `heldout_loss(model, stream)`: next-token loss over the first windows of a held-out token stream (`val_loss`).
- `heldout_scores(model, enc, records)`: greedy chat answers scored by the world's checkers, per column (the RL
  files' `eval_*` rows); `probe_scores` the same for the base model's completion probes.
- `pair_logps` and `preference_accuracy`: DPO's implicit reward on held-out pairs (`eval_pref_acc`).
- `write_samples`: a few greedy answers into OUT/samples.txt, for a person to read after a run.
- `per_domain(records, limit)`: the first `limit` records of every domain, the held-out subset each one uses.
"""
from __future__ import annotations


import torch

from minipost.common import DATA_DIR, InputError, atomic_write_bytes, autocast, read_jsonl
from minipost.data import IGNORE, load_prefs, load_texts, pack, packed_eval_batches, pair_batch
from minipost.rollout import complete
from minipost.tokenizer import encode_text, render_prompt, special_id
from minipost.world import DOMAINS, PROBE_DOMAINS, SCORED_DOMAINS, check, check_probe, is_refusal
from minipost.world.registry import BROUGHT


def means(items: dict[str, list]) -> dict[str, float]:
    """Per-item scores {column: [score of each item]} -> the card's numbers {column: mean}."""
    return {c: sum(v) / len(v) for c, v in items.items() if len(v)}


@torch.no_grad()
def probe_items(model, enc, records: list[dict]) -> dict[str, list[float]]:
    """Base-model probes: plain-text completion, no chat template -> {probe_<domain>: [0/1 per item]}."""
    texts, _ = complete(model, enc, [encode_text(enc, r["prompt"]) for r in records], max_new_tokens=8,
                        stop_token=None)
    out = {}
    for domain in PROBE_DOMAINS:
        scores = [float(check_probe(r, t)) for r, t in zip(records, texts) if r["domain"] == domain]
        if scores:
            out[f"probe_{domain}"] = scores
    return out


def probe_scores(model, enc, records: list[dict]) -> dict[str, float]:
    """probe_items as means per column: {probe_<domain>: share right}."""
    return means(probe_items(model, enc, records))


@torch.no_grad()
def chat_items(model, enc, records: list[dict], max_new_tokens: int = 64) -> tuple[dict, list[dict]]:
    """Greedy chat answers to the eval prompts, scored -> ({column: [0/1 per item]}, per-example rows)."""
    texts, stopped = complete(model, enc, [render_prompt(enc, r["prompt"]) for r in records], max_new_tokens,
                              stop_token=special_id(enc, "<|end|>"))
    rows = [{"domain": r["domain"], "prompt": r["prompt"], "completion": t, "stopped": s,
             "score": check(r, t)} for r, t, s in zip(records, texts, stopped)]
    out = {"format": [float(r["stopped"]) for r in rows]}
    for domain in SCORED_DOMAINS + tuple(BROUGHT):  # (a brought domain's column only where its records are)
        d = [float(r["score"]) for r in rows if r["domain"] == domain]
        if d:
            out[domain] = d
    out["refuse"] = [float(is_refusal(t)) for r, t in zip(records, texts) if r.get("should_refuse")]
    out["over_refusal"] = [float(is_refusal(t)) for r, t in zip(records, texts) if not r.get("should_refuse")]
    return {c: v for c, v in out.items() if v}, rows


def chat_scores(model, enc, records: list[dict], max_new_tokens: int = 64) -> tuple[dict, list[dict]]:
    """chat_items as means per column -> (scores, per-example rows)."""
    items, rows = chat_items(model, enc, records, max_new_tokens)
    return means(items), rows


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
    atomic_write_bytes(path, text.encode("utf-8"))
    return text


@torch.no_grad()
def heldout_losses(model, stream: torch.Tensor, *, windows: int = 64, block_size: int = 256, batch_size: int = 16,
                   impl: str = "auto") -> torch.Tensor:
    """Next-token loss (nats/token) of each of the first `windows` consecutive windows of a held-out token
    stream -> (windows,) float64. Their mean is heldout_loss; the card bootstraps its interval over them."""
    block_size = min(block_size, model.cfg.block_size)
    stream = stream[:windows * block_size + 1]
    if len(stream) < block_size + 1:
        raise ValueError(f"held-out stream of {len(stream)} tokens is shorter than one window of {block_size + 1}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = []
    for x, y in packed_eval_batches(stream, batch_size, block_size):
        x, y = x.to(device), y.to(device)  # (B, T) each
        with autocast(device):
            logp = model.logprobs(x, y, impl=impl)  # (B, T)
        losses.append(-logp.double().mean(dim=1).cpu())  # (B,)
    model.train(was_training)
    return torch.cat(losses)


def heldout_loss(model, stream: torch.Tensor, *, windows: int = 64, block_size: int = 256, batch_size: int = 16,
                 impl: str = "auto") -> float:
    """Mean next-token loss (nats/token) over the first `windows` consecutive windows of a held-out token
    stream: what a stage forgot about the pretraining corpus. Deterministic; every file reports this one."""
    return heldout_losses(model, stream, windows=windows, block_size=block_size, batch_size=batch_size,
                          impl=impl).mean().item()


def val_losses(model, enc, windows: int = 64, block_size: int = 256) -> torch.Tensor:
    """The card's val_loss, per window: heldout_losses on the world's pretrain_val.jsonl."""
    return heldout_losses(model, pack(enc, load_texts(DATA_DIR / "pretrain_val.jsonl")), windows=windows,
                          block_size=block_size)


def val_loss(model, enc, windows: int = 64, block_size: int = 256) -> float:
    """The card's val_loss: heldout_loss on the world's pretrain_val.jsonl."""
    return val_losses(model, enc, windows, block_size).mean().item()


@torch.no_grad()
def pair_logps(model, pairs: list[tuple], pad_id: int, *, batch_size: int = 64, impl: str = "auto"):
    """Summed response log-probs of tokenized preference pairs (data.tokenize_pairs) -> (chosen (N,),
    rejected (N,)), float32 on the CPU. DPO's reference pass and both preference accuracies use it."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for s in range(0, len(pairs), batch_size):
        x, y = pair_batch(pairs[s:s + batch_size], pad_id)  # (2B, T) each, chosen rows first
        x, y = x.to(device), y.to(device)
        answer = y != IGNORE  # (2B, T) the response tokens
        with autocast(device):
            logp = model.logprobs(x, y.masked_fill(~answer, 0), impl=impl)  # (2B, T)
        lp = (logp * answer).sum(dim=1).float().cpu()  # (2B,) log pi(response | prompt)
        chosen.append(lp[:len(lp) // 2])
        rejected.append(lp[len(lp) // 2:])
    return torch.cat(chosen), torch.cat(rejected)


def preference_wins(chosen, rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """Per pair: is the implicit DPO reward log pi/pi_ref strictly higher for the chosen answer? -> (N,) bool.
    Every argument is (N,) summed log-probs (pair_logps of the policy and of the reference)."""
    return (chosen - ref_chosen) > (rejected - ref_rejected)


def preference_accuracy(chosen, rejected, ref_chosen, ref_rejected) -> float:
    """Share of pairs whose implicit DPO reward is strictly higher for the chosen answer (preference_wins)."""
    return preference_wins(chosen, rejected, ref_chosen, ref_rejected).float().mean().item()


def load_probes(path) -> list[dict]:
    """Base-model probes {"prompt", "answer", "domain"}, each of a domain with a probe checker (PROBE_DOMAINS): a
    prompt to continue and the answer its first sentence is checked against (world.check_probe)."""
    lines = []
    rows = read_jsonl(path, required={"prompt": str, "answer": str, "domain": str}, lines=lines)
    for n, r in zip(lines, rows):
        if r["domain"] not in PROBE_DOMAINS:
            raise InputError(f"{path}:{n}: field 'domain' is {r['domain']!r}; a probe's is one of {list(PROBE_DOMAINS)}")
    return rows


def load_eval_pairs(path) -> list[dict]:
    """The held-out preference pairs the card scores (pref_acc): pairs as data.load_prefs reads them, each with
    the "domain" its cells are counted in."""
    lines = []
    rows = load_prefs(path, lines)
    for n, r in zip(lines, rows):
        if r.get("domain") not in DOMAINS + tuple(BROUGHT):  # the card counts pairs per domain
            raise InputError(f"{path}:{n}: field 'domain': {r.get('domain')!r} is not one of "
                             f"{list(DOMAINS + tuple(BROUGHT))}")
    return rows
