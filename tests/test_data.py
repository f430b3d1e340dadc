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
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'messages' message 0: needs 'role' and 'content'"):
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
    cases = [({"messages": [{"role": "robot", "content": "x"}]}, r"bad.jsonl:1: field 'messages' message 0: role 'robot'"),
             ({"messages": [{"role": "user", "content": 5}]}, r"bad.jsonl:1: field 'messages' message 0: 'content' must be a string"),
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


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


USER = {"role": "user", "content": "What is the capital of Brerkia?"}
SYSTEM = {"role": "system", "content": "Answer briefly."}


def say(text):
    return {"role": "assistant", "content": text}


def test_every_trl_sft_form_gives_the_same_conversation(tmp_path):
    rows = [{"messages": [USER, say("Gubus.")]},
            {"prompt": USER["content"], "completion": "Gubus."},
            {"prompt": [USER], "completion": [say("Gubus.")]},  # conversational prompt-completion
            {"prompt": [USER], "completion": "Gubus."}]  # a plain answer to a conversational prompt
    assert load_chats(write(tmp_path, rows)) == [[USER, say("Gubus.")]] * 4
    with_system = load_chats(write(tmp_path, [{"prompt": [SYSTEM, USER], "completion": [say("Gubus.")]}]))
    assert with_system == [[SYSTEM, USER, say("Gubus.")]]


def test_a_prompts_own_answers_are_context_not_targets(tmp_path):
    """In the prompt-completion forms the completion alone is learned (as TRL's completion-only loss): an
    earlier answer inside a conversational prompt gets no target, in SFT and in a preference pair's scores."""
    import minipost.tokenizer as tokenizer
    from minipost.data import tokenize_chats, tokenize_pairs
    enc = tokenizer.get_tokenizer("nano")
    prompt = [USER, say("Old answer."), {"role": "user", "content": "And now?"}]
    (ids, mask), = tokenize_chats(enc, load_chats(write(tmp_path, [{"prompt": prompt, "completion": "New."}])), 256)
    assert enc.decode([i for i, m in zip(ids, mask) if m]) == "New.<|end|>"
    pair = load_prefs(write(tmp_path, [{"prompt": prompt, "chosen": "New.", "rejected": "Old."}]))
    (chosen, rejected), = tokenize_pairs(enc, pair, 256)
    assert enc.decode([i for i, m in zip(*chosen) if m]) == "New.<|end|>"


def test_every_trl_preference_form_gives_an_explicit_prompt(tmp_path):
    explicit = {"prompt": "The capital of Brerkia is", "chosen": " Gubus.", "rejected": " Zan."}
    implicit = {"chosen": "The capital of Brerkia is Gubus.", "rejected": "The capital of Brerkia is Zan."}
    talk = {"prompt": [USER], "chosen": [say("Gubus.")], "rejected": [say("Zan.")]}
    talk_implicit = {"chosen": [USER, say("Gubus.")], "rejected": [USER, say("Zan.")]}
    rows = load_prefs(write(tmp_path, [explicit, implicit, talk, talk_implicit]))
    picked = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    assert picked[0] == picked[1] == explicit  # the space before the first difference goes with the answers
    assert picked[2] == picked[3] == talk
    shared_answer = {"chosen": [USER, say("Gubus."), USER, say("Yes.")], "rejected": [USER, say("Gubus."), USER,
                                                                                      say("No.")]}
    row = load_prefs(write(tmp_path, [shared_answer]))[0]
    assert row["prompt"] == [USER, say("Gubus."), USER] and row["chosen"] == [say("Yes.")]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Hi", "completion": [say("Yo")]}, r"data.jsonl:1: field 'completion' is a list of messages where "
                                                  r"the record's other fields are not"),
    ({"prompt": [USER], "completion": [USER]}, r"field 'completion' message 0: role 'user'; expected one of "
                                               r"\['assistant'\]"),
    ({"prompt": [USER], "completion": []}, "field 'completion' must be a non-empty list"),
    ({"prompt": [], "completion": "Yo"}, "field 'prompt' must be a non-empty list"),
    ({"prompt": "Hi", "completion": " "}, "field 'completion' is empty"),
    ({"prompt": 3, "completion": "Yo"}, "field 'prompt' must be a string or a list of messages"),
    ({"messages": [USER, {**say("Yo"), "train": False}]}, "field 'messages' message 1: key 'train' is minipost's own"),
    ({"messages": [USER, say("Yo")], "prompt": "x", "completion": 5}, "field 'prompt' beside 'messages'"),
])
def test_an_sft_record_mixing_the_forms_is_one_line(tmp_path, row, message):
    with pytest.raises(InputError, match=message):
        load_chats(write(tmp_path, [row]))


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Q", "chosen": [say("A")], "rejected": [say("B")]}, "field 'chosen' is a list of messages where"),
    ({"prompt": [USER], "chosen": [say("A")], "rejected": "B"}, "field 'rejected' is a string where"),
    ({"chosen": ["a", "b"], "rejected": ["a", "c"]}, "field 'prompt' message 0: needs 'role' and 'content'"),
    ({"prompt": [USER], "chosen": [USER, say("A")], "rejected": [say("B")]}, "field 'chosen' message 0: role 'user'"),
    ({"chosen": [SYSTEM, USER, say("A")], "rejected": [SYSTEM, {**USER, "content": "Other?"}, say("B")]},
     "field 'chosen' message 0: role 'user'"),
    ({"chosen": "Gubus.", "rejected": "Zan."}, "field 'prompt' missing, and 'chosen' and 'rejected' share no "
                                               "beginning"),
    ({"chosen": [say("Gubus.")], "rejected": [say("Zan.")]}, "share no beginning"),
    ({"chosen": "Same answer.", "rejected": "Same answer."}, "hold no two different answers"),
    ({"prompt": "Q", "chosen": "A"}, r"missing field\(s\) \['rejected'\]"),
    ({"prompt": "Q", "chosen": "A", "rejected": "A"}, "data.jsonl:2: fields 'chosen' and 'rejected' are the same"),
    ({"prompt": [USER], "chosen": [{**say("4"), "train": False}], "rejected": [say("5")]}, "key 'train'"),
])
def test_a_preference_record_without_what_it_needs_is_one_line(tmp_path, row, message):
    with pytest.raises(InputError, match=message):
        load_prefs(write(tmp_path, [{"chosen": "x y", "rejected": "x z"}, row]))  # (line 2)


