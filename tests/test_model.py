"""The GPT's contracts: causal, cache-consistent, padding-invariant, generation that matches itself and caps each
row by its own prompt, and load_model refusing files that are not minipost checkpoints."""
import math

import pytest
import torch

from minipost.common import InputError
from minipost.model import GPT, GPTConfig, KVCache, filter_probs, left_pad, sample
from minipost.checkpoints import load_model

CFG = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=16)


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CFG.__dict__, **kw})).eval()


def test_causality_later_tokens_do_not_change_earlier_logits():
    model = make_model()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = torch.randint(0, 50, (2, 5))
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_kv_cache_decoding_matches_full_forward():
    model = make_model()
    idx = torch.randint(0, 50, (3, 14))
    full = model(idx)  # (B, T, V)
    cache = KVCache(model.cfg, 3, 14, "cpu", torch.float32)
    steps = [model(idx[:, :5], torch.ones(3, 5), cache=cache)]  # prefill 5 tokens, then one at a time
    for t in range(5, 14):
        steps.append(model(idx[:, t:t + 1], torch.ones(3, 1), cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_sequence_is_the_same_alone_and_left_padded_in_a_batch():
    model = make_model()
    seqs = [[5, 6, 7], [1, 2, 3, 4, 8, 9, 10], [11]]
    ids, mask = left_pad(seqs, pad_id=0)
    batch = model(ids, mask)  # (B, T, V)
    for i, s in enumerate(seqs):
        alone = model(torch.tensor([s]))[0]  # (t, V)
        torch.testing.assert_close(batch[i, -len(s):], alone, atol=1e-5, rtol=1e-5)
        # log-probs of each token, too
        lp_alone = torch.log_softmax(alone[:-1], -1).gather(1, torch.tensor(s[1:])[:, None])
        lp_batch = torch.log_softmax(batch[i, -len(s):-1], -1).gather(1, torch.tensor(s[1:])[:, None])
        torch.testing.assert_close(lp_batch, lp_alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batch).all()  # padded queries must not produce NaN


def test_batched_greedy_generation_equals_one_at_a_time():
    model = make_model()
    prompts = [[3, 4, 5, 6], [7], [8, 9]]
    ids, mask = left_pad(prompts, pad_id=0)
    toks, m, _ = model.generate(ids, mask, max_new_tokens=8, temperature=0, stop_token=2)
    for i, p in enumerate(prompts):
        t1, m1, _ = model.generate(torch.tensor([p]), max_new_tokens=8, temperature=0, stop_token=2)
        n = int(m1.sum())
        assert int(m[i].sum()) == n
        assert toks[i, :n].tolist() == t1[0, :n].tolist()


def test_generation_logprobs_match_a_training_forward_pass():
    model = make_model(seed=1)
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10]]
    ids, mask = left_pad(prompts, pad_id=0)
    g = torch.Generator().manual_seed(0)
    toks, m, logps = model.generate(ids, mask, max_new_tokens=6, temperature=0.7, generator=g)
    full = torch.cat([ids, toks], 1)
    full_mask = torch.cat([mask, m], 1)
    logits = model(full, full_mask)[:, ids.shape[1] - 1:-1]  # (B, N, V): logits that predicted each new token
    recomputed = torch.log_softmax(logits / 0.7, -1).gather(2, toks[..., None]).squeeze(-1)
    torch.testing.assert_close(recomputed * m, logps, atol=1e-5, rtol=1e-5)


def test_a_long_prompt_caps_only_its_own_row():
    """block_size 32: a 30-token prompt leaves room for 2 new tokens. Batched with it, a short prompt still gets
    all max_new_tokens, the long row stops at 2 without an error, and each row equals its prompt generated alone."""
    model = make_model()
    long, short = [(3 * i) % 47 + 1 for i in range(30)], [7, 8]
    ids, mask = left_pad([long, short], pad_id=0)
    toks, m, _ = model.generate(ids, mask, max_new_tokens=8, temperature=0)
    assert m[1].sum().item() == 8  # the short row is not truncated by the long one
    assert m[0].sum().item() == 2  # the long row fills its context and stops: 30 + 2 = block_size
    for i, p in enumerate([long, short]):
        alone, m1, _ = model.generate(torch.tensor([p]), max_new_tokens=8, temperature=0)
        n = int(m1.sum())
        assert n == int(m[i].sum()) and toks[i, :n].tolist() == alone[0, :n].tolist()
    with pytest.raises(ValueError, match="no room"):  # a prompt that fills the whole context is an error
        model.generate(torch.tensor([long + [1, 2]]), max_new_tokens=8, temperature=0)


