"""Real model families against transformers, with no download: each test builds a tiny random model from a
transformers config, saves it as a Hugging Face folder, loads it with minipost.hf, and compares logits (also of
a left-padded batch), greedy generation with the KV cache, and the log-probs of a completion with their
gradients. transformers is a test-time reference only: minipost never imports it."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minipost.common import InputError  # noqa: E402
from minipost.hf import hf_names, load_hf_model  # noqa: E402
from minipost.logprobs import token_logprobs  # noqa: E402

V = 300
SHAPES = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=128,
              initializer_range=0.2)  # weights 10x the usual init: logits far from uniform, differences visible
FAMILIES = {
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(**SHAPES, num_attention_heads=4, num_key_value_heads=2,
                                                      head_dim=24, tie_word_embeddings=True)),
    "qwen2.5": ("Qwen2ForCausalLM", "Qwen2Config", dict(**SHAPES, num_attention_heads=4, num_key_value_heads=2,
                                                         tie_word_embeddings=False)),
    "llama3.2": ("LlamaForCausalLM", "LlamaConfig", dict(
        **SHAPES, num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16})),  # 16 < 128 positions: the scaling acts
    "smollm2": ("LlamaForCausalLM", "LlamaConfig", dict(**SHAPES, num_attention_heads=6, num_key_value_heads=2,
                                                        tie_word_embeddings=True, rope_theta=100000.0)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                                   initializer_range=0.2, bos_token_id=0, eos_token_id=0)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    """(transformers' model, minipost's model loaded from the folder transformers saved), both float32."""
    model_cls, config_cls, kwargs = FAMILIES[request.param]
    torch.manual_seed(0)
    if request.param == "smollm2":
        kwargs = {**kwargs, "hidden_size": 96}  # 6 heads of 16
    theirs = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).eval()
    folder = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(folder)
    return theirs, load_hf_model(folder), folder


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :9], mask[2, :3] = 0, 0  # left padding: prompts of 15, 24 and 21 tokens
    return ids, mask


def test_logits_equal_transformers_alone_and_in_a_left_padded_batch(pair):
    theirs, ours, _ = pair
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=1e-5, atol=1e-5)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # what transformers' generate() passes for left padding
        want = theirs(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 1  # the comparison is not between near-zero logits


def test_greedy_generation_with_the_kv_cache_equals_transformers_generate(pair):
    theirs, ours, _ = pair
    ids, mask = batch(2)
    with torch.no_grad():
        want = theirs.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
        stop = theirs.generation_config.eos_token_id  # a row that emits it stops, the rest of it is padding
        tokens, _, _ = ours.generate(ids, mask, max_new_tokens=12, temperature=0, stop_token=stop, pad_id=0)
    assert torch.equal(tokens, want[:, ids.shape[1]:])


def test_log_probs_of_a_completion_and_their_gradients_equal_transformers(pair):
    theirs, ours, _ = pair
    ids, _ = batch(3)
    targets = ids[:, 1:]
    ours.zero_grad()
    theirs.zero_grad()
    got = token_logprobs(ours(ids)[:, :-1], targets)  # (B, T - 1)
    want = torch.log_softmax(theirs(ids).logits[:, :-1].float(), dim=-1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    want.sum().backward()
    prefix = "transformer." if isinstance(theirs, transformers.GPT2LMHeadModel) else ""
    their_params = dict(theirs.named_parameters())
    family = "gpt2" if prefix else ours.cfg.family
    for name, theirs_name in hf_names(family, ours.cfg).items():
        grad = dict(ours.named_parameters())[name].grad
        want_grad = their_params[prefix + theirs_name].grad
        if prefix and grad.dim() == 2 and not name.startswith(("wte", "wpe")):
            want_grad = want_grad.T  # GPT-2's Conv1D
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5, msg=name)


def test_a_folder_that_is_not_a_supported_model_is_one_line(tmp_path, pair):
    _, _, folder = pair
    with pytest.raises(InputError, match="no such folder"):
        load_hf_model(tmp_path / "nope")
    with pytest.raises(InputError, match="config.json: no such file"):
        load_hf_model(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"]}))
    with pytest.raises(InputError, match=r"architectures \['MistralForCausalLM'\]; minipost loads LlamaForCausalLM"):
        load_hf_model(bad)
    wider = {**config, "hidden_size": 128} if "hidden_size" in config else {**config, "n_embd": 128}
    (bad / "config.json").write_text(json.dumps(wider))
    with pytest.raises(InputError, match=r"model.safetensors: tensor '.*' is F32 \[.*\]; config.json says"):
        load_hf_model(bad)
    layers = "n_layer" if "n_layer" in config else "num_hidden_layers"
    for change, message in [({layers: 1}, "tensors a .* model of this config.json has no place for"),  # 2 in the file
                            ({layers: -1}, f"field '{layers}' is -1; expected a whole number"),
                            ({layers: True}, f"field '{layers}' is True; expected a whole number")]:
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(InputError, match=message):
            load_hf_model(bad)
    (bad / "config.json").write_text(json.dumps(config))
    weights = (folder / "model.safetensors").read_bytes()
    size = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + size])
    name = next(n for n in header if n != "__metadata__")
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start + 4, end + 4]  # overlaps the next tensor's bytes
    text = json.dumps(header).encode()
    overlapping = len(text).to_bytes(8, "little") + text + weights[8 + size:]
    for damaged in (weights[:-100], b"\x10" * 64, overlapping):  # cut short; not safetensors; overlapping
        (bad / "model.safetensors").write_bytes(damaged)
        with pytest.raises(InputError, match="not a safetensors file"):
            load_hf_model(bad)


def test_a_folder_whose_weights_are_another_families_is_refused(tmp_path):
    """A Qwen3 folder labelled Llama: the same names but q_norm and k_norm, which a Llama has no place for."""
    model_cls, config_cls, kwargs = FAMILIES["qwen3"]
    getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(InputError, match=r"tensors a llama model of this config.json has no place for, e.g. .*_norm"):
        load_hf_model(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# tokenizer.json -> tiktoken: trained here with the tokenizers library, as each family's folder writes it

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3's split: up to three digits a piece
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen2's: one digit a piece
WORDS = ["the", "capital", "of", "Brerkia", "is", "Gubus", "Zürich", "naïve", "日本語", "🎉", "12345", "3.14", "don't",
         "WE'LL", "\n\n", "  ", "\t", "<|im_start|>", "<|endoftext|>", "x_y", "ÄÖÜ", "Ω", "\u00a0", "<tool_call>",
         "<think>"]


def mixed_text(rng) -> str:
    """Words, digits, whitespace runs, unicode and special-token spellings, glued in random ways."""
    return "".join(rng.choice(WORDS) + rng.choice([" ", "", "\n", "  ", ",", ". ", "\t"]) for _ in range(rng.randint(1, 12)))


@pytest.fixture(scope="module", params=["gpt2", "llama3", "qwen2", "smollm2"])
def tokenizers_pair(request, tmp_path_factory):
    """(the tokenizers library's Tokenizer, minipost's Encoding of the tokenizer.json it saved)."""
    import random
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from minipost.hf import load_hf_tokenizer
    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    if request.param == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif request.param == "smollm2":  # each digit a piece, then GPT-2's regex within each
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        split = LLAMA3_SPLIT if request.param == "llama3" else QWEN2_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if request.param == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([mixed_text(rng) for _ in range(3000)], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),  # words of their own, as Qwen's
                    AddedToken("<think>", special=False, normalized=False)])   # (not special: text matches them)
    folder = tmp_path_factory.mktemp(f"tok_{request.param}")
    tok.save(str(folder / "tokenizer.json"))
    tok.encode_special_tokens = True  # a special token's spelling in the text stays text, as in minipost
    return request.param, tok, load_hf_tokenizer(folder)


def test_tokenizer_json_encodes_and_decodes_as_the_tokenizers_library(tokenizers_pair):
    """10,000 strings: mixed text, and (without a normalizer) random code points, where a byte-level BPE's
    byte fallback and the split regex meet every script. With NFC (Qwen2's normalizer) the tokenizers library
    orders the bytes of some runs of combining marks differently (4 in 10,000 random code-point strings here;
    unicodedata's NFC gives the same text): random code points are left out there."""
    import random
    from minipost.tokenizer import encode_text
    family, theirs, ours = tokenizers_pair
    rng = random.Random(1)
    for i in range(10_000):
        if family != "qwen2" and i % 3 == 0:
            text = "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 20)))
        else:
            text = mixed_text(rng)
        ids = theirs.encode(text, add_special_tokens=False).ids
        assert encode_text(ours, text) == ids, (family, text)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=False), (family, text)
    im_start = theirs.token_to_id("<|im_start|>")
    assert ours.encode("<|im_start|>", allowed_special="all") == [im_start]  # the token itself, when asked for
    assert im_start not in encode_text(ours, "<|im_start|>user")  # its spelling in user text: text
    assert encode_text(ours, "a<tool_call>b") == theirs.encode("a<tool_call>b", add_special_tokens=False).ids
    assert theirs.token_to_id("<tool_call>") in encode_text(ours, "a<tool_call>b")  # a word of its own


def test_a_tokenizer_json_minipost_cannot_read_is_one_line(tmp_path, tokenizers_pair):
    from minipost.hf import load_hf_tokenizer
    _, theirs, _ = tokenizers_pair
    with pytest.raises(InputError, match="tokenizer.json: no such file"):
        load_hf_tokenizer(tmp_path)
    saved = json.loads(theirs.to_str())
    for change, message in [({"model": {**saved["model"], "type": "Unigram"}}, "minipost reads byte-level BPE"),
                            ({"pre_tokenizer": {"type": "Whitespace"}}, r"pre_tokenizer \['Whitespace'\]"),
                            ({"decoder": None}, "decodes with ByteLevel"),
                            ({"model": {**saved["model"], "merges": saved["model"]["merges"][::-1]}},
                             "the merges do not come in the order of their tokens' ids")]:
        (tmp_path / "tokenizer.json").write_text(json.dumps({**saved, **change}))
        with pytest.raises(InputError, match=message):
            load_hf_tokenizer(tmp_path)
