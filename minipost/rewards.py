"""Rewards for online RL: the synthetic world's checkers (verifiable rewards), and a learned reward model.

A reward function here is any callable

    reward(prompt: str, completion: str, record: dict) -> float

where `completion` is the decoded answer without the stop token and `record` the rl.jsonl row it answers
(its "domain" and checker fields, e.g. "answer"). Pass your own to any objective's `train()` through
`score_rollout`, or name built-in ones with weights on the command line: `--reward correct:1,format:0.1`.

Built-in rewards (all 0 or 1):
    correct   world.check: the domain's checker, whatever the domain (the default)
    answer    arithmetic: the last integer equals the answer              (GSM8K-style exact answer)
    sql       sql: the query runs in a sandboxed SQLite and returns the gold rows   (execution match)
    tool      tools: the JSON call has the gold name and arguments         (BFCL-style call match)
    restate   arithmetic: the answer starts by restating the problem's first operation ("13 + 9 = ..."), a
              shaping term (partial credit for reading the operands right), right result or not; 0 for
              every other domain. The nano RL presets use correct:1,restate:0.3: the model's typical
              arithmetic error is a miscopied operand ("3 + 7" -> "3 + 1 = 4"), and a two-step problem
              is rarely solved outright, so without it most arithmetic groups score all 0 and teach nothing
    format    the answer has the domain's shape, right or wrong: arithmetic ends "= <integer>.", tools is a
              JSON object with "name" and "arguments", sql is a query that runs, gsm8k states a final
              number (#### N or \boxed{N}), otherwise non-empty text

A learned reward, `rm:PATH` (or `rm:PATH:W` with a weight): the score of a reward model trained by
`python -m minipost.reward_model` (RLHF as in InstructGPT), composable with the terms above.

Sequence-level penalties, applied by `score_rollout` after the weighted sum:
    missing_stop_penalty  subtracted when a completion hit max_new_tokens without <|end|> (a truncated
                          answer should never look as good as a finished one; PPO in InstructGPT-style
                          setups uses the same trick)
    length_penalty        subtracted times (completion length / max_new_tokens), to discourage padding
                          answers with tokens (off by default: the checkers already reward short answers)
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import torch

from minipost.common import InputError, autocast, load_checkpoint
from minipost.checkpoints import load_model
from minipost.tokenizer import render_chat, special_id
from minipost.world import check, check_arithmetic, check_sql, check_tools, gsm8k, run_sql

RewardFn = Callable[[str, str, dict], float]


def correctness(prompt: str, completion: str, record: dict) -> float:
    """The world's checker for record["domain"], 0.0 or 1.0."""
    return check(record, completion)


def _only(domain: str, record: dict, name: str) -> None:
    if record.get("domain") != domain:
        raise ValueError(f"reward {name!r} scores {domain} records only, got domain {record.get('domain')!r} "
                         f"(use 'correct' for mixed domains)")


def exact_answer(prompt: str, completion: str, record: dict) -> float:
    """Arithmetic: the last integer in the completion equals record["answer"]."""
    _only("arithmetic", record, "answer")
    return check_arithmetic(record, completion)


def sql_execution(prompt: str, completion: str, record: dict) -> float:
    """SQL: the completion, executed on a fresh sandboxed database, returns the gold query's rows."""
    _only("sql", record, "sql")
    return check_sql(completion, record["answer"])


def tool_call(prompt: str, completion: str, record: dict) -> float:
    """Tools: the completion parses as {"name", "arguments"} matching the gold call."""
    _only("tools", record, "tool")
    return check_tools(record, completion)


def restate(prompt: str, completion: str, record: dict) -> float:
    """Arithmetic: 1.0 if the completion begins with the first operation of record["expression"] and "=".

    "13 + 9 - 4" -> the answer should start "13 + 9 =" (the world's worked form). Shaping only: it rewards
    copying the operands, a step towards the right answer, and is never the quantity we evaluate. 0.0 for
    other domains, so it can be added to `correct` on a mixed batch.
    """
    if record.get("domain") != "arithmetic":
        return 0.0
    first = re.match(r"\s*-?\d+\s*[-+*]\s*-?\d+", record["expression"])
    return float(first is not None and completion.strip().startswith(first.group(0).strip() + " ="))


