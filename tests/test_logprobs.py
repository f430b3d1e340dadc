"""token_logprobs: chunked and triton against a float64 reference, and against PyTorch's own precision.

Without a GPU the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, which must be set
before the kernel module is imported); interpreter runs are slow, so the shapes here are small.
Every comparison uses fresh random inputs from a seeded generator (a different seed per case).
"""
import zlib

from triton_cpu import DEVICE, HAS_TRITON, IMPLS, INTERPRETER_WARNINGS  # first: TRITON_INTERPRET before the kernels

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minipost.logprobs import token_logprobs  # noqa: E402

# "triton-split": the kernels under a small launch config (3 tiles of BLOCK columns per program), so
# that a row of V = 1000 or 5003 columns is cut into 6 or 7 segments (not a power of two: the combine
# kernel pads to 8), whose last one ends in a partial tile and fully masked tiles, and the combine
# kernel's 4-row programs end in a partly masked one. The default config gives one segment per row at
# every V tested here. (BLOCK grows with V only to keep the interpreter fast.)
def split_config(V):
    from minipost.kernels.logprobs_triton import LaunchConfig

    return LaunchConfig(block=64 if V <= 1000 else 256, tiles=3, num_warps=2, block_rows=4)


IMPLS_AND_SPLIT = IMPLS + [pytest.param("triton-split", marks=pytest.mark.skipif(not HAS_TRITON, reason="no triton"))]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS32 = torch.finfo(torch.float32).eps  # 2**-23: one float32 ulp at 1.0
pytestmark = INTERPRETER_WARNINGS  # (the interpreter's numpy warnings say nothing about the kernel)


@pytest.fixture(autouse=True)
def _interpreter_rounds_bf16_to_nearest(monkeypatch):
    """Triton's CPU interpreter truncates float32 -> bfloat16 (and its "rtne" path drops the carry);
    the GPU's cvt.rn.bf16.f32, which a narrowing .to() compiles to, rounds to nearest even. Make the emulator do
    what the hardware does, so the bf16 gradient precision test measures the kernel and not the emulator."""
    if DEVICE == "cuda" or not HAS_TRITON:
        return
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._convert_float

    def convert(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            x = torch.from_numpy(np.ascontiguousarray(input).view(np.float32).copy())
            return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return original(input, input_dtype, output_dtype, rounding_mode)

    monkeypatch.setattr(interpreter, "_convert_float", convert)


@pytest.fixture
def poison(monkeypatch):
    """Every torch.empty/empty_like made during the test starts as NaN (floats), so an output element
    that a kernel or loop forgets to write shows up as NaN instead of as leftover memory."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-(2**31))

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_empty_like(*a, **k)))


def make_inputs(B, T, V, dtype, seed):
    """(B, T+1, V) logits whose rows cycle through the hard cases, and (B, T) targets.

    Row kinds (by flattened row index mod 6): 0, 5 ordinary; 1 very large (x 1e4); 2 very small
    (x 1e-4); 3 about 40% of entries -inf (never the target); 4 shifted by +1e4 (same softmax as an
    ordinary row: logits are shift-invariant). Targets include index 0 and V-1.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T + 1, V, generator=g, dtype=torch.float64) * 2  # (B, T+1, V)
    y = torch.randint(0, V, (B, T), generator=g)  # (B, T)
    y[0, 0], y[-1, -1] = 0, V - 1
    for r in range(B * T):
        b, t = divmod(r, T)
        kind = r % 6
        if kind == 1:
            x[b, t] *= 1e4
        elif kind == 2:
            x[b, t] *= 1e-4
        elif kind == 3:
            drop = torch.rand(V, generator=g) < 0.4
            drop[y[b, t]] = False
            x[b, t][drop] = float("-inf")
        elif kind == 4:
            x[b, t] += 1e4
    return x.clamp(max=6e4).to(dtype).to(DEVICE), y.to(DEVICE)  # 6e4: stays finite in float16


def rel_err(a, ref):
    """max |a - ref| / (1 + |ref|) over finite entries; non-finite entries must match exactly."""
    a, ref = a.double().cpu(), ref.cpu()
    fin = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(a), fin), "non-finite pattern differs (NaN or inf where unexpected)"
    assert torch.equal(a[~fin], ref[~fin])
    return ((a - ref).abs() / (1 + ref.abs()))[fin].max().item() if fin.any() else 0.0


def logprobs(x, y, temperature, impl):
    """token_logprobs(..., impl), or the triton kernels under split_config(V) for impl="triton-split"."""
    if impl == "triton-split":
        from minipost.kernels.logprobs_triton import triton_token_logprobs

        return triton_token_logprobs(x, y, temperature, config=split_config(x.shape[-1]))
    return token_logprobs(x, y, temperature=temperature, impl=impl)


