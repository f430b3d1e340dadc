"""LoRA (minipost/lora.py): the adapted model is the base model at init, bit for bit; only A and B get
gradients; merging changes no output; SFT and DPO train with --lora-rank, save plain checkpoints, and resume."""
import pytest
import torch

from minipost import lora
from minipost.common import InputError
from minipost.model import GPT, GPTConfig


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def test_at_init_the_adapted_model_is_the_base_model_exactly():
    base, adapted = tiny(), lora.add_lora(tiny(), rank=4, alpha=8)
    idx = torch.randint(0, 50, (3, 16))
    assert torch.equal(base(idx), adapted(idx))
    n = sum(isinstance(m, lora.LoRALinear) for m in adapted.modules())
    assert n == 2 * 4  # qkv, attn.proj, fc, mlp.proj in each of 2 blocks
    # r (in + out) per layer: qkv 16->48, proj 16->16, fc 16->64, proj 64->16
    assert lora.trainable(adapted) == 2 * 4 * (64 + 32 + 80 + 80)


def test_gradients_reach_only_the_adapters_and_b_first():
    model = lora.add_lora(tiny(), rank=4, alpha=8)
    model(torch.randint(0, 50, (2, 16))).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        if name.endswith((".A", ".B")):
            assert p.requires_grad, name
        else:
            assert not p.requires_grad and p.grad is None, name
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(g.abs().sum() == 0 for n, g in grads.items() if n.endswith(".A"))  # B = 0 blocks A's gradient
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.endswith(".B"))


def test_merged_and_unmerged_forward_passes_agree_and_the_keys_are_the_base_models():
    model = lora.add_lora(tiny(), rank=4, alpha=8, targets=("attn",))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                m.B.normal_(0, 0.5)  # as if trained
    idx = torch.randint(0, 50, (3, 16))
    before = model(idx)
    assert not torch.allclose(before, tiny()(idx), atol=1e-3)  # the adapters do change the output
    lora.merge_lora(model)
    assert torch.allclose(model(idx), before, atol=1e-5, rtol=1e-5)
    assert set(model.state_dict()) == set(tiny().state_dict())
    assert all(p.requires_grad for p in model.parameters())


def test_targets_and_rank_are_checked():
    assert lora.parse_targets("attn, mlp") == ("attn", "mlp")
    for bad in ("", "attn,lm_head", "wte"):
        with pytest.raises(InputError, match="--lora-targets"):
            lora.parse_targets(bad)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora.add_lora(tiny(), rank=0, alpha=1)
    lora.add_lora(tiny(), rank=16, alpha=1)  # n_embd 16: full rank is the most an adapter may have
    with pytest.raises(ValueError, match="more than the smallest targeted layer's full rank 16"):
        lora.add_lora(tiny(), rank=17, alpha=1)
    only_fc = lora.add_lora(tiny(), rank=2, alpha=2, targets=("fc",))
    assert [n for n, m in only_fc.named_modules() if isinstance(m, lora.LoRALinear)] == [
        "blocks.0.mlp.fc", "blocks.1.mlp.fc"]


@pytest.mark.parametrize("objective", ["grpo", "reinforce", "ppo"])
def test_the_rl_files_train_lora_adapters_and_save_them_merged(tmp_path, objective):
    """--lora-rank on an RL file: adapters on the policy alone, the rest frozen; model.pt holds plain weights
    in which only the adapted matrices moved."""
    import importlib
    from minipost.checkpoints import load_model, model_checkpoint
    module = importlib.import_module(f"minipost.{objective}")
    torch.manual_seed(0)
    torch.save(model_checkpoint(GPT(GPTConfig(n_layer=1)), "nano", 0), tmp_path / "init.pt")
    module.train(module.Config(init=str(tmp_path / "init.pt"), out=str(tmp_path / "run"), lora_rank=2, max_steps=2,
                               prompts_per_step=2, max_new_tokens=8, eval_limit=1, lr=1e-2, progress=False),
                 reward_fn=lambda prompt, completion, record: len(set(completion)) / 8)  # differs between answers
    before = torch.load(tmp_path / "init.pt", weights_only=True)["model"]
    after = load_model(tmp_path / "run" / "model.pt")[2]["model"]
    assert after.keys() == before.keys()  # merged: no adapter tensors left
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.endswith("weight") and (".attn." in k or ".mlp." in k) for k in moved), moved
