"""Per-token log-probabilities, log pi(y_t | y_<t), without the memory bill.

Every objective in minipost (SFT, DPO, RLOO, GRPO, PPO) needs, for each position t of a sequence,

    logp_t = log softmax(x_t / T)[y_t] = (x_t[y_t] / T - m_t) - log sum_v exp(x_t[v] / T - m_t)

where x_t is the row of logits (V entries), y_t the target token, T the sampling temperature and
m_t = max_v x_t[v] / T. Subtracting the row max m_t keeps exp() from overflowing; writing the result as
`(x[y] - m) - log(s)` rather than `x[y] - (m + log s)` keeps digits: the first subtraction is exact when
x[y] and m are close, while `m + log s` rounds to the spacing of m (1e-3 when logits sit near 1e4).

The gradient of logp_t with respect to the row, times the upstream gradient g_t, is

    d logp_t / d x_t[v] * g_t = g_t / T * (onehot(y_t)[v] - p_t[v]),   p_t = softmax(x_t / T)

so backward needs nothing but the logits and two floats per row (m_t and log s_t) to rebuild p_t.

Three implementations, one entry point (`token_logprobs`):

- ``reference``: `log_softmax(x.float() / T).gather(...)`. Obvious and correct; it is the definition.
- ``chunked``:   a `torch.autograd.Function` that walks the rows in chunks, keeps only (m, log s) per row,
  and recomputes softmax chunk by chunk in backward. Pure PyTorch; the default on CPU and MPS.
- ``triton``:    fused GPU kernels in `minipost/kernels/logprobs_triton.py` (one sweep over each row with an
  online logsumexp in forward, one read + one write per element in backward). Default on CUDA.

Memory, for N = 8192 tokens and V = 151936 (a Qwen-sized vocabulary), bf16 logits (2.49 GB themselves):

    reference   forward keeps log_softmax(x) in float32 for backward: N*V*4 = 4.98 GB; forward also
                makes float32 copies (x.float(), x / T), and backward a float32 one-hot gradient and
                the float32 log_softmax gradient before casting to bf16. Measured peak (bench.py, CPU):
                three float32 N x V tensors alive at once, 14.9 GB = 6x the bf16 gradient
                (3x for fp32 logits).
    chunked     forward keeps N*2*4 bytes = 64 KB; at any moment one float32 chunk (CHUNK_ELEMENTS*4 =
                4 MB) of scratch; backward writes the gradient (N*V*2 = 2.49 GB, in the logits' dtype,
                which autograd needs anyway) plus the same 4 MB chunk.
    triton      like chunked, without the chunk: 64 KB of row statistics plus the gradient itself.

`linear_logprobs(hidden, weight, targets)` goes one step further: it takes the final hidden states and the
output layer's weight, and makes the logits themselves a chunk of tokens at a time, so that they never exist
whole either (the section at the end of this file).

Shapes: legend used in comments below: N = number of rows (all leading dims flattened), V = vocabulary,
C = rows in one chunk.
"""
from __future__ import annotations

import math
import os

import torch

IMPLS = ("reference", "chunked", "triton", "auto")

# Chunk size of the chunked path, in elements: C = max(1, CHUNK_ELEMENTS // V) rows per chunk.
# 2**20 float32 elements = 4 MiB of scratch, small next to any real gradient buffer and big enough that
# the per-chunk Python overhead is negligible (32 rows at V = 32768).
CHUNK_ELEMENTS = 1 << 20


# ---------------------------------------------------------------------------------------------------
# reference: the definition
# ---------------------------------------------------------------------------------------------------
def _reference(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (..., V) float32
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)


# ---------------------------------------------------------------------------------------------------
# chunked: the same math, a few rows at a time
# ---------------------------------------------------------------------------------------------------
def _row_blocks(x: torch.Tensor, start: int = 0) -> list[tuple[int, torch.Tensor]]:
    """Split a (..., V) tensor into 2-D (rows, V) *views* (no copy), each with its first row index.

    A contiguous tensor is one block. A slice such as `logits[:, :-1]` (B, T-1, V) cannot be viewed as
    (B*(T-1), V) because the gap between batches breaks the uniform row stride, so we split along dim 0.
    """
    if x.dim() == 1:
        return [(start, x.view(1, -1))]
    try:
        return [(start, x.view(-1, x.shape[-1]))]
    except RuntimeError:  # not viewable as (rows, V): recurse over the first dim
        blocks, rows_per_item = [], math.prod(x.shape[1:-1])
        for i, sub in enumerate(x.unbind(0)):
            blocks += _row_blocks(sub, start + i * rows_per_item)
        return blocks


