"""Rollouts: the sampler's log-probs equal the training pass's, batching changes nothing, masks are right."""
import json

import pytest
import torch
import torch.nn.functional as F

from minipost.model import GPT, GPTConfig
from minipost.rollout import Rollout, completion_logprobs, load_prompts, micro_batches, sample_completions

STOP, PAD = 2, 0
PROMPTS = [[3, 4, 5, 6], [7], [8, 9, 10], [11, 12]]


def make_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=40, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_training_forward_recomputes_the_sampling_logprobs(temperature):
    model = make_model()
    g = torch.Generator().manual_seed(0)
    ro = sample_completions(model, PROMPTS, group_size=3, max_new_tokens=12, temperature=temperature,
                            stop_token=STOP, pad_id=PAD, generator=g)
    with torch.no_grad():
        lp = completion_logprobs(model, ro, temperature=temperature, impl="reference")
    m = ro.completion_mask.bool()
    ratio = torch.exp(lp - ro.logprobs)[m]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=2e-6, rtol=0)  # ratio 1 up to rounding
    assert torch.all(lp[~m] == 0) and torch.all(ro.logprobs[~m] == 0)
    # the wrong temperature must NOT match: the test is sensitive to it
    with torch.no_grad():
        lp1 = completion_logprobs(model, ro, temperature=temperature * 1.5, impl="reference")
    assert (lp1 - ro.logprobs)[m].abs().max() > 1e-2



