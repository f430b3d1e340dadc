"""From JSONL files to training batches: loading (TRL's formats), tokenising, packing, padding, loss masks.

Formats (the same as Hugging Face TRL's, so you can bring your own data; [msgs] is a list of {"role", "content"}):
    {"text": "..."}                                        pretraining (language modelling)
    {"messages": [msgs]}                                   SFT, conversational language modelling
    {"prompt": "...", "completion": "..."}                 SFT, prompt-completion
    {"question": "...", "answer": "... #### N"}            SFT (and RL prompts): GSM8K's form (world/gsm8k.py)
    {"prompt": "..."} or {"prompt": [msgs]}                RL, prompt-only: a reward model scores the answers
    {"prompt": [msgs], "completion": [msgs]}               SFT, prompt-completion, conversational
    {"prompt": "...", "chosen": "...", "rejected": "..."}  preferences (DPO, reward model), explicit prompt
    {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}   the same, conversational
    {"chosen": "...", "rejected": "..."}                   preferences, implicit prompt: the shared beginning
    {"chosen": [msgs], "rejected": [msgs]}                 the same, conversational: the shared messages
A record is all plain (strings) or all conversational (lists of messages); minipost also takes plain answers
to a conversational prompt (each answer then one assistant message), a mix TRL's forms do not list. A malformed
line raises an error that names the file, the line and the field.

Two ways to batch:
- **packing** (pretraining): all documents are tokenised, joined with <|endoftext|> into one long stream, and
  a batch is B random windows of T+1 tokens (input = first T, target = last T). No padding, no waste.
- **padding** (chat): each example keeps its own row; rows are right-padded, and a loss mask says which
  targets count (assistant tokens only). Padding is never a target.
"""
from __future__ import annotations

from pathlib import Path

import torch

from minipost.common import InputError, read_jsonl
from minipost.tokenizer import encode_text, render_chat, special_id
from minipost.world import gsm8k

IGNORE = -100  # target id that cross-entropy skips
ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------------------------------------------------------
# loading

def load_texts(path) -> list[str]:
    """Pretraining documents from a JSONL file of {"text"} rows, or a plain .txt file (one document per
    blank-line-separated paragraph)."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            docs = [d.strip() for d in path.read_text(encoding="utf-8-sig").split("\n\n")]  # -sig: a BOM is no text
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
        if not any(docs):
            raise InputError(f"{path}: no documents (the file is empty or blank)")
        return [d for d in docs if d]
    return [r["text"] for r in read_jsonl(path, required={"text": str})]


def check_messages(msgs, field: str, where: str, roles=ROLES) -> list[dict]:
    """A field holding a list of messages: each {"role" (one of `roles`), "content" (a string)}, else an InputError
    naming the field and the message."""
    if not isinstance(msgs, list) or not msgs:
        raise InputError(f"{where}: field {field!r} must be a non-empty list of {{'role', 'content'}}")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"{where}: field {field!r} message {i}: needs 'role' and 'content', got {m!r}"[:300])
        if m["role"] not in roles:
            raise InputError(f"{where}: field {field!r} message {i}: role {m['role']!r}; expected one of {list(roles)}")
        if not isinstance(m["content"], str):
            raise InputError(f"{where}: field {field!r} message {i}: 'content' must be a string, got "
                             f"{type(m['content']).__name__}")
        if "train" in m:  # minipost's own mark (as_context): which answers the loss reads is the data form's say
            raise InputError(f"{where}: field {field!r} message {i}: key 'train' is minipost's own mark of context "
                             "answers; leave it out (a prompt's answers are context, the completion's are trained)")
    return msgs


def as_context(msgs: list[dict]) -> list[dict]:
    """A prompt's messages, its earlier answers included, as context: render_chat trains on none of them."""
    return [{**m, "train": False} if m["role"] == "assistant" else m for m in msgs]


