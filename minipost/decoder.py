"""The modern decoder of Llama 3, Qwen2 and Qwen3: GPT-2's pre-norm blocks with four changes.

    tokens -> token embedding                                    (no learned positions: RoPE rotates q and k)
           -> n_layer x [x + attn(RMSNorm(x)); x + swiglu(RMSNorm(x))]
           -> RMSNorm -> logits = h @ W_out^T                    (W_out tied to the embedding, or its own)

- RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * w. No mean subtracted, no bias.
- Rotary position embeddings (RoPE, Su et al. 2021, arXiv:2104.09864): each pair of a head's channels
  (i, i + D/2) is rotated by the angle pos * theta^(-2i/D), in q and in k, so q.k depends on the distance
  between two positions only. Llama 3 stretches the low frequencies for long contexts (rope_scaling).
- SwiGLU (Shazeer 2020, arXiv:2002.05202): down(silu(gate(x)) * up(x)) in place of GPT-2's GELU MLP.
- Grouped-query attention (GQA, Ainslie et al. 2023, arXiv:2305.13245): n_kv_head < n_head key/value heads,
  each shared by n_head / n_kv_head query heads; the KV cache holds only the n_kv_head ones.

What each family differs in (the rest is the same code):

    family | q/k/v bias | RMSNorm on q and k | output layer        | rope
    llama  | no         | no                 | tied (Llama 3.2 1B, | theta 500000, llama3 scaling
           |            |                    | SmolLM2) or own     | (SmolLM2: theta 100000, none)
    qwen2  | yes        | no                 | tied (0.5B) or own  | theta 1000000
    qwen3  | no         | yes (per head)     | tied (0.6B) or own  | theta 1000000

Everything around the blocks (left padding, the KV cache, generate(), logits_to_keep, the value head) is
model.py's CausalLM: this file holds blocks, not a second copy of that machinery. The names follow model.py's
GPT (wte, blocks, ln_f); minipost/hf.py maps a Hugging Face folder's weights onto them.

Shape legend: B batch, T time, C channels (n_embd), H query heads, K key/value heads, D head size, F the MLP's
width (intermediate_size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipost.model import CausalLM, KVCache

FAMILIES = ("llama", "qwen2", "qwen3")


@dataclass
class DecoderConfig:
    family: str = "llama"  # llama, qwen2 or qwen3 (the table above)
    vocab_size: int = 1030
    block_size: int = 256  # longest sequence (max_position_embeddings)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 2
    n_embd: int = 128
    head_dim: int = 32  # Qwen3 sets it apart from n_embd / n_head
    intermediate_size: int = 256
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3: {"rope_type": "llama3", "factor", "low_freq_factor",
    #                                   "high_freq_factor", "original_max_position_embeddings"}
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2)
    o_bias: bool = False  # a bias on the output projection (Llama or Qwen3 with attention_bias)
    qk_norm: bool = False
    tie_embeddings: bool = True
    value_head: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r}: expected one of {FAMILIES}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")

    @property
    def kv_heads(self) -> int:  # what model.KVCache stores per layer
        return self.n_kv_head


def rope_frequencies(cfg: DecoderConfig) -> torch.Tensor:
    """The rotation speed of each channel pair, theta^(-2i/D) for i < D/2 -> (D/2,) float32, with Llama 3's
    scaling (Llama 3 report, arXiv:2407.21783): wavelengths longer than original_max / low_freq_factor slow down
    by `factor`, shorter than original_max / high_freq_factor stay, and those between blend the two."""
    D = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))  # (D/2,)
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq  # (D/2,) positions a pair takes to turn once
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)  # (D/2,) the long ones slowed
        smooth = (old_len / wavelen - low) / (high - low)  # (D/2,) 0 .. 1 between the two wavelengths
        blended = (1 - smooth) * scaled / factor + smooth * scaled  # (D/2,)
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)  # (D/2,) the ones between
        inv_freq = torch.where(medium, blended, scaled)
    elif kind != "default":
        raise ValueError(f"rope_scaling type {kind!r}: only the default rotation and llama3's are supported")
    return inv_freq


def rotate(x, cos, sin):
    """Rotate each channel pair (i, i + D/2) of x (B, H, T, D) by the angles whose cos and sin are (B, 1, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin  # (B, H, T, D): (x1 cos - x2 sin, x2 cos + x1 sin)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w over the last dim (Zhang & Sennrich 2019, arXiv:1910.07467)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()  # (..., C) the statistic in float32 whatever x's dtype
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., C) / (..., 1)
        return self.weight * h.to(x.dtype)  # (C,) * (..., C)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        H, K, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = H, K, D
        self.q = nn.Linear(cfg.n_embd, H * D, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.n_embd, K * D, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.n_embd, K * D, bias=cfg.qkv_bias)
        self.o = nn.Linear(H * D, cfg.n_embd, bias=cfg.o_bias)
        self.q_norm = RMSNorm(D, cfg.norm_eps) if cfg.qk_norm else None  # Qwen3 (arXiv:2505.09388): each
        # head's q and k normalised
        self.k_norm = RMSNorm(D, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x, attn_mask, cache: KVCache | None, layer: int, rope):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
        k = self.k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, K, D)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope  # (B, 1, T, D) each
        q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)  # (B, H, T, D), (B, K, T, D)
        if cache is not None:  # the cache keeps K heads: GQA's memory saving
            s0 = cache.length
            cache.k[layer, :, :, s0:s0 + T] = k
            cache.v[layer, :, :, s0:s0 + T] = v
            k, v = cache.k[layer, :, :, :s0 + T], cache.v[layer, :, :, :s0 + T]  # (B, K, S, D)
        group = self.n_head // self.n_kv_head  # query heads per key/value head
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, S, D)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, D)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))  # (B, T, C)


class SwiGLU(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))  # (B, T, F) inside, (B, T, C) out


class DecoderBlock(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, attn_mask, cache, layer, rope):
        x = x + self.attn(self.norm1(x), attn_mask, cache, layer, rope)
        return x + self.mlp(self.norm2(x))


class Decoder(CausalLM):
    """Llama 3 / Qwen2 / Qwen3 on CausalLM's machinery (model.py): generate(), the KV cache, left padding."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        # the embedding's weight is made here and drawn below, where it is not on the meta device (shapes only:
        # hf.load_hf_model reads every weight from the file, and nn.Embedding's own init there imports
        # torch._dynamo, a second of a load)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, _weight=torch.empty(cfg.vocab_size, cfg.n_embd))
        if not self.wte.weight.is_meta:
            nn.init.normal_(self.wte.weight)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.value_head = nn.Linear(cfg.n_embd, 1) if cfg.value_head else None
        self.register_buffer("inv_freq", torch.empty(cfg.head_dim // 2), persistent=False)  # (D/2,)
        if not self.inv_freq.is_meta:  # (on the meta device, shapes only: hf.load_hf_model fills it in later)
            self.inv_freq.copy_(rope_frequencies(cfg))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, idx, pos):
        return self.wte(idx)  # (B, T, C): positions enter through the rotations

    def block_inputs(self, pos):
        """cos and sin of every position's rotation angles, (B or 1, 1, T, D) each, in the embedding's dtype."""
        pos = pos if pos.dim() == 2 else pos[None]  # (B, T) or (1, T)
        angles = pos[..., None].float() * self.inv_freq  # (B, T, D/2): float32, as the angles grow large
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, D): channel i and i + D/2 share one
        dtype = self.wte.weight.dtype
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def output_weight(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight
