"""Everything minipost measures on a GPU, in one call that fits 10 minutes, written to bench/results/:

    python -m minipost.bench.gpu                    # on the GPU machine
    python -m minipost.bench.gpu --smoke            # tiny shapes, any device: checks the script itself

1. kernels   `python -m minipost.kernels.bench` at N 8192, V 50,257 and 151,936, bf16: every token_logprobs
             path (eager, torch.compile, chunked, Triton, Liger when installed), forward and forward+backward
             ms, peak extra memory, and each path's time over the floor: the logits read twice and the gradient
             written once, at the copy bandwidth measured in the same run.
2. fused     the output layer + log-prob at N 8192, H 1024, V 151,936, bf16, forward + backward (gradients of
             the hidden states and the weight): eager (the logits whole, log_softmax), torch.compile of the
             same, minipost's logits-then-Triton path, linear_logprobs (fused; also at chunks of 2^22 and 2^26
             logits), and Liger's fused linear cross-entropy with reduction="none" when it imports (its default,
             and with the weight's gradient summed in float32 as linear_logprobs sums it). ms and peak extra
             memory.
3. grpo      one GRPO step of a random-weight model of Qwen3-0.6B's shapes, as --preset hf runs (float32
             weights, bf16 matmuls under autocast, activation checkpointing, AdamW): 16 prompts x 8 answers of
             up to 256 new tokens sampled with the KV cache, then the update (the frozen reference's log-probs,
             the policy's, backward, AdamW) four ways: plain or fused log-probs, in passes of 8 rows or of all
             128. Tokens/s, and the absolute peak memory against 24 GB.
4. pipeline  the `small` preset pipeline with --max-steps cut and its card on 50 prompts a domain, in a
             subprocess: seconds per training step of each stage (from its metrics.jsonl), and each stage's time
             at the preset's own step counts estimated from them.

Each part's rows are printed as they come and saved, with the device, torch and triton versions, the commit
and the date, in bench/results/<device>-<date>.json. A part that fails (out of memory, a package missing, a
timeout) is recorded with its error and what it measured before, and the rest run. Liger-Kernel is measured
when it imports: the GPU machine reaches no package registry, so its wheel travels with the command (pip
install it first).
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


def measure(fn, device, reps: int, reset=None) -> dict:
    """fn() timed (median ms of reps runs after one warm-up) and its peak memory beyond what existed before;
    reset() first frees what the last call left (its gradients), so that the peak counts them."""
    from minipost.kernels.bench import peak_extra_bytes
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t))
    if reset is not None:
        reset()
    return {"ms": statistics.median(times), "peak_gib": peak_extra_bytes(fn, device) / GiB}


# ------------------------------------------------------------------------------------------------------------
# 1. the token_logprobs kernels (the kernels' own benchmark, as a subprocess)

def kernels(device, smoke: bool) -> dict:
    args = ["--n", "64", "--vocab", "1000", "--dtype", "fp32", "--reps", "1"] if smoke else \
        ["--n", "8192", "--vocab", "50257", "151936", "--dtype", "bf16"]
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.json"  # written after each (V, dtype): a timeout keeps what was measured
        try:  # its table goes straight to this process's output (the log), row by row
            proc = subprocess.run([sys.executable, "-m", "minipost.kernels.bench", "--device", device, *args,
                                   "--json", str(rows_file)], timeout=150, stderr=subprocess.DEVNULL)
            failed = f"rc {proc.returncode}" if proc.returncode else ""
        except subprocess.TimeoutExpired:
            failed = "timed out after 150 s"
        rows = json.loads(rows_file.read_text()) if rows_file.is_file() else []
    if failed and not rows:
        raise RuntimeError(failed)
    return {"rows": rows, **({"error": failed} if failed else {})}


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
            paths["liger, float32 accum."] = lambda h, w, y: -liger_fused_linear_cross_entropy(  # as fused sums
                h, w, y, reduction="none", accum_dtype=torch.float32)  # the weight's gradient
        except Exception as e:  # not installed here: the row says so
            say(f"liger: not measured ({type(e).__name__}: {str(e)[:80]})")
    def no_grads():
        hidden.grad = weight.grad = None

    rows = {}
    say(f"output layer + log-prob, N {N}, H {H}, V {V:,}, {str(dtype)[6:]}, forward + backward:")
    for name, fn in paths.items():
        def step():
            hidden.grad = weight.grad = None
            fn(hidden, weight, targets).sum().backward()
        try:
            rows[name] = measure(step, device, reps=3 if smoke else 10, reset=no_grads)
            say(f"  {name:26s} {rows[name]['ms']:9.2f} ms  {rows[name]['peak_gib']:7.2f} GiB")
        except Exception as e:  # e.g. out of memory: recorded, the others run
            rows[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            say(f"  {name:26s} failed: {rows[name]['error']}")
            hidden.grad = weight.grad = None
            if device == "cuda":
                torch.cuda.empty_cache()
    import minipost.logprobs as lp
    default = lp.LINEAR_CHUNK_ELEMENTS
    for elements in (2 ** 22, 2 ** 26) if device == "cuda" else ():  # the fused path's chunk of logits, 4x either way
        lp.LINEAR_CHUNK_ELEMENTS = elements
        try:
            name = f"linear_logprobs, 2^{elements.bit_length() - 1}"

            def step():
                hidden.grad = weight.grad = None
                linear_logprobs(hidden, weight, targets).sum().backward()
            rows[name] = measure(step, device, reps=10, reset=no_grads)
            say(f"  {name:26s} {rows[name]['ms']:9.2f} ms  {rows[name]['peak_gib']:7.2f} GiB")
        except Exception as e:
            rows[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        finally:
            lp.LINEAR_CHUNK_ELEMENTS = default
    return {"N": N, "H": H, "V": V, "dtype": str(dtype), "chunk_elements": default, "rows": rows}


# ------------------------------------------------------------------------------------------------------------
# 3. one GRPO step of a 0.6B-shaped model

def grpo(device, smoke: bool) -> dict:
    """One rollout, then the update measured four ways: log-probs plain (the logits whole, then token_logprobs:
    Triton on CUDA) or fused, in micro-batches of 8 rows (the recipe) or of the whole batch. Activation
    checkpointing on, as --preset hf runs. Peak memory is absolute: the weights of the policy and the reference,
    AdamW's moments (made before the first row), the gradients and the pass; "fits" compares the larger of the
    rollout's and the update's peaks with 24 GB."""
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
    cuda = device == "cuda"
    torch.manual_seed(0)
    policy = Decoder(cfg).to(device)  # float32 weights; the rollout's functions autocast to bf16 on CUDA
    policy.checkpointing = True
    reference = Decoder(cfg).to(device).requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    for p in policy.parameters():  # AdamW's moments made now, so every row below holds them
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ids = [torch.randint(0, cfg.vocab_size, (prompt_len,)).tolist() for _ in range(prompts)]
    rows = prompts * group
    out = {"shape": f"{prompts} prompts x {group} answers, {prompt_len} + {new} tokens", "checkpointing": True}
    say(f"GRPO step, {sum(p.numel() for p in policy.parameters()) / 1e6:.0f}M weights, {out['shape']}, "
        "activation checkpointing:")
    peak = lambda: torch.cuda.max_memory_allocated() / GiB if cuda else None  # noqa: E731
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    policy.eval()
    ro = sample_completions(policy, ids, group, new, temperature=1.0,
                            generator=torch.Generator(device=device).manual_seed(1))
    sync(device)
    sample_s, tokens = time.perf_counter() - t0, int(ro.completion_mask.sum())
    out["rollout"] = {"seconds": sample_s, "tokens": tokens, "peak_gib": peak()}
    say(f"  rollout: {sample_s:.2f} s, {tokens} tokens, peak {'-' if peak() is None else f'{peak():.2f} GiB'}")
    advantages = group_advantages(torch.rand(rows, device=device), group)  # the step's cost ignores the reward
    plain = "triton" if cuda else "chunked"
    for impl, rows_a_pass in ((plain, micro), ("fused", micro), (plain, rows), ("fused", rows)):
        name = f"{'plain' if impl == plain else 'fused'}, {rows_a_pass} rows a pass"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            policy.train()
            warm = ro.select(torch.arange(min(rows_a_pass, rows), device=device))  # untimed: the kernels' first
            completion_logprobs(policy, warm, 1.0, impl, entropy=True)[0].sum().backward()  # compile, cuBLAS's start
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            t1 = time.perf_counter()
            for start in range(0, rows, rows_a_pass):
                idx = torch.arange(start, min(start + rows_a_pass, rows), device=device)
                sub = ro.select(idx)
                with torch.no_grad():  # as rollout.sample_and_score: the reference, and on CUDA pi_old again
                    ref = completion_logprobs(reference, sub, 1.0, impl)  # at the training pass's precision
                    old = completion_logprobs(policy, sub, 1.0, impl) if cuda else sub.logprobs
                logps, entropy = completion_logprobs(policy, sub, 1.0, impl, entropy=True)  # as grpo.update
                loss, _ = grpo_loss(logps, old, ref, advantages[idx], sub.completion_mask, beta=0.04)
                (loss * len(idx) / rows).backward()
                del ref, old, logps, entropy, loss
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            update_s = time.perf_counter() - t1
            top = None if not cuda else max(peak(), out["rollout"]["peak_gib"])
            out[name] = {"impl": impl, "rows_a_pass": rows_a_pass, "update_s": update_s,
                         "tokens_per_s": tokens / (sample_s + update_s), "peak_gib": peak(),
                         "fits_24gb": None if top is None else top * GiB <= 24e9}
            say(f"  {name:26s} update {update_s:7.2f} s  {tokens / (sample_s + update_s):9.0f} tokens/s  peak "
                f"{'-' if top is None else f'{peak():.2f} GiB, fits 24 GB: {top * GiB <= 24e9}'}")
        except torch.OutOfMemoryError as e:  # (on a card that cannot hold the logits whole)
            optimizer.zero_grad(set_to_none=True)
            out[name] = {"error": f"OutOfMemoryError: {str(e)[:200]}", "fits_24gb": False}
            say(f"  {name:26s} out of memory")
    return out


# ------------------------------------------------------------------------------------------------------------
# 4. the small preset pipeline, cut short

def seconds_per_step(metrics: Path) -> tuple[float, int, float] | None:
    """From a stage's metrics.jsonl: (seconds per training step, the last step, its elapsed seconds), the
    steps timed between the first and the last training row (rows with a learning rate), so the time before the
    first step (building, the reference's pass, the first evaluation) is not counted in it."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    train = [r for r in rows if "lr" in r and "elapsed_s" in r]
    if len(train) < 2 or train[-1]["step"] == train[0]["step"]:
        return None
    first, last = train[0], train[-1]
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"]), last["step"], last["elapsed_s"]


def pipeline(device, smoke: bool, steps: int) -> dict:
    """The pipeline at `steps` a stage, its card on 50 prompts a domain. Each stage's whole time at the
    preset's steps is estimated as its measured time plus the steps it did not take at its measured seconds
    per step; the periodic held-out evaluations of the longer run are not in that estimate, and the card's time
    is the cut card's."""
    from minipost import pipeline as pl
    preset, steps, limit = ("nano", 2, 1) if smoke else ("small", steps, 50)
    stages = "pretrain,sft" if smoke else pl.Config().stages
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "minipost.pipeline", "--preset", preset, "--max-steps", str(steps), "--out", out,
               "--stages", stages, "--progress", "false", "--device", device, "--eval-limit", str(limit)]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
            failed = (proc.stderr.strip().splitlines() or ["failed"])[-1] if proc.returncode else ""
        except subprocess.TimeoutExpired:
            failed = "timed out after 170 s"
        wall = time.perf_counter() - t
        cfg = pl.Config(preset=preset, out=out, stages=stages)
        full, measured = {}, {}
        for stage in cfg.stage_list():
            _, stage_cfg = pl.stage_config(stage, cfg, Path(out))
            full[stage] = stage_cfg.max_steps
            got = seconds_per_step(Path(out) / stage / "metrics.jsonl")
            if got:
                measured[stage] = got
        timings = json.loads((Path(out) / "timings.json").read_text()) if (Path(out) / "timings.json").is_file() else {}
    if not measured:
        raise RuntimeError(failed or "no stage logged two training steps")
    per_step = {s: m[0] for s, m in measured.items()}
    stage_s = {s: timings.get(s, m[2]) + m[0] * (full[s] - m[1]) for s, m in measured.items()}
    estimate = sum(stage_s.values()) + timings.get("evals", 0.0)
    say(f"{preset} pipeline, {steps} steps a stage, {wall:.0f} s{f' ({failed})' if failed else ''}: seconds per "
        "step " + ", ".join(f"{s} {v:.3f}" for s, v in per_step.items()) +
        f"; at the preset's steps ({', '.join(f'{s} {n}' for s, n in full.items())}) the stages would take about "
        f"{sum(stage_s.values()) / 60:.1f} min, and the card, on {limit} prompts a domain, "
        f"{timings.get('evals', float('nan')):.0f} s")
    return {"steps": steps, "eval_limit": limit, "seconds_per_step": per_step, "preset_steps": full,
            "stage_estimate_s": stage_s, "estimate_s": estimate, "timings": timings,
            **({"error": failed} if failed else {})}


