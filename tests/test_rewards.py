"""Rewards: world checkers wrapped, weights composed, penalties applied, user functions accepted."""
import pytest
import torch

from minipost.common import InputError
from minipost.rewards import (correctness, exact_answer, format_reward, parse_reward, restate, score_rollout,
                              sql_execution, tool_call)
from minipost.rollout import Rollout

ARITH = {"prompt": "What is 17 + 25?", "domain": "arithmetic", "answer": 42}
SQL = {"prompt": "Write a SQL query for: count the employees.", "domain": "sql",
       "answer": "SELECT COUNT(*) FROM employees"}
TOOL = {"prompt": "What is the weather in Oslo?", "domain": "tools",
        "answer": {"name": "get_weather", "arguments": {"city": "Oslo"}}}


def test_builtin_rewards_use_the_world_checkers():
    assert exact_answer("", "17 + 25 = 42.", ARITH) == 1.0
    assert exact_answer("", "17 + 25 = 43.", ARITH) == 0.0
    assert sql_execution("", "SELECT count(id) FROM employees;", SQL) == 1.0  # different text, same rows
    assert sql_execution("", "SELECT COUNT(*) FROM employees WHERE salary > 0 AND 0", SQL) == 0.0
    assert sql_execution("", "DROP TABLE employees", SQL) == 0.0  # the sandbox refuses writes
    assert tool_call("", '{"name": "get_weather", "arguments": {"city": "Oslo"}}', TOOL) == 1.0
    assert tool_call("", '{"name": "get_weather", "arguments": {"city": "Bergen"}}', TOOL) == 0.0
    assert correctness("", "42", ARITH) == 1.0 and correctness("", "SELECT COUNT(*) FROM employees", SQL) == 1.0
    with pytest.raises(ValueError, match="arithmetic records only"):
        exact_answer("", "42", SQL)


def test_format_reward_is_about_shape_not_correctness():
    assert format_reward("", "17 + 25 = 43.", ARITH) == 1.0  # wrong answer, right shape
    assert format_reward("", "forty two", ARITH) == 0.0
    assert format_reward("", '{"name": "x", "arguments": {}}', TOOL) == 1.0
    assert format_reward("", '{"name": "x"', TOOL) == 0.0
    assert format_reward("", "SELECT name FROM employees", SQL) == 1.0
    assert format_reward("", "SELEC name FROM", SQL) == 0.0


def test_restate_rewards_copying_the_first_operation_only():
    two_step = {"domain": "arithmetic", "expression": "13 + 9 - 4", "answer": 18}
    assert restate("", "13 + 9 = 22. 22 - 4 = 18.", two_step) == 1.0
    assert restate("", "13 + 9 = 23. 23 - 4 = 19.", two_step) == 1.0  # shaping: wrong result, still copied
    assert restate("", "13 + 8 = 21.", two_step) == 0.0 and restate("", "13 + 90 = 103.", two_step) == 0.0
    assert restate("", "17 + 25 = 42.", {**ARITH, "expression": "17 + 25"}) == 1.0
    assert restate("", "SELECT 1", SQL) == 0.0  # 0 on other domains: addable to `correct` on a mixed batch


def test_parse_reward_weights_and_errors():
    r = parse_reward("correct:1,format:0.25")
    assert r("", "17 + 25 = 42.", ARITH) == 1.25
    assert r("", "17 + 25 = 41.", ARITH) == 0.25
    assert r.parts("", "41", ARITH) == {"correct": 0.0, "format": 0.0}
    assert parse_reward("answer")("", "42", ARITH) == 1.0  # no weight: 1
    with pytest.raises(ValueError, match="unknown reward 'bogus'"):
        parse_reward("correct,bogus:2")
    with pytest.raises(ValueError, match="not a number"):
        parse_reward("correct:x")
    for spec in ("correct:inf", "correct:nan", ""):  # caught when the Config is built, before any model loads
        with pytest.raises(InputError, match="--reward"):
            parse_reward(spec)


def fake_rollout(texts, records, lengths, stopped, T=8):
    N = len(texts)
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    z = torch.zeros(N, T, dtype=torch.long)
    return Rollout(z[:, :2], torch.ones(N, 2, dtype=torch.long), z, mask, torch.zeros(N, T),
                   torch.tensor(stopped), 2, list(texts), list(records))


def test_score_rollout_applies_penalties_and_accepts_any_callable():
    ro = fake_rollout(["42", "41", "17 + 25 = 42.", "42"], [ARITH] * 4, lengths=[2, 2, 8, 4],
                      stopped=[True, True, False, True])
    r, stats = score_rollout(ro, parse_reward("correct:1,format:0.5"), max_new_tokens=8, missing_stop_penalty=1.0,
                             length_penalty=0.5)
    # correct + 0.5 * format - 1.0 * (no stop) - 0.5 * length / 8
    expected = torch.tensor([1 - 0.125, 0 - 0.125, 1 + 0.5 - 1.0 - 0.5, 1 - 0.25])
    torch.testing.assert_close(r, expected)
    assert stats["r_correct"] == 0.75 and stats["r_format"] == 0.25 and stats["stop_rate"] == 0.75
    assert stats["length"] == 4.0

    def shorter_is_better(prompt, completion, record):  # a user's own reward function
        assert prompt == record["prompt"]
        return -len(completion)

    r2, _ = score_rollout(ro, shorter_is_better, max_new_tokens=8)
    assert r2.tolist() == [-2.0, -2.0, -13.0, -2.0]


def test_score_rollout_reports_each_domains_mean_reward_in_a_mixed_batch():
    ro = fake_rollout(["42", "41", "SELECT COUNT(*) FROM employees;", "no"], [ARITH, ARITH, SQL, SQL],
                      lengths=[2, 2, 8, 2], stopped=[True] * 4)
    r, stats = score_rollout(ro, parse_reward("correct:1"), max_new_tokens=8)
    assert r.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert stats["reward/arithmetic"] == 0.5 and stats["reward/sql"] == 0.5
    _, one_domain = score_rollout(fake_rollout(["42"], [ARITH], [2], [True]), parse_reward("correct:1"), 8)
    assert not any(k.startswith("reward/") for k in one_domain)
