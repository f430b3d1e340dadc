"""What --init, --ref and --ckpt name -> a model, its tokenizer and its checkpoint dict.

Two kinds of name:
- a minipost checkpoint, `runs/sft/model.pt`: the dict model.model_checkpoint writes (weights, model config,
  tokenizer name, step), read with weights_only=True;
- a Hugging Face folder, `hf:PATH` (Qwen3, Qwen2.5, Llama 3.2, SmolLM2, GPT-2: hf.py), its own chat format
  included. A base model's folder without a chat template takes one as `hf:PATH#chatml` or `hf:PATH#llama3`.

A model trained from a folder saves a model.pt like any other, whose tokenizer name is `hf:` and the folder's
absolute path (with its #format): later stages, the card and chat read the tokenizer from there.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from minipost import hf, tokenizer
from minipost.common import InputError, load_checkpoint, non_finite
from minipost.decoder import Decoder, DecoderConfig
from minipost.lora import plain_state_dict
from minipost.model import GPT, GPTConfig

HF = "hf:"


def model_checkpoint(model, tokenizer_name: str, step: int, **extra) -> dict:
    """The dict `model.pt` holds: weights (LoRA adapters folded in: plain weights every command loads), model
    config, tokenizer name, step (plus anything else given). A tokenizer from a folder adds the digest of its
    files: a model.pt is not used with a tokenizer or chat template other than the one it was trained with
    (load_model checks it)."""
    state = {k: v.detach().cpu() for k, v in plain_state_dict(model).items()}
    if str(tokenizer_name).startswith(HF):
        extra = {"tokenizer_digest": hf.tokenizer_digest(*split_hf(tokenizer_name)), **extra}
    return {"model": state, "model_config": asdict(model.cfg), "tokenizer": tokenizer_name, "step": step, **extra}


def split_hf(name: str) -> tuple[Path, str | None]:
    """"hf:PATH#format" -> (the folder, the chat format chosen, or None for the folder's own). A folder whose
    own name holds a "#" is read whole."""
    folder, chosen = str(name)[len(HF):], None
    if "#" in folder and not Path(folder).is_dir():
        folder, _, chosen = folder.rpartition("#")
    if not folder:
        raise InputError(f"{name}: no folder after hf: (hf:PATH, or hf:PATH#chatml)")
    return Path(folder), chosen or None


_TOKENIZERS: dict[str, object] = {}


def load_tokenizer(name: str):
    """A checkpoint's tokenizer name -> its Encoding: minipost's own ("nano", "small") or a folder's ("hf:...").
    Cached per name, so every caller in a process shares one Encoding."""
    if not str(name).startswith(HF):
        return tokenizer.get_tokenizer(name)
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = hf.load_hf_tokenizer(*split_hf(name))
    return _TOKENIZERS[name]


def load_hf(name: str, device="cpu", value_head: bool | None = None):
    """hf:PATH -> (the folder's model in float32, its tokenizer, a checkpoint dict naming the tokenizer)."""
    folder, chosen = split_hf(name)
    spec = HF + str(folder.resolve()) + (f"#{chosen}" if chosen else "")
    family, config = hf.read_config(folder)  # no folder, or no model minipost loads: one line, before the tokenizer
    rows = hf.model_config(family, config, str(folder / "config.json")).vocab_size
    enc = load_tokenizer(spec)  # (a bad tokenizer or format is refused before a weight is read)
    if enc.n_vocab > rows:
        raise InputError(f"{folder / 'tokenizer.json'}: {enc.n_vocab} tokens, more than config.json's vocab_size "
                         f"{rows}")
    model = hf.load_hf_model(folder, device)
    bad = next(non_finite(model.state_dict()), None)
    if bad is not None:
        raise InputError(f"{folder}: tensor {hf.hf_names(family, model.cfg).get(bad, bad)!r} is not finite (NaN or "
                         "inf): not a usable starting point")
    if enc.n_vocab < rows:
        model.n_tokens = enc.n_vocab  # (the logits are the tokens' only: minipost/model.py)
    if value_head:  # PPO's critic, the reward model's score: a new head on the folder's model
        model.cfg.value_head = True
        model.value_head = nn.Linear(model.cfg.n_embd, 1, device=device)
        nn.init.normal_(model.value_head.weight, std=0.02)
        nn.init.zeros_(model.value_head.bias)
    return model.eval(), enc, {"model_config": None, "tokenizer": spec, "step": 0}


def load_model(path, device="cpu", value_head: bool | None = None, policy: bool = True):
    """Load a checkpoint written by any minipost stage, or a Hugging Face folder (hf:PATH) -> (model in eval
    mode, tokenizer, checkpoint dict). A reward model (kind "reward_model") is refused unless policy=False: its
    scalar head scores answers, and its language-model head was never trained to write them (RewardModel
    loads it with policy=False)."""
    if str(path).startswith(HF):
        return load_hf(str(path), device, value_head)
    ckpt = load_checkpoint(path, map_location="cpu", required=("model", "model_config", "tokenizer"))
    if policy and ckpt.get("kind") == "reward_model":
        raise InputError(f"{path} is a reward model (kind 'reward_model'), not a policy: it scores answers "
                         "(--reward rm:PATH, the card's judge); give a policy's model.pt (pretrain, sft, dpo, RL)")
    try:
        config = ckpt["model_config"]  # a Decoder's names its family; GPT's does not
        cfg = DecoderConfig(**config) if isinstance(config, dict) and "family" in config else GPTConfig(**config)
        if value_head is not None:
            cfg.value_head = value_head
        model = Decoder(cfg) if isinstance(cfg, DecoderConfig) else GPT(cfg)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:  # unknown keys, n_embd % n_head != 0, ...
        raise InputError(f"{path}: model_config {ckpt['model_config']!r} does not describe a minipost model "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(ckpt["model"], dict):
        raise InputError(f"{path}: 'model' holds a {type(ckpt['model']).__name__}, not the weights' state_dict")
    bad = next(non_finite(ckpt["model"]), None)
    if bad is not None:
        raise InputError(f"{path}: weight {bad} is not finite (NaN or inf): not a usable starting point")
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:  # shapes that do not fit model_config
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:200])
        raise InputError(f"{path}: its weights do not fit its model_config ({detail})") from None
    allowed = {"value_head.weight", "value_head.bias"}
    if set(missing) - allowed or set(unexpected) - allowed:
        raise InputError(f"{path}: checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    try:
        enc = load_tokenizer(ckpt["tokenizer"])
    except (InputError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: its tokenizer {ckpt['tokenizer']!r} is not one minipost knows ({e})") from None
    if "tokenizer_digest" in ckpt and ckpt["tokenizer_digest"] != hf.tokenizer_digest(*split_hf(ckpt["tokenizer"])):
        raise InputError(f"{path}: its tokenizer's folder {ckpt['tokenizer']} has changed since the model was trained "
                         "(tokenizer.json, tokenizer_config.json or chat_template.jinja): the same text would be other "
                         "token ids or another chat format")
    if enc.n_vocab != cfg.vocab_size and not str(ckpt["tokenizer"]).startswith(HF):
        raise InputError(f"{path}: the model has {cfg.vocab_size} token embeddings but its tokenizer "
                         f"{ckpt['tokenizer']!r} has {enc.n_vocab} tokens")
    if enc.n_vocab > cfg.vocab_size:  # (a folder's model may have more rows than its tokenizer has tokens)
        raise InputError(f"{path}: its tokenizer has {enc.n_vocab} tokens, its model {cfg.vocab_size}")
    if enc.n_vocab < cfg.vocab_size:
        model.n_tokens = enc.n_vocab  # (the logits are the tokens' only: minipost/model.py)
    model.to(device).eval()
    return model, enc, ckpt


def check_same_tokenizer(enc, other_enc, path, other_path) -> None:
    """Two models whose log-probs are compared (policy and reference) must share one tokenizer: otherwise
    the same text is different token ids and log pi - log pi_ref is meaningless."""
    if enc.name != other_enc.name or enc.n_vocab != other_enc.n_vocab:
        raise InputError(f"{other_path}: tokenizer {other_enc.name!r} ({other_enc.n_vocab} tokens) differs from "
                         f"{path}'s {enc.name!r} ({enc.n_vocab} tokens); the reference must share the policy's")


def load_init(path, device="cpu", hint: str = "", **kwargs):
    """load_model(path, device, **kwargs) for an --init flag: a missing file is one line naming the flag and
    `hint` (what produces that file)."""
    if not str(path).startswith(HF) and not Path(path).exists():  # (a folder: load_model says which file)
        raise InputError(f"--init {path}: no such checkpoint{'; ' + hint if hint else ''}")
    return load_model(path, device, **kwargs)


def load_policy_and_reference(init, ref, device="cpu", hint: str = ""):
    """The policy to train (--init) and the frozen reference it is compared with (--ref, default a copy of
    --init), sharing one tokenizer -> (policy, reference, tokenizer, the policy's checkpoint dict). A missing
    file is one line naming its flag, and `hint` (what produces it)."""
    for flag, path in (("--init", init), ("--ref", ref)):
        if path and not str(path).startswith(HF) and not Path(path).exists():  # (a folder: load_model says)
            raise InputError(f"{flag} {path}: no such checkpoint{'; ' + hint if hint else ''}")
    policy, enc, ckpt = load_model(init, device)
    reference, ref_enc, _ = load_model(ref or init, device)  # in eval mode, as load_model returns every model
    check_same_tokenizer(enc, ref_enc, init, ref or init)
    reference.requires_grad_(False)
    return policy, reference, enc, ckpt
