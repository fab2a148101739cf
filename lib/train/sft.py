"""Supervised fine-tuning in plain PyTorch — the one SFT implementation of the project.

consolidate.py uses it for rejection-sampling fine-tuning (RFT) of the iteration's initial policy on the
filtered successful trajectories; lib/worlds/toy.py uses it to warm-start the toy base on gold solutions.

  loss = loss_fn(micro-batch) summed over the step's micro-batches  /  response tokens in the whole optimiser step
The caller passes `loss_fn`: consolidate.py its RFT objective (consolidate.rft_loss), lib/worlds/toy.py `nll_loss`,
the NLL of the response tokens, sum over them of -log p(token | prefix). The prompt is masked (it gets
no gradient); the normalisation is over the whole optimiser step, not each micro-batch, so gradient
accumulation does not change the objective. Sequences are length-grouped into micro-batches and right-padded —
never packed into one row, so no attention leaks across examples. How many micro-batches a step takes is chosen
per step to cut padding (lib/train/update.micro_batches); `micro_batch` only caps their size.

Under torchrun (consolidate.py with an FSDP2 model) every rank takes a contiguous slice of each step's
examples; the divisor stays the token count of the WHOLE step (every rank knows the step's examples), the
loss is multiplied by the world size (FSDP averages gradients over ranks; the objective needs their sum), and
every rank runs as many forward/backward passes as the busiest one (zero-weight passes pad the others).
"""
from __future__ import annotations

import math
import random
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from lib.algo.dapo import kl_penalty
from lib.run.metrics import json_num
from lib.train import checkpoint, dist
from lib.train.modeling import token_logprobs
from lib.train.update import autocast, empty_batch, equal_passes, lr_factor, micro_batches, right_padded

# loss_fn(logp [b, T], mask [b, T], examples) -> the loss summed over the micro-batch's response tokens (train
# divides by the step's token count); examples[i] is row i (none, and an all-zero mask, in a padding pass).
LossFn = Callable[[torch.Tensor, torch.Tensor, list], torch.Tensor]


def nll_loss(logp: torch.Tensor, mask: torch.Tensor, examples: list) -> torch.Tensor:
    """The negative log-likelihood summed over response tokens, every example weighing the same: the project's one
    NLL (consolidate.rft_loss, the toy base's warm start)."""
    return -(logp * mask).sum()


@dataclass
class SFTConfig:
    steps: int = 0  # optimiser steps; 0 = derive from epochs
    epochs: float = 1.0  # passes over the data (used when steps == 0)
    batch_size: int = 32  # sequences per optimiser step
    micro_batch: int = 0  # at most this many sequences per forward/backward (0 = no cap; see micro_batches)
    lr: float = 1e-5
    warmup: int = 0  # linear warm-up steps, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_coef: float = 0.0  # optional KL(policy || starting policy) on response tokens (needs ref_model)
    seed: int = 0
    bf16: bool = False  # autocast to bfloat16 (GPU)
    max_nonfinite: int = 5  # stop after this many consecutive steps with a NaN/inf loss or gradient (each skipped)


class NonFiniteError(RuntimeError):
    """max_nonfinite consecutive steps had a non-finite loss or gradient: the run cannot recover by itself."""


@dataclass
class Example:
    prompt_ids: list[int]
    response_ids: list[int]
    truncated: bool = False  # cut to max_len (it lost its end, the stop token included)
    reward: float = 1.0  # the trajectory's reward (what a reward-weighted RFT loss would weigh by)


def tokenize(tokenizer, trajectories, append_eos: bool = True, max_len: int = 0,
             stop_id: int | None = None) -> list[Example]:
    """Trajectories -> token ids. The prompt is tokenised as the rollout engines did (no special tokens added).
    The response: its recorded `response_ids` when it has them (the tokens the policy sampled, its stop token
    included); otherwise its text, tokenised, plus the stop token (`stop_id`, default the tokenizer's eos) when
    append_eos, so the model learns to stop. The stop token is one the policy samples: for a chat model the
    end-of-turn token (lib/train/modeling.end_of_turn_id), which need not be the tokenizer's eos_token."""
    stop = tokenizer.eos_token_id if stop_id is None else stop_id
    out = []
    for t in trajectories:
        p = tokenizer(t.prompt, add_special_tokens=False)["input_ids"]
        if getattr(t, "response_ids", None):
            r = list(t.response_ids)
        else:
            r = tokenizer(t.response, add_special_tokens=False)["input_ids"]
            if append_eos and stop is not None:
                r = r + [stop]
        cut = bool(max_len) and len(p) + len(r) > max_len
        if cut:
            r = r[: max(0, max_len - len(p))]
        if r:
            out.append(Example(p, r, cut, float(getattr(t, "reward", 1.0))))
    return out


def total_steps(n_examples: int, cfg: SFTConfig) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * n_examples / cfg.batch_size))


def plan(n_examples: int, cfg: SFTConfig) -> list[list[int]]:
    """The example indices of every optimiser step, fixed by the seed: epoch e is a permutation seeded by
    (seed, e). A resumed run recomputes the same plan and skips the steps already done."""
    if n_examples <= 0:
        raise ValueError("SFT needs at least one example")
    steps, batches, epoch = total_steps(n_examples, cfg), [], 0
    while len(batches) < steps:
        order = list(range(n_examples))
        random.Random(f"{cfg.seed}-{epoch}").shuffle(order)
        for i in range(0, n_examples, cfg.batch_size):
            batches.append(order[i:i + cfg.batch_size])
        epoch += 1
    return batches[:steps]


