"""SFT: the loss counts assistant tokens only (and <|end|>), accumulation is token-weighted, the model learns to
stop, and `python -m minipost.sft`'s train() runs end to end on a tiny model, logs the card's val_loss, resumes
exactly, and refuses bad flags, bad files and non-finite weights with a true message."""
import json
import math

import pytest
import torch

from minipost.card import evaluate as card_evaluate
import minipost.heldout as heldout
import minipost.sft as sft
import minipost.tokenizer as tokenizer
from minipost.common import DATA_DIR, InputError, config_with_preset, load_checkpoint, save_checkpoint
from minipost.data import IGNORE, collate, pack_examples, per_domain
from minipost.harness import read_metrics
from minipost.logprobs import token_logprobs
from minipost.model import GPT, GPTConfig
from minipost.checkpoints import load_model, model_checkpoint

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


def logprobs(logits, targets):
    """log pi(target) at every position (IGNORE read as token 0, which the loss masks out): what
    model.logprobs gives sft_loss."""
    return token_logprobs(logits, targets.clamp(min=0), impl="reference")


def test_sft_loss_matches_hand_computation():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 0.0]]])  # (1, 3, 2)
    targets = torch.tensor([[IGNORE, 0, 1]])  # the first position is prompt: no loss
    # -log softmax([2, 0])[0] = log(1 + e^-2); -log softmax([1, 0])[1] = log(1 + e^1)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert sft.sft_loss(logprobs(logits, targets), targets).item() == pytest.approx(expected, rel=1e-6)
    # with the step's token count given (here 4: another micro-batch holds 2 more), the sum is divided by 4
    assert sft.sft_loss(logprobs(logits, targets), targets, num_tokens=4).item() == pytest.approx(expected / 2,
                                                                                                 rel=1e-6)


def test_model_logprobs_and_top1_are_the_logits_and_the_fused_paths_alike():
    """model.logprobs: the plain path (the logits, then token_logprobs) and the fused one (linear_logprobs) give
    the same log-probs, gradients and token accuracy (top1: greedy decoding writes the target)."""
    model = tiny_gpt()
    x = torch.randint(0, ENC.n_vocab, (3, 12))
    y = torch.randint(0, ENC.n_vocab, (3, 12))
    y[:, ::2] = model(x).argmax(dim=-1)[:, ::2]  # every other target is the model's first choice
    got = {}
    for impl in ("reference", "fused"):
        model.zero_grad()
        logp, top1 = model.logprobs(x, y, impl=impl, top1=True)
        logp.sum().backward()
        got[impl] = logp, top1, torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(got["fused"][0], got["reference"][0], atol=1e-5, rtol=0)
    assert torch.equal(got["fused"][1], got["reference"][1]) and got["fused"][1][:, ::2].all()
    torch.testing.assert_close(got["fused"][2], got["reference"][2], atol=1e-5, rtol=1e-4)


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
    sft.sft_loss(logprobs(logits, y), y).backward()
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
                loss = sft.sft_loss(logprobs(model(x), y), y, n_tok)
            else:
                loss = sft.sft_loss(logprobs(model(x), y), y) / len(micro_batches)
            loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    big = grads([examples], "token")
    accumulated = grads([examples[:2], examples[2:]], "token")
    torch.testing.assert_close(accumulated, big, rtol=1e-4, atol=1e-6)
    naive = grads([examples[:2], examples[2:]], "mean")
    assert (naive - big).abs().max() > 100 * (accumulated - big).abs().max()


def test_pack_examples_keeps_every_token_in_order_and_fits_rows():
    examples = [tokenizer.render_chat(ENC, chat(f"q{i}", "ans" * i)) for i in range(1, 8)]
    rows = pack_examples(examples, block_size=40)
    assert all(len(ids) <= 41 and len(ids) == len(m) for ids, m in rows)
    assert [t for ids, _ in rows for t in ids] == [t for ids, _ in examples for t in ids]
    assert [t for _, m in rows for t in m] == [t for _, m in examples for t in m]
    assert len(rows) < len(examples)  # it actually packed


