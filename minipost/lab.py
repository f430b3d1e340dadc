"""Do you really need post-training? Prompting, RAG, continual pretraining and post-training, side by side.

Practitioners judge by rules of thumb: a system prompt for a few instructions, retrieval (RAG) for a
knowledge base that changes, continual pretraining for knowledge the model never saw, post-training for a
behaviour that must hold tightly. This file measures each rule on our world and model: the accuracy each
method reaches, what it costs in seconds, and what it breaks elsewhere (the report card's old domains).

    policies  "Do not discuss: a, b, ...": the pipeline's chat models *prompted* with the list, against the
              same SFT model post-trained on the skill (SFT on lab/policy_sft, then DPO on lab/policy_prefs),
              on topics no training row mentions, at 1-30 topics, with and without trigger openers.
    updates   two news updates (lab/update_*): the stale chat model, SFT on the changed facts, continued
              pretraining on the news documents (with as much original corpus replayed), and RAG over the
              updated knowledge base (retrieval.Index; the reader is the chat model fine-tuned once, 1200
              steps, on lab/context_sft and 34,000 more rows like them, to answer from passages: on nano,
              copying a name from the context appears only after some 500 steps on unique rows).
    region    24 countries the base corpus never mentions: SFT alone (the pipeline's recipe plus the region's
              chat questions), continued pretraining on the region's corpus first (with and without replaying
              the original corpus), and RAG; held-out facts are in no chat split.
    skills    SQL and instruction following: what post-training did, read from the pipeline's report card.

Every run starts from the pipeline's checkpoints (OUT_PIPELINE/pretrain, sft, dpo), is reused when finished
and resumed when interrupted, like the pipeline's stages: only for the data and checkpoint it started from,
else it is refused before any run trains or any file is written. It writes OUT/<part>/<run>/. The result: OUT/lab.json (every
number), OUT/lab.md (the table), OUT/lab.png.

    python -m minipost.pipeline                 # first: the checkpoints it starts from
    python -m minipost.lab                      # the comparison (nano, 2-core CPU; README "Do you need ...")
    python -m minipost.lab --parts updates      # one part
"""
from __future__ import annotations

import hashlib
import importlib
import json
import random
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from minipost import threads
from minipost.card.bands import cpu_name
from minipost.common import (DATA_DIR, DEVICE_HELP, InputError, atomic_write_bytes, check_can_create, check_config,
                             check_device, check_out_dir, config_with_preset, field, jsonl_bytes, pick_device,
                             read_json_dict, read_jsonl, save_json)
from minipost.card import binomial_ci, evaluate_checkpoint, read_report
from minipost.harness import check_not_a_run, file_digest, hold_folder, main, release_folder
from minipost.checkpoints import load_model
from minipost.pipeline import plan, run_planned, train_seconds
from minipost.retrieval import Index
from minipost.rollout import complete
from minipost.tokenizer import render_prompt, special_id
from minipost.world import lab as world_lab
from minipost.world.context import rag_prompt
from minipost.world.policies import LIST_LENGTHS

PARTS = ("policies", "updates", "region", "skills")
OLD_COLUMNS = ("knowledge", "arithmetic", "instructions", "tools", "sql", "refuse", "over_refusal", "val_loss")


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts or len(set(parts)) != len(parts):
        raise InputError(f"--parts {text!r}: a comma-separated list of distinct parts among {list(PARTS)}")
    return parts


@dataclass
class Config:
    """Measure prompting, RAG, continual pretraining and post-training side by side (see the module docstring)."""
    out: str = field("runs/lab", "output folder: lab.json, lab.md, lab.png and one folder per part")
    pipeline: str = field("runs/pipeline", "the pipeline's output folder: pretrain/, sft/, dpo/ (and report/ for "
                          "the skills part) are the checkpoints every run starts from")
    parts: str = field(",".join(PARTS), "comma-separated parts to run", check=parse_parts)
    rag_k: int = field(3, "passages retrieved per question for RAG (also measured: the top passage alone)",
                       min=1, max=3)
    seed: int = field(1337, "random seed of every run", min=0, max=2**32 - 1)
    fresh: bool = field(False, "rerun every run from scratch (default: reuse finished runs, resume the rest)")
    max_steps: int = field(0, "if > 0, cap every run at this many steps (a smoke run, not real results)", min=0)
    eval_limit: int = field(0, "if > 0, evaluate at most this many items per cell and card domain (smoke runs)",
                            min=0)
    device: str = field("auto", DEVICE_HELP, check=check_device)
    progress: bool = field(False, "show tqdm progress bars")
    threads: str = field("auto", threads.HELP, check=threads.parse_threads)

    def __post_init__(self):
        check_config(self)


# Each run: (module, starts from, data, the flags that differ from the module's nano defaults). "{x}" names a
# checkpoint of the pipeline (pretrain, sft, dpo) or of an earlier run; the data files are made by mixes().
RUNS = {
    "policies": {
        "sft": ("minipost.sft", "sft", "policy_sft_mix", dict(max_steps=200)),
        "sft_dpo": ("minipost.dpo", "policies/sft", "policy_prefs_mix", dict(max_steps=100)),
    },
    "updates": {
        "reader": ("minipost.sft", "dpo", "context_mix", dict(max_steps=1200, lr=1e-3)),  # copying needs ~500 steps
        "sft_1": ("minipost.sft", "dpo", "update_sft_1", dict(max_steps=40, warmup_steps=5)),
        "sft_2": ("minipost.sft", "updates/sft_1", "update_sft_2", dict(max_steps=40, warmup_steps=5)),
        "cpt_1": ("minipost.pretrain", "dpo", "update_docs_1", dict(max_steps=40, lr=3e-4, warmup_steps=5)),
        "cpt_2": ("minipost.pretrain", "updates/cpt_1", "update_docs_2", dict(max_steps=40, lr=3e-4, warmup_steps=5)),
    },
    "region": {
        "sft_only": ("minipost.sft", "pretrain", "region_sft_mix", {}),
        "cpt": ("minipost.pretrain", "pretrain", "region_docs", dict(max_steps=200, lr=1e-3, warmup_steps=20)),
        "cpt_replay": ("minipost.pretrain", "pretrain", "region_docs_replay",
                       dict(max_steps=200, lr=1e-3, warmup_steps=20)),
        "cpt_sft": ("minipost.sft", "region/cpt", "region_sft_mix", {}),
        "cpt_replay_sft": ("minipost.sft", "region/cpt_replay", "region_sft_mix", {}),
    },
}
SAME_RESULTS = ("pipeline", "seed", "rag_k", "max_steps", "eval_limit")  # lab.json merges parts only of these
ANSWER_TOKENS = 32    # greedy answers are cut here; a prompt must leave this much of the context free
REPLAY_CHATS = 1500   # clean rows of the world's sft.jsonl mixed into the policy and reader SFT data


def mixes(seed: int, reading: int = world_lab.N_READING) -> dict[str, tuple[bytes, str]]:
    """The training file of every run -> {name: (its bytes, what it is made from)}; run_lab writes them into
    OUT/data/<name>.jsonl once every run's plan is checked (deterministic for a seed). The reader's holds
    `reading` rows of world_lab.reading_practice() besides context_sft (one epoch of 1200 steps in all)."""
    rng = random.Random(seed)
    lab = {name: world_lab.load(name) for name in ("policy_sft", "policy_prefs", "update_sft", "update_docs",
                                                   "region_pretrain", "region_sft", "context_sft")}
    sft = read_jsonl(DATA_DIR / "sft.jsonl")
    clean = [r for r in sft if not r.get("flawed")]  # replaying the deliberately flawed rows would undo DPO's fix
    prefs = read_jsonl(DATA_DIR / "prefs.jsonl")
    corpus = read_jsonl(DATA_DIR / "pretrain.jsonl")

    def replay(docs: list[dict]) -> list[dict]:
        """As much original corpus text as `docs` holds, drawn at random: replay 1:1."""
        out, chars, want = [], 0, sum(len(r["text"]) for r in docs)
        for r in rng.sample(corpus, len(corpus)):
            if chars >= want:
                break
            out.append(r)
            chars += len(r["text"])
        return out
    files = {  # name: (rows, the files of data/ they come from)
        "policy_sft_mix": (lab["policy_sft"] + rng.sample(clean, REPLAY_CHATS), ("lab/policy_sft.jsonl", "sft.jsonl")),
        "policy_prefs_mix": (lab["policy_prefs"] + rng.sample(prefs, 500), ("lab/policy_prefs.jsonl", "prefs.jsonl")),
        "context_mix": (lab["context_sft"] + world_lab.reading_practice(reading) + rng.sample(clean, REPLAY_CHATS),
                        ("lab/context_sft.jsonl", "lab/ (the reading practice avoids its names)", "sft.jsonl")),
        "region_sft_mix": (sft + lab["region_sft"], ("sft.jsonl", "lab/region_sft.jsonl")),  # the pipeline's + region's
        "region_docs": (lab["region_pretrain"], ("lab/region_pretrain.jsonl",)),
        "region_docs_replay": (lab["region_pretrain"] + replay(lab["region_pretrain"]),
                               ("lab/region_pretrain.jsonl", "pretrain.jsonl")),
    }
    for k in (1, 2):
        rows = [r for r in lab["update_sft"] if r["update"] == k]  # plus as many old chats as new facts
        files[f"update_sft_{k}"] = (rows + rng.sample(clean, len(rows)), ("lab/update_sft.jsonl", "sft.jsonl"))
        news = [{"text": r["text"]} for r in lab["update_docs"] if r["update"] == k]
        # without replay, 40 steps on 5k tokens wreck the model
        files[f"update_docs_{k}"] = (news + replay(news), ("lab/update_docs.jsonl", "pretrain.jsonl"))
    data = {}
    for name, (rows, sources) in files.items():
        rows = list(rows)
        random.Random(f"{seed}-{name}").shuffle(rows)
        data[name] = jsonl_bytes(rows), ", ".join(str(DATA_DIR / f) for f in sources)
    return data


