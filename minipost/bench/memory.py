"""How much GPU memory a model needs to generate, fine-tune (full or LoRA) and run GRPO, by arithmetic on its shapes.

    python -m minipost.bench.memory                           # every model below, cards of 8, 12, 16, 24 GB
    python -m minipost.bench.memory --model Qwen3-0.6B --tokens 8192 --gpus 12,80

Nothing is loaded or timed. SIZES holds each model's config.json shapes as the config minipost builds; the
parameters are counted from them exactly (tests/test_memory.py checks the count against the built model and
transformers'), every other term is a formula. Legend: P parameters, P_t trained ones, b bytes per weight (bf16:
2), N tokens, L layers, C hidden size, F the MLP's width, H query heads, K key/value heads, D head size, V
vocabulary, r the LoRA rank; GiB = 2^30 bytes.

    weights      P b                 GRPO: 2 P b, the policy and its frozen reference copy
    gradients    P_t b               in the weights' dtype; no float32 master copy of the weights is counted:
                                     minipost steps the weights in their own dtype
    adamw        P_t 8               two float32 moments per trained parameter (torch.optim.AdamW keeps them in
                                     the weights' dtype, 4 bytes for bf16 weights: adam_bytes=4; 8 is the bound)
    LoRA         P_t = sum r (in + out) over q, k, v, o, gate, up, down (GPT-2: qkv, proj, fc, proj): the adapters
                                     that lora.py's default --lora-targets attn,mlp adds
    activations  N (L A + A_final)   kept from forward to backward. A, per token and layer, is what autograd saves
                                     in minipost's blocks (attention through SDPA: no T x T matrix), checked
                                     against autograd on the CPU; CUDA's kernels may keep a little more.
      decoder    A = 2 ((4 + 2b) C + 4)   each RMSNorm: the float32 input, the normalized input (for the gain's
                                          gradient), the output (the next matmul's input), a float32 1/rms
                   + 4 H D b + 4 H        q, and k, v widened to H heads (repeat_interleave), SDPA's output (the
                                          output projection reads it as a view), SDPA's float32 log-sum-exp
                   + 4 F b                gate(x), silu(gate(x)), up(x) and their product
                   + (4 + b)(H + K) D + 4 (H + K)    Qwen3: the RMSNorm on each head of q and k
                 A_final = (4 + 2b) C + 4  the final RMSNorm
      GPT-2      A = 16 C b + 4 H + 16    LayerNorm inputs and outputs 4 C b, qkv 3 C b, SDPA's output C b and
                                          log-sum-exp, the MLP's two 4C-wide tensors 8 C b, LayerNorm statistics;
                 A_final = 2 C b + 8
      checkpointing (torch.utils.checkpoint around each block; minipost's blocks do not use it):
                 N (L C b + A + A_final)  each block's input, and the one block recomputed in backward
    logits       three paths, budget(logprobs=...). N: the tokens scored, a row of V logits each. minipost takes
                 "fused" from a vocabulary of model.FUSED_VOCAB (32768) up: every model in SIZES.
      plain      N V (b + 12)        the logits whole, then logprobs.py's "reference" log-softmax: at its peak in
                                     backward three float32 N x V tensors, and the logits if the caller still holds
                                     them (CausalLM.logprobs drops them after the forward pass: N V 12)
      chunked    N V 2 b + chunk     the logits whole (the model writes them all before the log-probs; the backward
                                     reads them) and their gradient, then logprobs.py's "chunked" or "triton" path:
                                     2 floats a row, plus one float32 chunk (logprobs.CHUNK_ELEMENTS: 4 MiB)
      fused      max(R V 3 b,        logprobs.linear_logprobs, through CausalLM.logprobs: the output layer
                     R V 2 b + V C 2)     and the log-prob in one call, the logits made R = max(1,
                   + V C f           LINEAR_CHUNK_ELEMENTS // V) tokens at a time (2^24 logits: R = 110 at V
                                     151,936) and never N x V. f = 4 for bf16 weights, 0 for float32 ones. The
                                     peak is in backward, counted for the Triton path (CUDA's default), at one of
                                     two moments: as the next chunk's logits are made (b) while the previous
                                     chunk's logits and their gradient, the kernel's output in the same dtype, are
                                     still referenced (2 b), or, for bf16 weights that train, as a chunk's share
                                     of the weight's gradient is made: the chunk's logits and gradient (2 b) and
                                     the bf16 product dx^T h (V C 2) before it is added to the float32 buffer
                                     (float32 weights add in place). The PyTorch path (CPU, MPS) makes a float32
                                     copy of the logits and a float32 gradient instead, R V (b + f + 4) and
                                     R V 2 b + V C 2; tests/test_memory.py checks those against the bytes its
                                     tensors take on the CPU. One chunk (N <= R) has no previous one: R V 2 b.
                                     V C f: the float32 buffer the output layer's gradient is summed in over the
                                     chunks, counted when that layer trains (SFT, GRPO's policy; not LoRA, whose
                                     output layer is frozen). For float32 weights the buffer is the gradient
                                     itself, already in `gradients`; for bf16 it and the product cost V C 6 more
                                     than the logits-whole paths, whose matmul writes the gradient in bf16
                                     directly, so in bf16 (C > 4 R) the fused path takes less than "chunked" only
                                     when N V 4 > R V 4 + V C 6, N > R + 1.5 C (Qwen3-0.6B: 1646; Qwen3-1.7B: 3182).
                 Left out in all three: the hidden states' gradient (N C b) and a few floats a token.
    amp          2 M + 2 V C         float32 weights under CUDA's bf16 autocast (dtype_bytes=4, what the commands
                   (+ 2 V C)         run): autocast keeps a bf16 copy of every weight a matmul reads that trains,
                                     from the forward pass to the end of the step; M the trained parameters but the
                                     embedding and the output layer (the embedding is looked up, never cast). LoRA:
                                     the adapters, and the frozen block matrices' copies, which autograd keeps for
                                     the backward pass (one block's with checkpointing). The output layer's weight
                                     is copied once whichever path (the cached copy, linear_logprobs' own, or a
                                     frozen one's cast), and the fused path
                                     makes each chunk's bf16 product for its gradient, V C 2 more, when it trains.
                                     GRPO's generation holds the same copies of the policy (2 M + 2 V C). Its
                                     logits and activations are still counted at b = 4 (an upper bound: most are
                                     bf16 under autocast).
    kv_cache     N 2 L K D b         keys and values of every cached token (GPT-2: K = H, D = C / H); under
                                     autocast the cache is kept in bf16 (b = 2)
    prefill      N_prompt A + rows V 16   the prompts through the blocks at once, one layer alive at a time (no
                                     autograd); sampling's float32 logits, log-probs, probabilities and their sum

    inference  weights + kv_cache + prefill (N tokens prefilled into the cache: one prompt that long)
    sft        weights + gradients + adamw + activations + logits (+ amp)
    lora       sft with P_t the adapters: the frozen weights still carry gradients back to earlier adapters, so
               the activations are SFT's (the adapters' r-wide products, 7 r b per layer and token, left out), and
               the logits too, less the fused path's weight-gradient buffer (the output layer is frozen)
    grpo       weights + adamw (+ amp) + the larger of two phases: generation (kv_cache + prefill of the rollout batch)
               and training (gradients + activations + logits of one micro-batch of rows, logits on the answer
               tokens only, as rollout.completion_logprobs asks). The cache is freed before the backward pass
               and the gradients set to None between steps, so the two do not add up.

Left out: the CUDA context (300-500 MB) and the allocator's fragmentation: the command line keeps 10% of each
card for them.
"""
from __future__ import annotations