def test_inverse_cdf_sampling_draws_each_token_with_its_probability():
    """200k draws from p (zeros included): frequencies within 4 standard errors of p, zero-mass tokens never drawn,
    and u at the ends of [0, 1) lands on the first and the last token with p > 0."""
    p = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    n = 200_000
    u = torch.rand(n, 1, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample(p.expand(n, -1), u), minlength=len(p)).double()
    stderr = (p * (1 - p) / n).sqrt().double()
    assert ((counts / n - p.double()).abs() <= 4 * stderr + 1e-12).all(), counts / n
    assert counts[p == 0].sum() == 0
    ends = torch.tensor([[0.0], [1.0 - 2 ** -24], [1.0]])  # 1.0 itself is out of range but must stay safe
    assert sample(p.expand(3, -1), ends).tolist() == [1, 5, 5]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_compacting_finished_rows_changes_no_token(temperature):
    """Rows that stop early leave the batch (compact=True); the tokens, masks and log-probs equal those of the
    uncompacted loop, greedy and sampled (the same uniform draws go to the same rows). Long prompts (block_size
    32) end their rows after 3-8 tokens, the short ones run to 12."""
    model = make_model(seed=3)
    prompts = [[(5 * i + j) % 47 + 2 for i in range(n)] for j, n in enumerate([28, 26, 24, 2, 27, 25, 3, 29])]
    ids, mask = left_pad(prompts, pad_id=0)
    outs = []
    for compact in (True, False):
        g = torch.Generator().manual_seed(5)
        outs.append(model.generate(ids, mask, max_new_tokens=12, temperature=temperature, stop_token=1,
                                   generator=g, compact=compact))
    lengths = outs[1][1].sum(dim=1)
    assert lengths.min() < lengths.max() / 2  # rows did finish early, so the compacted loop dropped some
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(outs[0][0], outs[1][0])


def test_load_model_refuses_files_that_are_not_minipost_checkpoints(tmp_path):
    torch.save({}, tmp_path / "empty.pt")
    torch.save(make_model().state_dict(), tmp_path / "bare.pt")  # weights without model_config or tokenizer
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    for name in ("empty.pt", "bare.pt", "notes.pt", "missing.pt"):
        with pytest.raises(InputError, match=name):
            load_model(tmp_path / name)


def test_stop_token_ends_a_row_and_pads_the_rest():
    model = make_model()
    ids = torch.tensor([[1, 2, 3]])
    toks, m, _ = model.generate(ids, max_new_tokens=10, temperature=0)
    stop = toks[0, 0].item()  # whatever greedy picks first, call it the stop token
    toks, m, _ = model.generate(ids, max_new_tokens=10, temperature=0, stop_token=stop, pad_id=0)
    assert toks.shape[1] == 1 and m.tolist() == [[1]]


