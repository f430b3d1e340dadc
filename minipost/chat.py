"""Talk to a checkpoint: an interactive chat that streams each answer as it is generated.

    python -m minipost.chat --ckpt runs/pipeline/grpo/model.pt
    python -m minipost.chat --ckpt runs/pipeline/sft/model.pt --system "Do not discuss: weather"
    echo "What is 7 + 5?" | python -m minipost.chat --ckpt runs/pipeline/sft/model.pt    # one answer, exit 0
    python -m minipost.chat --ckpt runs/pipeline/pretrain/model.pt --raw true   # a base model continues text

Each turn renders the whole conversation with the chat template the model was trained on
(`<|system|>...<|end|><|user|>...<|end|><|assistant|>`, tokenizer.render_chat) and samples the answer with
the KV cache (GPT.generate) until `<|end|>`. The history is cut from the oldest turn when it would leave less
than --max-new-tokens of the context window for the answer (the system prompt always stays). Text you type
is encoded as plain text: typing `<|end|>` gives the tokens of those characters, not the special token, so a
user cannot end a turn or speak as the assistant.

Commands: /reset forgets the conversation (the system prompt stays), /quit (or end of input) leaves.
From a pipe, every line is one user turn and only the answers are printed; a line too long for the context
or not UTF-8 gets a one-line error instead of an answer, the next lines are still answered, and the exit
status is 2. A reader that goes away (`| head -1`) ends the chat quietly with exit status 1.
"""
from __future__ import annotations

import codecs
import os
import sys

import torch

from minipost import threads
from minipost.common import (DEVICE_HELP, ArgumentParser, InputError, check_device, exit_on_input_error, pick_device,
                             str2bool)
from minipost.checkpoints import load_model
from minipost.tokenizer import encode_text, render_chat, special_id


def fit_history(enc, system: str | None, turns: list[dict], budget: int) -> tuple[list[int], list[dict]]:
    """The prompt ids for `turns` (user/assistant messages, the last one the user's) under the system prompt,
    dropping the oldest user/assistant exchanges until the ids fit in `budget` tokens -> (ids, turns kept).
    Raises InputError when even the last user message alone does not fit."""
    head = [{"role": "system", "content": system}] if system else []
    kept = list(turns)
    while True:
        ids = render_chat(enc, head + kept, add_generation_prompt=True)[0]
        if len(ids) <= budget:
            return ids, kept
        if len(kept) <= 1:
            raise InputError(f"that message is {len(ids)} tokens with the system prompt; this model leaves room "
                             f"for {budget} (its context is shorter than the answer budget allows: lower "
                             "--max-new-tokens or write less)")
        kept = kept[2:]  # drop the oldest exchange: a user turn and its answer