import math

from minipost.common import ArgumentParser, InputError, exit_on_input_error, positive_int
from minipost.decoder import DecoderConfig
from minipost.logprobs import CHUNK_ELEMENTS, LINEAR_CHUNK_ELEMENTS
from minipost.model import GPTConfig

GiB = 2 ** 30
HEADROOM = 0.10  # of each card, kept for the CUDA context and fragmentation
LOGPROBS = ("plain", "chunked", "fused")  # the log-prob paths budget() counts (module docstring)


def _decoder(family, V, C, F, L, H, K, D, tied, T):
    """config.json's vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, head_dim, tie_word_embeddings, max_position_embeddings. Shapes only: rope and eps
    stay at their defaults (memory does not depend on them); hf.model_config builds the full config."""
    return DecoderConfig(family=family, vocab_size=V, n_embd=C, intermediate_size=F, n_layer=L, n_head=H,
                         n_kv_head=K, head_dim=D, tie_embeddings=tied, block_size=T,
                         qkv_bias=family == "qwen2", qk_norm=family == "qwen3")


SIZES = {  # the public config.json of each model (Hugging Face hub)
    "Qwen3-0.6B": _decoder("qwen3", 151936, 1024, 3072, 28, 16, 8, 128, True, 40960),
    "Qwen3-1.7B": _decoder("qwen3", 151936, 2048, 6144, 28, 16, 8, 128, True, 40960),
    "Qwen2.5-0.5B": _decoder("qwen2", 151936, 896, 4864, 24, 14, 2, 64, True, 32768),
    "Qwen2.5-1.5B": _decoder("qwen2", 151936, 1536, 8960, 28, 12, 2, 128, True, 131072),
    "Llama-3.2-1B": _decoder("llama", 128256, 2048, 8192, 16, 32, 8, 64, True, 131072),
    "Llama-3.2-3B": _decoder("llama", 128256, 3072, 8192, 28, 24, 8, 128, True, 131072),
    "SmolLM2-135M": _decoder("llama", 49152, 576, 1536, 30, 9, 3, 64, True, 8192),
    "SmolLM2-360M": _decoder("llama", 49152, 960, 2560, 32, 15, 5, 64, True, 8192),
    "SmolLM2-1.7B": _decoder("llama", 49152, 2048, 8192, 24, 32, 32, 64, True, 8192),
    "GPT-2": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, gelu="tanh"),
    "GPT-2-medium": GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024, gelu="tanh"),
    "GPT-2-large": GPTConfig(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280, gelu="tanh"),
    "GPT-2-xl": GPTConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600, gelu="tanh"),
}


