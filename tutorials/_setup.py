"""What lessons 03-08 do first: smoke mode, an output folder, the world's data, and a checkpoint to start from;
and the check lessons 01-03 make after their training step by hand (`assert_same_weights`), which
lessons 04-06 make after one RL step by hand (`ONE_STEP`, `rl_start`, `smoke_reward`, `step_size`).

Kept in one place so each lesson's own cells are about its method. Import it as `from _setup import ...`
(the lessons run as scripts from the repository root, so this folder is on sys.path).
"""
import json
import os
import random
from pathlib import Path

import minipost  # noqa: F401  first: it makes torch's idle threads sleep (minipost/threads.py)
import torch

from minipost.common import DATA_DIR

SMOKE = os.environ.get("MINIPOST_SMOKE") == "1"  # the test suite runs every lesson this way, in seconds
if SMOKE:
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and the test machine is shared

RL_STARTS = ["runs/pipeline/dpo/model.pt", "runs/dpo/model.pt", "runs/pipeline/sft/model.pt", "runs/sft/model.pt"]


def out_dir(lesson: str) -> Path:
    return Path(os.environ.get("MINIPOST_OUT", "runs/tutorials")) / lesson


def ensure_world() -> None:
    if not (DATA_DIR / "rl.jsonl").exists():
        from minipost.world import build
        build(DATA_DIR)


def start_checkpoint(out: Path, candidates=RL_STARTS) -> str:
    """The model to start from: $MINIPOST_INIT, else the first of `candidates` that exists. In smoke mode with
    none of them, a random nano GPT (it will learn nothing; the point is to run the code)."""
    for c in [os.environ.get("MINIPOST_INIT", ""), *candidates]:
        if c and Path(c).exists():
            return c
    if not SMOKE:
        raise SystemExit(f"none of {list(candidates)} exists: run `python -m minipost.pipeline --stages "
                         "pretrain,sft,dpo` first, or set MINIPOST_INIT=path/to/model.pt")
    from minipost.common import save_checkpoint
    from minipost.model import GPT, GPTConfig, PRESETS as MODEL_PRESETS
    from minipost.checkpoints import model_checkpoint
    from minipost.tokenizer import get_tokenizer
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=get_tokenizer("nano").n_vocab, **MODEL_PRESETS["nano"]))
    save_checkpoint(out / "random_init.pt", model_checkpoint(model, "nano", 0))
    return str(out / "random_init.pt")


def assert_same_weights(model, path, key: str = "model") -> None:
    """Assert that every weight tensor of `model` equals, bit for bit (torch.equal), the one in the checkpoint at
    `path` (its `key` entry: "model" in model.pt, "critic" in PPO's state.pt), and say so; a mismatch names the
    first tensor that differs and by how much."""
    from minipost.common import load_checkpoint
    saved, mine = load_checkpoint(path)[key], model.state_dict()
    assert mine.keys() == saved.keys(), f"different tensors: {sorted(mine.keys() ^ saved.keys())}"
    for name, w in mine.items():
        assert torch.equal(w, saved[name]), (f"{name} differs from {path}: largest difference "
                                             f"{(w - saved[name]).abs().max().item():.3g}")
    what = "weight" if key == "model" else key
    print(f"by hand == train(): all {len(mine)} {what} tensors equal bit for bit (torch.equal) after one step")



# ---- one RL step by hand (lessons 04-06), compared with train() after one step

ONE_STEP = dict(max_steps=1, prompts_per_step=2, group_size=4, max_new_tokens=12, eval_limit=2, micro_batch_size=0,
                device="cpu", progress=False)
"""The one RL step lessons 04-06 take by hand and then with train(): 2 prompts x 4 answers of at most 12 tokens,
one forward pass per update (micro_batch_size 0: every row at once), on the CPU, whose kernels give the same bits
on every run for a fixed thread count (minipost/threads.py); a GPU's may add in another order from run to run."""


def smoke_reward(prompt: str, completion: str, record: dict) -> float:
    """The share of letters among the answer's characters. Smoke mode usually starts from a random model, which no
    checker ever scores above 0: every advantage would be 0 and a step would move nothing. Random text earns some
    of this."""
    return sum(ch.isalpha() for ch in completion) / max(len(completion), 1)


