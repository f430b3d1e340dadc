"""Rollouts: the sampler's log-probs equal the training pass's, batching changes nothing, masks are right."""
import pytest
import torch

from minipost.model import GPT, GPTConfig
from minipost.rollout import completion_logprobs, sample_completions

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
