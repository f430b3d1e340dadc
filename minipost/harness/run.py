"""`Run`: everything a training loop needs that is not the algorithm, behind one object.

An objective file builds its data, model and optimizer, then hands the run's plumbing to a `Run`:

    run = Run(cfg, "pretrain")                       # torchrun ranks, CPU threads, seeds
    run.start(model=model, optimizer=optimizer)      # the run folder; a resume restores these, RNGs, step, clock
    for step in run.steps():                         # step = 0, 1, ...; from where a resume left off
        ...                                          # batch -> forward -> loss -> loss.backward()
        grad_norm = run.optimizer_step(model, optimizer, cfg.grad_clip)
        run.log(loss=..., grad_norm=grad_norm)       # a metrics.jsonl row every --log-every steps
        run.end_step(tokens_seen=...)                # state.pt every --save-every steps; --stop-after
    if run.finish(model_checkpoint(...), samples=...):   # model.pt and samples.txt, when the run is complete
        print("done")

What lives here, so that it is written once and the objective files stay about their equations:
- **torchrun** (`minipost.dist`): `run.shard(batch_size)` is this process's rows of every global batch; the
  optimizer step sums the gradients of every rank before it clips; `run.sum(x)` adds up a logged number. Only
  rank 0 writes files, logs or prints.
- **The run folder** (`folder.start_run`): a new run moves an earlier one's files to `OUT/previous/`, writes
  config.json and inputs.json (the sha256 of what it trains from); `--resume true` reloads OUT/state.pt.
- **Resume state**: the weights and optimizer and whatever else `start()` is given (data order, generators),
  every RNG, the step, the clock, and the values `end_step()` is given, so a resumed run is bit-identical to an
  uninterrupted one.
- **Cadence**: `log` every `--log-every` steps and at the last, `eval_due()` every `--eval-every` steps and at
  the last, state.pt every `--save-every` steps, at `--stop-after` and at the end.
- **Checks**: every loss or held-out value goes through `run.check` (NaN or inf stops the run, the checkpoints
  keep the last finite weights).
- **The clock**: `run.elapsed` counts the seconds of every session of the run (a resume carries it on), so
  `elapsed_s`, `steps_per_s` and `tokens_per_s` mean the same in every file.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minipost import dist, threads
from minipost.common import InputError, pick_device, save_checkpoint, save_json, seed_everything
from minipost.harness.folder import record_model, release_folder, save_state, start_run
from minipost.harness.metrics import MetricsLogger, check_finite
from minipost.decoder import Decoder
from minipost.model import FUSED_VOCAB


def check_preset_fits(cfg, model) -> None:
    """--preset hf holds a real model's schedule (learning rates of 1e-5 and below, 512-token rows); on one of
    minipost's own GPTs (no decoder family, a vocabulary below model.FUSED_VOCAB = 32,768) it would train for
    nothing: one line."""
    if getattr(cfg, "preset", "") == "hf" and not isinstance(model, Decoder) and model.cfg.vocab_size < FUSED_VOCAB:
        raise InputError(f"--preset hf: the schedule of a Hugging Face model of about 0.5B parameters, and --init "
                         f"{cfg.init} is one of minipost's own ({model.num_params() / 1e6:.1f}M parameters, a "
                         f"vocabulary of {model.cfg.vocab_size}); give --init hf:PATH (or a model.pt trained from "
                         "one), or --preset nano or small")


class Run:
    """One training run of `cfg` (an objective's Config): its process group, its folder, its step loop."""

    def __init__(self, cfg, name: str):
        self.cfg, self.name = cfg, name
        self.ranks = dist.setup(pick_device(cfg.device))  # torchrun: this process's rank and device (else one)
        self.device = self.ranks.device
        if getattr(cfg, "logprobs_impl", "") == "triton" and self.device.type != "cuda" and \
                os.environ.get("TRITON_INTERPRET") != "1":
            raise InputError(f"--logprobs-impl triton: the Triton kernels run on CUDA, and this run is on "
                             f"{self.device.type} (chunked, fused or auto run anywhere)")
        print(threads.configure(cfg.threads))
        seed_everything(cfg.seed)  # before any model is built: random init draws from it
        self.out = Path(cfg.out)
        self.step = 0  # optimizer steps done; inside the loop, the number of the step being taken (1, 2, ...)
        self.saved: dict = {}  # what end_step() was last given (and what a resume restored)
        self.resumed = False
        self._time_checked = (-1, False)  # (step, whether --max-seconds had passed at it)
        self.stopped = ""  # what ended the loop early: "--stop-after", "--max-seconds N" (else "")

    @property
    def main(self) -> bool:
        """The process that writes, logs and prints (rank 0; the only one without torchrun)."""
        return self.ranks.main

    def shard(self, batch_size: int, flag: str = "--batch-size") -> slice:
        """This process's rows of a global batch of batch_size (all of them without torchrun)."""
        return dist.shard(batch_size, self.ranks, flag)

    def mean(self, value: float) -> float:
        """The mean over the processes of a number each computed on its equal share (the number itself alone)."""
        return self.sum(value) / self.ranks.world

    def batch_mean(self, values: torch.Tensor) -> float:
        """The mean of every process's values together (the tensor's own mean alone)."""
        if self.ranks.world == 1:
            return values.mean().item()
        return self.sum(values.sum().item()) / self.sum(len(values))

    def micro_batches(self, batch, size: int) -> list:
        """This process's rows of a global batch (all of them alone; its share under torchrun), in micro-batches of
        `size` rows for forward/backward (0: one micro-batch) -> a list of row-index pieces."""
        mine = batch[dist.shard(len(batch), self.ranks)]
        size = min(size or len(mine), len(mine))
        return [mine[s:s + size] for s in range(0, len(mine), size)]

    def sum(self, value: float) -> float:
        """A number summed over the processes (a loss share, a count); the number itself without torchrun."""
        return dist.all_reduce_sum(value, self.ranks)

    # ---- the run folder and resume state
    def start(self, **objects) -> None:
        """Call once every input is checked and every model is built. `objects` (the model, the optimizer, a data
        order: anything with state_dict/load_state_dict, or a torch.Generator) are saved in state.pt and, with
        --resume true, restored from it, with every RNG, the step, the clock and the values of end_step()."""
        self.objects = objects
        for obj in objects.values():  # the models it trains take --checkpointing
            if hasattr(obj, "checkpointing"):
                obj.checkpointing = bool(getattr(self.cfg, "checkpointing", False))
                check_preset_fits(self.cfg, obj)
        state = dist.main_first(lambda: start_run(self.out, self.cfg), self.ranks)  # the folder: lock, previous/
        if not self.main:
            state = start_run(self.out, self.cfg, write=False)  # the other ranks only read the resume state
        elapsed = 0.0
        if state:
            for key, obj in objects.items():
                try:
                    obj.set_state(state[key]) if isinstance(obj, torch.Generator) else obj.load_state_dict(state[key])
                except (KeyError, ValueError, RuntimeError, TypeError) as e:  # a state.pt of another run, or edited
                    why = ("missing" if isinstance(e, KeyError) else
                           f"does not fit this run ({str(e).splitlines()[0][:200]})")
                    release_folder(self.out)
                    raise InputError(f"{self.out / 'state.pt'}: field {key!r} {why}; it is not this run's resume "
                                     "state (start afresh without --resume, or give another --out)") from None
            if not isinstance(state.get("step"), int) or state["step"] < 0 or not isinstance(state.get("elapsed_s"),
                                                                                         (int, float)):
                release_folder(self.out)
                raise InputError(f"{self.out / 'state.pt'}: fields 'step' and 'elapsed_s' must be numbers, step >= 0")
            self.step, elapsed, self.resumed = state["step"], state["elapsed_s"], True
            self.saved = {k: v for k, v in state.items()
                          if k not in objects and k not in ("step", "config", "rng", "elapsed_s")}
        self.logger = MetricsLogger(self.out, resume_step=self.step if state else None, enabled=self.main)
        self.t0 = time.time() - elapsed

    def resumed_value(self, key: str, default):
        """A value end_step() saved, as a resume restored it (default for a fresh run)."""
        return self.saved.get(key, default)

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, the sessions before a resume included."""
        return time.time() - self.t0

    def scores_at_start(self, evaluate) -> dict:
        """Held-out scores before the first step: evaluate() once per run (a resume keeps the first session's),
        logged at step 0 and printed."""
        scores = self.resumed_value("start_scores", None)
        if scores is None:
            scores = evaluate()
            self.log(0, **scores)
        print("held-out at start: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        return scores

    # ---- the step loop
    def steps(self):
        """The step indices 0 .. max_steps - 1 still to take, with a progress bar; stops after end_step() saw
        --stop-after."""
        cfg = self.cfg
        self.bar = tqdm(range(self.step, cfg.max_steps), initial=self.step, total=cfg.max_steps,
                        disable=not (cfg.progress and self.main), desc=self.name)
        try:
            for i in self.bar:
                self.step = i + 1
                yield i
                if self.stopped:
                    break
        finally:  # also when the loop raises: metrics.jsonl is closed with every row written
            self.bar.close()
            self.logger.close()

    def optimizer_step(self, model, optimizer, grad_clip: float) -> torch.Tensor:
        """Sum the gradients over the processes, clip their global norm (0: no clipping), step, zero them.
        Returns the norm before clipping."""
        dist.all_reduce_grads(model, self.ranks)  # the ranks' gradients sum to the whole batch's
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def check(self, value, what: str) -> None:
        """Stop the run (FloatingPointError, one line) when a loss or held-out value is NaN or inf; the folder is
        let go, so another process may start there (a notebook that keeps the error keeps nothing locked)."""
        try:
            check_finite(value, what, self.step, self.out)
        except FloatingPointError:
            release_folder(self.out)
            raise

    def eval_due(self, every: int) -> bool:
        """Every `every` steps (0: never), at the last step, and at the step --max-seconds ends the run."""
        return bool(every and self.step % every == 0) or self.step == self.cfg.max_steps or self.out_of_time()

    def out_of_time(self) -> bool:
        """--max-seconds (0: no limit) has passed at this step; every process gets the same answer."""
        max_seconds = self.cfg.max_seconds
        if not max_seconds:
            return False
        if self._time_checked[0] != self.step:  # decided once per step: every process must agree with the others
            self._time_checked = (self.step, bool(dist.all_reduce_max(self.elapsed > max_seconds, self.ranks)))
        return self._time_checked[1]

    def log(self, step: int | None = None, **metrics) -> None:
        """A metrics.jsonl row for this step (at step 1, every --log-every steps, at the last and at the one
        --max-seconds ends), elapsed_s added; with `step` given, a row for that step now (held-out scores, the
        ones before step 1, say)."""
        if step is None:
            if self.step % self.cfg.log_every and self.step not in (1, self.cfg.max_steps) and not self.out_of_time():
                return
            step = self.step
        self.logger.log(step, **metrics, elapsed_s=self.elapsed)
        shown = {k: v for k, v in metrics.items() if isinstance(v, float) and k != "elapsed_s"}
        if step and hasattr(self, "bar"):
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(shown.items())[:3]})

    def end_step(self, **values) -> None:
        """The end of an optimizer step: state.pt (with `values`, what resumed_value() gives back) every
        --save-every steps, at --stop-after, past --max-seconds and at the last step; the last two end the loop."""
        cfg, self.saved = self.cfg, values
        self.stopped = ("--stop-after" if self.step == cfg.stop_after else
                        f"--max-seconds {cfg.max_seconds}" if self.out_of_time() else "")
        if self.main and (self.step % cfg.save_every == 0 or self.stopped or self.step == cfg.max_steps):
            save_state(self.out, self.step, cfg, **{k: o.get_state() if isinstance(o, torch.Generator) else
                                                    o.state_dict() for k, o in self.objects.items()},
                       **values, elapsed_s=self.elapsed)

    # ---- the end of a run
    @property
    def done(self) -> bool:
        """After the loop: the run writes its model (every step taken, or --max-seconds ended it)."""
        return self.step == self.cfg.max_steps or self.stopped.startswith("--max-seconds")

    def summary(self, **values) -> dict:
        """summary.json of a run: steps, seconds and steps_per_s (every session of it), `values`, the device."""
        return {"steps": self.step, "seconds": self.elapsed, "steps_per_s": self.step / max(self.elapsed, 1e-9),
                **values, "device": str(self.device)}

    def finish(self, checkpoint: dict, samples=None, summary: dict | None = None) -> bool:
        """After the loop. A complete run writes model.pt (checkpoint), samples.txt (samples(path), greedy
        answers a person reads) and summary.json (summary, if given) from rank 0, then waits for every rank (the
        next stage reads model.pt); so does a run that --max-seconds ended, its model being the one it trained in
        that time. A run --stop-after ended says how to continue and writes nothing. True: model.pt written."""
        if not self.done:
            print(f"stopped after step {self.step} (state in {self.out / 'state.pt'}); continue with --resume true")
            release_folder(self.out)
            return False
        if self.stopped.startswith("--max-seconds"):
            print(f"stopped after step {self.step}: {self.stopped} reached")
        if self.main:
            save_checkpoint(self.out / "model.pt", checkpoint)
            record_model(self.out)  # its sha256 in inputs.json: a model.pt replaced later is not reused as this one
            if samples is not None:
                samples(self.out / "samples.txt")
            if summary is not None:
                save_json(self.out / "summary.json", summary)
            release_folder(self.out)  # (held since start(): no other process wrote into it meanwhile)
        dist.barrier(self.ranks)
        return True