def num_params(cfg) -> int:
    """Every parameter of Decoder(cfg) or GPT(cfg), positions and value head included."""
    V, C, L = cfg.vocab_size, cfg.n_embd, cfg.n_layer
    if isinstance(cfg, GPTConfig):  # wte, wpe; per block two LayerNorms, qkv, proj, fc, proj (with biases)
        block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
        total = V * C + cfg.block_size * C + L * block + 2 * C
    else:
        H, K, D, F = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate_size
        attn = C * H * D + 2 * C * K * D + H * D * C  # q, k, v, o
        attn += cfg.qkv_bias * (H + 2 * K) * D + cfg.o_bias * C + cfg.qk_norm * 2 * D
        block = attn + 3 * C * F + 2 * C  # + gate, up, down, two RMSNorms
        total = V * C * (1 if cfg.tie_embeddings else 2) + L * block + C
    return total + (C + 1 if cfg.value_head else 0)


def lora_params(cfg, rank: int) -> int:
    """r (in + out) for every matrix add_lora adapts by default (attention and MLP)."""
    C, L = cfg.n_embd, cfg.n_layer
    if isinstance(cfg, GPTConfig):  # qkv C -> 3C, proj C -> C, fc C -> 4C, proj 4C -> C
        return L * rank * (4 * C + 2 * C + 5 * C + 5 * C)
    H, K, D, F = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate_size
    return L * rank * (2 * (C + H * D) + 2 * (C + K * D) + 3 * (C + F))  # q, o; k, v; gate, up, down


def activation_bytes(cfg, b: int) -> tuple[int, int]:
    """(A, A_final): bytes autograd keeps per token in each block and in the final norm (module docstring)."""
    C, H = cfg.n_embd, cfg.n_head
    if isinstance(cfg, GPTConfig):
        return 16 * C * b + 4 * H + 16, 2 * C * b + 8
    K, D, F = cfg.n_kv_head, cfg.head_dim, cfg.intermediate_size
    a = 2 * ((4 + 2 * b) * C + 4) + 4 * H * D * b + 4 * H + 4 * F * b
    if cfg.qk_norm:
        a += (4 + b) * (H + K) * D + 4 * (H + K)
    return a, (4 + 2 * b) * C + 4


def kv_bytes(cfg, b: int) -> int:
    """Bytes of the KV cache per token: keys and values, every layer, K heads of D."""
    return 2 * cfg.n_layer * cfg.kv_heads * cfg.head_dim * b


