"""explore.py — DAPO reinforcement learning: RLoop's exploration phase, and the vanilla-RL baseline run longer.

One training step (DAPO, arXiv 2503.14476, as verl's DAPO recipe runs it):
  1. draw prompts (a fixed, seeded order over the prompt set) and sample n responses to each
  2. reward = verifier score (+1 / -1, lib/reward.py) + overlong penalty (soft, over the last
     --overlong-buffer tokens before --max-new-tokens)
  3. dynamic sampling: drop every prompt whose n responses are all right or all wrong (their
     group-normalised advantage is 0: they would only dilute the token mean), and keep drawing
     generation batches until --prompts-per-step prompts survive (--max-gen-batches caps the draws)
  4. advantage of each response = (r - mean of its group) / (std of its group + 1e-6)
  5. old log-probs: the policy that sampled, scored by the training forward before any update (as verl),
     so the first update sees a ratio of exactly 1; the first mini-batch's are its update's own detached
     log-probs (the same numbers, one forward pass fewer)
  6. prompts-per-step / mini-batch optimiser updates (AdamW). Each update sees --mini-batch prompts with
     all their responses and accumulates gradients over micro-batches; the token-mean loss is divided by
     the token count of the WHOLE mini-batch, so micro-batching never changes the objective (trl#5619)
  loss per token = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), for A < 0 capped at -A c (dual clip),
  r = pi(token) / pi_old(token). No KL penalty, no entropy bonus (DAPO drops both).

The four DAPO tricks, each one flag: --clip-higher (eps_high 0.28 > eps_low 0.2), --dynamic-sampling,
--loss-agg token-mean (token-level loss), --overlong-shaping. One speed trick, exact: --share-prompt (each
prompt's n responses read one forward pass of it through its KV cache; lib/modeling.shared_prompt_logprobs).

    python explore.py          # the toy: 60 steps in ~2 min on 2 CPU cores; train accuracy 0.31 -> ~0.40
    python explore.py --model Qwen/Qwen2.5-Math-7B --data dapo-17k.parquet --out runs/explore \\
        --steps 500 --prompts-per-step 512 --n 16 --mini-batch 32 --max-new-tokens 20480 \\
        --overlong-buffer 4096 --lr 1e-6 --warmup-steps 10 --backend vllm      # DAPO's recipe (GPU)

Writes, under --out:
  metrics.jsonl        one row per step, keyed by `step` (1, 2, ...); the same numbers as the log line; with
                       --eval-data also val/<bench>/mean_acc and val/<bench>/pass@k (step 0: the initial policy)
  rollouts.jsonl       every sampled response (shared trajectory record + `kept`: trained on or not)
  ckpt_{step:06d}/     every --save-every steps and at the end: a from_pretrained / vLLM-loadable folder;
                       the newest one also holds resume/ (optimizer, scheduler, RNG, data position)
  args.json            the resolved arguments
--resume continues from the newest checkpoint; with the same arguments it ends with the weights an
uninterrupted run ends with (data order and sampling seeds are functions of (seed, step), not of history).

Several GPUs / nodes (lib/dist.py): `torchrun --nproc_per_node N explore.py ...`. The policy is sharded with
FSDP2 (one shard per rank); every rank draws the same prompts and generates for its contiguous share of them
(a group of --tp ranks shares one vLLM engine and one share); scores and token ids are gathered so that every
rank takes the same dynamic-sampling decisions; each rank trains on its share of every mini-batch (all n
responses of a prompt stay on one rank), with the token mean over ALL ranks' tokens. Rank 0 alone writes logs,
JSONL files and checkpoints (one from_pretrained folder, gathered from the shards; optimizer shards per rank
in resume/). --resume needs the same world size. A plain `python explore.py` never touches torch.distributed.
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from lib import checkpoint, cli, data, dist, reward, tracking, validation
from lib.dapo import group_advantages, kept_group_ids, overlong_penalty, policy_loss
from lib.modeling import (extend_context, load_config, load_policy, load_tokenizer, longest_prompt, pad_rows,
                          plan_context, resolve_model, shared_prompt_logprobs, token_logprobs)
from lib.records import append_jsonl, truncate_to
from lib.rollout import ColocatedVLLM, Completion, HFEngine, make_engine, resolve_backend, to_trajectories
from lib.sft import lr_factor, micro_batches

RewardFn = Callable[[str, str], dict]  # (response, ground_truth) -> {"score", "acc", "pred"}


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    a = p.add_argument
    a("--model", default="toy", help="initial policy: folder or hub id; 'toy' = the embedded toy base model")
    a("--data", default="toy", help="prompt set: JSONL / JSON / parquet file or dataset id; 'toy' = toy train split")
    a("--split", default="train", help="dataset split, for --data given as a hub dataset id")
    a("--limit", type=int, default=0, help="use only the first N problems (0 = all)")
    a("--out", default="runs/explore", help="output folder")
    a("--steps", type=int, default=60, help="training steps")
    a("--save-every", type=int, default=10, help="checkpoint every N steps (and always at the last step)")
    a("--keep-checkpoints", default="all",
      help="which checkpoint folders stay on disk: 'all', 'last' (the newest only), or K (those at multiples of "
           "K steps, and the newest). harvest.py --resample samples the folders that stay. With --bf16 every folder "
           "but the newest is rewritten in bf16 (half the disk); the newest keeps fp32 weights + the resume state")
    a("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    a("--seed", type=int, default=0, help="data order, sampling and init seed")
    # rollouts
    a("--prompts-per-step", type=int, default=32, help="prompts trained on per step (DAPO: 512)")
    a("--gen-batch-size", type=int, default=0,
      help="prompts per generation batch; 0 = --prompts-per-step (DAPO: 1536, 3x the train batch)")
    a("--n", "--n-responses", dest="n", type=int, default=8,
      help="responses per prompt (DAPO: 16). Under torchrun spell it --n-responses: torchrun's own parser "
           "rejects --n as an ambiguous abbreviation of its --nnodes / --nproc-per-node")
    a("--max-new-tokens", type=int, default=80, help="response length cap (DAPO: 20480)")
    a("--temperature", type=float, default=1.0, help="sampling temperature (DAPO: 1.0)")
    a("--top-p", type=float, default=1.0, help="nucleus sampling (DAPO: 1.0)")
    a("--reward", default="dapo",
      help="verifier: dapo | math_verify (lib/reward.py) | path/to/file.py:function (runs that file; same "
           "signature as lib/reward.score: (response, ground_truth) -> {score, acc, pred})")
    # DAPO tricks
    a("--dynamic-sampling", action=argparse_bool(), default=True,
      help="DAPO trick: drop prompts whose responses all have the same accuracy, draw more until full")
    a("--filter-metric", default="acc", choices=["acc", "reward"],
      help="what must vary within a group to keep it (verl's DAPO scripts: acc, before the overlong penalty)")
    a("--max-gen-batches", type=int, default=10,
      help="cap on generation batches per step (0 = no cap); when hit, train on the prompts kept so far "
           "(DAPO: 10)")
    a("--overlong-shaping", action=argparse_bool(), default=True,
      help="DAPO trick: soft penalty for responses within --overlong-buffer tokens of --max-new-tokens")
    a("--overlong-buffer", type=int, default=16, help="penalty ramp length in tokens (DAPO: 4096)")
    a("--overlong-factor", type=float, default=1.0, help="penalty at the cap (DAPO: 1.0)")
    a("--clip-higher", action=argparse_bool(), default=True,
      help="DAPO trick: decoupled clip range; --no-clip-higher uses eps_low on both sides (PPO/GRPO)")
    a("--eps-low", type=float, default=0.2, help="lower clip: ratio >= 1 - eps_low (DAPO: 0.2)")
    a("--eps-high", type=float, default=0.28, help="upper clip: ratio <= 1 + eps_high (DAPO: 0.28)")
    a("--clip-ratio-c", type=float, default=10.0, help="dual clip for A < 0: loss <= -A * c (DAPO/verl: 10)")
    a("--loss-agg", default="token-mean", choices=["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"],
      help="DAPO trick: token-mean (token-level loss); GRPO's original is seq-mean-token-mean")
    # optimisation
    a("--mini-batch", type=int, default=16,
      help="prompts (with all their n responses) per optimiser update (DAPO: 32, i.e. 16 updates per step)")
    a("--micro-batch", type=int, default=64, help="sequences per forward/backward (gradient accumulation)")
    a("--share-prompt", action=argparse_bool(), default=None,
      help="run each prompt once per micro-batch and let its n responses read its KV cache, instead of "
           "repeating it in every row (same loss and gradients, fewer FLOPs: 38%% fewer matmul FLOPs on the toy, "
           "where prompts are half of each row); default on, off with --grad-checkpointing (no KV cache there)")
    a("--lr", type=float, default=5e-5, help="AdamW learning rate (DAPO: 1e-6)")
    a("--warmup-steps", type=int, default=3, help="linear lr warm-up over this many steps, then constant (DAPO: 10)")
    a("--weight-decay", type=float, default=0.1, help="AdamW weight decay (DAPO: 0.1)")
    a("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (DAPO: 1.0)")
    a("--max-nonfinite", type=int, default=5,
      help="stop after this many consecutive updates with a non-finite loss or gradient (each is skipped)")
    # engine / device
    a("--backend", default="auto", choices=["auto", "hf", "vllm"],
      help="rollout engine: vllm when importable and a GPU is present, else transformers")
    a("--gpu-memory-utilization", type=float, default=0.5,
      help="vLLM: share of GPU memory for the engine (the trainer lives on the same GPU)")
    a("--tp", type=int, default=1,
      help="vLLM: tensor-parallel size of each rollout engine; under torchrun each group of --tp ranks shares "
           "one engine (the world size must be a multiple); > 1 needs torchrun")
    a("--sleep-mode", action="store_true",
      help="vLLM: free the engine's GPU memory (weights offloaded, KV cache dropped: llm.sleep(level=1)) while "
           "the policy trains, wake it and push the new weights after each step")
    a("--max-model-len", type=int, default=0,
      help="context in tokens (prompt + response) of sampling and training; 0 = the model's max_position_embeddings. "
           "Above the model's, its config is raised to N (vLLM hf_overrides; every checkpoint carries N). "
           "DAPO on Qwen2.5-Math-7B (4096): 32768")
    a("--device", default="auto", help="cpu / cuda / auto (under torchrun on GPU: cuda:LOCAL_RANK)")
    a("--bf16", action=argparse_bool(), default=None,
      help="bf16 autocast for the training forward (and FSDP all-gathers in bf16; fp32 master weights, AdamW "
           "states and gradient reduction); default: on for cuda")
    a("--grad-checkpointing", action="store_true",
      help="recompute each decoder layer's activations in backward (activation checkpointing): "
           "less memory for long responses, ~30%% more compute")
    a("--trust-remote-code", action="store_true", help="allow model code from the hub (off: safer)")
    # tracking and validation during RL (lib/tracking.py, lib/validation.py)
    a("--logger", default="", help="live tracking, comma-separated: tensorboard (OUT/tensorboard), wandb; every "
                                   "metrics.jsonl row mirrored as explore/KEY, plus a table of sampled responses "
                                   "every --save-every steps")
    a("--eval-data", default="", metavar="SPEC",
      help="validate during RL on these benchmarks (evaluate.py's --benchmarks: 'toy' or NAME=PATH[@SPLIT],...): "
           "val/<bench>/mean_acc (avg@n) and val/<bench>/pass@k in metrics.jsonl; '' = off")
    a("--eval-every", type=int, default=0, help="validate every K steps and at the last (0 = at the last step only)")
    a("--eval-n", type=int, default=4, help="samples per validation problem (avg@n, pass@k up to n)")
    a("--eval-before-train", action="store_true", help="also validate the initial policy: a metrics row at step 0")
    a("--eval-limit", type=int, default=0, help="validate on the first N problems of each benchmark (0 = all)")
    a("--eval-split", default="test", help="split of hub benchmarks given without @SPLIT")
    a("--eval-temperature", type=float, default=1.0, help="validation sampling temperature (evaluate.py's default)")
    a("--eval-top-p", type=float, default=0.7, help="validation nucleus sampling (evaluate.py's default)")
    args = p.parse_args(argv)
    tracking.parse_loggers(args.logger)  # an unknown name or a missing package: one line, now
    cli.check_positive(args, "eval_n")
    cli.check_positive(args, "eval_every", "eval_limit", allow_zero=True)
    if not 0 < args.eval_top_p <= 1 or args.eval_temperature <= 0:
        raise cli.UserError(f"--eval-top-p must be in (0, 1] and --eval-temperature > 0, got {args.eval_top_p} "
                            f"and {args.eval_temperature}")

    cli.check_positive(args, "steps", "save_every", "prompts_per_step", "n", "max_new_tokens", "mini_batch",
                       "micro_batch", "max_nonfinite", "tp")
    cli.check_positive(args, "limit", "gen_batch_size", "max_gen_batches", "overlong_buffer", "warmup_steps",
                       "max_model_len", allow_zero=True)
    args.keep_checkpoints = checkpoint.parse_keep(args.keep_checkpoints)
    if args.prompts_per_step % args.mini_batch:
        raise cli.UserError(f"--prompts-per-step ({args.prompts_per_step}) must be a multiple of "
                            f"--mini-batch ({args.mini_batch})")
    if not 0 < args.top_p <= 1:
        raise cli.UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature <= 0:
        raise cli.UserError(f"--temperature must be > 0 for RL (log-probs are under softmax(logits / T)), "
                            f"got {args.temperature}")
    if args.clip_ratio_c <= 1:
        raise cli.UserError(f"--clip-ratio-c must be > 1, got {args.clip_ratio_c}")
    if args.overlong_shaping and args.overlong_buffer >= args.max_new_tokens:
        raise cli.UserError(f"--overlong-buffer ({args.overlong_buffer}) must be < --max-new-tokens "
                            f"({args.max_new_tokens})")
    cli.check_out_dir(args.out)
    if args.share_prompt and args.grad_checkpointing:
        raise cli.UserError("--share-prompt needs a KV cache in the training forward, which --grad-checkpointing "
                            "turns off; pass one of them")
    if args.share_prompt is None:
        args.share_prompt = not args.grad_checkpointing
    if args.backend == "hf" and (args.tp > 1 or args.sleep_mode):
        raise cli.UserError("--tp and --sleep-mode are vLLM options; they need --backend vllm (or auto on a GPU)")
    return args


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


# ---------------------------------------------------------------------------------------------------------
# Data order: epoch e is a permutation seeded by (seed, e); the position is one integer, saved in checkpoints.


class PromptStream:
    def __init__(self, problems: list[data.Problem], seed: int, position: int = 0):
        self.problems, self.seed, self.position = problems, seed, position
        self._epoch, self._order = -1, []

    def draw(self, k: int) -> list[data.Problem]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, len(self.problems))
            if epoch != self._epoch:
                self._order = list(range(len(self.problems)))
                random.Random(f"{self.seed}-epoch-{epoch}").shuffle(self._order)
                self._epoch = epoch
            out.append(self.problems[self._order[i]])
            self.position += 1
        return out


def sample_seed(seed: int, step: int, gen_batch: int, replica: int = 0) -> int:
    """Sampling seed of one generation batch: a function of (seed, step, batch), so a resumed run draws the
    same responses as an uninterrupted one. Under torchrun each rollout replica (rank, or group of --tp ranks)
    gets its own stream; replica 0's is the single-process one."""
    key = f"{seed}-{step}-{gen_batch}" + (f"-r{replica}" if replica else "")
    return random.Random(key).getrandbits(31)


