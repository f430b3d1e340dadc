"""linear_logprobs (the output layer and the log-prob in one call, its logits never whole) against the
definition in float64: values, entropy, and the gradients of the hidden states and of the weight, on random
inputs; float32 and bfloat16, odd vocabularies, temperatures, many chunks, a Qwen-sized vocabulary at a few
tokens, and the Triton path under Triton's interpreter at small shapes (TRITON_INTERPRET=1 without a GPU)."""
from triton_cpu import DEVICE, IMPLS, INTERPRETER_WARNINGS  # first: TRITON_INTERPRET before the kernels load

import pytest  # noqa: E402
import torch  # noqa: E402

from minipost import logprobs  # noqa: E402
from minipost.logprobs import linear_logprobs  # noqa: E402

pytestmark = INTERPRETER_WARNINGS


def inputs(N, H, V, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(N, H, generator=g) * scale).to(DEVICE, dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g) / H ** 0.5 * 4).to(DEVICE, dtype).requires_grad_()  # logits ~ N(0, 16)
    targets = torch.randint(0, V, (N,), generator=g).to(DEVICE)
    upstream = torch.randn(N, generator=g).to(DEVICE)  # d loss / d logp: any weights, signs included
    return hidden, weight, targets, upstream


def exact(hidden, weight, targets, upstream, T):
    """The definition in float64: log-probs, entropy, and the gradients of hidden and weight."""
    h, w = (t.detach().double().requires_grad_() for t in (hidden, weight))
    lsm = torch.log_softmax(h @ w.T / T, dim=-1)  # (N, V)
    logp = lsm.gather(1, targets[:, None]).squeeze(1)
    grad_h, grad_w = torch.autograd.grad((logp * upstream.double()).sum(), (h, w))
    return logp.detach(), -(lsm.exp() * lsm).sum(-1).detach(), grad_h, grad_w


def check(impl, N, H, V, dtype, T, seed, atol, rtol_grad):
    hidden, weight, targets, upstream = inputs(N, H, V, dtype, seed)
    logp, entropy, top1 = linear_logprobs(hidden, weight, targets, temperature=T, impl=impl, entropy=True, top1=True)
    grad_h, grad_w = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    want_logp, want_entropy, want_h, want_w = exact(hidden, weight, targets, upstream, T)
    assert logp.dtype == entropy.dtype == torch.float32 and grad_h.dtype == grad_w.dtype == dtype
    torch.testing.assert_close(logp.double(), want_logp, atol=atol, rtol=0)
    torch.testing.assert_close(entropy.double(), want_entropy, atol=atol, rtol=0)
    logits = hidden.detach().double() @ weight.detach().double().T  # (N, V)
    assert torch.equal(top1, logits.argmax(dim=1) == targets) or dtype != torch.float32  # (bf16: ties)
    for got, want in ((grad_h, want_h), (grad_w, want_w)):  # relative to the gradient's size
        assert (got.double() - want).norm() <= rtol_grad * want.norm(), (got.double() - want).norm() / want.norm()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("V,T", [(1, 1.0), (257, 1.0), (1000, 0.7), (5003, 1.3)])  # odd V, temperatures
