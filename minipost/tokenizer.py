"""Byte-level BPE tokenizer: a readable trainer written here, tiktoken at run time, and the chat template.

How a string becomes token ids (GPT-2 style byte-level BPE, Sennrich et al. 2016; Radford et al. 2019):
1. Pre-split the text with a regex into pieces: words with their leading space (" Paris"), single digits,
   runs of punctuation, runs of whitespace. Merges never cross a piece boundary.
2. Each piece starts as its UTF-8 bytes, so every string (emoji, CJK, control characters) is representable
   and nothing is ever "unknown".
3. Training repeatedly finds the most frequent adjacent pair of tokens over all pieces and merges it into a
   new token; its rank is its creation order. Encoding applies the learned merges, lowest rank first.

The trainer is here (`train_bpe`) so you can read it. Encoding uses `tiktoken.Encoding`, a fast Rust BPE that
takes exactly what we train: `mergeable_ranks: dict[bytes, int]` (the 256 single bytes first, ranks 0..255)
plus a split regex and the special tokens, whose ids come right after the ranks.

Design choices, and why:
- Digits are one per token (the split regex isolates each decimal digit, so no merge can join two). The model
  then sees "1234" as 1,2,3,4 and can learn arithmetic digit by digit instead of memorising arbitrary chunks
  ("123" as one token, "1234" as "12"+"34"). A space before a number stays its own token.
- Special tokens (`<|user|>` ...) are never produced from text: `encode_text` encodes their spelling as
  ordinary bytes. Only the chat template inserts them, so a user typing "<|assistant|>" cannot forge a turn.
- The chat template is `<|role|>content<|end|>` per message. The loss mask is 1 on assistant content and on the
  `<|end|>` after it: the model must learn to stop, and `<|end|>` is the stop token at generation time.

Two split regexes: tiktoken's (`PAT_STR`, Rust syntax with \\p{...} Unicode classes) and an equivalent for
Python's stdlib `re` (`TRAIN_PAT`), which has no \\p{...}. They are the same rules spelled two ways:
    letters   [\\p{L}\\p{Nl}\\p{No}]   ==  [^\\W\\d_]   (Python's \\w = letters + all numerics + "_")
    digit     \\p{Nd}                 ==  \\d          (Python's \\d is exactly category Nd)
    space     \\s (Unicode White_Space) == _WS below   (Python's \\s also counts \\x1c-\\x1f; Rust's does not)
Number-like symbols that are not decimal digits ("²", "½", "Ⅻ") count as letters, because that is what Python's
[^\\W\\d_] gives. Remaining possible difference: the two engines may use different Unicode versions, so a
character assigned in a newer version can fall in different classes. tests/test_tokenizer.py checks that both
regexes split the world corpus and a list of tricky strings identically.

Command line: `python -m minipost.tokenizer --name nano` trains on the world corpus and saves
`data/tokenizer_nano.tiktoken`, printing vocabulary size, training time and bytes per token.
"""
from __future__ import annotations

import base64
import heapq
import re
import time
import unicodedata
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import tiktoken

from minipost import chat_formats
from minipost.common import DATA_DIR, ArgumentParser, InputError, atomic_write_bytes, exit_on_input_error, read_jsonl

SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|pad|>"]
# Number of BPE tokens (256 bytes + merges); special tokens come on top: n_vocab = size + len(SPECIAL_TOKENS).
VOCAB_SIZES = {"nano": 1024, "small": 2048}  # the corpus runs out of pairs near 2600
ROLES = chat_formats.ROLES

# ----------------------------------------------------------------------------------------------------------------
# the pre-split regex, in tiktoken's syntax and in Python's

# Alternatives, tried left to right at each position:
#   '(?:[sdmt]|ll|ve|re)        English contractions: 's 'd 'm 't 'll 've 're
#    ?[letters]+                a word with at most one leading space: " Paris"
#   \p{Nd}                      one decimal digit, never with anything else
#    ?[^\s\p{L}\p{N}]+          punctuation / symbols / emoji with at most one leading space: " (", "!!"
#   \s+(?!\S)                   whitespace, leaving the last space to start the next word
#   \s+                         any other whitespace (e.g. at the end of the text)
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?[\p{L}\p{Nl}\p{No}]+|\p{Nd}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Unicode White_Space, which is what Rust's \s means (Python's \s adds the separators \x1c-\x1f).
_WS = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
TRAIN_PAT = re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+|\d| ?(?:[^\w{_WS}]|_)+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
)