# ---------------------------------------------------------------------------------------------------------
# Rollouts and DAPO's dynamic sampling


@dataclass
class Group:
    """One prompt and its n scored responses."""
    problem: data.Problem
    prompt_ids: list[int]
    completions: list[Completion]
    rewards: list[float]  # score + overlong penalty
    accs: list[bool]
    rows: list[dict]  # the rollouts.jsonl records (Trajectory fields + kept)


@dataclass
class StepBatch:
    groups: list[Group]  # the groups trained on (at most prompts_per_step)
    gen_batches: int
    drawn_groups: int
    passed_filter: int  # groups with a spread in the filter metric (all, with dynamic sampling off)
    rows: list[dict]  # every rollout drawn this step
    capped: bool  # the --max-gen-batches cap ended the drawing before the batch was full


def score_groups(problems, comps: list[list[Completion]], prompt_ids: list[list[int]], reward_fn: RewardFn,
                 step: int, max_new_tokens: int, overlong_buffer: int, overlong_factor: float) -> list[Group]:
    """Verifier + overlong shaping for each prompt's n completions."""
    trajs = to_trajectories(problems, comps, reward_fn, step=step, source="explore",
                            prompt_tokens=[len(x) for x in prompt_ids])
    groups, k = [], 0
    for p, ids, cs in zip(problems, prompt_ids, comps):
        ts = trajs[k:k + len(cs)]
        k += len(cs)
        pen = overlong_penalty([len(c.token_ids) for c in cs], max_new_tokens, overlong_buffer, overlong_factor)
        for t, d in zip(ts, pen.tolist()):
            t.reward += d  # the record's reward is what the advantage sees
        rows = [{**t.to_dict(), "kept": False} for t in ts]
        groups.append(Group(p, ids, cs, [t.reward for t in ts], [t.acc for t in ts], rows))
    return groups


def rollout(engine, problems, tokenizer, reward_fn: RewardFn, args, step: int, gen: int, shaping: int) -> list[Group]:
    """Generate and score one generation batch -> its groups, in draw order, on every rank.

    Under torchrun each rollout replica (a rank; with --tp, a group of tp ranks sharing one vLLM engine) takes
    a contiguous share of the prompts, samples and scores it (the verifier runs in parallel too), and the
    shares are gathered in replica order, so every rank holds the same list of groups, in the order one process
    would have produced them (the samples differ: each replica has its own seed)."""
    replicas, replica = dist.world_size() // args.tp, dist.rank() // args.tp
    mine = dist.shard(problems, replicas, replica)
    prompt_ids = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in mine]
    comps = engine.generate([p.prompt for p in mine], n=args.n, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p,
                            seed=sample_seed(args.seed, step, gen, replica))
    groups = score_groups(mine, comps, prompt_ids, reward_fn, step, args.max_new_tokens, shaping,
                          args.overlong_factor)
    return gather_groups(groups, args.tp) if dist.is_distributed() else groups


def gather_groups(groups: list[Group], tp: int = 1) -> list[Group]:
    """Every replica's groups, on every rank, in replica order. What travels: scores and token ids to every
    rank (any rank may train on any kept group: the next step splits mini-batches by rank, not by who sampled);
    the rollouts.jsonl rows (with their text) to rank 0 only, the one writer. Completion text and sampled
    log-probs stay behind (the update recomputes log-probs; the rows hold the text). At DAPO's scale this is
    ~100 MB of pickled token ids per generation batch: small next to minutes of generation."""
    rows = dist.gather_object([g.rows for g in groups])  # rank 0: one list per rank; elsewhere None
    light = [dataclasses.replace(g, rows=[], completions=[Completion(c.token_ids, [], "", c.finish_reason)
                                                          for c in g.completions]) for g in groups]
    shares = dist.all_gather_object(light)
    out = []
    for r in range(0, len(shares), tp):  # the ranks of one tp group hold the same share: take its first
        for j, g in enumerate(shares[r]):
            if rows is not None:
                g.rows = rows[r][j]
            out.append(g)
    return out