def _chunks(x: torch.Tensor):
    """Yield (first_row, rows) chunk views of about CHUNK_ELEMENTS elements each, in row order."""
    V = x.shape[-1]
    C = max(1, CHUNK_ELEMENTS // max(V, 1))
    for start, block in _row_blocks(x):
        for i in range(0, block.shape[0], C):
            yield start + i, block[i : i + C]  # (C, V) view


def _scratch(x: torch.Tensor) -> torch.Tensor:
    """One float32 (C, V) buffer for all chunks: allocating a fresh one per chunk costs page faults."""
    V = x.shape[-1]
    C = min(max(1, CHUNK_ELEMENTS // max(V, 1)), max(1, x.numel() // max(V, 1)))
    return torch.empty((C, V), dtype=torch.float32, device=x.device)


def _stats_(z: torch.Tensor, y: torch.Tensor, T: float):
    """In place on z (C, V) float32 logits, targets y (C,) -> log-probs, row max m and log s, each (C,)."""
    if T != 1.0:
        z.div_(T)  # x / T, correctly rounded (as the reference is on the CPU; PyTorch on CUDA multiplies by
        # 1/T instead, which may differ by an ulp)
    m = z.amax(dim=-1)  # (C,)
    z.sub_(m[:, None])  # (C, V) x/T - m <= 0: exp cannot overflow
    zy = z.gather(1, y[:, None]).squeeze(1)  # (C,) x_y/T - m, taken before z is overwritten
    logs = z.exp_().sum(dim=-1).log_()  # (C,) log sum exp(x/T - m), in [0, log V]
    return zy - logs, m, logs  # (x_y/T - m) - log s


def _grad_(z: torch.Tensor, y, m, logs, g: torch.Tensor, T: float) -> torch.Tensor:
    """In place on z (C, V) float32 logits -> g/T * (onehot(y) - p), (C, V); g (C,) already divided by T."""
    if T != 1.0:
        z.div_(T)
    # p = exp((x/T - m) - log s): the same rounding path as forward, so p matches its softmax
    z.sub_(m[:, None]).sub_(logs[:, None]).exp_()  # (C, V) p
    z.mul_(-g[:, None])  # (C, V) -g/T * p
    return z.scatter_add_(1, y[:, None], g[:, None])  # + g/T at the target: g/T * (onehot - p)


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(x / T)[y] in chunks of rows; saves (m, log s) per row, recomputes softmax in backward."""

    @staticmethod
    def forward(ctx, logits, targets, temperature):
        V = logits.shape[-1]
        N = targets.numel()
        y = targets.reshape(-1)  # (N,) int64 (small copy at most)
        out = torch.empty(N, dtype=torch.float32, device=logits.device)  # (N,)
        row_max = torch.empty_like(out)  # (N,) m
        row_logs = torch.empty_like(out)  # (N,) log s
        scratch = _scratch(logits)  # (C, V) float32, the only big temporary, reused for every chunk
        for r0, xc in _chunks(logits):
            C = xc.shape[0]
            z = scratch[:C].copy_(xc)  # (C, V) float32 copy of the chunk
            out[r0 : r0 + C], row_max[r0 : r0 + C], row_logs[r0 : r0 + C] = _stats_(z, y[r0 : r0 + C], temperature)
        ctx.temperature = temperature
        ctx.save_for_backward(logits, y, row_max, row_logs)  # logits are saved by reference, no copy
        return out.view(targets.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, y, row_max, row_logs = ctx.saved_tensors
        T = ctx.temperature
        V = logits.shape[-1]
        g = grad_out.reshape(-1).float() / T  # (N,) g / T: the chain rule through x / T
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # gradient buffer
        grad_rows = grad.view(-1, V)  # (N, V) contiguous view of the buffer
        scratch = _scratch(logits)
        for r0, xc in _chunks(logits):
            C = xc.shape[0]
            rows = slice(r0, r0 + C)
            z = _grad_(scratch[:C].copy_(xc), y[rows], row_max[rows], row_logs[rows], g[rows], T)  # (C, V)
            grad_rows[rows].copy_(z)  # cast to the logits' dtype while writing
        return grad, None, None


# ---------------------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------------------
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _auto_impl(logits: torch.Tensor) -> str:
    """impl="auto": triton for CUDA logits when triton imports, chunked otherwise. The kernels are
    written and tested for 16- and 32-bit logits; anything else (float64, say) takes the chunked path,
    which computes in float32 just the same."""
    kernel_dtype = logits.dtype in (torch.float32, torch.bfloat16, torch.float16)
    return "triton" if logits.is_cuda and kernel_dtype and _triton_importable() else "chunked"


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0, impl: str = "auto"
) -> torch.Tensor:
    """Log-probability of each target token: log softmax(logits / temperature)[targets].

    Args:
        logits: (..., V) float32, bfloat16 or float16 (float64 works too, computed in float32); any
            strides (e.g. `logits[:, :-1]`).
        targets: (...) integer token ids in [0, V), shape `logits.shape[:-1]`.
        temperature: T > 0; the logits are divided by T before the softmax (use the sampling
            temperature so that ratios against the sampler's log-probs are consistent).
        impl: "reference" | "chunked" | "triton" | "auto" (triton for CUDA float32/bf16/fp16 logits when
            triton imports, otherwise chunked).

    Returns:
        (...) float32 log-probs, differentiable with respect to `logits`; the gradient comes back in the
        logits' dtype.
    """
    if impl not in IMPLS:
        raise ValueError(f"token_logprobs: impl must be one of {IMPLS}, got {impl!r}")
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(
            f"token_logprobs: targets shape {tuple(targets.shape)} must equal logits shape without "
            f"its last dim, {tuple(logits.shape[:-1])}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"token_logprobs: logits must be floating point, got {logits.dtype}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"token_logprobs: targets must be integer token ids, got {targets.dtype}")
    if not temperature > 0:
        raise ValueError(f"token_logprobs: temperature must be > 0, got {temperature}")
    targets = targets.long()
    V = logits.shape[-1]
    # Range check: cheap on the CPU; on CUDA it would force a device sync, and an out-of-range id is
    # caught there by gather (reference/chunked) or reads garbage (triton), so we skip it.
    if not logits.is_cuda and targets.numel() and (targets.min() < 0 or targets.max() >= V):
        raise ValueError(f"token_logprobs: targets must lie in [0, {V}), got [{targets.min()}, {targets.max()}]")

    if impl == "auto":
        impl = _auto_impl(logits)
    if impl == "reference":
        return _reference(logits, targets, float(temperature))
    if impl == "chunked":
        return _ChunkedLogprobs.apply(logits, targets, float(temperature))
    # impl == "triton": imported lazily so that importing minipost never needs triton, and so that
    # tests can set TRITON_INTERPRET=1 before the kernels are decorated.
    if not logits.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("token_logprobs(impl='triton') needs CUDA tensors (or TRITON_INTERPRET=1 "
                           "set before minipost.kernels.logprobs_triton is imported)")
    from minipost.kernels.logprobs_triton import triton_token_logprobs

    return triton_token_logprobs(logits, targets, float(temperature))


# ---------------------------------------------------------------------------------------------------
# the output layer and the log-prob in one call: the logits never exist whole
# ---------------------------------------------------------------------------------------------------
def autocast_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype a matmul on `device` gives here: autocast's where it is on (CUDA training: bf16), else default."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else default


# A chunk of C = max(1, LINEAR_CHUNK_ELEMENTS // V) tokens has its logits in memory at a time: 2**24 numbers,
# 64 MiB in float32 (110 tokens at V = 151,936), enough rows that each chunk's matmuls run at full speed.
LINEAR_CHUNK_ELEMENTS = 1 << 24


class _LinearLogprobs(torch.autograd.Function):
    """log softmax(h W^T / T)[y] for chunks of tokens: each chunk's logits (C, V) are made, reduced to three
    floats per token (the log-prob, m and log s) and dropped; backward makes them again, chunk by chunk, and
    turns g/T * (onehot - p) into the gradients of h (C, H) and of W (V, H), the latter summed over chunks."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, impl, with_entropy, with_top1):
        N, V = hidden.shape[0], weight.shape[0]
        C = max(1, LINEAR_CHUNK_ELEMENTS // V)
        dt = autocast_dtype(hidden.device, weight.dtype)  # the logits' dtype: autocast's, or the weight's
        w = weight.to(dt)  # (V, H) cast once (under autocast: a bf16 copy), not once a chunk
        out, row_max, row_logs = (torch.empty(N, dtype=torch.float32, device=hidden.device) for _ in range(3))
        entropy = torch.empty_like(out) if with_entropy else None
        top1 = torch.empty(N, dtype=torch.bool, device=hidden.device) if with_top1 else None
        if impl == "triton":
            from minipost.kernels.logprobs_triton import row_stats  # (imported only where Triton runs)
        for r0 in range(0, N, C):
            rows = slice(r0, r0 + C)
            x = hidden[rows].to(dt) @ w.T  # (C, V) this chunk's logits
            if with_top1:  # the target is the model's first choice: greedy decoding would write it
                top1[rows] = x.argmax(dim=1) == targets[rows]
            if impl == "triton":
                out[rows], row_max[rows], row_logs[rows] = row_stats(x.view(1, *x.shape), targets[rows], temperature)
                if with_entropy:  # the softmax's sums once more, in PyTorch: a float32 copy of the chunk and a
                    # few passes over it, on every RL training pass (time, and no more than backward's peak memory)
                    z = x.float()
                    logs = _stats_(z, targets[rows], temperature)[2]  # (in place: z is now exp(x/T - m))
            else:
                z = x.float()  # (C, V) float32 (the same tensor when the weight is float32)
                out[rows], row_max[rows], row_logs[rows] = _stats_(z, targets[rows], temperature)  # (in place:
                # z is now exp(x/T - m))
                logs = row_logs[rows]
            if with_entropy:  # H = -sum p log p = log s - sum e log e / s, e = exp(x/T - m), s = sum e
                entropy[rows] = logs - torch.special.xlogy(z, z).sum(dim=-1) / logs.exp()
        ctx.save_for_backward(hidden, weight, targets, row_max, row_logs)
        ctx.temperature, ctx.impl, ctx.chunk = temperature, impl, C
        ctx.dtype = dt  # backward makes the logits again in this dtype: those m and log s describe
        extras = [t for t in (entropy, top1) if t is not None]
        ctx.mark_non_differentiable(*extras)
        return (out, *extras) if extras else out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, *_):
        hidden, weight, targets, row_max, row_logs = ctx.saved_tensors
        T, C = ctx.temperature, ctx.chunk
        g = grad_out.float() / T  # (N,) the chain rule through x / T
        w = weight.to(ctx.dtype)  # (V, H) as forward's matmul saw it (autocast: a bf16 copy), else the weight
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None  # (N, H)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None  # (V, H) summed over the chunks in float32
        if ctx.impl == "triton":
            from minipost.kernels.logprobs_triton import row_grad
        for r0 in range(0, hidden.shape[0], C):
            rows = slice(r0, r0 + C)
            x = hidden[rows].to(ctx.dtype) @ w.T  # (C, V) the chunk's logits once more, as forward made them
            if ctx.impl == "triton":
                dx = row_grad(x.view(1, *x.shape), targets[rows], row_max[rows], row_logs[rows],
                              grad_out[rows].float().contiguous(), T)  # (C, V) (the kernel divides by T)
            else:
                dx = _grad_(x.float(), targets[rows], row_max[rows], row_logs[rows], g[rows], T).to(ctx.dtype)
            if grad_h is not None:
                grad_h[rows] = (dx @ w).to(hidden.dtype)  # (C, V) @ (V, H)
            if grad_w is not None:  # (V, C) @ (C, H), summed over the chunks in float32
                h = hidden[rows].to(ctx.dtype)
                if ctx.dtype == torch.float32:
                    grad_w.addmm_(dx.T, h)  # in place
                else:
                    grad_w += dx.T @ h  # the product in bf16 (the GPU's tensor cores), the sum in float32
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                    temperature: float = 1.0, impl: str = "auto", entropy: bool = False, top1: bool = False):
    """log softmax(hidden @ weight.T / temperature)[targets]: the output layer and the log-prob in one call,
    its logits made and dropped a chunk of tokens at a time, in forward and in backward, so that they never
    exist whole: at N = 8192 tokens and Qwen's V = 151,936 they would be 2.5 GB in bf16, 5 GB in float32.

    Args:
        hidden: (..., H) the final hidden states (after the last norm), float32 or bfloat16.
        weight: (V, H) the output layer's weight (tied or not), the hidden states' dtype.
        targets: (...) token ids in [0, V).
        temperature: T > 0, as in token_logprobs.
        impl: "reference" (the logits whole: token_logprobs's definition), "chunked" (PyTorch, CPU and MPS),
            "triton" (each chunk's softmax in token_logprobs's kernels, CUDA) or "auto".
        entropy: also return each token's entropy, -sum_v p log p (float32, no gradient: a metric).
        top1: also return whether each target is the most likely token ((...) bool: token accuracy).

    Returns:
        (...) float32 log-probs, differentiable with respect to hidden and weight; with entropy or top1, the
        tuple (log-probs, entropy or None, top1 or None).
    """
    if impl not in IMPLS:
        raise ValueError(f"linear_logprobs: impl must be one of {IMPLS}, got {impl!r}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1] or tuple(hidden.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"linear_logprobs: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and targets "
                         f"{tuple(targets.shape)}: expected (..., H), (V, H) and (...)")
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise TypeError(f"linear_logprobs: hidden {hidden.dtype} and weight {weight.dtype}: one floating-point dtype")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"linear_logprobs: targets must be integer token ids, got {targets.dtype}")
    if not 0 < temperature < float("inf"):
        raise ValueError(f"linear_logprobs: temperature must be > 0 and finite, got {temperature}")
    V, shape = weight.shape[0], targets.shape
    targets = targets.reshape(-1).long()
    if not hidden.is_cuda and targets.numel() and (targets.min() < 0 or targets.max() >= V):
        raise ValueError(f"linear_logprobs: targets must lie in [0, {V}), got [{targets.min()}, {targets.max()}]")
    if impl == "reference":
        logits = hidden @ weight.T  # (..., V) whole
        logp = _reference(logits, targets.view(shape), float(temperature))
        if not (entropy or top1):
            return logp
        lsm = torch.log_softmax(logits.detach().float() / temperature, dim=-1)
        return (logp, -(lsm.exp() * lsm).sum(dim=-1) if entropy else None,
                logits.argmax(dim=-1) == targets.view(shape) if top1 else None)  # ties: the first, as argmax
    if impl == "auto":
        impl = "triton" if hidden.is_cuda and _triton_importable() else "chunked"
    if impl == "triton" and not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("linear_logprobs(impl='triton') needs CUDA tensors (or TRITON_INTERPRET=1)")
    got = _LinearLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets, float(temperature), impl,
                                entropy, top1)
    if not (entropy or top1):
        return got.view(shape)
    got = iter(got)
    logp = next(got).view(shape)
    return logp, next(got).view(shape) if entropy else None, next(got).view(shape) if top1 else None


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """-sum_v p log p of softmax(logits / T) at each position (..., V) -> (...) float32, a metric (no gradient),
    made CHUNK_ELEMENTS logits at a time: no float32 copy of the whole logits."""
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    rows = max(1, CHUNK_ELEMENTS // max(flat.shape[1], 1))
    for r0 in range(0, flat.shape[0], rows):
        lsm = torch.log_softmax(flat[r0:r0 + rows].float() / temperature, dim=-1)  # (rows, V)
        out[r0:r0 + rows] = -(lsm.exp() * lsm).sum(dim=-1)
    return out.view(logits.shape[:-1])


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100,
                      temperature: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Sum of log pi(target) over the positions whose target is not `ignore_index` (the response tokens):
    one number per row, log pi(response | prompt). logits (B, T, V), targets (B, T) -> (B,) float32.

    The definition from whole logits; DPO and the preference accuracies take the same sum from model.logprobs
    (the output layer and the log-prob in one), and the tests check the two agree."""
    mask = targets != ignore_index  # (B, T)
    logp = token_logprobs(logits, targets.masked_fill(~mask, 0), temperature=temperature, impl=impl)  # (B, T)
    return (logp * mask).sum(dim=1)  # (B,)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 -> scalar."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (biased std); 0 elsewhere. x, mask (B, T) -> (B, T)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask
