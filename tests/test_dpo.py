"""DPO: each loss type against hand-computed values, the step-0 invariants (loss ln 2, margins 0 when the policy
is the reference), the direction of the gradient, train() end to end on a tiny model, and the run contract:
exact resume, refused config changes, NaN stops that leave only finite files, bounded flags, failed starts
(a bad file, a --ref with another tokenizer) that leave OUT untouched, one-line CLI errors."""
import dataclasses
import json
import math

import pytest
import torch

import minipost.dpo as dpo
import minipost.tokenizer as tokenizer
from minipost.common import InputError, config_with_preset, save_checkpoint
from minipost.data import pair_batch, tokenize_pairs
from minipost.harness import read_metrics
from minipost.heldout import pair_logps, preference_accuracy
from minipost.logprobs import sequence_logprobs
from minipost.model import GPT, GPTConfig
from minipost.checkpoints import load_model, model_checkpoint

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
    pairs = tokenize_pairs(ENC, rows, 64)
    x, y = pair_batch(pairs, PAD)  # (4, T)
    logps = sequence_logprobs(model(x), y)  # (4,)
    ref_c, ref_r = pair_logps(tiny_gpt().eval(), pairs, PAD)  # a separate copy, same seed
    for loss_type in ("sigmoid", "robust"):
        losses, c, r = dpo.dpo_loss(logps[:2], logps[2:], ref_c, ref_r, beta=0.1, loss_type=loss_type,
                                    label_smoothing=0.1 if loss_type == "robust" else 0.0)
        torch.testing.assert_close(losses, torch.full((2,), math.log(2)))
        assert torch.equal(c - r, torch.zeros(2))


def test_sequence_logprobs_sum_only_the_answer_tokens():
    model = tiny_gpt().eval()
    pairs = tokenize_pairs(ENC, [{"prompt": "hi", "chosen": "yo", "rejected": "hello there"}], 64)
    x, y = pair_batch(pairs, PAD)
    lp = sequence_logprobs(model(x), y)  # (2,)
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


WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "glass", "paper"]


def tiny_run(tmp_path, monkeypatch, **overrides) -> dpo.Config:
    """Six training pairs and two held-out ones (a word over a refusal), a tiny random "SFT" checkpoint, and a
    Config for them; no world files (DATA_DIR points at an empty folder)."""
    monkeypatch.setattr(dpo, "DATA_DIR", tmp_path / "no_world")
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda name, *a, **k: ENC)
    rows = [{"prompt": f"name {w}", "chosen": w, "rejected": "Sorry, I can't help with that."} for w in WORDS]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    if not (tmp_path / "sft.pt").exists():
        save_checkpoint(tmp_path / "sft.pt", model_checkpoint(tiny_gpt(), "bytes", 0))
    kw = dict(init=str(tmp_path / "sft.pt"), out=str(tmp_path / "run"), data=str(tmp_path / "prefs.jsonl"),
              eval_data=str(tmp_path / "eval.jsonl"), max_steps=20, batch_size=6, micro_batch_size=3, lr=3e-3,
              warmup_steps=1, log_every=5, device="cpu", progress=False)
    return dpo.Config(**{**kw, **overrides})


def metrics_rows(out):
    """metrics.jsonl without the wall-clock columns."""
    return [{k: v for k, v in r.items() if k not in ("steps_per_s", "elapsed_s")}
            for r in read_metrics(out / "metrics.jsonl")]


def test_train_end_to_end_learns_the_preference(tmp_path, monkeypatch):
    """train() on a tiny random model: step-1 loss is ln 2, margins grow, held-out pairs get ranked right."""
    summary = dpo.train(tiny_run(tmp_path, monkeypatch))
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "model.pt"}
    metrics = metrics_rows(run)
    assert metrics[0]["step"] == 1 and metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[-1]["rewards/margins"] > 1.0 and metrics[-1]["rewards/accuracies"] == 1.0
    assert metrics[-1]["loss"] < 0.5 * math.log(2)
    assert summary["eval_pref_acc"] == 1.0  # the refusal is dispreferred on unseen prompts too
    # the logged number is the report card's code (heldout.pair_logps + preference_accuracy) on the same pairs
    pairs = tokenize_pairs(ENC, [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()], 64)
    policy, ref = load_model(run / "model.pt")[0], load_model(tmp_path / "sft.pt")[0]
    assert preference_accuracy(*pair_logps(policy, pairs, PAD), *pair_logps(ref, pairs, PAD)) == metrics[-1][
        "eval_pref_acc"]