def collect_batch(engine, stream: PromptStream, tokenizer, reward_fn: RewardFn, args, step: int,
                  log: Callable[[str], None] = print) -> StepBatch:
    """Draw generation batches until prompts_per_step groups pass the filter (or the cap is hit)."""
    want = args.prompts_per_step
    per_gen = args.gen_batch_size or want
    shaping = args.overlong_buffer if args.overlong_shaping else 0
    kept: list[Group] = []
    rows: list[dict] = []
    drawn = passed = gen = 0
    while True:
        problems = stream.draw(per_gen)  # the same prompts on every rank (same seed, same position)
        groups = rollout(engine, problems, tokenizer, reward_fn, args, step, gen, shaping)
        gen += 1
        drawn += len(groups)
        if args.dynamic_sampling:
            # group g = the g-th prompt of this generation batch (a prompt drawn twice is two groups)
            metric = [float(v) for g in groups for v in (g.accs if args.filter_metric == "acc" else g.rewards)]
            gid = [i for i, g in enumerate(groups) for _ in g.accs]
            kept_ids = set(kept_group_ids(metric, gid))
            ok = [i in kept_ids for i in range(len(groups))]
        else:
            ok = [True] * len(groups)
        for g, good in zip(groups, ok):
            passed += good
            if good and len(kept) < want:  # like verl: surplus groups of the last batch are not trained on
                kept.append(g)
                for r in g.rows:
                    r["kept"] = True
            rows += g.rows
        if len(kept) >= want:
            return StepBatch(kept, gen, drawn, passed, rows, capped=False)
        if args.max_gen_batches and gen >= args.max_gen_batches:
            log(f"step {step}: --max-gen-batches {args.max_gen_batches} reached with {len(kept)} of {want} "
                f"prompts kept; training on those")
            return StepBatch(kept, gen, drawn, passed, rows, capped=True)


# ---------------------------------------------------------------------------------------------------------
# The update. Pure-ish functions of (model, optimizer, tensors). Under torchrun (FSDP2) the same functions
# run on every rank, each on its share of the mini-batch: optimizer_update all-reduces `global_tokens` /
# `global_seqs` and multiplies the loss by the world size (FSDP averages gradients over ranks; the token mean
# over all ranks needs their sum), train_on_batch gives every rank the same number of forward passes.


@dataclass
class Seq:
    prompt_ids: list[int]
    response_ids: list[int]  # sampled tokens, the stop token included
    advantage: float
    old_logp: list[float] | None = None  # per response token; None: fill_old_logprobs scores them


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


@dataclass
class LossConfig:
    eps_low: float = 0.2
    eps_high: float = 0.28
    clip_ratio_c: float = 10.0
    agg: str = "token-mean"
    temperature: float = 1.0  # log-probs under softmax(logits / T), the distribution that was sampled
    bf16: bool | None = None  # bf16 autocast; None = on for cuda


def make_micro_batches(seqs: list[Seq], size: int, pad_id: int, device, balance: bool = True,
                       share_prompt: bool = False) -> list[MicroBatch]:
    """Length-sorted micro-batches of at most `size` sequences (neighbours in length waste little padding).
    balance: choose the number of micro-batches that minimises padding (lib/sft.micro_batches, the SFT's rule);
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
            ids, attn = pad_rows([s.response_ids for s in chunk], pad_id)
            starts = [0] * len(chunk)  # response token t sits in column t
        else:
            ids, attn = pad_rows([s.prompt_ids + s.response_ids for s in chunk], pad_id)
            starts = [len(s.prompt_ids) for s in chunk]  # logp[:, t] scores ids[:, t]: columns P .. P+L-1
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for j, (s, P) in enumerate(zip(chunk, starts)):
            mask[j, P:P + len(s.response_ids)] = True
        adv = torch.tensor([s.advantage for s in chunk], dtype=torch.float32)
        old = None
        if all(s.old_logp is not None for s in chunk):
            old = torch.zeros(ids.shape, dtype=torch.float32)
            for j, (s, P) in enumerate(zip(chunk, starts)):
                old[j, P:P + len(s.response_ids)] = torch.tensor(s.old_logp, dtype=torch.float32)
            old = old.to(device)
        out.append(MicroBatch(ids.to(device), attn.to(device), mask.to(device), adv.to(device), old, prompts))
    return out


def micro_batch_logprobs(model, mb: MicroBatch, temperature: float, with_entropy: bool = False):
    """Log-probs [b, T] (and entropies) of a micro-batch's tokens; the response tokens are where mb.mask is."""
    if mb.prompts is None:
        return token_logprobs(model, mb.ids, mb.attn, temperature, with_entropy=with_entropy)
    p = mb.prompts
    return shared_prompt_logprobs(model, p.ids, p.attn, p.index, mb.ids, mb.attn, temperature,
                                  with_entropy=with_entropy)


