"""Rollouts: the policy answers a batch of prompts, `group_size` samples each, with the KV cache.

Online RL alternates two phases. This file is the first: *sample* completions y ~ pi(. | x), score them
(`sample_and_score`: the rewards of rewards.py, and the reference's log-probs of the same tokens) and keep what
the update needs; under torchrun each rank samples its share of the groups. Every objective (reinforce.py,
grpo.py, ppo.py) then computes log pi(y_t | x, y_<t) again with gradients, through `completion_logprobs` below.

Layout of one rollout batch of N = (number of prompts) * group_size rows, group after group
(rows 0..G-1 are the G samples of prompt 0, and so on; `rewards.view(-1, G)` gives one row per prompt):

    prompt_ids      (N, P)  left-padded prompts, so every prompt ends in column P-1
    completion_ids  (N, T)  sampled tokens, right-padded with <|pad|> after the stop token
    completion_mask (N, T)  1 on sampled tokens up to and including the stop token <|end|>, 0 after
    logprobs        (N, T)  log pi_old(y_t) at sampling time, under the *temperature-scaled* distribution,
                            before top-k / top-p filtering (0 where the mask is 0)

The sampler's log-probs and a training forward pass must agree: the first PPO/GRPO update has ratio
pi / pi_old = 1 exactly (up to float rounding). Two things make that true, and tests check both:
- the training pass runs the same tokens with the same attention mask (left-padded prompt, completion
  padding masked out), so positions and attended keys are those the KV cache saw;
- it divides logits by the same temperature (`token_logprobs(..., temperature=T)`). Top-k / top-p change
  *which* tokens can be drawn but the log-prob we keep is that of the unfiltered tempered softmax, the same
  quantity the training pass computes (as in TRL and OpenRLHF); with filtering on, the sampler is then
  slightly off-policy, a known, usually harmless, mismatch.
Under CUDA's bf16 autocast the KV-cache sampler (one token at a time) rounds otherwise than a pass over the
whole sequence, so `sample_and_score` takes pi_old from a no-grad training pass there, and the ratio is 1 again.

Shape legend: N rows (prompts x group_size), P prompt columns, T completion columns, V vocabulary,
C channels.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field

import torch
import torch.nn.functional as F

from minipost import dist
from minipost.common import DATA_DIR, InputError, autocast, field, read_jsonl
from minipost.data import per_domain
from minipost.harness import RunConfig, logprobs_impl_field
from minipost.lora import LoRAConfig, add_lora_from_flags
from minipost.model import left_pad
from minipost.checkpoints import load_model
from minipost.rewards import check_reward_domains, parse_reward, score_rollout, zero_spread
from minipost.tokenizer import render_prompt, special_id
from minipost.world import build as build_world, gsm8k, validate_record
from minipost.world.registry import PROMPT_ONLY



@dataclass
class RolloutConfig(LoRAConfig, RunConfig):
    """The fields the three RL objectives share: which prompts, which reward, how the answers are sampled (and
    the LoRA flags: adapters on the policy)."""
    data: str = field("", "RL prompts, JSONL: {'prompt', 'domain', the checker's fields}, GSM8K's {'question', "
                          "'answer'}, or TRL's prompt-only {'prompt'} (a reward model scores those) (default: the "
                          "world's rl.jsonl)")
    eval_data: str = field("", "held-out prompts in the same form (default: the world's eval.jsonl)")
    domains: str = field("", "comma-separated domains to train on (empty: all)")
    oversample: str = field("arithmetic:2", "domain:k,... repeats that domain's prompts k times (empty: none)")
    reward: str = field("correct:1,restate:0.3", "reward terms name:weight, see rewards.py (correct, answer, sql, "
                                                 "tool, restate, format)", check=parse_reward)
    missing_stop_penalty: float = field(0.0, "subtracted from the reward of a completion without <|end|>", min=0)
    length_penalty: float = field(0.0, "subtracted times completion length / max_new_tokens", min=0)
    prompts_per_step: int = field(16, "prompts per rollout batch", min=1)
    max_new_tokens: int = field(48, "longest completion", min=1)
    temperature: float = field(1.0, "sampling temperature (the log-probs use the same one)", gt=0)
    top_k: int = field(0, "sample from the k most likely tokens only (0: off)", min=0)
    top_p: float = field(1.0, "nucleus sampling mass (1: off)", gt=0, max=1)
    eval_limit: int = field(100, "held-out prompts per domain for the held-out evaluations (0: all)", min=0)
    logprobs_impl: str = logprobs_impl_field()


@dataclass
class Rollout:
    """One batch of sampled completions (see the module docstring for shapes)."""
    prompt_ids: torch.Tensor  # (N, P)
    prompt_mask: torch.Tensor  # (N, P)
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T)
    logprobs: torch.Tensor  # (N, T) float32, log pi_old at sampling time
    stopped: torch.Tensor  # (N,) bool: the completion ended with the stop token
    group_size: int = 1
    texts: list[str] = dc_field(default_factory=list)  # decoded completions, stop token removed
    records: list[dict] = dc_field(default_factory=list)  # the record each row answers (repeated G times)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """Completion lengths in tokens, stop token included. -> (N,)"""
        return self.completion_mask.sum(dim=1)

    def select(self, idx: torch.Tensor) -> "Rollout":
        """Rows `idx` (a minibatch); column widths stay the same, so per-token tensors keep shape (n, T)."""
        rows = idx.tolist()
        return Rollout(self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx],
                       self.completion_mask[idx], self.logprobs[idx], self.stopped[idx], self.group_size,
                       [self.texts[i] for i in rows] if self.texts else [],
                       [self.records[i] for i in rows] if self.records else [])


@torch.no_grad()
def sample_completions(model, prompts: list[list[int]], group_size: int = 1, max_new_tokens: int = 64,
                       temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                       stop_token: int | None = None, pad_id: int = 0,
                       generator: torch.Generator | None = None, enc=None,
                       records: list[dict] | None = None, rows_of: tuple[int, int] | None = None) -> Rollout:
    """Sample `group_size` completions for each token prompt in one batched, KV-cached generate() call.

    temperature 0 is greedy (then `logprobs` are under the untempered softmax); RL sampling uses T > 0.
    With `enc`, the Rollout also holds the decoded texts (stop token removed); with `records`, the record
    each row answers (one per prompt, repeated group_size times). rows_of: see GPT.generate (torchrun).
    """
    device = next(model.parameters()).device
    repeated = [p for p in prompts for _ in range(group_size)]  # group after group
    prompt_ids, prompt_mask = left_pad(repeated, pad_id, device)  # (N, P) each
    was_training = model.training
    model.eval()  # no dropout while sampling: the log-probs we keep must be reproducible
    with autocast(device):  # CUDA: bf16 matmuls and a bf16 KV cache, as the training pass's matmuls
        tokens, mask, logps = model.generate(prompt_ids, prompt_mask, max_new_tokens=max_new_tokens,
                                             temperature=temperature, top_k=top_k, top_p=top_p,
                                             stop_token=stop_token, pad_id=pad_id, generator=generator,
                                             rows_of=rows_of)  # (N, T) x3
    model.train(was_training)
    if stop_token is None:
        stopped = torch.zeros(len(repeated), dtype=torch.bool, device=device)
    else:
        last = (mask.sum(dim=1) - 1).clamp(min=0)  # (N,) index of each row's last sampled token
        stopped = tokens.gather(1, last[:, None]).squeeze(1) == stop_token  # (N,)
    texts = [] if enc is None else [enc.decode(row[:n - 1] if hit else row[:n]) for row, n, hit in zip(
        tokens.tolist(), mask.sum(dim=1).tolist(), stopped.tolist())]
    rows = [r for r in records for _ in range(group_size)] if records is not None else []
    return Rollout(prompt_ids, prompt_mask, tokens, mask, logps.float(), stopped, group_size, texts, rows)


def rollout(model, enc, records: list[dict], group_size: int, max_new_tokens: int = 64, temperature: float = 1.0,
            top_k: int | None = None, top_p: float | None = None,
            generator: torch.Generator | None = None, rows_of: tuple[int, int] | None = None) -> Rollout:
    """Chat-template each record's "prompt", sample `group_size` answers per prompt, decode them.

    Stops at <|end|> (the chat template's end of turn); `texts` hold the answers without it.
    """
    for i, r in enumerate(records):
        if "prompt" not in r:
            raise ValueError(f"record {i} has no 'prompt' field (fields: {sorted(r)})")
    return sample_completions(model, [render_prompt(enc, r["prompt"]) for r in records], group_size,
                              max_new_tokens, temperature, top_k, top_p, stop_token=special_id(enc, "<|end|>"),
                              pad_id=special_id(enc, "<|pad|>"), generator=generator, enc=enc, records=records,
                              rows_of=rows_of)


def rollout_share(model, enc, prompts: list[dict], group_size: int, max_new_tokens: int, temperature: float,
                  top_k: int | None, top_p: float | None, generator: torch.Generator, ranks: dist.Ranks) -> Rollout:
    """rollout() of this rank's share of the prompts (all of them in one process), whole groups per rank so
    that group advantages need no communication, sampled with the random draws one process would use for
    these rows (GPT.generate rows_of, dist.skip_draws): 1 or N processes sample the same answers."""
    mine = dist.shard(len(prompts), ranks, "--prompts-per-step")
    rows_of = (mine.start * group_size, len(prompts) * group_size) if ranks.world > 1 else None
    ro = rollout(model, enc, prompts[mine], group_size, max_new_tokens, temperature, top_k, top_p,
                 generator=generator, rows_of=rows_of)
    if rows_of and temperature:
        dist.skip_draws(generator, ro.completion_ids.shape[1], rows_of[1], ranks)
    return ro


@torch.no_grad()
def complete(model, enc, prompts: list[list[int]], max_new_tokens: int, stop_token: int | None,
             batch_size: int = 64, temperature: float = 0.0) -> tuple[list[str], list[bool]]:
    """Generate for many token prompts in left-padded batches -> (texts without the stop token, stopped?), in
    the order given. Prompts are batched by length (less padding); greedy by default, as every eval is."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
    results = {}
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ro = sample_completions(model, [prompts[i] for i in idx], 1, max_new_tokens, temperature,
                                stop_token=stop_token, pad_id=special_id(enc, "<|pad|>"), enc=enc)
        for i, text, hit in zip(idx, ro.texts, ro.stopped.tolist()):
            results[i] = (text, hit)
    return [results[i][0] for i in range(len(prompts))], [results[i][1] for i in range(len(prompts))]


def scored_sequences(ro: Rollout):
    """What the training pass reads: prompt + completion minus its last token, the columns that are padding in
    every row cut -> (ids (N, p+t-1), attention mask (N, p+t-1), p prompt columns, t completion columns)."""
    p = max(int(ro.prompt_mask.sum(dim=1).max()), 1)  # prompt columns in use (prompts are left-padded)
    t = max(int(ro.completion_mask.sum(dim=1).max()), 1)  # completion columns in use (completions are right-padded)
    ids = torch.cat([ro.prompt_ids[:, -p:], ro.completion_ids[:, :t]], dim=1)[:, :-1]  # (N, p+t-1)
    attn = torch.cat([ro.prompt_mask[:, -p:], ro.completion_mask[:, :t]], dim=1)[:, :-1]  # (N, p+t-1)
    return ids, attn, p, t


def completion_logprobs(model, ro: Rollout, temperature: float = 1.0, impl: str = "auto",
                        return_hidden: bool = False, entropy: bool = False, rows: int | None = None):
    """log pi(y_t | x, y_<t) for every completion token, by one ordinary (differentiable) forward pass.

    The input is prompt + completion minus its last token; the logits at column P-1+t predict completion
    token t. Returns (N, T) float32 log-probs (0 where completion_mask is 0); with `entropy` also each token's
    entropy under the policy (N, T), the metric RL logs; with `return_hidden` the final hidden states at the
    same columns (N, T, C): the state *before* token t, which PPO's critic scores. `rows`: that many rows a
    forward pass (the same numbers: every row keeps the whole rollout's columns), so that a real vocabulary's
    logits are never the whole rollout's at once on the plain path.

    Columns that are padding in *every* row are cut before the forward pass (left of the longest prompt, right
    of the longest completion) and the (N, T) layout is restored after: a micro-batch of 13-token answers
    costs a 13-token forward even when another row of the rollout ran to 48. Exact, since padding is masked
    out of attention and positions count real tokens only; see micro_batches for grouping rows by length.
    """
    T = ro.completion_ids.shape[1]
    ids, attn, p, t = scored_sequences(ro)  # (N, p+t-1) each
    targets, n = ro.completion_ids[:, :t], rows or max(len(ids), 1)  # (N, t); rows a pass
    with autocast(ids.device):  # CUDA: bf16 matmuls; the log-probs come out float32
        outs = [model.logprobs(ids[s:s + n], targets[s:s + n], attn[s:s + n], temperature=temperature, impl=impl,
                               entropy=entropy, return_hidden=True) for s in range(0, max(len(ids), 1), n)]
    logps, *ent, hidden = (torch.cat(x) if len(outs) > 1 else x[0] for x in zip(*outs))
    # logps (N, t): the last t columns predict the completion; ent: [their entropy (N, t)] or []
    hidden = hidden[:, p - 1:]  # (N, t, C): those columns' final hidden states
    logps = F.pad(logps, (0, T - t)) * ro.completion_mask  # (N, T); padding contributes exactly 0
    extras = [F.pad(e, (0, T - t)) * ro.completion_mask for e in ent] + \
        ([F.pad(hidden, (0, 0, 0, T - t))] if return_hidden else [])
    return (logps, *extras) if extras else logps


def completion_values(critic, batch_rollout) -> torch.Tensor:
    """The critic's V(s_t) for the state before each completion token -> (B, T), 0 where the mask is 0.

    The same forward pass as completion_logprobs (prompt + completion minus its last token, columns that are
    padding in every row cut), keeping only the final hidden states: no output layer, no log-softmax.
    """
    T = batch_rollout.completion_ids.shape[1]
    ids, attn, p, t = scored_sequences(batch_rollout)  # (B, p+t-1) each
    with autocast(ids.device):  # CUDA: bf16 matmuls
        _, hidden = critic(ids, attn, return_hidden=True, logits_to_keep=0)  # (B, p+t-1, C), no logits
        values = critic.values(hidden[:, p - 1:]).float()  # (B, t): the state before completion token 0, 1, ...
    return F.pad(values, (0, T - t)) * batch_rollout.completion_mask  # (B, T)


def concat_rollouts(parts: list[tuple[Rollout, torch.Tensor, torch.Tensor]], pad_id: int):
    """Stack (rollout, per-token tensor (n, T_k), per-row tensor (n,)) triples row-wise -> the same triple.

    Widths may differ between parts: prompts are left-padded to the widest, completions and the per-token
    tensor right-padded (pad_id for ids, 0 for masks and log-probs), which changes no masked computation.
    """
    P = max(ro.prompt_ids.shape[1] for ro, _, _ in parts)
    T = max(ro.completion_ids.shape[1] for ro, _, _ in parts)
    left = lambda x, value: F.pad(x, (P - x.shape[1], 0), value=value)  # noqa: E731
    right = lambda x, value: F.pad(x, (0, T - x.shape[1]), value=value)  # noqa: E731
    ros = [ro for ro, _, _ in parts]
    ro = Rollout(torch.cat([left(r.prompt_ids, pad_id) for r in ros]),
                 torch.cat([left(r.prompt_mask, 0) for r in ros]),
                 torch.cat([right(r.completion_ids, pad_id) for r in ros]),
                 torch.cat([right(r.completion_mask, 0) for r in ros]),
                 torch.cat([right(r.logprobs, 0.0) for r in ros]),
                 torch.cat([r.stopped for r in ros]), ros[0].group_size, [t for r in ros for t in r.texts],
                 [x for r in ros for x in r.records])
    return ro, torch.cat([right(x, 0.0) for _, x, _ in parts]), torch.cat([y for _, _, y in parts])


def micro_batches(ro: Rollout, size: int, by_length: bool = True) -> list[torch.Tensor]:
    """Row indices in chunks of `size`, for gradient accumulation: rows of similar length together, or in
    rollout order (by_length False).

    For a loss that is a mean over rows, or over the whole batch's tokens, which rows share a micro-batch never
    changes the accumulated gradient (each micro-batch's loss is weighted by its share of the batch), only the
    cost: short rows together let completion_logprobs cut more padding. Rows are sorted by prompt + completion
    length, a proxy: the cost is the longest prompt plus the longest completion of the micro-batch. A token mean
    *per micro-batch* (GRPO's bnpo) does depend on the grouping: it takes the rows in rollout order, as TRL does.
    """
    if not by_length:
        return [torch.arange(s, min(s + size, len(ro))) for s in range(0, len(ro), size)]
    order = (ro.prompt_mask.sum(dim=1) + ro.lengths).argsort(stable=True)  # (N,) shortest first
    return [order[s:s + size] for s in range(0, len(ro), size)]


# ----------------------------------------------------------------------------------------------------------------
# prompts in: the RL records, checked when the file loads

def load_prompts(path, domains: str = "", oversample: str = "", enc=None,
                 max_prompt_tokens: int | None = None) -> list[dict]:
    """RL records (rl.jsonl / eval.jsonl rows: "prompt", "domain" and checker fields, or GSM8K's {"question",
    "answer"}, world/gsm8k.py) of the named domains.

    domains: comma-separated, e.g. "arithmetic" or "arithmetic,sql"; empty keeps every domain.
    oversample: "domain:k,..." lists each record of that domain k times (k >= 1, an integer), so an epoch over
        the prompts, and so every batch on average, holds k times as many of them. A way to spend more of a
        fixed budget on one skill while the other domains' rewards keep them from drifting. A domain that
        `domains` leaves out is not added back.
    Every record is checked as the file loads (world.validate_record: prompt, known domain, checker fields, a
    gold SQL query that runs), and with `enc` and `max_prompt_tokens` its chat-templated prompt length: a bad
    record stops the run now with file:line, not when it is first sampled hours later.
    """
    lines = []
    records = read_jsonl(path, lines=lines)
    # GSM8K's {"question", "answer"} rows become prompts of domain gsm8k; TRL's prompt-only rows ({"prompt"}
    # alone, a string or messages) get the domain "prompts", which a reward model scores (rm:PATH)
    records = [gsm8k.to_rl_record(r, f"{path}:{n}") if gsm8k.is_gsm8k(r) else r for n, r in zip(lines, records)]
    for lineno, r in zip(lines, records):
        if "prompt" in r and "domain" not in r:
            if "answer" in r:  # not prompt-only: a checker is wanted
                raise InputError(f"{path}:{lineno}: field 'domain' missing: a record with an 'answer' names the "
                                 "domain whose checker reads it (TRL's prompt-only rows hold a 'prompt' alone)")
            r["domain"] = PROMPT_ONLY
        missing = [k for k in ("prompt", "domain") if k not in r]
        if missing:
            raise InputError(f"{path}:{lineno}: missing field(s) {missing}; has {sorted(r)}")
        problem = validate_record(r)
        if problem:
            raise InputError(f"{path}:{lineno}: {problem}")
        if enc is not None and max_prompt_tokens is not None:
            n = len(render_prompt(enc, r["prompt"]))
            if n > max_prompt_tokens:
                raise InputError(f"{path}:{lineno}: field 'prompt' is {n} tokens in the chat template; at most "
                                 f"{max_prompt_tokens} leave room for the answer (block_size - max_new_tokens)")
    wanted = {d.strip() for d in domains.split(",") if d.strip()}
    if domains.strip() and not wanted:
        raise InputError(f"--domains {domains!r}: no domain named (leave it empty for every domain)")
    kept = [r for r in records if not wanted or r["domain"] in wanted]
    if not kept:
        raise InputError(f"{path}: no records of domain(s) {sorted(wanted)}; "
                         f"it has {sorted({r['domain'] for r in records})}")
    repeats = {}
    for item in filter(None, (s.strip() for s in oversample.split(","))):
        name, _, k = (x.strip() for x in item.partition(":"))
        if not k.isdigit() or int(k) < 1 or name not in {r["domain"] for r in records} or name in repeats:
            raise InputError(f"--oversample {item!r}: expected domain:k with k an integer >= 1, each domain once, "
                             f"domains among {sorted({r['domain'] for r in records})} (--oversample '' repeats none; "
                             "the default repeats the world's arithmetic)")
        repeats[name] = int(k)
    for name, k in repeats.items():
        kept += [r for r in kept if r["domain"] == name] * (k - 1)  # nothing if `domains` left it out
    return kept


def load_rl_prompts(data, eval_data, *, domains: str, oversample: str, prompts_per_step: int, enc,
                    block_size: int, max_new_tokens: int, model_path, reward_fn=None,
                    reward_spec: str = "") -> tuple[list[dict], list[dict]]:
    """The training and held-out prompts of an RL run, every record checked now -> (records, eval_records).

    A prompt may take at most block_size - max_new_tokens tokens (room for a whole answer); the training file
    must hold at least one batch of prompts; with reward_fn, the reward must score every domain the prompts
    hold (rewards.check_reward_domains; reward_spec names the flag). The held-out records keep every domain's
    items (cut them with data.per_domain)."""
    room = block_size - max_new_tokens  # longest prompt that leaves room for a whole answer
    if room < 1:
        raise InputError(f"--max-new-tokens {max_new_tokens}: {model_path} has block_size {block_size}, which "
                         "leaves no room for a prompt")
    records = load_prompts(data, domains, oversample, enc, room)
    eval_records = load_prompts(eval_data, domains, "", enc, room)
    if any(r["domain"] == PROMPT_ONLY for r in eval_records):
        raise InputError(f"--eval-data {eval_data}: held-out prompts are scored by their domain's checker; "
                         "prompt-only records (no domain) train with a reward model, and cannot be scored here")
    if len(records) < prompts_per_step:
        raise InputError(f"--prompts-per-step {prompts_per_step}: only {len(records)} prompts to train on")
    if reward_fn is not None:  # a term that scores one domain only, with prompts of others: refused now
        check_reward_domains(reward_fn, records + eval_records, reward_spec)
    return records, eval_records

def load_policy_and_prompts(cfg: RolloutConfig, device, reward_fn):
    """What an RL run starts from, every input checked before anything is written -> (policy, ref, enc, ckpt,
    records, eval_records): the policy to train (cfg.init), a frozen copy of it (the reference), its tokenizer
    and checkpoint, the training prompts and the held-out ones (cfg.eval_limit per domain). The world's files
    are built first when a default prompt file is missing."""
    if not (cfg.data and cfg.eval_data) and not (DATA_DIR / "rl.jsonl").exists():
        build_world(DATA_DIR)
    policy, enc, ckpt = load_model(cfg.init, device)
    records, eval_records = load_rl_prompts(
        cfg.data or DATA_DIR / "rl.jsonl", cfg.eval_data or DATA_DIR / "eval.jsonl", domains=cfg.domains,
        oversample=cfg.oversample, prompts_per_step=cfg.prompts_per_step, enc=enc, block_size=policy.cfg.block_size,
        max_new_tokens=cfg.max_new_tokens, model_path=cfg.init, reward_fn=reward_fn, reward_spec=cfg.reward)
    eval_records = per_domain(eval_records, cfg.eval_limit)
    ref, _, _ = load_model(cfg.init, device)
    ref.requires_grad_(False)
    print(f"{len(records)} RL prompts, {len(eval_records)} held-out prompts, domains: {cfg.domains or 'all'}")
    print(f"policy: {policy.num_params() / 1e6:.2f}M parameters on {device}, from {cfg.init}")
    if cfg.lora_rank:  # adapters on the policy, its other weights frozen (model.pt: merged, rl files)
        print(add_lora_from_flags(policy, cfg))
    return policy, ref, enc, ckpt, records, eval_records


def sample_and_score(policy, ref, enc, prompts: list[dict], reward_fn, cfg: RolloutConfig, gen: torch.Generator,
                     ranks: dist.Ranks = dist.Ranks(), overlong_buffer: int = 0):
    """G answers per prompt with the sampler's log-probs pi_old, the reference's log-probs of the same tokens,
    and the rewards -> (rollout, ref_logps (B, T), rewards (B,), reward stats for the log). Under torchrun
    each rank samples the groups of its share of the prompts (rollout_share: advantages need no
    communication), and the stats are over every rank's rows."""
    batch_rollout = rollout_share(policy, enc, prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature,
                                  cfg.top_k or None, cfg.top_p, gen, ranks)
    rows = getattr(cfg, "micro_batch_size", 0) or None  # a pass of the training pass's rows at a time
    with torch.no_grad():
        ref_logps = completion_logprobs(ref, batch_rollout, cfg.temperature, cfg.logprobs_impl, rows=rows)  # (B, T)
        if isinstance(autocast(batch_rollout.prompt_ids.device), torch.autocast):  # bf16 (CUDA): the KV-cache
            # sampler rounds otherwise than a pass over the whole sequence; pi_old is then the training pass's,
            # so that the first update's ratio is 1 up to float rounding, as in float32
            batch_rollout.logprobs = completion_logprobs(policy, batch_rollout, cfg.temperature, cfg.logprobs_impl,
                                                         rows=rows)
    rewards, stats = score_rollout(batch_rollout, reward_fn, cfg.max_new_tokens, cfg.missing_stop_penalty,
                                   cfg.length_penalty, overlong_buffer,
                                   gather=lambda x: dist.all_gather_lists(x, ranks))  # (B,)
    return batch_rollout, ref_logps, rewards, stats


def sample_informative_groups(sample, records, perm, pos, prompts_per_step: int, group_size: int, max_rounds: int,
                              order_gen: torch.Generator, pad_id: int):
    """DAPO's dynamic sampling (Yu et al. 2025): rollout batches of fresh prompts until prompts_per_step groups
    whose rewards are not all equal are collected, or max_rounds batches are spent -> (rollout, ref_logps,
    rewards, stats of the first batch plus dropped_groups and sample_rounds, perm, pos). `sample(prompts)` ->
    (rollout, ref_logps, rewards, stats) samples and scores one batch (rollout.sample_and_score and whatever an
    objective adds to the rewards).

    A group with zero reward spread has zero advantage for every sample: it costs compute and adds only the KL
    term. Extra groups past prompts_per_step are discarded; if no round found any, the last batch is used as is.
    """
    kept, dropped, first_stats = [], 0, None
    for rounds in range(1, max_rounds + 1):
        prompts, perm, pos = next_prompts(records, perm, pos, prompts_per_step, order_gen)
        batch_rollout, ref_logps, rewards, stats = sample(prompts)
        first_stats = first_stats or stats
        spread = ~zero_spread(rewards, group_size)  # (prompts,) groups with a learning signal
        dropped += int((~spread).sum())
        rows = torch.arange(len(batch_rollout), device=rewards.device).view(-1, group_size)[spread].view(-1)
        if len(rows):
            kept.append((batch_rollout.select(rows), ref_logps[rows], rewards[rows]))
        if sum(len(k[2]) for k in kept) >= prompts_per_step * group_size:
            break
    if kept:
        batch_rollout, ref_logps, rewards = concat_rollouts(kept, pad_id)
        first = torch.arange(min(prompts_per_step * group_size, len(rewards)))  # whole groups, in order
        batch_rollout, ref_logps, rewards = batch_rollout.select(first), ref_logps[first], rewards[first]
    stats = {**first_stats, "dropped_groups": dropped, "sample_rounds": rounds}
    return batch_rollout, ref_logps, rewards, stats, perm, pos


def minibatches(ro: Rollout, num_minibatches: int, gen: torch.Generator,
                ranks: dist.Ranks = dist.Ranks()) -> list[tuple[torch.Tensor, int]]:
    """One pass of PPO over a rollout batch: its rows shuffled (gen) and cut into num_minibatches minibatches
    (the last may be smaller) -> [(rows of `ro` in the minibatch, completion tokens of the whole minibatch)].
    Under torchrun `ro` is this rank's part of the batch: every rank shuffles the whole batch alike and gets
    its own rows of each minibatch (maybe none) and the minibatch's token count over every rank."""
    tokens = torch.tensor(dist.all_gather_lists(ro.completion_mask.sum(dim=1).tolist(), ranks))  # (N,) all rows
    n, first = len(tokens), ranks.rank * len(ro)  # rows of the whole batch; this rank's first one
    size = -(-n // num_minibatches)  # rows per minibatch
    shuffle = torch.randperm(n, generator=gen)
    parts = []
    for s in range(0, n, size):
        whole = shuffle[s:s + size]  # a minibatch of the whole batch's rows
        mine = (whole[(whole >= first) & (whole < first + len(ro))] - first).to(ro.completion_mask.device)
        parts.append((mine, max(int(tokens[whole].sum()), 1)))
    return parts


def next_prompts(records: list[dict], perm: torch.Tensor, pos: int, n: int, order_gen: torch.Generator):
    """The next n prompts of a shuffled pass over the records; a fresh shuffle when fewer than n are left.
    -> (batch, perm, pos): perm and pos are the data position a resumed run restores."""
    if pos + n > len(records):  # next epoch over the prompts
        perm, pos = torch.randperm(len(records), generator=order_gen), 0
    return [records[i] for i in perm[pos:pos + n].tolist()], perm, pos + n