def test_without_held_out_pairs_nothing_is_logged_as_nan(tmp_path, monkeypatch):
    summary = dpo.train(tiny_run(tmp_path, monkeypatch, eval_data="", max_steps=5))
    assert summary["eval_pref_acc"] is None
    assert all("eval_pref_acc" not in row for row in metrics_rows(tmp_path / "run"))
    with pytest.raises(InputError, match=r"a folder, not a checkpoint file"):
        dpo.train(tiny_run(tmp_path, monkeypatch, init=str(tmp_path)))


def test_samples_come_from_the_worlds_held_out_prompts(tmp_path, monkeypatch):
    cfg = tiny_run(tmp_path, monkeypatch, max_steps=2)
    world = tmp_path / "no_world"
    world.mkdir()
    rec = {"prompt": "Tell me the capital city of Brerkia.", "domain": "knowledge", "answer": "Gubus",
           "country": "Brerkia", "attribute": "capital"}
    (world / "eval.jsonl").write_text(json.dumps(rec) + "\n")
    dpo.train(cfg)
    assert (tmp_path / "run" / "samples.txt").read_text().startswith("### [knowledge] score 0")


def test_defaults_are_the_nano_preset_and_small_changes_only_what_it_lists():
    assert config_with_preset(dpo.Config, dpo.PRESETS, preset="nano") == dpo.Config()
    cfg = dpo.Config()
    assert (cfg.beta, cfg.rpo_alpha, cfg.lr, cfg.batch_size, cfg.micro_batch_size, cfg.max_steps) == (
        0.5, 1.0, 1e-4, 32, 0, 100)
    small = config_with_preset(dpo.Config, dpo.PRESETS, preset="small")
    changed = {f.name for f in dataclasses.fields(dpo.Config) if getattr(small, f.name) != getattr(cfg, f.name)}
    assert changed == set(dpo.PRESETS["small"])


def test_micro_batches_give_the_whole_batch_gradient(tmp_path, monkeypatch):
    """micro_batch_size splits the forward/backward only: the DPO mean and the RPO per-token NLL are weighted
    over the whole batch, so the weights after a few steps agree with micro_batch_size 0 to float rounding."""
    weights = {}
    for micro in (0, 2, 4):  # 4 leaves a ragged micro-batch of 2 in a batch of 6
        out = tmp_path / f"m{micro}"
        dpo.train(tiny_run(tmp_path, monkeypatch, out=str(out), max_steps=3, micro_batch_size=micro))
        weights[micro] = load_model(out / "model.pt")[0].state_dict()
    for micro in (2, 4):
        for k, v in weights[0].items():
            torch.testing.assert_close(weights[micro][k], v, atol=1e-5, rtol=1e-4)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    """stop_after 4 then --resume (a step that is no save_every, eval_every or log_every multiple) ends with the
    same weights, bit for bit, and the same metrics rows, held-out accuracy included. The reference's log-probs
    are recomputed on resume: they come out the same."""
    common = dict(max_steps=7, eval_every=3, log_every=1, save_every=5)
    dpo.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "once"), **common))
    dpo.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "twice"), stop_after=4, **common))
    twice = tmp_path / "twice"
    assert not (twice / "model.pt").exists() and [r["step"] for r in metrics_rows(twice)] == [1, 2, 3, 4]
    dpo.train(tiny_run(tmp_path, monkeypatch, out=str(twice), resume=True, **common))
    a, b = load_model(tmp_path / "once" / "model.pt")[0], load_model(twice / "model.pt")[0]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert metrics_rows(tmp_path / "once") == metrics_rows(twice)


def test_lora_starts_at_ln2_resumes_bit_identically_and_saves_plain_weights(tmp_path, monkeypatch):
    common = dict(max_steps=7, eval_every=3, log_every=1, save_every=5, lora_rank=4, lora_alpha=8)
    summary = dpo.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "once"), **common))
    dpo.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "twice"), stop_after=4, **common))
    dpo.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / "twice"), resume=True, **common))
    rows = metrics_rows(tmp_path / "once")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # B = 0: the policy is the reference
    assert rows == metrics_rows(tmp_path / "twice")
    a, b = load_model(tmp_path / "once" / "model.pt")[0], load_model(tmp_path / "twice" / "model.pt")[0]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert summary["trainable_params"] < tiny_gpt().num_params() / 3


