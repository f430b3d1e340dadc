"""Each checkpoint's per-item scores on every column of the card (the columns: minipost/card/__init__.py)."""
from __future__ import annotations

import json
from pathlib import Path

from minipost.common import DATA_DIR, read_jsonl
from minipost.data import per_domain, tokenize_pairs
from minipost.heldout import (chat_items, load_eval_pairs, load_probes, means, pair_logps, preference_wins, probe_items,
                              val_losses)
from minipost.checkpoints import check_same_tokenizer, load_model
from minipost.tokenizer import special_id
from minipost.world import check


def eval_answers(path, device="cpu", limit: int | None = None) -> list[str]:
    """A checkpoint's greedy answers to the chat eval prompts (the judge's baseline), in eval.jsonl order."""
    model, enc, _ = load_model(path, device)
    _, rows = chat_items(model, enc, per_domain(read_jsonl(DATA_DIR / "eval.jsonl"), limit))
    return [r["completion"] for r in rows]


def win_items(judge, prompts: list, answers: list[str], baseline: list[str]) -> list[float]:
    """The judge's verdict per prompt: 1.0 when it scores the answer above the baseline's answer, 0.0 below,
    0.5 for a tie (the same text). judge(prompts, answers) -> (N,) scores: a rewards.RewardModel here,
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
        records = per_domain(load_eval_pairs(DATA_DIR / "eval_prefs.jsonl"), limit)
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
