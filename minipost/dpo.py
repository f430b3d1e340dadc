"""Direct Preference Optimization (DPO): learn from pairs "answer A is better than answer B" without a reward
model or RL, by pushing the policy's log-ratio against a frozen reference up on A and down on B.

Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model", eq. 7:

    L_DPO(theta) = - E_(x, y_w, y_l) [ log sigmoid( beta * h ) ]
    h = (log pi_theta(y_w|x) - log pi_ref(y_w|x)) - (log pi_theta(y_l|x) - log pi_ref(y_l|x))

y_w is the chosen (preferred) answer, y_l the rejected one, pi_ref the frozen starting model (here the SFT
model), beta how far from it the policy may move. log pi(y|x) is the *sum* of the response tokens' log-probs
(the <|end|> closing the answer included, exactly the tokens SFT trained on); prompt tokens are context.
The paper's insight: the optimal policy of KL-regularised reward maximisation satisfies
r(x, y) = beta * log pi(y|x)/pi_ref(y|x) + const, so this log-ratio *is* an implicit reward, and L_DPO is the
Bradley-Terry likelihood of the preferences under it. We log it as rewards/chosen and rewards/rejected.

Reading the metrics: at step 0 the policy equals the reference, so every reward is 0 and the loss is
ln 2 = 0.693; rewards/margins (chosen - rejected) should grow and rewards/accuracies (the share of pairs whose
chosen reward is strictly above the rejected one) rise towards 1 (docs/metrics.md).

Loss types (`dpo_loss(..., loss_type=)`), all functions of h:
    sigmoid  -log sigmoid(beta h)                                          DPO (Rafailov et al. 2023)
    ipo      (h - 1 / (2 beta))^2                                          IPO (Azar et al. 2023, eq. 17)
    hinge    max(0, 1 - beta h)                                            SLiC-HF (Zhao et al. 2023)
    robust   ((1 - e) * -log sigmoid(beta h) - e * -log sigmoid(-beta h)) / (1 - 2e)
             an unbiased loss when a fraction e of the labels is flipped   rDPO (Chowdhury et al. 2024)
             (e = `label_smoothing`, used only by robust)

Deviations and choices:
- IPO's h uses summed log-probs, as in the paper's equation (TRL averages over tokens for IPO).
- The reference's log-probs are computed once for every training and held-out pair before training starts
  (the reference never changes), so each step runs only the policy; a resume recomputes the same numbers.
- `batch_size` pairs per optimizer step, in micro-batches of `micro_batch_size` pairs: the loss is a mean over
  pairs (a micro-batch of b pairs weighs b / B) and the NLL term is normalised by the chosen tokens of the
  whole batch, so accumulation is exact, up to float rounding.
- `rpo_alpha` (default 1.0) adds rpo_alpha * (mean per-token NLL of the chosen answers), as in RPO (Pang et al.
  2024, "Iterative Reasoning Preference Optimization", eq. 1): plain DPO only constrains the *difference* of
  log-ratios, so both log-probs can fall together; the NLL term keeps the chosen ones up (measured on nano:
  docs/faq.md, "Why do DPO's chosen log-probs go down?").
- Dropout stays off: the policy's log-probs are compared with the reference's, and noise in one side would
  show up as a fake reward. `--ref` may name another reference with the policy's tokenizer.
- `eval_pref_acc` is the report card's pref_acc (heldout.preference_accuracy) on the first `eval_pairs` held-out
  pairs; samples.txt holds greedy answers to two held-out prompts per domain of the world's eval.jsonl.

What the loop leaves out: torchrun, the run folder, resume, the log/eval/save cadence, the finite checks, the optimizer
step (gradient all-reduce, clip, step) and the outputs go through `run` (minipost/harness/run.py).

Run:  python -m minipost.dpo --init runs/sft/model.pt --out runs/dpo          (nano preset, ~2 min on CPU)
      python -m minipost.dpo --init SFT.pt --data my_prefs.jsonl --loss-type ipo --out runs/my_dpo
      python -m minipost.dpo --init runs/sft/model.pt --out runs/dpo --resume true  (continue from runs/dpo/state.pt)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minipost.common import DATA_DIR, InputError, autocast, check_config, field, read_jsonl
from minipost.data import IGNORE, EpochBatches, load_prefs, num_targets, pair_batch, per_domain, tokenize_pairs
from minipost.harness import Run, RunConfig, logprobs_impl_field, main
from minipost.heldout import pair_logps, preference_accuracy, write_samples
from minipost.lora import LoRAConfig, add_lora_from_flags, trainable, training_bytes
from minipost.checkpoints import load_policy_and_reference, model_checkpoint
from minipost.optim import adamw, cosine_lr, set_lr
from minipost.tokenizer import special_id
from minipost.world import build as build_world

LOSS_TYPES = ["sigmoid", "ipo", "hinge", "robust"]


@dataclass
class Config(LoRAConfig, RunConfig):
    """Direct Preference Optimization on (prompt, chosen, rejected) pairs against a frozen reference.
    The defaults are the nano preset (a laptop CPU, ~2 min); `--preset small` changes only what PRESETS lists."""
    out: str = field("runs/dpo", "output folder: config.json, inputs.json, metrics.jsonl, state.pt, "
                                     "model.pt, samples.txt, summary.json")
    init: str = field("runs/sft/model.pt", "the model to start from (usually the SFT model): a model.pt, or hf:PATH")
    ref: str = field("", "the frozen reference model (default: the init checkpoint); same tokenizer as --init")
    data: str = field("", "preference pairs: JSONL of {'prompt', 'chosen', 'rejected'}, plain or conversational, "
                          "the prompt optional (the answers' shared beginning) (default: the world's)")
    eval_data: str = field("", "held-out pairs for preference accuracy (default: the world's eval_prefs.jsonl)")
    max_pairs: int = field(0, "train on the first N pairs only (0: all); for quick experiments", min=0)
    beta: float = field(0.5, "strength of the pull towards the reference (the KL coefficient)", gt=0)
    loss_type: str = field("sigmoid", "sigmoid (DPO), ipo, hinge or robust", choices=LOSS_TYPES)
    label_smoothing: float = field(0.0, "assumed share of flipped labels, in [0, 0.5); robust loss only", min=0)
    rpo_alpha: float = field(1.0, "weight of an extra per-token NLL on the chosen answers (RPO; 0: plain DPO)",
                             min=0)
    max_steps: int = field(100, "optimizer steps", min=1)
    batch_size: int = field(32, "pairs per optimizer step", min=1)
    micro_batch_size: int = field(0, "pairs per forward/backward (0: the whole batch); exact gradient accumulation",
                                  min=0)
    block_size: int = field(256, "longest prompt + answer in tokens (at most the model's block_size)", min=2)
    lr: float = field(1e-4, "peak learning rate", gt=0)
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of the peak", min=0, max=1)
    warmup_steps: int = field(10, "linear warmup steps", min=0)
    weight_decay: float = field(0.0, "AdamW weight decay on matrices", min=0)
    grad_clip: float = field(1.0, "clip the global gradient norm to this (0: off)", min=0)
    eval_every: int = field(50, "steps between held-out preference-accuracy evaluations (0: only at the end)", min=0)
    eval_pairs: int = field(256, "held-out pairs per evaluation (0: none)", min=0)
    log_every: int = field(5, "steps between metrics.jsonl rows", min=1)
    save_every: int = field(50, "steps between OUT/state.pt saves (for --resume)", min=1)
    logprobs_impl: str = logprobs_impl_field()

    def __post_init__(self):
        check_config(self)
        if self.label_smoothing and self.loss_type != "robust":
            raise InputError(f"--label-smoothing {self.label_smoothing}: only used by --loss-type robust, "
                             f"not {self.loss_type!r}")
        if self.label_smoothing >= 0.5:
            raise InputError(f"--label-smoothing {self.label_smoothing}: must be below 0.5")


PRESETS = {
    "nano": {},
    "small": dict(preset="small", max_steps=200, batch_size=64, block_size=512, lr=5e-5),
    "hf": dict(preset="hf", max_steps=60, batch_size=8, micro_batch_size=4, lr=5e-6, beta=0.1, eval_every=20,
               checkpointing=True),
}


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
             loss_type="sigmoid", label_smoothing=0.0):
    """Per-pair preference losses and implicit rewards. Every input is (B,): summed response log-probs.

    Returns (losses, chosen_rewards, rejected_rewards), each (B,); rewards = beta * (logp - ref_logp),
    detached (they are for logging, not for the gradient). See the module docstring for each loss type.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; use one of {LOSS_TYPES}")
    if label_smoothing and loss_type != "robust":
        raise ValueError(f"label_smoothing={label_smoothing} is only used by loss_type='robust', not {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,) log pi/pi_ref on y_w
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,) log pi/pi_ref on y_l
    h = chosen_logratios - rejected_logratios  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2  # regress h onto a fixed target margin 1/(2 beta): cannot run off
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:  # robust: subtract the loss of the flipped label, rescale so the expectation over flips is unbiased
        e = label_smoothing
        losses = ((1 - e) * -F.logsigmoid(beta * h) - e * -F.logsigmoid(-beta * h)) / (1 - 2 * e)
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def pair_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, float]:
    """What a batch of pairs logs (TRL's names), each a mean over its pairs: all inputs (b,)."""
    return {"loss": losses.mean().item(), "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "logps/chosen": chosen_logps.detach().mean().item(),
            "logps/rejected": rejected_logps.detach().mean().item()}


