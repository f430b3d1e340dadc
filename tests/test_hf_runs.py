"""minipost's commands on a Hugging Face folder (hf:PATH), with no download: a tiny random Qwen3 written by
transformers, with a tokenizer trained on the world's texts and a ChatML template (tutorials/_setup.py). The
pipeline post-trains it stage after stage and the card reads every row; a run from it resumes bit for bit; bad
folders and formats are one line before a weight is read."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tutorials"))  # lesson 13's tiny folder

from _setup import tiny_hf_folder  # noqa: E402
from minipost import hf, pipeline, sft  # noqa: E402
from minipost.checkpoints import load_model  # noqa: E402
from minipost.common import InputError, load_checkpoint  # noqa: E402
from minipost.decoder import Decoder  # noqa: E402
from minipost.harness.folder import input_digests  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_hf_folder(tmp_path_factory.mktemp("hf") / "qwen3")


def test_the_pipeline_post_trains_a_folders_model_and_the_card_reads_every_row(tmp_path, folder, monkeypatch):
    lean = {"reward_model": {"max_pairs": 32}, "dpo": {"max_pairs": 32}}
    monkeypatch.setattr(pipeline, "STAGES", {name: (m, parent, {**over, **lean.get(name, {})})
                                             for name, (m, parent, over) in pipeline.STAGES.items()})
    cfg = pipeline.Config(out=str(tmp_path), init=f"hf:{folder}", stages="pretrain,sft,reward_model,dpo,grpo,ppo",
                          max_steps=1, eval_limit=1, progress=False)
    assert cfg.stage_list() == ["sft", "reward_model", "dpo", "grpo", "ppo"]  # the folder's model is the base
    report = pipeline.run(cfg)
    assert list(report) == ["base", "sft", "dpo", "grpo", "ppo"]
    for stage in ("sft", "reward_model", "dpo", "grpo", "ppo"):
        ckpt = load_checkpoint(tmp_path / stage / "model.pt")
        assert ckpt["model_config"]["family"] == "qwen3" and ckpt["tokenizer"] == f"hf:{folder.resolve()}", stage
    model, enc, _ = load_model(tmp_path / "ppo" / "model.pt")
    assert isinstance(model, Decoder) and enc.chat_format.name == "chatml"
    assert not (tmp_path / "pretrain").exists()


def test_a_run_from_a_folder_resumes_bit_for_bit_and_its_input_is_the_folders_files(tmp_path, folder):
    def cfg(out, **kw):
        return sft.Config(init=f"hf:{folder}", out=str(tmp_path / out), max_steps=3, batch_size=4, eval_every=0,
                          eval_windows=2, progress=False, **kw)
    sft.train(cfg("straight"))
    sft.train(cfg("resumed", stop_after=2))
    sft.train(cfg("resumed", resume=True))
    a, b = (load_checkpoint(tmp_path / d / "model.pt")["model"] for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    before = input_digests(cfg("x"))["init"]
    assert input_digests(sft.Config(init=f"hf:{folder}#chatml", out=str(tmp_path / "y")))["init"] != before
    (folder / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text() + " ")
    assert input_digests(cfg("x"))["init"] != before  # a changed folder is another start: reused runs rerun


def test_a_bad_folder_or_format_is_one_line_before_a_weight_is_read(tmp_path, folder, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights read")
    monkeypatch.setattr(hf, "load_hf_model", no_weights)
    for init, message in [(f"hf:{tmp_path}/none", "no such folder"),
                          (f"hf:{folder}#llama3", r"its tokenizer has no <\|begin_of_text\|> token, which llama3"),
                          (f"hf:{folder}#vicuna", "unknown chat format; choose one of chatml, llama3, minipost")]:
        with pytest.raises(InputError, match=message):
            sft.train(sft.Config(init=init, out=str(tmp_path / "out"), max_steps=1, progress=False))
    assert not (tmp_path / "out").exists()


def test_chat_answers_from_a_folder_and_a_reference_of_another_tokenizer_is_refused(tmp_path, folder):
    import subprocess
    import sys
    from minipost import dpo
    from minipost.model import GPT, GPTConfig
    from minipost.checkpoints import model_checkpoint
    r = subprocess.run([sys.executable, "-m", "minipost.chat", "--ckpt", f"hf:{folder}", "--max-new-tokens", "4",
                        "--temperature", "0"], input="What is 7 + 5?\n", capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.endswith("\n") and not r.stderr, r.stderr  # (a random model: any answer)
    nano = tmp_path / "nano.pt"
    torch.save(model_checkpoint(GPT(GPTConfig()), "nano", 0), nano)
    with pytest.raises(InputError, match="the reference must share the policy's"):
        dpo.train(dpo.Config(init=f"hf:{folder}", ref=str(nano), out=str(tmp_path / "dpo"), progress=False))
    assert not (tmp_path / "dpo").exists()


def variant(folder, tmp_path, name, rows=0, nan=False):
    """A copy of the folder, its model given `rows` more output rows than the tokenizer has tokens, or a NaN."""
    import json
    import shutil
    from safetensors.torch import load_file, save_file
    out = tmp_path / name
    shutil.copytree(folder, out)
    weights = load_file(out / "model.safetensors")
    emb = weights["model.embed_tokens.weight"]
    weights["model.embed_tokens.weight"] = torch.cat([emb, torch.randn(rows, emb.shape[1]) * 5])
    if nan:
        weights["model.norm.weight"][0] = float("nan")
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + rows}))
    return out


def test_rows_beyond_the_tokenizer_are_no_logits_and_nan_weights_are_refused(tmp_path, folder):
    model, enc, _ = load_model(f"hf:{variant(folder, tmp_path, 'more_rows', rows=300)}")
    ids = torch.tensor([enc.encode("What is 2 + 2?")])
    assert model.cfg.vocab_size == enc.n_vocab + 300 and model(ids).shape[-1] == enc.n_vocab
    with pytest.raises(InputError, match="tensor 'model.norm.weight' is not finite"):
        sft.train(sft.Config(init=f"hf:{variant(folder, tmp_path, 'nan', nan=True)}", out=str(tmp_path / "o"),
                             max_steps=1, progress=False))
    assert not (tmp_path / "o").exists()


def test_a_model_is_not_used_with_a_changed_tokenizer_nor_compared_with_another_of_the_same_name(tmp_path, folder):
    import shutil
    from minipost.checkpoints import check_same_tokenizer
    copy = tmp_path / "a" / "qwen3"
    shutil.copytree(folder, copy)
    sft.train(sft.Config(init=f"hf:{copy}", out=str(tmp_path / "run"), max_steps=1, batch_size=2, eval_every=0,
                         eval_windows=1, progress=False))
    load_model(tmp_path / "run" / "model.pt")
    config = copy / "tokenizer_config.json"
    config.write_text(config.read_text().replace("<|endoftext|>", "<|im_end|>"))  # another pad token
    with pytest.raises(InputError, match="has changed since the model was trained"):
        load_model(tmp_path / "run" / "model.pt")
    _, ours, _ = load_model(f"hf:{folder}")
    _, theirs, _ = load_model(f"hf:{copy}")  # the same folder name, another tokenizer_config.json
    with pytest.raises(InputError, match="the reference must share the policy's"):
        check_same_tokenizer(ours, theirs, "a", "b")


def test_a_tokenizer_json_of_the_wrong_types_or_with_a_gap_in_its_ids_is_one_line(tmp_path, folder):
    import json
    import shutil
    saved = json.loads((folder / "tokenizer.json").read_text())
    shutil.copytree(folder, tmp_path / "t")
    for change, message in [({"model": "BPE"}, "not a tokenizer.json"),
                            ({"added_tokens": [1, 2]}, "not a tokenizer.json"),
                            ({"added_tokens": [{"id": -5, "content": "<x>", "special": True}]}, "not a tokenizer.json"),
                            ({"added_tokens": saved["added_tokens"] + [{"id": 5000, "content": "<x>", "special": True}]},
                             "token id 700 is no token's"),
                            ({"added_tokens": [{"id": 300, "content": "<x>", "special": True}]},
                             "token id 300 is two tokens'")]:
        (tmp_path / "t" / "tokenizer.json").write_text(json.dumps({**saved, **change}))
        with pytest.raises(InputError, match=message):
            hf.load_hf_tokenizer(tmp_path / "t")


def test_the_three_recipes_run_from_their_hf_presets_and_a_minipost_gpt_is_refused(tmp_path, folder):
    """docs/recipes.md's labs are `--preset hf` on a folder: SFT on chats, DPO on the identity pairs, GRPO on
    GSM8K records. Each takes one step here, its lengths cut to fit the tiny model and the CPU."""
    import json
    from minipost import dpo, grpo
    from minipost.common import config_with_preset
    from minipost.model import GPT, GPTConfig
    from minipost.checkpoints import model_checkpoint
    from minipost.world import identity
    identity.build(tmp_path / "identity", "Nova", "Qwen")
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text("".join(json.dumps({"question": f"Ann has {a} apples and buys {b} more. How many now?",
                                         "answer": f"{a} + {b} = {a + b}.\n#### {a + b}"}) + "\n"
                             for a, b in [(3, 4), (10, 5), (7, 8)]))
    runs = {sft: dict(block_size=64, eval_windows=2),
            dpo: dict(data=str(tmp_path / "identity" / "prefs.jsonl"), max_pairs=8, eval_pairs=4,
                      eval_data=str(tmp_path / "identity" / "eval_prefs.jsonl")),
            grpo: dict(data=str(gsm8k), eval_data=str(gsm8k), prompts_per_step=2, group_size=2, max_new_tokens=4,
                       eval_limit=1)}
    for module, cut in runs.items():
        cfg = config_with_preset(module.Config, module.PRESETS, preset="hf", init=f"hf:{folder}", max_steps=1,
                                 out=str(tmp_path / module.__name__), progress=False, **cut)
        assert cfg.checkpointing and cfg.lr == module.PRESETS["hf"]["lr"] <= 1e-5, module.__name__
        module.train(cfg)
        saved = json.loads((tmp_path / module.__name__ / "config.json").read_text())
        assert saved["preset"] == "hf" and load_checkpoint(tmp_path / module.__name__ / "model.pt")["step"] == 1
    nano = tmp_path / "nano.pt"
    torch.save(model_checkpoint(GPT(GPTConfig()), "nano", 0), nano)
    with pytest.raises(InputError, match=r"--preset hf: the schedule of a Hugging Face model .* one of minipost's own"):
        sft.train(config_with_preset(sft.Config, sft.PRESETS, preset="hf", init=str(nano), out=str(tmp_path / "x"),
                                     progress=False))
    assert not (tmp_path / "x").exists()