def autocast(device: torch.device, bf16: bool | None = None):
    """bf16 compute (default: on GPU) with fp32 master weights (an lr of 1e-6 is below bf16's resolution)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=device.type == "cuda" if bf16 is None else bf16)


def empty_micro_batch(pad_id: int, device, share_prompt: bool = False) -> MicroBatch:
    """A micro-batch with no response token: zero loss, zero gradient. Under FSDP every rank must run the same
    number of forward passes (each one all-gathers with the other ranks); a rank with fewer sequences pads its
    plan with these, in the layout the others use (a shared-prompt micro-batch makes two model calls)."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long, device=device)
    prompts = None
    if share_prompt:
        prompts = SharedPrompts(ids[:, :1], torch.ones_like(ids[:, :1]), torch.zeros(1, dtype=torch.long,
                                                                                      device=device))
    return MicroBatch(ids, torch.ones_like(ids), torch.zeros((1, 2), dtype=torch.bool, device=device),
                      torch.zeros(1, device=device), prompts=prompts)


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


def accumulate_gradients(model, mbs: list[MicroBatch], cfg: LossConfig, global_tokens: float,
                         global_seqs: float, loss_scale: float = 1.0) -> dict:
    """Forward + backward over one mini-batch's micro-batches. Each micro-batch's loss is its share of the
    mini-batch loss (divided by global_tokens / global_seqs, the mini-batch totals), so the accumulated
    gradient equals the one of a single pass over the whole mini-batch. Under data parallelism, pass the
    totals over all ranks and loss_scale = world size (FSDP averages gradients over ranks).
    Returns sums over the mini-batch (this rank's part): loss (unscaled), token-weighted stats, entropy
    (when old_logp is None)."""
    device = mbs[0].ids.device
    out = {"loss": 0.0, "tokens": 0, "clipfrac_high": 0.0, "clipfrac_low": 0.0, "clipfrac_dual": 0.0,
           "approx_kl": 0.0, "entropy_sum": 0.0}
    for mb in mbs:
        reuse = mb.old_logp is None  # the step's first update: the sampling policy IS the current one
        with autocast(device, cfg.bf16):
            if reuse:
                logp, ent = micro_batch_logprobs(model, mb, cfg.temperature, with_entropy=True)
                out["entropy_sum"] += ent.float()[mb.mask].sum().item()
            else:
                logp = micro_batch_logprobs(model, mb, cfg.temperature)  # [b, T]
        logp = logp.float()
        old = logp.detach() if reuse else mb.old_logp
        loss, st = policy_loss(logp, old, mb.adv, mb.mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                               clip_ratio_c=cfg.clip_ratio_c, agg=cfg.agg, global_tokens=global_tokens,
                               global_seqs=global_seqs)
        (loss * loss_scale).backward()
        k = int(mb.mask.sum())
        out["loss"] += loss.item()
        out["tokens"] += k
        if k:  # (an empty padding micro-batch has no stats)
            for name in ("clipfrac_high", "clipfrac_low", "clipfrac_dual", "approx_kl"):
                out[name] += st[name] * k  # stats are means over this micro-batch's tokens
    return out


def optimizer_update(model, optimizer, mbs: list[MicroBatch], cfg: LossConfig, grad_clip: float) -> dict:
    """One optimiser update on one mini-batch. A non-finite loss or gradient skips the update (the weights
    and the optimizer state stay as they were) and reports skipped=True."""
    optimizer.zero_grad(set_to_none=True)
    global_tokens = float(sum(int(mb.mask.sum()) for mb in mbs))
    global_seqs = float(sum(int((mb.mask.sum(-1) > 0).sum()) for mb in mbs))
    if dist.is_distributed():  # the mini-batch is spread over the ranks: normalise by its total over all
        global_tokens, global_seqs = dist.all_reduce_sum([global_tokens, global_seqs])
    st = accumulate_gradients(model, mbs, cfg, global_tokens, global_seqs, loss_scale=dist.loss_scale())
    if dist.is_distributed():  # the whole mini-batch's sums, the same on every rank (so is the skip decision)
        keys = ["loss", "tokens", "clipfrac_high", "clipfrac_low", "clipfrac_dual", "approx_kl", "entropy_sum"]
        st.update(zip(keys, dist.all_reduce_sum([st[k] for k in keys])))
        st["tokens"] = int(st["tokens"])
    # clip_grad_norm_ returns the norm BEFORE clipping: the number the paper's stability claim is about
    grad_norm = dist.clip_grad_norm(model.parameters(), grad_clip)
    st["grad_norm"] = grad_norm
    st["skipped"] = not (math.isfinite(st["loss"]) and math.isfinite(grad_norm))
    if st["skipped"]:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return st


def build_seqs(groups: list[Group]) -> list[list[Seq]]:
    """Per group, its sequences with their group-normalised advantages."""
    rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    gid = torch.tensor([i for i, g in enumerate(groups) for _ in g.rewards])
    adv = group_advantages(rewards, gid).tolist()
    out, k = [], 0
    for g in groups:
        out.append([Seq(g.prompt_ids, c.token_ids, adv[k + j]) for j, c in enumerate(g.completions)])
        k += len(g.completions)
    return out


