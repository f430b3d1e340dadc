"""`RunConfig`: the fields every objective's Config shares, so each objective's Config lists only its method's and
its schedule's fields (and redeclares a shared one only to change its default or its help).

Every field becomes a command-line flag (`common.parse_config`: `max_steps` -> `--max-steps`), and `check_config`
checks the bounds given here before any data or model is loaded.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from minipost import threads
from minipost.common import (DEVICE_HELP, InputError, check_config, check_device, exit_on_input_error, field,
                             parse_config, with_preset_note)
from minipost.harness.folder import where_to_continue
from minipost.model import FUSED_VOCAB


def logprobs_impl_field():
    """--logprobs-impl, for the objectives that score chosen tokens (SFT, DPO, the RL files)."""
    return field("auto", "log-probs: fused (the output layer and the log-prob in one, logits never whole), or the "
                         "logits then token_logprobs: reference, chunked, triton; auto: fused from a vocabulary of "
                         f"{FUSED_VOCAB}", choices=["auto", "fused", "reference", "chunked", "triton"])


@dataclass
class RunConfig:
    """Where a run writes, what it starts from, how long it runs and how often it logs, evaluates and saves."""
    preset: str = field("nano", "schedule: nano (laptop CPU; the defaults), small (one GPU) or, where the "
                                "objective has it, hf (a Hugging Face model of about 0.5B parameters, --init "
                                "hf:PATH, one GPU: docs/recipes.md); the model's size comes from --init",
                        choices=["nano", "small", "hf"])
    out: str = field("runs/run", "output folder: config.json, inputs.json, metrics.jsonl, state.pt, "
                                     "model.pt, samples.txt, summary.json")
    init: str = field("", "checkpoint to start from")
    max_steps: int = field(100, "optimizer steps", min=1)
    max_seconds: float = field(0.0, "stop after this many seconds, keeping the model trained so far (0: no limit); "
                                     "a cap makes the step count machine-dependent", min=0)
    eval_every: int = field(50, "steps between held-out evaluations (0: only at the end)", min=0)
    log_every: int = field(1, "steps between metrics.jsonl rows (step 1 and the last are always logged)", min=1)
    save_every: int = field(50, "steps between OUT/state.pt saves (what --resume continues from)", min=1)
    stop_after: int = field(0, "save state and stop after this many steps, to --resume later (0: run to the end)",
                            min=0)
    resume: bool = field(False, "continue from OUT/state.pt: weights, optimizer, schedule, RNG, data position and step")
    allow_config_change: bool = field(False, "with --resume, accept a config that differs from the saved run's")
    seed: int = field(1337, "random seed (initial weights, data order, sampling)", min=0, max=2**32 - 1)
    checkpointing: bool = field(False, "activation checkpointing: keep each block's input only and run the block "
                                       "again in backward (less memory for about a third more compute)")
    device: str = field("auto", DEVICE_HELP, check=check_device)
    progress: bool = field(True, "show a tqdm progress bar")
    threads: str = field("auto", threads.HELP, check=threads.parse_threads)

    def __post_init__(self):
        check_config(self)


def main(train_fn, cls, presets: dict[str, dict] | None = None, argv: list[str] | None = None):
    """`python -m minipost.<objective>`: flags -> Config -> train(cfg). A wrong flag, file or record prints
    one line `error: ...` and exits 2; a run stopped by a non-finite value prints one line `stopped: ...` and
    exits 1; Ctrl-C prints where the run's state is and how to continue, and exits 130; anything else is a bug
    and keeps its traceback."""
    cfg = parse_config(cls, argv, presets)
    given = {a[2:].split("=")[0].replace("-", "_") for a in (sys.argv[1:] if argv is None else argv)
             if a.startswith("--")}

    def train():  # a refusal of a value the preset set says so, as parse_config's do
        try:
            return train_fn(cfg)
        except InputError as e:
            preset = getattr(cfg, "preset", None)
            raise InputError(with_preset_note(str(e), (presets or {}).get(preset, {}), preset, given)) from None
    try:
        return exit_on_input_error(train)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 holds the folder and speaks for every rank
            print(f"\ninterrupted: {where_to_continue(Path(cfg.out))}", file=sys.stderr)
        raise SystemExit(130) from None