def format_reward(prompt: str, completion: str, record: dict) -> float:
    """1.0 if the answer has its domain's shape (correct or not), see the module docstring."""
    text = completion.strip()
    domain = record.get("domain")
    if domain == "arithmetic":
        return float(re.search(r"=\s*-?\d+\.?$", text) is not None)
    if domain == "tools":
        try:
            call = json.loads(text)
        except ValueError:
            return 0.0
        return float(isinstance(call, dict) and set(call) == {"name", "arguments"})
    if domain == "sql":
        return float(run_sql(text) is not None)
    if domain == "gsm8k":  # a final number stated as GSM8K's graders read it: #### N or \boxed{N}
        return gsm8k.has_final_answer(text)
    return float(any(ch.isalpha() for ch in text))


REWARDS: dict[str, RewardFn] = {"correct": correctness, "answer": exact_answer, "sql": sql_execution,
                                "tool": tool_call, "restate": restate,
                                "format": format_reward}


class ModelReward:
    """A learned reward: a reward model's score r(prompt, completion) (RewardModel, below), named on the
    command line as `rm:PATH` (weight 1) or `rm:PATH:W`. Unlike the checkers it can be fooled: RL maximises
    what the model scores, not what is right (tutorial 10). Loaded on first use; `batch` scores a rollout at
    once on the policy's device."""

    def __init__(self, path: str):
        check_reward_model(path)  # refused now, with the path named, not when the first batch is scored
        self.path, self.model = path, None

    def batch(self, prompts: list, completions: list[str], records: list[dict], device="cpu") -> list[float]:
        if self.model is None:
            self.model = RewardModel(self.path, device)
        return self.model(prompts, completions).tolist()

    def __call__(self, prompt: str, completion: str, record: dict) -> float:
        return self.batch([prompt], [completion], [record])[0]


class WeightedReward:
    """sum_i w_i * reward_i(prompt, completion, record); `parts()` returns each unweighted term for logging,
    `batch_parts()` the same for many answers at once (a ModelReward scores them in one batch)."""

    def __init__(self, terms: dict[str, tuple[RewardFn, float]]):
        if not terms:
            raise ValueError("a reward needs at least one term")
        self.terms = terms

    def parts(self, prompt: str, completion: str, record: dict) -> dict[str, float]:
        return {name: float(fn(prompt, completion, record)) for name, (fn, _) in self.terms.items()}

    def batch_parts(self, prompts: list, completions: list[str], records: list[dict], device="cpu") -> list[dict]:
        columns = {name: (fn.batch(prompts, completions, records, device) if isinstance(fn, ModelReward) else
                          [float(fn(p, c, r)) for p, c, r in zip(prompts, completions, records)])
                   for name, (fn, _) in self.terms.items()}
        return [{name: float(v[i]) for name, v in columns.items()} for i in range(len(completions))]

    def __call__(self, prompt: str, completion: str, record: dict) -> float:
        parts = self.parts(prompt, completion, record)
        return sum(w * parts[name] for name, (_, w) in self.terms.items())


MAX_WEIGHT = 1e6  # any reward scale fits; a sum of terms stays far from float32's overflow (3.4e38)


def parse_weight(spec: str, name: str, w: str) -> float:
    try:
        weight = float(w) if w else 1.0
    except ValueError:
        raise InputError(f"--reward {spec!r}: weight {w!r} of {name!r} is not a number") from None
    if not (math.isfinite(weight) and abs(weight) <= MAX_WEIGHT):
        raise InputError(f"--reward {spec!r}: weight {w!r} of {name!r} must be a finite number of size at most "
                         f"{MAX_WEIGHT:g}")
    return weight


def parse_reward(spec: str) -> WeightedReward:
    """"correct:1,format:0.1" -> WeightedReward. A name without a weight gets weight 1. A bad spec is an
    InputError naming the flag (the RL configs check it before anything loads)."""
    terms = {}
    for item in spec.split(","):
        name, _, w = item.strip().partition(":")
        if name in terms:
            raise InputError(f"--reward {spec!r}: {name!r} is given twice; give each term once, with its weight")
        if name == "rm":  # rm:PATH or rm:PATH:W
            path, _, last = w.rpartition(":")
            path, w = (path, last) if path and _is_number(last) else (w, "")
            if not path:
                raise InputError(f"--reward {spec!r}: 'rm' needs a path, as in rm:runs/reward_model/model.pt")
            weight = parse_weight(spec, name, w)
            try:
                terms[name] = (ModelReward(path), weight)
            except InputError as e:
                raise InputError(f"--reward {spec!r}: {e}") from None
            continue
        if name not in REWARDS:
            raise InputError(f"--reward {spec!r}: unknown reward {name!r}; built-in rewards are {sorted(REWARDS)}")
        terms[name] = (REWARDS[name], parse_weight(spec, name, w))
    return WeightedReward(terms)


