"""Loading and batching: TRL formats, clear errors, loss masks in collate."""
import json

import pytest

from minipost.data import IGNORE, collate, load_chats, load_prefs, load_texts


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


def test_collate_shifts_targets_and_masks_prompt_and_padding():
    # ids with a mask marking which tokens are to be predicted (the response and its end token)
    ex = [([1, 2, 3, 4], [0, 0, 1, 1]), ([5, 6, 7], [0, 1, 1])]
    x, y = collate(ex, pad_id=0)
    assert x.tolist() == [[1, 2, 3], [5, 6, 0]]
    assert y.tolist() == [[IGNORE, 3, 4], [6, 7, IGNORE]]
