"""DPO: each loss type against hand-computed values, the step-0 invariants (loss ln 2, margins 0 when the policy
is the reference), the direction of the gradient, and train() end to end on a tiny model."""
import json
import math

import pytest
import torch

import minipost.dpo as dpo
import minipost.sft as sft
import minipost.tokenizer as tokenizer
from minipost.common import config_with_preset, save_checkpoint
from minipost.model import GPT, GPTConfig, model_checkpoint

ENC = tokenizer.build_encoding("bytes", {bytes([i]): i for i in range(256)})  # byte-level, no trained file
PAD = tokenizer.special_id(ENC, "<|pad|>")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: thread start-up costs more than it saves, and the test machine is shared (2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=ENC.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=32))


def logsig(z):
    return -math.log1p(math.exp(-z))


# policy chosen, policy rejected, ref chosen, ref rejected: h = (-10 + 12) - (-20 + 19) = 2 + 1 = 3
PC, PR, RC, RR = -10.0, -20.0, -12.0, -19.0
H = 3.0


def losses_for(loss_type, beta=0.1, label_smoothing=0.0):
    t = lambda v: torch.tensor([v])  # noqa: E731
    return dpo.dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)


def test_each_loss_type_matches_a_hand_computed_value():
    beta = 0.5  # beta * h = 1.5
    assert losses_for("sigmoid", beta)[0].item() == pytest.approx(-logsig(1.5), rel=1e-6)  # 0.201413
    assert losses_for("sigmoid", beta)[0].item() == pytest.approx(0.2014133, rel=1e-5)
    assert losses_for("ipo", beta)[0].item() == pytest.approx((3.0 - 1.0) ** 2, rel=1e-6)  # 1/(2 beta) = 1
    assert losses_for("hinge", beta)[0].item() == pytest.approx(0.0, abs=1e-7)  # 1 - 1.5 < 0
    assert losses_for("hinge", 0.1)[0].item() == pytest.approx(0.7, rel=1e-6)  # 1 - 0.3
    e = 0.2
    robust = ((1 - e) * -logsig(1.5) - e * -logsig(-1.5)) / (1 - 2 * e)
    assert losses_for("robust", beta, e)[0].item() == pytest.approx(robust, rel=1e-6)
    assert losses_for("robust", beta, e)[0].item() == pytest.approx(-0.2985867, rel=1e-5)  # (0.8*0.2014133 - 0.2*1.7014133)/0.6


def test_rewards_are_beta_times_the_detached_log_ratios():
    _, chosen, rejected = losses_for("sigmoid", beta=0.1)
    assert chosen.item() == pytest.approx(0.1 * (PC - RC)) and rejected.item() == pytest.approx(0.1 * (PR - RR))
    assert not chosen.requires_grad


def test_ipo_and_robust_reduce_to_their_formulas():
    h = torch.linspace(-5, 5, 11)
    zero = torch.zeros_like(h)
    for beta in (0.1, 0.5, 2.0):
        ipo, _, _ = dpo.dpo_loss(h, zero, zero, zero, beta=beta, loss_type="ipo")
        torch.testing.assert_close(ipo, (h - 1 / (2 * beta)) ** 2)
        sig, _, _ = dpo.dpo_loss(h, zero, zero, zero, beta=beta, loss_type="sigmoid")
        rob0, _, _ = dpo.dpo_loss(h, zero, zero, zero, beta=beta, loss_type="robust", label_smoothing=0.0)
        torch.testing.assert_close(rob0, sig)  # no flipped labels: robust is plain DPO
        e = 0.3
        rob, _, _ = dpo.dpo_loss(h, zero, zero, zero, beta=beta, loss_type="robust", label_smoothing=e)
        flipped, _, _ = dpo.dpo_loss(-h, zero, zero, zero, beta=beta, loss_type="sigmoid")
        torch.testing.assert_close(rob, ((1 - e) * sig - e * flipped) / (1 - 2 * e))
        # unbiased under label noise: averaging over "flipped with prob e" recovers the clean DPO loss
        torch.testing.assert_close((1 - e) * rob + e * ((1 - e) * flipped - e * sig) / (1 - 2 * e), sig)