def split_pieces(text: str) -> list[str]:
    """Pre-split `text` the way the tokenizer does: merges happen only inside each returned piece."""
    return TRAIN_PAT.findall(text)


# ----------------------------------------------------------------------------------------------------------------
# the BPE trainer

def _merge(ids: list[int], a: int, b: int, new: int) -> list[int]:
    """Replace every non-overlapping occurrence of the pair (a, b) in `ids`, left to right, by `new`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(texts: Iterable[str], vocab_size: int) -> dict[bytes, int]:
    """Learn byte-level BPE merges on `texts` until there are `vocab_size` tokens (256 bytes + merges).

    Returns tiktoken's `mergeable_ranks`: token bytes -> rank (= id), the 256 single bytes first.
    Deterministic: the most frequent pair wins; ties go to the pair whose (left bytes, right bytes) sort first.
    Stops early, with a warning, if the corpus runs out of pairs to merge.

    Speed comes from two things. (1) We count each *unique* piece once with its frequency, instead of walking
    the whole corpus: text has far fewer distinct words than words. (2) Pair counts are updated incrementally:
    a merge only touches the pieces that contain the merged pair (found through `where`), and a heap with
    lazy deletion gives the best pair without rescanning all counts.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the single bytes), got {vocab_size}")
    piece_counts = Counter()
    for text in texts:
        piece_counts.update(split_pieces(text))
    words = [list(piece.encode("utf-8")) for piece in piece_counts]  # each unique piece as token ids
    freqs = list(piece_counts.values())                              # how often each piece occurs

    vocab = [bytes([i]) for i in range(256)]       # token id -> bytes; the id is also the rank
    id_of = {tok: i for i, tok in enumerate(vocab)}  # bytes -> token id
    pair_counts: Counter = Counter()               # (left id, right id) -> occurrences in the corpus
    where = defaultdict(set)                       # (left id, right id) -> indices of words containing it
    for w, (ids, freq) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += freq
            where[pair].add(w)

    # Max-heap of (-count, left bytes, right bytes, left id, right id). When a count changes we push a fresh
    # entry and leave the old one; an entry whose count no longer matches `pair_counts` is stale and skipped.
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg_count, _, _, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b)) != -neg_count:
            continue  # stale entry
        merged = vocab[a] + vocab[b]
        # Two different pairs can spell the same bytes ("ab"+"c" and "a"+"bc"); tiktoken keys tokens by their
        # bytes, so the second one reuses the first one's id instead of becoming a duplicate token.
        new = id_of.get(merged)
        if new is None:
            new = len(vocab)
            vocab.append(merged)
            id_of[merged] = new

        changed = set()
        for w in where.pop((a, b)):
            ids, freq = words[w], freqs[w]
            new_ids = _merge(ids, a, b, new)
            old_pairs, new_pairs = list(zip(ids, ids[1:])), list(zip(new_ids, new_ids[1:]))
            for pair in old_pairs:      # take the word's old pairs out of the counts ...
                pair_counts[pair] -= freq
            for pair in new_pairs:      # ... and put its new pairs in: only this word's pairs change
                pair_counts[pair] += freq
            for pair in set(old_pairs) - set(new_pairs):
                if pair != (a, b):
                    where[pair].discard(w)
            for pair in new_pairs:
                where[pair].add(w)
            changed.update(old_pairs, new_pairs)
            words[w] = new_ids
        for pair in changed:
            count = pair_counts[pair]
            if count > 0:
                heapq.heappush(heap, (-count, vocab[pair[0]], vocab[pair[1]], pair[0], pair[1]))
            else:
                del pair_counts[pair]
                where.pop(pair, None)

    if len(vocab) < vocab_size:
        warnings.warn(f"corpus ran out of pairs to merge: {len(vocab)} tokens instead of {vocab_size}")
    return {tok: rank for rank, tok in enumerate(vocab)}


# ----------------------------------------------------------------------------------------------------------------
# saving and loading (tiktoken's rank file: one "base64(token bytes) rank" line per token)