def test_float32_equals_the_definition(impl, V, T, monkeypatch):
    monkeypatch.setattr(logprobs, "LINEAR_CHUNK_ELEMENTS", 5 * V)  # 5 tokens a chunk: 7 chunks, the last short
    check(impl, 33, 24, V, torch.float32, T, seed=V, atol=2e-5, rtol_grad=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_is_as_close_as_its_logits_allow(impl):
    """bf16 hidden states and weight: the matmul rounds each logit to 8 bits (|x| ~ 4: 1.6e-2), the bound
    below; the log-softmax itself is float32."""
    check(impl, 17, 32, 1000, torch.bfloat16, 1.0, seed=3, atol=0.1, rtol_grad=2e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_agrees_with_the_reference_path_on_the_same_inputs(impl, monkeypatch):
    """Against impl="reference" (the logits whole, in bf16 too) rather than float64: the same bf16 logits, so the
    log-probs agree to float32 rounding. The gradients are within two bf16 steps (2^-7) of each other, relative to
    their size: each path rounds the logits' gradient to bf16 from its own float32 softmax (the Triton kernel's,
    PyTorch's), and the weight's is summed over the chunks in float32 then rounded once, the reference's made in
    one bf16 matmul (measured: 0 and 1.6e-3 chunked, 4.2e-3 and 4.7e-3 Triton; each is 7e-3 from float64)."""
    monkeypatch.setattr(logprobs, "LINEAR_CHUNK_ELEMENTS", 5 * 1000)  # 5 tokens a chunk: 4 chunks
    got = {}
    for path in ("reference", impl):
        hidden, weight, targets, _ = inputs(17, 32, 1000, torch.bfloat16, 3)
        logp = linear_logprobs(hidden, weight, targets, impl=path)
        logp.sum().backward()
        got[path] = (logp.detach().float(), hidden.grad.float(), weight.grad.float())
    (lp, gh, gw), (lp2, gh2, gw2) = got["reference"], got[impl]
    torch.testing.assert_close(lp2, lp, atol=1e-5, rtol=0)
    assert (gh2 - gh).norm() <= 2 ** -7 * gh.norm() and (gw2 - gw).norm() <= 2 ** -7 * gw.norm()


def test_a_qwen_sized_vocabulary_at_a_few_tokens():
    check("chunked", 6, 16, 151_936, torch.float32, 1.0, seed=4, atol=5e-5, rtol_grad=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "reference"])
def test_leading_dims_and_a_frozen_weight(impl):
    """(B, T, H) hidden states; a weight without gradient (a frozen reference model, LoRA) gets none."""
    hidden, weight, targets, _ = inputs(12, 8, 50, torch.float32, 5)
    weight.requires_grad_(False)
    logp = linear_logprobs(hidden.view(3, 4, 8), weight, targets.view(3, 4), impl=impl)
    assert logp.shape == (3, 4)
    (grad,) = torch.autograd.grad(logp.sum(), hidden)
    want = logprobs.token_logprobs(hidden @ weight.T, targets, impl="reference")
    torch.testing.assert_close(logp.view(-1), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), hidden)[0], atol=1e-5, rtol=0)


def test_backward_keeps_the_inputs_and_two_floats_per_token(monkeypatch):
    """What autograd keeps between forward and backward: hidden, weight, targets and (m, log s) per token,
    nothing of size N x V."""
    monkeypatch.setattr(logprobs, "LINEAR_CHUNK_ELEMENTS", 4 * 300)
    hidden, weight, targets, _ = inputs(40, 8, 300, torch.float32, 6)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        linear_logprobs(hidden, weight, targets, impl="chunked")
    assert sorted(t.numel() for t in saved) == sorted([40, 40, 40, 40 * 8, 300 * 8])


def test_bad_arguments_are_refused():
    hidden, weight, targets, _ = inputs(4, 8, 10, torch.float32, 7)
    with pytest.raises(ValueError, match="expected"):
        linear_logprobs(hidden, weight[:, :4], targets)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\)"):
        linear_logprobs(hidden, weight, targets + 10)
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs(hidden, weight, targets, temperature=0)
    with pytest.raises(ValueError, match="impl"):
        linear_logprobs(hidden, weight, targets, impl="fast")


@pytest.mark.parametrize("impl", ["reference"] + IMPLS)
def test_top1_says_which_targets_greedy_decoding_would_write(impl):
    hidden, weight, targets, _ = inputs(20, 16, 300, torch.float32, 8)
    greedy = (hidden @ weight.T).argmax(dim=1)  # (N,)
    targets = torch.where(torch.arange(20) % 2 == 0, greedy, (greedy + 1) % 300)  # every other row the argmax
    _, _, top1 = linear_logprobs(hidden, weight, targets, impl=impl, top1=True)
    assert top1.tolist() == [i % 2 == 0 for i in range(20)]
    tied = torch.zeros(3, 16)  # every logit 0: argmax's first index is the one greedy decoding writes, on every path
    _, _, top1 = linear_logprobs(tied, weight, torch.tensor([0, 3, 5]), impl=impl, top1=True)
    assert top1.tolist() == [True, False, False]


@pytest.mark.parametrize("impl", IMPLS)
def test_under_autocast_backward_makes_the_logits_as_forward_did(impl):
    """Training on CUDA runs the forward under bf16 autocast and the backward after it: the gradient must come
    from the bf16 logits forward reduced (their m and log s), as the definition's own autograd does. Here on
    the CPU's bf16 autocast, with logits up to about 40, where float32 logits in backward were 3% off."""
    hidden, weight, targets, upstream = inputs(64, 64, 2048, torch.float32, 9, scale=2.5)
    grads = {}
    for name in ("reference", impl):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp = linear_logprobs(hidden, weight, targets, impl=name)
        grads[name] = torch.autograd.grad((logp * upstream).sum(), (hidden, weight))
    for got, want in zip(grads[impl], grads["reference"]):
        assert got.dtype == want.dtype == torch.float32
        assert (got - want).norm() <= 5e-3 * want.norm(), ((got - want).norm() / want.norm()).item()