def test_label_smoothing_only_for_robust_and_unknown_types_rejected():
    with pytest.raises(ValueError, match="robust"):
        losses_for("sigmoid", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        losses_for("kto")


def test_policy_equal_to_reference_gives_ln2_and_zero_margins():
    """Step 0 on a real model: same weights for policy and reference -> rewards 0, loss ln 2 for every pair."""
    model = tiny_gpt().eval()
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "Sorry, I can't help with that."},
            {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon, I think"}]
    pairs = dpo.tokenize_pairs(ENC, rows, 64)
    x, y = dpo.pair_batch(pairs, PAD)  # (4, T)
    logps = dpo.response_logps(model(x), y)  # (4,)
    ref_c, ref_r = dpo.all_logps(tiny_gpt().eval(), pairs, PAD, torch.device("cpu"))  # a separate copy, same seed
    for loss_type in ("sigmoid", "robust"):
        losses, c, r = dpo.dpo_loss(logps[:2], logps[2:], ref_c, ref_r, beta=0.1, loss_type=loss_type,
                                    label_smoothing=0.1 if loss_type == "robust" else 0.0)
        torch.testing.assert_close(losses, torch.full((2,), math.log(2)))
        assert torch.equal(c - r, torch.zeros(2))


def test_response_logps_sum_only_the_answer_tokens():
    model = tiny_gpt().eval()
    pairs = dpo.tokenize_pairs(ENC, [{"prompt": "hi", "chosen": "yo", "rejected": "hello there"}], 64)
    x, y = dpo.pair_batch(pairs, PAD)
    lp = dpo.response_logps(model(x), y)  # (2,)
    # by hand for the chosen row: log-softmax at the positions whose target is a loss-mask token
    ids, mask = pairs[0][0]
    logits = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)  # (T, V)
    by_hand = sum(logits[t, ids[t + 1]].item() for t in range(len(ids) - 1) if mask[t + 1])
    assert lp[0].item() == pytest.approx(by_hand, rel=1e-5)
    assert sum(mask) == len("yo") + 1  # "y", "o" and <|end|>


def test_loss_falls_when_the_chosen_logp_rises_and_the_gradient_says_so():
    pc = torch.tensor([-10.0, -5.0], requires_grad=True)
    pr = torch.tensor([-11.0, -4.0], requires_grad=True)
    ref = torch.tensor([-10.0, -5.0]), torch.tensor([-11.0, -4.0])
    for loss_type in ("sigmoid", "ipo", "hinge", "robust"):
        ls = 0.1 if loss_type == "robust" else 0.0
        base = dpo.dpo_loss(pc, pr, *ref, loss_type=loss_type, label_smoothing=ls)[0].sum()
        higher = dpo.dpo_loss(pc + 0.5, pr, *ref, loss_type=loss_type, label_smoothing=ls)[0].sum()
        assert higher < base, loss_type
        pc.grad = pr.grad = None
        base.backward()
        assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0), loss_type


def test_train_end_to_end_learns_the_preference(tmp_path, monkeypatch):
    """train() on a tiny random model: step-1 loss is ln 2, margins grow, held-out pairs get ranked right."""
    for mod in (dpo, sft):
        monkeypatch.setattr(mod, "DATA_DIR", tmp_path / "no_world")
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda name, *a, **k: ENC)
    words = ["apple", "river", "stone", "cloud", "lamp", "tiger", "glass", "paper"]
    rows = [{"prompt": f"name {w}", "chosen": w, "rejected": "Sorry, I can't help with that."} for w in words]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    save_checkpoint(tmp_path / "sft.pt", model_checkpoint(tiny_gpt(), "bytes", 0))
    cfg = config_with_preset(dpo.Config, dpo.PRESETS, init=str(tmp_path / "sft.pt"), out=str(tmp_path / "run"),
                             data=str(tmp_path / "prefs.jsonl"), eval_data=str(tmp_path / "eval.jsonl"),
                             max_steps=20, batch_size=3, grad_accum=2, lr=3e-3, warmup_steps=1, beta=0.5,
                             log_every=5, device="cpu", progress=False)
    summary = dpo.train(cfg)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "model.pt", "samples.txt"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 1 and metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[-1]["rewards/margins"] > 1.0 and metrics[-1]["rewards/accuracies"] == 1.0
    assert metrics[-1]["loss"] < 0.5 * math.log(2)
    assert summary["eval_pref_acc"] == 1.0  # the refusal is dispreferred on unseen prompts too
