"""From JSONL files to training batches: loading (TRL's formats), tokenising, packing, padding, loss masks.

Formats (the same as Hugging Face TRL's, so you can bring your own data):
    {"text": "..."}                                        pretraining
    {"messages": [{"role": "user", "content": "..."}, ...]} SFT, conversational
    {"prompt": "...", "completion": "..."}                 SFT, prompt-completion
    {"prompt": "...", "chosen": "...", "rejected": "..."}  preferences (DPO)
A malformed line raises an error that names the file and the line.

Two ways to batch:
- **packing** (pretraining): all documents are tokenised, joined with <|endoftext|> into one long stream, and
  a batch is B random windows of T+1 tokens (input = first T, target = last T). No padding, no waste.
- **padding** (chat): each example keeps its own row; rows are right-padded, and a loss mask says which
  targets count (assistant tokens only). Padding is never a target.
"""
from __future__ import annotations

from pathlib import Path

import torch

from minipost.common import read_jsonl

IGNORE = -100  # target id that cross-entropy skips


# ----------------------------------------------------------------------------------------------------------------
# loading

def load_texts(path) -> list[str]:
    """Pretraining documents from a JSONL file of {"text"} rows, or a plain .txt file (one document per
    blank-line-separated paragraph)."""
    path = Path(path)
    if path.suffix == ".txt":
        docs = [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n")]
        return [d for d in docs if d]
    return [r["text"] for r in read_jsonl(path, required=("text",))]


def to_messages(row: dict, where: str = "") -> list[dict]:
    """One SFT row in either TRL format -> a list of {"role", "content"} messages."""
    if "messages" in row:
        msgs = row["messages"]
        for m in msgs:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"{where}: each message needs 'role' and 'content', got {m!r}")
        return msgs
    if "prompt" in row and "completion" in row:
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    raise ValueError(f"{where}: expected 'messages' or 'prompt' + 'completion', got fields {sorted(row)}")


def load_chats(path) -> list[list[dict]]:
    """SFT conversations from JSONL in either TRL format (see the module docstring)."""
    rows = read_jsonl(path)
    return [to_messages(r, f"{path}:{i + 1}") for i, r in enumerate(rows)]


def load_prefs(path) -> list[dict]:
    return read_jsonl(path, required=("prompt", "chosen", "rejected"))


# ----------------------------------------------------------------------------------------------------------------
# packing, for pretraining

def pack(enc, texts: list[str]) -> torch.Tensor:
    """Tokenise documents and join them into one stream, each followed by <|endoftext|>. -> (N,) int64"""
    from minipost.tokenizer import encode_text, special_id

    eot = special_id(enc, "<|endoftext|>")
    ids: list[int] = []
    for t in texts:
        ids.extend(encode_text(enc, t))
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def packed_batch(stream: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator):
    """B random windows of the stream -> inputs x (B, T) and next-token targets y (B, T)."""
    starts = torch.randint(0, len(stream) - block_size - 1, (batch_size,), generator=generator)  # (B,)
    window = torch.stack([stream[s:s + block_size + 1] for s in starts.tolist()])  # (B, T+1)
    return window[:, :-1], window[:, 1:]


def packed_eval_batches(stream: torch.Tensor, batch_size: int, block_size: int):
    """Consecutive non-overlapping windows covering the stream once, for a deterministic held-out loss."""
    n = (len(stream) - 1) // block_size
    x = stream[:n * block_size].view(n, block_size)
    y = stream[1:n * block_size + 1].view(n, block_size)
    for i in range(0, n, batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


# ----------------------------------------------------------------------------------------------------------------
# padding, for chat data

def tokenize_chats(enc, chats: list[list[dict]], block_size: int) -> list[tuple[list[int], list[int]]]:
    """Render each conversation with the chat template -> (ids, loss_mask), cut to block_size + 1 tokens."""
    from minipost.tokenizer import render_chat

    out = []
    for msgs in chats:
        ids, mask = render_chat(enc, msgs)
        out.append((ids[:block_size + 1], mask[:block_size + 1]))
    return out


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad examples into inputs x (B, T) and targets y (B, T); y is IGNORE where the loss mask is 0.

    Target y[t] = ids[t+1], and it counts iff mask[t+1] == 1 (the mask marks tokens to *predict*).
    """
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, (ids, mask) in enumerate(examples):
        ids_t, mask_t = torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)
        n = len(ids) - 1
        x[i, :n] = ids_t[:-1]
        y[i, :n] = torch.where(mask_t[1:], ids_t[1:], torch.full_like(ids_t[1:], IGNORE))
    return x, y
