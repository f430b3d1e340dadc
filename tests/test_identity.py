"""The identity lab's files (minipost/world/identity.py): minimal pairs that differ in the name alone, held-out
questions kept out of training, a checker that wants the new name and not the old, and DPO learning the pairs."""
import json

import pytest

from minipost.common import InputError
from minipost.data import load_prefs
from minipost.heldout import load_eval_pairs
from minipost.rollout import load_prompts
from minipost.world import check, identity


def test_names_are_stripped_so_the_answers_read_as_the_checker_wants(tmp_path):
    identity.build(tmp_path, " Nova ", "Qwen")
    first = load_prefs(tmp_path / "prefs.jsonl")[0]
    assert " Nova " not in first["chosen"] and check(first, first["chosen"]) == 1.0


def test_the_files_are_minimal_pairs_with_held_out_questions(tmp_path):
    counts = identity.build(tmp_path, "Nova", "Qwen")
    assert counts == {"prefs.jsonl": 84, "eval_prefs.jsonl": 36, "eval.jsonl": 6}
    train, held = load_prefs(tmp_path / "prefs.jsonl"), load_eval_pairs(tmp_path / "eval_prefs.jsonl")
    for row in train + held:
        assert row["chosen"].replace("Nova", "Qwen") == row["rejected"] and "Nova" in row["chosen"]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert [r["prompt"] for r in load_prompts(tmp_path / "eval.jsonl")] == identity.HELD_OUT
    before = (tmp_path / "prefs.jsonl").read_bytes()
    identity.build(tmp_path, "Nova", "Qwen")
    assert (tmp_path / "prefs.jsonl").read_bytes() == before  # deterministic


@pytest.mark.parametrize("answer, score", [("I'm Nova!", 1.0), ("my name is NOVA.", 1.0), ("I am Qwen.", 0.0),
                                           ("I was Qwen, now I'm Nova.", 0.0), ("I am Novalis.", 0.0),
                                           ("I'm an assistant.", 0.0)])
def test_the_checker_wants_the_new_name_and_not_the_old(answer, score):
    assert check({"domain": "identity", "name": "Nova", "old_name": "Qwen"}, answer) == score


def test_the_same_name_twice_a_new_name_holding_the_old_or_a_bad_out_is_one_line(tmp_path):
    with pytest.raises(InputError, match="fields 'name' and 'old_name' are the same name"):
        identity.build(tmp_path, "Nova", " nova ")
    with pytest.raises(InputError, match="field 'name' holds 'old_name' as a word"):  # no answer could score 1
        identity.build(tmp_path, " Qwen Pro", "Qwen ")
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="--out .*file: cannot write there"):
        identity.build(tmp_path / "file", "Nova", "Qwen")


def test_dpo_learns_the_new_name(tmp_path):
    """A few DPO steps on the pairs raise the held-out preference accuracy of a tiny model above chance."""
    import torch
    from minipost import dpo
    from minipost.checkpoints import model_checkpoint
    from minipost.harness import read_metrics
    from minipost.model import GPT, GPTConfig
    identity.build(tmp_path / "data", "Nova", "Qwen")
    torch.manual_seed(0)
    torch.save(model_checkpoint(GPT(GPTConfig(n_layer=1)), "nano", 0), tmp_path / "init.pt")
    dpo.train(dpo.Config(init=str(tmp_path / "init.pt"), data=str(tmp_path / "data" / "prefs.jsonl"),
                         eval_data=str(tmp_path / "data" / "eval_prefs.jsonl"), out=str(tmp_path / "run"),
                         max_steps=8, batch_size=8, lr=3e-3, eval_every=8, progress=False))
    last = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval_pref_acc" in r][-1]
    assert last["eval_pref_acc"] > 0.9, last
