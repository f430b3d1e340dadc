"""The optimizer and learning-rate schedules the objective files share, with explicit arguments.

- `adamw`: AdamW (Loshchilov & Hutter 2019, decoupled weight decay) with decay on 2-D weights only
  (embeddings and matmuls, not biases or LayerNorms), as GPT-2 and nanoGPT do.
- `cosine_lr`: linear warmup to the peak, then cosine decay to a floor (pretraining, SFT, DPO).
- `linear_decay_lr`: straight down from the peak to 0 over the run (the RL files, like TRL's default).

Each objective sets `group["lr"]` itself every step, so the schedule is one visible line in its loop.
"""
from __future__ import annotations

import math

import torch


def adamw(model: torch.nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.95),
          device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on tensors of dim >= 2 only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=device is not None and device.type == "cuda")


def cosine_lr(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to lr over warmup_steps, then cosine decay to lr * min_lr_ratio at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def linear_decay_lr(step: int, *, lr: float, max_steps: int) -> float:
    """lr * (1 - step / max_steps): the first update at the peak, the last ones the smallest."""
    return lr * (1 - step / max_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every parameter group's learning rate to lr; returns lr (to log it)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
