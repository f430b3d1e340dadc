"""The report card: scores in range, invariants of preference accuracy, arrows that point the right way."""
import pytest
import torch

from minipost.evals import COLUMN_ORDER, evaluate_checkpoint, report_table, write_report
from minipost.model import GPT, GPTConfig, model_checkpoint
from minipost.common import save_checkpoint
from minipost.tokenizer import get_tokenizer


def tiny_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    enc = get_tokenizer("nano")
    model = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=256, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(path, model_checkpoint(model, "nano", step=0))


def test_every_column_in_range_and_identical_models_have_zero_preference_accuracy(tmp_path):
    tiny_checkpoint(tmp_path / "a.pt")
    tiny_checkpoint(tmp_path / "b.pt")  # same weights, another file: the "reference"
    scores = evaluate_checkpoint(tmp_path / "a.pt", ref_path=tmp_path / "b.pt", limit=3, out_dir=tmp_path)
    assert set(scores) == set(COLUMN_ORDER)
    for k, v in scores.items():
        assert (v > 0) if k == "val_loss" else (0.0 <= v <= 1.0), (k, v)
    # policy == reference: every implicit reward is exactly 0, and accuracy counts strict wins only
    assert scores["pref_acc"] == 0.0
    # a random model knows nothing
    assert scores["knowledge"] == 0.0 and scores["val_loss"] > 5.0
    assert len((tmp_path / f"answers_{tmp_path.name}.jsonl").read_text().splitlines()) == 6 * 3


def test_report_arrows_respect_each_columns_direction(tmp_path):
    rows = {"base": {"knowledge": 0.10, "val_loss": 1.00, "over_refusal": 0.30},
            "sft": {"knowledge": 0.50, "val_loss": 1.20, "over_refusal": 0.10},
            "dpo": {"knowledge": 0.505, "val_loss": 1.20, "over_refusal": 0.40}}
    lines = report_table(rows).splitlines()
    sft, dpo = lines[3], lines[4]
    assert "50.0 ▲" in sft  # knowledge up: better
    assert "1.200 ▼" in sft  # loss up: worse
    assert "10.0 ▲" in sft  # over-refusal down: better
    assert "50.5 " in dpo and "50.5 ▲" not in dpo  # +0.5 points: below the 2-point threshold, no arrow
    assert "40.0 ▼" in dpo
    # against a named parent instead of the row above: dpo vs base, knowledge +40.5 points
    assert "50.5 ▲" in report_table(rows, parents={"dpo": "base"}).splitlines()[4]
    write_report(rows, tmp_path)
    assert (tmp_path / "report.md").read_text().startswith("| stage |")
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_cli_vs_compares_every_row_with_one_row(tmp_path, monkeypatch):
    import json

    import minipost.evals as evals
    scores = {"a": {"knowledge": 0.10}, "b": {"knowledge": 0.50}, "c": {"knowledge": 0.49}}
    monkeypatch.setattr(evals, "evaluate_checkpoint", lambda path, *a, **k: scores[path.split("/")[0]])
    monkeypatch.setattr(evals, "load_model", lambda path, *a, **k: None)  # the up-front check of every file
    evals.main(["--ckpt", "a/model.pt", "--ckpt", "b/model.pt", "--ckpt", "c/model.pt", "--vs", "a",
                "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["parents"] == {"b": "a", "c": "a"}
    assert "49.0 ▲" in (tmp_path / "report.md").read_text().splitlines()[4]  # c vs a (+39), not vs b (-1)
    with pytest.raises(SystemExit):  # a mistyped --vs fails before any checkpoint is evaluated
        evals.main(["--ckpt", "a/model.pt", "--vs", "dpo", "--out", str(tmp_path)])


def test_preference_accuracy_counts_strict_wins_of_the_implicit_reward():
    from minipost.evals import preference_accuracy

    t = torch.tensor
    ref_c, ref_r = t([-10.0, -10.0, -10.0, -10.0]), t([-12.0, -12.0, -12.0, -12.0])
    # log-ratios (chosen, rejected): (+1, 0) win, (0, +1) loss, (+1, +1) tie, (-1, -3) win: 2 of 4
    chosen, rejected = t([-9.0, -10.0, -9.0, -11.0]), t([-12.0, -11.0, -11.0, -15.0])
    assert preference_accuracy(chosen, rejected, ref_c, ref_r) == 0.5
    assert preference_accuracy(ref_c, ref_r, ref_c, ref_r) == 0.0  # policy == reference: all ties, none counted


def test_pair_logps_sums_each_answer_alone_whatever_the_batching():
    """pair_logps pads pairs of different lengths into batches; each number equals the answer's summed
    log-probs computed on its own row (chosen and rejected in the right order), for any batch_size."""
    from minipost.data import IGNORE, collate, tokenize_pairs
    from minipost.evals import pair_logps
    from minipost.logprobs import sequence_logprobs
    from minipost.tokenizer import build_encoding, special_id

    enc = build_encoding("bytes", {bytes([i]): i for i in range(256)})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "five, I believe"},
            {"prompt": "Capital of France, please?", "chosen": "Paris", "rejected": "Lyon"},
            {"prompt": "hi", "chosen": "hello there, friend", "rejected": "no"}]
    pairs = tokenize_pairs(enc, rows, 64)
    pad = special_id(enc, "<|pad|>")
    alone = [[sequence_logprobs(model(x), y, ignore_index=IGNORE).item() for x, y in (collate([c], pad),
                                                                                    collate([r], pad))]
             for c, r in pairs]
    for batch_size in (1, 2, 64):
        chosen, rejected = pair_logps(model, pairs, pad, batch_size=batch_size)  # (3,) each
        assert chosen.shape == rejected.shape == (3,)
        torch.testing.assert_close(chosen, torch.tensor([a[0] for a in alone]), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(rejected, torch.tensor([a[1] for a in alone]), atol=1e-4, rtol=1e-5)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    import minipost.evals as evals
    for argv, msg in [(["--ckpt", str(tmp_path / "nope.pt")], "nope.pt: no such checkpoint"),
                      (["--ckpt", "a.pt", "--limit", "0"], "--limit 0: must be >= 1"),
                      (["--from-json", str(tmp_path / "r.json")], "r.json: not a report.json")]:
        with pytest.raises(SystemExit) as e:
            evals.main(argv + ["--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