def test_a_pair_whose_answers_render_to_the_same_tokens_is_one_line(tmp_path):
    from minipost.data import tokenize_pairs
    from minipost.tokenizer import get_tokenizer
    row = {"prompt": [USER], "chosen": [say("A")], "rejected": [{**say("A"), "name": "x"}]}  # a key not written
    path = write(tmp_path, [row])
    with pytest.raises(InputError, match="data.jsonl:1: fields 'chosen' and 'rejected' render to the same tokens"):
        tokenize_pairs(get_tokenizer("nano"), load_prefs(path, lines := []), 256, str(path), lines)


def test_dpo_refuses_a_mixed_file_before_anything_is_written(tmp_path, capsys):
    from minipost import dpo
    from minipost.checkpoints import model_checkpoint
    from minipost.harness import main
    from minipost.model import GPT, GPTConfig
    torch.save(model_checkpoint(GPT(GPTConfig(n_layer=1)), "nano", 0), tmp_path / "init.pt")
    data = write(tmp_path, [{"prompt": "Q", "chosen": "A", "rejected": "B"},
                            {"prompt": "Q", "chosen": [say("A")], "rejected": [say("B")]}])
    with pytest.raises(SystemExit) as e:
        main(dpo.train, dpo.Config, dpo.PRESETS, argv=["--init", str(tmp_path / "init.pt"), "--data", str(data),
                                                        "--out", str(tmp_path / "run"), "--progress", "false"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"{data}:2: field 'chosen'" in err
    assert not (tmp_path / "run").exists()