def test_under_autocast_the_rollout_and_the_training_pass_both_run_in_its_dtype(monkeypatch):
    """What CUDA's bf16 autocast does to a rollout, played on the CPU's: the KV cache is kept in bf16 (the keys
    and values are made in it), and the training pass recomputes the sampler's log-probs up to bf16 rounding,
    in float32; a float32 pass over the same rollout differs from it by more than float32 rounding."""
    import contextlib
    from minipost import model as model_module, rollout
    cache_dtypes = []
    real_cache = model_module.KVCache
    monkeypatch.setattr(model_module, "KVCache", lambda *a: cache_dtypes.append(a[-1]) or real_cache(*a))
    monkeypatch.setattr(rollout, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    model = make_model()
    ro = sample_completions(model, PROMPTS, group_size=2, max_new_tokens=10, stop_token=STOP, pad_id=PAD,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp = completion_logprobs(model, ro, impl="reference")
    monkeypatch.setattr(rollout, "autocast", lambda device: contextlib.nullcontext())
    with torch.no_grad():
        lp32 = completion_logprobs(model, ro, impl="reference")
    m = ro.completion_mask.bool()
    assert cache_dtypes == [torch.bfloat16] and lp.dtype == ro.logprobs.dtype == torch.float32
    torch.testing.assert_close(lp[m], ro.logprobs[m], atol=5e-3, rtol=0)  # (0 here: the same bf16 kernels)
    assert (lp32 - lp)[m].abs().max() > 1e-4  # the autocast pass really ran in bf16

def test_top_k_sampling_keeps_unfiltered_tempered_logprobs():
    model = make_model(1)
    ro = sample_completions(model, PROMPTS, group_size=2, max_new_tokens=8, temperature=0.8, top_k=5, top_p=0.9,
                            stop_token=STOP, pad_id=PAD, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lp = completion_logprobs(model, ro, temperature=0.8)
    m = ro.completion_mask.bool()
    torch.testing.assert_close(lp[m], ro.logprobs[m], atol=2e-6, rtol=1e-6)


def test_groups_are_laid_out_group_after_group_and_masks_end_at_stop():
    model = make_model(2)
    ro = sample_completions(model, PROMPTS, group_size=4, max_new_tokens=10, temperature=1.0,
                            stop_token=STOP, pad_id=PAD, generator=torch.Generator().manual_seed(2))
    assert 0 < int(ro.stopped.sum()) < 16  # both kinds of row occur (a 1-in-40 stop token over 10 steps)
    assert len(ro) == 16 and ro.completion_ids.shape == ro.completion_mask.shape == ro.logprobs.shape
    for i in range(16):  # every row's prompt is the prompt of its group
        p = PROMPTS[i // 4]
        assert ro.prompt_ids[i, -len(p):].tolist() == p and int(ro.prompt_mask[i].sum()) == len(p)
    for row, mask, hit in zip(ro.completion_ids.tolist(), ro.completion_mask.tolist(), ro.stopped.tolist()):
        n = sum(mask)
        assert mask == [1] * n + [0] * (len(mask) - n)  # a prefix of ones
        assert row[n:] == [PAD] * (len(row) - n)
        assert hit == (row[n - 1] == STOP) and STOP not in row[:n - 1]


def test_batched_generation_equals_one_at_a_time():
    model = make_model(3)
    ro = sample_completions(model, PROMPTS, group_size=1, max_new_tokens=10, temperature=0, stop_token=STOP,
                            pad_id=PAD)
    for i, p in enumerate(PROMPTS):
        one = sample_completions(model, [p], group_size=1, max_new_tokens=10, temperature=0, stop_token=STOP,
                                 pad_id=PAD)
        n = int(one.lengths[0])
        assert int(ro.lengths[i]) == n
        assert ro.completion_ids[i, :n].tolist() == one.completion_ids[0, :n].tolist()
        torch.testing.assert_close(ro.logprobs[i, :n], one.logprobs[0, :n], atol=1e-5, rtol=1e-5)


def test_select_keeps_rows_and_widths():
    model = make_model(4)
    ro = sample_completions(model, PROMPTS, group_size=2, max_new_tokens=6, temperature=1.0, stop_token=STOP,
                            pad_id=PAD, generator=torch.Generator().manual_seed(4))
    sub = ro.select(torch.tensor([5, 1]))
    assert torch.equal(sub.completion_ids, ro.completion_ids[[5, 1]])
    assert sub.completion_ids.shape[1] == ro.completion_ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(completion_logprobs(model, sub), completion_logprobs(model, ro)[[5, 1]],
                                   atol=1e-5, rtol=1e-5)


def test_columns_of_padding_cut_from_the_forward_pass_change_nothing():
    torch.manual_seed(5)  # a vocabulary of 8: the stop token is drawn often, so completion lengths differ
    model = GPT(GPTConfig(vocab_size=8, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    ro = sample_completions(model, [[3, 4, 5, 6], [7], [5, 6, 7], [1, 3]], group_size=2, max_new_tokens=10,
                            temperature=1.0, stop_token=STOP, pad_id=PAD, generator=torch.Generator().manual_seed(5))
    assert len(set(ro.lengths.tolist())) > 2
    wide = Rollout(F.pad(ro.prompt_ids, (3, 0), value=PAD), F.pad(ro.prompt_mask, (3, 0)),
                   F.pad(ro.completion_ids, (0, 5), value=PAD), F.pad(ro.completion_mask, (0, 5)),
                   F.pad(ro.logprobs, (0, 5)), ro.stopped, ro.group_size)  # 3 + 5 extra all-padding columns
    with torch.no_grad():
        lp, h = completion_logprobs(model, ro, return_hidden=True)
        lp_wide, h_wide = completion_logprobs(model, wide, return_hidden=True)
        short = ro.select(micro_batches(ro, 4)[0])  # the 4 shortest rows: their own longest row sets the width
        lp_short = completion_logprobs(model, short)
    T = ro.completion_ids.shape[1]
    assert lp_wide.shape == (8, T + 5) and h_wide.shape[:2] == (8, T + 5) and lp_short.shape == (4, T)
    torch.testing.assert_close(lp_wide[:, :T], lp, atol=1e-6, rtol=1e-6)
    m = ro.completion_mask.bool()
    torch.testing.assert_close(h_wide[:, :T][m], h[m], atol=1e-5, rtol=1e-5)
    assert torch.all(lp_wide[:, T:] == 0)
    torch.testing.assert_close(lp_short, lp[micro_batches(ro, 4)[0]], atol=1e-6, rtol=1e-6)


def test_micro_batches_cover_every_row_once_shortest_first():
    model = make_model(6)
    ro = sample_completions(model, PROMPTS, group_size=3, max_new_tokens=10, temperature=1.0, stop_token=STOP,
                            pad_id=PAD, generator=torch.Generator().manual_seed(6))
    chunks = micro_batches(ro, 5)
    assert [len(c) for c in chunks] == [5, 5, 2]
    assert sorted(torch.cat(chunks).tolist()) == list(range(12))
    total = (ro.prompt_mask.sum(dim=1) + ro.lengths)[torch.cat(chunks)]
    assert torch.all(total[1:] >= total[:-1])


def test_load_prompts_filters_domains_and_oversamples(tmp_path):
    path = tmp_path / "rl.jsonl"
    fields = {"arithmetic": {"answer": 4}, "sql": {"answer": "SELECT name FROM employees;"},
              "tools": {"answer": {"name": "get_weather", "arguments": {"city": "Bagar"}}}}
    rows = [{"prompt": f"q{i}", "domain": d, **fields[d]} for i, d in enumerate(["arithmetic", "sql", "sql", "tools"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["prompt"] for r in load_prompts(path, "sql")] == ["q1", "q2"]
    both = load_prompts(path, "", "arithmetic:3")
    assert [r["prompt"] for r in both].count("q0") == 3 and len(both) == 6
    assert len(load_prompts(path, "sql", "sql:1")) == 2
    assert [r["prompt"] for r in load_prompts(path, "sql", "arithmetic:2")] == ["q1", "q2"]  # not added back
    assert len(load_prompts(path, "", " arithmetic : 2 ")) == 5  # spaces are fine
    for bad in ["arithmetic:0", "arithmetic:1.5", "knowledge:2", "arithmetic", "arithmetic:2,arithmetic:3"]:
        with pytest.raises(ValueError, match="oversample"):
            load_prompts(path, "", bad)
    with pytest.raises(ValueError, match="no records"):
        load_prompts(path, "knowledge")


def test_load_prompts_checks_every_record_when_the_file_loads(tmp_path):
    from minipost.common import InputError
    from minipost.tokenizer import get_tokenizer

    path = tmp_path / "rl.jsonl"
    good = {"prompt": "What is 2 + 2?", "domain": "arithmetic", "answer": 4}
    cases = [({"prompt": "q", "domain": "cooking"}, r"rl.jsonl:2: .*domain"),
             ({"prompt": "q", "domain": "arithmetic"}, r"rl.jsonl:2: field 'answer'"),
             ({"prompt": "q", "domain": "sql", "answer": "SELECT nope FROM nowhere"}, r"rl.jsonl:2: field 'answer'"),
             ({"prompt": 7, "domain": "arithmetic", "answer": 4}, r"rl.jsonl:2: .*prompt")]
    for bad, msg in cases:
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(InputError, match=msg):
            load_prompts(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "prompt": "What is 2 + 2? " * 40}) + "\n")
    with pytest.raises(InputError, match=r"rl.jsonl:2: field 'prompt' is \d+ tokens"):
        load_prompts(path, enc=get_tokenizer("nano"), max_prompt_tokens=64)
    assert len(load_prompts(path)) == 2  # without a token budget the long prompt is fine


def test_a_pass_of_a_few_rows_at_a_time_gives_the_same_numbers_bit_for_bit():
    """completion_logprobs(rows=k): the reference's pass in the training pass's micro-batches, so that a real
    vocabulary's logits are never the whole rollout's; every row keeps the rollout's columns, so nothing changes."""
    model = make_model()
    ro = sample_completions(model, PROMPTS, group_size=3, max_new_tokens=12, stop_token=STOP, pad_id=PAD,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = completion_logprobs(model, ro, impl="reference")
        for rows in (1, 5, 12):
            assert torch.equal(completion_logprobs(model, ro, impl="reference", rows=rows), whole)


def test_under_autocast_pi_old_is_the_training_passs_and_the_first_ratio_is_one(monkeypatch):
    """On CUDA (played here on the CPU's bf16 autocast) the KV-cache sampler rounds otherwise than a pass over the
    whole sequence; sample_and_score takes pi_old from a no-grad training pass, so the first update's ratio is 1."""
    from types import SimpleNamespace
    from minipost import rollout
    monkeypatch.setattr(rollout, "autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    def sampled(policy, *args):  # the sampler's log-probs, off by a stand-in for its own rounding
        ro = sample_completions(policy, PROMPTS, group_size=2, max_new_tokens=10, stop_token=STOP, pad_id=PAD,
                                generator=torch.Generator().manual_seed(0))
        ro.logprobs = (ro.logprobs + 0.01) * ro.completion_mask
        return ro
    monkeypatch.setattr(rollout, "rollout_share", sampled)
    monkeypatch.setattr(rollout, "score_rollout", lambda ro, *a, **k: (torch.zeros(len(ro)), {}))
    model = make_model()
    cfg = SimpleNamespace(group_size=2, max_new_tokens=10, temperature=1.0, top_k=0, top_p=1.0, logprobs_impl="auto",
                          micro_batch_size=3, missing_stop_penalty=0.0, length_penalty=0.0)
    ro, ref_logps, _, _ = rollout.sample_and_score(model, model, None, [], None, cfg, None)
    with torch.no_grad():
        lp = completion_logprobs(model, ro, impl="auto")  # the training pass, under the same autocast
    assert torch.equal(ro.logprobs, lp) and torch.equal(ref_logps, lp)  # the policy is its own reference here