def collate(examples: list[Example], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> input_ids, attention_mask, loss_mask, each [B, T], right-padded; loss_mask marks response tokens."""
    ids, attn, mask = right_padded([e.prompt_ids for e in examples], [e.response_ids for e in examples], pad_id)
    return ids.to(device), attn.to(device), mask.float().to(device)


def make_optimizer(model, cfg: SFTConfig, total: int):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup, total, cfg.min_lr_ratio))
    return opt, sched


def step_loss(model, examples: list[Example], cfg: SFTConfig, pad_id: int, n_tokens: float, loss_fn: LossFn,
              ref_model=None):
    """Forward + backward over one optimiser step's examples in micro-batches. Returns (loss, kl) summed
    over tokens / n_tokens, i.e. this step's share of the token-mean objective (already backpropagated).
    Under torchrun: this rank's examples, n_tokens the whole step's count; the returned sums are this rank's."""
    device = next(model.parameters()).device
    loss_sum, kl_sum = 0.0, 0.0
    chunks: list = micro_batches(examples, cfg.micro_batch) if examples else []
    chunks = equal_passes([chunks], lambda: [])[0]  # FSDP: the same number of passes on every rank
    scale = dist.loss_scale()
    for chunk in chunks:
        if chunk:
            ids, attn, mask = collate(chunk, pad_id, device)  # [b, T] each
        else:  # a zero-weight pass: no token counts
            ids, attn, mask = empty_batch(pad_id, device)
            mask = mask.float()
        with autocast(device, cfg.bf16):
            logp = token_logprobs(model, ids, attn)  # [b, T]
        main = loss_fn(logp, mask, chunk)
        loss = main
        if cfg.kl_coef > 0 and ref_model is not None:
            with torch.no_grad(), autocast(device, cfg.bf16):
                ref_logp = token_logprobs(ref_model, ids, attn)  # [b, T]
            # KL(pi || ref) per token, verl's low_var_kl (the k3 estimator, as explore.py --kl-coef), summed over
            # response tokens (train divides by the step's token count, as the loss)
            kl = (kl_penalty(logp, ref_logp) * mask).sum()
            loss = loss + cfg.kl_coef * kl
            kl_sum += kl.item()
        (loss / n_tokens * scale).backward()
        loss_sum += main.item()
    return loss_sum / n_tokens, kl_sum / n_tokens


def train(model, examples: list[Example], cfg: SFTConfig, pad_id: int, loss_fn: LossFn, ref_model=None,
          state: dict | None = None, on_step: Callable | None = None, progress: bool = True) -> list[dict]:
    """Run (or resume) SFT on the objective `loss_fn` (per micro-batch, see LossFn). `state` is a dict from a
    checkpoint (optimizer, scheduler, step); `on_step(step, row, optimizer, scheduler)` is called after each
    optimiser step (logging, checkpoints). Returns the rows."""
    model.train()
    batches = plan(len(examples), cfg)
    opt, sched = make_optimizer(model, cfg, len(batches))
    start = 0
    if state:
        checkpoint.restore_trainer(state, opt, sched)
        start = state["step"]
    rows, streak = [], 0  # streak: consecutive skipped steps (a resumed run counts afresh)
    bar = tqdm(range(start, len(batches)), desc="sft", disable=None if progress else True, leave=False)
    for step in bar:
        t0 = time.time()
        batch = [examples[i] for i in batches[step]]
        n_tokens = float(sum(len(e.response_ids) for e in batch))  # the whole step's (every rank knows it)
        opt.zero_grad(set_to_none=True)
        lr = opt.param_groups[0]["lr"]  # the rate this step uses (get_last_lr after sched.step is the next one's)
        nll, kl = step_loss(model, dist.shard(batch), cfg, pad_id, n_tokens, loss_fn, ref_model)
        if dist.is_distributed():
            nll, kl = dist.all_reduce_sum([nll, kl])
        grad_norm = dist.clip_grad_norm(model.parameters(), cfg.grad_clip)  # pre-clip norm
        # the same decision on every rank: nll and kl are all-reduced, grad_norm is the global norm
        skipped = not all(math.isfinite(x) for x in (nll, kl, grad_norm))
        if skipped:
            # one NaN/inf gradient in AdamW's moments poisons every later step: drop this one; the weights and
            # the optimizer state stay as they were, the schedule still advances (it is by step)
            opt.zero_grad(set_to_none=True)
            streak += 1
        else:
            opt.step()
            streak = 0
        with warnings.catch_warnings():  # skipped first steps: the schedule is by step, not by update
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            sched.step()
        row = {"step": step + 1, "loss": json_num(nll, 5), "kl": json_num(kl, 6),
               "grad_norm": json_num(grad_norm, 4), "lr": lr, "tokens": int(n_tokens),
               "skipped_updates": int(skipped), "step_time": round(time.time() - t0, 3)}
        rows.append(row)
        bar.set_postfix(loss=f"{nll:.3f}", grad_norm=f"{grad_norm:.3g}", lr=f"{lr:.2g}",
                        tok_s=round(n_tokens / max(row["step_time"], 1e-9)))
        if on_step:
            on_step(step + 1, row, opt, sched)
        if streak >= cfg.max_nonfinite:
            raise NonFiniteError(f"step {step + 1}: {streak} consecutive steps had a non-finite loss or gradient "
                                 f"(--max-nonfinite {cfg.max_nonfinite}); stopping")
    return rows