def run(impl, x, y, temperature, grad_out):
    """Value and gradient of token_logprobs on the non-contiguous slice x[:, :-1] (B, T, V)."""
    x = x.detach().clone().requires_grad_()
    val = logprobs(x[:, :-1], y, temperature, impl)  # (B, T)
    (grad,) = torch.autograd.grad(val, x, grad_out)  # (B, T+1, V)
    return val.detach(), grad


def raw_grad(val, grad_out):
    """The gradient exactly as the autograd.Function's backward returns it. Autograd silently casts a
    custom Function's gradient to the input's dtype, so x.grad cannot show which dtype backward wrote."""
    grads = val.grad_fn.apply(grad_out)  # calls backward(ctx, grad_out) directly
    return grads[0]


def float64_truth(x, y, temperature, grad_out):
    x64 = x.detach().double().requires_grad_()
    val = torch.log_softmax(x64[:, :-1] / temperature, -1).gather(-1, y[..., None]).squeeze(-1)
    (grad,) = torch.autograd.grad(val, x64, grad_out.double())
    return val.detach(), grad


@pytest.mark.parametrize("impl", IMPLS_AND_SPLIT)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", [1, 7, 1000, 5003])
def test_matches_float64_and_is_as_precise_as_pytorch(impl, dtype, V, poison):
    for i, temperature in enumerate([1.0, 0.7, 1.3]):
        seed = zlib.crc32(f"{impl}-{dtype}-{V}-{i}".encode())  # stable across runs
        x, y = make_inputs(2, 3, V, dtype, seed)
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
        val64, grad64 = float64_truth(x, y, temperature, grad_out)
        val_pt, grad_pt = run("reference", x, y, temperature, grad_out)  # PyTorch float32 log_softmax
        val = logprobs(x.detach().clone().requires_grad_()[:, :-1], y, temperature, impl)  # (B, T)
        grad = raw_grad(val, grad_out)  # (B, T, V): the gradient with respect to the slice x[:, :-1]

        assert val.dtype == torch.float32 and val.shape == y.shape
        assert grad.dtype == dtype and grad.shape == y.shape + (V,)  # written in the logits' dtype
        assert not torch.isnan(val).any() and not torch.isnan(grad).any()  # every element was written
        assert torch.all(grad_pt[:, -1] == 0)  # (the reference's sliced-off position gets no gradient)
        # As precise as PyTorch's float32 log_softmax on the same inputs, up to 2 float32 ulps of
        # rounding-order noise (the sums are accumulated in a different order).
        e_val, e_val_pt = rel_err(val.detach(), val64), rel_err(val_pt, val64)
        e_grad, e_grad_pt = rel_err(grad, grad64[:, :-1]), rel_err(grad_pt[:, :-1], grad64[:, :-1])
        assert e_val <= e_val_pt + 2 * EPS32, (temperature, e_val, e_val_pt)
        assert e_grad <= e_grad_pt + 2 * EPS32, (temperature, e_grad, e_grad_pt)


@pytest.mark.parametrize("impl", IMPLS)
def test_shift_invariance_keeps_digits(impl):
    """Logits shifted by 1e4 give the same log-probs. In float32 the spacing near 1e4 is ~1e-3, so
    `x[y] - lse` would be off by ~1e-3; `(x[y] - m) - log(s)` keeps ~1e-7. Same for the gradient."""
    g = torch.Generator().manual_seed(7)
    V = 300
    base = torch.randn(2, 5, V, generator=g).to(DEVICE)  # (B, T+1, V) float32, |x| < ~5
    shifted = base + 1e4  # exact? no: rounded to the float32 grid near 1e4 ...
    base = shifted - 1e4  # ... so define base from it: now shifted == base + 1e4 exactly
    y = torch.randint(0, V, (2, 4), generator=g).to(DEVICE)
    grad_out = torch.ones(2, 4, device=DEVICE)
    val64, grad64 = float64_truth(base, y, 1.0, grad_out)
    for x in (base, shifted):
        val, grad = run(impl, x, y, 1.0, grad_out)
        val_pt, grad_pt = run("reference", x, y, 1.0, grad_out)
        assert (val.double().cpu() - val64.cpu()).abs().max() <= 4e-6
        assert (grad.double().cpu() - grad64.cpu()).abs().max() <= 4e-7
        assert rel_err(val, val64) <= rel_err(val_pt, val64) + 2 * EPS32
        assert rel_err(grad, grad64) <= rel_err(grad_pt, grad64) + 2 * EPS32
    # the naive formula really does lose the digits on the shifted rows (what the test guards against)
    naive = shifted[:, :-1].gather(-1, y[..., None]).squeeze(-1) - torch.logsumexp(shifted[:, :-1], -1)
    assert (naive.double().cpu() - val64.cpu()).abs().max() > 1e-4


