"""What lessons 04-08 do first: smoke mode, an output folder, the world's data, and a checkpoint to start from.

Kept in one place so each lesson's own cells are about its method. Import it as `from _setup import ...`
(the lessons run as scripts from the repository root, so this folder is on sys.path).
"""
import os
from pathlib import Path

import torch

from minipost.common import DATA_DIR

SMOKE = os.environ.get("MINIPOST_SMOKE") == "1"  # the test suite runs every lesson this way, in seconds
if SMOKE:
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and the test machine is shared

RL_STARTS = ["runs/pipeline/dpo/model.pt", "runs/dpo/model.pt", "runs/pipeline/sft/model.pt", "runs/sft/model.pt"]


def out_dir(lesson: str) -> Path:
    return Path(os.environ.get("MINIPOST_OUT", "runs/tutorials")) / lesson


def ensure_world() -> None:
    if not (DATA_DIR / "rl.jsonl").exists():
        from minipost.world import build
        build(DATA_DIR)


def start_checkpoint(out: Path, candidates=RL_STARTS) -> str:
    """The model to start from: $MINIPOST_INIT, else the first of `candidates` that exists. In smoke mode with
    none of them, a random nano GPT (it will learn nothing; the point is to run the code)."""
    for c in [os.environ.get("MINIPOST_INIT", ""), *candidates]:
        if c and Path(c).exists():
            return c
    if not SMOKE:
        raise SystemExit("no SFT/DPO checkpoint found: run `python -m minipost.pipeline --stages pretrain,sft,dpo` "
                         "first, or set MINIPOST_INIT=path/to/model.pt")
    from minipost.common import save_checkpoint
    from minipost.model import GPT, GPTConfig, PRESETS as MODEL_PRESETS, model_checkpoint
    from minipost.tokenizer import get_tokenizer
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=get_tokenizer("nano").n_vocab, **MODEL_PRESETS["nano"]))
    save_checkpoint(out / "random_init.pt", model_checkpoint(model, "nano", 0))
    return str(out / "random_init.pt")
