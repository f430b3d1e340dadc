"""The report card: scores in range, invariants of preference accuracy, intervals and paired tests checked by
hand, marks that point the right way."""
import json
import math

import pytest
import torch

from minipost.card import (COLUMN_ORDER, binomial_ci, card, evaluate_checkpoint, evaluate_items, mcnemar_p,
                            paired_difference, report_table, write_report)
from minipost.model import GPT, GPTConfig
from minipost.checkpoints import model_checkpoint
from minipost.common import save_checkpoint
from minipost.tokenizer import get_tokenizer


def tiny_checkpoint(path, seed=0, **extra):
    torch.manual_seed(seed)
    enc = get_tokenizer("nano")
    model = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=256, n_layer=1, n_head=2, n_embd=16,
                          value_head="kind" in extra))
    save_checkpoint(path, model_checkpoint(model, "nano", step=0, **extra))


def test_every_column_in_range_and_identical_models_have_zero_preference_accuracy(tmp_path):
    from minipost.card import eval_answers
    from minipost.rewards import KIND, RewardModel
    tiny_checkpoint(tmp_path / "a.pt")
    tiny_checkpoint(tmp_path / "b.pt")  # same weights, another file: the "reference"
    tiny_checkpoint(tmp_path / "judge.pt", kind=KIND)
    judge, baseline = RewardModel(tmp_path / "judge.pt"), eval_answers(tmp_path / "b.pt", limit=3)
    scores = evaluate_checkpoint(tmp_path / "a.pt", ref_path=tmp_path / "b.pt", limit=3, out_dir=tmp_path,
                                 judge=judge, baseline=baseline)
    assert set(scores) == set(COLUMN_ORDER) - {"judge_agree"}  # no prompt where only one answer passes
    assert scores["win_rate"] == 0.5  # the same weights give the same answers: every prompt a tie
    for k, v in scores.items():
        assert (v > 0) if k == "val_loss" else (0.0 <= v <= 1.0), (k, v)
    # policy == reference: every implicit reward is exactly 0, and accuracy counts strict wins only
    assert scores["pref_acc"] == 0.0
    # a random model knows nothing
    assert scores["knowledge"] == 0.0 and scores["val_loss"] > 5.0
    assert len((tmp_path / f"answers_{tmp_path.name}.jsonl").read_text().splitlines()) == 6 * 3
    # the card's per-item scores: one 0/1 per item (nats per window for val_loss), and their means are the scores
    items = evaluate_items(tmp_path / "a.pt", ref_path=tmp_path / "b.pt", limit=3, judge=judge, baseline=baseline)
    assert {c: sum(v) / len(v) for c, v in items.items()} == pytest.approx(scores)
    assert len(items["knowledge"]) == 3 and len(items["format"]) == 6 * 3 and len(items["val_loss"]) == 64
    assert all(v in (0.0, 1.0) for c, vs in items.items() if c not in ("val_loss", "win_rate") for v in vs)


def test_win_items_count_wins_ties_and_losses():
    from minipost.card import win_items
    judge = lambda prompts, answers: torch.tensor([float(len(a)) for a in answers])  # noqa: E731  (likes length)
    assert win_items(judge, ["p"] * 4, ["long answer", "x", "same", "abc"], ["short", "longer", "same", "xyz"]) == [
        1.0, 0.0, 0.5, 0.5]  # longer wins, shorter loses, the same text ties, an equal score ties
    with pytest.raises(ValueError, match="not the same prompts"):
        win_items(judge, ["p"], ["a"], ["a", "b"])


def test_judge_agreement_counts_only_prompts_the_checkers_separate():
    from minipost.card import judge_agreement
    recs = [{"domain": "arithmetic", "answer": a} for a in (2, 3, 4, 5)]
    answers = ["1 + 1 = 2.", "1 + 1 = 9.", "2 + 2 = 4.", "2 + 3 = 5."]
    baseline = ["1 + 1 = 7.", "1 + 2 = 3.", "2 + 2 = 4.", "2 + 3 = 6."]
    # prompt 0: mine right, theirs wrong, judge prefers mine -> agrees; prompt 1: mine wrong, judge prefers
    # mine -> disagrees; prompt 2: both right -> left out; prompt 3: mine right, a tie -> disagrees
    assert judge_agreement(recs, answers, baseline, [1.0, 1.0, 0.0, 0.5]) == [1.0, 0.0, 0.0]
    # rows hold different prompts: an interval, never a mark, and seeds with different counts still pool
    report = card({"sft": {"judge_agree": [1.0, 0.0]},
                   "dpo": [{"judge_agree": [1.0] * 9 + [0.0]}, {"judge_agree": [1.0, 1.0, 0.0, 0.0]}]})
    cell = report["dpo"]["judge_agree"]
    assert "mark" not in cell and cell["n"] == 14 and cell["value"] == pytest.approx((0.9 + 0.5) / 2)


def shares(k: int, n: int, first: int = 0) -> list[float]:
    """n 0/1 item scores, items first .. first+k-1 right (so two lists can share or not share their items)."""
    return [1.0 if first <= i < first + k else 0.0 for i in range(n)]


