"""The main job: every stage of post-training in order, then the report card.

    world + tokenizer (built once into data/ if missing)
      -> pretrain                      base model: next-token prediction on the world's corpus
      -> sft      (from base)          imitation of curated chat answers
      -> dpo      (from sft)           preferences against a frozen copy of the SFT model
      -> rloo, grpo, ppo (each from the same dpo checkpoint)   online RL on verifiable rewards
      -> report card: one row per stage, what each gained and what it cost elsewhere

Each stage is just `python -m minipost.<stage> --init PREVIOUS/model.pt --out OUT/<stage>`; this file only
chains them. A stage whose model.pt already exists is reused (delete the folder, or pass --fresh true, to rerun).

    python -m minipost.pipeline                  # nano preset, a 2-core CPU
    python -m minipost.pipeline --preset small   # one GPU
"""
from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from minipost.common import DATA_DIR, config_with_preset, field, parse_config, pick_device, save_json


@dataclass
class Config:
    """Run the whole pipeline and print the report card."""
    out: str = field("runs/pipeline", "output folder; each stage writes OUT/<stage>/")
    preset: str = field("nano", "nano (laptop CPU) or small (one GPU)", choices=["nano", "small"])
    stages: str = field("pretrain,sft,dpo,rloo,grpo,ppo", "comma-separated stages to run, in order")
    fresh: bool = field(False, "rerun stages even if their model.pt exists")
    seed: int = field(1337, "random seed for every stage")
    device: str = field("auto", "cuda, mps, cpu or auto")
    progress: bool = field(True, "show tqdm progress bars")
    max_steps: int = field(0, "if > 0, cap every stage at this many steps (a quick smoke run, not real results)")
    eval_limit: int = field(0, "if > 0, evaluate only this many items per domain (smoke runs)")


# stage -> (module, the stage its --init comes from, extra config overrides)
STAGES = {
    "pretrain": ("minipost.pretrain", None, {}),
    "sft": ("minipost.sft", "pretrain", {}),
    "dpo": ("minipost.dpo", "sft", {}),
    "rloo": ("minipost.reinforce", "dpo", {"baseline": "rloo"}),
    "grpo": ("minipost.grpo", "dpo", {}),
    "ppo": ("minipost.ppo", "dpo", {}),
}
ROW_NAMES = {"pretrain": "base"}


def run_stage(name: str, cfg: Config, out: Path) -> Path:
    module_name, parent, overrides = STAGES[name]
    stage_out = out / name
    if (stage_out / "model.pt").exists() and not cfg.fresh:
        print(f"== {name}: reusing {stage_out / 'model.pt'}")
        return stage_out / "model.pt"
    module = importlib.import_module(module_name)
    kw = dict(preset=cfg.preset, out=str(stage_out), seed=cfg.seed, device=cfg.device, progress=cfg.progress)
    if parent is not None:
        kw["init"] = str(out / parent / "model.pt")
    if cfg.max_steps:
        kw["max_steps"] = min(cfg.max_steps, module.PRESETS[cfg.preset]["max_steps"])
    stage_cfg = config_with_preset(module.Config, module.PRESETS, **kw, **overrides)
    print(f"== {name}: python -m {module_name} --init {kw.get('init', '(random)')} --out {stage_out}")
    t0 = time.time()
    module.train(stage_cfg)
    print(f"== {name}: {time.time() - t0:.0f} s")
    return stage_out / "model.pt"


def main(cfg: Config) -> dict:
    from minipost.evals import evaluate_checkpoint, write_report
    from minipost.tokenizer import get_tokenizer
    from minipost.world import build as build_world

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", asdict(cfg))
    if not (DATA_DIR / "pretrain.jsonl").exists():
        build_world(DATA_DIR)
    get_tokenizer(cfg.preset)  # trains and saves the tokenizer on first use
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    timings, ckpts = {}, {}
    for s in stages:
        t = time.time()
        ckpts[s] = run_stage(s, cfg, out)
        timings[s] = time.time() - t

    t = time.time()
    device = pick_device(cfg.device)
    ref = ckpts.get("sft")
    rows = {}
    for s, path in ckpts.items():
        print(f"== eval {s}")
        rows[ROW_NAMES.get(s, s)] = evaluate_checkpoint(path, device, ref_path=ref, out_dir=out / "report",
                                                        limit=cfg.eval_limit or None)
    timings["evals"] = time.time() - t
    timings["total"] = time.time() - t0
    print()
    parents = {ROW_NAMES.get(s, s): ROW_NAMES.get(STAGES[s][1], STAGES[s][1]) for s in ckpts if STAGES[s][1] in ckpts}
    write_report(rows, out / "report", parents)
    save_json(out / "timings.json", timings)
    print("\nseconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return rows


if __name__ == "__main__":
    main(parse_config(Config))
