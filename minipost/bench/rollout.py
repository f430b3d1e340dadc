"""Benchmark: how much the KV cache, and dropping finished rows, speed up rollouts.

Without a cache, generating token t means running the whole sequence (prompt + t tokens) through the model
again: O(n^2) token-positions for n new tokens. With the cache (model.generate), each step runs one new
position against stored keys and values: O(n). This script times both on the same model and prompts,
greedy, for `--new-tokens` completion tokens (no stop token, so both do the full length), and checks that
they produce the same tokens.

With a trained checkpoint (`--ckpt`) it also times what RL really samples: the world's RL prompts, chat
template, stop at <|end|>, 16 prompts x 8 samples, 48 new tokens, temperature 1, with finished rows leaving
the batch (generate's `compact`, the default) and without, and checks both sample the same tokens.

    python -m minipost.bench.rollout                        # nano-sized random GPT, 64 new tokens
    python -m minipost.bench.rollout --ckpt runs/sft/model.pt --batch 64 --device cuda
"""
from __future__ import annotations

import statistics
import time

import torch

from minipost.common import (DATA_DIR, DEVICE_HELP, ArgumentParser, InputError, exit_on_input_error, pick_device,
                             positive_int, read_jsonl)
from minipost.model import GPT, PRESETS, GPTConfig, left_pad
from minipost.checkpoints import load_model
from minipost.tokenizer import render_prompt, special_id


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
    """Median wall time of `repeats` calls (after one warm-up call), and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def bench_compaction(model, enc, repeats: int, device, seed: int) -> dict:
    """An RL rollout batch (16 prompts x 8 samples of the world's rl.jsonl, 48 new tokens, stop at <|end|>,
    temperature 1) with and without compaction; same generator seed for both."""
    prompts = [render_prompt(enc, r["prompt"]) for r in read_jsonl(DATA_DIR / "rl.jsonl")[:16] for _ in range(8)]
    idx, mask = left_pad(prompts, special_id(enc, "<|pad|>"), device)  # (128, P)

    def run(compact):
        g = torch.Generator(device=device).manual_seed(seed)
        return model.generate(idx, mask, max_new_tokens=48, temperature=1.0, stop_token=special_id(enc, "<|end|>"),
                              pad_id=special_id(enc, "<|pad|>"), generator=g, compact=compact)

    t_on, (tok_on, m_on, _) = timed(lambda: run(True), repeats, device)
    t_off, (tok_off, _, _) = timed(lambda: run(False), repeats, device)
    print(f"  RL batch 16 x 8, 48 new tokens, mean completion {m_on.sum(1).float().mean():.1f} tokens, "
          f"longest {m_on.shape[1]}:")
    print(f"  finished rows dropped: {t_on:7.3f} s")
    print(f"  finished rows kept:    {t_off:7.3f} s  ({t_off / t_on:.1f}x slower); same tokens: "
          f"{bool(torch.equal(tok_on, tok_off))}")
    return {"compact_s": t_on, "no_compact_s": t_off, "same_tokens": bool(torch.equal(tok_on, tok_off))}


def main(argv=None) -> dict:
    ap = ArgumentParser(description="Time KV-cached generation against full recomputation.")
    ap.add_argument("--ckpt", default="", help="a minipost checkpoint (default: a random GPT of --preset size)")
    ap.add_argument("--preset", default="nano", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=positive_int, default=32, help="sequences generated together")
    ap.add_argument("--prompt-tokens", type=positive_int, default=32)
    ap.add_argument("--new-tokens", type=positive_int, default=64)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if args.ckpt:
        model, enc, _ = load_model(args.ckpt, device)
    else:
        model = GPT(GPTConfig(vocab_size=1030, **PRESETS[args.preset])).to(device).eval()
    V = model.cfg.vocab_size
    if args.prompt_tokens + args.new_tokens > model.cfg.block_size:
        raise InputError(f"--prompt-tokens {args.prompt_tokens} + --new-tokens {args.new_tokens}: more than the "
                         f"model's block_size {model.cfg.block_size}")
    idx = torch.randint(0, V, (args.batch, args.prompt_tokens), device=device)  # (B, P)
    mask = torch.ones_like(idx)  # (B, P)

    t_cache, (tok_cache, _, _) = timed(lambda: model.generate(idx, mask, max_new_tokens=args.new_tokens,
                                                              temperature=0), args.repeats, device)
    t_full, tok_full = timed(lambda: generate_without_cache(model, idx, mask, args.new_tokens), args.repeats, device)
    agree = (tok_cache == tok_full).float().mean().item()  # float rounding can flip a near-tie now and then
    n_tok = args.batch * args.new_tokens
    print(f"device {device}, {model.num_params() / 1e6:.2f}M params, batch {args.batch}, prompt {args.prompt_tokens}"
          f" tokens, {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"  KV cache:       {t_cache:7.3f} s  ({n_tok / t_cache:9,.0f} tokens/s)")
    print(f"  full recompute: {t_full:7.3f} s  ({n_tok / t_full:9,.0f} tokens/s)")
    print(f"  speedup {t_full / t_cache:.1f}x; same greedy tokens at {100 * agree:.1f}% of positions")
    result = {"cache_s": t_cache, "full_s": t_full, "speedup": t_full / t_cache, "agree": agree}
    if args.ckpt:
        result.update(bench_compaction(model, enc, args.repeats, device, args.seed))
    return result


if __name__ == "__main__":
    exit_on_input_error(main)