def _is_number(text: str) -> bool:
    """Does `text` read as a float (nan and inf too, so that rm:PATH:nan is refused as a weight)?"""
    try:
        float(text)
        return True
    except ValueError:
        return False


def token_rewards(scores, logps, ref_logps, mask, beta: float) -> torch.Tensor:
    """Per-token reward: -beta * (log pi - log pi_ref) on every token, plus the score at each row's last token.

    scores (B,), logps / ref_logps / mask (B, T) -> (B, T), 0 where mask is 0.
    """
    mask = mask.to(logps.dtype)  # (B, T)
    rewards = -beta * (logps - ref_logps) * mask  # (B, T) k1 KL penalty, in the log-probs' dtype
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last completion token
    score = scores.to(rewards.dtype)[:, None] * (mask.sum(dim=1, keepdim=True) > 0)  # (B, 1), 0 for empty rows
    return rewards.scatter_add(1, last[:, None], score)


def zero_spread(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups have rewards that are all equal (their group-relative advantages are all 0: no learning
    signal). rewards (B,) laid out group after group -> (B / group_size,) bool; a group of 1 has no spread."""
    r = rewards.view(-1, group_size)
    return r.amax(dim=1) == r.amin(dim=1)


def check_reward_domains(reward_fn, records: list[dict], spec: str) -> None:
    """Try the reward on one record of each domain being trained on (an empty answer), so a term that scores
    one domain only (sql, tool, answer, restate) is refused now, with the flag named, not hours into the run."""
    for rec in {r["domain"]: r for r in records}.values():
        try:
            reward_fn(rec["prompt"], "", rec)
        except ValueError as e:
            raise InputError(f"--reward {spec!r}: {e}; the prompts include domain {rec['domain']!r} "
                             "(narrow them with --domains)") from None


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13): 0 up to max_tokens - buffer
    tokens, then falling linearly to -1 at max_tokens (and -1 beyond). lengths (N,) -> (N,) float, <= 0."""
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_tokens - buffer)) / buffer  # (N,) how far into the buffer
    return -over.clamp(min=0.0, max=1.0)


def score_rollout(ro, reward_fn: RewardFn, max_new_tokens: int, missing_stop_penalty: float = 0.0,
                  length_penalty: float = 0.0, overlong_buffer: int = 0, gather=list) -> tuple[torch.Tensor, dict]:
    """Score every row of a Rollout -> (rewards (N,) float32, stats for the log).

    Penalties subtracted from the reward: missing_stop_penalty if a row never emitted its stop token,
    length_penalty * length / max_new_tokens, and with overlong_buffer DAPO's overlong_penalty.

    stats: reward mean/std, each named term's mean (for a WeightedReward), stop rate, mean completion length,
    and in a batch of several domains each domain's mean reward ("reward/sql", ...): the weighted total with
    penalties, like "reward", so shaping terms make domains' values not comparable with each other.
    `gather(list) -> list` joins the lists of every process the stats are over (torchrun: dist.all_gather_lists).
    """
    if not ro.records or len(ro.records) != len(ro):
        raise ValueError("score_rollout needs a Rollout made by rollout() (with texts and records)")
    rewards, parts = [], []
    if isinstance(reward_fn, WeightedReward):
        parts = reward_fn.batch_parts([rec["prompt"] for rec in ro.records], ro.texts, ro.records,
                                      ro.completion_ids.device)
        rewards = [sum(w * p[n] for n, (_, w) in reward_fn.terms.items()) for p in parts]
    else:
        rewards = [float(reward_fn(rec["prompt"], text, rec)) for text, rec in zip(ro.texts, ro.records)]
    r = torch.tensor(rewards, dtype=torch.float32)  # (N,)
    lengths = ro.lengths.float().cpu()  # (N,)
    stopped = ro.stopped.cpu()
    r = r - missing_stop_penalty * (~stopped).float() - length_penalty * lengths / max_new_tokens
    if overlong_buffer:
        r = r + overlong_penalty(lengths, max_new_tokens, overlong_buffer)
    stats = rollout_stats(torch.tensor(gather(r.tolist()), dtype=torch.float32), torch.tensor(gather(stopped.tolist())),
                          torch.tensor(gather(lengths.tolist())), gather(parts),
                          gather([rec.get("domain", "") for rec in ro.records]))
    return r.to(ro.completion_ids.device), stats


