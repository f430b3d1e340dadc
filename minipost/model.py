"""A tiny GPT in plain PyTorch: the model every stage of minipost trains.

The architecture is GPT-2's (Radford et al. 2019), at toy scale:
    tokens -> token embedding + learned position embedding
           -> n_layer x [x + attn(LN(x)); x + mlp(LN(x))]      (pre-LayerNorm blocks)
           -> LN -> logits = h @ wte^T                          (output layer tied to the input embedding)
Attention goes through `F.scaled_dot_product_attention`; weights start as in GPT-2 (N(0, 0.02), and the two
projections that write into the residual stream scaled by 1/sqrt(2 * n_layer)).

Post-training needs three things a pretraining-only GPT often lacks, all here:
- **left padding**: a batch of prompts of different lengths is left-padded so every prompt ends at the same
  column and generation appends on the right. `attention_mask` (B, T) marks real tokens; positions are counted
  over real tokens only, and no real token attends to padding, so a sequence's logits are the same alone or in
  a padded batch (tests check it).
- **a KV cache** for generation: keys and values of past tokens are stored, so each new token costs one
  position of compute instead of re-running the whole sequence.
- **an optional value head** (a linear layer on the final hidden state) for PPO's critic.

Shape legend: B batch, T time (sequence), C channels (n_embd), H heads, D head size (C // H), V vocabulary,
S cache slots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minipost.logprobs import autocast_dtype, linear_logprobs, token_entropy, token_logprobs


FUSED_VOCAB = 32768  # CausalLM.logprobs(impl="auto") fuses the output layer and the log-prob from this vocabulary
#                     up; below it the logits are small, and the fused path's second matmul costs more than it saves


@dataclass
class GPTConfig:
    vocab_size: int = 1030  # BPE ranks + special tokens (set from the tokenizer)
    block_size: int = 256  # longest sequence (positions) the model can see
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0  # off by default: log-probs that feed a ratio or a KL must be deterministic
    value_head: bool = False  # add a scalar head for PPO's critic
    gelu: str = "exact"  # the MLP's GELU: "exact" (erf), or "tanh", the approximation GPT-2's weights were trained with

    @property
    def kv_heads(self) -> int:  # heads of keys and values (every query head has its own here)
        return self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Model sizes by preset. nano: ~1M parameters, trains on a laptop CPU in minutes. small: ~11M, one GPU.
PRESETS = {
    "nano": dict(block_size=256, n_layer=4, n_head=4, n_embd=128),
    "small": dict(block_size=512, n_layer=6, n_head=6, n_embd=384),
}


class KVCache:
    """Keys and values of every layer for the tokens seen so far, plus which slots hold real (non-pad) tokens.

    k, v: (L, B, K, S, D) preallocated, K = cfg.kv_heads heads of keys and values (GPT: every query head's; the
    decoder's grouped-query attention: fewer), D = cfg.head_dim; `length` slots are filled. `valid` (B, S) is
    False for padding slots.
    `next_pos` (B,) is the position id the next token of each row gets (padding does not count).
    """

    def __init__(self, cfg, batch_size: int, max_len: int, device, dtype):
        shape = (cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim)  # (L, B, K, S, D)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0

    def keep(self, rows: torch.Tensor):
        """Keep only the batch rows where `rows` (B,) is True (finished rows leave a generate() batch)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.valid, self.next_pos = self.valid[rows], self.next_pos[rows]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}")
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.proj.residual = True  # scaled at init, see GPT._init_weights
        self.dropout = cfg.dropout

    def forward(self, x, attn_mask, cache: KVCache | None, layer: int):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is not None:  # write this step's keys/values into the cache, then attend over all filled slots
            s0 = cache.length
            cache.k[layer, :, :, s0:s0 + T] = k
            cache.v[layer, :, :, s0:s0 + T] = v
            k = cache.k[layer, :, :, :s0 + T]  # (B, H, S, D)
            v = cache.v[layer, :, :, :s0 + T]
        drop = self.dropout if self.training else 0.0
        if attn_mask is None:  # no padding, no cache: the fast fused causal path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.proj.residual = True
        self.drop = nn.Dropout(cfg.dropout)
        self.tanh = cfg.gelu == "tanh"

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh" if self.tanh else "none")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, attn_mask, cache, layer, rope=None):  # (rope: the decoder's blocks take it; GPT-2's not)
        x = x + self.attn(self.ln1(x), attn_mask, cache, layer)
        x = x + self.mlp(self.ln2(x))
        return x