def test_sft_teaches_the_model_to_stop():
    """A few dozen steps on one conversation: greedy decoding then gives the answer and stops with <|end|>."""
    model = tiny_gpt(block_size=32)
    ids, mask = tokenizer.render_chat(ENC, chat("hi", "hello"))
    x, y = collate([(ids, mask)], PAD)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        sft.sft_loss(logprobs(model(x), y), y).backward()
        opt.step()
        opt.zero_grad()
    prompt = torch.tensor([tokenizer.render_prompt(ENC, "hi")])
    toks, m, _ = model.eval().generate(prompt, max_new_tokens=10, temperature=0, stop_token=END, pad_id=PAD)
    out = toks[0][m[0].bool()].tolist()
    assert out[-1] == END and ENC.decode(out[:-1]) == "hello"


EVAL_RECORDS = [json.loads(line) for line in (DATA_DIR / "eval.jsonl").read_text().splitlines()]
TIME_COLUMNS = ("steps_per_s", "elapsed_s")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A tiny stand-in for data/: pretraining text (the mix and val_loss), one eval prompt per domain (samples.txt),
    a base model on the byte tokenizer, and a prompt/completion JSONL. Returns the folder."""
    root = tmp_path / "world"
    root.mkdir()
    for name, n in (("pretrain.jsonl", 20), ("pretrain_val.jsonl", 5)):
        (root / name).write_text("".join(json.dumps({"text": f"plain text number {i} to keep. " * 4}) + "\n"
                                         for i in range(n)))
        # 5 docs of ~120 bytes: 600 tokens, enough for a few held-out windows of the tiny model's 64
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per_domain(EVAL_RECORDS, 1)))
    (root / "chats.jsonl").write_text("".join(json.dumps({"prompt": f"say {w}", "completion": w}) + "\n"
                                              for w in ["yes", "no", "maybe", "ok"] * 4 + ["fine", "sure"]))
    save_checkpoint(root / "base.pt", model_checkpoint(tiny_gpt(), "bytes", 0))
    for module in (sft, card_evaluate, heldout):
        monkeypatch.setattr(module, "DATA_DIR", root)
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda name, *a, **k: ENC)
    return root


def small_cfg(world, name, **kw):
    base = dict(init=str(world / "base.pt"), out=str(world.parent / name), data=str(world / "chats.jsonl"),
                max_steps=6, batch_size=4, micro_batch_size=2, lr=3e-3, warmup_steps=2, log_every=1, eval_every=3,
                save_every=3, eval_windows=4, device="cpu", progress=False)
    return config_with_preset(sft.Config, sft.PRESETS, **{**base, **kw})


def metrics(run, drop=TIME_COLUMNS):
    rows = read_metrics(run / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_defaults_are_the_nano_preset():
    cfg = sft.Config()
    assert sft.PRESETS["nano"] == {} and cfg.ptx_coef == 1.0 and cfg.lr == 5e-4 and cfg.eval_windows == 64


def test_train_end_to_end_writes_the_run_files(world):
    """train() on a tiny random model and a prompt/completion JSONL: files written, loss goes down."""
    cfg = small_cfg(world, "run", max_steps=30, batch_size=8, micro_batch_size=4, pack=True, log_every=5,
                    eval_every=10, save_every=10)
    summary = sft.train(cfg)
    run = world.parent / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "state.pt", "model.pt", "samples.txt"}
    rows = metrics(run)
    assert rows[0] == {"step": 0, "val_loss": rows[0]["val_loss"]}  # the base model's held-out loss
    assert rows[-1]["loss"] < rows[1]["loss"] - 1.0  # nats
    assert rows[-1]["tokens_seen"] > 0 and 0 <= rows[-1]["token_acc"] <= 1
    assert cfg.ptx_coef > 0 and rows[-1]["ptx_loss"] < rows[1]["ptx_loss"]  # the mixed-in text is learned too
    assert summary["token_acc"] == pytest.approx(rows[-1]["token_acc"], abs=1e-6)  # logged to 6 decimals
    assert EVAL_RECORDS[0]["prompt"] in (run / "samples.txt").read_text()  # greedy answers to eval prompts


def test_logged_val_loss_is_the_report_cards(world):
    """The final val_loss in metrics.jsonl is heldout.val_loss (the card's column) of the saved model.pt."""
    sft.train(small_cfg(world, "run", max_steps=2, eval_windows=64))
    model, enc, _ = load_model(world.parent / "run" / "model.pt")
    assert metrics(world.parent / "run")[-1]["val_loss"] == round(heldout.val_loss(model, enc), 6)


def test_a_block_size_beyond_the_model_is_clamped_everywhere(world):
    """--preset small (block_size 512) on a base that sees 64 tokens: rows and held-out windows use 64. (The
    held-out loss used to read the unclamped 512 and hit the model's length assert.)"""
    cfg = small_cfg(world, "run", preset="small", max_steps=2)
    assert cfg.block_size == 512
    summary = sft.train(cfg)
    assert math.isfinite(summary["val_loss"])


def test_resume_gives_the_same_result_as_an_uninterrupted_run(world):
    """Stop mid-epoch at step 3 and resume: same weights (data order, pretraining-mix generator, optimizer) and
    the same metrics rows."""
    sft.train(small_cfg(world, "straight"))
    sft.train(small_cfg(world, "resumed", stop_after=3))
    assert not (world.parent / "resumed" / "model.pt").exists()
    (world.parent / "resumed" / "state.pt.abc.tmp").write_text("left by a killed run")
    sft.train(small_cfg(world, "resumed", resume=True))
    a = load_checkpoint(world.parent / "straight" / "model.pt")["model"]
    b = load_checkpoint(world.parent / "resumed" / "model.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert metrics(world.parent / "resumed") == metrics(world.parent / "straight")
    assert not list((world.parent / "resumed").glob("*.tmp"))


def test_lora_trains_only_the_adapters_saves_plain_weights_and_resumes(world):
    """--lora-rank 4: the frozen weights (embeddings, LayerNorms) end as they began, model.pt has the base
    model's keys (adapters merged), fewer parameters train, and stop + resume gives the same weights."""
    sft.train(small_cfg(world, "lora", lora_rank=4, lora_alpha=8))
    summary = sft.train(small_cfg(world, "lora_resumed", lora_rank=4, lora_alpha=8, stop_after=3))
    summary = sft.train(small_cfg(world, "lora_resumed", lora_rank=4, lora_alpha=8, resume=True))
    full = sft.train(small_cfg(world, "full"))
    base = load_checkpoint(world / "base.pt")["model"]
    a = load_checkpoint(world.parent / "lora" / "model.pt")["model"]
    b = load_checkpoint(world.parent / "lora_resumed" / "model.pt")["model"]
    assert set(a) == set(base) and all(torch.equal(a[k], b[k]) for k in a)
    frozen = [k for k in base if "qkv" not in k and "proj" not in k and ".fc." not in k]
    assert frozen and all(torch.equal(a[k], base[k]) for k in frozen)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])  # the merged update
    assert summary["trainable_params"] < full["trainable_params"] / 3
    assert summary["training_bytes"] < full["training_bytes"] / 3
    with pytest.raises(InputError, match="--lora-targets"):
        small_cfg(world, "bad", lora_rank=4, lora_targets="wte")


