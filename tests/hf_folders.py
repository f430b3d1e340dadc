"""Tiny Hugging Face model folders written by transformers and the tokenizers library, for the tests that run
minipost's commands on `hf:PATH` (no download): a byte-level BPE tokenizer trained on the world's texts, a
chat template written here from ChatML's documented format, and a random model of a family's architecture."""
import json
import random

import torch

from minipost.tokenizer import load_corpus

CHATML = r"""{%- for m in messages %}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
              r"\s+(?!\S)|\s+")


def write_tokenizer(folder, vocab_size=700, template=CHATML):
    """tokenizer.json (Qwen2-style: a digit per token, ChatML's special tokens) and tokenizer_config.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    texts = load_corpus()
    random.Random(0).shuffle(texts)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts[:3000], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v}))
    return tok.get_vocab_size()


def write_folder(folder, family="qwen3", template=CHATML, seed=0):
    """A random model of `family`'s architecture (2 layers, 64 wide) with the tokenizer above, saved by
    transformers' save_pretrained -> the folder."""
    import transformers
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, template=template)
    shapes = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    config_cls, model_cls = {"qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                             "llama": ("LlamaConfig", "LlamaForCausalLM")}[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**shapes))
    model.save_pretrained(folder)
    return folder