def test_resume_refuses_a_changed_config_and_removes_leftover_tmp_files(tmp_path, monkeypatch):
    dpo.train(tiny_run(tmp_path, monkeypatch, max_steps=4, stop_after=2))
    run = tmp_path / "run"
    (run / "model.pt.x.tmp").write_bytes(b"half a file")
    with pytest.raises(InputError, match="beta"):
        dpo.train(tiny_run(tmp_path, monkeypatch, max_steps=4, resume=True, beta=0.2))
    dpo.train(tiny_run(tmp_path, monkeypatch, max_steps=4, resume=True, beta=0.2, allow_config_change=True))
    assert not list(run.glob("*.tmp")) and (run / "model.pt").exists()
    assert [r["step"] for r in metrics_rows(run)] == [1, 4]  # log_every 5: the first and the last step


def test_a_diverging_run_stops_and_leaves_only_finite_files(tmp_path, monkeypatch):
    """lr 1e30 overflows the weights: the run stops with FloatingPointError, and the model.pt and state.pt of an
    earlier good run in the same folder stay loadable and finite in run/previous/ (no file with NaN/inf is ever
    written)."""
    dpo.train(tiny_run(tmp_path, monkeypatch, max_steps=2, save_every=1))
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError):
        dpo.train(tiny_run(tmp_path, monkeypatch, max_steps=6, save_every=1, lr=1e30))
    model, _, _ = load_model(run / "previous" / "model.pt")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    for state_path in (run / "previous" / "state.pt", *run.glob("state.pt")):
        state = torch.load(state_path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("bad", [dict(max_steps=-5), dict(batch_size=0), dict(eval_every=-1),
                                 dict(micro_batch_size=-1), dict(lr=float("inf")), dict(lr=0.0), dict(beta=0.0),
                                 dict(save_every=0), dict(stop_after=-1), dict(rpo_alpha=-1.0),
                                 dict(label_smoothing=0.1), dict(loss_type="robust", label_smoothing=0.5),
                                 dict(loss_type="kto")])
def test_bad_flags_are_input_errors(bad):
    with pytest.raises(InputError):
        dpo.Config(**bad)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_start_leaves_the_earlier_run_untouched(tmp_path, monkeypatch):
    dpo.train(tiny_run(tmp_path, monkeypatch, max_steps=2))
    before = snapshot(tmp_path / "run")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "hi", "chosen": "yo"}\n')  # no "rejected"
    with pytest.raises(InputError, match="broken.jsonl:1"):
        dpo.train(tiny_run(tmp_path, monkeypatch, max_steps=3, data=str(tmp_path / "broken.jsonl")))
    assert snapshot(tmp_path / "run") == before


def test_a_reference_with_another_tokenizer_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Log-ratios against a model that reads other token ids are meaningless: --ref must share the policy's
    tokenizer. The refusal comes before start_run, so OUT keeps the earlier run byte for byte."""
    dpo.train(tiny_run(tmp_path, monkeypatch, max_steps=2))
    before = snapshot(tmp_path / "run")
    other = tokenizer.build_encoding("other", {bytes([i]): i for i in range(256)} | {b"ab": 256})
    torch.manual_seed(0)
    ref = GPT(GPTConfig(vocab_size=other.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=32))
    save_checkpoint(tmp_path / "ref.pt", model_checkpoint(ref, "other", 0))
    cfg = tiny_run(tmp_path, monkeypatch, max_steps=3, ref=str(tmp_path / "ref.pt"))
    monkeypatch.setattr(tokenizer, "get_tokenizer", lambda name, *a, **k: other if name == "other" else ENC)
    with pytest.raises(InputError, match="tokenizer"):
        dpo.train(cfg)
    assert snapshot(tmp_path / "run") == before


def test_checkpointing_recomputes_the_blocks_of_a_policy_trained_in_eval_mode(tmp_path, monkeypatch):
    """DPO trains in eval mode (no dropout); --checkpointing must still recompute the blocks in backward, and the
    weights come out the same bit for bit."""
    import minipost.model as model_module
    calls = []
    real = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    for on in (False, True):
        dpo.train(tiny_run(tmp_path, monkeypatch, out=str(tmp_path / str(on)), max_steps=2, checkpointing=on))
        assert bool(calls) == on
    a, b = (load_model(tmp_path / d / "model.pt")[0].state_dict() for d in ("False", "True"))
    assert all(torch.equal(a[k], b[k]) for k in a)