@pytest.mark.parametrize("impl", IMPLS)
def test_minus_inf_target_and_hand_values(impl):
    """Hand-computed: row [0, log 3, -inf] has softmax [1/4, 3/4, 0]."""
    x = torch.tensor([[0.0, float(np.log(3.0)), float("-inf")]] * 3, device=DEVICE, requires_grad=True)
    y = torch.tensor([0, 1, 2], device=DEVICE)
    val = token_logprobs(x, y, impl=impl)  # (3,)
    assert torch.allclose(val[:2].cpu(), torch.tensor([np.log(0.25), np.log(0.75)], dtype=torch.float32))
    assert val[2].item() == float("-inf")
    (grad,) = torch.autograd.grad(val, x, torch.ones(3, device=DEVICE))
    expect = torch.tensor([[0.75, -0.75, 0.0], [-0.25, 0.25, 0.0], [-0.25, -0.75, 1.0]])
    assert torch.allclose(grad.cpu(), expect, atol=1e-6)  # no NaN, even for the -inf target
    # temperature 2 on logits 2*[0, log 3]: the same softmax, gradient scaled by 1/T
    x2 = (2 * x[:2, :2]).detach().requires_grad_()
    val2 = token_logprobs(x2, y[:2], temperature=2.0, impl=impl)
    assert torch.allclose(val2, val[:2], atol=1e-6)
    (grad2,) = torch.autograd.grad(val2.sum(), x2)
    assert torch.allclose(grad2.cpu(), expect[:2, :2] / 2, atol=1e-6)


def test_auto_and_errors():
    x = torch.randn(2, 3, 11)
    y = torch.randint(0, 11, (2, 3))
    auto = token_logprobs(x, y)  # chunked on the CPU
    assert torch.equal(auto, token_logprobs(x, y, impl="chunked"))
    assert torch.allclose(auto, token_logprobs(x, y, impl="reference"), atol=1e-6)
    assert token_logprobs(x.double(), y).dtype == torch.float32
    with pytest.raises(ValueError, match="targets shape"):
        token_logprobs(x, y[:, :2])
    with pytest.raises(ValueError, match="must lie in"):
        token_logprobs(x, torch.full((2, 3), 11))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(x, y, temperature=0.0)
    with pytest.raises(ValueError, match="impl"):
        token_logprobs(x, y, impl="fast")
    with pytest.raises(TypeError, match="integer"):
        token_logprobs(x, y.float())


def test_chunked_spans_many_chunks_and_saves_two_floats_per_row(monkeypatch):
    """With tiny chunks the loop runs over many chunks and row blocks; the result is unchanged, and the
    only tensors kept for backward besides the inputs are (N,) row statistics."""
    import minipost.logprobs as lp

    x = torch.randn(3, 6, 50).requires_grad_()
    y = torch.randint(0, 50, (3, 5))
    ref = token_logprobs(x[:, :-1], y, impl="reference")
    (gref,) = torch.autograd.grad(ref.sum(), x)
    monkeypatch.setattr(lp, "CHUNK_ELEMENTS", 120)  # 2 rows per chunk
    val = token_logprobs(x[:, :-1], y, impl="chunked")
    assert_saves_logits_and_o_n(val, x, N=15)
    (grad,) = torch.autograd.grad(val.sum(), x)
    assert torch.allclose(val, ref, atol=1e-6) and torch.allclose(grad, gref, atol=1e-6)


def assert_saves_logits_and_o_n(val, x, N):
    """What val's backward keeps alive: the logits themselves (a view of x's storage, not a copy) and
    tensors of at most N elements, two of them floating point (m and log s per row)."""
    saved = val.grad_fn.saved_tensors
    is_x = [t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in saved]
    assert sum(is_x) == 1  # the logits, saved by reference
    rest = [t for t, same in zip(saved, is_x) if not same]
    assert all(t.numel() <= N for t in rest), [t.shape for t in rest]
    assert sum(t.is_floating_point() for t in rest) == 2