def rollout_stats(r: torch.Tensor, stopped: torch.Tensor, lengths: torch.Tensor, parts: list[dict],
                  domains: list[str]) -> dict:
    """score_rollout's stats from every row's reward, stop flag, length, reward terms and domain."""
    stats = {"reward": r.mean().item(), "reward_std": r.std().item() if len(r) > 1 else 0.0,
             "stop_rate": stopped.float().mean().item(), "length": lengths.mean().item()}
    for name in (parts[0] if parts else {}):
        stats[f"r_{name}"] = sum(p[name] for p in parts) / len(parts)
    if len(set(domains)) > 1:  # a mixed batch: each domain's mean reward too
        for d in sorted(set(domains)):
            stats[f"reward/{d}"] = r[torch.tensor([x == d for x in domains])].mean().item()
    return stats


# ----------------------------------------------------------------------------------------------------------------
# a learned reward: the checkpoint minipost.reward_model trains, scoring answers (rm:PATH, the card's judge)

KIND = "reward_model"  # the checkpoint's "kind": what RewardModel checks before scoring with it


def sequence_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences -> ids (N, T) right-padded with pad_id, and last (N,): each row's last real position."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)


def reward_scores(model, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """r(x, y) for each row: the value head on the final hidden state at the row's last real token.
    ids (N, T) right-padded, last (N,) -> (N,) float32. The output layer is skipped (logits_to_keep=0)."""
    device = next(model.parameters()).device
    with autocast(device):
        _, h = model(ids.to(device), return_hidden=True, logits_to_keep=0)  # (N, T, C)
    last = last.to(device)
    return model.values(h[torch.arange(len(last), device=device), last][:, None])[:, 0]  # (N,)


@torch.no_grad()
def pair_rewards(model, pairs: list[tuple], pad_id: int, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of tokenized pairs (data.tokenize_pairs) -> (chosen (N,), rejected (N,)), float32 on the CPU."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        r = reward_scores(model, *sequence_batch([c[0] for c, _ in chunk] + [r[0] for _, r in chunk], pad_id)).cpu()
        chosen.append(r[:len(chunk)])
        rejected.append(r[len(chunk):])
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def check_reward_model(path, ckpt: dict | None = None) -> None:
    """Refuse anything that is not a reward model's checkpoint (minipost.reward_model), with the path named.
    `ckpt`: the checkpoint already loaded from `path` (else it is read here)."""
    if ckpt is None and not Path(path).is_file():
        raise InputError(f"{path}: no such reward model; train one with python -m minipost.reward_model")
    kind = (ckpt if ckpt is not None else load_checkpoint(path, required=("model",))).get("kind")
    if kind != KIND:
        raise InputError(f"{path}: not a reward model (its kind is {kind!r}, not {KIND!r}); train one with "
                         "python -m minipost.reward_model")


class RewardModel:
    """A trained reward model, to score answers: RewardModel(path)(prompts, completions) -> (N,) rewards.
    A prompt is a user message (a string) or a list of messages; a completion is the assistant's answer text."""

    def __init__(self, path, device="cpu", batch_size: int = 64):
        if not Path(path).is_file():
            check_reward_model(path)  # the "no such reward model" message
        self.model, self.enc, ckpt = load_model(path, device, policy=False)
        check_reward_model(path, ckpt)
        self.model.requires_grad_(False)
        self.pad_id, self.batch_size, self.path = special_id(self.enc, "<|pad|>"), batch_size, str(path)

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list[str]) -> torch.Tensor:
        block = self.model.cfg.block_size
        seqs = []
        for p, c in zip(prompts, completions):
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            seqs.append(render_chat(self.enc, msgs + [{"role": "assistant", "content": c}])[0][-block:])
        out = [reward_scores(self.model, *sequence_batch(seqs[s:s + self.batch_size], self.pad_id)).float().cpu()
               for s in range(0, len(seqs), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)