def test_report_marks_only_significant_changes_and_respects_each_columns_direction(tmp_path):
    items = {"base": {"knowledge": shares(10, 100), "val_loss": [1.0 + 0.01 * i for i in range(8)],
                      "over_refusal": shares(30, 100)},
             "sft": {"knowledge": shares(50, 100), "val_loss": [1.2 + 0.01 * i for i in range(8)],
                     "over_refusal": shares(10, 100)},
             "dpo": {"knowledge": shares(51, 100), "val_loss": [1.2 + 0.01 * i for i in range(8)],
                     "over_refusal": shares(40, 100)}}
    report = card(items)
    assert report["sft"]["knowledge"]["mark"] == "▲"  # 40 items up, none down: better
    assert report["sft"]["val_loss"]["mark"] == "▼"  # loss up on every window: worse
    assert report["sft"]["over_refusal"]["mark"] == "▲"  # over-refusal down: better
    assert report["dpo"]["knowledge"]["mark"] == ""  # one item of 100 changed: noise, no mark
    assert report["dpo"]["over_refusal"]["mark"] == "▼"
    assert report["dpo"]["val_loss"] == {**report["dpo"]["val_loss"], "diff": 0.0, "p": 1.0, "mark": ""}
    assert "base" not in [c.get("vs") for c in report["base"].values()]  # the first row has no parent
    lo, hi = binomial_ci(50, 100)
    assert report["sft"]["knowledge"] == {**report["sft"]["knowledge"], "value": 0.5, "lo": lo, "hi": hi, "n": 100}
    lines = report_table(report).splitlines()
    assert "50.0 ±9.6 ▲" in lines[3] and "1.235 ±" in lines[3] and "51.0 ±9.6 " in lines[4]
    # against a named parent instead of the row above: dpo vs base, knowledge +41 points
    assert card(items, parents={"dpo": "base"})["dpo"]["knowledge"]["vs"] == "base"
    write_report(items, tmp_path)
    assert (tmp_path / "report.md").read_text().startswith("| stage |")
    assert (tmp_path / "report.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["items"] == items and saved["rows"]["sft"]["knowledge"] == 0.5
    assert saved["card"]["sft"]["knowledge"]["mark"] == "▲"


def test_rows_over_seeds_show_the_mean_and_sd_of_the_seeds():
    seeds = [{"arithmetic": shares(k, 100)} for k in (40, 50, 60)]
    report = card({"dpo": {"arithmetic": shares(30, 100)}, "grpo": seeds})
    cell = report["grpo"]["arithmetic"]
    assert cell["value"] == pytest.approx(0.5) and cell["per_seed"] == [0.4, 0.5, 0.6]
    assert cell["seeds"] == 3 and cell["sd"] == pytest.approx(0.1)
    assert cell["mark"] == "▲" and cell["diff"] == pytest.approx(0.2)  # seed-averaged items vs the parent's
    assert "grpo (3 seeds)" in report_table(report) and "50.0 ±10.0 ▲" in report_table(report)


def test_wilson_interval_matches_hand_computed_values():
    assert binomial_ci(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # 0 of 10 still allows 28%
    assert binomial_ci(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # 50 of 100: centre 0.5, half-width 1.96 sqrt(0.25/100 + 1.96^2/40000) / (1 + 1.96^2/100)
    half = 1.96 * math.sqrt(0.0025 + 1.96 ** 2 / 40000) / (1 + 1.96 ** 2 / 100)
    assert binomial_ci(50, 100) == pytest.approx((0.5 - half, 0.5 + half))
    lo, hi = binomial_ci(3, 40)
    assert lo < 3 / 40 < hi and binomial_ci(3, 40, z=2.576)[0] < lo  # a wider z, a wider interval
    for bad in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            binomial_ci(*bad)


def test_paired_difference_resamples_items_and_tests_against_no_change():
    same = shares(40, 100)
    assert paired_difference(same, same) == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}
    # every item flips 0 -> 1: every resample has the same difference, p is as small as the bootstrap can say
    t = paired_difference([1.0] * 20, [0.0] * 20, n_boot=999)
    assert t == {"diff": 1.0, "lo": 1.0, "hi": 1.0, "p": 1 / 1000}
    # 20 items up and 5 down out of 100 (exact McNemar p = 0.004) vs 8 up and 4 down (p = 0.39)
    up20 = paired_difference(shares(20, 100), shares(5, 100, first=20))
    assert up20["diff"] == pytest.approx(0.15) and up20["lo"] > 0 and up20["p"] < 0.05
    up8 = paired_difference(shares(8, 100), shares(4, 100, first=8))
    assert up8["lo"] < 0 < up8["hi"] and up8["p"] > 0.2
    # the result depends on the seed only through the resampling, and is reproducible with one
    assert paired_difference(shares(25, 100), same, seed=3) == paired_difference(shares(25, 100), same, seed=3)
    with pytest.raises(ValueError):
        paired_difference([1.0, 0.0], [1.0])


def test_mcnemar_counts_only_the_items_that_changed():
    # 6 up, 0 down: p = 2 * 0.5^6; adding items both models get right (or wrong) changes nothing
    assert mcnemar_p(shares(6, 100), [0.0] * 100) == pytest.approx(2 / 64)
    assert mcnemar_p(shares(6, 10) + [1.0] * 90, [0.0] * 10 + [1.0] * 90) == pytest.approx(2 / 64)
    # 20 up, 5 down: 2 * P(Binomial(25, 1/2) <= 5)
    expected = 2 * sum(math.comb(25, i) for i in range(6)) / 2 ** 25
    assert mcnemar_p(shares(20, 100), shares(5, 100, first=20)) == pytest.approx(expected)
    assert mcnemar_p(shares(5, 100), shares(5, 100)) == 1.0  # nothing changed
    assert mcnemar_p(shares(3, 10), shares(3, 10, first=3)) == 1.0  # 3 up, 3 down: capped at 1
    # few changes: the bootstrap's p is too small, which is why the card uses McNemar for 0/1 scores
    assert mcnemar_p(shares(5, 600), [0.0] * 600) > 0.05 > paired_difference(shares(5, 600), [0.0] * 600)["p"]
    with pytest.raises(ValueError):
        mcnemar_p([0.5], [1.0])


def test_preference_accuracy_counts_strict_wins_of_the_implicit_reward():
    from minipost.heldout import preference_accuracy

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
    from minipost.heldout import pair_logps
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
    from minipost.card import report
    from minipost.card.__main__ import main
    (tmp_path / "old.json").write_text(json.dumps({"rows": {"sft": {"knowledge": 0.5}}}))  # no per-item scores
    (tmp_path / "bad.json").write_text(json.dumps({"items": {"sft": {"knowledge": ["x"]}}}))
    for name, saved in {"parents.json": {"items": {"a": {"knowledge": [1.0]}}, "parents": "x"},
                        "empty.json": {"items": {}}, "nan.json": {"items": {"a": {"knowledge": [float("nan")]}}},
                        "seeds.json": {"items": {"a": [{"knowledge": [1.0]}, {"knowledge": [1.0, 0.0]}]}},
                        "range.json": {"items": {"a": {"knowledge": [-7.0]}}},
                        "loss.json": {"items": {"a": {"val_loss": [-0.5]}}},
                        "orphan.json": {"items": {"a": {"knowledge": [1.0]}}, "parents": {"a": "z"}}}.items():
        (tmp_path / name).write_text(json.dumps(saved))
    (tmp_path / "afile").write_text("")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError in json, not a card
    (tmp_path / "many.json").write_text(json.dumps({"items": {"a": {"knowledge": [1.0] * (report.MAX_ITEMS + 1)}}}))
    wide = {f"row{i}": {f"col{j}": [1.0] * report.MAX_ITEMS for j in range(7)} for i in range(3)}  # 210,000 items
    (tmp_path / "wide.json").write_text(json.dumps({"items": wide}))
    for argv, msg in [(["--from-json", str(tmp_path / "deep.json")], "deep.json: not a report.json (JSON nested"),
                      (["--from-json", str(tmp_path / "many.json")], "'knowledge': more than 10,000 items"),
                      (["--from-json", str(tmp_path / "wide.json")], "more than 200,000 items in all"),
                      (["--ckpt", str(tmp_path / "nope.pt")], "nope.pt: no such checkpoint"),
                      (["--ckpt", "a.pt", "--limit", "0"], "--limit 0: must be >= 1"),
                      (["--from-json", str(tmp_path / "r.json")], "r.json: not a report.json"),
                      (["--from-json", str(tmp_path / "old.json")], "old.json: not a report.json with per-item"),
                      (["--from-json", str(tmp_path / "bad.json")], "bad.json: not a report.json with per-item"),
                      (["--from-json", str(tmp_path / "parents.json")], "'parents' is not a {row: parent row}"),
                      (["--from-json", str(tmp_path / "empty.json")], "'items' holds no rows"),
                      (["--from-json", str(tmp_path / "nan.json")], "not a finite number"),
                      (["--from-json", str(tmp_path / "seeds.json")], "seeds with different numbers of items"),
                      (["--from-json", str(tmp_path / "range.json")], "'knowledge': a score outside [0.0, 1.0]"),
                      (["--from-json", str(tmp_path / "loss.json")], "'val_loss': a score outside [0.0, inf]"),
                      (["--from-json", str(tmp_path / "orphan.json")], "names a row the report does not hold"),
                      (["--from-json", str(tmp_path / "old.json"), "--out", str(tmp_path / "afile" / "x")],
                       "cannot write in"),
                      (["--from-json", str(tmp_path / "old.json"), "--out", str(tmp_path / "afile")],
                       "afile: exists and is not a folder"),
                      (["--ckpt", "a.pt", "--judge", "j.pt", "--baseline", "b.pt", "--no-chat"], "--judge needs")]:
        with pytest.raises(SystemExit) as e:
            main(["--out", str(tmp_path / "out")] + argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