def test_resume_refuses_a_changed_config_unless_allowed(world):
    sft.train(small_cfg(world, "run", stop_after=3))
    with pytest.raises(InputError, match="batch_size: 4 -> 2"):
        sft.train(small_cfg(world, "run", resume=True, batch_size=2))
    assert sft.train(small_cfg(world, "run", resume=True, batch_size=2, allow_config_change=True))["steps"] == 6


def test_a_huge_learning_rate_stops_and_leaves_finite_checkpoints(world):
    sft.train(small_cfg(world, "run", max_steps=2))
    good = load_checkpoint(world.parent / "run" / "model.pt")["model"]
    with pytest.raises(FloatingPointError, match="not finite|stopping"):
        sft.train(small_cfg(world, "run", max_steps=20, lr=1e6, save_every=1))
    model = load_checkpoint(world.parent / "run" / "previous" / "model.pt")["model"]  # kept aside, untouched
    assert all(torch.equal(model[k], good[k]) for k in good)
    for name in ("state.pt", "previous/state.pt"):
        state = load_checkpoint(world.parent / "run" / name)
        assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())


@pytest.mark.parametrize("bad", [dict(max_steps=-5), dict(batch_size=0), dict(eval_every=-1),
                                 dict(micro_batch_size=-1), dict(micro_batch_size=64, batch_size=32),
                                 dict(lr=float("inf")), dict(lr=0.0), dict(ptx_coef=-1.0), dict(save_every=0),
                                 dict(stop_after=-1), dict(ptx_batch_size=0)])
