# %% [markdown]
# # 13 · Real model families: Qwen3, Qwen2.5, Llama 3.2, SmolLM2 and GPT-2
#
# Every lesson so far trained minipost's own GPT, GPT-2's architecture at toy scale. The small models people
# post-train today share a newer decoder (minipost/decoder.py), and minipost loads their Hugging Face folders
# (minipost/hf.py): `--init hf:PATH` works in every command, so everything the lessons did applies to them.
# This lesson: (1) a folder, (2) what differs from GPT-2, on the shapes, (3) the same logits as transformers,
# (4) the family's chat format and its loss mask, (5) one SFT step by hand, checked against `train()`, (6) the
# model written back as a folder transformers reads.
#
# A real folder comes from a machine with network, e.g. `hf download Qwen/Qwen3-0.6B-Base --local-dir
# models/Qwen3-0.6B-Base` (docs/memory.md lists each family's and what fits which GPU); point MINIPOST_HF at
# it. Without one, the lesson writes a tiny random Qwen3 with transformers (no download): the same code, two
# layers and 64 channels. With a real folder, mind the memory: the SFT step keeps the weights, their gradients
# and AdamW's two moments, 16 bytes a weight in float32 (9.5 GB at Qwen3-0.6B's 596M), and `train()` loads its
# own copy for the check. Set MINIPOST_SMOKE=1 for the short version (the test suite runs it that way).

# %%
import os
from pathlib import Path

import minipost  # noqa: F401  before torch: then torch's idle threads sleep (minipost/threads.py)
import torch

from minipost import threads
from minipost.checkpoints import load_model
from minipost.common import DATA_DIR, config_with_preset, read_jsonl, seed_everything
from minipost.data import EpochBatches, collate, load_chats, num_targets, tokenize_chats
from minipost.export import export
from minipost.model import GPT, GPTConfig
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.sft import PRESETS, Config, sft_loss, train
from minipost.tokenizer import render_chat, special_id

from _setup import assert_same_weights, ensure_world, out_dir, tiny_hf_folder  # noqa: E402  (tutorials/_setup.py)

try:
    import transformers  # the reference to compare with; minipost itself never imports it
except ImportError:
    transformers = None

OUT = out_dir("13_real_models")
ensure_world()

# %% [markdown]
# ## 1. A folder
# `config.json` says the architecture and the shapes, `model.safetensors` holds the weights, `tokenizer.json`
# the byte-level BPE, `tokenizer_config.json` the chat template.

# %%
FOLDER = Path(os.environ.get("MINIPOST_HF", ""))
if not os.environ.get("MINIPOST_HF"):
    if transformers is None:
        raise SystemExit("set MINIPOST_HF=path/to/a/Hugging/Face/folder, or pip install transformers tokenizers "
                         "to let this lesson write a tiny random one")
    FOLDER = OUT / "tiny_qwen3"
    if not (FOLDER / "model.safetensors").exists():
        tiny_hf_folder(FOLDER)
print("folder:", FOLDER, sorted(p.name for p in FOLDER.iterdir()))
model, enc, ckpt = load_model(f"hf:{FOLDER}")
print(f"{type(model).__name__} ({model.cfg.family}), {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
      f"weights, {enc.n_vocab} tokens, chat format {enc.chat_format.name if enc.chat_format else None}")

# %% [markdown]
# ## 2. What differs from GPT-2, on the shapes
# One block of each, side by side (C channels, H query heads, K key/value heads, D head size, F the MLP's width):
# - LayerNorm (weight and bias) -> RMSNorm (weight only: no mean subtracted);
# - one fused (3C, C) q/k/v matrix -> q (H*D, C) and k, v (K*D, C): grouped-query attention, K < H heads of
#   keys and values, each shared by H/K query heads, so the KV cache is H/K times smaller;
# - learned positions (`wpe`, one vector per position) -> rotary embeddings: `inv_freq` (D/2,) angles that
#   rotate q and k, no weights at all;
# - GELU MLP fc (4C, C), proj (C, 4C) -> SwiGLU gate and up (F, C), down (C, F).
# Qwen3 adds an RMSNorm on each head's queries and keys (q_norm, k_norm (D,)); Qwen2 biases on q, k and v.

# %%
gpt = GPT(GPTConfig(n_layer=1, n_head=model.cfg.n_head, n_embd=model.cfg.n_embd))  # GPT-2, as wide
left = {n: tuple(p.shape) for n, p in gpt.blocks[0].named_parameters()}
right = {n: tuple(p.shape) for n, p in model.blocks[0].named_parameters()}
print(f"{'GPT-2 block':<34}{'decoder block (' + model.cfg.family + ')':<34}")
for i in range(max(len(left), len(right))):
    a = f"{list(left)[i]} {list(left.values())[i]}" if i < len(left) else ""
    b = f"{list(right)[i]} {list(right.values())[i]}" if i < len(right) else ""
    print(f"{a:<34}{b:<34}")
