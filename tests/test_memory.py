"""minipost/bench/memory.py: parameter counts against the built models (and transformers'), the activation
estimate against what autograd saves, the three log-prob paths' formulas against the bytes their tensors take,
one budget by hand, and the command line's one-line error."""
import dataclasses
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from minipost import logprobs
from minipost.bench import memory
from minipost.bench.memory import GiB, SIZES, activation_bytes, budget, logit_bytes, lora_params, num_params
from minipost.decoder import Decoder, DecoderConfig
from minipost.logprobs import LINEAR_CHUNK_ELEMENTS, linear_logprobs, token_logprobs
from minipost.lora import add_lora, trainable
from minipost.model import FUSED_VOCAB, GPT, GPTConfig


def build(cfg):
    with torch.device("meta"):  # shapes only: no memory, no init
        return GPT(cfg) if isinstance(cfg, GPTConfig) else Decoder(cfg)


@pytest.mark.parametrize("name", list(SIZES))
def test_num_params_is_the_built_models_count(name):
    cfg = SIZES[name]
    assert num_params(cfg) == sum(p.numel() for p in build(cfg).parameters())
    model = add_lora(build(cfg), rank=16, alpha=32)  # by default, every attention and MLP matrix
    assert lora_params(cfg, 16) == trainable(model)


def test_num_params_counts_biases_norms_and_the_value_head():
    for cfg in (DecoderConfig(o_bias=True, value_head=True), DecoderConfig(family="qwen3", qk_norm=True),
                DecoderConfig(family="qwen2", qkv_bias=True, tie_embeddings=False), GPTConfig(value_head=True)):
        assert num_params(cfg) == sum(p.numel() for p in build(cfg).parameters())


def test_untied_output_layer_adds_exactly_V_times_C():
    for name, cfg in SIZES.items():
        if isinstance(cfg, DecoderConfig):
            untied = dataclasses.replace(cfg, tie_embeddings=False)
            assert num_params(untied) - num_params(cfg) == cfg.vocab_size * cfg.n_embd, name


# The sizes each model's card (Hugging Face hub) publishes; (total, non-embedding) where it gives both.
PUBLISHED = {
    "Qwen3-0.6B": (0.6e9, 0.44e9),  # "0.6B, non-embedding 0.44B"
    "Qwen3-1.7B": (1.7e9, 1.4e9),  # "1.7B, non-embedding 1.4B"
    "Qwen2.5-0.5B": (0.49e9, 0.36e9),  # "0.49B, non-embedding 0.36B"
    "Qwen2.5-1.5B": (1.54e9, 1.31e9),  # "1.54B, non-embedding 1.31B"
    "Llama-3.2-1B": (1.23e9, None),  # Meta's card: 1.23B
    "Llama-3.2-3B": (3.21e9, None),  # Meta's card: 3.21B
    "SmolLM2-135M": (134.5e6, None),  # 134.5M
    "SmolLM2-360M": (362e6, None),  # 362M
    "SmolLM2-1.7B": (1.71e9, None),  # 1.71B
    "GPT-2": (124e6, None),  # the hub's card: 124M
    "GPT-2-medium": (355e6, None),  # 355M
    "GPT-2-large": (774e6, None),  # 774M
    "GPT-2-xl": (1542e6, None),  # the paper's Table 2: 1542M (the card rounds it to "1.5B")
}


def test_counts_match_the_published_sizes_within_3_percent():
    assert set(PUBLISHED) == set(SIZES)
    for name, (total, non_embedding) in PUBLISHED.items():
        cfg = SIZES[name]
        assert num_params(cfg) == pytest.approx(total, rel=0.03), name
        if non_embedding is not None:  # Qwen's cards: everything but the (tied) embedding
            assert num_params(cfg) - cfg.vocab_size * cfg.n_embd == pytest.approx(non_embedding, rel=0.03), name


def saved_bytes(model, idx) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass, each storage once, parameters
    (and their transposed views) not counted."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx)
    return sum(seen.values())


@pytest.mark.parametrize("family,dtype", [("llama", torch.bfloat16), ("qwen2", torch.float32),
                                          ("qwen3", torch.bfloat16), ("qwen3", torch.float32),
                                          ("gpt2", torch.float32)])
