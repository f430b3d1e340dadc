"""Fused Triton kernels for per-token log-probs: log softmax(x / T)[y] and its gradient.

The math is in `minipost/logprobs.py`; this file is the same computation arranged for a GPU, where the
work is memory-bound: a (N, V) bf16 logits tensor at N = 8192, V = 50257 is 823 MB, and the best any
forward can do is read it once (backward: read it once more and write the gradient once).

Forward, two kernels:
  1. `_lse_partial_kernel`, grid (N, S): row r is cut into S segments of CHUNK columns, and each program
     sweeps its segment once in BLOCK-wide tiles, keeping an *online* logsumexp per lane: a running max
     m of the raw logits x and a running sum s of exp((x - m) / T). Splitting a row over S programs
     gives the GPU many more, shorter programs than one per row (V = 151936 would otherwise be one long
     serial sweep per program), which evens out the tail of the launch.
     The per-lane update costs one exp2 per element and no division: with c = log2(e) / T and
     d = -|x - m| * c, e = 2**d is either exp((x - m)/T) (x is not a new max: s += e) or
     exp((m_old - x)/T) (x is the new max: s = s * e + 1). The max is taken over x rather than x / T:
     for T > 0 both pick the same entry, and (x - m) / T is the shifted logit either way.
     Loads are bf16/fp16/fp32, arithmetic is float32; offsets are int64 (N * V overflows int32).
  2. `_lse_combine_kernel`, grid (N / BLOCK_R,): merges the S partial (m, s) of each row, loads the
     target logit x[y] and writes logp = (x[y] - m) / T - log s, plus the two row statistics m (of
     the raw logits: T * the m of logprobs.py) and log s.

Backward, one kernel:
  3. `_grad_kernel`, grid (N, S): p = 2**((x - m) * c - log2 s), grad = g/T * (onehot(y) - p), written
     once in the logits' dtype. One read of x, one write, one exp2 per element; nothing else is
     materialised. (A GPU's exp is an exp2 after a multiply by log2(e) anyway; folding 1/T into that
     multiply is what removes the per-element division.)

Non-contiguous rows: the logits are addressed as (B, T, V) with strides (stride_b, stride_t, 1), so the
usual `logits[:, :-1]` works in place; only a last dim with stride != 1 is copied first.

Launch parameters (`LaunchConfig`) are chosen from V and the element size by `pick_config`; the bench
(`python -m minipost.kernels.bench --sweep`) tries alternatives on a GPU. Each program loops over only
the tiles its segment covers (a runtime trip count), so a row's last segment runs no all-masked tiles.

Known risk, not yet measured on a GPU: vectorised (16-byte) loads need the compiler to know that a row
starts on a 16-byte boundary. Triton learns that from integer arguments divisible by 16, so for
V = 32768 the row stride qualifies, but for an odd V such as 50257 the row base `t * stride_t` is not
provably aligned and every load and store goes out one element at a time, which may cost bandwidth. A
possible fix: a masked head up to the next aligned column, full tiles without masks under
`tl.multiple_of` hints, and a masked tail. Until a GPU bench shows the need, the simple path stays.
These kernels have been checked in Triton's CPU interpreter and compiled to PTX for sm_90 offline,
but not yet run on a GPU since the exp2 and trip-count changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(z) = 2**(z * log2(e))


# ---------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _lse_partial_kernel(
    x_ptr, part_m_ptr, part_s_ptr,  # logits (B, T, V); partials (N, S) float32
    T_rows, stride_b, stride_t, V, n_splits, c,  # c = log2(e) / T
    BLOCK: tl.constexpr, TILES: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    b = row // T_rows
    t = row % T_rows
    x_row = x_ptr + b.to(tl.int64) * stride_b + t.to(tl.int64) * stride_t  # int64 row offset
    col0 = split * (BLOCK * TILES)
    n_tiles = tl.cdiv(tl.minimum(V - col0, BLOCK * TILES), BLOCK)  # TILES, fewer in a row's last split
    lanes = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)  # (BLOCK,) running max of x per lane
    s = tl.zeros([BLOCK], tl.float32)  # (BLOCK,) running sum of exp((x - m) / T) per lane
    for i in range(n_tiles):
        cols = col0 + i * BLOCK + lanes
        x = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        e = tl.exp2(-tl.abs(x - m) * c)  # exp((smaller - larger) / T), in (0, 1]
        e = tl.where(x == float("-inf"), 0.0, e)  # masked / -inf entries add nothing (and avoid NaN)
        s = tl.where(x > m, s * e + 1.0, s + e)  # new max: rescale old sum; else: add exp((x - m)/T)
        m = tl.maximum(m, x)
    # reduce the lanes to one (m, s) for this segment
    m_seg = tl.max(m, axis=0)
    s_seg = tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp2((m - m_seg) * c)), axis=0)
    tl.store(part_m_ptr + row.to(tl.int64) * n_splits + split, m_seg)
    tl.store(part_s_ptr + row.to(tl.int64) * n_splits + split, s_seg)


@triton.jit
def _lse_combine_kernel(
    x_ptr, y_ptr, part_m_ptr, part_s_ptr, out_ptr, row_max_ptr, row_logs_ptr,
    N, T_rows, stride_b, stride_t, n_splits, temperature, c,  # c = log2(e) / T
    BLOCK_R: tl.constexpr, SPLITS: tl.constexpr, SCALE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (R,)
    row_ok = rows < N
    splits = tl.arange(0, SPLITS)  # (S,) padded to a power of two
    idx = rows.to(tl.int64)[:, None] * n_splits + splits[None, :]  # (R, S)
    ok = row_ok[:, None] & (splits[None, :] < n_splits)
    pm = tl.load(part_m_ptr + idx, mask=ok, other=float("-inf"))  # (R, S)
    ps = tl.load(part_s_ptr + idx, mask=ok, other=0.0)  # (R, S)
    m = tl.max(pm, axis=1)  # (R,)
    s = tl.sum(tl.where(pm == float("-inf"), 0.0, ps * tl.exp2((pm - m[:, None]) * c)), axis=1)  # (R,)
    logs = tl.log(s)  # (R,)
    # gather the target logit x[y] of each row
    y = tl.load(y_ptr + rows, mask=row_ok, other=0)  # (R,) int64
    b = rows // T_rows
    t = rows % T_rows
    x_row = x_ptr + b.to(tl.int64) * stride_b + t.to(tl.int64) * stride_t
    xy = tl.load(x_row + y, mask=row_ok, other=0.0).to(tl.float32)  # (R,)
    zy = xy - m  # (R,) x_y - m, exact when x_y is close to m
    if SCALE:  # one correctly rounded division per row (plain `/` may be approximate on a GPU)
        zy = tl.math.div_rn(zy, temperature)
    tl.store(out_ptr + rows, zy - logs, mask=row_ok)  # (x_y - m)/T - log s: keeps digits
    tl.store(row_max_ptr + rows, m, mask=row_ok)  # max of the raw logits
    tl.store(row_logs_ptr + rows, logs, mask=row_ok)


@triton.jit
def _grad_kernel(
    x_ptr, y_ptr, row_max_ptr, row_logs_ptr, g_ptr, dx_ptr,
    T_rows, stride_b, stride_t, V, temperature, c,  # c = log2(e) / T
    BLOCK: tl.constexpr, TILES: tl.constexpr, SCALE: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    b = row // T_rows
    t = row % T_rows
    x_row = x_ptr + b.to(tl.int64) * stride_b + t.to(tl.int64) * stride_t
    dx_row = dx_ptr + row.to(tl.int64) * V  # gradient buffer is contiguous (N, V)
    m = tl.load(row_max_ptr + row)  # max of the raw logits
    log2s = tl.load(row_logs_ptr + row) * 1.4426950408889634  # log2 s = log s * log2(e)
    y = tl.load(y_ptr + row)
    g_over_t = tl.load(g_ptr + row)
    if SCALE:
        g_over_t = tl.math.div_rn(g_over_t, temperature)  # chain rule through x / T
    col0 = split * (BLOCK * TILES)
    n_tiles = tl.cdiv(tl.minimum(V - col0, BLOCK * TILES), BLOCK)  # no fully masked tiles at the end
    lanes = tl.arange(0, BLOCK)
    y_off = (y - col0).to(tl.int32)  # the target's offset from col0 (outside [0, BLOCK * TILES): not here)
    for i in range(n_tiles):
        offs = i * BLOCK + lanes  # (BLOCK,) int32 offsets from col0
        cols = col0 + offs
        ok = cols < V
        x = tl.load(x_row + cols, mask=ok, other=float("-inf")).to(tl.float32)
        p = tl.exp2((x - m) * c - log2s)  # softmax exp((x - m)/T - log s); the only exp per element
        d = tl.where(offs == y_off, 1.0 - p, -p) * g_over_t  # g/T * (onehot - p); 1 - p is exact near 1
        # .to() of a narrowing float cast (fp32 -> bf16/fp16) rounds to nearest even by default; no
        # rounding argument, because Triton rejects one on a non-narrowing cast (fp32 -> fp32/fp64).
        tl.store(dx_row + cols, d.to(dx_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------------
# launch parameters
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchConfig:
    block: int  # elements per tile (power of two); 16-byte loads per thread at the defaults
    tiles: int  # tiles per program: a program covers block * tiles columns of one row
    num_warps: int
    block_rows: int = 64  # rows per program in the combine kernel


def pick_config(V: int, elem_size: int, target_chunk: int = 16384, num_warps: int = 8) -> LaunchConfig:
    """Heuristic: tiles of `num_warps * 32` threads x 16 bytes, programs of about `target_chunk` columns.

    16 bytes per thread per load is what the hardware vectorises (8 bf16 or 4 fp32), so a tile is
    num_warps * 32 * 16 / elem_size elements (2048 bf16 at 8 warps), never more than V rounded up to a
    power of two. A row of V columns is then split across S = ceil(V / (block * tiles)) programs.
    """
    block = min(triton.next_power_of_2(max(V, 1)), num_warps * 32 * 16 // elem_size)
    block = max(block, 16)
    tiles = max(1, min(triton.cdiv(target_chunk, block), triton.cdiv(V, block)))
    # balance: use as few tiles per program as still give the same number of splits
    splits = triton.cdiv(V, block * tiles)
    tiles = triton.cdiv(triton.cdiv(V, splits), block)
    warps = num_warps if block >= num_warps * 32 else max(1, block // 32)
    return LaunchConfig(block=block, tiles=tiles, num_warps=max(1, min(warps, num_warps)))


def _as_btv(x: torch.Tensor) -> torch.Tensor:
    """View (..., V) as (B, T, V) with unit last stride; copies only if no such view exists."""
    V = x.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    for shape in ((1, -1, V), (-1, x.shape[-2] if x.dim() >= 2 else 1, V)):
        try:
            return x.view(shape)
        except RuntimeError:
            pass
    return x.reshape(1, -1, V)  # e.g. a 4-D tensor sliced in two middle dims: copy


# ---------------------------------------------------------------------------------------------------
# autograd glue
# ---------------------------------------------------------------------------------------------------
def row_stats(x: torch.Tensor, y: torch.Tensor, temperature: float, cfg: LaunchConfig | None = None):
    """Forward on x (B, T, V) (unit last stride), y (N = B*T,) int64 -> (log-probs, row max m, log s), each
    (N,) float32: the online logsumexp over segments of every row, then their combination."""
    B, T_rows, V = x.shape
    N = B * T_rows
    cfg = cfg or pick_config(V, x.element_size())
    n_splits = triton.cdiv(V, cfg.block * cfg.tiles)
    part_m = torch.empty((N, n_splits), dtype=torch.float32, device=x.device)  # (N, S)
    part_s = torch.empty_like(part_m)
    out = torch.empty(N, dtype=torch.float32, device=x.device)  # (N,)
    row_max = torch.empty_like(out)
    row_logs = torch.empty_like(out)
    if N > 0:
        _lse_partial_kernel[(N, n_splits)](
            x, part_m, part_s, T_rows, x.stride(0), x.stride(1), V, n_splits, LOG2E / temperature,
            BLOCK=cfg.block, TILES=cfg.tiles, num_warps=cfg.num_warps,
        )
        _lse_combine_kernel[(triton.cdiv(N, cfg.block_rows),)](
            x, y, part_m, part_s, out, row_max, row_logs, N, T_rows, x.stride(0), x.stride(1),
            n_splits, temperature, LOG2E / temperature, BLOCK_R=cfg.block_rows, SPLITS=triton.next_power_of_2(n_splits),
            SCALE=temperature != 1.0, num_warps=4,
        )
    return out, row_max, row_logs


def row_grad(x: torch.Tensor, y, row_max, row_logs, g: torch.Tensor, temperature: float,
             cfg: LaunchConfig | None = None) -> torch.Tensor:
    """Backward: g / T * (onehot(y) - p) for x (B, T, V), g (N,) float32 -> (N, V) in x's dtype, written once."""
    B, T_rows, V = x.shape
    N = B * T_rows
    cfg = cfg or pick_config(V, x.element_size())
    dx = torch.empty((N, V), dtype=x.dtype, device=x.device)  # the gradient buffer, written once
    if N > 0:
        _grad_kernel[(N, triton.cdiv(V, cfg.block * cfg.tiles))](
            x, y, row_max, row_logs, g, dx, T_rows, x.stride(0), x.stride(1), V, temperature, LOG2E / temperature,
            BLOCK=cfg.block, TILES=cfg.tiles, SCALE=temperature != 1.0, num_warps=cfg.num_warps,
        )
    return dx


class _TritonLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, config):
        x = _as_btv(logits)  # (B, T, V) view
        cfg = config or pick_config(logits.shape[-1], logits.element_size())
        y = targets.reshape(-1).contiguous()  # (N,) int64
        out, row_max, row_logs = row_stats(x, y, temperature, cfg)
        ctx.save_for_backward(x, y, row_max, row_logs)
        ctx.temperature, ctx.cfg, ctx.shape = temperature, cfg, logits.shape
        return out.view(targets.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x, y, row_max, row_logs = ctx.saved_tensors
        g = grad_out.reshape(-1).float().contiguous()  # (N,); materialises expanded grads (O(N))
        return row_grad(x, y, row_max, row_logs, g, ctx.temperature, ctx.cfg).view(ctx.shape), None, None, None


def triton_token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                          config: LaunchConfig | None = None) -> torch.Tensor:
    """log softmax(logits / T)[targets] with the fused kernels; see `minipost.logprobs.token_logprobs`.

    `config` overrides the launch heuristic (used by the bench's sweep). Inputs are not validated here.
    """
    return _TritonLogprobs.apply(logits, targets, float(temperature), config)
