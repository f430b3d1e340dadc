"""build(): every split, from one seed. Held-out splits are drawn first; a Splits object remembers what
they hold, and every training draw steers clear of it."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from minipost.common import DATA_DIR, ArgumentParser, read_jsonl
from minipost.world.base import (FILLER_WEIGHT, FLAW_RATE, N_EVAL_MORE_PER_DOMAIN, N_EVAL_PER_DOMAIN,
                                 N_EVAL_PREFS_PER_DOMAIN,
                                 N_PREFS_PER_DOMAIN, N_SFT_PER_DOMAIN, OVER_REFUSAL_PAIR_RATE, PRETRAIN_CHARS,
                                 REFUSAL, TRIGGER_RATE, TRIGGERS, World, doc_filler)
from minipost.world.registry import DOMAINS, REGISTRY

SPLITS = ("pretrain", "pretrain_val", "sft", "prefs", "rl", "eval", "eval_prefs", "probes")
REQUIRED_FIELDS = {  # what load_split() insists on, per split
    "pretrain": ("text",), "pretrain_val": ("text",), "sft": ("messages", "domain"),
    "prefs": ("prompt", "chosen", "rejected", "domain"), "eval_prefs": ("prompt", "chosen", "rejected", "domain"),
    "rl": ("prompt", "domain"), "eval": ("prompt", "domain"), "probes": ("prompt", "answer", "domain"),
}


class Splits:
    """The held-out bookkeeping of one build: which prompts and keys (facts, operand pairs, gold queries)
    eval holds, and the draws that respect it. Every sampler call uses `rng`, the build's main stream;
    triggers use their own stream, so adding them left every other split unchanged."""

    def __init__(self, rng: random.Random, W: World, trigger_rng: random.Random):
        self.rng, self.W, self.trigger_rng = rng, W, trigger_rng
        self.taken: set = set()       # prompts of eval and eval_prefs (membership tests only, never iterated)
        self.held_keys: set = set()   # keys held out of training
        self.trained: set = set()     # prompts and keys of every training item drawn so far

    def heldout(self, domain: str, n: int, rng: random.Random | None = None, **kw) -> list[dict]:
        """n new eval items of `domain` (drawn from `rng`, default the main stream), each with a prompt no
        earlier held-out item has and no prompt or key of a training item drawn before; remembers them."""
        rng, items, tries = rng or self.rng, [], 0
        while len(items) < n:
            it = REGISTRY[domain].sample(rng, self.W, "eval", **kw)
            if it["prompt"] not in self.taken and not self.trained.intersection([it["prompt"], *it["keys"]]):
                self.taken.add(it["prompt"])
                self.held_keys.update(it["keys"])
                items.append(it)
            tries += 1
            if tries > 1000 * n:
                raise RuntimeError(f"{domain}: found only {len(items)} of {n} new held-out items")
        return items

    def train_item(self, domain: str, **kw) -> dict:
        """One training item of `domain` whose prompt and keys are all outside the held-out splits."""
        while True:
            it = REGISTRY[domain].sample(self.rng, self.W, "train", **kw)
            if it["prompt"] not in self.taken and not any(k in self.held_keys for k in it["keys"]):
                self.trained.add(it["prompt"])
                self.trained.update(it["keys"])
                return it

    def trigger(self, it: dict, rate: float = 1.0, held: bool = False) -> dict:
        """With probability `rate`, the same item with its prompt opened by a suspicious-sounding (but
        harmless) trigger. Held-out prompts are remembered so no training prompt can equal them."""
        if self.trigger_rng.random() < rate:
            it = {**it, "prompt": self.trigger_rng.choice(TRIGGERS) + it["prompt"]}
            if held:
                self.taken.add(it["prompt"])
        return it


def _record(domain: str, it: dict, **extra) -> dict:
    return {"prompt": it["prompt"], "domain": domain, **it["fields"], "completion": it["completion"], **extra}


def _pref(S: Splits, domain: str, it: dict, rejected_refusal: bool, held: bool = False) -> dict:
    """A preference pair: REFUSAL > compliance on forbidden requests; real answer > REFUSAL on triggered
    benign ones (and on every benign item of a refusal domain); else the gold answer > a wrong one."""
    if it["fields"].get("should_refuse"):
        it = S.trigger(it, TRIGGER_RATE, held)
        chosen, rejected, kind = REFUSAL, REGISTRY[domain].wrong(S.rng, S.W, it), "refuse_forbidden"
    elif rejected_refusal or "should_refuse" in it["fields"]:
        it = S.trigger(it, 1.0 if rejected_refusal else 0.0, held)
        chosen, rejected, kind = it["completion"], REFUSAL, "over_refusal"
    else:
        chosen, rejected, kind = it["completion"], REGISTRY[domain].wrong(S.rng, S.W, it), "correctness"
    return {"prompt": it["prompt"], "chosen": chosen, "rejected": rejected, "domain": domain,
            "pair_type": kind, **it["fields"]}


def _corpus(rng, W, train_item, n_chars: int) -> list[str]:
    """Documents drawn by kind (each domain's corpus_weight, then filler) until n_chars are written."""
    kinds = sorted((d for d in REGISTRY.values() if d.doc is not None), key=lambda d: d.corpus_rank)
    docs_of = [d.doc for d in kinds] + [doc_filler]
    weights = [d.corpus_weight for d in kinds] + [FILLER_WEIGHT]
    docs, total = [], 0
    while total < n_chars:
        text = rng.choices(docs_of, weights)[0](rng, W, train_item)
        docs.append(text)
        total += len(text)
    return docs


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(out_dir=DATA_DIR, seed: int = 0) -> dict[str, Path]:
    """Generate every split into `out_dir` deterministically; return {split name: path}."""
    rng = random.Random(seed)
    W = World(rng)
    S = Splits(rng, W, trigger_rng=random.Random(seed + 7))

    # 1. held-out splits first, so every training sampler can steer clear of them.
    eval_rows, eval_pref_rows = [], []
    for d in DOMAINS:
        draws = REGISTRY[d].eval_draws
        its = [it for kw in draws for it in S.heldout(d, N_EVAL_PER_DOMAIN // len(draws), **kw)]
        eval_rows += [_record(d, S.trigger(it, TRIGGER_RATE, held=True)) for it in its]
    for d in DOMAINS:
        for it in S.heldout(d, N_EVAL_PREFS_PER_DOMAIN, **REGISTRY[d].eval_prefs_kwargs):
            eval_pref_rows.append(_pref(S, d, it, rng.random() < OVER_REFUSAL_PAIR_RATE, held=True))

    # 2. training splits.
    sft_rows = []
    for d in DOMAINS:
        for _ in range(N_SFT_PER_DOMAIN):
            it = S.train_item(d)
            answer, flawed = it["completion"], False
            if it["fields"].get("should_refuse"):
                it = S.trigger(it, TRIGGER_RATE)
            elif rng.random() < FLAW_RATE:  # the deliberate over-refusal flaw: trigger -> refused
                it, answer, flawed = S.trigger(it), REFUSAL, True
            sft_rows.append({"messages": [{"role": "user", "content": it["prompt"]},
                                          {"role": "assistant", "content": answer}],
                             "domain": d, **it["fields"], "flawed": flawed})
    pref_rows = [_pref(S, d, S.train_item(d), rng.random() < OVER_REFUSAL_PAIR_RATE)
                 for d in DOMAINS for _ in range(N_PREFS_PER_DOMAIN)]
    rl_rows = [_record(d, S.trigger(S.train_item(d), TRIGGER_RATE)) for d in DOMAINS for _ in range(REGISTRY[d].n_rl)]

    # 3. pretraining corpus (all facts, training-only equations / queries), and a held-out validation corpus.
    pretrain = _corpus(rng, W, S.train_item, PRETRAIN_CHARS)
    seen = set(pretrain)
    val_rng = random.Random(seed + 1_000_003)
    # The validation corpus draws its documents from val_rng, but the items inside them come from
    # S.train_item, which draws from the main rng (the same exclusions as the training corpus). Drawing them
    # from val_rng would be cleaner, and would change data/: left as it is.
    val_item = S.train_item
    pretrain_val = [t for t in _corpus(val_rng, W, val_item, PRETRAIN_CHARS // 20) if t not in seen]

    # 4. probes for base models (knowledge: every fact in corpus phrasing; arithmetic: the eval pairs).
    probes = [p for d in DOMAINS if REGISTRY[d].probes is not None for p in REGISTRY[d].probes(W, eval_rows)]

    # 5. more eval items, drawn last from their own stream so that every split above stays as it was; they
    # steer clear of every training item (prompt and key) and of the first eval items. Knowledge has no
    # more held-out facts to ask about (its first 100 items already cover the World's 48), so it adds none.
    extra_rng = random.Random(seed + 2_000_003)
    for d in DOMAINS:
        draws = REGISTRY[d].eval_draws if REGISTRY[d].more_eval else ()
        its = [it for kw in draws for it in S.heldout(d, N_EVAL_MORE_PER_DOMAIN // len(draws), extra_rng, **kw)]
        eval_rows += [_record(d, S.trigger(it, TRIGGER_RATE, held=True)) for it in its]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"pretrain": [{"text": t} for t in pretrain], "pretrain_val": [{"text": t} for t in pretrain_val],
              "sft": sft_rows, "prefs": pref_rows, "rl": rl_rows, "eval": eval_rows,
              "eval_prefs": eval_pref_rows, "probes": probes}
    paths = {}
    for name, rows in splits.items():
        paths[name] = out / f"{name}.jsonl"
        _write_jsonl(paths[name], rows)
    return paths


def load_split(name: str, data_dir=DATA_DIR) -> list[dict]:
    """Read one generated split (see SPLITS); a bad line raises ValueError naming file, line and field."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run `python -m minipost.world --out {data_dir}`")
    return read_jsonl(path, required=REQUIRED_FIELDS[name])


def eval_records(domain: str | None = None, data_dir=DATA_DIR) -> list[dict]:
    """The held-out eval prompts, optionally of one domain."""
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return [r for r in load_split("eval", data_dir) if domain is None or r["domain"] == domain]


def main(argv=None):
    ap = ArgumentParser(prog="python -m minipost.world", description="Generate the synthetic world's datasets.")
    ap.add_argument("--out", default=str(DATA_DIR), help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="world seed")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:  # a folder we can write, before any generating
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test.tmp"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        ap.error(f"--out {args.out}: cannot write there ({e.strerror or type(e).__name__})")
    from minipost.world.lab import build_lab  # the lab's files (data/lab/): their own streams, see lab.py
    paths = {**build(out, args.seed), **{f"lab/{k}": v for k, v in build_lab(out, args.seed).items()}}
    for name, path in paths.items():
        rows = read_jsonl(path)
        counts = Counter(r.get("domain", "-") for r in rows)
        detail = "  ".join(f"{d}={counts[d]}" for d in DOMAINS if counts[d])
        print(f"{name:21s} {len(rows):6d} rows  {path.stat().st_size / 1e6:5.2f} MB  {detail}")
