"""GSM8K's record form, brought by a user: {"question", "answer" ending "#### N"}. Its final-number checker, the
format reward, SFT rows and RL prompts from it, and one line for a record without its final answer. The
records below are written here in that form; minipost ships no GSM8K text."""
import json

import pytest

from minipost.common import InputError
from minipost.data import load_chats
from minipost.rewards import format_reward
from minipost.rollout import load_prompts
from minipost.world import check, validate_record
from minipost.world.gsm8k import final_number, number

ROWS = [{"question": "A farmer has 3 pens of 12 hens. How many hens?", "answer": "3 * 12 = 36 hens.\n#### 36"},
        {"question": "Tickets cost $1,250 for 2. What does 1 cost?", "answer": "1250 / 2 = 625\n#### 625"},
        {"question": "It was 5 degrees, then fell 8. Now?", "answer": "5 - 8 = -3\n#### -3"}]


@pytest.mark.parametrize("text, want", [
    ("so 36 hens.\n#### 36", "36"), ("#### 1,000", "1000"), ("#### $1,250.00", "1250"), ("#### +7.", "7"),
    ("#### -3", "-3"), ("#### 2.50", "2.5"), ("#### -0", "0"), ("The answer is \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{2}", "2"), ("#### 5 ... \\boxed{6}", "5"), ("#### 4\n#### 9", "9"),
    ("it is 36", None), ("#### many", None), ("", None), ("#### 1e400x", None), ("#### 5/2", None),
    ("\\boxed{\\$1,000}", "1000"), ("\\boxed{1e999999999}", None),  # (written out, it would fill the memory)
])
def test_the_final_number_is_read_as_the_graders_read_it(text, want):
    assert final_number(text) == want


def test_numbers_compare_as_values():
    assert number("1,000") == number("1000.0") == number("+1000") == "1000"
    assert number("nan") is None and number("inf") is None
    assert number("123456789012345678901234567890") != number("123456789012345678901234567899")  # past 28 digits


def test_sft_rows_and_rl_prompts_from_gsm8k_records(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    chats = load_chats(path)
    assert chats[0] == [{"role": "user", "content": ROWS[0]["question"]},
                        {"role": "assistant", "content": ROWS[0]["answer"]}]
    prompts = load_prompts(path)
    assert [p["answer"] for p in prompts] == ["36", "625", "-3"] and {p["domain"] for p in prompts} == {"gsm8k"}
    assert prompts[0]["prompt"].startswith(ROWS[0]["question"]) and prompts[0]["prompt"].endswith("#### <number>")
    assert validate_record(prompts[0]) is None
    assert check(prompts[1], "Half of 1,250 is 625.\n#### 625") == 1.0
    assert check(prompts[1], "It costs 625 dollars.") == 0.0  # no final answer stated
    assert check(prompts[2], "#### 3") == 0.0  # the sign counts
    assert format_reward("", "#### 12", prompts[0]) == 1.0 and format_reward("", "twelve", prompts[0]) == 0.0


@pytest.mark.parametrize("row, message", [
    ({"question": "How many?", "answer": "Twelve."}, "field 'answer' has no final '#### N' line with a number"),
    ({"question": "How many?", "answer": "#### a dozen"}, "field 'answer' has no final '#### N'"),
    ({"question": "", "answer": "#### 1"}, "field 'question' must be a non-empty string"),
    ({"question": 4, "answer": "#### 1"}, "field 'question' must be a non-empty string"),
])
def test_a_gsm8k_record_without_its_final_answer_is_one_line(tmp_path, row, message):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(row) + "\n")
    for load in (load_chats, load_prompts):
        with pytest.raises(InputError, match=f"gsm8k.jsonl:2: {message}"):
            load(path)


def test_grpo_trains_on_gsm8k_records_and_logs_their_held_out_column(tmp_path):
    import torch
    from minipost import grpo
    from minipost.checkpoints import model_checkpoint
    from minipost.harness import read_metrics
    from minipost.model import GPT, GPTConfig
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))
    torch.save(model_checkpoint(GPT(GPTConfig(n_layer=1)), "nano", 0), tmp_path / "init.pt")
    grpo.train(grpo.Config(init=str(tmp_path / "init.pt"), data=str(path), eval_data=str(path), oversample="",
                           reward="correct:1,format:0.1", out=str(tmp_path / "run"), max_steps=1, prompts_per_step=2,
                           group_size=2, max_new_tokens=8, eval_limit=2, progress=False))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert any("eval_gsm8k" in r for r in rows)


def test_prompt_only_records_train_with_a_reward_model_and_nothing_else(tmp_path):
    """TRL's prompt-only form ({"prompt"}, a string or messages) has no checker: a reward model scores it, and a
    checker term in --reward, or such prompts as held-out data, is one line before anything is written."""
    from minipost.rewards import parse_reward
    from minipost.rollout import load_rl_prompts
    from minipost.tokenizer import get_tokenizer
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Write a haiku."}, {"prompt": [{"role": "system", "content": "Be kind."},
                                                       {"role": "user", "content": "Say hi."}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_prompts(path)
    assert [r["domain"] for r in records] == ["prompts", "prompts"] and validate_record(records[1]) is None
    kw = dict(domains="", oversample="", prompts_per_step=2, enc=get_tokenizer("nano"), block_size=256,
              max_new_tokens=16, model_path="m.pt")
    with pytest.raises(InputError, match="--reward 'correct:1': prompt-only records .* only a reward model scores"):
        load_rl_prompts(path, gsm8k_file(tmp_path), reward_fn=parse_reward("correct:1"), reward_spec="correct:1", **kw)
    with pytest.raises(InputError, match="held-out prompts are scored by their domain's checker"):
        load_rl_prompts(path, path, **kw)
    path.write_text(json.dumps({"prompt": "What is 2+2?", "answer": "4"}) + "\n")  # an answer wants a checker
    with pytest.raises(InputError, match="prompts.jsonl:1: field 'domain' missing: a record with an 'answer'"):
        load_prompts(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})
                   + "\n")
    with pytest.raises(InputError, match="bad.jsonl:1: field 'prompt': its last message is an answer"):
        load_prompts(bad)


def gsm8k_file(tmp_path):
    path = tmp_path / "gsm8k_eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path