class Streamer:
    """Prints tokens as text the moment they are complete UTF-8 (a BPE token can hold half a character)."""

    def __init__(self, enc, stop_id: int | None, out=sys.stdout):
        self.enc, self.stop_id, self.out = enc, stop_id, out
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def __call__(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:  # GPT.generate's on_token
        for t in tokens.tolist():
            if t == self.stop_id:
                continue
            piece = self.decoder.decode(self.enc.decode_single_token_bytes(t))
            self.text += piece
            self.out.write(piece)
            self.out.flush()

    def finish(self) -> str:
        rest = self.decoder.decode(b"", final=True)
        self.text += rest
        self.out.write(rest + "\n")
        self.out.flush()
        return self.text


@torch.no_grad()
def answer(model, enc, ids: list[int], args, generator, out=sys.stdout) -> str:
    """Sample one answer to the prompt ids, streaming it to `out` -> its text."""
    stop = None if args.raw else special_id(enc, "<|end|>")  # (raw: a base model writes until max_new_tokens)
    streamer = Streamer(enc, stop, out)
    device = model.wte.weight.device
    model.generate(torch.tensor([ids], device=device), max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                   stop_token=stop, pad_id=special_id(enc, "<|pad|>"),
                   generator=generator, on_token=streamer)
    return streamer.finish()


def chat(model, enc, args, lines, interactive: bool, out=sys.stdout) -> tuple[int, int]:
    """The conversation loop over `lines` (the user's input, one turn per line) -> (answers given, turns refused
    because they do not fit the context)."""
    generator = torch.Generator(device=model.wte.weight.device).manual_seed(args.seed)
    budget = model.cfg.block_size - args.max_new_tokens
    turns: list[dict] = []
    n = refused = 0
    for line in lines:
        if isinstance(line, InputError):  # a piped line that is not text: said, and the others still answered
            print(f"error: {line}", file=sys.stderr)
            refused += 1
            continue
        text = line.rstrip("\n")
        if text.strip() == "/quit":
            break
        if text.strip() == "/reset":
            turns = []
            print("(conversation reset)", file=out if interactive else sys.stderr)
            continue
        if not text.strip():
            continue
        if args.raw:  # a base model: no template, the text is continued
            ids = encode_text(enc, text)[-budget:]
        else:
            try:
                ids, turns = fit_history(enc, args.system, turns + [{"role": "user", "content": text}], budget)
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                refused += 1
                continue
        if interactive:
            out.write("model> ")
        reply = answer(model, enc, ids, args, generator, out)
        if not args.raw:
            turns.append({"role": "assistant", "content": reply})
        n += 1
    return n, refused


def piped_lines(stream):
    """The lines of a pipe or file, decoded here (not by the locale), so a line that is not UTF-8 is one error
    naming it, not a traceback that drops the lines after it: -> str, or an InputError for that line."""
    for n, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield InputError(f"stdin line {n}: not UTF-8 text (byte {raw[e.start]:#x} at column {e.start + 1})")


def typed_lines():
    """What the user types at a terminal, line by line (input() gives line editing), until end of input."""
    while True:
        try:
            yield input("you> ")
        except EOFError:
            print()
            return


def main(argv=None):
    return exit_on_input_error(lambda: _main(argv))


def _main(argv=None):
    ap = ArgumentParser(prog="python -m minipost.chat", description="Chat with a minipost checkpoint.")
    ap.add_argument("--ckpt", required=True, help="checkpoint of any stage (OUT/<stage>/model.pt)")
    ap.add_argument("--system", default=None, help="a system prompt, kept at the top of every turn")
    ap.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    ap.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens only (0: all)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens "
                    "whose probability reaches p (1: all)")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="longest answer, in tokens")
    ap.add_argument("--raw", type=str2bool, default=False, metavar="{true,false}",
                    help="no chat template: continue the text (for a base model)")
    ap.add_argument("--seed", type=int, default=1337, help="sampling seed")
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = ap.parse_args(argv)
    if not 0 <= args.temperature <= 100:
        ap.error(f"--temperature {args.temperature}: must be in 0 .. 100 (0 is greedy)")
    if args.top_k < 0:
        ap.error(f"--top-k {args.top_k}: must be >= 0 (0 keeps every token)")
    if not 0 < args.top_p <= 1:
        ap.error(f"--top-p {args.top_p}: must be in (0, 1]")
    if not 0 <= args.seed < 2**63:
        ap.error(f"--seed {args.seed}: must be in 0 .. 2**63 - 1")
    if args.raw and args.system:
        ap.error("--system needs the chat template, which --raw true leaves out")
    check_device(args.device)
    model, enc, _ = load_model(args.ckpt, pick_device(args.device))  # a bad file: one line, exit 2
    if not 1 <= args.max_new_tokens < model.cfg.block_size:
        raise InputError(f"--max-new-tokens {args.max_new_tokens}: must be in 1 .. {model.cfg.block_size - 1} "
                         f"(the model's context is {model.cfg.block_size} tokens)")
    if not args.raw:  # the system prompt and the answer's room must leave room for a user message
        special_id(enc, "<|end|>")  # a model without a chat format: one line saying so
        try:
            fit_history(enc, args.system, [{"role": "user", "content": "?"}], model.cfg.block_size - args.max_new_tokens)
        except InputError:
            raise InputError(f"--max-new-tokens {args.max_new_tokens}" + (" and --system" if args.system else "") +
                             f" leave no room for a user message in the model's {model.cfg.block_size}-token "
                             "context") from None
    threads.configure("auto")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{args.ckpt}: {model.num_params() / 1e6:.2f}M parameters, context {model.cfg.block_size} tokens. "
              "/reset forgets the conversation, /quit leaves.")
    try:
        _, refused = chat(model, enc, args, typed_lines() if interactive else piped_lines(sys.stdin.buffer),
                          interactive)
    except BrokenPipeError:  # the reader went away (`| head -1`): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        raise SystemExit(1) from None
    if refused and not interactive:  # a script must see that some of its lines got no answer
        raise SystemExit(2)
    return 0


if __name__ == "__main__":
    main()
