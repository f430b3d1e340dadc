"""The main job: every stage of post-training in order, then the report card.

    world + tokenizer (built once into data/ if missing)
      -> pretrain                      base model: next-token prediction on the world's corpus
      -> sft      (from base)          imitation of curated chat answers
      -> reward_model (from sft)       a Bradley-Terry reward model: the judge of the card's win_rate column
      -> dpo      (from sft)           preferences against a frozen copy of the SFT model
      -> rloo, grpo, ppo (each from the same dpo checkpoint)   online RL on verifiable rewards
      -> report card: one row per stage, what each gained and what it cost elsewhere

Each stage is just `python -m minipost.<stage> --init PREVIOUS/model.pt --out OUT/<stage>`; this file only
chains them. Run it again after a crash or `kill -9` and it picks up where it stopped: a finished stage (its
model.pt holds the stage's last step) is reused, an unfinished one resumes from its OUT/<stage>/state.pt
(`--resume true`), exactly as if it had not been interrupted; either only for the stage's own config and what
it started from (OUT/<stage>/inputs.json), else it is refused before anything runs, and a stage whose parent
is retrained runs again (see plan). `--fresh true` reruns every stage from scratch.

    python -m minipost.pipeline                  # nano preset, a 2-core CPU
    python -m minipost.pipeline --seeds 1337,2,3 # the RL stages once per seed: card rows show mean ± sd
    python -m minipost.pipeline --preset small   # one GPU
"""
from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from minipost import dist, threads
from minipost.common import (DATA_DIR, DEVICE_HELP, InputError, check_config, check_device, config_with_preset, field,
                             load_checkpoint, pick_device, read_json_dict, save_json)
from minipost.card import eval_answers, evaluate_items, write_report
from minipost.data import load_chats, load_prefs, load_texts
from minipost.harness import (INPUT_FIELDS, RESUME_IGNORES, check_not_a_run, check_not_held, check_previous,
                              config_changes, file_digest, hold_folder, input_digests, main, read_metrics, release_folder)
from minipost.heldout import load_eval_pairs, load_probes
from minipost.rewards import RewardModel
from minipost.rollout import load_prompts
from minipost.tokenizer import get_tokenizer
from minipost.world import build as build_world


def parse_seeds(text: str) -> list[int]:
    """'1337,2,3' -> [1337, 2, 3]; '' -> []. Each seed an integer in 0 .. 2**32 - 1, none twice."""
    seeds = []
    for part in text.split(",") if text.strip() else []:
        if not part.strip().isascii() or not part.strip().isdigit():  # int() would take "1_000", "+3", "٣"
            raise InputError(f"--seeds {text!r}: {part.strip()!r} is not a whole number in digits")
        seed = int(part)
        if seed in seeds or not 0 <= seed < 2**32:
            why = "given twice" if seed in seeds else "out of 0 .. 2**32 - 1"
            raise InputError(f"--seeds {text!r}: {seed} is {why}")
        seeds.append(seed)
    return seeds


