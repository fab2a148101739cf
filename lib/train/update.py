"""Training mechanics both trainers share (explore.py's RL update, lib/train/sft.py's SFT): what a batch of sequences
becomes on the device, how many forward passes it takes, and the numeric settings around them.

  micro_batches       length-sorted micro-batches, their number chosen to cut padding
  equal_passes        FSDP's rule: every rank runs as many forward/backward passes as the busiest one
  empty_batch         the zero-weight pass that pads a less busy rank's plan
  autocast / default_bf16   bf16 compute on GPU, fp32 master weights
  lr_factor           linear warm-up, then cosine decay (min_ratio 1.0: constant, as RL uses it)
  Seq, MicroBatch, make_micro_batches, micro_batch_logprobs, fill_old_logprobs   the RL update's batches:
                      prompt + sampled response rows (or, with shared prompts, responses reading their prompt's
                      KV cache), a response mask, one advantage per row and the sampling policy's log-probs
  rl_update           one RL step: mini-batches, old log-probs, one optimiser update each (optimizer_update over
                      accumulate_gradients), the loss a function the stage passes in; the step's numbers
  rollout_probs_diff  the rollout engine's probabilities of the sampled tokens against the training forward's

Nothing here is an algorithm: the objectives live in the stages (explore.py's policy loss, consolidate.py's RFT
loss), which is where a fork changes them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lib.train import dist
from lib.train.modeling import pad_rows, shared_prompt_logprobs, token_logprobs


def add_trainer_args(p, device_help: str = "cpu / cuda / auto") -> None:
    """The device and precision flags both trainers share (explore.py, consolidate.py)."""
    import argparse

    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for the training forward (default: on for a GPU that supports it); under "
                        "torchrun also FSDP all-gathers in bf16 (fp32 master weights, AdamW states and gradient "
                        "reduction)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each decoder layer's activations in backward (activation checkpointing): "
                        "less memory for long sequences, ~30%% more compute")


def load_device(device: torch.device) -> torch.device | str:
    """Where to load a policy for training: under FSDP the meta device (a skeleton: prepare shards it and each rank
    reads only its shard from the files onto the device, lib/train/shardload), else the device itself."""
    return "meta" if dist.is_distributed() else device


def prepare(model, device: torch.device, bf16: bool, grad_checkpointing: bool = False) -> None:
    """Make a loaded policy trainable: activation checkpointing if asked, then FSDP2 sharding under torchrun
    (bf16 all-gathers with bf16) or a move to the device."""
    if grad_checkpointing:
        dist.enable_grad_checkpointing(model)
    dist.shard_model(model, device, bf16=bf16)


def default_bf16(device: torch.device) -> bool:
    """bf16 autocast by default where it pays: a CUDA GPU that supports it (CPU stays fp32)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, bf16: bool | None = None):
    """bf16 compute (None: default_bf16) with fp32 master weights (an lr of 1e-6 is below bf16's resolution)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=default_bf16(device) if bf16 is None else bf16)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to min_ratio (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def micro_batches(examples: list, cap: int = 0, length=None) -> list[list]:
    """One optimiser step's examples as length-sorted micro-batches of at most `cap` sequences (0 = no cap).

    Padding is compute thrown away (23% of a toy SFT batch of 32 padded to its longest row). Neighbours in
    length share a micro-batch; the number k of equal-size micro-batches minimises
        padded tokens + k * longest sequence
    i.e. one more forward/backward must save at least one longest row of padding to pay for its fixed cost and
    smaller matmuls. Toy, CPU: 2-4 micro-batches instead of 1, a step ~15-20% faster. The objective does not
    change (the losses normalise by the whole step's token count). length(example) -> its padded length;
    default prompt + response tokens."""
    length = length or (lambda e: len(e.prompt_ids) + len(e.response_ids))
    ex = sorted(examples, key=length)
    lens = [length(e) for e in ex]  # ascending
    B, longest = len(ex), lens[-1] if lens else 0
    best_cost, best_size = None, B
    k = max(1, math.ceil(B / cap)) if cap else 1
    while k <= B and (best_cost is None or sum(lens) + k * longest < best_cost):  # later k cannot win
        size = math.ceil(B / k)
        if math.ceil(B / size) == k:  # (else: the same chunks as a smaller k)
            padded = sum((min(s + size, B) - s) * lens[min(s + size, B) - 1] for s in range(0, B, size))
            if best_cost is None or padded + k * longest < best_cost:
                best_cost, best_size = padded + k * longest, size
        k += 1
    return [ex[s:s + best_size] for s in range(0, B, best_size)]


def equal_passes(plans: list[list], empty) -> list[list]:
    """Under FSDP every rank must run the same number of forward passes (each one all-gathers with the other
    ranks): pad each plan (one per optimiser update) to the most any rank has, with empty() passes that carry
    no token. Single process: the plans as they are."""
    if not dist.is_distributed() or not plans:  # (every rank has as many plans: no update, no collective)
        return plans
    most = dist.all_reduce_max([len(p) for p in plans])
    return [p + [empty() for _ in range(int(k) - len(p))] for p, k in zip(plans, most)]


def empty_batch(pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention, mask) [1, 2] of a pass with no response token: zero loss, zero gradient."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long, device=device)
    return ids, torch.ones_like(ids), torch.zeros((1, 2), dtype=torch.bool, device=device)


def right_padded(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """prompt + response rows -> ids, attention [B, T] (right-padded) and the response mask [B, T] (bool)."""
    ids, attn = pad_rows([p + r for p, r in zip(prompts, responses)], pad_id)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for j, (p, r) in enumerate(zip(prompts, responses)):
        mask[j, len(p):len(p) + len(r)] = True  # logp[:, t] scores ids[:, t]: columns P .. P+L-1
    return ids, attn, mask


# ---------------------------------------------------------------------------------------------------------
# The RL update's batches (explore.py)


@dataclass
class Seq:
    prompt_ids: list[int]
    response_ids: list[int]  # sampled tokens, the stop token included
    advantage: float
    old_logp: list[float] | None = None  # per response token; None: the trainer scores them (fill_old_logprobs)
    # per response token, as the rollout engine sampled it; anything else (None, [] for a replayed response) = unknown
    rollout_logp: Sequence[float] | None = None


@dataclass
class SharedPrompts:
    """The distinct prompts of a micro-batch whose rows hold responses only (--share-prompt)."""
    ids: torch.Tensor  # [G, P] left-padded
    attn: torch.Tensor  # [G, P]
    index: torch.Tensor  # [b] the prompt each row continues


@dataclass
class MicroBatch:
    ids: torch.Tensor  # [b, T] prompt + response, right-padded (with `prompts`: the response alone)
    attn: torch.Tensor  # [b, T]
    mask: torch.Tensor  # [b, T] bool, True on response tokens
    adv: torch.Tensor  # [b]
    old_logp: torch.Tensor | None = None  # [b, T] log-probs of the sampling policy (None: use the current ones)
    prompts: SharedPrompts | None = None  # set: each prompt runs once, its responses read its KV cache
    ref_logp: torch.Tensor | None = None  # [b, T] log-probs of the KL reference (explore --kl-coef > 0)
    # [b, T] the engine's log-probs of the sampled tokens, nan on rows whose engine log-probs are unknown (None: no row
    # has them)
    rollout_logp: torch.Tensor | None = None


def make_micro_batches(seqs: list[Seq], size: int, pad_id: int, device, balance: bool = True,
                       share_prompt: bool = False) -> list[MicroBatch]:
    """Length-sorted micro-batches of at most `size` sequences (neighbours in length waste little padding).
    balance: choose the number of micro-batches that minimises padding (micro_batches, the SFT's rule too);
    else fixed chunks of `size`. The objective is the same either way (global_tokens normalises it).
    share_prompt: rows hold responses alone and each distinct prompt of a micro-batch is stored once
    (SharedPrompts); the length that padding follows is then the response's."""
    length = (lambda s: len(s.response_ids)) if share_prompt else (lambda s: len(s.prompt_ids) + len(s.response_ids))
    if balance:
        chunks = micro_batches(seqs, size, length=length)
    else:
        seqs = sorted(seqs, key=length)
        chunks = [seqs[i:i + size] for i in range(0, len(seqs), size)]
    out = []
    for chunk in chunks:
        prompts = None
        if share_prompt:
            keys = [tuple(s.prompt_ids) for s in chunk]
            row_of = {k: g for g, k in enumerate(dict.fromkeys(keys))}  # distinct prompts, first-seen order
            p_ids, p_attn = pad_rows([list(k) for k in row_of], pad_id, left=True)
            index = torch.tensor([row_of[k] for k in keys])
            prompts = SharedPrompts(p_ids.to(device), p_attn.to(device), index.to(device))
            ids, attn, mask = right_padded([[] for _ in chunk], [s.response_ids for s in chunk], pad_id)
            starts = [0] * len(chunk)  # response token t sits in column t
        else:
            ids, attn, mask = right_padded([s.prompt_ids for s in chunk], [s.response_ids for s in chunk], pad_id)
            starts = [len(s.prompt_ids) for s in chunk]
        lengths = [len(s.response_ids) for s in chunk]
        adv = torch.tensor([s.advantage for s in chunk], dtype=torch.float32)
        old = response_values([s.old_logp for s in chunk], lengths, starts, ids.shape, missing=None)
        rollout = response_values([s.rollout_logp for s in chunk], lengths, starts, ids.shape, missing=math.nan)
        out.append(MicroBatch(ids.to(device), attn.to(device), mask.to(device), adv.to(device),
                              old.to(device) if old is not None else None, prompts,
                              rollout_logp=rollout.to(device) if rollout is not None else None))
    return out


def response_values(values: list, lengths: list[int], starts: list[int], shape, missing: float | None
                    ) -> torch.Tensor | None:
    """Per-token values of each row's response ([b, T] float32, placed at its response columns, 0 elsewhere). A row
    without one value per response token is `missing` throughout (None: then the whole tensor is None); None also
    when no row has values."""
    known = [v is not None and len(v) == n for v, n in zip(values, lengths)]
    if not any(known) or (missing is None and not all(known)):
        return None
    out = torch.zeros(shape, dtype=torch.float32)
    for j, (v, P, n, ok) in enumerate(zip(values, starts, lengths, known)):
        out[j, P:P + n] = torch.tensor(v, dtype=torch.float32) if ok else missing
    return out


def empty_micro_batch(pad_id: int, device, share_prompt: bool = False) -> MicroBatch:
    """equal_passes' filler for the RL update: no response token, in the layout the other ranks use (a
    shared-prompt micro-batch makes two model calls)."""
    ids, attn, mask = empty_batch(pad_id, device)
    prompts = None
    if share_prompt:
        prompts = SharedPrompts(ids[:, :1], attn[:, :1], torch.zeros(1, dtype=torch.long, device=device))
    return MicroBatch(ids, attn, mask, torch.zeros(1, device=device), prompts=prompts)


def micro_batch_logprobs(model, mb: MicroBatch, temperature: float, with_entropy: bool = False):
    """Log-probs [b, T] (and entropies) of a micro-batch's tokens; the response tokens are where mb.mask is."""
    if mb.prompts is None:
        return token_logprobs(model, mb.ids, mb.attn, temperature, with_entropy=with_entropy)
    p = mb.prompts
    return shared_prompt_logprobs(model, p.ids, p.attn, p.index, mb.ids, mb.attn, temperature,
                                  with_entropy=with_entropy)


# ---------------------------------------------------------------------------------------------------------
# The RL update (explore.py's train_on_batch): one optimiser update per mini-batch, gradients accumulated over its
# micro-batches, the loss a function the stage passes in. Under torchrun (FSDP2) every rank runs these on its share
# of the mini-batch: optimizer_update all-reduces `global_tokens` / `global_seqs` and multiplies the loss by the
# world size (FSDP averages gradients over ranks; the token mean over all ranks needs their sum).

# loss_fn(log_probs [b, T] with gradient, micro-batch, global_tokens, global_seqs) -> (this micro-batch's share of the
# mini-batch loss, stats). The micro-batch carries old_logp (set before the call), adv, mask, rollout_logp, ref_logp.
# Every stat is a mean over the micro-batch's response tokens (python float); the machinery averages each one over
# all tokens of the step, whatever its name.
LossFn = Callable[[torch.Tensor, MicroBatch, float, float], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class UpdateConfig:
    """One RL step's update: its batching and numerics (the loss comes as a function)."""
    mini_batch: int  # prompts, with all their responses, per optimiser update
    micro_batch: int  # sequences per forward / backward
    share_prompt: bool  # each prompt runs once per micro-batch (lib/train/modeling.shared_prompt_logprobs)
    grad_clip: float
    temperature: float = 1.0  # log-probs under softmax(logits / T), the distribution that was sampled
    bf16: bool | None = None  # bf16 autocast; None = default_bf16


def accumulate_gradients(model, mbs: list[MicroBatch], loss_fn: LossFn, cfg: UpdateConfig, global_tokens: float,
                         global_seqs: float, loss_scale: float = 1.0) -> dict:
    """Forward + backward over one mini-batch's micro-batches. Each micro-batch's loss is its share of the
    mini-batch loss (divided by global_tokens / global_seqs, the mini-batch totals), so the accumulated
    gradient equals the one of a single pass over the whole mini-batch. Under data parallelism, pass the
    totals over all ranks and loss_scale = world size (FSDP averages gradients over ranks).
    Returns sums over the mini-batch (this rank's part): loss (unscaled), tokens, entropy_sum (when old_logp is
    None) and every stat of the loss times its micro-batch's token count."""
    device = mbs[0].ids.device
    out = {"loss": 0.0, "tokens": 0, "entropy_sum": 0.0}
    for mb in mbs:
        reuse = mb.old_logp is None  # the step's first update: the sampling policy IS the current one
        with autocast(device, cfg.bf16):
            if reuse:
                logp, ent = micro_batch_logprobs(model, mb, cfg.temperature, with_entropy=True)
                out["entropy_sum"] += ent.float()[mb.mask].sum().item()
            else:
                logp = micro_batch_logprobs(model, mb, cfg.temperature)  # [b, T]
        logp = logp.float()
        if reuse:  # (kept: rollout_probs_diff reads every micro-batch's old log-probs after the updates)
            mb.old_logp = logp.detach()
        loss, stats = loss_fn(logp, mb, global_tokens, global_seqs)
        (loss * loss_scale).backward()
        k = int(mb.mask.sum())
        out["loss"] += loss.item()
        out["tokens"] += k
        for name, v in stats.items():  # (an empty padding micro-batch weighs 0; its stats may be nan)
            out[name] = out.get(name, 0.0) + (v * k if k else 0.0)
    return out


def optimizer_update(model, optimizer, mbs: list[MicroBatch], loss_fn: LossFn, cfg: UpdateConfig) -> dict:
    """One optimiser update on one mini-batch. A non-finite loss or gradient skips the update (the weights
    and the optimizer state stay as they were) and reports skipped=True."""
    optimizer.zero_grad(set_to_none=True)
    global_tokens = float(sum(int(mb.mask.sum()) for mb in mbs))
    global_seqs = float(sum(int((mb.mask.sum(-1) > 0).sum()) for mb in mbs))
    if dist.is_distributed():  # the mini-batch is spread over the ranks: normalise by its total over all
        global_tokens, global_seqs = dist.all_reduce_sum([global_tokens, global_seqs])
    st = accumulate_gradients(model, mbs, loss_fn, cfg, global_tokens, global_seqs, loss_scale=dist.loss_scale())
    if dist.is_distributed():  # the whole mini-batch's sums, the same on every rank (so is the skip decision)
        keys = sorted(st)  # (every rank ran the same loss on at least one micro-batch: the same keys)
        st.update(zip(keys, dist.all_reduce_sum([st[k] for k in keys])))
        st["tokens"] = int(st["tokens"])
    # clip_grad_norm_ returns the norm BEFORE clipping: the number the paper's stability claim is about
    grad_norm = dist.clip_grad_norm(model.parameters(), cfg.grad_clip)
    st["grad_norm"] = grad_norm
    st["skipped"] = not (math.isfinite(st["loss"]) and math.isfinite(grad_norm))
    if st["skipped"]:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return st


MACHINERY = ("loss", "tokens", "entropy_sum", "grad_norm", "skipped")  # optimizer_update's own keys; the rest: stats


def rl_update(model, optimizer, groups: list[list[Seq]], cfg: UpdateConfig, loss_fn: LossFn, pad_id: int, device,
              ref=None) -> dict:
    """One RL step's updates: the step's groups (each a prompt's sequences, advantages set) in mini-batches of
    cfg.mini_batch groups, one optimiser update each. Under torchrun `groups` is the same list on every rank; each
    rank takes a contiguous share of every mini-batch's groups (still one update per mini-batch, over all ranks'
    shares). ref: the frozen KL reference, whose log-probs fill every micro-batch's ref_logp.
    Returns the step's numbers: updates, skipped_updates (and skipped_flags, one per update), pg_loss (mean over
    updates), entropy, grad_norm (mean) / grad_norm_max (pre-clip), train_tokens, rollout_probs_diff_mean / _max, and
    every stat the loss returned, averaged over the step's tokens."""
    minis = [[s for grp in dist.shard(groups[i:i + cfg.mini_batch]) for s in grp]
             for i in range(0, len(groups), cfg.mini_batch)]
    plans = [make_micro_batches(m, cfg.micro_batch, pad_id, device, share_prompt=cfg.share_prompt) if m else []
             for m in minis]
    plans = equal_passes(plans, lambda: empty_micro_batch(pad_id, device, cfg.share_prompt))  # (FSDP)
    model.train()
    if ref is not None:  # the reference's log-probs, through the update's forward and micro-batches
        for mbs in plans:
            fill_ref_logprobs(ref, mbs, cfg.temperature, cfg.bf16)
    # Old log-probs of mini-batches 2, 3, ... are scored now, before the first update changes the weights.
    # Mini-batch 1 needs no extra forward: its update runs on exactly these weights, so it reuses its own
    # detached log-probs (the same numbers a separate pass would give: ratio exactly 1 on every token).
    ent_sum = ent_tok = 0.0
    for mbs in plans[1:]:
        e, k = fill_old_logprobs(model, mbs, cfg.temperature, cfg.bf16)
        ent_sum, ent_tok = ent_sum + e, ent_tok + k
    if dist.is_distributed() and len(plans) > 1:
        ent_sum, ent_tok = dist.all_reduce_sum([ent_sum, ent_tok])
    results = [optimizer_update(model, optimizer, mbs, loss_fn, cfg) for mbs in plans]
    gap = rollout_probs_diff([mb for mbs in plans for mb in mbs])  # engine vs trainer, every trained token
    n_tok = sum(x["tokens"] for x in results)
    if results:  # mini-batch 1's entropy came from its update's forward (already summed over ranks)
        ent_sum, ent_tok = ent_sum + results[0]["entropy_sum"], ent_tok + results[0]["tokens"]
    norms = [x["grad_norm"] for x in results]
    stats = sorted({k for x in results for k in x} - set(MACHINERY))
    return {
        "updates": len(results),
        "skipped_updates": sum(x["skipped"] for x in results),
        "skipped_flags": [x["skipped"] for x in results],
        "pg_loss": sum(x["loss"] for x in results) / max(1, len(results)),
        "entropy": ent_sum / ent_tok if ent_tok else float("nan"),
        "grad_norm": sum(norms) / max(1, len(norms)),
        "grad_norm_max": max(norms) if norms else 0.0,
        "train_tokens": n_tok,
        **{k: sum(x.get(k, 0.0) for x in results) / (n_tok or 1) for k in stats},
        **gap,
    }


@torch.no_grad()
def fill_old_logprobs(model, mbs: list[MicroBatch], temperature: float, bf16: bool | None = None) -> tuple[float, int]:
    """Score every micro-batch with the current (= sampling) policy, before any update, through the same
    forward and the same micro-batches the update uses, so the first update sees a ratio of exactly 1.
    Returns (entropy summed over response tokens, response tokens)."""
    device = mbs[0].ids.device
    ent_sum, n_tok = 0.0, 0
    for mb in mbs:
        with autocast(device, bf16):
            logp, ent = micro_batch_logprobs(model, mb, temperature, with_entropy=True)  # [b, T] x2
        mb.old_logp = logp.float()
        ent_sum += ent.float()[mb.mask].sum().item()
        n_tok += int(mb.mask.sum())
    return ent_sum, n_tok


@torch.no_grad()
def rollout_probs_diff(mbs: list[MicroBatch]) -> dict:
    """How far the rollout engine's probabilities of the sampled tokens are from the training forward's before the
    update (the old log-probs the PPO ratio divides by): |p_engine - p_trainer| over every trained response token
    whose engine log-prob is known, as verl's rollout_probs_diff. Sampler and trainer compute the same policy, so
    this is their numerical gap (kernels, precision); at full scale (bf16 vLLM vs the FSDP forward) it is silent
    off-policy drift. Returns {"rollout_probs_diff_mean", "rollout_probs_diff_max"} over all ranks (nan when no
    token has an engine log-prob). A collective under torchrun: every rank calls it."""
    total, worst, n = 0.0, 0.0, 0
    for mb in mbs:
        if mb.rollout_logp is None or mb.old_logp is None:
            continue
        known = mb.mask & torch.isfinite(mb.rollout_logp)  # [b, T] (a replayed response has no engine log-probs)
        d = (mb.rollout_logp.exp() - mb.old_logp.float().exp()).abs()[known]  # [tokens]
        if d.numel():
            total, worst, n = total + d.sum().item(), max(worst, d.max().item()), n + d.numel()
    if dist.is_distributed():
        total, n = dist.all_reduce_sum([total, n])
        worst = dist.all_reduce_max([worst])[0]
    return {"rollout_probs_diff_mean": total / n if n else float("nan"),
            "rollout_probs_diff_max": worst if n else float("nan")}


def frozen_reference(path: str, device: torch.device, bf16: bool, overrides: dict | None = None,
                     trust_remote_code: bool = False):
    """A frozen copy of the policy at `path` (the KL reference of explore.py --kl-coef and consolidate.py --kl-coef):
    under FSDP a skeleton, the context overrides applied as to the policy, no gradient, then sharded like the policy
    (each rank reads only its shard; no optimizer state)."""
    from lib.train.modeling import extend_context, load_policy

    ref = load_policy(path, device=load_device(device), trust_remote_code=trust_remote_code)[0]
    extend_context(ref, overrides)
    ref.eval().requires_grad_(False)
    prepare(ref, device, bf16)
    return ref


@torch.no_grad()
def fill_ref_logprobs(ref, mbs: list[MicroBatch], temperature: float, bf16: bool | None = None) -> None:
    """Score every micro-batch with the frozen KL reference (explore --kl-coef), through the update's forward."""
    for mb in mbs:
        with autocast(mb.ids.device, bf16):
            mb.ref_logp = micro_batch_logprobs(ref, mb, temperature).float()  # [b, T]
