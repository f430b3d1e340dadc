"""minipost -> a Hugging Face folder -> transformers, with no download: tiny random models of each family (built
with transformers, as tests/test_hf.py does) and a nano-shaped minipost GPT are exported; transformers loads the
folder with the same logits, minipost loads it back with the same weights, and the exported tokenizer encodes,
decodes and renders chats as minipost does. transformers is a test-time reference only: minipost never imports it."""
import json
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minipost.checkpoints import load_model, model_checkpoint  # noqa: E402
from minipost.common import InputError  # noqa: E402
from minipost.decoder import Decoder, DecoderConfig  # noqa: E402
from minipost.export import chat_template_jinja, export, main  # noqa: E402
from minipost.hf import load_hf_model, load_hf_tokenizer  # noqa: E402
from minipost.model import GPT, GPTConfig  # noqa: E402
from minipost.tokenizer import SPECIAL_TOKENS, encode_text, get_tokenizer, render_chat  # noqa: E402

V = 300
SHAPES = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=128,
              initializer_range=0.2)  # weights 10x the usual init: logits far from uniform, differences visible
FAMILIES = {  # (transformers' class, its config, shapes, the chat format the folder is used with)
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(**SHAPES, num_attention_heads=4, num_key_value_heads=2,
                                                      head_dim=24, tie_word_embeddings=True), "#chatml"),
    "qwen2.5": ("Qwen2ForCausalLM", "Qwen2Config", dict(**SHAPES, num_attention_heads=4, num_key_value_heads=2,
                                                         tie_word_embeddings=False), ""),
    "llama3.2": ("LlamaForCausalLM", "LlamaConfig", dict(
        **SHAPES, num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}), "#llama3"),  # 16 < 128 positions: the scaling acts
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                                   initializer_range=0.2, bos_token_id=0, eos_token_id=0), ""),
}
FOLDER_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"]
WORDS = ["the", "capital", "of", "Brerkia", "is", "Gubus", "Zürich", "naïve", "日本語", "🎉", "12345", "3.14",
         "don't", "WE'LL", "\n\n", "  ", "\t", "\r\n", "x_y", "ÄÖÜ", "Ω", "\u00a0", "½", "\x1c", "<|end|>", "?!",
         "'s", "<|"]
MESSAGES = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "The capital of Brerkia?"},
            {"role": "assistant", "content": " Gubus.\n"},  # (Llama 3 trims it; the others keep it)
            {"role": "user", "content": "And 12 + 30?"}]


def mixed_text(rng) -> str:
    """Words, digits, whitespace runs, unicode and special-token spellings, glued in random ways."""
    glue = [" ", "", "\n", "  ", ",", ". ", "\t"]
    return "".join(rng.choice(WORDS) + rng.choice(glue) for _ in range(rng.randint(1, 12)))


