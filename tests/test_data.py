"""Loading and batching: TRL formats, clear errors, loss masks in collate."""
import json

import pytest

import torch

from minipost.common import InputError
from minipost.data import IGNORE, EpochBatches, collate, load_chats, load_prefs, load_texts


def test_both_sft_formats_load_the_same(tmp_path):
    p = tmp_path / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"prompt": "hi", "completion": "hello"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_chats(p)
    assert a == b


def test_malformed_rows_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"prompt": "x", "completion": "y"}) + "\n" + json.dumps({"prompt": "only"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected 'messages' or 'prompt' \+ 'completion'"):
        load_chats(p)
    p.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field\(s\) \['rejected'\]"):
        load_prefs(p)
    p.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: each message needs 'role' and 'content'"):
        load_chats(p)


def test_plain_text_documents(tmp_path):
    p = tmp_path / "doc.txt"
    p.write_text("first doc\nline two\n\n\nsecond doc\n")
    assert load_texts(p) == ["first doc\nline two", "second doc"]
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())  # a byte-order mark, as some editors save: not a character
    assert load_texts(p) == ["first doc\nline two", "second doc"]


def test_collate_shifts_targets_and_masks_prompt_and_padding():
    # ids with a mask marking which tokens are to be predicted (the response and its end token)
    ex = [([1, 2, 3, 4], [0, 0, 1, 1]), ([5, 6, 7], [0, 1, 1])]
    x, y = collate(ex, pad_id=0)
    assert x.tolist() == [[1, 2, 3], [5, 6, 0]]
    assert y.tolist() == [[IGNORE, 3, 4], [6, 7, IGNORE]]


def test_chat_and_preference_records_are_checked_field_by_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    cases = [({"messages": [{"role": "robot", "content": "x"}]}, r"bad.jsonl:1: message 0 field 'role' is 'robot'"),
             ({"messages": [{"role": "user", "content": 5}]}, r"bad.jsonl:1: message 0 field 'content' must be a string"),
             ({"messages": "hello"}, r"bad.jsonl:1: field 'messages' must be a non-empty list"),
             ({"messages": [{"role": "user", "content": "hi"}]}, r"bad.jsonl:1: no assistant message")]
    for row, msg in cases:
        p.write_text(json.dumps(row) + "\n")
        with pytest.raises(InputError, match=msg):
            load_chats(p)
    p.write_text(json.dumps({"prompt": "x", "chosen": 3, "rejected": "z"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'chosen' must be str or list, got int"):
        load_prefs(p)
    p.write_text(json.dumps({"text": 123}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'text' must be str"):
        load_texts(p)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match=r"empty.txt: no documents"):
        load_texts(tmp_path / "empty.txt")


def test_epoch_batches_cover_each_epoch_and_resume_exactly():
    def old_epoch_batches(n, batch_size, generator):  # the generator function sft.py used before
        order = []
        while True:
            while len(order) < batch_size:
                order += torch.randperm(n, generator=generator).tolist()
            yield order[:batch_size]
            order = order[batch_size:]

    old = old_epoch_batches(10, 4, torch.Generator().manual_seed(3))
    new = EpochBatches(10, 4, seed=3)
    assert [next(old) for _ in range(7)] == [next(new) for _ in range(7)]  # the same batches as before
    one_epoch = EpochBatches(10, 5, seed=1)
    assert sorted(next(one_epoch) + next(one_epoch)) == list(range(10))  # two batches = one epoch, each id once
    state = new.state_dict()
    ahead = [next(new) for _ in range(3)]
    again = EpochBatches(10, 4, seed=99)
    again.load_state_dict(state)
    assert [next(again) for _ in range(3)] == ahead