@dataclass
class Config:
    """Run the whole pipeline and print the report card."""
    out: str = field("runs/pipeline", "output folder; each stage writes OUT/<stage>/")
    preset: str = field("nano", "nano (laptop CPU) or small (one GPU)", choices=["nano", "small"])
    stages: str = field("pretrain,sft,reward_model,dpo,rloo,grpo,ppo", "comma-separated stages to run, in order")
    init: str = field("", "start SFT from this model instead of pretraining one: a model.pt, or hf:PATH (a Hugging "
                      "Face folder; hf:PATH#chatml or #llama3 for a base model without a chat template); pretrain is "
                      "left out and the card's base row is this model")
    fresh: bool = field(False, "rerun every stage from scratch (default: reuse finished stages, resume the rest)")
    seed: int = field(1337, "random seed for every stage", min=0, max=2**32 - 1)
    seeds: str = field("", "comma-separated seeds for the RL stages (e.g. 1337,2,3): each RL stage runs once per "
                       "seed, into OUT/<stage> for --seed and OUT/<stage>_s<seed> for the others, and its card row "
                       "shows the mean ± sd over them (default: --seed alone)", check=parse_seeds)
    device: str = field("auto", DEVICE_HELP, check=check_device)
    progress: bool = field(True, "show tqdm progress bars")
    threads: str = field("auto", threads.HELP, check=threads.parse_threads)
    max_steps: int = field(0, "if > 0, cap every stage at this many steps (a quick smoke run, not real results)",
                           min=0)
    eval_limit: int = field(0, "if > 0, evaluate only this many items per domain, in the card and in the stages' "
                            "own held-out evaluations (smoke runs)", min=0)

    def __post_init__(self):
        check_config(self)
        unknown = [s for s in self.stage_list() if s not in STAGES]
        if unknown or not self.stage_list():
            raise InputError(f"--stages {self.stages!r}: choose among {list(STAGES)}")
        if parse_seeds(self.seeds) and not set(self.stage_list()) & set(RL_STAGES):
            raise InputError(f"--seeds {self.seeds!r}: repeats the RL stages {list(RL_STAGES)}, and --stages "
                             f"{self.stages!r} has none")

    def stage_list(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip() and not (self.init and s.strip() == "pretrain")]

    def seeds_of(self, stage: str) -> list[int]:
        return (parse_seeds(self.seeds) or [self.seed]) if stage in RL_STAGES else [self.seed]




# stage -> (module, the stage its --init comes from, extra config overrides)
STAGES = {
    "pretrain": ("minipost.pretrain", None, {}),
    "sft": ("minipost.sft", "pretrain", {}),
    "reward_model": ("minipost.reward_model", "sft", {}),
    "dpo": ("minipost.dpo", "sft", {}),
    "rloo": ("minipost.reinforce", "dpo", {"baseline": "rloo"}),
    "grpo": ("minipost.grpo", "dpo", {}),
    "ppo": ("minipost.ppo", "dpo", {}),
}
ROW_NAMES = {"pretrain": "base"}
RL_STAGES = ("rloo", "grpo", "ppo")  # the stages --seeds repeats
JUDGE = "reward_model"  # not a row of the card: the judge of its win_rate column (against the SFT model's answers)


def stage_config(name: str, cfg: Config, out: Path, seed: int | None = None):
    """The config `python -m minipost.<module> --preset P --init PARENT/model.pt --out OUT/<name>` would run
    (with `seed` other than --seed: --seed SEED --out OUT/<name>_s<SEED>)."""
    module_name, parent, overrides = STAGES[name]
    module = importlib.import_module(module_name)
    seed = cfg.seed if seed is None else seed
    folder = name if seed == cfg.seed else f"{name}_s{seed}"
    kw = dict(preset=cfg.preset, out=str(out / folder), seed=seed, device=cfg.device, progress=cfg.progress,
              threads=cfg.threads)
    if parent is not None:
        kw["init"] = cfg.init if parent == "pretrain" and cfg.init else str(out / parent / "model.pt")
    full = config_with_preset(module.Config, module.PRESETS, **kw, **overrides)
    if cfg.max_steps:
        kw["max_steps"] = min(cfg.max_steps, full.max_steps)
    if cfg.eval_limit:  # smoke runs: the stages' own held-out evaluations shrink like the card's
        names = {f.name for f in dataclasses.fields(full)}
        if "eval_limit" in names:  # the RL files: prompts per domain
            kw["eval_limit"] = min(cfg.eval_limit, full.eval_limit or cfg.eval_limit)
        if "eval_pairs" in names:  # DPO: held-out pairs
            kw["eval_pairs"] = min(6 * cfg.eval_limit, full.eval_pairs)
        if "eval_windows" in names:  # pretrain, SFT: held-out text windows (the card's val_loss keeps its 64)
            kw["eval_windows"] = min(4 * cfg.eval_limit, full.eval_windows)
    return module, config_with_preset(module.Config, module.PRESETS, **kw, **overrides)