class CausalLM(nn.Module):
    """What every model here shares, whatever its blocks: positions and the attention mask under left padding and
    a KV cache, the forward pass around the blocks, the value head, and generate(). A model sets self.cfg, self.wte
    (token embedding), self.blocks, self.ln_f (final norm), self.value_head, and says how tokens enter (embed),
    what its blocks get besides the hidden states (block_inputs: the decoder's rotary angles) and which matrix
    is its output layer (output_weight)."""

    checkpointing: bool = False  # activation checkpointing (--checkpointing): with grad on, keep each block's input
    #                              only and run the block again in backward: less memory, more compute
    n_tokens: int | None = None  # how many of the output rows are tokens (None: all). A Hugging Face folder's
    #                              model may have more rows than its tokenizer has tokens (Qwen: 151,936 and
    #                              151,669); the logits are then the tokens' only, in training and in sampling

    def embed(self, idx, pos):
        raise NotImplementedError

    def block_inputs(self, pos):
        return None

    def output_weight(self) -> torch.Tensor:
        return self.wte.weight  # tied to the input embedding

    def positions_and_mask(self, idx, attention_mask=None, cache: KVCache | None = None):
        """Position ids and the attention mask for idx (B, T), with left padding and a KV cache.

        No padding and no cache (training): positions 0..T-1 and attn_mask None (the fused causal path).
        Otherwise a token's position counts the real tokens before it in its row (so left padding does not
        shift it), and attn_mask (B, 1, T, S) lets each query see the real keys at or before its own slot; S is
        T without a cache, every filled cache slot with one. With a cache, this records the new tokens'
        validity and advances cache.next_pos (forward advances cache.length after the blocks have written).
        """
        T = idx.shape[1]
        if attention_mask is None and cache is None:  # the plain training path
            assert T <= self.cfg.block_size, f"sequence of {T} tokens > block_size {self.cfg.block_size}"
            return torch.arange(T, device=idx.device), None  # (T,), no mask
        valid = (torch.ones_like(idx, dtype=torch.bool) if attention_mask is None
                 else attention_mask.bool())  # (B, T)
        start = 0 if cache is None else cache.length
        base = 0 if cache is None else cache.next_pos[:, None]  # (B, 1)
        pos = base + valid.long().cumsum(dim=1) - 1  # position = number of real tokens before this one
        pos = pos.clamp(min=0)  # (B, T); pads get position 0 (their outputs are never used)
        if cache is not None:
            cache.valid[:, start:start + T] = valid
            cache.next_pos += valid.long().sum(dim=1)
            key_valid = cache.valid[:, :start + T]  # (B, S)
        else:
            key_valid = valid  # (B, S = T)
        assert int(pos.max()) < self.cfg.block_size, "sequence longer than block_size"
        q_slot = torch.arange(start, start + T, device=idx.device)  # (T,)
        k_slot = torch.arange(key_valid.shape[1], device=idx.device)  # (S,)
        causal = k_slot[None, :] <= q_slot[:, None]  # (T, S)
        attn_mask = causal[None] & key_valid[:, None, :]  # (B, T, S): real keys at or before the query
        attn_mask = attn_mask | (k_slot[None, :] == q_slot[:, None])[None]  # a pad query sees itself: no NaN
        return pos, attn_mask[:, None]  # (B, T); (B, 1, T, S), broadcast over heads

    def forward(self, idx, attention_mask=None, cache: KVCache | None = None, return_hidden: bool = False,
                logits_to_keep: int | None = None):
        """idx (B, T) token ids -> logits (B, T, V) (and the final hidden states (B, T, C) if asked).

        attention_mask (B, T): 1 for real tokens, 0 for padding (left padding). With a cache, idx holds only the
        new tokens and attention_mask their validity. logits_to_keep k: logits for the last k positions only,
        (B, k, V), and None for k = 0 (a critic needs only the hidden states); the output layer is V / C times
        wider than a block's input, so skipping it on prompt tokens nobody scores saves real compute.
        """
        pos, attn_mask = self.positions_and_mask(idx, attention_mask, cache)  # (B, T) or (T,); (B, 1, T, S)
        x = self.embed(idx, pos)  # (B, T, C)
        extra = self.block_inputs(pos)
        for i, block in enumerate(self.blocks):
            if self.checkpointing and torch.is_grad_enabled() and cache is None:  # (train or eval mode: RL's
                x = checkpoint(block, x, attn_mask, cache, i, extra, use_reentrant=False)  # policies train in
                # eval mode, no dropout) x (B, T, C) is all the block keeps for backward
            else:
                x = block(x, attn_mask, cache, i, extra)
        if cache is not None:
            cache.length += idx.shape[1]  # the T new slots are filled now
        h = self.ln_f(x)  # (B, T, C)
        w = self.output_weight()[:self.n_tokens]  # (V, C): the rows that are tokens (n_tokens None: all)
        if logits_to_keep is None:
            logits = h @ w.T  # (B, T, V)
        else:
            logits = h[:, h.shape[1] - logits_to_keep:] @ w.T if logits_to_keep else None  # (B, k, V)
        return (logits, h) if return_hidden else logits

    def logprobs(self, idx, targets, attention_mask=None, *, temperature: float = 1.0, impl: str = "auto",
                 return_hidden: bool = False, top1: bool = False, entropy: bool = False):
        """log pi(targets) at the last k = targets.shape[1] positions -> (B, k) float32: the output layer and the
        log-prob in one step, all an objective that scores chosen tokens needs (SFT, DPO, the RL passes).

        impl "fused", or "auto" at a vocabulary of FUSED_VOCAB or more: logprobs.linear_logprobs, the logits
        made a chunk of tokens at a time and never whole. Otherwise the k positions' logits (logits_to_keep),
        then token_logprobs(impl): "reference", "chunked", "triton", "auto" (the plain path). Extras, in this
        order: with entropy, each position's entropy -sum p log p at the temperature (B, k) float32, a metric
        without gradient; with top1, whether each target is the most likely token (B, k) bool (token accuracy);
        with return_hidden, the final hidden states (B, T, C).
        """
        k = targets.shape[1]
        fused = impl == "fused" or (impl == "auto" and self.cfg.vocab_size >= FUSED_VOCAB)
        if fused or k == 0:  # (k = 0: no logits to keep, and linear_logprobs gives (B, 0))
            _, h = self(idx, attention_mask, return_hidden=True, logits_to_keep=0)  # (B, T, C), no logits
            w = self.output_weight()[:self.n_tokens]  # (V, C) the rows that are tokens
            got = linear_logprobs(h[:, h.shape[1] - k:], w, targets, temperature=temperature, entropy=entropy,
                                  top1=top1)
            logp, ent, hits = got if entropy or top1 else (got, None, None)  # (B, k) each
        else:
            logits, h = self(idx, attention_mask, return_hidden=True, logits_to_keep=k)  # (B, k, V), (B, T, C)
            logp = token_logprobs(logits, targets, temperature=temperature, impl=impl)  # (B, k)
            hits = logits.argmax(dim=-1) == targets if top1 else None
            ent = token_entropy(logits, temperature) if entropy else None  # (B, k), a chunk at a time
        extras = ([ent] if entropy else []) + ([hits] if top1 else []) + ([h] if return_hidden else [])
        return (logp, *extras) if extras else logp

    def values(self, hidden):
        """PPO critic: hidden (B, T, C) -> value estimates (B, T) in float32."""
        return self.value_head(hidden).squeeze(-1).float()

    @torch.no_grad()
    def generate(self, idx, attention_mask=None, max_new_tokens=32, temperature=1.0, top_k=None, top_p=None,
                 stop_token=None, pad_id=0, generator=None, compact=True, on_token=None, rows_of=None):
        """Sample continuations for a left-padded batch of prompts, with the KV cache.

        idx (B, P) prompt ids (left-padded), attention_mask (B, P). temperature 0 means greedy.
        Each row adds at most min(max_new_tokens, block_size - its prompt length) tokens.
        Returns (tokens, mask, logprobs), each (B, N) with N <= max_new_tokens:
          tokens   the new tokens; after a row's stop token the rest is pad_id
          mask     1 on generated tokens up to and including the stop token
          logprobs log pi(token) under the temperature-scaled distribution *before* top-k/top-p filtering,
                   the same number a training forward pass computes with `token_logprobs(..., temperature)`.

        Finished rows leave the batch (`compact`): the loop runs until the longest row is done, and in RL most
        rows stop long before that one (nano: mean 13 of 48 tokens), so once at most half of the rows in the
        batch are still going, the others' cache rows are dropped and every later step costs only the live
        rows. Off, the finished rows ride along as padding to the end (the same tokens, more compute).
        on_token(rows, tokens), if given, is called after every step with the batch rows that got a token and
        those tokens, each (b,): a chat streams its answer from it (minipost/chat.py).
        rows_of (offset, total): these B rows are rows offset .. offset + B - 1 of a batch of `total` that other
        processes sample (torchrun): each step draws `total` uniforms and uses its rows' ones, so each row's
        tokens are those one process sampling the whole batch would draw (minipost/dist.py).
        """
        B, P = idx.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(idx)
        n_real = attention_mask.sum(dim=1)  # (B,) prompt tokens per row
        budget = (self.cfg.block_size - n_real).clamp(max=max_new_tokens)  # (B,) new tokens each row may add
        if int(budget.min()) <= 0:
            raise ValueError(f"a prompt of {int(n_real.max())} tokens leaves no room to generate (block_size "
                             f"{self.cfg.block_size}); shorten the prompt")
        steps = int(budget.max())  # a long prompt caps its own row, not the whole batch
        tokens = torch.full((B, steps), pad_id, dtype=idx.dtype, device=idx.device)  # (B, N) filled row by row
        mask = torch.zeros(B, steps, dtype=torch.long, device=idx.device)
        logps = torch.zeros(B, steps, device=idx.device)
        rows = torch.arange(B, device=idx.device)  # (b,) which row of the batch each cache row is
        live = torch.ones(B, dtype=torch.bool, device=idx.device)  # (b,) cache rows still generating
        # the keys and values are kept in the dtype they are made in (under CUDA's autocast: bf16)
        cache = KVCache(self.cfg, B, P + steps, idx.device, autocast_dtype(idx.device, self.wte.weight.dtype))
        logits = self(idx, attention_mask, cache=cache, logits_to_keep=1)[:, -1]  # (B, V): left padding puts every
        # prompt's last token in the last column
        n = 0  # columns written
        for t in range(steps):
            logits = logits.float()
            if not bool(torch.isfinite(logits).all()):  # weights blown up: stop with a clear message
                raise FloatingPointError(f"generate: the model's logits are not finite at new token {t}: stopping "
                                         "(its weights have diverged; usual cause: a learning rate too high)")
            logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)  # (b, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1)  # (b,)
            else:
                offset, total = rows_of or (0, B)  # `total` draws every step (B alone), so compact changes no token
                u = torch.rand(total, 1, generator=generator, device=idx.device)[offset + rows]  # (b, 1)
                nxt = sample(filter_probs(logp.exp(), top_k, top_p), u)  # (b,)
            write = rows[live]  # batch rows that get a token in column t
            tokens[write, t] = nxt[live]
            mask[write, t] = 1
            logps[write, t] = logp.gather(1, nxt[:, None]).squeeze(1)[live]
            if on_token is not None:
                on_token(write, nxt[live])
            n = t + 1
            finished = budget[rows] <= t + 1  # (b,) this row's context is full
            if stop_token is not None:
                finished = finished | (nxt == stop_token)
            live = live & ~finished
            if not bool(live.any()):
                break
            if compact and 2 * int(live.sum()) <= len(rows):  # at most half still going: drop the others
                cache.keep(live)
                rows, nxt, live = rows[live], nxt[live], live[live]
            logits = self(nxt[:, None], live.long()[:, None], cache=cache)[:, -1]
        return tokens[:, :n], mask[:, :n], logps[:, :n]