def run_config(cfg: Config, part: str, name: str, ckpts: dict):
    """-> (module, the config of one run of RUNS): `python -m <module> --init PARENT --data OUT/data/<data>.jsonl
    --out OUT/<part>/<name>` with the run's flags (capped by --max-steps and --eval-limit)."""
    module_name, parent, data, flags = RUNS[part][name]
    module = importlib.import_module(module_name)
    kw = dict(preset="nano", out=str(Path(cfg.out) / part / name), init=str(ckpts[parent]),
              data=str(Path(cfg.out) / "data" / f"{data}.jsonl"), seed=cfg.seed, device=cfg.device,
              progress=cfg.progress, threads=cfg.threads, **flags)
    if module_name == "minipost.dpo":
        kw["eval_pairs"] = 0  # its default held-out pairs are the world's, not this policy's
    full = config_with_preset(module.Config, module.PRESETS, **kw)
    if cfg.max_steps:
        kw["max_steps"] = min(cfg.max_steps, full.max_steps)
        kw["warmup_steps"] = min(full.warmup_steps, kw["max_steps"])
    if cfg.eval_limit:  # smoke runs: the runs' own held-out evaluations and DPO's reference pass shrink too
        if hasattr(full, "eval_windows"):
            kw["eval_windows"] = min(4 * cfg.eval_limit, full.eval_windows)
        if hasattr(full, "max_pairs"):
            kw["max_pairs"] = 16 * cfg.eval_limit
    return module, config_with_preset(module.Config, module.PRESETS, **kw)


def runs_of(parts: list[str]) -> list[tuple[str, str]]:
    """(part, run) of every run the parts train, in order (a run's parent comes before it)."""
    todo = [(part, name) for part in parts for name in RUNS.get(part, ())]
    if "region" in parts and "updates" not in parts:
        todo.insert(0, ("updates", "reader"))  # the region's RAG reads with the updates' reader
    return todo


def run(part: str, name: str, ckpts: dict, plans: dict) -> tuple[Path, float]:
    """Train one run of RUNS as preflight planned it (run, resume or reuse) -> (its model.pt, training s)."""
    module, stage_cfg, what = plans[f"{part}/{name}"]
    path = run_planned(f"{part}/{name}", module, stage_cfg, what)
    ckpts[f"{part}/{name}"] = path
    return path, train_seconds(Path(stage_cfg.out))


# ----------------------------------------------------------------------------------------------------------------
# evaluation

def fit_rag_prompt(enc, passages: list[str], question: str, max_tokens: int) -> str:
    """The RAG user turn with as many of the passages (best first) as fit in max_tokens of chat prompt; the
    question alone not fitting is an InputError (it would be cut mid-question otherwise)."""
    for n in range(len(passages), -1, -1):
        prompt = rag_prompt(passages[:n], question) if n else question
        if len(render_prompt(enc, prompt)) <= max_tokens:
            return prompt
    raise InputError(f"question of {len(render_prompt(enc, question))} tokens does not fit the model's context "
                     f"({max_tokens} tokens left for the prompt): {question[:60]!r}")


def answer(model, enc, prompts: list) -> list[str]:
    """Greedy chat answers (prompts: user strings or message lists), as every evaluation here decodes."""
    texts, _ = complete(model, enc, [render_prompt(enc, p) for p in prompts], max_new_tokens=ANSWER_TOKENS,
                        stop_token=special_id(enc, "<|end|>"))
    return texts


def scored(path, records: list[dict], prompts: list | None = None, device="cpu") -> list[float]:
    """0/1 per record: the checkpoint's greedy answer to each record's prompt (or to `prompts`), checked."""
    model, enc, _ = load_model(path, device)
    texts = answer(model, enc, [r["prompt"] for r in records] if prompts is None else prompts)
    return [world_lab.check(r, t) for r, t in zip(records, texts)]


def rate(scores: list[float]) -> dict:
    """{"acc": share, "lo", "hi": its 95% Wilson interval, "n"} (in percent)."""
    k, n = int(sum(scores)), len(scores)
    lo, hi = binomial_ci(k, n) if n else (0.0, 0.0)
    return {"acc": 100 * k / n if n else float("nan"), "lo": 100 * lo, "hi": 100 * hi, "n": n}


