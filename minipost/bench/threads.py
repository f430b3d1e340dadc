"""Benchmark: which CPU thread setting keeps a run fast alone *and* next to a second run.

Each setting trains the nano GPT (vocab 1030, batch 16 x 256, AdamW, the same step as pretrain.py) in a
fresh subprocess, first alone, then two copies started together. Only the optimizer steps are timed: every
worker imports torch, builds the model and takes two warm-up steps, then waits until all workers of the
measurement are ready, so both copies of a pair run their timed steps at the same time.

What it checks: alone, at most 10% slower than plain torch (its default threads) on an idle machine;
side by side, each run within 1.5x of its own time alone.

The table gives medians over --repeats measurements (settings interleaved, so a change in the machine's load
hits all of them), and "other load": CPU cores used by processes that are not ours during the measurement,
from /proc/stat (0.0 means the machine was ours). Rerun it on an idle machine for clean numbers.

Measured 2026-12-02 on the project's idle 2-core machine (these defaults; the table is in README.md):
torch default 3.28 s alone, 11.05 s per run side by side; auto (PASSIVE) 3.42 s and 6.09 s; 1 thread 5.76 s
and 5.89 s. Read it with the bound in mind: a step runs ~1.7x faster on 2 threads than on 1, so two runs
sharing 2 cores can each take no less than the 1-thread time (~1.7x a 2-thread run alone). PASSIVE's pair
time is 3% above that bound; the spinning default's is ~1.9x above it. Reaching 1.5x would need each run to
drop to 1 thread while the other runs, and the thread count changes the numbers (minipost/threads.py).

Run:  python -m minipost.bench.threads                 (about 4 minutes on an idle 2-core machine)
      python -m minipost.bench.threads --steps 8 --repeats 1   (a quick look)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from minipost.common import ArgumentParser, exit_on_input_error, positive_int

# name -> (how the worker sets threads, extra environment; None: unset). "torch default" imports torch before minipost,
# so it runs exactly as plain torch does: default thread count, libgomp's default spin-then-sleep waiting.
SETTINGS = {
    "torch default (spin)": ("torch-default", {}),
    "1 thread": ("1", {}),
    "auto (PASSIVE)": ("auto", {}),
    "auto + GOMP_SPINCOUNT=10000": ("auto", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}),
}
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "OMP_DYNAMIC")


def worker(spec: str, steps: int) -> None:
    """Train the nano GPT for `steps` timed steps after a 'go' line on stdin; print one JSON line."""
    import torch

    from minipost.logprobs import token_logprobs
    from minipost.model import GPT, PRESETS, GPTConfig

    line = f"threads: {torch.get_num_threads()} (plain torch)"
    if spec != "torch-default":
        from minipost.threads import configure
        line = configure(spec)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1030, **PRESETS["nano"]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)

    def step():
        x = torch.randint(0, 1030, (16, 257), generator=gen)  # (B, T+1)
        logits = model(x[:, :-1])  # (B, T, V)
        loss = -token_logprobs(logits, x[:, 1:]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(2):
        step()
    print("ready", flush=True)
    sys.stdin.readline()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - cpu0, "loss": loss,
                      "line": line}), flush=True)


def _busy_jiffies() -> int:
    """CPU time the whole machine has spent busy (user, nice, system, irq, softirq, steal), in clock ticks."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def measure(name: str, copies: int, steps: int) -> dict:
    """Start `copies` workers of one setting, time their steps together. -> seconds per run, other load."""
    how, extra = SETTINGS[name]
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    env.update({k: v for k, v in extra.items() if v is not None})
    unset = [k for k, v in extra.items() if v is None]  # removed after minipost's defaults, before torch loads
    first = "torch" if how == "torch-default" else "minipost"  # minipost first, as `python -m minipost.X` does
    code = (f"import {first}, os; [os.environ.pop(k, None) for k in {unset!r}]; "
            f"from minipost.bench.threads import worker; worker({how!r}, {steps})")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{name}: a worker failed to start (exit {p.wait()})")
    busy0, t0 = _busy_jiffies(), time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in procs]
    wall = time.perf_counter() - t0
    busy = (_busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
    for p in procs:
        p.wait()
    ours = sum(r["cpu"] for r in results)  # CPU seconds of the workers' timed steps, all their threads
    return {"seconds": [r["seconds"] for r in results], "line": results[0]["line"],
            "other_load": max(0.0, busy - ours) / wall, "loss": results[0]["loss"]}


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=positive_int, default=15, help="timed optimizer steps per run")
    ap.add_argument("--repeats", type=positive_int, default=3, help="measurements per setting and case (median shown)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    for n in names:
        if n not in SETTINGS:
            ap.error(f"unknown setting {n!r}; choose from: {', '.join(SETTINGS)}")

    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, nano GPT, {args.steps} timed steps per run, "
          f"median of {args.repeats}; load average at start: {open('/proc/loadavg').read().split()[0]}")
    solo = {n: [] for n in names}
    pair = {n: [] for n in names}
    loads = {n: [] for n in names}
    lines = {}
    t_start = time.perf_counter()
    for r in range(args.repeats):
        for n in names:
            m = measure(n, 1, args.steps)
            solo[n].append(m["seconds"][0])
            lines[n] = m["line"]
            loads[n].append(m["other_load"])
            m = measure(n, 2, args.steps)
            pair[n] += m["seconds"]  # both runs of the pair
            loads[n].append(m["other_load"])
            print(f"  repeat {r + 1}: {n:28s} alone {solo[n][-1]:6.2f} s   side by side "
                  f"{m['seconds'][0]:6.2f} / {m['seconds'][1]:6.2f} s   other load {loads[n][-2]:.2f} / "
                  f"{loads[n][-1]:.2f}", flush=True)

    base = statistics.median(solo[names[0]])
    print(f"\nmedians ({time.perf_counter() - t_start:.0f} s in all); 'vs default' compares with "
          f"'{names[0]}' alone\n")
    print(f"{'setting':28s} {'alone s':>8s} {'vs default':>10s} {'pair s/run':>10s} {'pair/alone':>10s} "
          f"{'other load':>10s}  targets (alone <= 1.10, pair/alone <= 1.50)")
    for n in names:
        s, p = statistics.median(solo[n]), statistics.median(pair[n])
        ok = ("ok" if s / base <= 1.10 else "SLOW ALONE") + ", " + ("ok" if p / s <= 1.50 else "SLOW PAIR")
        print(f"{n:28s} {s:8.2f} {s / base:9.2f}x {p:10.2f} {p / s:9.2f}x {max(loads[n]):10.2f}  {ok}")
    print("\nstart-up lines:")
    for n in names:
        print(f"  {n:28s} {lines[n]}")


if __name__ == "__main__":
    exit_on_input_error(main)