def to_messages(row: dict, where: str = "") -> list[dict]:
    """One SFT row in a TRL format -> a list of {"role", "content"} messages (checked: roles among
    system/user/assistant, string contents, at least one assistant turn). In the prompt-completion forms only
    the completion is trained on: a conversational prompt's own assistant turns are context."""
    if gsm8k.is_gsm8k(row):  # {"question", "answer" ending "#### N"}: the worked solution is the answer
        return gsm8k.to_messages(row, where)
    if "messages" in row:
        other = [k for k in ("prompt", "completion") if k in row]
        if other:  # two forms in one record: which to train on would be a guess
            raise InputError(f"{where}: field {other[0]!r} beside 'messages': a record is one form, 'messages' or "
                             "'prompt' + 'completion'")
        msgs = check_messages(row["messages"], "messages", where)
    elif "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        check_one_form(row, ("prompt", "completion"), where)
        if isinstance(completion, str) and not completion.strip():
            raise InputError(f"{where}: field 'completion' is empty: nothing to learn")
        if isinstance(completion, str):  # a plain answer: one assistant message
            completion = [{"role": "assistant", "content": completion}]
        if isinstance(prompt, list):  # conversational: the prompt's turns (context), then the answer
            msgs = as_context(check_messages(prompt, "prompt", where)) + \
                check_messages(completion, "completion", where, roles=("assistant",))
        else:
            msgs = [{"role": "user", "content": prompt}, *completion]
    else:
        hint = " (plain text, {'text'}, is pretraining data: python -m minipost.pretrain --data)" \
            if "text" in row else ""
        raise InputError(f"{where}: expected 'messages' or 'prompt' + 'completion', got fields {sorted(row)}{hint}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise InputError(f"{where}: no assistant message, so nothing to learn")
    return msgs


def check_one_form(row: dict, keys, where: str) -> None:
    """TRL's formats keep a record plain (every field a string) or conversational (every field a list of
    messages); minipost also takes plain answers to a conversational prompt (each answer one assistant message).
    A field of another type, a plain prompt with conversational answers, or answers of both forms, is an
    InputError naming the field. keys: the prompt's key first, then the answers'."""
    for key in keys:
        if key in row and not isinstance(row[key], (str, list)):
            raise InputError(f"{where}: field {key!r} must be a string or a list of messages, got "
                             f"{type(row[key]).__name__}")
    answers = [key for key in keys[1:] if key in row]
    listed = [key for key in answers if isinstance(row[key], list)]
    if listed and len(listed) < len(answers):  # answers of both forms: name the plain one
        odd = next(key for key in answers if key not in listed)
    elif listed and isinstance(row.get(keys[0]), str):  # conversational answers to a plain prompt
        odd = listed[0]
    else:
        return
    kind = "a list of messages" if isinstance(row[odd], list) else "a string"
    raise InputError(f"{where}: field {odd!r} is {kind} where the record's other fields are not: a record is all "
                     "plain (strings) or all conversational (lists of messages), or a conversational prompt with "
                     "plain answers")


def implicit_prompt(chosen, rejected, where: str):
    """A preference pair without a prompt (TRL's implicit form) -> (prompt, chosen, rejected), the prompt their
    shared beginning, as TRL's extract_prompt cuts it: for strings, up to the first character that differs
    (a space just before it goes with the answers); for lists of messages, the shared messages, less a last
    shared assistant message (the answers begin with it). That last step is minipost's: TRL keeps such a
    message in the prompt, where it would be context and never scored, and minipost's answers must begin with
    an assistant turn."""
    n = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    if isinstance(chosen, str) and n and chosen[n - 1] == " ":
        n -= 1
    if isinstance(chosen, list) and n and isinstance(chosen[n - 1], dict) and chosen[n - 1].get("role") == "assistant":
        n -= 1
    if n == 0:
        raise InputError(f"{where}: field 'prompt' missing, and 'chosen' and 'rejected' share no beginning to take "
                         "as the prompt (give the prompt, or begin both answers with it)")
    if chosen[n:] == rejected[n:] or not chosen[n:] or not rejected[n:]:
        raise InputError(f"{where}: fields 'chosen' and 'rejected' hold no two different answers after their "
                         "shared beginning")
    return chosen[:n], chosen[n:], rejected[n:]


def load_chats(path) -> list[list[dict]]:
    """SFT conversations from JSONL in either TRL format (see the module docstring)."""
    lines = []
    rows = read_jsonl(path, lines=lines)
    return [to_messages(r, f"{path}:{n}") for n, r in zip(lines, rows)]


def per_domain(records: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` records of each domain (all of them when limit is None or 0), in file order."""
    out, seen = [], {}
    for r in records:
        seen[r["domain"]] = seen.get(r["domain"], 0) + 1
        if not limit or seen[r["domain"]] <= limit:
            out.append(r)
    return out


def load_prefs(path, lines: list[int] | None = None) -> list[dict]:
    """Preference pairs in TRL's four forms (the module docstring) -> rows with "prompt", "chosen" and "rejected",
    the prompt made explicit: each a string or, in the conversational form, a list of messages (checked like
    SFT messages; an answer needs an assistant turn with text). With `lines` (a list), each pair's line number
    in the file is appended to it."""
    lines = [] if lines is None else lines
    rows = read_jsonl(path, required={"chosen": (str, list), "rejected": (str, list)}, lines=lines)
    for n, row in zip(lines, rows):
        check_one_form(row, ("prompt", "chosen", "rejected"), f"{path}:{n}")
        if "prompt" not in row:  # the implicit form: the prompt is the answers' shared beginning
            row["prompt"], row["chosen"], row["rejected"] = implicit_prompt(row["chosen"], row["rejected"],
                                                                            f"{path}:{n}")
        for key in ("prompt", "chosen", "rejected"):
            if isinstance(row[key], list):  # an answer holds assistant messages; the prompt holds the rest
                check_messages(row[key], key, f"{path}:{n}", roles=ROLES if key == "prompt" else ("assistant",))
                if key != "prompt" and not any(m["content"].strip() for m in row[key]):
                    raise InputError(f"{path}:{n}: field {key!r} has no assistant message with text to score")
            elif not row[key].strip():
                raise InputError(f"{path}:{n}: field {key!r} is empty")
        if row["chosen"] == row["rejected"]:  # the loss would be log 2 whatever the model: nothing to prefer
            raise InputError(f"{path}:{n}: fields 'chosen' and 'rejected' are the same answer")
    return rows


# ----------------------------------------------------------------------------------------------------------------
# packing, for pretraining

def pack(enc, texts: list[str]) -> torch.Tensor:
    """Tokenise documents and join them into one stream, each followed by <|endoftext|>. -> (N,) int64"""
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
    out = []
    for msgs in chats:
        ids, mask = render_chat(enc, msgs)
        out.append((ids[:block_size + 1], mask[:block_size + 1]))
    return out


class EpochBatches:
    """Endless stream of index batches: a fresh shuffle of range(n) every epoch, the last partial batch of an
    epoch topped up from the next one, so every batch has batch_size rows.

    `state_dict()` / `load_state_dict()` hold the shuffle generator and the rest of the current epoch: a
    resumed run draws exactly the batches the uninterrupted one would have."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def __iter__(self):
        return self

    def __next__(self) -> list[int]:
        while len(self.order) < self.batch_size:
            self.order += torch.randperm(self.n, generator=self.generator).tolist()
        batch, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": torch.tensor(self.order, dtype=torch.long)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].tolist()


def tokenize_pairs(enc, rows: list[dict], block_size: int, where: str = "", lines: list[int] | None = None,
                   targets: bool = True) -> list[tuple]:
    """Each {"prompt", "chosen", "rejected"} row -> (chosen (ids, mask), rejected (ids, mask)), rendered with
    the chat template. prompt/chosen/rejected may be strings (a user turn, an assistant answer) or, as in TRL's
    conversational format, lists of messages. A pair longer than fits is an InputError naming `where` and the
    row's line (`lines[i]`, from load_prefs; else its 1-based position): block_size + 1 tokens for
    next-token log-probs (targets=True; the last token is only a target), block_size for a reward model."""
    def as_messages(value, role):
        return [{"role": role, "content": value}] if isinstance(value, str) else value

    pairs = []
    for i, row in enumerate(rows):
        prompt = as_context(as_messages(row["prompt"], "user"))  # (a prompt's earlier answers are not scored)
        pair = []
        for key in ("chosen", "rejected"):
            ids, mask = render_chat(enc, prompt + as_messages(row[key], "assistant"))
            if len(ids) > block_size + targets:
                line = lines[i] if lines else i + 1
                fits = f"block_size + 1 = {block_size + 1}" if targets else f"block_size {block_size}"
                raise InputError(f"{where}:{line}: prompt + {key} is {len(ids)} tokens, more than {fits}")
            pair.append((ids, mask))
        if pair[0] == pair[1]:  # different records, the same tokens (a key the template does not write)
            raise InputError(f"{where}:{lines[i] if lines else i + 1}: fields 'chosen' and 'rejected' render to the "
                             "same tokens: nothing to prefer")
        pairs.append(tuple(pair))
    return pairs


def pack_examples(examples: list[tuple[list[int], list[int]]], block_size: int):
    """Greedily concatenate (ids, loss_mask) examples, in order, into rows of at most block_size + 1 tokens.

    A row of block_size + 1 tokens gives block_size (input, target) pairs. Examples are never split; an
    example longer than a row is already cut by `tokenize_chats`. SFT's --pack (sft.py says what
    packing changes).
    """
    rows, ids, mask = [], [], []
    for e_ids, e_mask in examples:
        if ids and len(ids) + len(e_ids) > block_size + 1:
            rows.append((ids, mask))
            ids, mask = [], []
        ids, mask = ids + e_ids, mask + e_mask
    if ids:
        rows.append((ids, mask))
    return rows


def pair_batch(pairs: list[tuple], pad_id: int):
    """B pairs -> one padded batch of 2B rows, chosen rows first: x (2B, T), y (2B, T)."""
    return collate([c for c, _ in pairs] + [r for _, r in pairs], pad_id)


def num_targets(example: tuple[list[int], list[int]]) -> int:
    """How many targets collate() makes of one (ids, mask) example: the tokens after the first with mask 1."""
    return sum(example[1][1:])


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