def ids_of(encoded):
    """apply_chat_template's token ids, whether it returns a list or (transformers 5) a BatchEncoding."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.fixture(scope="module")
def folder_tokenizer():
    """A byte-level BPE tokenizer.json of 300 tokens, trained here with ChatML's and Llama 3's special tokens, and a
    tokenizer_config.json without a chat template (a base model's folder)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s+|\w+|[^\s\w]+"), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    tok.train_from_iterator([mixed_text(rng) for _ in range(500)], trainers.BpeTrainer(
        vocab_size=V, special_tokens=FOLDER_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok.to_str(), {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """(a nano-shaped minipost GPT with random weights, the nano tokenizer, the folder it was exported to)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)  # logits far from uniform
    enc = get_tokenizer("nano")
    return model, enc, export(model, enc, tmp_path_factory.mktemp("nano") / "out", "nano")


@pytest.fixture(scope="module", params=[*FAMILIES, "nano"])
def exported(request, tmp_path_factory, folder_tokenizer):
    """(minipost's model, its tokenizer, the folder it was exported to): a transformers folder's model loaded with
    minipost (hf:PATH, with the family's chat format where the folder is a base model's), or minipost's own GPT."""
    if request.param == "nano":
        return request.getfixturevalue("nano")
    model_cls, config_cls, kwargs, chat = FAMILIES[request.param]
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(folder_tokenizer[0])
    (folder / "tokenizer_config.json").write_text(json.dumps(folder_tokenizer[1]))
    ours, enc, ckpt = load_model(f"hf:{folder}{chat}")
    return ours, enc, export(ours, enc, folder.parent / f"{request.param}_out", ckpt["tokenizer"])


def test_transformers_loads_the_folder_with_the_same_logits(exported):
    ours, _, out = exported
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, ours.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ours(ids)
        torch.testing.assert_close(theirs(ids).logits, want, rtol=1e-5, atol=1e-5)
    assert want.abs().max() > 1  # the comparison is not between near-zero logits


def test_minipost_loads_the_folder_back_with_the_same_weights_and_config(exported):
    ours, _, out = exported
    back = load_hf_model(out)
    assert back.cfg == ours.cfg and type(back) is type(ours)
    state = back.state_dict()
    assert set(state) == set(ours.state_dict())
    for name, weight in ours.state_dict().items():
        assert torch.equal(state[name], weight), name


@pytest.mark.parametrize("exported", [f for f in FAMILIES if FAMILIES[f][3]], indirect=True)
def test_a_folder_chat_format_is_the_exported_template(exported):
    """A base model's folder used as hf:PATH#chatml or #llama3: the exported tokenizer renders that format as
    minipost does (token for token), and generation stops at the format's end of turn."""
    _, enc, out = exported
    tok = transformers.AutoTokenizer.from_pretrained(out)
    fmt = enc.chat_format
    for prompt in (False, True):
        got = ids_of(tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=prompt))
        assert got == render_chat(enc, MESSAGES, prompt)[0]
    assert load_hf_tokenizer(out).chat_format == fmt  # minipost reads the format back from the template
    stop = enc.encode_single_token({"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}[fmt.name])
    assert stop in json.loads((out / "generation_config.json").read_text())["eos_token_id"]


def test_the_three_templates_write_each_format(nano):
    tok = transformers.AutoTokenizer.from_pretrained(nano[2])
    want = {
        "minipost": "<|system|>Answer in one word.<|end|><|user|>The capital of Brerkia?<|end|><|assistant|> Gubus.\n"
                    "<|end|><|user|>And 12 + 30?<|end|>",
        "chatml": "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nThe capital of Brerkia?"
                  "<|im_end|>\n<|im_start|>assistant\n Gubus.\n<|im_end|>\n<|im_start|>user\nAnd 12 + 30?<|im_end|>\n",
        "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in one word.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nThe capital of Brerkia?<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nGubus.<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nAnd 12 + 30?<|eot_id|>"}
    prompt = {"minipost": "<|assistant|>", "chatml": "<|im_start|>assistant\n",
              "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
    for name, text in want.items():
        for add in (False, True):
            got = tok.apply_chat_template(MESSAGES, chat_template=chat_template_jinja(name), tokenize=False,
                                          add_generation_prompt=add)
            assert got == text + (prompt[name] if add else ""), name


def test_the_nano_tokenizer_encodes_and_decodes_as_minipost(nano):
    _, enc, out = nano
    tok = transformers.AutoTokenizer.from_pretrained(out)
    rng = random.Random(2)
    texts = [mixed_text(rng) if i % 3 else "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(1, 20)))
             for i in range(2000)]
    texts = [t for t in texts if not any(s in t for s in SPECIAL_TOKENS)]  # (minipost encodes those as text)
    assert len(texts) > 1500
    encoded = tok(texts, add_special_tokens=False)["input_ids"]
    for text, ids, decoded in zip(texts, encoded, tok.batch_decode(encoded)):
        assert ids == encode_text(enc, text), text
        assert decoded == text
    back = load_hf_tokenizer(out)
    assert back.n_vocab == enc.n_vocab and back.chat_format.name == "minipost"
    ranks = [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab - len(SPECIAL_TOKENS))]
    assert [back.decode_single_token_bytes(i) for i in range(len(ranks))] == ranks
    assert {s: back.encode_single_token(s) for s in back.special_tokens_set} == \
           {s: enc.encode_single_token(s) for s in SPECIAL_TOKENS}
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["eos_token"], config["pad_token"], config["model_max_length"]) == ("<|end|>", "<|pad|>", 256)


def test_the_nano_chat_template_renders_as_render_chat(nano):
    _, enc, out = nano
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for prompt in (False, True):
        got = ids_of(tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=prompt))
        assert got == render_chat(enc, MESSAGES, prompt)[0]


def test_what_a_config_json_cannot_say_and_non_finite_weights_are_refused(tmp_path):
    enc = get_tokenizer("nano")
    model = Decoder(DecoderConfig(family="llama", qkv_bias=True))  # (Llama's attention_bias: on q, k, v and o)
    with pytest.raises(InputError, match=r"LlamaForCausalLM config.json cannot say this model's o_bias False \(it "
                                         r"would read True\)"):
        export(model, enc, tmp_path / "a", "nano")
    model = GPT(GPTConfig())
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"weight blocks.1.mlp.fc.weight is not finite"):
        export(model, enc, tmp_path / "b", "nano")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary folder left


def test_a_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    import minipost.export

    def save_file(*args, **kwargs):
        raise OSError("disk gone")
    monkeypatch.setattr(minipost.export, "save_file", save_file)
    with pytest.raises(OSError, match="disk gone"):
        export(GPT(GPTConfig()), get_tokenizer("nano"), tmp_path / "out", "nano")
    assert list(tmp_path.iterdir()) == []


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    return stop.value.code, err


def test_the_command_line_refuses_in_one_line(tmp_path, capsys):
    code, err = run_cli(["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and "no such checkpoint" in err, err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, err = run_cli(["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "full")], capsys)
    assert code == 2 and err.count("\n") == 1 and "exists and is not an empty folder" in err, err
    model = GPT(GPTConfig())
    torch.save(model_checkpoint(model, "nano", 0, kind="reward_model"), tmp_path / "rm.pt")
    code, err = run_cli(["--ckpt", str(tmp_path / "rm.pt"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and "reward model" in err, err
    assert not (tmp_path / "out").exists()


def test_the_command_line_exports_a_saved_checkpoint_in_bfloat16(tmp_path, capsys):
    torch.manual_seed(0)
    model = GPT(GPTConfig())
    torch.save(model_checkpoint(model, "nano", 7), tmp_path / "model.pt")
    (tmp_path / "out").mkdir()  # an empty folder is fine
    main(["--ckpt", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out"), "--dtype", "bfloat16"])
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'out'}: config.json, generation_config.json")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = load_hf_model(tmp_path / "out", dtype=torch.bfloat16)
    for name, weight in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], weight.to(torch.bfloat16)), name
