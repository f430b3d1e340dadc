"""Everything minipost measures on a GPU, in one call that fits 10 minutes, written to bench/results/:

    python -m minipost.bench.gpu                    # on the GPU machine
    python -m minipost.bench.gpu --smoke            # tiny shapes, any device: checks the script itself

1. kernels   `python -m minipost.kernels.bench` at N 8192, V 50,257 and 151,936, bf16: every token_logprobs
             path (eager, torch.compile, chunked, Triton, Liger when installed), forward and forward+backward
             ms, peak extra memory, and the floor: the logits read twice and the gradient written once, at the
             copy bandwidth measured in the same run.
2. fused     the output layer + log-prob at N 8192, H 1024, V 151,936, bf16, forward + backward (gradients of
             the hidden states and the weight): eager (the logits whole, log_softmax), torch.compile of the
             same, minipost's logits-then-Triton path, linear_logprobs (fused), and Liger's fused linear
             cross-entropy with reduction="none" when it imports. ms and peak extra memory.
3. grpo      one GRPO step of a random-weight model of Qwen3-0.6B's shapes, as the recipes run (float32 weights,
             bf16 matmuls under autocast, AdamW): 16 prompts x 8 answers of 256 new tokens sampled with the KV
             cache, a frozen reference's log-probs, then the update in micro-batches of 8 rows; tokens/s and
             peak memory with the plain (chunked) and the fused log-probs.
4. pipeline  the `small` preset pipeline with --max-steps cut, in a subprocess: seconds per step of each stage,
             and the whole run's time extrapolated from them at the preset's own step counts.

Each part's rows are printed as they come and saved, with the device, torch and triton versions and the date,
in bench/results/<device>-<date>.json (the kernels' table as printed). A part that fails (out of memory, a
package missing) is recorded with its error, and the rest run. Liger-Kernel is measured when it imports: the
GPU machine reaches no package registry, so its wheel travels with the command (pip install it first).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from minipost.common import ArgumentParser, autocast, exit_on_input_error

say = functools.partial(print, flush=True)
PARTS = ("kernels", "fused", "grpo", "pipeline")
GiB = 2 ** 30


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, reps: int) -> dict:
    """fn() timed (median ms of reps runs after one warm-up) and its peak memory beyond what existed before."""
    from minipost.kernels.bench import peak_extra_bytes
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t))
    return {"ms": statistics.median(times), "peak_gib": peak_extra_bytes(fn, device) / GiB}


# ------------------------------------------------------------------------------------------------------------
# 1. the token_logprobs kernels (the kernels' own benchmark, as a subprocess)

def kernels(device, smoke: bool) -> dict:
    args = ["--n", "64", "--vocab", "1000", "--dtype", "fp32", "--reps", "1"] if smoke else \
        ["--n", "8192", "--vocab", "50257", "151936", "--dtype", "bf16"]
    proc = subprocess.run([sys.executable, "-m", "minipost.kernels.bench", "--device", device, *args],
                          capture_output=True, text=True, timeout=150)
    say(proc.stdout)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
    return {"table": proc.stdout}


# ------------------------------------------------------------------------------------------------------------
# 2. the output layer + log-prob

def fused(device, smoke: bool) -> dict:
    from minipost.logprobs import linear_logprobs, token_logprobs
    N, H, V = (64, 32, 1000) if smoke else (8192, 1024, 151_936)
    dtype = torch.float32 if smoke or device != "cuda" else torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(N, H, device=device, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device=device, generator=g) / H ** 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), device=device, generator=g)

    def eager(h, w, y):  # the logits whole, then the log-softmax whole
        return torch.log_softmax((h @ w.T).float(), dim=-1).gather(1, y[:, None]).squeeze(1)

    paths = {"eager": eager,
             "logits + token_logprobs": lambda h, w, y: token_logprobs(h @ w.T, y),
             "linear_logprobs (fused)": lambda h, w, y: linear_logprobs(h, w, y)}
    if device == "cuda":
        paths["torch.compile(eager)"] = torch.compile(eager, dynamic=False)
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
            paths["liger fused linear CE"] = lambda h, w, y: -liger_fused_linear_cross_entropy(h, w, y,
                                                                                               reduction="none")
        except Exception as e:  # not installed here: the row says so
            say(f"liger: not measured ({type(e).__name__}: {str(e)[:80]})")
    rows = {}
    say(f"output layer + log-prob, N {N}, H {H}, V {V:,}, {str(dtype)[6:]}, forward + backward:")
    for name, fn in paths.items():
        def step():
            hidden.grad = weight.grad = None
            fn(hidden, weight, targets).sum().backward()
        try:
            rows[name] = measure(step, device, reps=3 if smoke else 10)
            say(f"  {name:26s} {rows[name]['ms']:9.2f} ms  {rows[name]['peak_gib']:7.2f} GiB")
        except Exception as e:  # e.g. out of memory: recorded, the others run
            rows[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            say(f"  {name:26s} failed: {rows[name]['error']}")
            hidden.grad = weight.grad = None
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"N": N, "H": H, "V": V, "dtype": str(dtype), "rows": rows}


# ------------------------------------------------------------------------------------------------------------
# 3. one GRPO step of a 0.6B-shaped model

def grpo(device, smoke: bool) -> dict:
    from minipost.bench.memory import SIZES
    from minipost.decoder import Decoder
    from minipost.grpo import group_advantages, grpo_loss
    from minipost.rollout import completion_logprobs, sample_completions
    cfg = SIZES["Qwen3-0.6B"]
    prompts, group, new, prompt_len, micro = 16, 8, 256, 128, 8
    if smoke:
        cfg = dataclasses.replace(cfg, vocab_size=1000, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, head_dim=16,
                                  intermediate_size=128)
        prompts, group, new, prompt_len, micro = 2, 2, 8, 8, 2
    torch.manual_seed(0)
    policy = Decoder(cfg).to(device)  # float32 weights; autocast makes the matmuls bf16 on CUDA
    reference = Decoder(cfg).to(device).requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    ids = [torch.randint(0, cfg.vocab_size, (prompt_len,)).tolist() for _ in range(prompts)]
    out = {"shape": f"{prompts} prompts x {group} answers, {prompt_len} + {new} tokens, micro-batches of {micro}"}
    say(f"GRPO step, {sum(p.numel() for p in policy.parameters()) / 1e6:.0f}M weights, {out['shape']}:")
    for impl in ("chunked", "fused"):
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if device == "cuda" else 0
        sync(device)
        t0 = time.perf_counter()
        policy.eval()
        with autocast(torch.device(device)):
            ro = sample_completions(policy, ids, group, new, temperature=1.0,
                                    generator=torch.Generator(device=device).manual_seed(1))
        sync(device)
        t1 = time.perf_counter()
        rewards = torch.rand(len(ro), device=device)  # a random reward: the step's cost does not depend on it
        advantages = group_advantages(rewards, group)
        policy.train()
        for start in range(0, len(ro), micro):
            rows = torch.arange(start, min(start + micro, len(ro)), device=device)
            sub = ro.select(rows)
            with torch.no_grad(), autocast(torch.device(device)):
                ref = completion_logprobs(reference, sub, 1.0, impl)
            with autocast(torch.device(device)):
                logps = completion_logprobs(policy, sub, 1.0, impl)
            loss, _ = grpo_loss(logps, sub.logprobs, ref, advantages[rows], sub.completion_mask, beta=0.04)
            (loss * len(rows) / len(ro)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        t2 = time.perf_counter()
        peak = (torch.cuda.max_memory_allocated() - base) / GiB if device == "cuda" else None
        tokens = int(ro.completion_mask.sum())
        out[impl] = {"sample_s": t1 - t0, "update_s": t2 - t1, "tokens": tokens,
                     "tokens_per_s": tokens / (t2 - t0), "peak_gib": peak}
        say(f"  {impl:8s} sample {t1 - t0:7.2f} s  update {t2 - t1:7.2f} s  {tokens / (t2 - t0):9.0f} tokens/s  "
            f"peak {'-' if peak is None else f'{peak:.2f} GiB'}")
    return out


# ------------------------------------------------------------------------------------------------------------
# 4. the small preset pipeline, cut short

def pipeline(device, smoke: bool, steps: int) -> dict:
    from minipost import pipeline as pl
    preset, steps = ("nano", 1) if smoke else ("small", steps)
    stages = "pretrain,sft" if smoke else pl.Config().stages
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "minipost.pipeline", "--preset", preset, "--max-steps", str(steps), "--out", out,
               "--stages", stages, "--progress", "false", "--device", device] + (["--eval-limit", "1"] if smoke else [])
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
        wall = time.perf_counter() - t
        if proc.returncode:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
        timings = json.loads((Path(out) / "timings.json").read_text())
        cfg = pl.Config(preset=preset, out=out, stages=stages)
        full = {}
        for stage in cfg.stage_list():
            _, stage_cfg = pl.stage_config(stage, cfg, Path(out))
            full[stage] = stage_cfg.max_steps
    per_step = {s: timings[s] / steps for s in full}
    estimate = sum(per_step[s] * full[s] for s in full) + timings.get("evals", 0.0)
    say(f"{preset} pipeline, {steps} steps a stage, {wall:.0f} s: seconds per step " +
        ", ".join(f"{s} {v:.2f}" for s, v in per_step.items()) +
        f"; at the preset's steps ({', '.join(f'{s} {n}' for s, n in full.items())}) the run would take about "
        f"{estimate / 60:.0f} min (the card's evaluation as measured here)")
    return {"steps": steps, "seconds_per_step": per_step, "preset_steps": full, "estimate_s": estimate,
            "timings": timings}


def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(lambda: _main(argv))


def _main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description="minipost's GPU measurements in one call (bench/results/).")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device: checks the script")
    ap.add_argument("--pipeline-steps", type=int, default=10, help="steps a stage in the pipeline part")
    ap.add_argument("--out", default="bench/results", help="folder for the results' .json")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        ap.error(f"--parts {args.parts!r}: choose among {', '.join(PARTS)}")
    if args.pipeline_steps < 1:
        ap.error("--pipeline-steps must be at least 1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {"device": name, "torch": torch.__version__, "triton": triton_version, "smoke": args.smoke,
              "commit": git.stdout.strip() or None,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "parts": {}}
    say(f"{name}, torch {torch.__version__}, triton {triton_version}, {result['date']}")
    runs = {"kernels": lambda: kernels(device, args.smoke), "fused": lambda: fused(device, args.smoke),
            "grpo": lambda: grpo(device, args.smoke),
            "pipeline": lambda: pipeline(device, args.smoke, args.pipeline_steps)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() + "-" + result["date"][:10] + \
        ("-smoke" if args.smoke else "")
    for part in parts:
        t = time.perf_counter()
        try:
            result["parts"][part] = runs[part]()
        except Exception as e:  # one part's failure (out of memory, a missing package) leaves the others
            say(f"{part}: failed\n{traceback.format_exc()}")
            result["parts"][part] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        result["parts"][part]["seconds"] = time.perf_counter() - t
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")  # each part's: a cut run keeps them
    say(f"wrote {out / (stem + '.json')}")


if __name__ == "__main__":
    main()
