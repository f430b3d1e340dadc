"""The memory budget of each stage of the three recipes in docs/recipes.md, by arithmetic on the shapes
(minipost/bench/memory.py): float32 weights, as the commands load a folder; GiB; the smallest card of 8, 12, 16,
24 GB that holds it with 10% to spare. Run: python bench/recipes_budget.py"""
from minipost.bench.memory import SIZES, budget, smallest_card
rows = [("SFT Qwen3-0.6B-Base", "Qwen3-0.6B", "sft", dict(tokens=2048)),
        ("  + --checkpointing", "Qwen3-0.6B", "sft", dict(tokens=2048, checkpointing=True)),
        ("  + --lora-rank 16", "Qwen3-0.6B", "lora", dict(tokens=2048, lora_rank=16)),
        ("  + both", "Qwen3-0.6B", "lora", dict(tokens=2048, lora_rank=16, checkpointing=True)),
        ("DPO Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B", "sft", dict(tokens=2 * 4 * 64)),
        ("  + --lora-rank 16", "Qwen2.5-0.5B", "lora", dict(tokens=2 * 4 * 64, lora_rank=16)),
        ("GRPO Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B", "grpo", dict(rollout=(128, 128, 256), micro_batch=8)),
        ("  + --checkpointing", "Qwen2.5-0.5B", "grpo", dict(rollout=(128, 128, 256), micro_batch=8, checkpointing=True)),
        ("  plain log-probs, + --checkpointing", "Qwen2.5-0.5B", "grpo",
         dict(rollout=(128, 128, 256), micro_batch=8, checkpointing=True, logprobs="plain"))]
print(f"{'stage':38s} {'weights':>8s} {'grads':>6s} {'adamw':>6s} {'activ.':>7s} {'logits':>7s} {'gen.':>5s} {'total':>6s}  card")
for label, model, mode, kw in rows:
    b = budget(SIZES[model], mode=mode, dtype_bytes=4, **kw)
    gen = b["kv_cache"] + b["prefill"]
    print(f"{label:38s} {b['weights']:8.2f} {b['gradients']:6.2f} {b['adamw']:6.2f} {b['activations']:7.2f} "
          f"{b['logits']:7.2f} {gen:5.2f} {b['total']:6.2f}  {smallest_card(b['total'], [8, 12, 16, 24])}")
