"""SFT: the loss counts assistant tokens only (and <|end|>), accumulation is token-weighted, the model learns to
stop, and `python -m minipost.sft`'s train() runs end to end on a tiny model."""
import json
import math

import pytest
import torch

import minipost.sft as sft
import minipost.tokenizer as tokenizer
from minipost.data import IGNORE, collate
from minipost.model import GPT, GPTConfig, model_checkpoint
from minipost.common import config_with_preset, save_checkpoint

# A byte-level tokenizer (no merges): 256 byte tokens + the specials. Needs no trained file.
ENC = tokenizer.build_encoding("bytes", {bytes([i]): i for i in range(256)})
END = tokenizer.special_id(ENC, "<|end|>")
PAD = tokenizer.special_id(ENC, "<|pad|>")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: thread start-up costs more than it saves, and the test machine is shared (2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_gpt(seed=0, block_size=64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=ENC.n_vocab, block_size=block_size, n_layer=2, n_head=2, n_embd=32))


def chat(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_sft_loss_matches_hand_computation():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]]])  # (1, 3, 2)
    targets = torch.tensor([[IGNORE, 0, 1]])  # the first position is prompt: no loss
    # -log softmax([2, 0])[0] = log(1 + e^-2); -log softmax([1, 0])[1] = log(1 + e^1)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert sft.sft_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # with the step's token count given (here 4: another micro-batch holds 2 more), the sum is divided by 4
    assert sft.sft_loss(logits, targets, num_tokens=4).item() == pytest.approx(expected / 2, rel=1e-6)
    assert sft.token_accuracy(logits, targets) == (1, 2)  # argmax [2, 0] -> 0 right; argmax [1, 0] -> 0, wanted 1


def test_targets_are_the_answer_and_its_end_token_only():
    ids, mask = tokenizer.render_chat(ENC, chat("What is 2+2?", "4, of course"))
    x, y = collate([(ids, mask)], PAD)  # (1, T)
    kept = y[0][y[0] != IGNORE].tolist()
    assert kept[-1] == END  # the model is taught to stop
    assert ENC.decode(kept[:-1]) == "4, of course"  # and nothing of the prompt or the role tokens
    assert x.shape == y.shape and x[0].tolist() == ids[:-1]


def test_prompt_tokens_get_no_gradient_signal():
    """Changing what a prompt-position logit predicts does not change the loss: only answer targets count."""
    ids, mask = tokenizer.render_chat(ENC, chat("hi", "yo"))
    x, y = collate([(ids, mask)], PAD)
    logits = torch.randn(1, x.shape[1], ENC.n_vocab, requires_grad=True)
    sft.sft_loss(logits, y).backward()
    prompt_rows = (y[0] == IGNORE)
    assert prompt_rows.sum() > 0
    assert torch.all(logits.grad[0, prompt_rows] == 0)
    assert torch.all(logits.grad[0, ~prompt_rows].abs().sum(-1) > 0)


def test_grad_accumulation_equals_one_big_batch():
    """Token-weighted accumulation over micro-batches gives the one-big-batch gradient; the naive mean of
    micro-batch means does not (the answers have very different lengths)."""
    chats = [chat("a?", "short"), chat("bb?", "a much longer answer than the others"), chat("c", "x"),
             chat("dd", "medium answer")]
    examples = [tokenizer.render_chat(ENC, c) for c in chats]

    def grads(micro_batches, weighting):
        model = tiny_gpt()
        n_tok = sum(int((collate(b, PAD)[1] != IGNORE).sum()) for b in micro_batches)
        for b in micro_batches:
            x, y = collate(b, PAD)
            if weighting == "token":
                loss = sft.sft_loss(model(x), y, n_tok, impl="reference")
            else:
                loss = sft.sft_loss(model(x), y, impl="reference") / len(micro_batches)
            loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    big = grads([examples], "token")
    accumulated = grads([examples[:2], examples[2:]], "token")
    torch.testing.assert_close(accumulated, big, rtol=1e-4, atol=1e-6)
    naive = grads([examples[:2], examples[2:]], "mean")
    assert (naive - big).abs().max() > 100 * (accumulated - big).abs().max()


def test_pack_examples_keeps_every_token_in_order_and_fits_rows():
    examples = [tokenizer.render_chat(ENC, chat(f"q{i}", "ans" * i)) for i in range(1, 8)]
    rows = sft.pack_examples(examples, block_size=40)
    assert all(len(ids) <= 41 and len(ids) == len(m) for ids, m in rows)
    assert [t for ids, _ in rows for t in ids] == [t for ids, _ in examples for t in ids]
    assert [t for _, m in rows for t in m] == [t for _, m in examples for t in m]
    assert len(rows) < len(examples)  # it actually packed


def test_epoch_batches_visit_every_row_once_per_epoch():
    it = sft.epoch_batches(10, 5, torch.Generator().manual_seed(0))
    first_epoch = next(it) + next(it)
    assert sorted(first_epoch) == list(range(10))


def test_sft_teaches_the_model_to_stop():
    """A few dozen steps on one conversation: greedy decoding then gives the answer and stops with <|end|>."""
    model = tiny_gpt(block_size=32)
    ids, mask = tokenizer.render_chat(ENC, chat("hi", "hello"))
    x, y = collate([(ids, mask)], PAD)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        sft.sft_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    prompt = torch.tensor([tokenizer.render_prompt(ENC, "hi")])
    toks, m, _ = model.eval().generate(prompt, max_new_tokens=10, temperature=0, stop_token=END, pad_id=PAD)
    out = toks[0][m[0].bool()].tolist()
    assert out[-1] == END and ENC.decode(out[:-1]) == "hello"


def test_train_end_to_end_writes_the_run_files(tmp_path, monkeypatch):
    """train() on a tiny random model and a prompt/completion JSONL: files written, loss goes down."""
    monkeypatch.setattr(sft, "DATA_DIR", tmp_path / "no_world")  # no eval split: samples come from the chats
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda name, *a, **k: ENC)
    (tmp_path / "no_world").mkdir()  # only pretraining text, for the preset's pretraining mix (ptx_coef 1)
    (tmp_path / "no_world" / "pretrain.jsonl").write_text(json.dumps({"text": "plain text to keep. " * 20}) + "\n")
    data = tmp_path / "chats.jsonl"
    rows = [{"prompt": f"say {w}", "completion": w} for w in ["yes", "no", "maybe", "ok"] * 4]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_checkpoint(tmp_path / "base.pt", model_checkpoint(tiny_gpt(), "bytes", 0))
    cfg = config_with_preset(sft.Config, sft.PRESETS, init=str(tmp_path / "base.pt"), out=str(tmp_path / "run"),
                             data=str(data), max_steps=30, batch_size=4, grad_accum=2, pack=True, lr=3e-3,
                             warmup_steps=2, log_every=5, device="cpu", progress=False)
    summary = sft.train(cfg)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "model.pt", "samples.txt"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 1.0  # nats
    assert metrics[-1]["tokens_seen"] > 0 and 0 <= metrics[-1]["token_acc"] <= 1
    assert cfg.ptx_coef > 0 and metrics[-1]["ptx_loss"] < metrics[0]["ptx_loss"]  # the mixed-in text is learned too
    assert summary["token_acc"] == metrics[-1]["token_acc"]
    assert "say yes" in (run / "samples.txt").read_text()