def train_on_batch(model, optimizer, groups: list[Group], args, pad_id: int, device) -> dict:
    """Split the step's groups into mini-batches of --mini-batch prompts and make one update on each.
    Under torchrun `groups` is the same list on every rank; each rank takes a contiguous share of every
    mini-batch's groups (the update is still one update per mini-batch, over all ranks' shares)."""
    cfg = LossConfig(args.eps_low, args.eps_high if args.clip_higher else args.eps_low, args.clip_ratio_c,
                     args.loss_agg, args.temperature, getattr(args, "bf16", None))
    per_group = build_seqs(groups)  # advantages are per group: the same wherever the group trains
    minis = [[s for grp in dist.shard(per_group[i:i + args.mini_batch]) for s in grp]
             for i in range(0, len(per_group), args.mini_batch)]
    share = args.share_prompt
    plans = [make_micro_batches(m, args.micro_batch, pad_id, device, share_prompt=share) if m else []
             for m in minis]
    if dist.is_distributed():  # the same number of forward/backward passes on every rank (FSDP collectives)
        most = dist.all_reduce_max([len(mbs) for mbs in plans])
        plans = [mbs + [empty_micro_batch(pad_id, device, share) for _ in range(int(k) - len(mbs))]
                 for mbs, k in zip(plans, most)]
    model.train()
    # Old log-probs of mini-batches 2, 3, ... are scored now, before the first update changes the weights.
    # Mini-batch 1 needs no extra forward: its update runs on exactly these weights, so it reuses its own
    # detached log-probs (the same numbers a separate pass would give: ratio exactly 1 on every token).
    ent_sum = ent_tok = 0.0
    for mbs in plans[1:]:
        e, k = fill_old_logprobs(model, mbs, cfg.temperature, cfg.bf16)
        ent_sum, ent_tok = ent_sum + e, ent_tok + k
    if dist.is_distributed() and len(plans) > 1:
        ent_sum, ent_tok = dist.all_reduce_sum([ent_sum, ent_tok])
    results = [optimizer_update(model, optimizer, mbs, cfg, args.grad_clip) for mbs in plans]
    tok = sum(r["tokens"] for r in results) or 1
    if results:  # mini-batch 1's entropy came from its update's forward (already summed over ranks)
        ent_sum, ent_tok = ent_sum + results[0]["entropy_sum"], ent_tok + results[0]["tokens"]
    done = [r for r in results if not r["skipped"]]
    norms = [r["grad_norm"] for r in results]
    return {
        "updates": len(results),
        "skipped": len(results) - len(done),
        "skipped_flags": [r["skipped"] for r in results],
        "pg_loss": sum(r["loss"] for r in results) / max(1, len(results)),
        "entropy": ent_sum / max(1, ent_tok),
        "grad_norm": sum(norms) / max(1, len(norms)),
        "grad_norm_max": max(norms) if norms else 0.0,
        **{k: sum(r[k] for r in results) / tok for k in ("clipfrac_high", "clipfrac_low", "clipfrac_dual",
                                                        "approx_kl")},
        "train_tokens": tok,
    }


# ---------------------------------------------------------------------------------------------------------
# Rollout engines next to an FSDP2 trainer


class ShardedHFEngine(HFEngine):
    """The HF engine over an FSDP2-sharded policy. Ranks decode different prompts for different numbers of
    tokens, so FSDP's per-layer all-gathers inside forward could never line up across ranks; each generate()
    gathers the full weights once on every rank (dist.unsharded), decodes without any collective, and frees
    them again. Costs one full copy of the weights per rank while it runs: fine for the toy and small models;
    at scale use --backend vllm."""

    def generate(self, prompts, *a, **kw):
        with dist.unsharded(self.model):  # a collective: every rank enters, even with no prompt of its own
            return super().generate(prompts, *a, **kw)


# ---------------------------------------------------------------------------------------------------------
# main


def prepare_out(args, load: bool = True) -> tuple[Path | None, dict | None]:
    """Decide between a fresh start and a resume. Returns (checkpoint to resume from, its state if load)."""
    out = Path(args.out)
    checkpoint.clean_partial(out)
    ckpts = checkpoint.list_checkpoints(out)
    if not args.resume:
        if ckpts:
            raise cli.UserError(f"{out} already holds checkpoints (newest {ckpts[-1][1].name}); pass --resume "
                                f"to continue that run or choose another --out")
        return None, None
    last = checkpoint.latest(out)
    if last is None:
        print(f"--resume: no complete checkpoint in {out}; starting from the beginning")
        return None, None
    return last, checkpoint.load_state(last) if load else None


def main(argv=None, *, reward_fn: RewardFn | None = None, engine_fn: Callable | None = None):
    """`reward_fn` replaces the verifier and `engine_fn(model, tokenizer, model_path)` the rollout engine:
    hooks for tests and experiments; the command line never sets them. Under torchrun every rank runs this."""
    args = get_args(argv)
    distributed = dist.init()  # False without torchrun: nothing below touches torch.distributed then
    try:
        with dist.quiet_unless_main():
            return run(args, reward_fn, engine_fn)
    finally:
        if distributed:
            dist.teardown()


def build_engine(args, model, tok, model_path: str, engine_fn: Callable | None, context: int = 0,
                 overrides: dict | None = None):
    if engine_fn is not None:
        return engine_fn(model, tok, model_path)
    backend = resolve_backend(args.backend)
    if backend == "hf" and (args.tp > 1 or args.sleep_mode):
        raise cli.UserError("--tp and --sleep-mode are vLLM options; this run uses the HF engine (no vllm or no GPU)")
    if backend == "vllm":
        return ColocatedVLLM(model_path, tok, max_model_len=context, hf_overrides=overrides, tp=args.tp,
                             sleep_mode=args.sleep_mode,
                             gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed,
                             trust_remote_code=args.trust_remote_code)
    if dist.is_sharded(model):
        return ShardedHFEngine(model, tok)
    return make_engine("hf", model, tok, model_path)