@pytest.mark.parametrize("impl", IMPLS_AND_SPLIT)
def test_saves_only_the_logits_and_two_floats_per_row(impl):
    x = torch.randn(3, 6, 500, device=DEVICE).requires_grad_()
    y = torch.randint(0, 500, (3, 5), device=DEVICE)
    assert_saves_logits_and_o_n(logprobs(x[:, :-1], y, 1.0, impl), x, N=15)  # a slice: no copy either


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_logits_compute_in_float32_and_return_a_float64_gradient(impl):
    """float64 logits are accepted (computed in float32). The triton backward once crashed here: a
    rounding mode passed to a non-narrowing fp32 -> fp64 cast is an error in Triton."""
    g = torch.Generator().manual_seed(64)
    x = torch.randn(2, 4, 37, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_()
    y = torch.randint(0, 37, (2, 3), generator=g).to(DEVICE)
    val = token_logprobs(x[:, :-1], y, impl=impl)  # (2, 3)
    val64, grad64 = float64_truth(x, y, 1.0, torch.ones(2, 3, device=DEVICE))
    (raw,) = [t for t in val.grad_fn.apply(torch.ones(2, 3, device=DEVICE)) if t is not None]
    assert val.dtype == torch.float32 and raw.dtype == torch.float64
    assert (val.double() - val64).abs().max() < 1e-5
    assert (raw - grad64[:, :-1]).abs().max() < 1e-6


@pytest.mark.parametrize("impl", IMPLS_AND_SPLIT)
def test_row_of_minus_inf_but_the_target(impl, poison):
    """All the probability on the target: log-prob 0 and gradient exactly 0, no NaN from -inf - -inf.
    At V = 500 the split config puts the target (column 400) in the third of three segments, so the
    other segments see nothing but -inf."""
    x = torch.full((2, 500), float("-inf"), device=DEVICE)
    x[0, 400], x[1, 0] = 3.0, -2.0
    x[1, 1:] = torch.randn(499)  # an ordinary row beside it
    y = torch.tensor([400, 7], device=DEVICE)
    for temperature in (1.0, 0.7):
        xg = x.clone().requires_grad_()
        val = logprobs(xg, y, temperature, impl)  # (2,)
        grad = raw_grad(val, torch.ones(2, device=DEVICE))  # (2, 500)
        assert val[0].item() == 0.0 and torch.all(grad[0] == 0)
        ref = token_logprobs(x[1:], y[1:], temperature=temperature, impl="reference")
        assert torch.allclose(val[1:], ref, atol=1e-6) and not torch.isnan(grad).any()


@pytest.mark.parametrize("impl", IMPLS_AND_SPLIT)
def test_transposed_and_4d_inputs(impl):
    """A last dim with stride != 1 (from a transpose) and a 4-D slice that no (B, T, V) view can
    describe: both take the copying paths; values and gradients still match float64."""
    g = torch.Generator().manual_seed(11)
    V = 300
    x_t = torch.randn(2, V, 4, generator=g).to(DEVICE).transpose(1, 2)  # (2, 4, V), stride(-1) = 4
    x_4d = torch.randn(2, 3, 3, V, generator=g).to(DEVICE)  # sliced below to (2, 2, 2, V)
    for base, cut in ((x_t, lambda t: t), (x_4d, lambda t: t[:, :-1, :-1])):
        x = base.detach().clone().requires_grad_()
        y = torch.randint(0, V, cut(x).shape[:-1], generator=g).to(DEVICE)
        val = logprobs(cut(x), y, 1.3, impl)
        (grad,) = torch.autograd.grad(val.sum(), x)
        x64 = base.detach().double().requires_grad_()
        val64 = torch.log_softmax(cut(x64) / 1.3, -1).gather(-1, y[..., None]).squeeze(-1)
        (grad64,) = torch.autograd.grad(val64.sum(), x64)
        assert not cut(x).is_contiguous() and (base is x_4d or cut(x).stride(-1) == 4)
        assert (val.double() - val64).abs().max() < 1e-5 and (grad.double() - grad64).abs().max() < 1e-6


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_auto_picks_triton_for_cuda_logits(monkeypatch, dtype):
    """The decision itself, without a GPU: a stand-in for a CUDA tensor, triton (not) importable."""
    import types

    import minipost.logprobs as lp

    cuda_logits = types.SimpleNamespace(is_cuda=True, dtype=dtype)
    monkeypatch.setattr(lp, "_triton_importable", lambda: True)
    assert lp._auto_impl(cuda_logits) == ("chunked" if dtype == torch.float64 else "triton")
    assert lp._auto_impl(torch.zeros(1, dtype=dtype)) == "chunked"  # CPU logits
    monkeypatch.setattr(lp, "_triton_importable", lambda: False)
    assert lp._auto_impl(cuda_logits) == "chunked"
