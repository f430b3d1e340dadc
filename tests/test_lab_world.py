"""Tests for the lab's four domains (minipost/world/{policies,updates,region,context}.py, lab.py): deterministic
bytes, the committed data/lab/ is what the code writes, no evaluation item reaches a training split, the
checkers, and a malformed line named by file and line. And minipost/lab.py's pieces that need no training."""

import hashlib
import json
import random
import re
import subprocess
import sys

import pytest

from minipost.common import DATA_DIR, InputError, read_jsonl
from minipost.world import base, context, lab, policies, region, updates
from minipost.world.base import REFUSAL, World

LAB_SHA256 = {
    "context_eval": "60b6d56d89c009eecfb089414384c606c01d218bd16d4a1ce7b4c5be0441daa9",
    "context_sft": "82483e9db6b1d93868057b4c5c4fe0df9a7a2d8713b3d5820a58b3d7c38350b6",
    "kb": "95bdaec0f38f075e74a15de92e548526394c271d0063de3a975f860e8f8a5bfc",
    "policy_eval": "32e321526c90f2b5539e29858bbf930abe77ee8d1e7b1850bc26fe1058848c6d",
    "policy_prefs": "1373d75ced5474dbfe57aaaaff1a91a9eab688332f8177d8655de390738ef711",
    "policy_sft": "348530739608ea36d7f7c259cdde10581d108e1b8bc820e856bf1c7f2ccc04b5",
    "region_eval": "ff050728b233dfd767c46c327226e791b23b278943c597e6b9d2cad2c94cbf51",
    "region_pretrain": "72652f7aef8ca75cf4bdb3fe12097306dfee793fca39e86a2d8723318ffa3345",
    "region_sft": "632538e23f05db69e504faf2a3761eefc8eebd3ab036a5a532225866a6155525",
    "update_docs": "879b346504df77e227229b07b28d8ad43a3462e7e237638d7aa3de3b2cc6e742",
    "update_eval": "80933426055f443122419022773ea433de4c997444f6dcc5d33b6db5ac312fe0",
    "update_sft": "f9bd17b66b399edb7a5f83816f109e132f06f0474044ee07a20aadba69d1aadf",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab")
    paths = lab.build_lab(out, seed=0)
    return {name: lab.load(name, out) for name in paths}, paths


def test_lab_bytes_are_pinned_and_match_the_committed_files(built):
    _, paths = built
    digests = {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in paths.items()}
    assert digests == LAB_SHA256
    committed = {n: hashlib.sha256((DATA_DIR / "lab" / f"{n}.jsonl").read_bytes()).hexdigest() for n in paths}
    assert committed == LAB_SHA256


def _text(row) -> str:
    return json.dumps(row, ensure_ascii=False)


def test_policy_evaluation_topics_are_never_forbidden_in_training(built):
    rows, _ = built
    W = World(random.Random(0))
    train, held = policies.split_pool(random.Random("policies-0"), W)
    assert len(policies.topic_pool(W)) == 184 and len(held) == 61   # far more than refusals' 5 topics
    held_names = {t for t, _ in held}
    eval_topics = set()
    for r in rows["policy_eval"]:
        listed = r["prompt"][0]["content"][len("Do not discuss: "):-1].split(", ")
        eval_topics |= set(listed) | {r["topic"]}
    assert eval_topics <= held_names
    asked_held = 0
    for name in ("policy_sft", "policy_prefs"):
        for r in rows[name]:
            msgs = r["messages"] if "messages" in r else r["prompt"]
            listed = set(msgs[0]["content"][len("Do not discuss: "):-1].split(", "))
            assert not listed & held_names, (name, listed & held_names)
            if r["topic"] in held_names:   # asked about, unlisted, and answered
                assert not r["should_refuse"]
                asked_held += 1
    assert asked_held > 0.2 * (len(rows["policy_sft"]) + len(rows["policy_prefs"]))
    train_prompts = {json.dumps(r["messages"][:2]) for r in rows["policy_sft"]}
    assert not train_prompts & {json.dumps(r["prompt"]) for r in rows["policy_eval"]}


def test_policy_eval_cells_and_training_lengths(built):
    rows, _ = built
    cells = {(r["n_listed"], r["trigger"], r["should_refuse"]) for r in rows["policy_eval"]}
    assert cells == {(n, t, s) for n in policies.LIST_LENGTHS for t in (False, True) for s in (False, True)}
    assert len(rows["policy_eval"]) == 24 * lab.N_POLICY_EVAL_CELL
    lengths = {r["n_listed"] for r in rows["policy_sft"]}
    assert lengths == set(range(1, 31))
    for r in rows["policy_sft"][:200]:  # the gold answer is what the checker wants
        rec = {"topic": r["topic"], "should_refuse": r["should_refuse"]}
        assert policies.check_policies(rec, r["messages"][-1]["content"]) == 1.0


def test_policy_checker():
    listed = {"topic": "mango", "should_refuse": True}
    unlisted = {"topic": "mango", "should_refuse": False}
    assert policies.check_policies(listed, REFUSAL) == 1.0
    assert policies.check_policies(listed, "Mango is a fruit.") == 0.0
    assert policies.check_policies(unlisted, "Mango is a fruit.") == 1.0
    assert policies.check_policies(unlisted, REFUSAL) == 0.0
    assert policies.check_policies(unlisted, "Tennis is a sport.") == 0.0          # another topic
    assert policies.check_policies(unlisted, "mango " * 20) == 0.0                   # not an answer


def test_updates_change_disjoint_quarters_and_eval_phrasings_are_not_trained(built):
    rows, _ = built
    W = World(random.Random(0))
    evals = rows["update_eval"]
    for k in (0, 1, 2):
        now = [r for r in evals if r["update"] == k]
        assert len(now) == 144 * len(updates.EVAL_QUESTIONS)
        assert sum(r["changed"] for r in now) == 36 * k * len(updates.EVAL_QUESTIONS)
    facts = [{(r["country"], r["attribute"]) for r in evals if r["update"] == k and r["changed"]} for k in (1, 2)]
    assert facts[0] < facts[1]      # update 2's table counts update 1's changes too; each update adds 36
    trained_prompts = {r["messages"][0]["content"] for r in rows["update_sft"]}
    assert not trained_prompts & {r["prompt"] for r in evals}
    corpus = " ".join(r["text"] for r in read_jsonl(DATA_DIR / "pretrain.jsonl"))
    for r in evals:
        if r["changed"] and r["attribute"] != "animal":  # new capitals and languages are new names
            assert re.search(rf"\b{r['answer']}\b", corpus) is None
            assert any(r["answer"] in d["text"] and r["country"] in d["text"] for d in rows["update_docs"])
    for k in (1, 2):  # the store of update k holds every fact's value after update k
        store = {r["country"]: r["text"] for r in rows["kb"] if r["store"] == k}
        assert len(store) == len(W.countries)
        for r in evals:
            if r["update"] == k:
                assert f" {r['answer']}." in store[r["country"]]


def test_region_is_absent_from_the_base_corpus_and_held_out_of_chat(built):
    rows, _ = built
    corpus = " ".join(r["text"] for r in read_jsonl(DATA_DIR / "pretrain.jsonl"))
    countries = {r["country"] for r in rows["region_eval"]}
    assert len(countries) == region.N_COUNTRIES
    for c in countries:
        assert re.search(rf"\b{c}\b", corpus) is None
    held = {(r["country"], r["attribute"]) for r in rows["region_eval"] if r["held_out"]}
    assert len(held) == 36
    for r in rows["region_sft"]:
        q = r["messages"][0]["content"]
        assert not any(c in q and re.search(attr_word, q) for c, a in held
                       for attr_word in [{"capital": "capital", "language": "language", "animal": "animal"}[a]])
    region_text = " ".join(r["text"] for r in rows["region_pretrain"])
    for c, a in held:  # the region corpus states every held-out fact
        gold = next(r["answer"] for r in rows["region_eval"] if (r["country"], r["attribute"]) == (c, a))
        assert c in region_text and gold in region_text


def _answers_from_its_passage(r):
    user = r["messages"][0]["content"]
    assert user.startswith("Context: ") and "\n\nQuestion: " in user
    passage = next(p for p in user[9:].split("\n\nQuestion: ")[0].split("\n") if p.startswith(r["country"] + ":"))
    assert f" {r['answer']}." in passage and r["answer"] in r["messages"][1]["content"]


def test_context_rows_answer_from_the_passage_and_eval_values_are_never_trained(built):
    rows, _ = built
    for r in rows["context_sft"][:300]:
        _answers_from_its_passage(r)
    assert 0.7 < sum(r["contradicts"] for r in rows["context_sft"]) / len(rows["context_sft"]) < 0.8
    training = " ".join(_text(r) for name in ("context_sft", "policy_sft", "update_sft", "region_sft")
                        for r in rows[name])
    for r in rows["context_eval"]:
        if r["contradicts"] and r["answer"] not in base.ANIMALS:
            assert re.search(rf"\b{r['answer']}\b", training) is None
    taught = {(r["country"], r["attribute"], r["answer"]) for r in rows["context_sft"]}
    changed = {(r["country"], r["attribute"], r["answer"]) for r in rows["update_eval"] if r["changed"]}
    assert not taught & changed   # reading practice never teaches an update's new value


def test_reading_practice_is_deterministic_and_never_uses_an_evaluation_value(built):
    rows, _ = built
    more = lab.reading_practice(400)
    assert more == lab.reading_practice(400) and len(more) == 400
    for r in more:
        _answers_from_its_passage(r)
    names = [r["answer"] for r in more if r["contradicts"] and r["answer"] not in base.ANIMALS]
    new = set(names)
    assert len(names) > 150 and len(new) == len(names)   # a fresh name in each: the reader must copy them
    evaluated = {r["answer"] for name in ("context_eval", "update_eval", "region_eval") for r in rows[name]}
    assert not new & evaluated
    assert not new & {r["answer"] for r in rows["context_sft"]}
    changed = {(r["country"], r["attribute"], r["answer"]) for r in rows["update_eval"] if r["changed"]}
    assert not {(r["country"], r["attribute"], r["answer"]) for r in more} & changed


def test_a_malformed_lab_line_names_file_line_and_field(tmp_path):
    folder = tmp_path / "lab"
    folder.mkdir()
    good = (DATA_DIR / "lab" / "policy_eval.jsonl").read_text(encoding="utf-8").splitlines()
    bad = json.loads(good[1])
    bad["prompt"] = bad["prompt"][1:]   # the system turn lost
    (folder / "policy_eval.jsonl").write_text("\n".join([good[0], json.dumps(bad)]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"policy_eval.jsonl:2: field 'prompt'"):
        lab.load("policy_eval", tmp_path)
    bad = json.loads(good[1])
    bad["should_refuse"] = not bad["should_refuse"]
    (folder / "policy_eval.jsonl").write_text("\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"policy_eval.jsonl:3: field 'should_refuse'"):
        lab.load("policy_eval", tmp_path)
    (folder / "context_eval.jsonl").write_text('{"prompt": "Context: x", "answer": ""}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"context_eval.jsonl:1: field 'answer'"):
        lab.load("context_eval", tmp_path)
    (folder / "context_sft.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"context_sft.jsonl:1: no assistant message"):
        lab.load("context_sft", tmp_path)


def test_rag_prompt_drops_passages_that_do_not_fit_and_refuses_a_question_that_does_not():
    from minipost.lab import fit_rag_prompt
    from minipost.tokenizer import get_tokenizer, render_prompt
    enc = get_tokenizer("nano")
    passages = [context.article(f"Land{i}", {"capital": "Tarsk", "language": "Zekish", "animal": "fox"})
                for i in range(3)]
    q = "What is the capital of Land0?"
    full = fit_rag_prompt(enc, passages, q, 10_000)
    assert full == context.rag_prompt(passages, q)
    n_two = len(render_prompt(enc, context.rag_prompt(passages[:2], q)))
    assert fit_rag_prompt(enc, passages, q, n_two) == context.rag_prompt(passages[:2], q)   # the worst one dropped
    assert fit_rag_prompt(enc, passages, q, len(render_prompt(enc, q))) == q
    with pytest.raises(InputError, match="does not fit the model's context"):
        fit_rag_prompt(enc, passages, "why " * 300, 200)


@pytest.mark.parametrize("flags, message", [
    (["--parts", "policies,nope"], "--parts 'policies,nope'"),
    (["--parts", "updates,updates"], "distinct parts"),
    (["--rag-k", "4"], "--rag-k"),
    (["--pipeline", "/nonexistent/run"], "run `python -m minipost.pipeline"),
])
def test_lab_refuses_bad_flags_in_one_line(flags, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minipost.lab", "--out", str(tmp_path / "o"), *flags],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_the_skills_part_reads_the_pipelines_card_stage_by_stage(tmp_path):
    from minipost.card import write_report
    from minipost.lab import Config, part_skills, table
    items = {"base": {"sql": [0.0] * 10, "instructions": [0.0] * 10, "tools": [0.0] * 10},
             "sft": {"sql": [1.0] * 6 + [0.0] * 4, "instructions": [1.0] * 5 + [0.0] * 5, "tools": [1.0] * 10}}
    write_report(items, tmp_path / "report", parents={"sft": "base"})
    (tmp_path / "timings.json").write_text('{"sft": 12.4}', encoding="utf-8")
    got = part_skills(Config(pipeline=str(tmp_path), parts="skills"), {}, {})["rows"]["sft"]
    assert got["sql"]["acc"] == 60 and got["instructions"]["acc"] == 50 and got["seconds"] == 12.4
    assert got["sql"]["lo"] < 60 < got["sql"]["hi"] and got["parent"] == "base"
    row = table({"skills": {"rows": {"sft": got}}, "config": {}}).splitlines()[2]
    assert "sql 60% [" in row and "12 s of training" in row and "tools +100" in row and "sql +" not in row
    (tmp_path / "timings.json").write_text("{not json", encoding="utf-8")   # optional: a bad one is only a cost left out
    assert "seconds" not in part_skills(Config(pipeline=str(tmp_path), parts="skills"), {}, {})["rows"]["sft"]


@pytest.mark.parametrize("name, edit, message", [
    ("kb", lambda r: r.pop("store"), "kb.jsonl:1: field 'store'"),
    ("update_eval", lambda r: r.pop("changed"), "update_eval.jsonl:1: field 'changed'"),
    ("policy_eval", lambda r: r.pop("trigger"), "policy_eval.jsonl:1: field 'trigger'"),
    ("context_eval", lambda r: r.update(contradicts="yes"), "context_eval.jsonl:1: field 'contradicts'"),
    ("policy_prefs", lambda r: r.update(chosen=5), "policy_prefs.jsonl:1: field 'chosen'"),
])
def test_a_lab_line_missing_a_field_the_lab_reads_is_refused(name, edit, message, tmp_path):
    (tmp_path / "lab").mkdir()
    rows = read_jsonl(DATA_DIR / "lab" / f"{name}.jsonl")[:3]
    edit(rows[0])
    (tmp_path / "lab" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(message)):
        lab.load(name, tmp_path)


def test_the_lab_refuses_a_reward_model_or_a_too_long_prompt_before_any_work(tmp_path, monkeypatch):
    import torch
    from minipost import lab as lab_cmd
    from minipost.common import save_checkpoint
    from minipost.model import GPT, GPTConfig, PRESETS
    from minipost.checkpoints import model_checkpoint
    from minipost.tokenizer import get_tokenizer
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=get_tokenizer("nano").n_vocab, **PRESETS["nano"]))
    for stage in ("pretrain", "sft", "dpo"):
        save_checkpoint(tmp_path / "p" / stage / "model.pt", model_checkpoint(model, "nano", 0))
    save_checkpoint(tmp_path / "p" / "sft" / "model.pt", model_checkpoint(model, "nano", 0, kind="reward_model"))
    cfg = lab_cmd.Config(out=str(tmp_path / "o"), pipeline=str(tmp_path / "p"), parts="updates")
    with pytest.raises(InputError, match="sft/model.pt is a reward model"):
        lab_cmd.preflight(cfg)
    save_checkpoint(tmp_path / "p" / "sft" / "model.pt", model_checkpoint(model, "nano", 0))
    long = [{"prompt": "why " * 400, "answer": "x", "contradicts": True}]
    real = lab_cmd.world_lab.load
    monkeypatch.setattr(lab_cmd.world_lab, "load", lambda name: long if name == "context_eval" else real(name))
    with pytest.raises(InputError, match=r"context_eval.jsonl:1: field 'prompt': longer than the 224 tokens"):
        lab_cmd.preflight(cfg)
    assert not (tmp_path / "o").exists()


def _fake_pipeline(folder, seed: int):
    """Random weights standing in for the pipeline's pretrain, sft and dpo checkpoints, and a card for skills."""
    import torch
    from minipost.common import save_checkpoint
    from minipost.card import write_report
    from minipost.model import GPT, GPTConfig, PRESETS
    from minipost.checkpoints import model_checkpoint
    from minipost.tokenizer import get_tokenizer
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=get_tokenizer("nano").n_vocab, **PRESETS["nano"]))
    for stage in ("pretrain", "sft", "dpo"):
        save_checkpoint(folder / stage / "model.pt", model_checkpoint(model, "nano", 0))
    write_report({"base": {"sql": [0.0] * 4}, "sft": {"sql": [1.0] * 4}}, folder / "report", parents={"sft": "base"})


def test_a_finished_lab_run_is_reused_only_for_its_data_and_start_and_refusals_touch_nothing(tmp_path, monkeypatch):
    from minipost import lab as lab_cmd
    _fake_pipeline(tmp_path / "p", seed=0)
    out = tmp_path / "o"
    smoke = dict(out=str(out), pipeline=str(tmp_path / "p"), max_steps=1, eval_limit=1)
    lab_cmd.run_lab(lab_cmd.Config(parts="policies", **smoke))
    lab_cmd.run_lab(lab_cmd.Config(parts="skills", **smoke))   # one part now: the other keeps its results
    saved = json.loads((out / "lab.json").read_text())
    assert saved["skills"]["rows"]["sft"]["sql"]["acc"] == 100 and "policy SFT" in saved["policies"]["curves"]
    files = {p: p.read_bytes() for p in [out / "lab.json", *out.glob("data/*"), *out.glob("policies/*/*")]}

    def refused(message, **flags):
        with pytest.raises(InputError, match=message):
            lab_cmd.run_lab(lab_cmd.Config(**{**smoke, "parts": "policies", **flags}))
        assert {p: p.read_bytes() for p in files} == files  # nothing rewritten: no data file, no run, no result
    real = lab_cmd.world_lab.load
    monkeypatch.setattr(lab_cmd.world_lab, "load", lambda name, *a: real(name, *a)[1:] if name == "policy_sft" else real(name, *a))
    refused(r"policies/sft holds a finished policies/sft run trained from another data file than the one it is given "
            r"now \(.*policy_sft_mix.jsonl, made from .*lab/policy_sft.jsonl, .*sft.jsonl\); rerun with --fresh true")
    monkeypatch.setattr(lab_cmd.world_lab, "load", real)
    _fake_pipeline(tmp_path / "p2", seed=1)
    refused(r"policies/sft holds a finished policies/sft run of another config \(init: .*p/sft/model.pt' -> .*p2/sft",
            pipeline=str(tmp_path / "p2"))
    sft = (tmp_path / "p" / "sft" / "model.pt").read_bytes()
    (tmp_path / "p" / "sft" / "model.pt").write_bytes((tmp_path / "p2" / "sft" / "model.pt").read_bytes())
    refused(r"policies/sft holds a finished policies/sft run trained from another checkpoint")   # same path, new weights
    (tmp_path / "p" / "sft" / "model.pt").write_bytes(sft)
    (out / "lab.png").unlink()
    (out / "lab.png").mkdir()
    refused(r"--out .*/o: .*/o/lab.png is a folder; the lab writes a file there")
    (out / "lab.png").rmdir()
    (out / "policies" / "sft_dpo" / "inputs.json").unlink()
    files.pop(out / "policies" / "sft_dpo" / "inputs.json")
    refused(r"policies/sft_dpo holds a finished policies/sft_dpo run, but no readable .*inputs.json records")
    lab_cmd.run_lab(lab_cmd.Config(parts="policies", fresh=True, **smoke))  # the way out the messages name
    assert (out / "policies" / "sft_dpo" / "inputs.json").is_file()
    dpo_before = (out / "policies" / "sft_dpo" / "model.pt").read_bytes()
    for f in ("model.pt", "state.pt"):
        (out / "policies" / "sft" / f).unlink(missing_ok=True)   # policies/sft trains again: sft_dpo follows
    lab_cmd.run_lab(lab_cmd.Config(parts="policies", **smoke))
    assert (out / "policies" / "sft_dpo" / "previous" / "model.pt").read_bytes() == dpo_before
    lab_cmd.run_lab(lab_cmd.Config(parts="skills", **{**smoke, "seed": 7}))  # another seed: policies not kept
    assert "policies" not in json.loads((out / "lab.json").read_text())
    lab_cmd.run_lab(lab_cmd.Config(parts="policies", **smoke))
    (tmp_path / "p" / "dpo" / "model.pt").write_bytes((tmp_path / "p2" / "dpo" / "model.pt").read_bytes())
    lab_cmd.run_lab(lab_cmd.Config(parts="skills", **smoke))  # the pipeline's weights changed: policies not kept
    assert "policies" not in json.loads((out / "lab.json").read_text())
