"""A minipost model -> a Hugging Face folder, so it runs where transformers' folders run.

    python -m minipost.export --ckpt runs/sft/model.pt --out exported/

AutoModelForCausalLM.from_pretrained("exported/") then gives minipost's logits, and AutoTokenizer minipost's
token ids (tests/test_export.py checks both, and that minipost reads the folder back to the same weights):

    config.json             the architecture and every shape: a Decoder as LlamaForCausalLM, Qwen2ForCausalLM
                            or Qwen3ForCausalLM; a GPT as GPT2LMHeadModel (minipost's own with the exact erf
                            GELU, activation_function "gelu"; GPT-2's own with its tanh GELU, "gelu_new")
    model.safetensors       the weights under the folder's names (hf.hf_names, the loader's map read the other
                            way; GPT-2's Conv1D matrices transposed back to (in, out)); a tied output layer once
    tokenizer.json          minipost's own tokenizer (nano, small): written here, the tiktoken ranks as the
    tokenizer_config.json   tokenizers library's byte-level BPE, with minipost's chat template. A tokenizer from a
    generation_config.json  folder (hf:PATH): its files, copied; a base model's folder trained on a chat format
                            (hf:PATH#chatml, #llama3) gets that format's template and stops at its end of turn

The config written is read back with hf.model_config before anything is saved, so a model whose settings a
config.json cannot say is refused rather than written wrong. The folder is written beside --out and renamed
into place at the end: --out is complete or absent.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from minipost.chat_formats import TURN_END, ChatFormat
from minipost.checkpoints import HF, load_model, split_hf
from minipost.common import ArgumentParser, InputError, check_can_create, exit_on_input_error, non_finite
from minipost.hf import byte_level_alphabet, hf_names, model_config
from minipost.tokenizer import PAT_STR

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "gpt2": "GPT2LMHeadModel"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def chat_template_jinja(fmt) -> str:
    """A chat format (its name, or a chat_formats.ChatFormat with its details) as the Jinja template that
    tokenizer_config.json carries: transformers' apply_chat_template then writes what chat_formats.py and
    tokenizer.render_chat write. Qwen3's <think> blocks are not written here (a folder keeps its own template)."""
    fmt = ChatFormat(fmt) if isinstance(fmt, str) else fmt
    if fmt.name not in TURN_END or fmt.think:
        raise InputError(f"chat format {fmt!r}: export writes templates for {', '.join(TURN_END)} (no <think>)")
    q = lambda text: json.dumps(text, ensure_ascii=False)  # noqa: E731  (a Jinja string literal, "\n" escaped)
    role, content, first = " + message['role'] + ", " + message['content'] + ", ""
    if fmt.name == "minipost":  # <|role|>content<|end|>
        turn, prompt = q("<|") + role + q("|>") + content + q("<|end|>"), q("<|assistant|>")
    elif fmt.name == "chatml":  # <|im_start|>role\ncontent<|im_end|>\n
        turn = q("<|im_start|>") + role + q("\n") + content + q("<|im_end|>\n")
        prompt = q("<|im_start|>assistant\n")
        if fmt.default_system is not None:  # a system turn when the conversation has none
            first = ("{%- if not messages or messages[0]['role'] != 'system' %}{{- "
                     + q(f"<|im_start|>system\n{fmt.default_system}<|im_end|>\n") + " }}{%- endif %}")
    else:  # <|begin_of_text|> once, then <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>, trimmed
        turn = (q("<|start_header_id|>") + role + q("<|end_header_id|>\n\n") + " + (message['content'] | trim) + "
                + q("<|eot_id|>"))
        prompt = q("<|start_header_id|>assistant<|end_header_id|>\n\n")
        first = "{{- " + q("<|begin_of_text|>") + " }}"
        if fmt.cutoff is not None:  # Llama 3.1 / 3.2: always a dated system turn, the conversation's own inside
            first += ("{%- set system = '' %}{%- if messages and messages[0]['role'] == 'system' %}"
                      "{%- set system = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}{%- endif %}"
                      "{{- " + q(f"<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                                 f"{fmt.cutoff}\nToday Date: {fmt.date}\n\n")
                      + " + system + " + q("<|eot_id|>") + " }}")
    return (first + "{%- for message in messages %}{{- " + turn + " }}{%- endfor %}"
            "{%- if add_generation_prompt %}{{- " + prompt + " }}{%- endif %}")


def hf_config(model, dtype: torch.dtype) -> tuple[str, dict]:
    """The model's config.json -> (family, config dict), checked by reading it back as hf.py does."""
    cfg = model.cfg
    family = getattr(cfg, "family", "gpt2")  # (a DecoderConfig says its family; a GPTConfig is GPT-2's)
    name = str(dtype).removeprefix("torch.")
    if family == "gpt2":
        hf = dict(model_type="gpt2", vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_layer=cfg.n_layer,
                  n_head=cfg.n_head, n_embd=cfg.n_embd, n_inner=None, layer_norm_epsilon=1e-5,
                  activation_function="gelu" if cfg.gelu == "exact" else "gelu_new",  # erf, or GPT-2's tanh
                  attn_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, resid_pdrop=cfg.dropout, scale_attn_weights=True,
                  tie_word_embeddings=True)
        want = dataclasses.replace(cfg, value_head=False, dropout=0.0)  # (dropout: off in an exported model)
    else:
        hf = dict(model_type=family, vocab_size=cfg.vocab_size, max_position_embeddings=cfg.block_size,
                  hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.n_layer,
                  num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim,
                  hidden_act="silu", rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                  rope_scaling=cfg.rope_scaling, tie_word_embeddings=cfg.tie_embeddings,
                  attention_bias=cfg.qkv_bias if family != "qwen2" else False)  # (Qwen2's q/k/v always have one)
        if family != "llama":
            hf.update(use_sliding_window=False, sliding_window=None)
        want = dataclasses.replace(cfg, value_head=False)
    hf = {"architectures": [ARCHITECTURES[family]], **hf, "torch_dtype": name, "dtype": name}
    back = model_config(family, hf, "config.json")
    if back != want:
        differ = [f"{f.name} {getattr(want, f.name)!r} (it would read {getattr(back, f.name)!r})"
                  for f in dataclasses.fields(want) if getattr(want, f.name) != getattr(back, f.name)]
        raise InputError(f"a {ARCHITECTURES[family]} config.json cannot say this model's {', '.join(differ)}")
    return family, hf


def hf_weights(model, family: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The model's weights under the folder's names, in `dtype`, on the CPU (a value head is not exported)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("value_head.")}
    names = hf_names(family, model.cfg)
    if set(names) != set(state):
        raise InputError(f"weights {sorted(set(names) ^ set(state))[:3]} do not fit a {family} model")
    bad = next(non_finite(state), None)
    if bad is not None:
        raise InputError(f"weight {bad} is not finite (NaN or inf): not exported")
    out = {}
    for ours, theirs in names.items():
        t = state[ours].detach().to("cpu", dtype)
        if family == "gpt2":
            conv1d = t.dim() == 2 and not ours.startswith(("wte", "wpe"))
            out["transformer." + theirs] = t.T if conv1d else t  # GPT-2's Conv1D stores (in, out)
        else:
            out[theirs] = t
    return {k: v.contiguous() for k, v in out.items()}


def bpe_split(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken's BPE on `token`'s bytes with the ranks below `below`: merge the lowest-ranked pair until none."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        rank, i = min((ranks.get(a + b, below), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if rank >= below:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def tokenizer_json(enc) -> dict:
    """minipost's tiktoken Encoding as the tokenizers library's tokenizer.json: byte-level BPE whose vocabulary
    is the ranks (each byte spelled by GPT-2's printable character for it), one merge per token (the two tokens
    BPE on its bytes with the lower ranks ends with), PAT_STR as the split, the special tokens added after."""
    specials = {s: enc.encode_single_token(s) for s in enc.special_tokens_set}
    ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.n_vocab) if i not in specials.values()}
    char = {b: c for c, b in byte_level_alphabet().items()}
    spell = lambda token: "".join(char[b] for b in token)  # noqa: E731
    merges, by_id = [], lambda kv: kv[1]
    for token, rank in sorted(ranks.items(), key=by_id):
        parts = bpe_split(token, ranks, rank) if rank >= 256 else []
        if len(parts) == 2:  # (a token BPE cannot build from two is reached only as a whole piece: ignore_merges)
            merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s, i in sorted(specials.items(), key=by_id)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PAT_STR}, "behavior": "Isolated", "invert": False}, byte_level]},
        "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True,  # a piece that is itself a token stays one, as in tiktoken
                  "vocab": {spell(t): i for t, i in ranks.items()}, "merges": merges},
    }


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    """A JSON object from a file of the source folder; {} where there is none (or it is not one)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_tokenizer(enc, tokenizer_name: str, folder: Path, block_size: int) -> dict:
    """tokenizer.json and tokenizer_config.json (+ generation_config.json) -> the token ids config.json names."""
    if not tokenizer_name.startswith(HF):  # minipost's own BPE
        write_json(folder / "tokenizer.json", tokenizer_json(enc))
        write_json(folder / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size, "bos_token": None,
            "eos_token": "<|end|>", "pad_token": "<|pad|>", "unk_token": None, "clean_up_tokenization_spaces": False,
            "chat_template": chat_template_jinja("minipost")})
        ids = {"eos_token_id": enc.encode_single_token("<|end|>"), "pad_token_id": enc.encode_single_token("<|pad|>")}
        write_json(folder / "generation_config.json", ids)
        return {"bos_token_id": None, **ids}
    spec, chosen = split_hf(tokenizer_name)  # "hf:/abs/folder" or "hf:/abs/folder#chatml"
    source = Path(getattr(enc, "hf_folder", None) or spec)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja"):  # (a template file would win over a chosen format's template)
        if (source / name).is_file() and not (chosen and name == "chat_template.jinja"):
            shutil.copyfile(source / name, folder / name)
    if not (folder / "tokenizer.json").is_file():
        raise InputError(f"{source}: no tokenizer.json to export with the model")
    config_path, generation_path = folder / "tokenizer_config.json", folder / "generation_config.json"
    config = read_json(config_path) or {"tokenizer_class": "PreTrainedTokenizerFast"}
    if chosen:  # a base model's folder, trained on this format: its template, and its end of turn stops generation
        fmt = getattr(enc, "chat_format", None) or chosen  # (with the details hf.py chose for it)
        config["chat_template"] = chat_template_jinja(fmt)
        generation = read_json(generation_path)
        eos = generation.get("eos_token_id")
        eos = eos if isinstance(eos, list) else [] if eos is None else [eos]
        stop = enc.encode_single_token(TURN_END[getattr(fmt, "name", fmt)])
        generation["eos_token_id"] = eos if stop in eos else eos + [stop]
        generation.pop("_from_model_config", None)  # (else transformers may rebuild it from config.json's eos)
        write_json(generation_path, generation)
    write_json(config_path, config)
    source_config = read_json(source / "config.json")
    return {k: source_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in source_config}


def check_out(out: Path) -> None:
    """--out is a new folder, or an empty one, that could be created here; InputError otherwise."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not an empty folder; pick a new one")
    check_can_create(out, f"--out {out}")