def train(cfg: Config) -> dict:
    run = Run(cfg, "dpo")  # torchrun ranks, CPU threads, seeds, the run folder: minipost/harness/run.py
    run.shard(cfg.batch_size)  # torchrun: a global batch must split evenly over the processes (checked now)
    device = run.device

    # ---- models: the policy starts as the init checkpoint; the reference is a frozen copy of it (or --ref)
    model, ref_model, enc, ckpt = load_policy_and_reference(cfg.init, cfg.ref, device,
                                                            hint="run SFT first (python -m minipost.sft)")
    block_size = min(cfg.block_size, model.cfg.block_size, ref_model.cfg.block_size)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters from {cfg.init} on {device}; "
          f"reference {cfg.ref or cfg.init}")
    print(add_lora_from_flags(model, cfg))  # --lora-rank > 0: adapters, every other weight frozen
    trainable_params = trainable(model)

    # ---- data: each pair rendered twice with the chat template (prompt + chosen, prompt + rejected)
    pairs, eval_pairs, sample_records = load_pair_data(cfg, enc, block_size)
    pad_id = special_id(enc, "<|pad|>")

    # ---- optimizer and data order; then the run folder (a resume restores them here)
    optimizer = adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device)
    batches = EpochBatches(len(pairs), cfg.batch_size, seed=cfg.seed + 1)  # B pair indices per step
    run.start(model=model, optimizer=optimizer, data=batches)
    eval_acc = run.resumed_value("eval_pref_acc", None)  # the last held-out accuracy, logged every row
    stats = run.resumed_value("stats", {})

    # ---- the reference's log-probs, once: it never changes (a resumed run recomputes the same numbers)
    (ref_chosen, ref_rejected), eval_ref = reference_logps(ref_model, pairs, eval_pairs, pad_id, cfg.logprobs_impl)
    del ref_model

    # ---- the loop
    model.eval()  # dropout off (see the docstring); gradients flow as usual
    for step in run.steps():
        lr = set_lr(optimizer, cosine_lr(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                         min_lr_ratio=cfg.min_lr_ratio))
        idx = next(batches)  # B pair indices, the same on every process
        B = len(idx)
        chosen_tokens = sum(num_targets(pairs[i][0]) for i in idx)  # the whole batch's (every rank's pairs)
        stats = {"loss": 0.0, "nll_loss": 0.0}  # then pair_metrics' keys, each a mean over the batch's pairs
        for mb in run.micro_batches(idx, cfg.micro_batch_size):  # this process's pairs, a micro-batch at a time
            x, y = (t.to(device) for t in pair_batch([pairs[i] for i in mb], pad_id))  # (2b, T), chosen rows first
            b = len(mb)
            weight = b / B  # the loss is a mean over the batch's pairs: this micro-batch's share
            answer = y != IGNORE  # (2b, T) the response tokens
            with autocast(device):
                logp = model.logprobs(x, y.masked_fill(~answer, 0), impl=cfg.logprobs_impl)  # (2b, T)
            logps = (logp * answer).sum(dim=1)  # (2b,) log pi(response | prompt)
            losses, chosen_r, rejected_r = dpo_loss(
                logps[:b], logps[b:], ref_chosen[mb].to(device), ref_rejected[mb].to(device),
                beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)  # (b,) each
            loss = losses.mean() * weight  # logged as `loss`: the DPO term alone
            nll = -logps[:b].sum() / chosen_tokens  # its share of the per-token NLL of the batch's chosen answers
            if cfg.rpo_alpha:  # RPO: also imitate the chosen answers; logged as `nll_loss`
                loss = loss + cfg.rpo_alpha * nll
            run.check(loss, "loss")
            loss.backward()
            stats["nll_loss"] += nll.item()
            for k, v in pair_metrics(losses, chosen_r, rejected_r, logps[:b], logps[b:]).items():
                stats[k] = stats.get(k, 0.0) + v * weight  # this micro-batch's share of the batch mean
        grad_norm = run.optimizer_step(model, optimizer, cfg.grad_clip)
        stats = {k: run.sum(v) for k, v in stats.items()}

        if eval_ref is not None and run.eval_due(cfg.eval_every):
            eval_chosen, eval_rejected = pair_logps(model, eval_pairs, pad_id, impl=cfg.logprobs_impl)  # (M,) each
            run.check(torch.cat([eval_chosen, eval_rejected]), "held-out log-probs")
            eval_acc = preference_accuracy(eval_chosen, eval_rejected, *eval_ref)
        held = {"eval_pref_acc": eval_acc} if eval_pairs else {}  # no held-out pairs: nothing to log
        run.log(**stats, **held, lr=lr, grad_norm=grad_norm, steps_per_s=run.step / run.elapsed)
        run.end_step(eval_pref_acc=eval_acc, stats=stats)

    # ---- the outputs later stages read: model.pt (plain weights: LoRA adapters merged), samples.txt, summary.json
    summary = run.summary(**stats, eval_pref_acc=eval_acc if eval_pairs else None, trainable_params=trainable_params,
                          training_bytes=training_bytes(model, optimizer))
    if run.finish(model_checkpoint(model, ckpt["tokenizer"], run.step), summary=summary,
                  samples=(lambda path: write_samples(model, enc, path, sample_records)) if sample_records else None):
        held = f"held-out preference accuracy {eval_acc:.3f}" if eval_pairs else "no held-out pairs"
        print(f"dpo done: loss {stats['loss']:.3f}, margin {stats['rewards/margins']:.2f}, {held}, "
              f"{summary['steps_per_s']:.2f} steps/s, {run.elapsed:.0f} s on {device}")
    return summary