def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(lambda: _main(argv))


def _main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description="minipost's GPU measurements in one call (bench/results/).")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device: checks the script")
    ap.add_argument("--pipeline-steps", type=int, default=5, help="steps a stage in the pipeline part")
    ap.add_argument("--out", default="bench/results", help="folder for the results' .json")
    ap.add_argument("--commit", default="", help="the commit measured (default: git rev-parse, where git and .git are)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        ap.error(f"--parts {args.parts!r}: choose among {', '.join(PARTS)}")
    if args.pipeline_steps < 2:
        ap.error("--pipeline-steps must be at least 2 (seconds per step are timed between the first and the last)")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {out}: cannot write there ({e.strerror or type(e).__name__})")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    commit = args.commit
    if not commit:
        try:  # (a copy of the tree without .git, or no git: say so with --commit)
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    result = {"device": name, "torch": torch.__version__, "triton": triton_version, "smoke": args.smoke,
              "commit": commit or None,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "parts": {}}
    say(f"{name}, torch {torch.__version__}, triton {triton_version}, {result['date']}")
    runs = {"kernels": lambda: kernels(device, args.smoke), "fused": lambda: fused(device, args.smoke),
            "grpo": lambda: grpo(device, args.smoke),
            "pipeline": lambda: pipeline(device, args.smoke, args.pipeline_steps)}
    stem = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() + "-" + result["date"][:10] + \
        ("-smoke" if args.smoke else "")
    earlier = out / f"{stem}.json"  # a rerun the same day keeps the parts it does not run again
    if earlier.is_file():
        try:
            result["parts"] = {k: v for k, v in json.loads(earlier.read_text()).get("parts", {}).items()
                               if k not in parts}
        except (ValueError, AttributeError):
            pass  # not a results file: it is written over
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
