"""What lessons 03-08 do first: smoke mode, an output folder, the world's data, and a checkpoint to start from;
and the check lessons 01-03 make after their training step by hand (`assert_same_weights`).

Kept in one place so each lesson's own cells are about its method. Import it as `from _setup import ...`
(the lessons run as scripts from the repository root, so this folder is on sys.path).
"""
import os
from pathlib import Path

import minipost  # noqa: F401  first: it makes torch's idle threads sleep (minipost/threads.py)
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
        raise SystemExit(f"none of {list(candidates)} exists: run `python -m minipost.pipeline --stages "
                         "pretrain,sft,dpo` first, or set MINIPOST_INIT=path/to/model.pt")
    from minipost.common import save_checkpoint
    from minipost.model import GPT, GPTConfig, PRESETS as MODEL_PRESETS, model_checkpoint
    from minipost.tokenizer import get_tokenizer
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=get_tokenizer("nano").n_vocab, **MODEL_PRESETS["nano"]))
    save_checkpoint(out / "random_init.pt", model_checkpoint(model, "nano", 0))
    return str(out / "random_init.pt")


def assert_same_weights(model, path) -> None:
    """Assert that every weight tensor of `model` equals, bit for bit (torch.equal), the one in the checkpoint at
    `path`, and say so; a mismatch names the first tensor that differs and by how much."""
    from minipost.common import load_checkpoint
    saved, mine = load_checkpoint(path)["model"], model.state_dict()
    assert mine.keys() == saved.keys(), f"different tensors: {sorted(mine.keys() ^ saved.keys())}"
    for name, w in mine.items():
        assert torch.equal(w, saved[name]), (f"{name} differs from {path}: largest difference "
                                             f"{(w - saved[name]).abs().max().item():.3g}")
    print(f"by hand == train(): all {len(mine)} weight tensors equal bit for bit (torch.equal) after one step")


def training_rows(out: Path) -> list[dict]:
    """The per-step training rows of OUT/metrics.jsonl (held-out evaluation rows have no `reward`)."""
    from minipost.common import read_metrics
    return [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]


def every_tenth(rows: list[dict]) -> list[dict]:
    return rows[:: max(1, len(rows) // 10)] + rows[-1:]


def report_run(out: Path, summary: dict, rows: list[dict], key: str, label: str, png: str) -> None:
    """Print the held-out change and plot the training reward next to one diagnostic (`key`) into OUT/png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("held-out:", {k: f"{summary['start'][k]:.3f} -> {summary['end'][k]:.3f}" for k in summary["end"]})
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(steps, [r["reward"] for r in rows])
    ax[0].set_xlabel("step"); ax[0].set_ylabel("mean reward (training samples)")
    ax[1].plot(steps, [r[key] for r in rows])
    ax[1].set_xlabel("step"); ax[1].set_ylabel(label)
    fig.tight_layout(); fig.savefig(out / png, dpi=100)
    plt.close(fig)
    print("wrote", out / png)
