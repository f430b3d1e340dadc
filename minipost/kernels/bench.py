"""Benchmark every log-prob implementation in one process, on one device: `python -m minipost.kernels.bench`.

On a GPU (defaults: N = 8192 tokens, V in {32768, 50257, 151936}, bf16 and fp32) it times, with
`triton.testing.do_bench` medians: reference (eager PyTorch), chunked, torch.compile(reference), triton,
and Liger-Kernel's cross entropy when it is installed. On a CPU (default N = 2048, V = 32768, fp32) it runs
the CPU paths (reference, chunked; torch.compile with --compile) and times them with medians of --reps runs.
On a CPU shared with other busy processes, try --threads 1 as well: the chunked path runs many short
parallel regions, and each one waits for its slowest thread, which a busy neighbour may have descheduled.

Columns
  fwd ms      forward only (no_grad), median
  f+b ms      forward + backward with upstream grad g (ones), grad written to x.grad, median
  x floor     f+b ms / the floor: 3*N*V*bytes (the least traffic, below) at the copy bandwidth measured here
  fwd TB/s    N*V*bytes / fwd time: the one read of the logits a forward cannot avoid
  %copy       fwd TB/s against the copy bandwidth measured here (x.copy_ of the same tensor: read+write)
  f+b TB/s    3*N*V*bytes / f+b time: read x (fwd), read x + write grad (bwd), the minimum traffic
  extra MB    peak memory allocated during forward+backward beyond the inputs, gradient included
  x grad      extra MB / size of the gradient buffer (N*V*bytes): 1.00 is the floor
  err / gerr  max |error| of the log-probs / of the gradient against float64 on the same inputs
  vs eager    f+b time and extra memory divided by the reference's (same process, same inputs)

Peak memory. CUDA: torch.cuda.max_memory_allocated() minus what was allocated before the call.
CPU: PyTorch has no CPU peak counter, and RSS is blurred by malloc keeping freed pages, so we record every
allocation and free made by PyTorch's CPU allocator with torch.profiler(profile_memory=True), replay
them in time order, and report the highest running total. That counts exactly the tensor bytes the call
allocates (scratch and result), not Python objects or allocator slack.

`--sweep` (GPU) times the triton kernels under other launch configs, to tune `pick_config` (`--no-table`: only
that). `--json PATH` writes the table's rows, floor included, as they are measured.
Every line is printed with flush=True, so a redirected or remote run shows its rows as they come. On a
CPU the profiler logs a line per call to stderr; `2>/dev/null` keeps only the table.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch

from minipost.common import ArgumentParser, positive_int
from minipost.logprobs import _reference, token_logprobs

GPU_VOCABS, GPU_N = (32768, 50257, 151936), 8192
CPU_VOCABS, CPU_N = (32768,), 2048
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
say = functools.partial(print, flush=True)  # rows appear as they are measured, even through a pipe


# ------------------------------------------------------------------------------------------------
# implementations: each maps (x (N, V), y (N,)) -> (N,) float32 log-probs
# ------------------------------------------------------------------------------------------------
def make_impls(device: str, compile_ref: bool) -> dict:
    impls = {
        "reference": lambda x, y: token_logprobs(x, y, impl="reference"),
        "chunked": lambda x, y: token_logprobs(x, y, impl="chunked"),
    }
    if compile_ref:
        # A fresh compile per (V, dtype) table block: dynamo's cache is reset so that earlier shapes
        # cannot use up its recompile limit (after which it silently runs eager), and dynamic=False
        # specialises on the exact shape, as a training step with fixed shapes would.
        torch._dynamo.reset()
        impls["compile(ref)"] = torch.compile(lambda x, y: _reference(x, y, 1.0), dynamic=False)
    if device == "cuda":
        impls["triton"] = lambda x, y: token_logprobs(x, y, impl="triton")
        try:  # optional comparison; never a dependency
            from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss

            liger = LigerCrossEntropyLoss(reduction="none")
            # Liger writes its gradient into the logits tensor during forward (in place), so every
            # call destroys x; timing is unaffected, the error is measured on a fresh copy.
            impls["liger(ce)"] = lambda x, y: -liger(x, y)
        except Exception:
            pass
    return impls


# ------------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------------
def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, reps, grad_to_none=None) -> float:
    """Median wall time of fn() in ms (do_bench on CUDA, perf_counter medians on CPU)."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def peak_extra_bytes(fn, device) -> int:
    """Peak bytes allocated while fn() runs, beyond what was allocated before (see module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    total = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()  # + for an allocation, - for a free
        peak = max(peak, total)
    return peak


@torch.no_grad()
def float64_errors(x, y, logp, grad, rows=256) -> tuple[float, float]:
    """max |logp - truth| and max |grad - truth| in float64, a few rows at a time (no N x V float64)."""
    err = gerr = 0.0
    for i in range(0, x.shape[0], rows):
        x64 = x[i : i + rows].double()  # (r, V)
        lp = torch.log_softmax(x64, -1)  # (r, V)
        yi = y[i : i + rows, None]
        err = max(err, (logp[i : i + rows].double() - lp.gather(1, yi).squeeze(1)).abs().max().item())
        g64 = -lp.exp_()  # upstream grad is ones: d logp / dx = onehot - softmax
        g64.scatter_add_(1, yi, torch.ones_like(yi, dtype=g64.dtype))
        gerr = max(gerr, (grad[i : i + rows].double() - g64).abs().max().item())
    return err, gerr


def copy_tbps(x, device, reps) -> float:
    out = torch.empty_like(x)
    ms = time_ms(lambda: out.copy_(x), device, reps)
    return 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e12


def bench_one(name, fn, x, y, device, reps) -> dict:
    nbytes = x.numel() * x.element_size()
    g = torch.ones(y.shape, device=device)  # upstream gradient of the log-probs

    # error first, on a fresh copy (liger overwrites its input)
    xe = x.clone().requires_grad_()
    logp = fn(xe, y)
    logp.backward(g)
    err, gerr = float64_errors(x, y, logp.detach(), xe.grad)
    del xe, logp

    with torch.no_grad():
        fwd = time_ms(lambda: fn(x, y), device, reps)
    xg = x.clone().requires_grad_()

    def fwd_bwd():
        fn(xg, y).backward(g)

    fb = time_ms(fwd_bwd, device, reps, grad_to_none=[xg])
    xg.grad = None
    extra = peak_extra_bytes(fwd_bwd, device)
    return dict(impl=name, fwd=fwd, fb=fb, fwd_tbps=nbytes / (fwd * 1e-3) / 1e12,
                fb_tbps=3 * nbytes / (fb * 1e-3) / 1e12, extra=extra, grad_bytes=nbytes, err=err, gerr=gerr)


def sweep(device, N, vocabs, dtypes):
    from minipost.kernels.logprobs_triton import pick_config, triton_token_logprobs

    say("\ntriton launch sweep (ms, median):  V  dtype  warps  chunk  block x tiles  fwd  f+b")
    for V in vocabs:
        for dname in dtypes:
            x = torch.randn(N, V, device=device).to(DTYPES[dname])
            y = torch.randint(0, V, (N,), device=device)
            g = torch.ones(N, device=device)
            xg = x.clone().requires_grad_()
            for warps in (4, 8, 16):
                for chunk in (4096, 8192, 16384, 32768, 65536):
                    cfg = pick_config(V, x.element_size(), target_chunk=chunk, num_warps=warps)
                    with torch.no_grad():
                        fwd = time_ms(lambda: triton_token_logprobs(x, y, 1.0, cfg), device, 3)
                    fb = time_ms(lambda: triton_token_logprobs(xg, y, 1.0, cfg).backward(g), device, 3,
                                 grad_to_none=[xg])
                    say(f"  {V:>6} {dname:>5} {warps:>5} {chunk:>6} {cfg.block:>6} x {cfg.tiles:<3}"
                          f" {fwd:7.3f} {fb:7.3f}")
            del x, xg


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="auto | cuda | cpu")
    ap.add_argument("--n", type=positive_int, default=None, help=f"tokens (default {GPU_N} on GPU, {CPU_N} on CPU)")
    ap.add_argument("--vocab", type=positive_int, nargs="+", default=None, help="vocabulary sizes")
    ap.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES), help="logit dtypes")
    ap.add_argument("--reps", type=positive_int, default=7, help="CPU: timed runs per median")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="include torch.compile(reference) (default: on for CUDA, off for CPU)")
    ap.add_argument("--sweep", action="store_true", help="GPU: also sweep triton launch configs")
    ap.add_argument("--table", action=argparse.BooleanOptionalAction, default=True,
                    help="time every path (--no-table with --sweep: the sweep alone)")
    ap.add_argument("--json", default="", help="also write the table's rows to this .json file")
    ap.add_argument("--threads", type=positive_int, default=None, help="CPU: torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if not args.table and not (args.sweep and on_cuda):
        ap.error("--no-table: nothing left to measure (--sweep runs on a CUDA device only)")
    if args.json:
        try:  # before anything is timed: a path it cannot write is one line now, not after the first table
            Path(args.json).write_text("[]\n")
        except OSError as e:
            ap.error(f"--json {args.json}: cannot write there ({e.strerror or type(e).__name__})")

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    on_gpu = device == "cuda"
    N = args.n or (GPU_N if on_gpu else CPU_N)
    vocabs = args.vocab or (GPU_VOCABS if on_gpu else CPU_VOCABS)
    dtypes = args.dtype or (["bf16", "fp32"] if on_gpu else ["fp32"])
    compile_ref = on_gpu if args.compile is None else args.compile
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    what = torch.cuda.get_device_name() if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    say(f"token_logprobs bench, {time.strftime('%Y-%m-%d %H:%M %Z')}: {what}; torch {torch.__version__}, "
        f"triton {triton_version}; N={N}")
    head = (f"{'V':>6} {'dtype':>5} {'impl':>12} {'fwd ms':>8} {'f+b ms':>8} {'x floor':>7} {'fwd TB/s':>8} "
            f"{'%copy':>6} {'f+b TB/s':>8} {'extra MB':>9} {'x grad':>6} {'err':>8} {'gerr':>8} {'vs eager t/mem':>14}")
    if args.table:
        say(head)
        say("-" * len(head))
    rows = []
    for V in vocabs if args.table else []:
        for dname in dtypes:
            x = (torch.randn(N, V, device=device) * 4).to(DTYPES[dname])  # (N, V)
            y = torch.randint(0, V, (N,), device=device)  # (N,)
            copy = copy_tbps(x, device, args.reps)
            floor = 3 * x.numel() * x.element_size() / (copy * 1e12) * 1e3  # ms: read the logits twice, write
            base = None  # the gradient once, at the copy bandwidth
            for name, fn in make_impls(device, compile_ref).items():
                try:
                    r = bench_one(name, fn, x, y, device, args.reps)
                except Exception as e:  # e.g. an optional library with another API
                    say(f"{V:>6} {dname:>5} {name:>12}  failed: {type(e).__name__}: {str(e)[:60]}")
                    continue
                base = base or r
                rows.append(dict(V=V, dtype=dname, N=N, copy_tbps=copy, floor_ms=floor, x_floor=r["fb"] / floor, **r))
                say(f"{V:>6} {dname:>5} {name:>12} {r['fwd']:8.3f} {r['fb']:8.3f} {r['fb'] / floor:7.2f} "
                    f"{r['fwd_tbps']:8.3g} "
                    f"{100 * r['fwd_tbps'] / copy:5.0f}% {r['fb_tbps']:8.3g} {r['extra'] / 2**20:9.1f} "
                    f"{r['extra'] / r['grad_bytes']:6.2f} {r['err']:8.1e} {r['gerr']:8.1e} "
                    f"{r['fb'] / base['fb']:6.2f}/{r['extra'] / base['extra']:.2f}")
            say(f"{'':>12} copy bandwidth {copy:.3g} TB/s; floor (f+b) {floor:.3f} ms; gradient buffer "
                f"{x.numel() * x.element_size() / 2**20:.1f} MB")
            if args.json:  # after each (V, dtype): a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
            del x
            if on_gpu:
                torch.cuda.empty_cache()
    if args.sweep and on_gpu:
        sweep(device, N, vocabs, dtypes)


if __name__ == "__main__":
    main()