class GPT(CausalLM):
    """GPT-2's blocks (the module docstring) on CausalLM's machinery: learned positions added to the tokens."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.value_head = nn.Linear(cfg.n_embd, 1) if cfg.value_head else None
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(m, "residual", False) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()  # GPT-2's convention

    def embed(self, idx, pos):
        return self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)


def sample(probs, u):
    """Inverse-CDF sampling: for each row of probs (b, V), the first token whose cumulative probability passes
    u * (row total), u (b, 1) uniform in [0, 1). The same distribution as torch.multinomial(probs, 1), which on
    the CPU draws V exponentials per row (measured: 2.7 ms for 128 x 1030, a fifth of a nano rollout's time)
    where this takes one uniform. -> (b,) token ids."""
    cdf = probs.cumsum(dim=-1)  # (b, V)
    nxt = torch.searchsorted(cdf, u.to(cdf.dtype) * cdf[:, -1:], right=True).squeeze(1)  # (b,) first cdf > u * total
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)  # (b,) last token with p > 0
    return torch.minimum(nxt, last)  # u * total can round up to the total: never past the last possible token


def filter_probs(probs, top_k=None, top_p=None):
    """Keep the top_k most likely tokens and/or the smallest set whose mass reaches top_p; renormalise."""
    if top_k is not None and top_k > 0:
        kth = probs.topk(min(top_k, probs.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        probs = probs.masked_fill(probs < kth, 0.0)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of strictly more likely tokens
        sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)  # the top token always survives
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs / probs.sum(dim=-1, keepdim=True)


def left_pad(seqs: list[list[int]], pad_id: int, device=None):
    """Left-pad token lists into (ids, attention_mask), each (B, T_max)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, T - len(s):] = torch.tensor(s)
            mask[i, T - len(s):] = 1
    return ids.to(device), mask.to(device)
