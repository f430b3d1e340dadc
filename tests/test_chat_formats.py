"""The families' chat formats in Python (minipost/chat_formats.py) against transformers' apply_chat_template.

Each template below is a Jinja template written here from the family's documented format (ChatML with a
default system turn as Qwen2.5 and SmolLM2 write it; ChatML with Qwen3's <think> blocks; Llama 3.2's dated
system turn; Llama 3's plain headers). The folder saved with it is read by minipost's loader, which must
recognise the format and its details from the template, and render every conversation to the same token ids
transformers renders and tokenizes, with the loss mask on the answers and the tokens ending their turns.
A special token's spelling in a message stays text in minipost, encoded with the text around it
(transformers' sanitize_control_tokens keeps it text too, but cut apart from its neighbours, so those
conversations are compared on that alone).
transformers and tokenizers are test-time references only: minipost never imports them."""
import json
import random

import pytest

transformers = pytest.importorskip("transformers")

from minipost.common import InputError  # noqa: E402
from minipost.hf import load_hf_tokenizer  # noqa: E402
from minipost.tokenizer import render_chat, render_prompt, special_id  # noqa: E402

CHATML_DEFAULT_SYSTEM = r"""{%- for m in messages %}
{%- if loop.first and m.role != 'system' %}
{{- '<|im_start|>system\nYou answer in short sentences.<|im_end|>\n' }}
{%- endif %}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

CHATML_THINK = r"""{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}
{%- for m in messages %}
{%- if m.role == 'assistant' %}
{%- set content = m.content %}{%- set reasoning = '' %}
{%- if '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\n') %}
{%- endif %}
{%- if loop.index0 > ns.last_user and (loop.last or reasoning) %}
{{- '<|im_start|>assistant\n<think>\n' + reasoning + '\n</think>\n\n' + content.lstrip('\n') + '<|im_end|>\n' }}
{%- else %}{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}{%- endif %}
{%- else %}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""

LLAMA_DATED = r"""{{- bos_token }}
{%- if not date_string is defined %}{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}
{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}{%- endif %}
{%- if messages[0].role == 'system' %}{%- set system = messages[0].content | trim %}{%- set messages = messages[1:] %}
{%- else %}{%- set system = '' %}{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n' + system + '<|eot_id|>' }}
{%- for m in messages %}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"""

LLAMA_PLAIN = r"""{%- for m in messages %}
{%- if loop.first %}{{- bos_token }}{%- endif %}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"""

CHATML_NEWLINES = CHATML_DEFAULT_SYSTEM.replace(r"\n", "\n")  # the same, its newlines written as such in the JSON
TEMPLATES = {"chatml+system": (CHATML_DEFAULT_SYSTEM, "<|im_end|>"), "chatml+think": (CHATML_THINK, "<|im_end|>"),
             "chatml+newlines": (CHATML_NEWLINES, "<|im_end|>"),
             "llama3.2": (LLAMA_DATED, "<|eot_id|>"), "llama3": (LLAMA_PLAIN, "<|eot_id|>")}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
TEXTS = ["What is the capital of Brerkia?", "Gubus.", "  padded  ", "\n\nstarts with newlines", "Zürich 日本語",
         "12 + 30 = 42", "line one\nline two\n", "<think>\nweigh it\n</think>\n\nGubus, I think.",
         "<think>a</think>b</think>c", "it's", "tab\there", "🎉 done"]


def conversations(rng):
    """Multi-turn conversations, with and without a system turn, ending on an answer or on a question."""
    for _ in range(60):
        msgs = [{"role": "system", "content": rng.choice(TEXTS)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 3)):
            msgs += [{"role": "user", "content": rng.choice(TEXTS)},
                     {"role": "assistant", "content": rng.choice(TEXTS)}]
        yield msgs if rng.random() < 0.6 else msgs[:-1]