cfg = model.cfg
kv, full = (2 * cfg.n_layer * heads * cfg.head_dim for heads in (cfg.n_kv_head, cfg.n_head))  # keys and values
print(f"rotary angles inv_freq {tuple(model.inv_freq.shape)}, theta {cfg.rope_theta:g}; KV cache per token: {kv} "
      f"numbers ({cfg.n_kv_head} of {cfg.n_head} heads), {full} with a key and a value per query head")

# %% [markdown]
# ## 3. The same logits as transformers
# The same folder through transformers' own code (when it is installed): the largest difference in float32.

# %%
chat = read_jsonl(DATA_DIR / "sft.jsonl")[0]["messages"]
ids = torch.tensor([render_chat(enc, chat)[0]])  # (1, T)
if transformers is not None:
    theirs = transformers.AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model(ids)  # (1, T, V)
        diff = (ours - theirs(ids).logits).abs().max().item()
    print(f"{ids.shape[1]} tokens, logits up to {ours.abs().max().item():.1f}: largest |difference| {diff:.2e}")
    assert diff < 1e-4, diff
    del theirs  # (its memory back before the training step)

# %% [markdown]
# ## 4. The family's chat format, and the loss mask
# A folder's model was trained on its family's format, so minipost renders conversations in it (here ChatML:
# `<|im_start|>role\n...<|im_end|>\n`) instead of its own `<|role|>...<|end|>`. The loss mask is the same idea
# as lesson 02's: the answer and the token ending its turn (`<|im_end|>`: the model must learn to stop) are
# targets, marked `^` below.

# %%
ids_list, mask = render_chat(enc, chat)
print("".join(f"[{enc.decode([i])}]" + ("^" if m else "") for i, m in zip(ids_list, mask)))
print(f"stop token {special_id(enc, '<|end|>')} = {enc.decode([special_id(enc, '<|end|>')])!r}, "
      f"padding {enc.decode([special_id(enc, '<|pad|>')])!r}")

# %% [markdown]
# ## 5. One SFT step by hand, checked against train()
# Lesson 02's step, line for line, on the folder's model: the same code trains either. Then `train()` with
# `--init hf:FOLDER` and `max_steps=1` must end with the same weights, bit for bit. (The nano preset's learning
# rate is for a 1M-parameter model; a real one wants about 1e-5, `--lr`.)

# %%
one = config_with_preset(Config, PRESETS, preset="nano", init=f"hf:{FOLDER}", out=str(OUT / "one_step"),
                         max_steps=1, batch_size=4, ptx_coef=0, eval_windows=2, device="cpu", threads="1",
                         progress=False)
print(threads.configure(one.threads))  # Run(cfg, ...): the CPU threads
seed_everything(one.seed)  # Run(cfg, ...): the seeds
model, enc, _ = load_model(one.init)
rows = [e for e in tokenize_chats(enc, load_chats(DATA_DIR / "sft.jsonl"), one.block_size) if sum(e[1][1:]) > 0]
optimizer = adamw(model, lr=one.lr, weight_decay=one.weight_decay)
batch = next(EpochBatches(len(rows), one.batch_size, seed=one.seed + 1))
set_lr(optimizer, cosine_lr(0, lr=one.lr, warmup_steps=one.warmup_steps, max_steps=one.max_steps,
                            min_lr_ratio=one.min_lr_ratio))
n_tok = sum(num_targets(rows[i]) for i in batch)
x, y = collate([rows[i] for i in batch], special_id(enc, "<|pad|>"))  # (B, T); y -100 off the answers
model.train()
logp = model.logprobs(x, y.clamp(min=0))  # (B, T) log pi of each next token: logits, then the log-prob
loss = sft_loss(logp, y, n_tok)  # mean -log pi over the answer tokens
loss.backward()
torch.nn.utils.clip_grad_norm_(model.parameters(), one.grad_clip)
optimizer.step()
print(f"x {tuple(x.shape)}, {n_tok} answer tokens, loss {loss.item():.4f}")
train(one)
assert_same_weights(model, OUT / "one_step" / "model.pt")

# %% [markdown]
# ## 6. Back to a Hugging Face folder
# `python -m minipost.export --ckpt runs/x/model.pt --out DIR` writes what transformers reads (config.json,
# model.safetensors, the tokenizer files with their chat template), so a model post-trained here goes on to
# the ecosystem's serving and evaluation tools.

# %%
exported = OUT / "exported"
if not exported.exists():
    model.eval()
    export(model, enc, exported, f"hf:{FOLDER}")
print("exported:", sorted(p.name for p in exported.iterdir()))
if transformers is not None:
    back = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    with torch.no_grad():
        diff = (load_model(OUT / "one_step" / "model.pt")[0](ids) - back(ids).logits).abs().max().item()
    print(f"transformers on the exported folder: largest |logit difference| {diff:.2e}")
    assert diff < 1e-4, diff