def reference_logps(ref_model, pairs, eval_pairs, pad_id: int, impl: str):
    """log pi_ref of every training pair's answers and of the held-out ones (None without held-out pairs):
    ((chosen (N,), rejected (N,)), (chosen (M,), rejected (M,)) or None)."""
    t0 = time.time()
    train_ref = pair_logps(ref_model, pairs, pad_id, impl=impl)
    eval_ref = pair_logps(ref_model, eval_pairs, pad_id, impl=impl) if eval_pairs else None
    print(f"{len(pairs)} training pairs, {len(eval_pairs)} held-out pairs; reference log-probs in "
          f"{time.time() - t0:.1f} s")
    return train_ref, eval_ref


def load_pair_data(cfg: Config, enc, block_size: int):
    """The training pairs and the first `eval_pairs` held-out ones, each tokenized twice with the chat template
    (data.tokenize_pairs), and two held-out prompts per domain for samples.txt (none without the world's
    eval.jsonl). Every file is checked here, its line named, before OUT is touched."""
    if not cfg.data and not (DATA_DIR / "prefs.jsonl").exists():
        build_world(DATA_DIR)
    data_path = cfg.data or DATA_DIR / "prefs.jsonl"
    lines, eval_lines = [], []  # each pair's line in its file, for error messages
    rows = load_prefs(data_path, lines)[:cfg.max_pairs or None]
    pairs = tokenize_pairs(enc, rows, block_size, str(data_path), lines)
    eval_path = cfg.eval_data or ("" if cfg.data else DATA_DIR / "eval_prefs.jsonl")
    eval_pairs = tokenize_pairs(enc, load_prefs(eval_path, eval_lines), block_size, str(eval_path),
                                eval_lines)[:cfg.eval_pairs] if (eval_path and cfg.eval_pairs) else []
    sample_path = DATA_DIR / "eval.jsonl"  # samples.txt: greedy answers to a few held-out prompts per domain
    sample_records = per_domain(read_jsonl(sample_path, required={"prompt": str, "domain": str}), 2) if (
        sample_path.exists()) else []
    return pairs, eval_pairs, sample_records


if __name__ == "__main__":
    main(train, Config, PRESETS)