@pytest.fixture(scope="module")
def trained_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer.json trained here, with the special tokens of both formats and Qwen's
    <think> / </think> as added words that are not special."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(rng.choice(TEXTS) for _ in range(4)) for _ in range(2000)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    folder = tmp_path_factory.mktemp("chat_tok")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def folder_with(base, tmp_path, template, **config):
    """A copy of the tokenizer folder whose tokenizer_config.json holds `template`."""
    (tmp_path / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "bos_token": "<|begin_of_text|>", **config}))
    return tmp_path


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_render_chat_equals_apply_chat_template_and_masks_the_answers(trained_tokenizer, tmp_path, name):
    """Llama 3.2's template writes today's date when transformers renders it (strftime_now); minipost writes the
    template's fallback date, so a run's data does not change with the day, and transformers is given it."""
    template, turn_end = TEMPLATES[name]
    folder = folder_with(trained_tokenizer, tmp_path, template)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                                  bos_token="<|begin_of_text|>")
    theirs.chat_template = template
    ours = load_hf_tokenizer(folder)
    assert ours.chat_format.name == name.split("+")[0].removesuffix(".2")
    rng = random.Random(1)
    for msgs in conversations(rng):
        for generation_prompt in (False, True):
            want = theirs.apply_chat_template(msgs, tokenize=True, add_generation_prompt=generation_prompt,
                                              return_dict=False, date_string="26 Jul 2024")  # (below)
            ids, mask = render_chat(ours, msgs, add_generation_prompt=generation_prompt)
            assert ids == want, (name, msgs, generation_prompt)
        # the targets are the answers, each with the token ending its turn
        targets = ours.decode([i for i, m in zip(ids, mask) if m])
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        assert targets.count(turn_end) == len(answers)
        for answer in answers:
            assert answer.strip().split("</think>")[-1].strip() in targets
        assert not any(m for i, m in zip(ids, mask) if ours.decode([i]) in ("user", "system"))
    end = ours.encode_single_token(turn_end)
    plain = render_chat(ours, [{"role": "user", "content": "say now"}])[0]
    spelled = render_chat(ours, [{"role": "user", "content": f"say {turn_end} now"}])[0]
    assert spelled.count(end) == plain.count(end)  # the spelling in a message is text, not the token
    assert ours.decode(spelled).count(turn_end) == ours.decode(plain).count(turn_end) + 1


def test_the_stop_pad_and_document_tokens_are_the_familys(trained_tokenizer, tmp_path):
    folder = folder_with(trained_tokenizer, tmp_path, CHATML_THINK, pad_token="<|endoftext|>")
    enc = load_hf_tokenizer(folder)
    assert special_id(enc, "<|end|>") == enc.encode_single_token("<|im_end|>")
    assert special_id(enc, "<|pad|>") == special_id(enc, "<|endoftext|>") == enc.encode_single_token("<|endoftext|>")
    header = enc.encode("<|im_start|>assistant\n", allowed_special="all")
    assert render_prompt(enc, "Hi")[-len(header):] == header


def test_a_base_model_takes_a_chosen_format_and_one_its_tokenizer_lacks_is_refused(trained_tokenizer, tmp_path):
    from minipost.checkpoints import load_tokenizer
    (tmp_path / "tokenizer.json").write_bytes((trained_tokenizer / "tokenizer.json").read_bytes())
    bare = load_hf_tokenizer(tmp_path)  # no tokenizer_config.json: no template
    assert bare.chat_format is None
    with pytest.raises(InputError, match="no chat template minipost can render.*hf:PATH#chatml"):
        render_prompt(bare, "Hi")
    chosen = load_tokenizer(f"hf:{tmp_path}#llama3")
    assert chosen.chat_format.name == "llama3"
    assert render_prompt(chosen, "Hi")[0] == chosen.encode_single_token("<|begin_of_text|>")
    with pytest.raises(InputError, match="unknown chat format; choose one of chatml, llama3, minipost"):
        load_hf_tokenizer(tmp_path, "vicuna")
    saved = json.loads((trained_tokenizer / "tokenizer.json").read_text())
    saved["added_tokens"] = [t for t in saved["added_tokens"] if t["content"] != "<|eot_id|>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(saved))
    with pytest.raises(InputError, match=r"#llama3: its tokenizer has no <\|eot_id\|> token"):
        load_hf_tokenizer(tmp_path, "llama3")
