"""LoRA: fine-tune a few low-rank matrices instead of every weight (Hu et al. 2021, arXiv:2106.09685).

A linear layer y = W x + b is adapted to

    y = W x + b + (alpha / r) * B A x          A: (r, in), B: (out, r), r << min(in, out)

with W and b frozen. A starts random (Kaiming-uniform, as in the paper's code and PEFT) and B at zero, so at
the first step the adapted model *is* the base model, bit for bit (B A x = 0), and only A and B get gradients.
alpha / r scales the update so that changing r does not change how far one step moves the output (the paper
sets alpha to the first r it tries and leaves it). The nano GPT has 4 blocks x 4 linear layers; with r = 8 the
adapters have 65,536 weights, 7% of its 958,000 (a layer of width d gets r (in + out), its weight in * out:
the share shrinks with the width, and on a large model r = 8..64 is well under 1%).

    model = add_lora(model, rank=8, alpha=16)            # in place: adapters on attention and MLP projections
    ... train: only the A and B matrices have requires_grad ...
    model = merge_lora(model)                            # W <- W + (alpha/r) B A; plain nn.Linear again

The objective files take `--lora-rank 8 --lora-alpha 16 [--lora-targets attn,mlp]`, and their model.pt holds
the *merged* weights (model_checkpoint folds the adapters in with plain_state_dict), so every other command
(evals, the next stage, chat) loads it as any checkpoint; state.pt keeps the adapters, to resume. Left out: dropout on
the adapter input (the paper's lora_dropout) and adapters on embeddings; QLoRA's 4-bit base weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from dataclasses import dataclass

from minipost.common import InputError, field

TARGETS = ("attn", "mlp")  # every linear layer of the attention (qkv, proj) and the MLP (fc, proj)


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus its trainable low-rank update (alpha / rank) * B @ A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        base.requires_grad_(False)
        w = base.weight
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # nn.Linear's own init, as PEFT does for A

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., in) -> (..., out)
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale

    def merged(self) -> nn.Linear:
        """The plain linear layer with the update folded in: W + scale * B A."""
        with torch.no_grad():
            self.base.weight += self.scale * (self.B @ self.A)
        self.base.requires_grad_(True)
        return self.base


def _targeted(name: str, targets) -> bool:
    """A layer is adapted when one of the dotted parts of its name is a target: "attn" matches
    blocks.0.attn.qkv and blocks.0.attn.proj, "qkv" only the first, "fc" the MLP's input layer."""
    return any(t in name.split(".") for t in targets)


def parse_targets(text: str) -> tuple[str, ...]:
    """'attn,mlp' -> ('attn', 'mlp'); the parts a linear layer's name can hold (see _targeted)."""
    allowed = ("attn", "mlp", "qkv", "proj", "fc")
    parts = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in parts if t not in allowed]
    if bad or not parts:
        raise InputError(f"--lora-targets {text!r}: choose among {', '.join(allowed)} (comma-separated)")
    return parts


def add_lora(model: nn.Module, rank: int, alpha: float, targets=TARGETS) -> nn.Module:
    """Freeze every weight of `model` and wrap each targeted nn.Linear in a LoRALinear (in place) -> model."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _targeted(n, targets)]
    if not names:
        raise ValueError(f"no linear layer of the model matches the LoRA targets {targets}")
    full = min(min(model.get_submodule(n).weight.shape) for n in names)  # beyond it B A is no longer low rank
    if rank > full:
        raise ValueError(f"LoRA rank {rank} is more than the smallest targeted layer's full rank {full}: "
                         "the adapter would not be low-rank (and would outgrow the layer)")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    return model


def plain_state_dict(model: nn.Module) -> dict:
    """model.state_dict() with every adapter folded into its weight (W + scale * B A, as merged() computes it)
    under the base model's keys, in its order: what model.pt holds, so that every command loads it. The model
    is unchanged (a resumed run goes on training its adapters); each folded weight is moved to the CPU as it is
    made, so the model's device never holds a second copy of the adapted matrices."""
    adapted = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    state = {}
    for key, value in model.state_dict().items():
        owner, _, part = key.rpartition(".")  # "blocks.0.attn.qkv.base", "weight"; "blocks.0.attn.qkv", "A"
        if owner.endswith(".base") and owner[:-len(".base")] in adapted:
            m = adapted[owner[:-len(".base")]]
            with torch.no_grad():
                state[f"{owner[:-len('.base')]}.{part}"] = (value + m.scale * (m.B @ m.A)).cpu() \
                    if part == "weight" else value
        elif owner not in adapted:  # (the adapters' own A and B are folded in above)
            state[key] = value
    return state


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put the plain nn.Linear back (in place) -> model, whose every
    parameter is trainable again and whose state_dict has the base model's keys."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, m.merged())
    model.requires_grad_(True)
    return model


def trainable(model: nn.Module) -> int:
    """Number of parameters that get gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of what training adds to the weights: their gradients and the optimizer's state (AdamW: two
    moments per trainable parameter). Activations are not counted; they are the same with or without LoRA."""
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)  # one per step
    state = sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values()
                if torch.is_tensor(t))
    return grads + state


@dataclass
class LoRAConfig:
    """The LoRA flags of the objectives that fine-tune a policy (SFT, DPO, the RL files): a Config adds them by
    deriving from this class too, and add_lora_from_flags reads them."""
    lora_rank: int = field(0, "LoRA: adapters of this rank on --lora-targets and every other weight frozen; model.pt "
                           "has them merged (0: full fine-tuning; minipost/lora.py)", min=0)
    lora_alpha: float = field(16.0, "LoRA scale: the update is (alpha / rank) B A", gt=0)
    lora_targets: str = field("attn,mlp", "linear layers that get LoRA adapters: attn, mlp, qkv, proj, fc",
                              check=parse_targets)


def add_lora_from_flags(model: nn.Module, cfg) -> str:
    """add_lora as cfg.lora_rank, cfg.lora_alpha and cfg.lora_targets say (rank 0: nothing) -> a line to print."""
    if not cfg.lora_rank:
        return f"full fine-tuning: every one of the {trainable(model) / 1e6:.3f}M weights trains"
    try:
        add_lora(model, cfg.lora_rank, cfg.lora_alpha, parse_targets(cfg.lora_targets))
    except ValueError as e:  # a flag the model cannot take: one line, before any step
        raise InputError(f"--lora-rank {cfg.lora_rank}: {e}") from None
    total = sum(p.numel() for p in model.parameters())  # (num_params leaves out the position embeddings)
    return (f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g} on {cfg.lora_targets}: "
            f"{trainable(model) / 1e6:.3f}M trainable parameters of {total / 1e6:.3f}M")