def logit_bytes(cfg, tokens: int, b: int, logprobs: str, output_trains: bool = True) -> int:
    """Bytes of the logits' peak along one of the three paths (module docstring): "plain", N V (b + 12);
    "chunked", N V 2 b and one float32 chunk of rows; "fused" (the Triton path), the larger of R V 3 b and (bf16
    weights that train) R V 2 b + V C 2, and, when the output layer trains, its float32 gradient buffer V C f."""
    V = cfg.vocab_size
    if logprobs == "plain":
        return tokens * V * (b + 12)
    if logprobs == "chunked":  # the chunk as logprobs._scratch sizes it: CHUNK_ELEMENTS // V rows, at most N
        return tokens * V * 2 * b + min(max(1, CHUNK_ELEMENTS // V), tokens) * V * 4
    R = max(1, LINEAR_CHUNK_ELEMENTS // V)  # tokens a chunk, as _LinearLogprobs makes them
    f = 4 if b < 4 else 0  # the weight's gradient is summed in float32; for float32 weights that is the gradient
    previous = b if tokens > R else 0  # the previous chunk's logits, still referenced with their gradient
    chunk = min(R, tokens) * V * (2 * b + previous)  # as the next chunk's logits are made (Triton)
    product = min(R, tokens) * V * 2 * b + V * cfg.n_embd * 2 if output_trains and b < 4 else 0  # dx^T h in bf16
    return max(chunk, product) + (V * cfg.n_embd * f if output_trains else 0)


def amp_bytes(cfg, trained_matrices: int, logprobs: str, output_trains: bool) -> int:
    """Bytes of the bf16 copies CUDA's autocast makes of float32 weights during a training step (module
    docstring): 2 M + 2 V C, and 2 V C more for the fused path's product when the output layer trains."""
    out = cfg.vocab_size * cfg.n_embd * 2
    return 2 * trained_matrices + out + (out if logprobs == "fused" and output_trains else 0)


def matrix_params(cfg) -> int:
    """The parameters of the blocks' matmuls: every parameter but the embeddings, the output layer, the norms
    and biases (what autocast casts when all train)."""
    C, L = cfg.n_embd, cfg.n_layer
    if isinstance(cfg, GPTConfig):
        return L * 12 * C * C
    H, K, D, F = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.intermediate_size
    return L * (2 * C * H * D + 2 * C * K * D + 3 * C * F)


def budget(cfg, *, mode: str, tokens: int = 0, dtype_bytes: int = 2, adam_bytes: int = 8, lora_rank: int = 0,
           checkpointing: bool = False, logprobs: str = "fused", rollout=(128, 128, 256),
           micro_batch: int = 8, amp: bool = False) -> dict[str, float]:
    """GiB of each part and the total (module docstring). tokens: sft and lora, the tokens of one forward and
    backward pass; inference, the tokens in the KV cache. grpo reads rollout = (rows, prompt tokens, new
    tokens) of one rollout batch and micro_batch, the rows of one forward and backward pass, instead.
    logprobs: the training pass's log-prob path, "plain", "chunked" or "fused" (minipost's default). amp:
    float32 weights (dtype_bytes=4) under CUDA's bf16 autocast, as the commands run on a GPU."""
    if mode not in ("inference", "sft", "lora", "grpo"):
        raise ValueError(f"mode {mode!r}: expected inference, sft, lora or grpo")
    if logprobs not in LOGPROBS:
        raise ValueError(f"logprobs {logprobs!r}: expected plain, chunked or fused")
    if mode != "grpo" and tokens < 1:
        raise ValueError(f"{mode} needs tokens >= 1")
    if (mode == "lora") != (lora_rank > 0):
        raise ValueError("lora_rank > 0 goes with mode 'lora', and only with it")
    if amp and (dtype_bytes != 4 or mode == "inference"):
        raise ValueError("amp counts float32 weights (dtype_bytes=4) trained under autocast")
    b, P = dtype_bytes, num_params(cfg)
    A, A_final = activation_bytes(cfg, b)
    kept = cfg.n_layer * cfg.n_embd * b + A if checkpointing else cfg.n_layer * A
    part = dict.fromkeys(("weights", "gradients", "adamw", "amp", "activations", "logits", "kv_cache", "prefill"), 0)
    if mode == "inference":
        part.update(weights=P * b, kv_cache=tokens * kv_bytes(cfg, b), prefill=tokens * A)
        total = sum(part.values())
    else:
        trained = lora_params(cfg, lora_rank) if mode == "lora" else P
        train_tokens, logit_tokens = tokens, tokens
        if mode == "grpo":
            rows, prompt, new = rollout
            mb = min(micro_batch or rows, rows)
            train_tokens, logit_tokens = mb * (prompt + new), mb * new
            part.update(kv_cache=rows * (prompt + new) * kv_bytes(cfg, 2 if amp else b),
                        prefill=rows * prompt * A + rows * cfg.vocab_size * 16)
        part.update(weights=(2 * P if mode == "grpo" else P + (trained if mode == "lora" else 0)) * b,
                    gradients=trained * b, adamw=trained * adam_bytes,
                    activations=train_tokens * (kept + A_final),
                    logits=logit_bytes(cfg, logit_tokens, b, logprobs, output_trains=mode != "lora"))
        if amp:  # LoRA: the adapters' copies, and the frozen matrices' that autograd keeps for backward (all
            # of them; one block's with checkpointing, which makes them again in the block it recomputes)
            frozen = matrix_params(cfg) // (cfg.n_layer if checkpointing else 1)
            matrices = lora_params(cfg, lora_rank) + frozen if mode == "lora" else matrix_params(cfg)
            part["amp"] = amp_bytes(cfg, matrices, logprobs, output_trains=mode != "lora")
        training = part["gradients"] + part["activations"] + part["logits"]
        total = part["weights"] + part["adamw"] + part["amp"] + max(training, part["kv_cache"] + part["prefill"])
    return {**{k: v / GiB for k, v in part.items()}, "total": total / GiB}


def smallest_card(total: float, gpus: list[float]) -> str:
    """The smallest card (GB, read as GiB) that holds `total` with HEADROOM to spare: "8+", or "-" for none."""
    fits = [g for g in sorted(gpus) if total <= g * (1 - HEADROOM)]
    return f"{fits[0]:g}+" if fits else "-"


def parse_gpus(text: str) -> list[float]:  # "8,12,16,24" -> [8.0, 12.0, 16.0, 24.0]
    try:
        sizes = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise InputError(f"--gpus {text!r}: expected card sizes in GB separated by commas, e.g. 8,12,16,24")
    return sizes


def main(argv=None):
    return exit_on_input_error(lambda: _main(argv))


def _main(argv=None):
    ap = ArgumentParser(description="GPU memory of each model in SIZES, by arithmetic on its shapes.")
    ap.add_argument("--model", default="all", help=f"one of {', '.join(SIZES)}, or all (default)")
    ap.add_argument("--tokens", type=positive_int, default=8 * 512, help="SFT and LoRA: tokens of one "
                    "forward/backward pass; inference: tokens in the KV cache (default: 4096 = 8 x 512)")
    ap.add_argument("--micro-batch", type=positive_int, default=8, help="GRPO: rows of one forward/backward pass")
    ap.add_argument("--gpus", default="8,12,16,24", help="card sizes in GB (default: 8,12,16,24)")
    ap.add_argument("--weight-bytes", type=int, choices=[2, 4], default=2, help="bytes a weight: 2 (bf16, the "
                    "default) or 4 (float32: what the commands load a Hugging Face folder in)")
    args = ap.parse_args(argv)
    if args.model != "all" and args.model not in SIZES:
        raise InputError(f"--model {args.model!r}: choose one of {', '.join(SIZES)}, or all")
    gpus, N, rollout = parse_gpus(args.gpus), args.tokens, (16 * 8, 128, 256)
    b = args.weight_bytes
    amp = b == 4  # float32 weights: the commands' bf16 autocast, and its copies of the weights
    grpo = dict(mode="grpo", rollout=rollout, micro_batch=args.micro_batch, dtype_bytes=b, amp=amp)
    columns = {"inference": dict(mode="inference", tokens=N, dtype_bytes=b),
               "SFT": dict(mode="sft", tokens=N, dtype_bytes=b, amp=amp),
               "LoRA r=16": dict(mode="lora", tokens=N, lora_rank=16, dtype_bytes=b, amp=amp),
               "GRPO": grpo, "GRPO chunked": {**grpo, "logprobs": "chunked"},
               "GRPO plain": {**grpo, "logprobs": "plain"}}
    weights = "bf16 weights" if b == 2 else "float32 weights under bf16 autocast (its bf16 copies counted)"
    print(f"GiB of GPU memory by arithmetic on config.json shapes: {weights}, AdamW with two float32 moments, no\n"
          f"float32 master copy, no activation checkpointing. inference: {N} tokens in the KV cache. SFT, LoRA:\n"
          f"{N} tokens a forward/backward pass. GRPO: 16 prompts x 8 answers of 128 prompt + 256 new tokens,\n"
          f"{args.micro_batch} rows a pass. Log-probs: fused (minipost's default at these vocabularies); GRPO "
          f"chunked\nand GRPO plain write the logits whole. After each total: the smallest card of "
          f"{', '.join(f'{g:g}' for g in gpus)} GB\nthat holds it with {HEADROOM:.0%} to spare (- none).\n")
    print(f"{'model':13s} {'params':>8s}" + "".join(f" {c:>12s}" for c in columns))
    for name in list(SIZES) if args.model == "all" else [args.model]:
        totals = [budget(SIZES[name], **kw)["total"] for kw in columns.values()]
        print(f"{name:13s} {num_params(SIZES[name]) / 1e6:7.1f}M"
              + "".join(f"  {t:6.1f} {smallest_card(t, gpus):>4s}" for t in totals))


if __name__ == "__main__":
    main()
