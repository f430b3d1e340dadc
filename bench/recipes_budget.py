"""The memory budget of each stage of the three recipes in docs/recipes.md, by arithmetic on the shapes
(minipost/bench/memory.py) that the objectives' `--preset hf` runs: float32 weights under CUDA's bf16 autocast,
as the commands load a folder and run it, with autocast's bf16 copies of the weights; GiB; the smallest card of
8, 12, 16, 24 GB that holds it with 10% to spare. Run: python bench/recipes_budget.py"""
from minipost import dpo, grpo, sft
from minipost.bench.memory import SIZES, budget, smallest_card
from minipost.common import ArgumentParser

ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no flags: --help says what it prints

s, d, g = sft.PRESETS["hf"], dpo.PRESETS["hf"], grpo.PRESETS["hf"]
sft_tokens = s["micro_batch_size"] * s["block_size"]  # one forward/backward pass: 4 rows of 512
dpo_tokens = 2 * d["micro_batch_size"] * 64  # chosen and rejected rows of a pass; the identity pairs are ~64 tokens
rollout = (g["prompts_per_step"] * grpo.Config.group_size, 128, g["max_new_tokens"])  # rows, prompt, new tokens
pass_rows = g["micro_batch_size"]
rows = [("SFT Qwen3-0.6B-Base", "Qwen3-0.6B", "sft", dict(tokens=sft_tokens, checkpointing=True)),
        ("  --checkpointing false", "Qwen3-0.6B", "sft", dict(tokens=sft_tokens)),
        ("  + --lora-rank 16", "Qwen3-0.6B", "lora", dict(tokens=sft_tokens, lora_rank=16, checkpointing=True)),
        ("  + --lora-rank 16, --checkpointing false", "Qwen3-0.6B", "lora", dict(tokens=sft_tokens, lora_rank=16)),
        ("DPO Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B", "sft", dict(tokens=dpo_tokens, checkpointing=True)),
        ("  + --lora-rank 16", "Qwen2.5-0.5B", "lora", dict(tokens=dpo_tokens, lora_rank=16, checkpointing=True)),
        ("GRPO Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B", "grpo",
         dict(rollout=rollout, micro_batch=pass_rows, checkpointing=True)),
        ("  --checkpointing false", "Qwen2.5-0.5B", "grpo", dict(rollout=rollout, micro_batch=pass_rows)),
        ("  --logprobs-impl reference (logits whole)", "Qwen2.5-0.5B", "grpo",
         dict(rollout=rollout, micro_batch=pass_rows, checkpointing=True, logprobs="plain")),
        ("  --checkpointing false --logprobs-impl reference", "Qwen2.5-0.5B", "grpo",
         dict(rollout=rollout, micro_batch=pass_rows, logprobs="plain"))]
print(f"{'stage':50s} {'weights':>8s} {'grads':>6s} {'adamw':>6s} {'amp':>5s} {'activ.':>7s} {'logits':>7s} "
      f"{'gen.':>5s} {'total':>6s}  card")
for label, model, mode, kw in rows:
    b = budget(SIZES[model], mode=mode, dtype_bytes=4, amp=True, **kw)
    gen = b["kv_cache"] + b["prefill"]
    print(f"{label:50s} {b['weights']:8.2f} {b['gradients']:6.2f} {b['adamw']:6.2f} {b['amp']:5.2f} "
          f"{b['activations']:7.2f} "
          f"{b['logits']:7.2f} {gen:5.2f} {b['total']:6.2f}  {smallest_card(b['total'], [8, 12, 16, 24])}")