def rag_prompts(enc, index: Index, texts: list[str], records: list[dict], k: int, block: int) -> tuple[list, list]:
    """-> (RAG prompts, whether the right article was retrieved) for knowledge questions about a country."""
    prompts, hits = [], []
    for r in records:
        top = index.search(r["prompt"], k)
        prompts.append(fit_rag_prompt(enc, [texts[i] for i in top], r["prompt"], block - ANSWER_TOKENS))
        hits.append(float(any(texts[i].startswith(r["country"] + ":") for i in top)))
    return prompts, hits


def rag_ks(cfg: Config) -> list[int]:
    """RAG is measured with the top passage alone and with --rag-k passages."""
    return sorted({1, cfg.rag_k})


def card(path, cfg: Config) -> dict:
    """The old domains' report-card columns for one checkpoint (what a method broke elsewhere)."""
    scores = evaluate_checkpoint(path, pick_device(cfg.device), limit=cfg.eval_limit or None)
    return {c: (scores[c] if c == "val_loss" else 100 * scores[c]) for c in OLD_COLUMNS if c in scores}


def limit(records: list[dict], cfg: Config, key=lambda r: 0) -> list[dict]:
    """At most --eval-limit records per key (all without it)."""
    if not cfg.eval_limit:
        return records
    seen: dict = {}
    return [r for r in records if seen.setdefault(key(r), []).append(r) or len(seen[key(r)]) <= cfg.eval_limit]


# ----------------------------------------------------------------------------------------------------------------
# the parts

def part_policies(cfg: Config, ckpts: dict, plans: dict) -> dict:
    device = pick_device(cfg.device)
    records = limit(world_lab.load("policy_eval"), cfg, key=lambda r: (r["n_listed"], r["trigger"], r["should_refuse"]))
    seconds = {}
    _, seconds["sft"] = run("policies", "sft", ckpts, plans)
    _, seconds["sft_dpo"] = run("policies", "sft_dpo", ckpts, plans)
    models = {"prompted SFT": ckpts["sft"], "prompted SFT+DPO": ckpts["dpo"],
              "policy SFT": ckpts["policies/sft"], "policy SFT+DPO": ckpts["policies/sft_dpo"]}
    curves = {}
    for label, path in models.items():
        s = scored(path, records, device=device)
        cells = {}
        for n in LIST_LENGTHS:
            for trig in (False, True):
                for listed in (True, False):
                    v = [x for x, r in zip(s, records) if (r["n_listed"], r["trigger"], r["should_refuse"]) ==
                         (n, trig, listed)]
                    if v:
                        cells[f"{n}|{'trigger' if trig else 'plain'}|{'listed' if listed else 'unlisted'}"] = rate(v)
        curves[label] = cells
    cards = {label: card(ckpts[key], cfg) for label, key in
             (("SFT (pipeline)", "sft"), ("policy SFT", "policies/sft"), ("policy SFT+DPO", "policies/sft_dpo"))}
    return {"curves": curves, "cards": cards, "train_seconds": seconds}


def part_updates(cfg: Config, ckpts: dict, plans: dict) -> dict:
    device = pick_device(cfg.device)
    records = world_lab.load("update_eval")
    kb = world_lab.load("kb")
    seconds = {}
    _, seconds["reader"] = run("updates", "reader", ckpts, plans)
    model, enc, _ = load_model(ckpts["updates/reader"], device)
    reading = limit(world_lab.load("context_eval"), cfg, key=lambda r: r["contradicts"])
    s = [world_lab.check(r, t) for r, t in zip(reading, answer(model, enc, [r["prompt"] for r in reading]))]
    out = {"after": {}, "train_seconds": seconds, "index_seconds": {}, "recall": {},
           "reader": {"contradicting": rate([x for x, r in zip(s, reading) if r["contradicts"]]),
                      "agreeing": rate([x for x, r in zip(s, reading) if not r["contradicts"]])}}
    stale = {k: scored(ckpts["dpo"], limit([r for r in records if r["update"] == k], cfg,
                                           key=lambda r: r["changed"]), device=device) for k in (0, 1, 2)}
    # known: facts the stale model answered right before any update (Gekhman et al.: does an update break them?)
    before = {(r["country"], r["attribute"], r["prompt"]): s for r, s in
              zip(limit([r for r in records if r["update"] == 0], cfg, key=lambda r: r["changed"]), stale[0])}
    for k in (1, 2):
        recs = limit([r for r in records if r["update"] == k], cfg, key=lambda r: r["changed"])
        _, seconds[f"sft_{k}"] = run("updates", f"sft_{k}", ckpts, plans)
        _, seconds[f"cpt_{k}"] = run("updates", f"cpt_{k}", ckpts, plans)
        t0 = time.time()
        texts = [r["text"] for r in kb if r["store"] == k]
        index = Index(texts)
        out["index_seconds"][k] = time.time() - t0
        methods = {"stale chat model": stale[k], "SFT on the changed facts": scored(ckpts[f"updates/sft_{k}"], recs,
                   device=device), "continued pretraining on the news": scored(ckpts[f"updates/cpt_{k}"], recs,
                   device=device)}
        for n in rag_ks(cfg):  # the top passage alone, and --rag-k of them (the reader is easily distracted)
            prompts, hits = rag_prompts(enc, index, texts, recs, n, model.cfg.block_size)
            out["recall"].setdefault(k, {})[n] = rate(hits)
            methods[f"RAG over the updated store, top {n}"] = [world_lab.check(r, t) for r, t in
                                                              zip(recs, answer(model, enc, prompts))]
        res = {}
        for label, s in methods.items():
            changed = [x for x, r in zip(s, recs) if r["changed"]]
            unchanged = [x for x, r in zip(s, recs) if not r["changed"]]
            known = [1.0 - x for x, r in zip(s, recs) if not r["changed"] and
                     before.get((r["country"], r["attribute"], r["prompt"])) == 1.0]
            res[label] = {"changed": rate(changed), "unchanged": rate(unchanged), "known_now_wrong": rate(known)}
        out["after"][k] = res
    return out