def test_activation_estimate_is_what_autograd_saves(family, dtype):
    """A layer adds exactly A bytes per token; the rest is the final norm plus the token ids and positions
    (or rotary angles). GPT-2 in float32 only: on the CPU, LayerNorm keeps bf16 statistics (CUDA: float32)."""
    def make(n_layer):
        if family == "gpt2":
            return GPT(GPTConfig(vocab_size=97, n_layer=n_layer, n_head=4, n_embd=64)).to(dtype)
        return Decoder(DecoderConfig(family=family, vocab_size=97, n_layer=n_layer, n_head=4, n_kv_head=2,
                                     n_embd=64, head_dim=32, intermediate_size=96, qkv_bias=family == "qwen2",
                                     qk_norm=family == "qwen3")).to(dtype)

    torch.manual_seed(0)
    idx = torch.randint(0, 97, (3, 40))  # N = 120 tokens
    one, two = saved_bytes(make(1), idx), saved_bytes(make(2), idx)
    A, A_final = activation_bytes(make(1).cfg, torch.finfo(dtype).bits // 8)
    assert two - one == 120 * A
    extra = one - 120 * (A + A_final)  # token ids (8 bytes each); positions or rotary angles (2 x 40 x 32 at most)
    assert 0 <= extra <= 120 * 8 + 2 * 40 * 32 * 4


def test_a_budget_by_hand():
    """A tiny llama: V 100, C 8, F 16, L 2, H 2, K 1, D 4, tied output layer; SFT on 10 tokens in bf16."""
    cfg = DecoderConfig(vocab_size=100, n_embd=8, intermediate_size=16, n_layer=2, n_head=2, n_kv_head=1,
                        head_dim=4)
    # parameters: embedding 100*8 = 800; a layer: q 8*8 + k 8*4 + v 8*4 + o 8*8 = 192, gate, up, down 3*8*16 = 384,
    # two RMSNorms 16 -> 592; two layers 1184; final norm 8. P = 800 + 1184 + 8 = 1992
    assert num_params(cfg) == 1992
    # weights = gradients = 1992 * 2 = 3984 bytes; AdamW 1992 * 8 = 15936
    # A = 2 ((4 + 2*2) 8 + 4) + 4*2*4*2 + 4*2 + 4*16*2 = 136 + 64 + 8 + 128 = 336; A_final = (4 + 4) 8 + 4 = 68
    # activations = 10 (2 * 336 + 68) = 7400; plain logits = 10 * 100 * (2 + 12) = 14000
    parts = budget(cfg, mode="sft", tokens=10, logprobs="plain")
    assert {k: v * GiB for k, v in parts.items() if v} == {"weights": 3984, "gradients": 3984, "adamw": 15936,
                                                          "activations": 7400, "logits": 14000, "total": 45304}
    # checkpointing keeps each block's input (2 * 8 * 2 = 32) and one block: 10 (32 + 336 + 68) = 4360
    assert budget(cfg, mode="sft", tokens=10, checkpointing=True)["activations"] * GiB == 4360
    # chunked: 10 * 100 * 2 * 2 = 4000 for the logits and their gradient, + one chunk of all 10 rows 10 * 100 * 4
    assert budget(cfg, mode="sft", tokens=10, logprobs="chunked")["logits"] * GiB == 8000
    # fused (the default): 10 tokens are one chunk (R = 2^24 // 100), no previous chunk: its logits and gradient
    # 10 * 100 * 2*2 = 4000, or with the bf16 product dx^T h 4000 + 100 * 8 * 2 = 5600, the larger; + the float32
    # buffer of the output layer's gradient 100 * 8 * 4 = 3200
    assert budget(cfg, mode="sft", tokens=10)["logits"] * GiB == 8800
    # inference with 10 cached tokens: weights 3984 + KV 10 * (2*2*1*4*2 = 32) = 320 + prefill 10 * 336 = 3360
    assert budget(cfg, mode="inference", tokens=10)["total"] * GiB == 3984 + 320 + 3360
    # GRPO, 4 rows of 3 prompt + 5 new tokens, 2 rows a pass, chunked: generation = KV 4*8*32 = 1024 + prefill
    # 4*3*336 + 4*100*16 = 10432; training = gradients 3984 + activations 2*8*740 = 11840 + logits 2*5*100*4
    # + 10*100*4 = 8000 -> 23824; total = weights 2 * 3984 + AdamW 15936 + max(11456, 23824) = 47728
    grpo = budget(cfg, mode="grpo", rollout=(4, 3, 5), micro_batch=2, logprobs="chunked")
    assert grpo["total"] * GiB == 47728
    # fused: the logits 8800 as SFT's (10 answer tokens a pass) -> training 24624, total 7968 + 15936 + 24624
    assert budget(cfg, mode="grpo", rollout=(4, 3, 5), micro_batch=2)["total"] * GiB == 48528
    # LoRA r 2: per layer 2 (2 (8 + 8) + 2 (8 + 4) + 3 (8 + 16)) = 256, two layers 512 trained; the output layer
    # is frozen, so the fused logits have no product and no gradient buffer: 4000
    lora = budget(cfg, mode="lora", tokens=10, lora_rank=2)
    assert (lora["weights"] * GiB, lora["gradients"] * GiB, lora["adamw"] * GiB) == (2 * 2504, 1024, 4096)
    assert lora["logits"] * GiB == 4000
    with pytest.raises(ValueError, match="plain, chunked or fused"):
        budget(cfg, mode="sft", tokens=10, logprobs="triton")


def test_fused_logits_are_smaller_than_chunked_and_chunked_than_plain_at_a_qwen_vocabulary():
    cfg = SIZES["Qwen3-0.6B"]
    assert cfg.vocab_size == 151936 >= FUSED_VOCAB  # CausalLM.logprobs(impl="auto") takes the fused path
    plain, chunked, fused = (budget(cfg, mode="sft", tokens=4096, logprobs=p)["logits"]
                             for p in ("plain", "chunked", "fused"))
    assert fused < chunked < plain / 3  # 4 bytes per logit against 14; fused: nothing of size N V
    assert budget(cfg, mode="sft", tokens=4096)["logits"] == fused  # the default


def test_fused_formula_uses_the_chunk_the_code_makes():
    """R = LINEAR_CHUNK_ELEMENTS // V tokens a chunk (110 at Qwen's V): 3 b bytes a logit of one chunk; for bf16
    when the output layer trains, the larger bf16 product dx^T h (R V 4 + V C 2) and the buffer V C 4; the same
    at 4096 tokens as at 8192."""
    cfg = SIZES["Qwen3-0.6B"]
    V, C = cfg.vocab_size, cfg.n_embd
    R = LINEAR_CHUNK_ELEMENTS // V
    assert R == 110 and R * V * 4 + V * C * 2 > R * V * 12
    for tokens in (4096, 8192):
        assert logit_bytes(cfg, tokens, 2, "fused") == R * V * 4 + V * C * 2 + V * C * 4  # SFT, GRPO's policy
        assert logit_bytes(cfg, tokens, 2, "fused", output_trains=False) == R * V * 6  # LoRA
        assert logit_bytes(cfg, tokens, 4, "fused") == R * V * 12  # float32: the buffer is the gradient itself
    assert logit_bytes(cfg, R, 2, "fused", output_trains=False) == R * V * 4  # one chunk: no previous one
    lora = budget(cfg, mode="lora", tokens=4096, lora_rank=16)["logits"] * GiB
    assert lora == R * V * 6 and budget(cfg, mode="sft", tokens=4096)["logits"] * GiB == R * V * 4 + V * C * 6


class LiveBytes(TorchDispatchMode):
    """The bytes of the tensor storages that torch's ops make while it is on (CPU): live now, and the most at once.
    Storages of the tensors passed in, made before, do not count."""

    def __init__(self, *before):
        super().__init__()
        self.live = self.peak = 0
        self.known = {t.untyped_storage().data_ptr() for t in before}

    def _free(self, ptr, nbytes):
        self.live -= nbytes
        self.known.discard(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.known:
                storage = t.untyped_storage()
                ptr, nbytes = storage.data_ptr(), storage.nbytes()
                if ptr:
                    self.known.add(ptr)
                    self.live += nbytes
                    weakref.finalize(storage, self._free, ptr, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def peak_logit_bytes(path, hidden, weight, targets, hold_logits=True) -> int:
    """The most bytes alive at once over one forward and backward pass of the log-probs of `targets` along `path`,
    above the inputs. hold_logits=False drops the logits after the forward pass, as CausalLM.logprobs does."""
    with LiveBytes(hidden, weight, targets) as mem:
        if path == "fused":  # its PyTorch path, the one the CPU runs
            logp = linear_logprobs(hidden, weight, targets, impl="chunked")
        else:
            logits = hidden @ weight.T
            logp = token_logprobs(logits, targets, impl="reference" if path == "plain" else "chunked")
            if not hold_logits:
                del logits
        logp.sum().backward()
        del logp
    return mem.peak


@pytest.mark.parametrize("path,dtype,trains,C", [
    ("plain", torch.float32, False, 32), ("plain", torch.bfloat16, False, 32), ("chunked", torch.float32, False, 32),
    ("chunked", torch.bfloat16, False, 32), ("fused", torch.float32, True, 32), ("fused", torch.bfloat16, True, 32),
    ("fused", torch.bfloat16, False, 32),  # R / C = 1/2 below; at 1/20 (Qwen's 110 / 1024 is about 1/9) the bf16
    ("fused", torch.float32, True, 320), ("fused", torch.bfloat16, True, 320)])  # product dx^T h is the peak
def test_logit_formulas_are_what_the_code_allocates(path, dtype, trains, C, monkeypatch):
    """logit_bytes against the bytes the tensors take, counted one by one on the CPU, chunks made small (16 tokens
    for fused, 4 rows for chunked) so that there are several. fused runs its PyTorch path here, whose two moments
    are counted by hand below (a float32 copy and gradient where Triton's are in the logits' dtype); the hidden
    states' gradient (N C b) is
    alive at its peak, and for float32 weights the buffer the weight's gradient is summed in, which is that
    gradient (budget counts it in gradients). plain counts the logits as held by the caller; CausalLM.logprobs
    drops them after the forward pass, N V b less."""
    for module in (logprobs, memory):
        monkeypatch.setattr(module, "LINEAR_CHUNK_ELEMENTS", 1 << 14)
        monkeypatch.setattr(module, "CHUNK_ELEMENTS", 1 << 12)
    N, V = 100, 1000
    torch.manual_seed(0)
    hidden = torch.randn(N, C, dtype=dtype, requires_grad=True)
    weight = (torch.randn(V, C) * 0.1).to(dtype).requires_grad_(trains)
    targets = torch.randint(0, V, (N,))
    b = torch.finfo(dtype).bits // 8
    expected = logit_bytes(DecoderConfig(vocab_size=V, n_embd=C), N, b, path, output_trains=trains)
    if path == "fused":  # the PyTorch path's two moments (the module docstring), by hand
        R, f = (1 << 14) // V, 4 if b < 4 else 0
        product = R * V * 2 * b + V * C * 2 if trains and b < 4 else 0
        expected = max(R * V * (b + f + 4), product) + (V * C * f if trains else 0)
        expected += N * C * b + (V * C * 4 if trains and b == 4 else 0)
    small = 32 * N  # a few floats a token: the upstream gradient, row statistics, the log-probs
    assert 0 <= peak_logit_bytes(path, hidden, weight, targets) - expected <= small
    if path == "plain":
        assert 0 <= peak_logit_bytes(path, hidden, weight, targets, hold_logits=False) - (expected - N * V * b) <= small


def test_cli_prints_every_model_and_a_bad_name_is_one_line(capsys):
    memory.main([])
    out = capsys.readouterr().out
    assert all(name in out for name in SIZES)
    with pytest.raises(SystemExit) as e:
        memory.main(["--model", "Qwen9-1T"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Qwen9-1T" in err and "Qwen3-0.6B" in err
    with pytest.raises(SystemExit) as e:
        memory.main(["--gpus", "8,big"])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_num_params_matches_transformers():
    transformers = pytest.importorskip("transformers")
    from minipost.hf import model_config
    tiny = dict(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6)
    for family, cls, name in (("qwen3", transformers.Qwen3Config, "Qwen3ForCausalLM"),
                              ("llama", transformers.LlamaConfig, "LlamaForCausalLM"),
                              ("qwen2", transformers.Qwen2Config, "Qwen2ForCausalLM")):
        for tied in (True, False):
            config = cls(**tiny, tie_word_embeddings=tied)
            with torch.device("meta"):
                theirs = getattr(transformers, name)(config).num_parameters()
            ours = model_config(family, config.to_dict(), f"tiny {family}")
            assert ours.tie_embeddings == tied
            assert num_params(ours) == theirs, (family, tied)
    config = transformers.GPT2Config(vocab_size=257, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    with torch.device("meta"):
        theirs = transformers.GPT2LMHeadModel(config).num_parameters()
    assert num_params(model_config("gpt2", config.to_dict(), "tiny gpt2")) == theirs


def test_amp_counts_the_bf16_copies_autocast_keeps_of_the_trained_weights():
    """Under bf16 autocast every float32 weight a block's matmul reads is cast once and the copy kept until the
    autocast region ends (the CPU's autocast caches as CUDA's does): 2 bytes for each of matrix_params, and
    nothing for the embedding, which is looked up. Counted after a no-grad forward, when nothing else is alive."""
    cfg = DecoderConfig(family="qwen3", vocab_size=500, n_embd=64, intermediate_size=96, n_layer=2, n_head=4,
                        n_kv_head=2, head_dim=16, tie_embeddings=True, block_size=64, qk_norm=True)
    torch.manual_seed(0)
    model = Decoder(cfg)
    idx = torch.randint(0, 500, (2, 16))
    with LiveBytes(*model.parameters(), *model.buffers(), idx) as mem, torch.no_grad(), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, logits_to_keep=1)
        kept = mem.live - out.untyped_storage().nbytes()
    assert kept == 2 * memory.matrix_params(cfg) > 0
    b = budget(cfg, mode="sft", tokens=32, dtype_bytes=4, amp=True)
    assert b["amp"] * memory.GiB == 2 * memory.matrix_params(cfg) + 2 * 2 * 500 * 64  # + the output's copy, product
    with pytest.raises(ValueError, match="amp counts float32 weights"):
        budget(cfg, mode="sft", tokens=32, dtype_bytes=2, amp=True)