def stage_plan(name: str, cfg: Config, out: Path, seed: int | None = None, known: dict | None = None,
               derived: bool = False):
    """-> (module, stage config, "reuse" | "resume" | "run") for one stage of the pipeline (see plan)."""
    module, stage_cfg = stage_config(name, cfg, out, seed)
    stage_cfg, what = plan(name, stage_cfg, cfg.fresh, known, derived=derived)
    return module, stage_cfg, what


def plan(name: str, stage_cfg, fresh: bool = False, known: dict | None = None, sources: dict | None = None,
         derived: bool = False):
    """-> (stage config, "reuse" | "resume" | "run"): reuse a finished run (its OUT/model.pt holds the last
    step), resume an interrupted one (OUT/state.pt), else run it. Either is done only for the run's own config
    and inputs: the config saved in OUT/config.json (or state.pt) and what OUT/inputs.json says it was trained
    from (harness.input_digests; `known` as there; `sources`: what a field's file is made from, for the
    message). Anything else is refused (InputError) before any stage runs: a run is the user's to keep or drop.
    `derived`: --init is an earlier run of the same plan (the pipeline's stages, the lab's chains). When that
    one is retrained first (`known` init None) or was retrained since, this run runs again: its files move to
    OUT/previous/ as it starts. minipost.lab plans its own runs with it too."""
    out = Path(stage_cfg.out)
    model, state = out / "model.pt", out / "state.pt"
    check_previous(out, name)
    if fresh or not (model.exists() or state.exists()):
        return stage_cfg, "run"
    stale = f"== {name}: the run in {out} started from an earlier {getattr(stage_cfg, 'init', '')}, retrained " \
            f"since or now: it runs again (its files move to {out / 'previous'}/)"
    if known and "init" in known and known["init"] is None:  # rewritten before this run starts
        print(stale)
        return stage_cfg, "run"
    step = load_checkpoint(model, required=("step",))["step"] if model.exists() else None
    redo = ("rerun with --fresh true (every run of this command starts again; each one's files move to its "
            "previous/) or give another --out")
    if step is not None and not isinstance(step, int):
        raise InputError(f"{model}: field 'step' is {step!r}, not a whole number; {redo}")
    if step is not None and step >= stage_cfg.max_steps:  # finished; a longer run than asked for is reused too
        what = f"{out} holds a finished {name} run"
        saved, ignored, how = read_saved_json(out / "config.json", what, redo), RESUME_IGNORES + ("max_steps",), "reuse"
    elif state.exists():
        what = f"{out} holds {'an unfinished' if step is None else f'a {step}-step'} {name} run"
        stage_cfg, how = dataclasses.replace(stage_cfg, resume=True), "resume"
        resumed = load_checkpoint(state, required=("config", "model", "optimizer", "step", "rng", "elapsed_s"))
        saved, ignored = resumed["config"], RESUME_IGNORES  # (its fields checked now, not after earlier stages)
    else:  # a finished run of fewer steps and nothing to resume it from
        raise InputError(f"{out} holds a finished {name} run of {step} steps, not the {stage_cfg.max_steps} "
                         f"planned, and no state.pt to continue it; {redo}")
    if not isinstance(saved, dict):
        raise InputError(f"{out / 'state.pt'}: field 'config' is not a dict; {redo}")
    now = asdict(stage_cfg)
    changed = config_changes(stage_cfg, saved, ignored)
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise InputError(f"{what} of another config ({diff}); {redo}")
    stamp = read_saved_json(out / "inputs.json", what, redo)
    if how == "reuse" and "model" in stamp and file_digest(model) != stamp["model"]:  # (older runs record none)
        raise InputError(f"{model} is not the model this {name} run wrote (its sha256 differs from the one its "
                         f"inputs.json recorded: replaced or changed since); {redo}")
    if how == "reuse" and (out / "metrics.jsonl").is_file():  # read at the end (its seconds): checked now
        read_metrics(out / "metrics.jsonl")
    digests = input_digests(stage_cfg, known)
    if derived and "init" in digests and "init" in stamp and stamp["init"] != digests["init"]:
        print(stale)
        return dataclasses.replace(stage_cfg, resume=False), "run"
    for f, digest in digests.items():
        kind, given = INPUT_FIELDS.get(f, "world (the files of data/)"), ""
        if f in INPUT_FIELDS:  # the file it names, and what that is made from
            given = f" ({getattr(stage_cfg, f)}" + (f", made from {sources[f]}" if sources and f in sources else "") + ")"
        if f not in stamp:
            raise InputError(f"{what}, but its inputs.json records no {kind}{given}; {redo}")
        if stamp[f] != digest:
            raise InputError(f"{what} trained from another {kind} than the one it is given now{given}; {redo}")
    return stage_cfg, how