def test_bad_config_values_are_input_errors(bad):
    with pytest.raises(InputError):
        sft.Config(**bad)


def test_data_with_nothing_to_learn_is_an_input_error(world):
    with pytest.raises(InputError, match="chats.jsonl: every conversation is cut before its answer"):
        sft.train(small_cfg(world, "run", block_size=4))
    (world / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="empty.jsonl: no records"):
        sft.train(small_cfg(world, "run", data=str(world / "empty.jsonl")))


def test_a_failed_start_leaves_the_earlier_run_untouched(world):
    sft.train(small_cfg(world, "run", max_steps=2))
    before = {f: (world.parent / "run" / f).read_bytes() for f in ("config.json", "metrics.jsonl")}
    (world / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: .*role 'robot'"):
        sft.train(small_cfg(world, "run", data=str(world / "bad.jsonl")))
    with pytest.raises(InputError, match="no such checkpoint"):
        sft.train(small_cfg(world, "run", init=str(world / "missing.pt")))
    assert before == {f: (world.parent / "run" / f).read_bytes() for f in before}


def test_the_fused_log_probs_train_as_the_plain_ones(world):
    """--logprobs-impl fused (the output layer and the log-prob in one, logits never whole) against the plain
    path: the same run, the same metrics and weights within float32 rounding."""
    sft.train(small_cfg(world, "plain", max_steps=3, logprobs_impl="reference"))
    sft.train(small_cfg(world, "fused", max_steps=3, logprobs_impl="fused"))
    a, b = (load_checkpoint(world.parent / d / "model.pt")["model"] for d in ("plain", "fused"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)
    rows = list(zip(metrics(world.parent / "plain"), metrics(world.parent / "fused")))
    assert sum("loss" in a for a, _ in rows) == 3
    for row_a, row_b in rows:
        assert row_a.keys() == row_b.keys() and row_a.get("token_acc") == row_b.get("token_acc")
        for key in ("loss", "val_loss"):
            if key in row_a:
                assert row_a[key] == pytest.approx(row_b[key], rel=1e-5), key


def test_activation_checkpointing_trains_the_same_weights(world):
    """--checkpointing keeps each block's input only and runs the block again in backward: the same gradients,
    so the same run, bit for bit."""
    sft.train(small_cfg(world, "kept", max_steps=3))
    sft.train(small_cfg(world, "recomputed", max_steps=3, checkpointing=True))
    a, b = (load_checkpoint(world.parent / d / "model.pt")["model"] for d in ("kept", "recomputed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_finished_run_writes_the_same_model_and_summary(world):
    """--resume true on a run that took every step: nothing left to train, and what it rewrites is what it had
    (the last step's loss and token accuracy come from state.pt, not from a loop that did not run)."""
    import json
    out = world.parent / "done"
    sft.train(small_cfg(world, "done", max_steps=2))
    before = (json.loads((out / "summary.json").read_text()), load_checkpoint(out / "model.pt")["model"])
    sft.train(small_cfg(world, "done", max_steps=2, resume=True))
    after = (json.loads((out / "summary.json").read_text()), load_checkpoint(out / "model.pt")["model"])
    drop = ("elapsed_s", "steps_per_s", "seconds")
    assert {k: v for k, v in after[0].items() if k not in drop} == {k: v for k, v in before[0].items() if k not in drop}
    assert all(torch.equal(after[1][k], before[1][k]) for k in before[1])