def export(model, enc, out, tokenizer_name: str, dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` (a GPT or a Decoder) and its tokenizer as a Hugging Face folder at `out` -> its Path."""
    out = Path(out)
    check_out(out)
    family, config = hf_config(model, dtype)
    weights = hf_weights(model, family, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        config.update(write_tokenizer(enc, tokenizer_name, tmp, model.cfg.block_size))
        write_json(tmp / "config.json", config)
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        for path in (tmp, *tmp.iterdir()):  # ordinary outputs (mkdtemp and save_file make them private)
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.replace(tmp, out)  # (over an empty --out too)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(lambda: _main(argv))


def _main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Write a minipost checkpoint as a Hugging Face folder (transformers reads it).")
    parser.add_argument("--ckpt", required=True, help="the model.pt to export (or hf:PATH#chatml)")
    parser.add_argument("--out", required=True, help="the folder to write (new, or empty)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="the weights' dtype in the file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    check_out(out)  # (before a weight is read)
    model, enc, ckpt = load_model(args.ckpt)  # (a reward model is refused: its scalar head is no language model's)
    export(model, enc, out, ckpt["tokenizer"], DTYPES[args.dtype])
    n = sum(p.numel() for k, p in model.state_dict().items() if not k.startswith("value_head."))
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))} ({n:,} weights in {args.dtype})")


if __name__ == "__main__":
    main()