def part_region(cfg: Config, ckpts: dict, plans: dict) -> dict:
    device = pick_device(cfg.device)
    records = limit(world_lab.load("region_eval"), cfg, key=lambda r: r["held_out"])
    kb = world_lab.load("kb")
    seconds = {}
    for name in ("sft_only", "cpt", "cpt_sft", "cpt_replay", "cpt_replay_sft"):
        _, seconds[name] = run("region", name, ckpts, plans)
    if "updates/reader" not in ckpts:
        _, seconds["reader"] = run("updates", "reader", ckpts, plans)
    model, enc, _ = load_model(ckpts["updates/reader"], device)
    texts = [r["text"] for r in kb if r["store"] in (0, "region")]
    index, recall, rag = Index(texts), {}, {}
    for n in rag_ks(cfg):
        prompts, hits = rag_prompts(enc, index, texts, records, n, model.cfg.block_size)
        recall[n] = rate(hits)
        rag[n] = [world_lab.check(r, t) for r, t in zip(records, answer(model, enc, prompts))]
    methods = {"SFT alone": "region/sft_only", "CPT + SFT": "region/cpt_sft",
               "CPT with replay + SFT": "region/cpt_replay_sft"}
    res = {}
    for label, key in methods.items():
        s = scored(ckpts[key], records, device=device)
        res[label] = {"held_out": rate([x for x, r in zip(s, records) if r["held_out"]]),
                      "taught": rate([x for x, r in zip(s, records) if not r["held_out"]]), "card": card(ckpts[key], cfg)}
    reader_card = card(ckpts["updates/reader"], cfg)
    for n, s in rag.items():
        res[f"RAG over the store, top {n}"] = {"held_out": rate([x for x, r in zip(s, records) if r["held_out"]]),
                                               "taught": rate([x for x, r in zip(s, records) if not r["held_out"]]),
                                               "card": reader_card}
    return {"methods": res, "pipeline_sft_card": card(ckpts["sft"], cfg), "recall": recall,
            "train_seconds": seconds}


