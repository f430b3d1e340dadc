"""CPU threads: how many torch uses, and how its idle threads wait. Chosen once per run, printed, never changed.

Two measured facts decide the rule (2-core machine, torch 2.13 CPU build; `python -m minipost.bench.threads`
reruns the timing half):

1. **The thread count changes the numbers, so it must not follow the load.** torch's CPU build runs its
   parallel loops on GNU OpenMP (libgomp, `torch.__config__.parallel_info()`), and a few kernels split
   their work into one partial result per thread and then add the partials:
     - LayerNorm backward (the weight and bias gradients: a sum over all B*T rows),
     - sums and means over a whole tensor of more than 32768 elements,
     - attention for a single new query against the KV cache (every generate() step after the prompt).
   Matmuls, softmax, attention over a full sequence and every forward pass of training are bitwise the same
   with 1 or 2 threads. The split sums differ in the last bit (relative 1e-6 on a LayerNorm gradient), and
   training carries that forward: `minipost.pretrain --max-steps 40` with 1 vs 2 threads logs grad norms
   that differ by 1e-6 to 3e-6 in 11 of 40 steps, weights that differ by up to 1.3e-6 and held-out losses
   of 3.334770 vs 3.334769; generate()'s log-probs differ by 5e-7 for the same weights (tokens, greedy
   samples and the logged losses were the same). With a *fixed*
   count the results are bitwise identical whatever else the machine runs, and whatever the wait policy
   (checked under a busy-loop neighbour). So the count depends on the machine (its cores) and your flag,
   never on the load, and it is not re-tuned during a run.

2. **Spinning threads are what make a shared machine slow.** After each parallel region libgomp's idle
   threads busy-wait (about 300,000 spins) for the next one. Alone, that saves a wake-up; next to another
   process it burns the core the other process needs, and two runs side by side were each 2.9x slower than
   alone. OMP_WAIT_POLICY=PASSIVE makes idle threads sleep at once: the same count and the same numbers,
   and two runs share the cores instead of fighting for them. libgomp reads the variable once, when torch
   is imported, so `minipost/__init__.py` sets it (unless you did) before any minipost module imports torch;
   `import minipost` before `import torch` in your own scripts to get it. Measured (bench/threads.py, idle 2-core,
   15 steps): alone 3.42 s vs 3.28 s for torch's default; two side by side 6.09 s each instead of 11.05 s;
   next to one busy process (shared machine) 6.1 to 6.4 s instead of 24 to 45 s.

The rule, `configure("auto")`: threads = OMP_NUM_THREADS if you set it, else the cores this process may run
on (what torch picks by default, so "auto" reproduces earlier default runs bitwise), with PASSIVE waiting.
`configure("3")` fixes 3 threads: use it to reproduce a run made on a machine with another core count.

Measured (`python -m minipost.bench.threads`, 15 nano training steps, median of 3, idle 2-core machine,
2026-12-02): torch's default 3.28 s alone and 11.05 s per run with two side by side (3.37x); 1 thread 5.76 s
alone (1.76x slower), 5.89 s side by side; auto (2 threads, PASSIVE) 3.42 s alone (1.04x) and 6.09 s side by
side (1.78x its time alone); GOMP_SPINCOUNT=10000 instead of PASSIVE: 3.09 s alone, 9.15 s side by side.
Each of two runs side by side within 1.5x of its time alone is out of reach for any fixed
setting here: two runs that each need the CPU work of one 1-thread run (5.8 s) cannot both finish before
5.8 s on two cores, which is 1.7x the 2-thread time alone; PASSIVE comes within 4% of that floor. Only a
thread count that follows the load could do better, and that would make the numbers follow the load (fact 1).
"""
from __future__ import annotations

import os
import sys

import torch

from minipost.common import InputError

# minipost/__init__.py records whether torch was imported before it could set the wait policy.
_POLICY_NOTE = {
    "PASSIVE": "idle threads sleep (PASSIVE)",
    "ACTIVE": "idle threads spin (ACTIVE)",
}


HELP = "CPU threads: auto (this machine's cores; the numbers never depend on the load) or a count"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), the count libgomp and torch default to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def parse_threads(spec) -> int | None:
    """'auto' -> None (let the rule decide), '2' or 2 -> 2. Anything else is an InputError that says why."""
    text = str(spec).strip().lower()
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise InputError(f"--threads {spec!r}: expected 'auto' or a whole number of threads >= 1") from None
    if n < 1:
        raise InputError(f"--threads {spec!r}: at least 1 thread (use 1 for a quiet neighbour of other runs)")
    return n


def _env_threads() -> int | None:
    """OMP_NUM_THREADS as libgomp reads it ('4' or a nested list '4,2': the first number); None if unset/bad."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) >= 1 else None


def choose_threads(spec="auto") -> tuple[int, str]:
    """(thread count, where it came from). Depends on the spec, OMP_NUM_THREADS and the cores; not the load."""
    n = parse_threads(spec)
    cores = usable_cores()
    if n is not None:
        return n, f"--threads {n}" + (f", more than the {cores} cores" if n > cores else "")
    env = _env_threads()
    if env is not None:
        return env, f"auto: OMP_NUM_THREADS={env}"
    return cores, f"auto: {cores} cores"


def wait_policy() -> str:
    """How libgomp's idle threads wait in this process, as a few words for the start-up line."""
    import minipost

    policy = os.environ.get("OMP_WAIT_POLICY", "").strip().upper()
    if minipost.TORCH_IMPORTED_FIRST and not minipost.WAIT_POLICY_FROM_USER:
        return "idle threads spin (torch was imported before minipost, so the PASSIVE default came too late)"
    spin = f", GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}" if os.environ.get("GOMP_SPINCOUNT") else ""
    return _POLICY_NOTE.get(policy, f"OMP_WAIT_POLICY={policy or 'unset'}") + spin


def configure(spec="auto") -> str:
    """Set torch's thread count by the rule above and return the one line to print at the start of a run."""
    n, why = choose_threads(spec)
    torch.set_num_threads(n)
    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"threads: {n} ({why}{load}); {wait_policy()}"


if __name__ == "__main__":  # python -m minipost.threads [auto|N]: show what a run would use
    from minipost.common import exit_on_input_error

    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print("python -m minipost.threads [auto|N]: the thread setting a run would use, and torch's parallel info")
        raise SystemExit(0)
    print(exit_on_input_error(lambda: configure(sys.argv[1] if len(sys.argv) > 1 else "auto")))
    print(torch.__config__.parallel_info())