def rl_start(cfg, critic: bool = False):
    """What an RL file's train() builds before its loop, in its order -> (policy, ref, critic or None, enc, records):
    Run(cfg)'s thread count and seeds, the policy, the training prompts, the reference (a frozen copy of the start)
    and for PPO the critic (a copy of the start with a fresh value head, whose random init draws from the seed)."""
    from minipost import threads
    from minipost.common import pick_device, seed_everything
    from minipost.checkpoints import load_model
    from minipost.rollout import load_rl_prompts

    device = pick_device(cfg.device)
    print(threads.configure(cfg.threads))  # the thread count decides how some float sums are split (threads.py)
    seed_everything(cfg.seed)  # before any model is built
    policy, enc, _ = load_model(cfg.init, device)
    records, _ = load_rl_prompts(
        cfg.data or DATA_DIR / "rl.jsonl", cfg.eval_data or DATA_DIR / "eval.jsonl", domains=cfg.domains,
        oversample=cfg.oversample, prompts_per_step=cfg.prompts_per_step, enc=enc, block_size=policy.cfg.block_size,
        max_new_tokens=cfg.max_new_tokens, model_path=cfg.init)
    ref = load_model(cfg.init, device)[0].requires_grad_(False)
    value_model = load_model(cfg.init, device, value_head=True)[0] if critic else None
    return policy, ref, value_model, enc, records


def step_size(model, start) -> float:
    """Print and return the largest |change| of a weight of `model` since the checkpoint `start`. At 0 the two
    models compared after one step would agree trivially (every group's answers scored alike: every advantage 0);
    refused in smoke mode, whose reward (smoke_reward) always tells answers apart."""
    from minipost.common import load_checkpoint
    before = load_checkpoint(start)["model"]
    moved = max((w.detach().cpu() - before[k]).abs().max().item() for k, w in model.state_dict().items() if k in before)
    if moved:
        print(f"the step moved the weights by up to {moved:.2e}: the agreement is about a step that did something")
    else:
        print("the step moved no weight: every group's answers scored alike, so the agreement above is trivial")
    assert moved or not SMOKE, "one step with smoke_reward should move the weights"
    return moved

def training_rows(out: Path) -> list[dict]:
    """The per-step training rows of OUT/metrics.jsonl (held-out evaluation rows have no `reward`)."""
    from minipost.harness import read_metrics
    return [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]


def every_tenth(rows: list[dict]) -> list[dict]:
    return rows[:: max(1, len(rows) // 10)] + rows[-1:]


def report_run(out: Path, summary: dict, rows: list[dict], key: str, label: str, png: str) -> None:
    """Print the held-out change and plot the training reward next to one diagnostic (`key`) into OUT/png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("held-out:", {k: f"{summary['start'][k]:.3f} -> {summary['end'][k]:.3f}" for k in summary["end"]})
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(steps, [r["reward"] for r in rows])
    ax[0].set_xlabel("step"); ax[0].set_ylabel("mean reward (training samples)")
    ax[1].plot(steps, [r[key] for r in rows])
    ax[1].set_xlabel("step"); ax[1].set_ylabel(label)
    fig.tight_layout(); fig.savefig(out / png, dpi=100)
    plt.close(fig)
    print("wrote", out / png)


# ----------------------------------------------------------------------------------------------------------------
# a tiny Hugging Face folder (lesson 13 and tests/test_hf_runs.py), written by transformers and the tokenizers
# library with no download: a byte-level BPE tokenizer trained on the world's texts, a chat template written here
# from ChatML's documented format, and a random model of a family's architecture

CHATML = r"""{%- for m in messages %}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
              r"\s+(?!\S)|\s+")


def write_tokenizer(folder, vocab_size=700, template=CHATML):
    """tokenizer.json (Qwen2-style: a digit per token, ChatML's special tokens) and tokenizer_config.json."""
    from minipost.tokenizer import load_corpus
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


def tiny_hf_folder(folder, family="qwen3", template=CHATML, seed=0):
    """A random model of `family`'s architecture (2 layers, 64 wide; weights 10x the usual init, so its logits
    are far from uniform) with the tokenizer above, saved by transformers' save_pretrained -> the folder."""
    import transformers  # (a tutorial's helper, not minipost: minipost never imports it)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, template=template)
    shapes = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.2,
                  **({"head_dim": 32} if family == "qwen3" else {}))  # (Qwen3 sets it apart from 64 / 4 heads)
    config_cls, model_cls = {"qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                             "llama": ("LlamaConfig", "LlamaForCausalLM")}[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**shapes))
    model.save_pretrained(folder)
    return folder