def read_saved_json(path: Path, what: str, redo: str) -> dict:
    """A run's saved config.json or inputs.json; missing or unreadable: an InputError of `what` and `redo`."""
    saved = read_json_dict(path)
    if saved is None:
        raise InputError(f"{what}, but no readable {path} records what it was trained with; {redo}")
    return saved


def run_planned(name: str, module, stage_cfg, what: str) -> Path:
    """Carry out a plan(): print what runs (or is reused), train, return OUT/model.pt."""
    stage_out = Path(stage_cfg.out)
    if what == "reuse":
        print(f"== {name}: reusing {stage_out / 'model.pt'} (finished)")
        return stage_out / "model.pt"
    resume = what == "resume"
    print(f"== {name}: python -m {module.__name__} --init {getattr(stage_cfg, 'init', '') or '(random)'} "
          f"--out {stage_out}{' --resume true' if resume else ''}")
    t0 = time.time()
    module.train(stage_cfg)
    print(f"== {name}: {time.time() - t0:.0f} s")
    return stage_out / "model.pt"


def train_seconds(out: Path) -> float:
    """A run's training seconds, from its metrics.jsonl (the same whether it ran now, resumed or is reused)."""
    rows = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
    return max((r["elapsed_s"] for r in rows if isinstance(r.get("elapsed_s"), (int, float))), default=0.0)


def card_items(ckpts: dict[str, list], device, limit: int | None, report_dir) -> dict:
    """The card's per-item scores of every stage's checkpoints ({stage: [path per seed]}), the judge's
    win_rate against the SFT model's answers included -> {row: items (a list of them with several seeds)}."""
    ref = ckpts["sft"][0] if "sft" in ckpts else None
    judge = RewardModel(ckpts[JUDGE][0], device) if JUDGE in ckpts else None
    baseline = eval_answers(ref, device, limit) if judge and ref else None  # what win_rate compares against
    items = {}
    for s, paths in ckpts.items():
        if s == JUDGE:
            continue
        print(f"== eval {s}" + (f" ({len(paths)} seeds)" if len(paths) > 1 else ""))
        runs = [evaluate_items(p, device, ref_path=ref, out_dir=report_dir, limit=limit, judge=judge,
                               baseline=baseline if s != "sft" else None) for p in paths]
        items[ROW_NAMES.get(s, s)] = runs if len(runs) > 1 else runs[0]
    return items


# What the stages and the card read of the world's files in data/, each with the reader that reads it there
WORLD_READERS = {"pretrain.jsonl": load_texts, "pretrain_val.jsonl": load_texts, "sft.jsonl": load_chats,
                 "prefs.jsonl": load_prefs, "eval_prefs.jsonl": load_eval_pairs, "rl.jsonl": load_prompts,
                 "eval.jsonl": load_prompts, "probes.jsonl": load_probes}