def save_ranks(path: str | Path, ranks: dict[bytes, int]) -> None:
    """Write `ranks` in tiktoken's format, atomically (a temp file, then os.replace)."""
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}\n" for tok, rank in by_rank]
    atomic_write_bytes(path, "".join(lines).encode("ascii"))


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken rank file. (Same result as `tiktoken.load.load_tiktoken_bpe`, which we avoid because it
    caches files by path in a temp directory: after retraining, it would hand back the old tokenizer.)"""
    ranks = {}
    if Path(path).is_dir():
        raise InputError(f"{path}: a folder, not a tokenizer file (delete it to train the tokenizer again)")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                tok_b64, rank = raw.decode("ascii").split()
                ranks[base64.b64decode(tok_b64, validate=True)] = int(rank)
            except ValueError as e:  # not ASCII, wrong field count, bad base64 (binascii.Error), bad int
                raise InputError(f"{path}:{lineno}: expected 'base64_token rank', got {raw.strip()[:80]!r} "
                                 f"({type(e).__name__})") from None
    if len(ranks) < 256 or sorted(ranks.values()) != list(range(len(ranks))):
        raise InputError(f"{path}: {len(ranks)} ranks; a tokenizer holds 0..N-1 (N >= 256: every byte) with no gaps "
                         "or repeats (delete the file to train it again)")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:  # byte-level BPE must be able to write any text: every single byte is a token
        raise InputError(f"{path}: no token for the byte {missing[0]:#04x} ({len(missing)} bytes missing); delete the "
                         "file to train the tokenizer again")
    return ranks


def build_encoding(name: str, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    """The run-time tokenizer: tiktoken with our ranks, our split regex, and the special tokens after the ranks."""
    specials = {tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name=f"minipost_{name}", pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens=specials)


# ----------------------------------------------------------------------------------------------------------------
# the world corpus and get_tokenizer()

def load_corpus(data_dir: str | Path = DATA_DIR) -> list[str]:
    """Training texts: every pretraining document plus every chat message of the SFT set. The world writes
    them (`python -m minipost.world`; the pipeline and pretraining do it first when data/ lacks them): the
    tokenizer sits below the world, which tokenizes nothing."""
    data_dir = Path(data_dir)
    if not (data_dir / "pretrain.jsonl").exists():
        raise InputError(f"{data_dir / 'pretrain.jsonl'}: no such file, nothing to train the tokenizer on; "
                         "generate the world first (python -m minipost.world)")
    texts = [row["text"] for row in read_jsonl(data_dir / "pretrain.jsonl", required=("text",))]
    sft_path = data_dir / "sft.jsonl"
    if sft_path.exists():
        for row in read_jsonl(sft_path, required=("messages",)):
            texts.extend(m["content"] for m in row["messages"])
    return texts


_CACHE: dict[tuple[str, Path], tiktoken.Encoding] = {}


def tokenizer_path(name: str, data_dir: str | Path = DATA_DIR) -> Path:
    return Path(data_dir) / f"tokenizer_{name}.tiktoken"


def get_tokenizer(name: str = "nano", data_dir: str | Path = DATA_DIR) -> tiktoken.Encoding:
    """Load `data_dir/tokenizer_<name>.tiktoken`, training and saving it first if it is missing.

    Cached per (name, data_dir), so every caller in a process shares one Encoding.
    """
    if name not in VOCAB_SIZES:
        raise InputError(f"unknown tokenizer {name!r}; choose one of {sorted(VOCAB_SIZES)}")
    data_dir = Path(data_dir).resolve()
    key = (name, data_dir)
    if key not in _CACHE:
        path = tokenizer_path(name, data_dir)
        if not path.exists():
            save_ranks(path, train_bpe(load_corpus(data_dir), VOCAB_SIZES[name]))
        _CACHE[key] = build_encoding(name, load_ranks(path))
    return _CACHE[key]


# ----------------------------------------------------------------------------------------------------------------
# encoding text and chats

def special_id(enc: tiktoken.Encoding, token: str) -> int:
    """The id of a special token, e.g. special_id(enc, "<|end|>"). A tokenizer from a Hugging Face folder plays
    these parts with its own tokens (hf.py sets enc.stand_ins: "<|end|>" -> "<|im_end|>" for ChatML)."""
    if token not in SPECIAL_TOKENS:
        raise ValueError(f"{token!r} is not a special token; they are {SPECIAL_TOKENS}")
    stand_ins = getattr(enc, "stand_ins", None)
    if stand_ins is not None:
        if token not in stand_ins:
            raise InputError(f"tokenizer {enc.name}: no token plays {token} (no chat format: "
                             f"{getattr(enc, 'no_format_why', 'its folder has no chat template')})")
        token = stand_ins[token]
    return enc.encode_single_token(token)


def encode_text(enc: tiktoken.Encoding, text: str) -> list[int]:
    """Encode text that may come from a user. Special-token spellings become ordinary tokens, never specials:
    `allowed_special=set()` stops them being read as specials, `disallowed_special=()` stops tiktoken raising."""
    if getattr(enc, "normalize_nfc", False):  # a Hugging Face tokenizer that normalizes first (Qwen2's: NFC)
        text = unicodedata.normalize("NFC", text)
    split = getattr(enc, "added_words_split", None)  # a Hugging Face tokenizer's added tokens that are not special
    if split is not None:  # each is one token wherever its spelling stands; the text between them is BPE's
        return [i for k, part in enumerate(split.split(text)) if part for i in
                ([enc.added_words[part]] if k % 2 else enc.encode(part, allowed_special=set(), disallowed_special=()))]
    return enc.encode(text, allowed_special=set(), disallowed_special=())


def render_chat(enc: tiktoken.Encoding, messages: list[dict], add_generation_prompt: bool = False
                ) -> tuple[list[int], list[int]]:
    """Token ids and loss mask for a chat: each message is `<|role|>content<|end|>`.

    loss_mask[i] = 1 where the model is trained to predict ids[i]: assistant content and the `<|end|>` closing
    it; 0 on role tokens, system and user turns, and on an assistant message marked {"train": False} (a
    prompt's earlier answer: context). `add_generation_prompt` appends `<|assistant|>` (mask 0) so the model
    continues with an answer.

    Example (ids shown as text):  <|user|> Hi <|end|> <|assistant|> Yo <|end|>
                          mask:       0     0    0         0        1    1

    A tokenizer from a Hugging Face folder renders its family's format instead (chat_formats.py: ChatML,
    Llama 3), with the same mask: the answers and the token ending their turns.
    """
    chat_formats.check_messages(messages)
    fmt = getattr(enc, "chat_format", None)
    if fmt is not None and fmt.name != "minipost":
        return chat_formats.render(enc, fmt, messages, add_generation_prompt, encode_text)
    end = special_id(enc, "<|end|>")
    ids, mask = [], []
    for msg in messages:
        role = msg["role"]
        body = encode_text(enc, msg["content"])
        train = 1 if role == "assistant" and msg.get("train", True) else 0
        ids += [enc.encode_single_token(f"<|{role}|>")] + body + [end]
        mask += [0] + [train] * len(body) + [train]  # the assistant's <|end|> is a target: learn to stop
    if add_generation_prompt:
        ids.append(enc.encode_single_token("<|assistant|>"))
        mask.append(0)
    return ids, mask


def render_prompt(enc: tiktoken.Encoding, prompt: str | list[dict]) -> list[int]:
    """Ids to generate from: one user turn (a string) or a list of messages, ending with `<|assistant|>`."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return render_chat(enc, messages, add_generation_prompt=True)[0]


# ----------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(lambda: _main(argv))


def _main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Train the BPE tokenizer on the world corpus and save it.")
    parser.add_argument("--name", default="nano", choices=sorted(VOCAB_SIZES), help="which vocabulary size")
    parser.add_argument("--data-dir", default=str(DATA_DIR), help="where the corpus is and the file goes")
    args = parser.parse_args(argv)

    texts = load_corpus(args.data_dir)
    t0 = time.perf_counter()
    ranks = train_bpe(texts, VOCAB_SIZES[args.name])
    seconds = time.perf_counter() - t0
    path = tokenizer_path(args.name, args.data_dir)
    save_ranks(path, ranks)
    enc = build_encoding(args.name, ranks)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(texts))
    print(f"saved {path}")
    print(f"vocab: {len(ranks)} BPE tokens + {len(SPECIAL_TOKENS)} special = {enc.n_vocab}")
    print(f"trained in {seconds:.1f}s on {len(texts)} texts, {n_bytes:,} bytes")
    print(f"compression: {n_bytes / max(n_tokens, 1):.2f} bytes per token ({n_tokens:,} tokens)")


if __name__ == "__main__":
    main()
