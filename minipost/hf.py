"""A Hugging Face model folder -> a minipost model: config.json says the family and the shapes, the safetensors
files hold the weights, under names this file maps onto minipost's (model.py's GPT, decoder.py's Decoder).

    model = load_hf_model("path/to/Qwen3-0.6B-Base", device="cuda", dtype=torch.bfloat16)

Supported (config.json "architectures"):

    LlamaForCausalLM   Llama 3.x, SmolLM2 (a Llama)     -> decoder.Decoder, family llama
    Qwen2ForCausalLM   Qwen2.5                          -> decoder.Decoder, family qwen2
    Qwen3ForCausalLM   Qwen3                            -> decoder.Decoder, family qwen3
    GPT2LMHeadModel    GPT-2 (124M .. 1.5B)             -> model.GPT with GPT-2's tanh GELU
                       minipost's own GPT, exported     -> model.GPT with the exact GELU (activation "gelu")

Everything is checked before a weight is read: the architecture, the settings the blocks do not implement
(sliding windows, other rope scalings, biases where the family has none), and every tensor's name, shape and
dtype against the model config.json describes, from the safetensors headers. The weights are then read
once, tensor by tensor, straight into the dtype asked for.
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import re
from pathlib import Path

import tiktoken
import torch

from minipost.chat_formats import SPECIALS, ChatFormat
from minipost.common import InputError
from minipost.decoder import Decoder, DecoderConfig, rope_frequencies
from minipost.model import GPT, GPTConfig

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                 "GPT2LMHeadModel": "gpt2"}
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_config(folder) -> tuple[str, dict]:
    """The family of a folder's model and its config.json -> (family, config dict); InputError otherwise."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise InputError(f"{folder}: no such folder (a Hugging Face model folder holds config.json and "
                         "model.safetensors)")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (a Hugging Face model folder holds one)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: not a readable JSON file ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(hf, dict):
        raise InputError(f"{path}: expected a JSON object")
    listed = hf.get("architectures") or []
    archs = [a for a in listed if a in ARCHITECTURES] if isinstance(listed, list) else []
    if not archs:
        raise InputError(f"{path}: architectures {hf.get('architectures')!r}; minipost loads "
                         f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[archs[0]], hf


def rope_settings(hf: dict, where: str) -> tuple[float, dict | None]:
    """(theta, scaling) from rope_theta / rope_scaling, or from newer folders' rope_parameters."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    if not isinstance(params, dict) or not isinstance(scaling, (dict, type(None))):
        raise InputError(f"{where}: rope_parameters / rope_scaling: expected JSON objects")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < float("inf"):
        raise InputError(f"{where}: rope_theta {theta!r}: expected a positive number")
    scaling = scaling or ({k: v for k, v in params.items() if k != "rope_theta"} if params else None)
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return float(theta), scaling


MAX_SIZE = 1 << 24  # no field of a model's shape is larger (the biggest vocabularies are ~260,000)


def model_config(family: str, hf: dict, where: str) -> DecoderConfig | GPTConfig:
    """config.json -> the minipost model config, refusing what the blocks do not implement."""
    def size(key, default=None) -> int:  # a whole number of things: 1 .. MAX_SIZE
        value = hf.get(key, default)
        if value is None:
            raise InputError(f"{where}: field {key!r} missing")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
            raise InputError(f"{where}: field {key!r} is {value!r}; expected a whole number in 1 .. {MAX_SIZE}")
        return value

    def positive(key, default=None) -> float:
        value = hf.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise InputError(f"{where}: field {key!r} is {value!r}; expected a small positive number")
        return float(value)

    if family == "gpt2":
        n_embd, n_head = size("n_embd"), size("n_head")
        if hf.get("n_inner") not in (None, 4 * n_embd):
            raise InputError(f"{where}: n_inner {hf['n_inner']}: minipost's GPT has an MLP of 4 * n_embd")
        gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}.get(  # exact: minipost's own
            hf.get("activation_function", "gelu_new"))                                 # GPTs, exported
        if gelu is None:
            raise InputError(f"{where}: activation_function {hf['activation_function']!r}: GPT-2's is gelu_new "
                             "(minipost's own GPT: gelu)")
        if abs(positive("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
            raise InputError(f"{where}: layer_norm_epsilon {hf['layer_norm_epsilon']}: minipost's GPT uses 1e-5")
        if n_embd % n_head:
            raise InputError(f"{where}: n_embd {n_embd} is not a multiple of n_head {n_head}")
        return GPTConfig(vocab_size=size("vocab_size"), block_size=size("n_positions"), n_layer=size("n_layer"),
                         n_head=n_head, n_embd=n_embd, gelu=gelu)
    if hf.get("use_sliding_window"):
        raise InputError(f"{where}: use_sliding_window true: minipost's attention sees the whole context")
    if hf.get("mlp_bias"):
        raise InputError(f"{where}: mlp_bias true: the SwiGLU here has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise InputError(f"{where}: hidden_act {hf['hidden_act']!r}: SwiGLU uses silu")
    n_embd, n_head = size("hidden_size"), size("num_attention_heads")
    theta, scaling = rope_settings(hf, where)
    bias = bool(hf.get("attention_bias", False))
    try:
        cfg = DecoderConfig(
            family=family, vocab_size=size("vocab_size"), block_size=size("max_position_embeddings"),
            n_layer=size("num_hidden_layers"), n_head=n_head, n_kv_head=size("num_key_value_heads", n_head),
            n_embd=n_embd, head_dim=size("head_dim", n_embd // n_head), intermediate_size=size("intermediate_size"),
            norm_eps=positive("rms_norm_eps"), rope_theta=theta, rope_scaling=scaling,
            qkv_bias=family == "qwen2" or bias, o_bias=family != "qwen2" and bias, qk_norm=family == "qwen3",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
        rope_frequencies(cfg)  # an unsupported rope scaling is refused now
    except InputError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{where}: {e}") from None
    return cfg


def hf_names(family: str, cfg) -> dict[str, str]:
    """minipost's parameter name -> the folder's tensor name (GPT-2's Conv1D matrices are stored transposed)."""
    if family == "gpt2":
        names = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight", "ln_f.weight": "ln_f.weight",
                 "ln_f.bias": "ln_f.bias"}
        for i in range(cfg.n_layer):
            for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2"), ("attn.qkv", "attn.c_attn"),
                                 ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
                for p in ("weight", "bias"):
                    names[f"blocks.{i}.{ours}.{p}"] = f"h.{i}.{theirs}.{p}"
        return names
    names = {"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layer):
        layer = {"norm1.weight": "input_layernorm.weight", "norm2.weight": "post_attention_layernorm.weight",
                 "mlp.gate.weight": "mlp.gate_proj.weight", "mlp.up.weight": "mlp.up_proj.weight",
                 "mlp.down.weight": "mlp.down_proj.weight", "attn.o.weight": "self_attn.o_proj.weight"}
        for x in "qkv":
            layer[f"attn.{x}.weight"] = f"self_attn.{x}_proj.weight"
            if cfg.qkv_bias:
                layer[f"attn.{x}.bias"] = f"self_attn.{x}_proj.bias"
        if cfg.o_bias:
            layer["attn.o.bias"] = "self_attn.o_proj.bias"
        if cfg.qk_norm:
            layer["attn.q_norm.weight"] = "self_attn.q_norm.weight"
            layer["attn.k_norm.weight"] = "self_attn.k_norm.weight"
        names.update({f"blocks.{i}.{k}": f"model.layers.{i}.{v}" for k, v in layer.items()})
    return names


def weight_files(folder) -> dict[str, Path]:
    """The folder's tensor name -> the safetensors file holding it (model.safetensors, or a sharded index)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map is not a {tensor name: file name} object")
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            raise InputError(f"{index}: not a safetensors index ({type(e).__name__}: {str(e)[:100]})") from None
        for file in set(weight_map.values()):  # a shard is a plain file beside the index (not a pipe, not elsewhere)
            shard = folder / file
            if Path(file).name != file or not shard.is_file():
                raise InputError(f"{index}: shard {file!r} is not a file in {folder}")
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise InputError(f"{folder}: no model.safetensors (nor model.safetensors.index.json); minipost reads "
                         "safetensors weights only")
    return {name: single for name in read_header(single)}


BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_header(path: Path) -> dict:
    """A safetensors file's header, checked against the file: tensor name -> {"dtype", "shape", "data_offsets"},
    each tensor's bytes inside the file and as many as its shape and dtype take. Reads no weight.

    The format: 8 bytes (little-endian) saying the header's length, the header (JSON), then the tensors' bytes
    one after another, each at data_offsets from the end of the header (in_file below: from the file's start)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < 100 << 20:
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        header.pop("__metadata__", None)
        data = path.stat().st_size - 8 - size  # bytes of tensor data after the header
        spans = sorted(tuple(info["data_offsets"]) for info in header.values())
        tiled = all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and (not spans or spans[0][0] == 0)
        if not tiled:
            raise ValueError("the tensors' byte ranges overlap or leave gaps (each tensor its own bytes, in a row)")
        if spans and spans[-1][1] > data:
            raise ValueError(f"truncated: its header places {spans[-1][1]} bytes of tensors, the file holds {data}")
        for name, info in header.items():
            shape, (start, end) = info["shape"], info["data_offsets"]
            if not all(isinstance(n, int) and n >= 0 for n in (*shape, start, end)) or info["dtype"] not in BYTES:
                raise ValueError(f"tensor {name!r}: {info!r}")
            if end > data or end - start != math.prod(shape) * BYTES[info["dtype"]]:
                raise ValueError(f"tensor {name!r}: bytes {start}..{end} do not hold {info['dtype']} {shape} "
                                 f"within the file's {data} bytes of data")
            info["in_file"] = (8 + size + start, 8 + size + end)  # where its bytes are, from the file's start
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise InputError(f"{path}: not a safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
    return header


UNUSED_GPT2 = (".attn.bias", ".attn.masked_bias")  # GPT-2 folders of old: the causal mask, stored as a buffer


def read_into(mapped: mmap.mmap, header: dict, name: str, out: torch.Tensor, transpose: bool = False) -> None:
    """Copy one tensor of a mapped safetensors file into `out` (a tensor of the model, on any device, cast to
    its dtype, GPT-2's Conv1D transposed), then let go of the file's pages it touched: the copy runs at memory
    speed, and the file never counts in this process's memory beyond the tensor being copied."""
    info = header[name]
    start, end = info["in_file"]
    if end > start:
        t = torch.frombuffer(mapped, dtype=DTYPES[info["dtype"]], count=math.prod(info["shape"]), offset=start)
        t = t.view(info["shape"])
        out.copy_(t.T if transpose else t)
        if hasattr(mmap, "MADV_DONTNEED"):  # (Linux, macOS) the pages stay in the OS's cache, out of this process
            page = mmap.PAGESIZE
            mapped.madvise(mmap.MADV_DONTNEED, start // page * page, end - start // page * page)


def load_hf_model(folder, device="cpu", dtype: torch.dtype = torch.float32):
    """A Hugging Face folder's model as a minipost model in eval mode, its weights in `dtype` on `device`."""
    family, hf = read_config(folder)
    cfg = model_config(family, hf, str(Path(folder) / "config.json"))
    with torch.device("meta"):  # shapes only: nothing is allocated until the weights are read
        model = (GPT(cfg) if family == "gpt2" else Decoder(cfg)).to(dtype)
    files = weight_files(folder)
    prefix = "transformer." if family == "gpt2" and any(n.startswith("transformer.") for n in files) else ""
    names = {ours: prefix + theirs for ours, theirs in hf_names(family, cfg).items()}
    expected = model.state_dict()
    assert set(names) == set(expected), set(names) ^ set(expected)  # every parameter has its tensor
    headers = {path: read_header(path) for path in set(files.values())}
    for path, header in headers.items():  # a shard's tensors are the ones the index lists for it
        stray = [n for n in header if files.get(n) != path]
        if stray:
            raise InputError(f"{path}: holds {stray[0]!r}, which the index does not list for it")
    used = set(names.values())
    unused = sorted(n for n in files if n not in used and not n.endswith(UNUSED_GPT2))
    if unused:  # a tensor no block reads: config.json describes another model than the weights are
        raise InputError(f"{folder}: {len(unused)} tensors a {family} model of this config.json has no place for, "
                         f"e.g. {unused[0]!r} (another architecture, more layers, a bias or an output layer?)")
    for ours, theirs in names.items():  # every tensor checked before one is read
        if theirs not in files:
            raise InputError(f"{folder}: no tensor {theirs!r} in its safetensors files ({family} with "
                             f"{cfg.n_layer} layers needs it)")
        if theirs not in headers[files[theirs]]:
            raise InputError(f"{files[theirs]}: no tensor {theirs!r}, which the index says it holds")
        info = headers[files[theirs]][theirs]
        shape = tuple(info["shape"])
        want = tuple(expected[ours].shape)
        if family == "gpt2" and ours.endswith("weight") and len(want) == 2 and not ours.startswith(("wte", "wpe")):
            want = want[::-1]  # GPT-2's Conv1D stores (in, out)
        if shape != want or info["dtype"] not in DTYPES:
            raise InputError(f"{files[theirs]}: tensor {theirs!r} is {info['dtype']} {list(shape)}; config.json "
                             f"says {list(want)} (floating point: {', '.join(DTYPES)})")
    for module in model.modules():  # memory for every weight, left uninitialised: the file fills it
        for key, p in module._parameters.items():  # (Module.to_empty does this too, and imports 487 modules)
            if p is not None:
                module._parameters[key] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                             requires_grad=p.requires_grad)
    if family != "gpt2":
        model.inv_freq = rope_frequencies(cfg).to(device)  # a buffer the meta device could not compute
    state = model.state_dict()
    by_file = {}
    for ours, theirs in names.items():
        by_file.setdefault(files[theirs], []).append((ours, theirs))
    with torch.no_grad():
        for path, pairs in by_file.items():
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
                for ours, theirs in pairs:  # at most one tensor of the file in memory besides the model
                    conv1d = family == "gpt2" and state[ours].dim() == 2 and not ours.startswith(("wte", "wpe"))
                    read_into(mapped, headers[path], theirs, state[ours], transpose=conv1d)  # (GPT-2: (in, out))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# tokenizer.json -> a tiktoken Encoding: one tokenizer path for minipost's own BPE and the families'

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # ByteLevel's own


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte in tokenizer.json's
    vocabulary and merges -> the byte. Printable bytes stand for themselves; the other 68 get the characters
    from U+0100 on, in byte order (Radford et al. 2019's encoder.py defines it so)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


# SmolLM2's pre-tokenizer, Digits (each digit a piece) then ByteLevel's regex in each piece, as one regex:
# GPT-2's with a digit alone, and a whitespace run before a digit kept whole (it ended its piece)
DIGITS_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""


def split_pattern(pre: dict | None, where: str) -> str:
    """The pre-tokenizer's split regex: ByteLevel's own (GPT-2), Digits then ByteLevel's (SmolLM2), or a Split
    on a regex then ByteLevel without its regex (Llama 3, Qwen2)."""
    steps = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre or {}]
    kinds = [st.get("type") for st in steps]
    if kinds and kinds[-1] == "ByteLevel" and not steps[-1].get("add_prefix_space"):
        regex = steps[-1].get("use_regex", True)
        if kinds == ["ByteLevel"] and regex:
            return GPT2_PATTERN
        if kinds == ["Digits", "ByteLevel"] and regex and steps[0].get("individual_digits"):
            return DIGITS_PATTERN
        if kinds == ["Split", "ByteLevel"] and not regex:
            split = steps[0]
            if split.get("behavior") == "Isolated" and not split.get("invert") and "Regex" in split.get("pattern", {}):
                return split["pattern"]["Regex"]
    raise InputError(f"{where}: pre_tokenizer {kinds}: minipost reads byte-level BPE as GPT-2, Llama 3, Qwen2 and "
                     "SmolLM2 write it (ByteLevel; Digits then ByteLevel; or a regex Split then ByteLevel; no prefix "
                     "space)")


def load_hf_tokenizer(folder, chat_format: str | None = None) -> tiktoken.Encoding:
    """A folder's tokenizer.json (byte-level BPE) as a tiktoken Encoding with the same token ids: the merges
    become ranks (a token's rank is its id, so the merge order must follow the ids, which is how byte-level
    BPE is trained), the pre-tokenizer's regex the split pattern, and the added tokens special tokens.
    The chat format is the folder's template's (read_chat_format), or `chat_format` (chatml, llama3) for a
    base model whose folder has none."""
    path = Path(folder) / "tokenizer.json"
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
        model, added = tok["model"], tok.get("added_tokens") or []
        if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict) or not isinstance(added, list):
            raise TypeError("model, model.vocab and added_tokens are not the objects and list they should be")
        ids = [*model["vocab"].values(), *(t.get("id") if isinstance(t, dict) else None for t in added)]
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_SIZE for i in ids) or \
                not all(isinstance(t.get("content"), str) for t in added) or \
                not all(isinstance(t, str) for t in model["vocab"]):
            raise TypeError("a token that is not text, or an id that is not a whole number in 0 .. 2^24")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (a Hugging Face model folder holds one)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise InputError(f"{path}: not a tokenizer.json ({type(e).__name__}: {str(e)[:100]})") from None
    if model.get("type") != "BPE" or model.get("byte_fallback") or tok.get("normalizer") not in (None, {"type": "NFC"}):
        raise InputError(f"{path}: model {model.get('type')!r} with normalizer {tok.get('normalizer')!r}: minipost "
                         "reads byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2)")
    ignored = [k for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix") if model.get(k)]
    if ignored:
        raise InputError(f"{path}: model.{ignored[0]} is set; byte-level BPE as these families write it has none")
    if (tok.get("decoder") or {}).get("type") != "ByteLevel":
        raise InputError(f"{path}: decoder {tok.get('decoder')!r}: byte-level BPE decodes with ByteLevel")
    pattern = split_pattern(tok.get("pre_tokenizer"), str(path))
    alphabet = byte_level_alphabet()
    specials = {t["content"]: t["id"] for t in added}  # (tiktoken decodes them; encode_text matches the non-special)
    try:  # (a special token may sit in the vocabulary too; in tiktoken it is a special token only)
        ranks = {bytes(alphabet[c] for c in token): i for token, i in model["vocab"].items() if token not in specials}
    except KeyError as e:
        raise InputError(f"{path}: a vocabulary token holds {e.args[0]!r}, which is no byte's character") from None
    try:
        merged = [ranks[bytes(alphabet[c] for c in "".join(m.split(" ") if isinstance(m, str) else m))]
                  for m in model.get("merges", [])]
    except (KeyError, TypeError) as e:
        raise InputError(f"{path}: a merge makes {e.args[0]!r}, which is not an ordinary vocabulary token") from None
    if any(b <= a for a, b in zip(merged, merged[1:])):
        raise InputError(f"{path}: the merges do not come in the order of their tokens' ids; tiktoken merges by id")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise InputError(f"{path}: no token for the byte {missing[0]:#04x}; byte-level BPE has one for each byte")
    clash = sorted(set(specials.values()) & set(ranks.values()))
    every = sorted({*ranks.values(), *specials.values()})
    if clash or every != list(range(len(every))):  # ids 0 .. n-1, each one token's: generate() samples them all
        gap = clash[0] if clash else next(i for i, j in enumerate(every) if i != j)
        raise InputError(f"{path}: token id {gap} is " + ("two tokens'" if clash else "no token's") +
                         "; minipost reads a vocabulary whose ids run 0 .. n-1, each one token's")
    digest = tokenizer_digest(folder, chat_format)[:12]  # (two folders' tokenizers share a name only if equal)
    try:
        enc = tiktoken.Encoding(name=f"hf:{Path(folder).name}:{digest}", pat_str=pattern, mergeable_ranks=ranks,
                                special_tokens=specials)
    except (ValueError, OverflowError) as e:  # a split regex tiktoken's engine cannot read
        raise InputError(f"{path}: tiktoken cannot use it ({type(e).__name__}: {str(e)[:100]})") from None
    enc.normalize_nfc = tok.get("normalizer") == {"type": "NFC"}  # (Qwen2's; tokenizer.encode_text applies it)
    # added tokens that are not special (Qwen's <think>, <tool_call>) are words of their own, matched in the
    # text before BPE, where their spelling stands (tokenizer.encode_text splits on them)
    words = [t for t in added if not t.get("special")]
    if any(t.get(k) for t in words for k in ("single_word", "lstrip", "rstrip")):
        raise InputError(f"{path}: an added token with single_word, lstrip or rstrip: minipost matches exact text")
    enc.added_words = {t["content"]: t["id"] for t in words}
    longest_first = sorted(enc.added_words, key=len, reverse=True)  # "<a>b" before "<a>" where one holds the other
    enc.added_words_split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if words else None
    enc.hf_folder = Path(folder).resolve()
    set_chat_format(enc, Path(folder), chat_format)
    return enc


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def tokenizer_digest(folder, chat_format: str | None = None) -> str:
    """sha256 of what a folder's tokenizer is made of: its files, and the chat format chosen for it."""
    h = hashlib.sha256(f"{chat_format}".encode())
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-") + b"\0")
    return h.hexdigest()


def read_tokenizer_config(folder: Path) -> tuple[dict, str | None]:
    """tokenizer_config.json (optional) -> (its fields, the chat template: its own field, or chat_template.jinja)."""
    path = folder / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    except (OSError, ValueError, AttributeError, RecursionError) as e:
        raise InputError(f"{path}: not a readable tokenizer config ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(template, (str, type(None))):
        raise InputError(f"{path}: chat_template is a {type(template).__name__}, not a template string")
    return config, template


def token_name(value) -> str | None:
    """tokenizer_config.json writes a token as its text or as {"content": text, ...}."""
    return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None


def read_chat_format(template: str | None) -> ChatFormat | None:
    """Which of the formats chat_formats.py renders a folder's Jinja template writes, and its details: a default
    system turn, Qwen3's <think> blocks, Llama 3.1/3.2's dated system turn. None for no template or another."""
    if not template:
        return None
    if "<|im_start|>" in template:
        default = re.search(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}]*?)<\|im_end\|>", template)  # a literal one
        return ChatFormat("chatml", default_system=default and default.group(1).replace("\\n", "\n"),
                          think="<think>" in template)
    if "<|start_header_id|>" in template:
        cutoff = re.search(r"Cutting Knowledge Date: ([^\\'\"]+)", template)
        date = re.search(r"date_string = [\"']([^\"']+)[\"']", template)
        return ChatFormat("llama3", cutoff=cutoff and cutoff.group(1),
                          **({"date": date.group(1)} if date else {}))
    if "<|assistant|>" in template and "<|end|>" in template:  # minipost's own, exported (minipost.export)
        return ChatFormat("minipost")
    return None


def set_chat_format(enc: tiktoken.Encoding, folder: Path, chosen: str | None) -> None:
    """enc.chat_format (how tokenizer.render_chat writes a conversation) and enc.stand_ins (the tokens that play
    minipost's <|end|>, <|pad|> and <|endoftext|>: the end of a turn, padding, the end of a document)."""
    config, template = read_tokenizer_config(folder)
    where = folder / "tokenizer_config.json"
    if chosen is not None:
        if chosen not in SPECIALS:
            raise InputError(f"hf:{folder}#{chosen}: unknown chat format; choose one of {', '.join(SPECIALS)}")
        fmt = ChatFormat(chosen, cutoff="December 2023" if chosen == "llama3" else None)
    else:
        fmt = read_chat_format(template)
    specials = enc._special_tokens
    missing = [t for t in SPECIALS[fmt.name] if t not in specials] if fmt else []
    if missing and chosen is not None:
        raise InputError(f"hf:{folder}#{chosen}: its tokenizer has no {missing[0]} token, which {chosen} needs "
                         f"(a format writes its own special tokens; choose one this tokenizer has)")
    if missing:
        raise InputError(f"{where}: its chat template writes {fmt.name} but the tokenizer has no {missing[0]} token")
    eos, pad = token_name(config.get("eos_token")), token_name(config.get("pad_token"))
    document_end = next((t for t in ("<|endoftext|>", "<|end_of_text|>", eos) if t in specials), None)
    enc.chat_format = fmt
    enc.stand_ins = {k: v for k, v in (("<|end|>", fmt and fmt.turn_end), ("<|endoftext|>", document_end),
                                        ("<|pad|>", pad if pad in specials else document_end)) if v}
    enc.no_format_why = (f"{where} has no chat template minipost can render (ChatML, Llama 3); a base model's "
                         f"folder takes one as hf:PATH#chatml or hf:PATH#llama3, if its tokenizer has its tokens")
