"""The output layer + log-prob of N tokens, forward and backward, three ways, each in a fresh process: peak
memory above the inputs (the weight's gradient included) and time, with ratios against the logits made whole.

    python -m minipost.bench.linear_logprobs                  # N 4096, H 1024, V 151,936 (Qwen), float32
    python -m minipost.bench.linear_logprobs --n 1024 --v 50257

    whole      logits = hidden @ W^T (N, V), then token_logprobs(impl="reference"): log_softmax whole
    chunked    the same logits whole, then token_logprobs(impl="chunked"): two floats a row kept, not N x V
    fused      linear_logprobs(impl="chunked"): a chunk of tokens' logits at a time, never all N x V

Peak memory is the process's peak resident size (getrusage) minus its size once the inputs exist; time is
the median of --repeats runs after the first (which sets the peak). Both on the CPU, in float32.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from minipost.common import ArgumentParser, exit_on_input_error

PATHS = ("whole", "chunked", "fused")


def rss_gib() -> float:
    """This process's resident size now, GiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def measure(path: str, n: int, h: int, v: int, repeats: int) -> dict:
    """In this process: one forward + backward of `path`, its peak memory, then `repeats` timed ones."""
    from minipost.logprobs import linear_logprobs, token_logprobs
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).requires_grad_()  # (N, H)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).requires_grad_()  # (V, H)
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g)  # d loss / d logp

    def step():
        if path == "fused":
            logp = linear_logprobs(hidden, weight, targets, impl="chunked")
        else:
            logp = token_logprobs(hidden @ weight.T, targets, impl="reference" if path == "whole" else "chunked")
        (logp * upstream).sum().backward()  # hidden.grad (N, H) and weight.grad (V, H)
        hidden.grad = weight.grad = None

    base = rss_gib()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - base  # (ru_maxrss: KiB on Linux)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"path": path, "peak_gib": peak, "seconds": statistics.median(times)}


def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(lambda: _main(argv))


def _main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Peak memory and time of the output layer + log-prob, three ways.")
    parser.add_argument("--n", type=int, default=4096, help="tokens")
    parser.add_argument("--h", type=int, default=1024, help="hidden size")
    parser.add_argument("--v", type=int, default=151_936, help="vocabulary size")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path, after the first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each measuring process")
    parser.add_argument("--one", choices=PATHS, help=argparse_suppress())
    args = parser.parse_args(argv)
    if min(args.n, args.h, args.v, args.repeats, args.threads) < 1:
        parser.error("--n, --h, --v, --repeats and --threads must be at least 1")
    if args.one:  # the child: measure one path, print it as JSON
        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.one, args.n, args.h, args.v, args.repeats)))
        return
    whole_gib = args.n * args.v * 4 / 2**30
    print(f"N {args.n}, H {args.h}, V {args.v:,}, float32, {args.threads} threads: the logits whole are "
          f"{whole_gib:.2f} GiB, the weight's gradient {args.v * args.h * 4 / 2**30:.2f} GiB")
    rows = []
    for path in PATHS:
        cmd = [sys.executable, "-m", "minipost.bench.linear_logprobs", "--one", path, *(argv or sys.argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            print(f"{path}: failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})")
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r["path"] == "whole"), None)
    print(f"{'path':<9}{'peak GiB':>10}{'x less':>8}{'seconds':>10}{'x time':>8}")
    for r in rows:
        less = f"{base['peak_gib'] / r['peak_gib']:.1f}" if base else "-"
        ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
        print(f"{r['path']:<9}{r['peak_gib']:>10.2f}{less:>8}{r['seconds']:>10.2f}{ratio:>8}")


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