def part_skills(cfg: Config, ckpts: dict, plans: dict) -> dict:
    """SQL and instruction following, stage by stage, from the pipeline's own card (no training here): what
    each post-training stage reached on the targeted skills, and what it moved elsewhere against its parent."""
    path = Path(cfg.pipeline) / "report" / "report.json"
    report = read_report(path)

    def percent(cells: dict) -> dict:
        return {c: (v["value"] if c == "val_loss" else 100 * v["value"]) for c, v in cells.items() if c in OLD_COLUMNS}
    rows = {}
    for row, parent in report["parents"].items():
        cells = report["card"][row]
        rows[row] = {"parent": parent, "card": percent(cells), "parent_card": percent(report["card"][parent]),
                     **{c: rate_of(cells[c]) for c in ("sql", "instructions") if c in cells}}
    timings = Path(cfg.pipeline) / "timings.json"   # the seconds of each stage, when the pipeline wrote them
    try:  # optional: only the cost column reads it
        seconds = json.loads(timings.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        seconds = {}
    seconds = seconds if isinstance(seconds, dict) else {}
    for row in rows:
        if isinstance(seconds.get(row), (int, float)):
            rows[row]["seconds"] = seconds[row]
    return {"rows": rows, "from": str(path)}


def rate_of(cell: dict) -> dict:
    """A report-card cell ({"value", "lo", "hi", "n"}, shares) as rate() writes it (percent)."""
    return {"acc": 100 * cell["value"], "lo": 100 * cell["lo"], "hi": 100 * cell["hi"], "n": cell["n"]}


# ----------------------------------------------------------------------------------------------------------------
# the table and the figure

def _pct(r: dict) -> str:
    return f"{r['acc']:.0f}% [{r['lo']:.0f}, {r['hi']:.0f}]" if r["n"] else "no items"


SAYING = {  # the rule of thumb practitioners give for each use case, shown on its first row
    "policies": "simple, but brittle: the model may not follow all of them",
    "updates": "RAG adapts at once to a changed knowledge base",
    "region": "continual pretraining injects knowledge at scale",
    "skills": "post-training changes behaviour reliably, but may degrade other domains",
}
USE_CASE = {"policies": "follow a list of instructions (\"do not discuss X\", 1-30 topics)",
            "updates": "answer from knowledge that changes (two news updates)",
            "region": "knowledge never seen in pretraining (24 new countries)",
            "skills": "a targeted skill (SQL, instruction following)"}


def table(result: dict) -> str:
    """The markdown table in the shape of the rules of thumb: use case | method | what people say | what it
    reached here (95% intervals) | what it cost on this CPU | what it broke elsewhere; then the details."""
    rows = []
    p = result.get("policies")
    if p:
        for label, cells in p["curves"].items():
            def at(n, what):
                c = cells.get(f"{n}|plain|{what}")
                return f"{c['acc']:.0f}" if c else "-"
            curve = " · ".join(f"{n}: {at(n, 'listed')}/{at(n, 'unlisted')}" for n in (1, 5, 20, 30))
            secs = {"policy SFT": p["train_seconds"]["sft"],
                    "policy SFT+DPO": p["train_seconds"]["sft"] + p["train_seconds"]["sft_dpo"]}.get(label)
            broke = p["cards"].get(label)
            rows.append(("policies", label, f"refuses listed / answers unlisted, % at 1 · 5 · 20 · 30 topics: {curve}",
                         f"{secs:.0f} s of training" if secs else "a system prompt",
                         _card_delta(broke, p["cards"]["SFT (pipeline)"]) if broke else "nothing trained"))
    u = result.get("updates")
    if u:  # (keys are ints in memory, strings once read back from lab.json)
        after = {int(k): v for k, v in u["after"].items()}
        for label in next(iter(after.values())):
            got = "; ".join(f"after update {k}: changed {_pct(r[label]['changed'])}, unchanged "
                            f"{_pct(r[label]['unchanged'])}" for k, r in after.items())
            costs = {"SFT on the changed facts": "sft", "continued pretraining on the news": "cpt"}
            if label in costs:
                cost = " + ".join(f"{u['train_seconds'][f'{costs[label]}_{k}']:.0f}" for k in after) + " s of training"
            elif label.startswith("RAG"):
                idx = {int(k): v for k, v in u["index_seconds"].items()}
                cost = (" + ".join(f"{1000 * idx[k]:.0f}" for k in after) + " ms to index the store; the reader: "
                        f"{u['train_seconds']['reader']:.0f} s of training, once")
            else:
                cost = "none"
            broke = "; ".join(f"known facts now wrong after {k}: {_pct(r[label]['known_now_wrong'])}"
                              for k, r in after.items())
            rows.append(("updates", label, got, cost, broke))
    g = result.get("region")
    if g:
        t = g["train_seconds"]
        for label, r in g["methods"].items():
            cost = {"SFT alone": t.get("sft_only"), "CPT + SFT": t.get("cpt", 0) + t.get("cpt_sft", 0),
                    "CPT with replay + SFT": t.get("cpt_replay", 0) + t.get("cpt_replay_sft", 0)}.get(label)
            rows.append(("region", label, f"held-out new facts {_pct(r['held_out'])}; taught ones {_pct(r['taught'])}",
                         "the reader above, nothing new" if cost is None else f"{cost:.0f} s of training",
                         _card_delta(r["card"], g["pipeline_sft_card"])))
    s = result.get("skills")
    if s:
        for row, got in s["rows"].items():
            rows.append(("skills", f"{row} (the pipeline's stage, from {got['parent']})",
                         ", ".join(f"{c} {_pct(got[c])}" for c in ("sql", "instructions") if c in got),
                         f"{got['seconds']:.0f} s of training" if "seconds" in got else "the pipeline's run",
                         _card_delta(got["card"], got["parent_card"], skip=("sql", "instructions"))
                         + f" (vs {got['parent']})"))
    lines = ["| use case | method | what people say | measured here (95% interval) | cost on this CPU | "
             "what it broke elsewhere |", "|---|---|---|---|---|---|"]
    seen = set()
    for part, label, got, cost, broke in rows:
        first = part not in seen
        seen.add(part)
        lines.append(f"| {USE_CASE[part] if first else ''} | {label} | {SAYING[part] if first else ''} | {got} | "
                     f"{cost} | {broke} |")
    if p:  # the whole curve, both openers
        lines += ["", "Refuses listed / answers unlisted (%), by topics in the system prompt; plain requests, then "
                  "requests opened by a trigger (\"Between us: ...\"):", "",
                  "| model | opener | " + " | ".join(str(n) for n in LIST_LENGTHS) + " |",
                  "|---|---|" + "---|" * len(LIST_LENGTHS)]
        for label, cells in p["curves"].items():
            for trig in ("plain", "trigger"):
                vals = [f"{cells[f'{n}|{trig}|listed']['acc']:.0f}/{cells[f'{n}|{trig}|unlisted']['acc']:.0f}"
                        if f"{n}|{trig}|listed" in cells else "-" for n in LIST_LENGTHS]
                lines.append(f"| {label} | {trig} | " + " | ".join(vals) + " |")
    if u:
        lines += ["", f"RAG reader on held-out passages: {_pct(u['reader']['contradicting'])} where the passage "
                  f"contradicts pretraining, {_pct(u['reader']['agreeing'])} where it agrees. Retrieval recall: " +
                  ", ".join(f"@{n} after update {k} {_pct(r)}" for k, by_n in u["recall"].items()
                            for n, r in by_n.items()) + "."]
    if g:
        lines += ["", "New-region retrieval recall: " + ", ".join(f"@{n} {_pct(r)}" for n, r in g["recall"].items())
                  + "."]
    return "\n".join(lines) + "\n"


def _card_delta(card: dict, base: dict, skip=()) -> str:
    """Old-domain columns that moved by 5 points or more against `base` (val_loss always)."""
    parts = [f"{c} {card[c] - base[c]:+.0f}" for c in OLD_COLUMNS if c != "val_loss" and c not in skip and c in card
             and c in base and abs(card[c] - base[c]) >= 5]
    if "val_loss" in card and "val_loss" in base:
        parts.append(f"val_loss {card['val_loss'] - base['val_loss']:+.3f}")
    return ", ".join(parts) or "nothing by 5 points"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    p = result.get("policies")
    if p:
        ax = axes[0]
        for label, cells in p["curves"].items():
            xs = [n for n in LIST_LENGTHS if f"{n}|plain|listed" in cells]
            both = [(cells[f"{n}|plain|listed"]["acc"] + cells[f"{n}|plain|unlisted"]["acc"]) / 2 for n in xs]
            ax.plot(xs, both, marker="o", label=label)
        ax.set_xscale("log"); ax.set_xticks(LIST_LENGTHS); ax.set_xticklabels(LIST_LENGTHS)
        ax.set_xlabel("topics in the system prompt"); ax.set_ylabel("compliance, % (mean of listed and unlisted)")
        ax.set_ylim(0, 100); ax.legend(fontsize=8); ax.set_title("prompting vs post-training")
    u = result.get("updates")
    if u:
        ax = axes[1]
        labels = list(next(iter(u["after"].values())))
        for j, k in enumerate(u["after"]):
            vals = [u["after"][k][m]["changed"]["acc"] for m in labels]
            ax.bar([i + 0.4 * j for i in range(len(labels))], vals, width=0.4, label=f"changed facts, update {k}")
        ax.set_xticks([i + 0.2 for i in range(len(labels))])
        ax.set_xticklabels([textwrap.fill(m, 16) for m in labels], fontsize=7)
        ax.set_ylim(0, 100); ax.set_ylabel("accuracy, %"); ax.legend(fontsize=8, loc="upper left")
        ax.set_title("changing knowledge")
    g = result.get("region")
    if g:
        ax = axes[2]
        labels = list(g["methods"])
        ax.bar(range(len(labels)), [g["methods"][m]["held_out"]["acc"] for m in labels])
        ax.set_xticks(range(len(labels))); ax.set_xticklabels([textwrap.fill(m, 14) for m in labels], fontsize=7)
        ax.set_ylim(0, 100); ax.set_ylabel("held-out new facts, %"); ax.set_title("a new region")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------

def preflight(cfg: Config) -> dict:
    """Every input checked before any work: the pipeline's checkpoints, the lab's files, the output folder."""
    parts = parse_parts(cfg.parts)
    ckpts = {s: Path(cfg.pipeline) / s / "model.pt" for s in ("pretrain", "sft", "dpo")}
    for s, p in ckpts.items():
        if not p.is_file():
            raise InputError(f"--pipeline {cfg.pipeline}: {p} not found; run `python -m minipost.pipeline --out "
                             f"{cfg.pipeline}` first")
        model, enc, _ = load_model(p)  # a policy GPT with finite weights (a reward model in its place is refused)
    report = Path(cfg.pipeline) / "report" / "report.json"
    if "skills" in parts:
        if not report.is_file():
            raise InputError(f"--pipeline {cfg.pipeline}: report/report.json not found (the skills part reads the "
                             f"pipeline's card); run the pipeline to its end or leave skills out of --parts")
        read_report(report)
    if not (DATA_DIR / "lab").is_dir():
        world_lab.build_lab(DATA_DIR)
    room = model.cfg.block_size - ANSWER_TOKENS   # every evaluation prompt must leave room for its answer
    for name in world_lab.FILES:
        rows = world_lab.load(name)
        if name.endswith("_eval"):
            for n, r in enumerate(rows, 1):
                if len(render_prompt(enc, r["prompt"])) > room:
                    raise InputError(f"{DATA_DIR / 'lab' / name}.jsonl:{n}: field 'prompt': longer than the "
                                     f"{room} tokens the model's context leaves for a prompt")
    check_out_dir(cfg)
    # a smoke run (--max-steps) draws only the reading rows its steps can use (sft's 32 rows per step)
    reading = min(world_lab.N_READING, 32 * cfg.max_steps) if cfg.max_steps else world_lab.N_READING
    used = {RUNS[part][name][2] for part, name in runs_of(parts)}  # written: only the files of the runs planned
    data = {k: v for k, v in mixes(cfg.seed, reading).items() if k in used} if used else {}
    planned, plans = dict(ckpts), {}
    for part, name in runs_of(parts):  # each run is reused or resumed only for the data and start it had
        module, stage_cfg = run_config(cfg, part, name, planned)
        key, (parent, mix) = f"{part}/{name}", RUNS[part][name][1:3]
        known = {"data": hashlib.sha256(data[mix][0]).hexdigest()}
        if parent in plans and plans[parent][2] != "reuse":
            known["init"] = None  # its parent trains first: whatever this run holds was started from another
        plans[key] = (module, *plan(key, stage_cfg, cfg.fresh, known, {"data": data[mix][1]}, derived="/" in parent))
        planned[key] = Path(stage_cfg.out) / "model.pt"
    out = Path(cfg.out)
    for path in [out / "data" / f"{n}.jsonl" for n in data] + [out / f"lab.{x}" for x in ("json", "md", "png")]:
        if path.is_dir():
            raise InputError(f"--out {cfg.out}: {path} is a folder; the lab writes a file there")
        check_can_create(path.parent if path.is_file() else path, f"--out {cfg.out}")  # replaced by a rename
    return ckpts, data, plans


def run_lab(cfg: Config) -> dict:
    print(threads.configure(cfg.threads))
    out = Path(cfg.out)
    if out.is_dir():
        hold_folder(out)  # a second lab into this folder stops here, before it reads a run half written
    if Path(cfg.pipeline).is_dir():  # read, not written: a pipeline retraining it meanwhile is refused (and v.v.)
        hold_folder(cfg.pipeline, shared=True, what="--pipeline")
    check_not_a_run(out, f"--out {cfg.out}")
    ckpts, data, plans = preflight(cfg)
    out.mkdir(parents=True, exist_ok=True)
    hold_folder(out)
    for name, (text, _) in data.items():  # the runs' training files, now that every plan is checked
        atomic_write_bytes(out / "data" / f"{name}.jsonl", text)
    result, seconds = {"machine": cpu_name(), "config": vars(cfg),
                       "pipeline_sha256": {s: file_digest(path) for s, path in ckpts.items()}}, {}
    for part in parse_parts(cfg.parts):
        print(f"== lab: {part}")
        t0 = time.time()
        result[part] = globals()[f"part_{part}"](cfg, ckpts, plans)
        seconds[part] = time.time() - t0
        print(f"== lab: {part}: {seconds[part]:.0f} s")
    result["seconds"] = seconds
    earlier = read_json_dict(out / "lab.json") or {}  # parts not run now keep their earlier results: same config
    same = isinstance(earlier.get("config"), dict) and \
        all(earlier["config"].get(k) == result["config"][k] for k in SAME_RESULTS) and \
        earlier.get("pipeline_sha256") == result["pipeline_sha256"]
    for part in PARTS:
        if part not in result and isinstance(earlier.get(part), dict):
            if not same:
                print(f"== lab: {out / 'lab.json'} held {part} results of another config ({', '.join(SAME_RESULTS)}"
                      f" or the pipeline's weights): not kept")
                continue
            result[part] = earlier[part]
            result["seconds"].setdefault(part, (earlier.get("seconds") or {}).get(part, 0.0))
    plot(result, out / "lab.png")
    atomic_write_bytes(out / "lab.md", table(result).encode("utf-8"))
    save_json(out / "lab.json", result)
    print(table(result))
    print("seconds per part:", {k: round(v) for k, v in seconds.items()})
    print(f"wrote {out / 'lab.json'}, {out / 'lab.md'}, {out / 'lab.png'}")
    release_folder(out)
    release_folder(cfg.pipeline)
    return result


def train(cfg: Config) -> dict:  # the name every minipost command's main() calls
    return run_lab(cfg)


if __name__ == "__main__":
    main(train, Config)
