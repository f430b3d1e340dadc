"""The chat formats of the Hugging Face families, in Python: a conversation -> token ids and the loss mask.

minipost's own models speak tokenizer.render_chat's `<|role|>content<|end|>`. A model loaded from a Hugging
Face folder was trained on its family's format, and post-training it on another would teach it a new one, so
a folder's model keeps its own (ids shown as text, each special token one id):

    ChatML (Qwen2.5, Qwen3, SmolLM2)  <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n
    Llama 3                           <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>
                                      <|start_header_id|>assistant<|end_header_id|>\\n\\nHello<|eot_id|>

What the families' templates add, kept here (hf.py reads which of them a folder's template has):
- Qwen2.5 and SmolLM2 write a default system turn when a conversation has none (its text is the folder's).
- Qwen3 opens the last assistant turn after the last user turn with its reasoning in `<think>...</think>`
  (empty when it has none), and drops the reasoning of earlier assistant turns.
- Llama 3.1 and 3.2 always write a system turn that opens with the knowledge cutoff and a date. The date is
  the one the template falls back to ("26 Jul 2024"), not today's: a run's data must not change with the day.
- Llama 3 strips the whitespace around each message.

The loss mask is minipost's, as in render_chat: 1 on the assistant's answer and the token that ends its turn
(the stop token at generation time: the model must learn to stop), 0 elsewhere (and on an assistant message
marked {"train": False}, a prompt's earlier answer). The text between two special
tokens is encoded as one string, as a tokenizer encoding the whole rendered text would (a header's newline
may merge with the content after it), and a token is a target when its first byte is an answer's.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
TURN_END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "minipost": "<|end|>"}
SPECIALS = {"chatml": ("<|im_start|>", "<|im_end|>"),  # the special tokens a format needs its tokenizer to have
            "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            "minipost": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")}


@dataclass(frozen=True)
class ChatFormat:
    name: str  # chatml, llama3 or minipost (tokenizer.render_chat's own)
    default_system: str | None = None  # chatml: the system turn written when a conversation has none
    think: bool = False  # chatml: Qwen3's <think> blocks
    cutoff: str | None = None  # llama3: a system turn with "Cutting Knowledge Date: <cutoff>" (3.1, 3.2)
    date: str = "26 Jul 2024"  # llama3: its "Today Date"

    @property
    def turn_end(self) -> str:
        return TURN_END[self.name]

    def parts(self, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool, bool]]:
        """The rendered conversation as (text, is a special token, is a target) parts."""
        def special(token, target=False):
            return token, True, target

        def text(s, target=False):
            return s, False, target
        out = []
        if self.name == "chatml":
            if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
                messages = [{"role": "system", "content": self.default_system}, *messages]
            last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
            for i, m in enumerate(messages):
                answer, content = m["role"] == "assistant" and m.get("train", True), m["content"]
                out += [special("<|im_start|>"), text(m["role"] + "\n")]
                if m["role"] == "assistant" and self.think:
                    reasoning, content = split_think(content)
                    if i > last_user and (i == len(messages) - 1 or reasoning):
                        content = f"<think>\n{reasoning}\n</think>\n\n" + content.lstrip("\n")
                out += [text(content, answer), special("<|im_end|>", answer), text("\n")]
            if add_generation_prompt:
                out += [special("<|im_start|>"), text("assistant\n")]
            return out
        assert self.name == "llama3", self.name
        out.append(special("<|begin_of_text|>"))
        if self.cutoff is not None:
            system = messages[0]["content"].strip() if messages and messages[0]["role"] == "system" else ""
            messages = messages[1:] if messages and messages[0]["role"] == "system" else messages
            out += [special("<|start_header_id|>"), text("system"), special("<|end_header_id|>"),
                    text(f"\n\nCutting Knowledge Date: {self.cutoff}\nToday Date: {self.date}\n\n{system}"),
                    special("<|eot_id|>")]
        for m in messages:
            answer = m["role"] == "assistant" and m.get("train", True)
            out += [special("<|start_header_id|>"), text(m["role"]), special("<|end_header_id|>"), text("\n\n"),
                    text(m["content"].strip(), answer), special("<|eot_id|>", answer)]
        if add_generation_prompt:
            out += [special("<|start_header_id|>"), text("assistant"), special("<|end_header_id|>"), text("\n\n")]
        return out


def split_think(content: str) -> tuple[str, str]:
    """Qwen3: an answer written as `<think>reasoning</think>answer` -> (reasoning, answer), newlines trimmed."""
    if "</think>" not in content:
        return "", content
    pieces = content.split("</think>")  # the reasoning before the first, the answer after the last
    return pieces[0].split("<think>")[-1].strip("\n"), pieces[-1].lstrip("\n")


def check_messages(messages) -> None:
    """A conversation is a list of {"role": system|user|assistant, "content": str}; ValueError otherwise."""
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i}: expected a dict with 'role' and 'content', got {msg!r}")
        if msg["role"] not in ROLES:
            raise ValueError(f"message {i}: unknown role {msg['role']!r}; expected one of {ROLES}")
        if not isinstance(msg["content"], str):
            raise ValueError(f"message {i}: 'content' must be a string, got {type(msg['content']).__name__}")


def render(enc, fmt: ChatFormat, messages: list[dict], add_generation_prompt: bool, encode_text
           ) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of a conversation in `fmt`. encode_text(enc, s) encodes text (tokenizer.py's:
    a special token's spelling in a message stays text)."""
    nfc = getattr(enc, "normalize_nfc", False)
    parts = fmt.parts(messages, add_generation_prompt)
    ids, mask, run = [], [], []  # run: the text parts since the last special token

    def flush():
        pieces = [(unicodedata.normalize("NFC", s) if nfc else s, target) for s, target in run]
        owner = [target for s, target in pieces for _ in s.encode("utf-8")]  # each byte: an answer's or not
        at = 0
        for token in encode_text(enc, "".join(s for s, _ in pieces)):
            ids.append(token)
            mask.append(int(owner[min(at, len(owner) - 1)]))
            at += len(enc.decode_single_token_bytes(token))
        run.clear()
    for s, is_special, target in parts:
        if not is_special:
            run.append((s, target))
            continue
        flush()
        ids.append(enc.encode_single_token(s))
        mask.append(int(target))
    flush()
    return ids, mask