def run(args, reward_fn: RewardFn | None, engine_fn: Callable | None) -> int:
    out = Path(args.out)
    main_rank = dist.is_main()
    if dist.world_size() % args.tp:
        raise cli.UserError(f"--tp {args.tp} must divide the number of processes ({dist.world_size()}); "
                            f"--tp > 1 needs torchrun")
    # the prompt set first: a bad file fails in a second, before any model is loaded ('toy' may build files:
    # rank 0 first)
    problems = dist.main_first(lambda: data.load_problems(args.data, split=args.split, limit=args.limit))
    verifier = reward_fn or reward.load_reward(args.reward)  # a bad --reward fails here too
    val_sets = dist.main_first(lambda: validation.load_benchmarks(args.eval_data, args.eval_split, args.eval_limit)
                               if args.eval_data else {})
    if dist.is_distributed():
        # rank 0 alone inspects and cleans --out; every rank then reads its own part of the resume state
        resume_from = dist.main_decides(lambda: prepare_out(args, load=False)[0])
        state = checkpoint.load_state(resume_from) if resume_from else None
    else:
        resume_from, state = prepare_out(args)
    if state is not None and state["step"] >= args.steps:
        print(f"{out}: finished run (checkpoint {resume_from.name} is at step {state['step']} >= --steps "
              f"{args.steps}); nothing to do")
        return 0

    cli.seed_everything(args.seed)
    device = dist.device(args.device)
    if args.bf16 is None:
        args.bf16 = device.type == "cuda"
    model_path = str(resume_from) if resume_from else dist.main_first(lambda: resolve_model(args.model))
    # The context (prompt + response) the engine samples and the trainer scores, checked from the config and the
    # tokenizer alone, before any weight is loaded or anything written (lib/modeling.plan_context).
    tok = load_tokenizer(model_path, args.trust_remote_code)
    data.render_prompts(problems, tok)
    for val_problems in val_sets.values():
        data.render_prompts(val_problems, tok)
    prompts = [p.prompt for p in problems] + [p.prompt for ps in val_sets.values() for p in ps]
    context, overrides = plan_context(load_config(model_path, args.trust_remote_code), longest_prompt(tok, prompts),
                                      args.max_new_tokens, args.max_model_len, model_path)
    # under FSDP: load on the CPU, shard_model moves only this rank's shard to the device
    model, tok = load_policy(model_path, device="cpu" if dist.is_distributed() else device,
                             trust_remote_code=args.trust_remote_code)
    extend_context(model, overrides)  # saved with every checkpoint: later stages load the same context
    if args.grad_checkpointing:
        dist.enable_grad_checkpointing(model)
    dist.shard_model(model, device, bf16=args.bf16)
    engine = build_engine(args, model, tok, model_path, engine_fn, context, overrides)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  betas=(0.9, 0.999))
    # linear warm-up, then constant (min_ratio 1.0: lr_factor's cosine part is flat), stepped once per step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.warmup_steps, args.steps, min_ratio=1.0))
    stream = PromptStream(problems, args.seed)
    rollouts_path, metrics_path = out / "rollouts.jsonl", out / "metrics.jsonl"
    start, bad_streak = 0, 0
    if state is not None:
        dist.load_optimizer_state(optimizer, state["optimizer"])  # (under FSDP: this rank's shard)
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        stream.position = state["data_position"]
        start, bad_streak = state["step"], state["nonfinite_streak"]
        if main_rank:
            # drop whatever a killed run wrote after its last checkpoint: no torn lines, no duplicate steps
            truncate_to(rollouts_path, state["rollouts_bytes"])
            truncate_to(metrics_path, state["metrics_bytes"])
        print(f"resuming {out} from {resume_from.name} (step {start}, data position {stream.position})")
        free = {"resume", "steps", "save_every", "device", "backend", "gpu_memory_utilization", "max_nonfinite",
                "tp", "sleep_mode", "grad_checkpointing", "share_prompt", "keep_checkpoints", "config", "logger",
                "eval_data", "eval_every", "eval_n", "eval_before_train", "eval_limit", "eval_split",
                "eval_temperature", "eval_top_p"}  # (validation and tracking only watch the run)
        changed = [f"--{k.replace('_', '-')} {v!r} -> {getattr(args, k)!r}" for k, v in state["args"].items()
                   if k not in free and getattr(args, k, v) != v]
        if changed:  # allowed (e.g. a lower lr after a blow-up), but the run is no longer one recipe
            print("warning: resuming with changed arguments: " + ", ".join(changed))
    elif main_rank:
        out.mkdir(parents=True, exist_ok=True)
        for f in (rollouts_path, metrics_path):  # a run killed before its first checkpoint leaves these
            f.unlink(missing_ok=True)
    if main_rank:
        cli.save_args(args, out)
    world = f", {dist.world_size()} ranks (FSDP)" if dist.is_distributed() else ""
    print(f"explore: {len(problems)} prompts, model {model_path}, device {device}{world}, engine "
          f"{type(engine).__name__}, steps {start + 1}..{args.steps}")

    rollouts_bytes = rollouts_path.stat().st_size if main_rank and rollouts_path.exists() else 0
    tracker = tracking.Tracker(tracking.parse_loggers(args.logger) if main_rank else [], out, "explore", vars(args),
                               resume_step=start)

    def val_keys() -> dict:  # every rank runs the validation (an engine call may be a collective)
        return validation.validate(engine, val_sets, args.eval_n, verifier, args.max_new_tokens,
                                   args.eval_temperature, args.eval_top_p, args.seed)

    if val_sets and args.eval_before_train and start == 0:
        row0 = {"step": 0, **{k: _json_num(v) for k, v in val_keys().items()}}
        if main_rank:
            cli.log_metrics(metrics_path, "explore", row0)
            tracker.log(row0, 0)
    bar = tqdm(range(start + 1, args.steps + 1), desc="explore", disable=None if main_rank else True, leave=False)
    for step in bar:
        t0 = time.time()
        batch = collect_batch(engine, stream, tok, verifier, args, step)
        if main_rank:  # (the rows of every rank were gathered on rank 0)
            rollouts_bytes = append_jsonl(rollouts_path, batch.rows)
        t_gen = time.time() - t0
        sleep = getattr(engine, "sleep", None)
        if sleep:  # vLLM --sleep-mode: hand the engine's GPU memory to the update
            sleep()
        if batch.groups:
            st = train_on_batch(model, optimizer, batch.groups, args, tok.pad_token_id, device)
        else:
            print(f"step {step}: no prompt with a reward spread; no update this step")
            st = {"updates": 0, "skipped": 0, "skipped_flags": [], "pg_loss": 0.0, "entropy": float("nan"),
                  "grad_norm": 0.0, "grad_norm_max": 0.0, "clipfrac_high": 0.0, "clipfrac_low": 0.0,
                  "clipfrac_dual": 0.0, "approx_kl": 0.0, "train_tokens": 0}
        # the gradients are dead weight until the next update (7.6B fp32: 30 GB unsharded): free them, and hand
        # the cached blocks back, before a sleeping vLLM engine wakes up and asks for its memory again
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        lr_used = scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # a step without an update (nothing kept) is fine: the schedule is by step
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            scheduler.step()
        wake_up = getattr(engine, "wake_up", None)
        if wake_up:
            wake_up()
        engine.sync_weights(model)  # vLLM: push the new weights in memory; HF engine: no-op (same model)
        step_time = time.time() - t0

        for skipped in st["skipped_flags"]:  # consecutive non-finite updates, across steps (same on every rank)
            bad_streak = bad_streak + 1 if skipped else 0
        val = val_keys() if val_sets and validation.due(step, args.eval_every, args.steps) else {}
        if main_rank:  # (rank 0 holds every rank's rollout rows: the step's numbers are computed there)
            row = {k: _json_num(v) for k, v in {**step_row(step, batch, st, lr_used, t_gen, step_time), **val}.items()}
            cli.log_metrics(metrics_path, "explore", row)
            tracker.log(row, step)
            if step % args.save_every == 0 or step == args.steps:
                tracker.table("samples", tracking.SAMPLE_COLUMNS, tracking.sample_rows(batch.rows), step)
            bar.set_postfix(reward=row["reward"], acc=row["acc"], tok_s=round(row["tokens_per_s"] or 0))
        if bad_streak >= args.max_nonfinite:
            raise cli.UserError(f"step {step}: {bad_streak} consecutive updates had a non-finite loss or gradient "
                                f"(--max-nonfinite {args.max_nonfinite}); stopping. Lower --lr or check the data; "
                                f"--resume continues from the last checkpoint", code=1)

        if step % args.save_every == 0 or step == args.steps:
            # under FSDP: "optimizer" is this rank's shard (resume/optim_rank{r}.pt), the rest is rank 0's
            state = {"optimizer": dist.optimizer_state(optimizer), "scheduler": scheduler.state_dict(),
                     "data_position": stream.position, "nonfinite_streak": bad_streak,
                     "rollouts_bytes": rollouts_bytes,
                     "metrics_bytes": metrics_path.stat().st_size if main_rank else 0,
                     "args": dict(vars(args))}
            saved = checkpoint.save(out, step, model, tok, state)  # (a collective under FSDP)
            if main_rank:  # one resume state is enough (the newest); older folders: bf16 weights, or deleted
                checkpoint.retire_older(out, saved, keep=args.keep_checkpoints,
                                        dtype=torch.bfloat16 if args.bf16 else None)
            print(f"saved {saved}")
    tracker.close()
    return 0


