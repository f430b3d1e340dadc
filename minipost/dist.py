"""Data parallelism with `torchrun`: the same command on N processes, each computing its share of every batch.

    torchrun --nproc_per_node 2 -m minipost.pretrain --out runs/base      # 2 processes (GPUs, or CPU with gloo)

torchrun starts N copies of the command and tells each its RANK and the WORLD_SIZE in the environment; the
process group is made from them (`nccl` on CUDA, `gloo` on CPU). One optimizer step, on every rank:

    1. every rank draws the same global batch of B rows (same seed, same step)
    2. rank r keeps its B / N rows (`shard`) and runs forward + backward on them, its loss scaled as its
       share of the global mean, so the gradients of the ranks *sum* to the gradient of the whole batch
    3. `all_reduce_grads` sums every gradient over the ranks (one all-reduce per tensor)
    4. every rank makes the same optimizer step on the same summed gradient: the weights stay identical

So `--batch-size` is the global batch whatever N is, and a run gives the same result on 1 or N processes,
up to the order of float additions (a test checks it, tests/test_dist.py). The RL files split prompts, not
rows: a rank samples the whole groups of its `--prompts-per-step / N` prompts (group advantages need no
communication), drawing the random numbers one process would draw for those rows (GPT.generate's rows_of)
and then the ones it did not use (skip_draws), so N processes sample the very tokens one process samples. This is what
DistributedDataParallel does, written out: DDP also overlaps the all-reduce with backward, bucket by bucket,
which matters on GPUs and not for reading. Only rank 0 prints, logs and writes files (config.json,
metrics.jsonl, state.pt, model.pt, samples.txt); every rank reads state.pt to resume.

Beyond data parallelism: when the model no longer fits one GPU, FSDP2 (`torch.distributed.fsdp.fully_shard`)
shards the weights, gradients and optimizer state over the ranks as well; minipost does not build it.
"""
from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from minipost.common import InputError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0    # this process
    world: int = 1   # processes in all
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints, logs and writes."""
        return self.rank == 0


def setup(device: torch.device) -> Ranks:
    """The ranks torchrun set in the environment (none: one process, nothing to set up) -> Ranks. On CUDA each
    rank takes the GPU of its LOCAL_RANK. Other ranks' stdout goes to /dev/null, so output reads as one run's."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # the group's threads are stopped before the interpreter exits: left to the end of the process, gloo's can
        # still be running when their objects are destroyed ("terminate called without an active exception",
        # SIGABRT; seen once in this suite's two-process pretraining test)
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    return Ranks(rank, world, device)


def shard(batch_size: int, r: Ranks, flag: str = "--batch-size") -> slice:
    """This rank's rows of a global batch: a contiguous B / N of them."""
    if batch_size % r.world:
        raise InputError(f"{flag} {batch_size}: not divisible by the {r.world} processes of torchrun")
    n = batch_size // r.world
    return slice(r.rank * n, (r.rank + 1) * n)


def all_reduce_grads(model: torch.nn.Module, r: Ranks) -> None:
    """Sum every parameter's gradient over the ranks (each rank's loss was its share of the global mean)."""
    if r.world == 1:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:  # a rank whose rows never reached this weight still takes part in the sum
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


def all_reduce_sum(value: float, r: Ranks) -> float:
    """A number summed over the ranks (a logged loss, a token count)."""
    if r.world == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=r.device)
    dist.all_reduce(t)
    return t.item()


def all_gather_lists(items: list, r: Ranks) -> list:
    """Every rank's list, concatenated in rank order (small Python lists: rewards, lengths, domains)."""
    if r.world == 1:
        return list(items)
    parts = [None] * r.world
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def main_first(fn, r: Ranks):
    """fn() on rank 0 alone (taking a folder: its lock, its files); the other ranks wait for it and get None.
    An InputError it raises is raised on every rank with the same message, so a refusal stops the whole job
    with one line per rank instead of one rank's line and the others' tracebacks at their next all-reduce."""
    result, refused = None, ""
    if r.main:
        try:
            result = fn()
        except InputError as e:
            refused = str(e)
    refused = all_gather_lists([refused], r)[0]
    if refused:
        raise InputError(refused)
    return result


def all_reduce_max(value: int, r: Ranks) -> int:
    if r.world == 1:
        return value
    t = torch.tensor([int(value)], dtype=torch.long, device=r.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def skip_draws(gen: torch.Generator, steps_done: int, rows: int, r: Ranks) -> None:
    """Keep the sampling generators of the ranks where one process's would be. GPT.generate draws `rows`
    uniforms per decoding step (rows_of: every row of the global batch, each rank using its own), and one
    process runs as many steps as the longest answer of the whole batch; a rank whose answers were shorter
    draws the steps it did not run, so every rank's generator (and the next rollout) matches one process."""
    longest = all_reduce_max(steps_done, r)
    for _ in range(longest - steps_done):
        torch.rand(rows, 1, generator=gen, device=gen.device)


def barrier(r: Ranks) -> None:
    """Wait for every rank (before rank 0 writes what the others will read, or they exit)."""
    if r.world > 1:
        dist.barrier()


def teardown(r: Ranks) -> None:
    if r.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