def read_world(data_dir: Path | None = None) -> None:
    """Read every world file as its stage will (InputError: file, line, field), before the first stage runs."""
    for name, read in WORLD_READERS.items():
        read(Path(data_dir or DATA_DIR) / name)


def run(cfg: Config) -> dict:
    """Every stage, then the card. Under `torchrun --nproc_per_node N -m minipost.pipeline` every stage runs on
    the N processes (minipost/dist.py) and rank 0 alone writes the pipeline's files and evaluates the card."""
    t0 = time.time()
    out = Path(cfg.out)
    ranks = dist.setup(pick_device(cfg.device))
    if out.is_dir():  # a second pipeline into this folder stops here, before it reads a stage half written
        dist.main_first(lambda: hold_folder(out), ranks)
    planned = cfg.stage_list()
    plans = {}
    for i, name in enumerate(planned):  # every stage's config and start is checked before the first one runs
        parent = STAGES[name][1]
        parent = None if parent == "pretrain" and cfg.init else parent  # (SFT starts from --init)
        retrained = (parent, cfg.seed) in plans and plans[parent, cfg.seed][2] != "reuse"  # its start changes
        for seed in cfg.seeds_of(name):
            plans[name, seed] = stage_plan(name, cfg, out, seed, known={"init": None} if retrained else None,
                                           derived=parent is not None)
        if parent and parent not in planned[:i] and not (out / parent / "model.pt").is_file():
            raise InputError(f"--stages {cfg.stages!r}: {name} starts from {out / parent / 'model.pt'}, which does "
                             f"not exist; run {parent} first (add it to --stages)")
    check_not_a_run(out, f"--out {cfg.out}")
    for _, stage_cfg, _ in plans.values():  # a stage's folder that another process writes into
        check_not_held(stage_cfg.out)

    def check_world():  # rank 0; a refusal here stops every rank with its line (dist.main_first)
        if not (DATA_DIR / "pretrain.jsonl").exists():
            build_world(DATA_DIR)
        get_tokenizer(cfg.preset)  # trains and saves the tokenizer on first use
        read_world()  # a damaged data file stops the pipeline now, not after the stages before its reader
    dist.main_first(check_world, ranks)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {cfg.out}: cannot create it ({e.strerror or type(e).__name__})") from None

    def start():  # rank 0 takes the folder and writes the pipeline's config
        hold_folder(out)
        save_json(out / "config.json", asdict(cfg))
    dist.main_first(start, ranks)
    timings, ckpts = {}, {}
    for s in cfg.stage_list():
        ckpts[s], timings[s] = [], 0.0
        for seed in cfg.seeds_of(s):
            t = time.time()
            ckpts[s].append(run_planned(s, *plans[s, seed]))
            stage_out = Path(plans[s, seed][1].out)  # a reused stage: the seconds it trained for, not 0
            timings[s] += train_seconds(stage_out) if plans[s, seed][2] == "reuse" else time.time() - t

    if cfg.init:  # the model the stages started from is the card's base row
        ckpts = {"pretrain": [cfg.init], **ckpts}
    if not ranks.main:  # the card is rank 0's (evaluation is not split over the ranks)
        dist.barrier(ranks)
        return {}
    t = time.time()
    items = card_items(ckpts, ranks.device, cfg.eval_limit or None, out / "report")
    timings["evals"] = time.time() - t
    timings["total"] = time.time() - t0
    print()
    parents = {ROW_NAMES.get(s, s): ROW_NAMES.get(STAGES[s][1], STAGES[s][1]) for s in ckpts
               if STAGES[s][1] in ckpts and s != JUDGE}
    report = write_report(items, out / "report", parents)
    save_json(out / "timings.json", timings)
    release_folder(out)
    print("\nseconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    dist.barrier(ranks)
    return report


if __name__ == "__main__":
    main(run, Config)