def step_row(step: int, batch: StepBatch, st: dict, lr_used: float, t_gen: float, step_time: float) -> dict:
    """The metrics.jsonl row of one step (rank 0: it holds every rank's rollout rows)."""
    lengths = [r["response_tokens"] for r in batch.rows]
    return {
        "step": step,
        "reward": _mean([r["reward"] for r in batch.rows]),  # over every rollout drawn this step
        "acc": _mean([float(r["acc"]) for r in batch.rows]),
        "train_reward": _mean([x for g in batch.groups for x in g.rewards]),  # the trained (filtered) groups
        "groups_kept": batch.passed_filter / max(1, batch.drawn_groups),
        "gen_batches": batch.gen_batches,
        "train_prompts": len(batch.groups),
        "capped": int(batch.capped),
        "resp_len_mean": _mean(lengths),
        "resp_len_max": max(lengths),
        "truncated": _mean([float(r["finish_reason"] == "length") for r in batch.rows]),
        "entropy": st["entropy"],
        "pg_loss": st["pg_loss"],
        "grad_norm": st["grad_norm"],
        "grad_norm_max": st["grad_norm_max"],
        "clipfrac_high": st["clipfrac_high"],
        "clipfrac_low": st["clipfrac_low"],
        "clipfrac_dual": st["clipfrac_dual"],
        "approx_kl": st["approx_kl"],
        "updates": st["updates"],
        "skipped_updates": st["skipped"],
        "lr": lr_used,
        # verl's throughput: prompt + response tokens of every rollout drawn, per second of the whole step
        "tokens_per_s": sum(r["prompt_tokens"] + r["response_tokens"] for r in batch.rows) / max(step_time, 1e-9),
        "gen_time": t_gen,
        "step_time": step_time,
    }


def _json_num(v):
    """Rounded floats; nan / inf become null (strict JSON: jq and friends reject NaN)."""
    if isinstance(v, float):
        return round(v, 5) if math.isfinite(v) else None
    return v


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


if __name__ == "__main__":
    cli.run_main(main)
