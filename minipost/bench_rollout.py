"""Benchmark: how much the KV cache speeds up rollouts.

Without a cache, generating token t means running the whole sequence (prompt + t tokens) through the model
again: O(n^2) token-positions for n new tokens. With the cache (model.generate), each step runs one new
position against stored keys and values: O(n). This script times both on the same model and prompts,
greedy, for `--new-tokens` completion tokens (no stop token, so both do the full length), and checks that
they produce the same tokens.

    python -m minipost.bench_rollout                        # nano-sized random GPT, 64 new tokens
    python -m minipost.bench_rollout --ckpt runs/sft/model.pt --batch 64 --device cuda
"""
from __future__ import annotations

import argparse
import time

import torch

from minipost.common import pick_device
from minipost.model import GPT, PRESETS, GPTConfig


@torch.no_grad()
def generate_without_cache(model, idx, attention_mask, max_new_tokens: int):
    """Greedy decoding that re-runs the full sequence every step (what a cache avoids). -> (B, N) tokens."""
    out = []
    for _ in range(max_new_tokens):
        logits = model(idx, attention_mask)[:, -1]  # (B, V): the whole (B, P + t) sequence, every step
        nxt = logits.float().argmax(dim=-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        idx = torch.cat([idx, nxt], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(nxt)], dim=1)
    return torch.cat(out, dim=1)


def timed(fn, repeats: int, device) -> tuple[float, object]:
    """Best wall time of `repeats` calls (after one warm-up call), and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Time KV-cached generation against full recomputation.")
    ap.add_argument("--ckpt", default="", help="a minipost checkpoint (default: a random GPT of --preset size)")
    ap.add_argument("--preset", default="nano", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=32, help="sequences generated together")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if args.ckpt:
        from minipost.model import load_model
        model, _, _ = load_model(args.ckpt, device)
    else:
        model = GPT(GPTConfig(vocab_size=1030, **PRESETS[args.preset])).to(device).eval()
    V = model.cfg.vocab_size
    idx = torch.randint(0, V, (args.batch, args.prompt_tokens), device=device)  # (B, P)
    mask = torch.ones_like(idx)  # (B, P)

    t_cache, (tok_cache, _, _) = timed(lambda: model.generate(idx, mask, max_new_tokens=args.new_tokens,
                                                              temperature=0), args.repeats, device)
    t_full, tok_full = timed(lambda: generate_without_cache(model, idx, mask, args.new_tokens), args.repeats, device)
    agree = (tok_cache == tok_full).float().mean().item()  # float rounding can flip a near-tie now and then
    n_tok = args.batch * args.new_tokens
    print(f"device {device}, {model.num_params() / 1e6:.2f}M params, batch {args.batch}, prompt {args.prompt_tokens}"
          f" tokens, {args.new_tokens} new tokens, best of {args.repeats}")
    print(f"  KV cache:       {t_cache:7.3f} s  ({n_tok / t_cache:9,.0f} tokens/s)")
    print(f"  full recompute: {t_full:7.3f} s  ({n_tok / t_full:9,.0f} tokens/s)")
    print(f"  speedup {t_full / t_cache:.1f}x; same greedy tokens at {100 * agree:.1f}% of positions")
    return {"cache_s": t_cache, "full_s": t_full, "speedup": t_full / t_cache, "agree": agree}


if __name__ == "__main__":
    main()