def test_top_k_and_top_p_filtering():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.testing.assert_close(filter_probs(p, top_k=2), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top_p=0.7: 0.5 alone is short of 0.7, 0.5+0.3 reaches it -> keep two tokens
    torch.testing.assert_close(filter_probs(p, top_p=0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(filter_probs(p, top_p=0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_init_and_tied_embeddings():
    model = make_model()
    logits = model(torch.tensor([[1, 2]]))
    h = model.ln_f(model.blocks[1](model.blocks[0](model.wte(torch.tensor([[1, 2]])) + model.wpe.weight[:2], None, None, 0), None, None, 1))
    torch.testing.assert_close(logits, h @ model.wte.weight.T)  # output layer is the input embedding
    assert abs(model.wte.weight.std().item() - 0.02) < 0.005
    assert abs(model.blocks[0].attn.proj.weight.std().item() - 0.02 / 2) < 0.005  # 0.02 / sqrt(2 * 2 layers)
    v = make_model(value_head=True)
    logits, h = v(torch.randint(0, 50, (2, 5)), return_hidden=True)
    assert v.values(h).shape == (2, 5)


def test_rows_that_are_no_token_are_left_out_of_the_logits():
    """A Hugging Face folder's model can have more output rows than its tokenizer has tokens (Qwen: 151,936 and
    151,669): with n_tokens set, the logits are the tokens' only, so sampling never draws another row, and the
    log-probs a sampler records are the ones a training forward pass computes."""
    from minipost.logprobs import token_logprobs
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        model.wte.weight[40:] += 5.0  # the extra rows would win
    model.n_tokens = 40
    idx = torch.randint(0, 40, (8, 4))
    for temperature in (1.0, 0):
        tokens, _, logps = model.generate(idx, max_new_tokens=12, temperature=temperature,
                                          generator=torch.Generator().manual_seed(0))
        assert int(tokens.max()) < 40 and torch.isfinite(logps).all()
    with torch.no_grad():
        full = torch.cat([idx, tokens], dim=1)
        again = token_logprobs(model(full)[:, 3:-1], full[:, 4:])  # (8, 12) the training forward's
    torch.testing.assert_close(again, logps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gpt", "qwen3"])
@pytest.mark.parametrize("mode", ["train", "eval"])  # RL's policies and DPO's train in eval mode (no dropout)
def test_activation_checkpointing_keeps_less_for_backward_and_the_same_gradients(family, mode):
    from minipost.decoder import Decoder, DecoderConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=3, n_head=2, n_embd=32)) if family == "gpt" else \
        Decoder(DecoderConfig(family="qwen3", vocab_size=64, block_size=32, n_layer=3, n_head=2, n_kv_head=1,
                              head_dim=16, n_embd=32, intermediate_size=48, qk_norm=True))
    model.train(mode == "train")
    x = torch.randint(0, 64, (4, 32))
    kept, grads = {}, {}
    for on in (False, True):
        model.checkpointing, saved = on, []
        model.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = model(x).logsumexp(-1).mean()
        loss.backward()
        kept[on], grads[on] = sum(saved), [p.grad.clone() for p in model.parameters()]
    assert kept[True] < kept[False] / 2  # each block's input (and the logits' inputs), not its insides
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


def test_logprobs_fuses_the_output_layer_from_a_real_vocabulary(monkeypatch):
    """impl "auto": linear_logprobs (the logits never whole) from FUSED_VOCAB tokens up, the logits then
    token_logprobs below it (minipost's own GPTs)."""
    import minipost.model as model_module
    calls = []
    real = model_module.linear_logprobs
    monkeypatch.setattr(model_module, "linear_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    for vocab, fused in ((1030, False), (model_module.FUSED_VOCAB, True)):
        model = GPT(GPTConfig(vocab_size=vocab, block_size=8, n_layer=1, n_head=1, n_embd=8))
        calls.clear()
        model.logprobs(torch.randint(0, vocab, (2, 8)), torch.randint(0, vocab, (2, 8)))
        assert bool(calls) == fused, vocab


def test_logprobs_of_no_targets_is_an_empty_row_on_every_path():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8))
    idx, none = torch.randint(0, 50, (2, 5)), torch.zeros(2, 0, dtype=torch.long)
    for impl in ("reference", "chunked", "fused"):
        assert model.logprobs(idx, none, impl=impl).shape == (2, 0)


def test_entropy_is_the_same_on_the_plain_and_the_fused_path_and_log_v_when_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=1, n_embd=16))
    idx, y = torch.randint(0, 300, (3, 10)), torch.randint(0, 300, (3, 10))
    for temperature in (1.0, 0.7):
        plain = model.logprobs(idx, y, impl="reference", entropy=True, temperature=temperature)[1]
        fused = model.logprobs(idx, y, impl="fused", entropy=True, temperature=temperature)[1]
        torch.testing.assert_close(plain, fused, atol=1e-5, rtol=0)
        assert not plain.requires_grad and plain.shape == (3, 10)
    from minipost.logprobs import token_entropy
    torch.testing.assert_close(token_entropy(torch.zeros(2, 50)), torch.full((2,), math.log(50)))
