"""explore.py — DAPO reinforcement learning: RLoop's exploration phase, and the vanilla-RL baseline run longer.

One training step (DAPO, arXiv 2503.14476, as verl's DAPO recipe runs it):
  1. draw prompts (a fixed, seeded order over the prompt set) and sample n responses to each
  2. reward = verifier score (+1 / -1, lib/algo/reward.py) + overlong penalty (soft, over the last
     --overlong-buffer tokens before --max-new-tokens)
  3. dynamic sampling: drop every prompt whose n responses are all right or all wrong (their
     group-normalised advantage is 0: they would only dilute the token mean), and keep drawing
     generation batches until --prompts-per-step prompts survive (--max-gen-batches caps the draws)
  4. advantage of each response = (r - mean of its group) / (std of its group + 1e-6)    [advantages()]
  5. old log-probs: the policy that sampled, scored by the training forward before any update (as verl),
     so the first update sees a ratio of exactly 1; the first mini-batch's are its update's own detached
     log-probs (the same numbers, one forward pass fewer)
  6. prompts-per-step / mini-batch optimiser updates (AdamW). Each update sees --mini-batch prompts with
     all their responses and accumulates gradients over micro-batches; the token-mean loss is divided by
     the token count of the WHOLE mini-batch, so micro-batching never changes the objective (trl#5619)
  7. push the new weights into the rollout engine (vLLM: in memory; the HF engine samples the policy itself)
  loss per token = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), for A < 0 capped at -A c (dual clip),
  r = pi(token) / pi_old(token). No KL penalty, no entropy bonus (DAPO drops both); --kl-coef C > 0 adds
  C x KL(pi || pi_init) per token (verl's low_var_kl, lib/algo/dapo.kl_penalty; aggregated like the policy loss),
  pi_init = this run's initial policy, frozen: the constrained-optimisation baseline.

The four DAPO tricks, each one flag: --clip-higher (eps_high 0.28 > eps_low 0.2), --dynamic-sampling,
--loss-agg token-mean (token-level loss), --overlong-shaping. One speed trick, exact: --share-prompt (each
prompt's n responses read one forward pass of it through its KV cache; lib/train/modeling.shared_prompt_logprobs).

    python explore.py          # the toy: 60 steps in ~2 min on 2 CPU cores (the full-scale flags: docs/full-scale.md)

Writes under --out metrics.jsonl (a row per step), rollouts.jsonl (every sampled response), ckpt_{step:06d}/
(from_pretrained / vLLM folders; the newest holds resume/), args.json, done.json (docs/outputs.md). --resume ends
with the weights an uninterrupted run ends with (flags that shape the weights must not change).

Under torchrun FSDP2 shards the policy; every rank draws the same prompts, each rollout replica (a rank, or --tp
ranks sharing one vLLM engine) samples its share, the scored shares are gathered so every rank takes the same filter
decisions, and each rank trains on its share of every mini-batch (docs/scaling.md). Rank 0 alone writes.
"""
from __future__ import annotations

import argparse
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from lib.algo import reward
from lib.algo.dapo import group_advantages, kept_group_ids, overlong_penalty
from lib.engine import validation
from lib.engine.rollout import (
    Completion,
    add_engine_args,
    check_engine_args,
    gather_replicas,
    make_engine,
    replica_share,
    rollout_dtype,
    sample_and_score,
    sample_seed,
)
from lib.run import cli, data, tracking
from lib.run.metrics import capped_summary, json_num, rl_step_row
from lib.run.records import append_jsonl, read_jsonl
from lib.train import checkpoint, dist
from lib.train.modeling import (
    extend_context,
    load_config,
    load_policy,
    load_tokenizer,
    longest_prompt,
    plan_context,
)
from lib.train.update import (
    LossConfig,
    Seq,
    UpdateConfig,
    add_trainer_args,
    default_bf16,
    empty_micro_batch,
    equal_passes,
    fill_old_logprobs,
    fill_ref_logprobs,
    frozen_reference,
    load_device,
    lr_factor,
    make_micro_batches,
    optimizer_update,
    prepare,
    rollout_probs_diff,
)
from lib.worlds import toy

RewardFn = Callable[[str, str], dict]  # (response, ground_truth) -> {"score", "acc", "pred"}


def advantages(groups: list[Group]) -> list[list[float]]:
    """The advantage of every response, group by group: (r - mean of its group) / (std of its group + 1e-6)
    (GRPO / DAPO, lib/algo/dapo.group_advantages), r = verifier score + overlong penalty.
    To fork: return other numbers here (e.g. r - mean without the std, or a leave-one-out baseline); one
    float per response of each group, in group order. Nothing else in the update needs to change."""
    rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64)
    gid = torch.tensor([i for i, g in enumerate(groups) for _ in g.rewards])
    flat, out, k = group_advantages(rewards, gid).tolist(), [], 0
    for g in groups:
        out.append(flat[k:k + len(g.rewards)])
        k += len(g.rewards)
    return out


# ---------------------------------------------------------------------------------------------------------
# The run: every step samples and filters a batch, updates the policy on it, pushes the weights to the engine


def run(args, reward_fn: RewardFn | None, engine_fn: Callable | None) -> int:
    r = setup(args, reward_fn, engine_fn)  # the policy, its engine and optimiser, resumed where a checkpoint says
    if r is None:
        return 0
    main_rank, engine, model, optimizer = r.main_rank, r.engine, r.model, r.optimizer
    update = update_config(args, kl=r.ref is not None)
    if r.val_sets and args.eval_before_train and r.start == 0:
        r.log_row({"step": 0}, 0)
    bar = tqdm(range(r.start + 1, args.rl_steps + 1), desc="explore", disable=None if main_rank else True, leave=False)
    for step in bar:
        t0 = time.time()
        batch = collect_batch(engine, r.stream, r.tok, r.verifier, args, step)
        if main_rank:  # (the rows of every rank were gathered on rank 0)
            r.rollouts_bytes = append_jsonl(r.rollouts_path, batch.rows)
        t_gen = time.time() - t0
        if hasattr(engine, "sleep"):  # vLLM --sleep-mode: hand the engine's GPU memory to the update
            engine.sleep()
        if not batch.groups:
            print(f"step {step}: no prompt with a reward spread; no update this step")
        st = train_on_batch(model, optimizer, batch.groups, update, r.tok.pad_token_id, r.device, r.ref)
        # the gradients are dead weight until the next update (7.6B fp32: 30 GB unsharded): free them, and hand
        # the cached blocks back, before a sleeping vLLM engine wakes up and asks for its memory again
        optimizer.zero_grad(set_to_none=True)
        if r.device.type == "cuda":
            torch.cuda.empty_cache()
        lr_used = r.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # a step without an update (nothing kept) is fine: the schedule is by step
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            r.scheduler.step()
        if hasattr(engine, "wake_up"):
            engine.wake_up()
        engine.sync_weights(model)  # vLLM: push the new weights in memory; HF engine: no-op (same model)

        for skipped in st["skipped_flags"]:  # consecutive non-finite updates, across steps (same on every rank)
            r.bad_streak = r.bad_streak + 1 if skipped else 0
        # (rank 0 holds every rank's rollout rows: the step's numbers are computed there)
        row = r.log_row(rl_step_row(step, batch, st, lr_used, t_gen, time.time() - t0) if main_rank else
                        {"step": step}, step)
        save = step % args.save_every == 0 or step == args.rl_steps
        if main_rank:
            if save:
                r.tracker.table("samples", tracking.SAMPLE_COLUMNS, tracking.sample_rows(batch.rows), step)
            bar.set_postfix(reward=row["reward"], acc=row["mean_acc"], tok_s=round(row["tokens_per_s"] or 0))
        if r.bad_streak >= args.max_nonfinite:
            raise cli.UserError(f"step {step}: {r.bad_streak} consecutive updates had a non-finite loss or gradient "
                                f"(--max-nonfinite {args.max_nonfinite}); stopping. Lower --lr or check the data; "
                                f"--resume continues from the last checkpoint", code=1)
        if save:
            state = checkpoint.trainer_state(optimizer, r.scheduler, data_position=r.stream.position,
                                             nonfinite_streak=r.bad_streak, rollouts_bytes=r.rollouts_bytes,
                                             metrics_bytes=r.metrics_path.stat().st_size if main_rank else 0,
                                             args=dict(vars(args)))
            saved = checkpoint.save(r.out, step, model, r.tok, state)  # (a collective under FSDP)
            if main_rank:  # one resume state is enough (the newest); older folders: bf16 weights, or deleted
                checkpoint.retire_older(r.out, saved, keep=args.keep_checkpoints,
                                        dtype=torch.bfloat16 if args.bf16 else None)
            print(f"saved {saved}")
    r.tracker.close()
    if main_rank and args.dynamic_sampling and args.max_gen_batches:  # the whole run's, resumed parts included
        print(capped_summary([x for _, x in read_jsonl(r.metrics_path, allow_empty=True)], args.max_gen_batches))
    if main_rank:
        cli.mark_done(r.out, "explore", rl_steps=args.rl_steps)
    engine.close()  # (vLLM: frees its memory and its process groups before torch.distributed is torn down)
    return 0


# ---------------------------------------------------------------------------------------------------------
# A step's batch: rollouts, rewards, DAPO's dynamic sampling


@dataclass
class Group:  # one prompt and its n scored responses
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


def rollout(engine, problems, tokenizer, reward_fn: RewardFn, args, step: int, gen: int) -> list[Group]:
    """Sample and score one generation batch, add the overlong penalty -> its groups, in draw order, on every
    rank. Under torchrun each rollout replica (a rank, or a group of --tp ranks sharing one vLLM engine) samples
    and scores a contiguous share (its own seed), and the shares are gathered in replica order."""
    mine, replica = replica_share(problems, args.tp)
    scored = sample_and_score(engine, mine, reward_fn, n=args.n_samples, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_p=args.top_p, tokenizer=tokenizer,
                              seed=sample_seed(args.seed, step, gen, replica), step=step, source="explore")
    if dist.is_distributed():
        scored = gather_replicas(scored, args.tp)
    shaping = args.overlong_buffer if args.overlong_shaping else 0
    groups = []
    for s in scored:
        pen = overlong_penalty([len(c.token_ids) for c in s.completions], args.max_new_tokens, shaping,
                               args.overlong_factor)
        for t, d in zip(s.trajectories, pen.tolist()):
            t.reward += d  # the record's reward is what the advantage sees
        rows = [{**t.to_dict(), "kept": False} for t in s.trajectories]
        groups.append(Group(s.problem, s.prompt_ids, s.completions, [t.reward for t in s.trajectories],
                            [t.acc for t in s.trajectories], rows))
    return groups


def collect_batch(engine, stream: data.PromptStream, tokenizer, reward_fn: RewardFn, args, step: int,
                  log: Callable[[str], None] = print) -> StepBatch:
    """Draw generation batches until prompts_per_step groups pass the filter (or the cap is hit)."""
    want = args.prompts_per_step
    kept: list[Group] = []
    rows: list[dict] = []
    drawn = passed = gen = 0
    while True:
        problems = stream.draw(args.gen_batch_size or want)  # the same prompts on every rank (same seed, position)
        groups = rollout(engine, problems, tokenizer, reward_fn, args, step, gen)
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
                for x in g.rows:
                    x["kept"] = True
            rows += g.rows
        if len(kept) >= want:
            return StepBatch(kept, gen, drawn, passed, rows, capped=False)
        if args.max_gen_batches and gen >= args.max_gen_batches:
            log(f"step {step}: --max-gen-batches {args.max_gen_batches} reached with {len(kept)} of {want} "
                f"prompts kept; this step trains on {len(kept)} prompts (capped 1 in metrics.jsonl)")
            return StepBatch(kept, gen, drawn, passed, rows, capped=True)


# ---------------------------------------------------------------------------------------------------------
# The update: one optimiser update per mini-batch (lib/train/update.optimizer_update: DAPO's loss over micro-batches)


def update_config(args, kl: bool = False) -> UpdateConfig:
    """The flags' update; kl: a frozen reference is there (--kl-coef > 0)."""
    eps_high = args.eps_high if args.clip_higher else args.eps_low
    loss = LossConfig(args.eps_low, eps_high, args.clip_ratio_c, args.loss_agg, args.temperature, args.bf16,
                      args.kl_coef if kl else 0.0)
    return UpdateConfig(args.mini_batch, args.micro_batch, args.share_prompt, args.grad_clip, loss)


def build_seqs(groups: list[Group]) -> list[list[Seq]]:
    """Per group, its sequences (prompt, sampled response) with their advantages."""
    return [[Seq(g.prompt_ids, c.token_ids, a, rollout_logp=c.logprobs) for c, a in zip(g.completions, adv)]
            for g, adv in zip(groups, advantages(groups))]


def train_on_batch(model, optimizer, groups: list[Group], cfg: UpdateConfig, pad_id: int, device, ref=None) -> dict:
    """Split the step's groups into mini-batches of cfg.mini_batch prompts and make one update on each.
    Under torchrun `groups` is the same list on every rank; each rank takes a contiguous share of every
    mini-batch's groups (the update is still one update per mini-batch, over all ranks' shares).
    ref: the frozen KL reference (with --kl-coef > 0)."""
    loss = cfg.loss
    per_group = build_seqs(groups)  # advantages are per group: the same wherever the group trains
    minis = [[s for grp in dist.shard(per_group[i:i + cfg.mini_batch]) for s in grp]
             for i in range(0, len(per_group), cfg.mini_batch)]
    plans = [make_micro_batches(m, cfg.micro_batch, pad_id, device, share_prompt=cfg.share_prompt) if m else []
             for m in minis]
    plans = equal_passes(plans, lambda: empty_micro_batch(pad_id, device, cfg.share_prompt))  # (FSDP)
    model.train()
    # Old log-probs of mini-batches 2, 3, ... are scored now, before the first update changes the weights.
    # Mini-batch 1 needs no extra forward: its update runs on exactly these weights, so it reuses its own
    # detached log-probs (the same numbers a separate pass would give: ratio exactly 1 on every token).
    ent_sum = ent_tok = 0.0
    if loss.kl_coef and ref is not None:  # the reference's log-probs, through the update's forward and micro-batches
        for mbs in plans:
            fill_ref_logprobs(ref, mbs, loss.temperature, loss.bf16)
    for mbs in plans[1:]:
        e, k = fill_old_logprobs(model, mbs, loss.temperature, loss.bf16)
        ent_sum, ent_tok = ent_sum + e, ent_tok + k
    if dist.is_distributed() and len(plans) > 1:
        ent_sum, ent_tok = dist.all_reduce_sum([ent_sum, ent_tok])
    results = [optimizer_update(model, optimizer, mbs, loss, cfg.grad_clip) for mbs in plans]
    gap = rollout_probs_diff([mb for mbs in plans for mb in mbs])  # engine vs trainer, every trained token
    n_tok = sum(x["tokens"] for x in results)
    if results:  # mini-batch 1's entropy came from its update's forward (already summed over ranks)
        ent_sum, ent_tok = ent_sum + results[0]["entropy_sum"], ent_tok + results[0]["tokens"]
    norms = [x["grad_norm"] for x in results]
    return {
        "updates": len(results),
        "skipped": sum(x["skipped"] for x in results),
        "skipped_flags": [x["skipped"] for x in results],
        "pg_loss": sum(x["loss"] for x in results) / max(1, len(results)),
        "entropy": ent_sum / ent_tok if ent_tok else float("nan"),
        "grad_norm": sum(norms) / max(1, len(norms)),
        "grad_norm_max": max(norms) if norms else 0.0,
        **{k: sum(x[k] for x in results) / (n_tok or 1) for k in ("clipfrac_high", "clipfrac_low", "clipfrac_dual",
                                                                 "approx_kl")},
        "train_tokens": n_tok,
        "kl": sum(x["kl"] for x in results) / max(1, len(results)),  # the KL term (before kl_coef), per update
        **gap,
    }


# ---------------------------------------------------------------------------------------------------------
# Setup: everything before the first step. Bad input fails before any weight loads or anything is written.


@dataclass
class Run:
    out: Path
    main_rank: bool
    device: torch.device
    model: torch.nn.Module  # the policy (FSDP-sharded under torchrun) and its tokenizer
    tok: object
    engine: object  # lib/engine/rollout's
    optimizer: torch.optim.Optimizer
    scheduler: object
    stream: data.PromptStream
    verifier: RewardFn
    val_sets: dict  # {benchmark: problems} for validation during RL
    ref: torch.nn.Module | None  # the frozen KL reference (--kl-coef)
    tracker: tracking.Tracker
    rollouts_path: Path
    metrics_path: Path
    log_row: Callable[[dict, int], dict]  # validates when due, logs the row (rank 0), returns it
    start: int = 0  # steps done
    bad_streak: int = 0  # consecutive non-finite updates
    rollouts_bytes: int = 0  # rollouts.jsonl's size (a checkpoint's resume point)


def setup(args, reward_fn: RewardFn | None, engine_fn: Callable | None) -> Run | None:
    """The run, ready for its next step: policy (FSDP-sharded under torchrun), rollout engine, optimiser and
    schedule, prompt stream, resumed from the newest checkpoint with --resume. None: the run had finished."""
    out, main_rank = Path(args.out), dist.is_main()
    if dist.world_size() % args.tp:
        raise cli.UserError(f"--tp {args.tp} must divide the number of processes ({dist.world_size()}); "
                            f"--tp > 1 needs torchrun")
    # the prompt set first: a bad file fails in a second, before any model loads ('toy' writes files: rank 0 first)
    problems = dist.main_first(lambda: data.load_problems(toy.resolve(args.data, "data"), args.split, limit=args.limit))
    verifier = reward_fn or reward.load_reward(args.reward)  # a bad --reward fails here too
    val_sets = dist.main_first(lambda: validation.load_benchmarks(toy.resolve(args.eval_benchmarks, "benchmarks"),
                                                                  args.eval_split, args.eval_limit)
                               if args.eval_benchmarks else {})
    # rank 0 alone inspects and cleans --out; every rank then reads its own part of the resume state
    resume_from = dist.main_decides(lambda: checkpoint.resume_point(out, args.resume))
    state = checkpoint.load_state(resume_from) if resume_from else None
    if state is not None and state["step"] >= args.rl_steps:
        print(f"{out}: finished run (checkpoint {resume_from.name} is at step {state['step']} >= --rl-steps "
              f"{args.rl_steps}); nothing to do")
        return None

    cli.seed_everything(args.seed)
    device = dist.device(args.device)
    if args.bf16 is None:
        args.bf16 = default_bf16(device)
    if state is not None:  # before anything is written: a resumed run is the same run
        checkpoint.check_same_args(state["args"], vars(args), FREE_ON_RESUME, out)
    init_path = dist.main_first(lambda: toy.resolve(args.model, "model"))
    model_path = str(resume_from) if resume_from else init_path
    # The context (prompt + response) the engine samples and the trainer scores, checked from the config and the
    # tokenizer alone, before any weight is loaded or anything written (lib/train/modeling.plan_context).
    tok = load_tokenizer(model_path, args.trust_remote_code)
    problems = data.drop_long_prompts(data.render_prompts(problems, tok), tok, args.max_prompt_len, args.data)
    val_sets = {name: data.drop_long_prompts(data.render_prompts(ps, tok), tok, args.max_prompt_len,
                                             f"validation set {name}") for name, ps in val_sets.items()}
    prompts = [p.prompt for ps in (problems, *val_sets.values()) for p in ps]
    context, overrides = plan_context(load_config(model_path, args.trust_remote_code), longest_prompt(tok, prompts),
                                      args.max_new_tokens, args.max_model_len, model_path, args.max_prompt_len)
    model, tok = load_policy(model_path, device=load_device(device), trust_remote_code=args.trust_remote_code)
    extend_context(model, overrides)  # saved with every checkpoint: later stages load the same context
    prepare(model, device, args.bf16, args.grad_checkpointing)  # (under torchrun: FSDP2 shards)
    # the KL reference: this run's initial policy (--model, also on --resume), loaded after the policy is sharded
    ref = frozen_reference(init_path, device, args.bf16, overrides, args.trust_remote_code) if args.kl_coef > 0 else None
    engine = engine_fn(model, tok, model_path) if engine_fn else make_engine(
        args.backend, model, tok, model_path, colocated=True, tp=args.tp, sleep_mode=args.sleep_mode,
        dtype=rollout_dtype(args.rollout_dtype, args.bf16), max_model_len=context, hf_overrides=overrides,
        gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed, trust_remote_code=args.trust_remote_code)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999))
    # linear warm-up, then constant (min_ratio 1.0: lr_factor's cosine part is flat), stepped once per step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.warmup_steps, args.rl_steps, min_ratio=1.0))
    stream = data.PromptStream(problems, args.seed)
    rollouts_path, metrics_path = out / "rollouts.jsonl", out / "metrics.jsonl"
    start, bad_streak = 0, 0
    if state is not None:
        checkpoint.restore_trainer(state, optimizer, scheduler)
        checkpoint.set_rng_state(state["rng"])
        stream.position = state["data_position"]
        start, bad_streak = state["step"], state["nonfinite_streak"]
        if main_rank:
            checkpoint.restore_logs(state, {"rollouts_bytes": rollouts_path, "metrics_bytes": metrics_path})
        print(f"resuming {out} from {resume_from.name} (step {start}, data position {stream.position})")
    elif main_rank:
        checkpoint.start_fresh(out, [rollouts_path, metrics_path])
    if main_rank:
        cli.save_args(args, out)
    world = f", {dist.world_size()} ranks (FSDP)" if dist.is_distributed() else ""
    print(f"explore: {len(problems)} prompts, model {model_path}, device {device}{world}, engine "
          f"{type(engine).__name__}, steps {start + 1}..{args.rl_steps}")
    tracker = tracking.Tracker(tracking.parse_loggers(args.logger) if main_rank else [], out, "explore", vars(args),
                               resume_step=start)

    def log_row(row: dict, step: int) -> dict:  # every rank runs the validation (an engine call may be a collective)
        if val_sets and (step == 0 or validation.due(step, args.eval_every, args.rl_steps)):
            row.update(validation.validate(engine, val_sets, args.eval_n_samples, verifier, args.max_new_tokens,
                                           args.eval_temperature, args.eval_top_p, args.seed))
        row = {k: json_num(v) for k, v in row.items()}
        if main_rank:
            cli.log_metrics(metrics_path, "explore", row)
            tracker.log(row, step)
        return row

    return Run(out, main_rank, device, model, tok, engine, optimizer, scheduler, stream, verifier, val_sets, ref,
               tracker, rollouts_path, metrics_path, log_row, start, bad_streak,
               rollouts_path.stat().st_size if main_rank and rollouts_path.exists() else 0)


# ---------------------------------------------------------------------------------------------------------
# Flags. Those that only place, watch or pace the run may change on --resume (lib/train/checkpoint.check_same_args).

FREE_ON_RESUME = {"resume", "out", "rl_steps", "save_every", "device", "backend", "rollout_dtype",
                  "gpu_memory_utilization", "max_nonfinite", "tp", "sleep_mode", "grad_checkpointing", "share_prompt",
                  "keep_checkpoints", "config", "logger", *validation.FLAGS}


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("run").add_argument
    g("--model", default="toy", help="initial policy: folder or hub id; 'toy' = the embedded toy base model")
    g("--out", default="runs/explore", help="output folder")
    g("--rl-steps", "--steps", dest="rl_steps", type=int, default=60, help="RL steps of this run")
    g("--save-every", type=int, default=10, help="checkpoint every N steps (and always at the last step)")
    g("--keep-checkpoints", default="all",
      help="checkpoint folders kept: 'all', 'last', or K (multiples of K, and the newest); with --bf16 all but the "
           "newest (fp32 + resume state) are rewritten in bf16")
    g("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    g("--seed", type=int, default=0, help="data order, sampling and init seed")
    g = p.add_argument_group("data").add_argument
    g("--data", default="toy", help="prompt set: JSONL / JSON / parquet file or dataset id; 'toy' = toy train split")
    g("--split", default="train", help="dataset split, for --data given as a hub dataset id")
    g("--limit", type=int, default=0, help="use only the first N problems (0 = all)")
    g("--max-prompt-len", type=int, default=0,
      help="drop (one line counts them; never truncated: verl's filter_overlong_prompts) prompts longer than N tokens "
           "with the chat template; the context is planned for N + --max-new-tokens. 0 = no cap (verl 7B: 2048)")
    g("--reward", default="dapo",
      help="verifier: dapo | math_verify (lib/algo/reward.py) | path/to/file.py:function (runs that file; same "
           "signature as lib/algo/reward.score: (response, ground_truth) -> {score, acc, pred})")
    g = p.add_argument_group("sampling").add_argument
    g("--prompts-per-step", type=int, default=32, help="prompts trained on per step (DAPO: 512)")
    g("--gen-batch-size", type=int, default=0,
      help="prompts per generation batch; 0 = --prompts-per-step (verl's 7B DAPO: 512; DAPO 32B: 1536)")
    g("--n-samples", "--n-responses", "--n", dest="n_samples", type=int, default=8,
      help="responses per prompt (DAPO: 16); torchrun's own parser takes --n as its --nnodes / --nproc-per-node")
    g("--max-new-tokens", type=int, default=80, help="response length cap (verl's 7B DAPO: 8192; DAPO 32B: 20480)")
    g("--temperature", type=float, default=1.0, help="sampling temperature (DAPO: 1.0)")
    g("--top-p", type=float, default=1.0, help="nucleus sampling (DAPO: 1.0)")
    g = p.add_argument_group("DAPO").add_argument
    g("--dynamic-sampling", action=B, default=True,
      help="drop prompts whose responses all have the same accuracy, draw more until full")
    g("--filter-metric", default="acc", choices=["acc", "reward"],
      help="what must vary within a group to keep it (verl's DAPO scripts: acc, before the overlong penalty)")
    g("--max-gen-batches", type=int, default=10,
      help="generation batches per step (0 = no cap; DAPO: 10). At the cap the step trains on the prompts kept "
           "(verl stops instead: a multi-day run should not die on one hard stretch of data): one log line, "
           "capped 1 in its metrics row, the count of capped steps at the end")
    g("--overlong-shaping", action=B, default=True,
      help="soft penalty for responses within --overlong-buffer tokens of --max-new-tokens")
    g("--overlong-buffer", type=int, default=16, help="penalty ramp length in tokens (DAPO: 4096)")
    g("--overlong-factor", type=float, default=1.0, help="penalty at the cap (DAPO: 1.0)")
    g("--clip-higher", action=B, default=True,
      help="decoupled clip range; --no-clip-higher uses eps_low on both sides (PPO/GRPO)")
    g("--eps-low", type=float, default=0.2, help="lower clip: ratio >= 1 - eps_low (DAPO: 0.2)")
    g("--eps-high", type=float, default=0.28, help="upper clip: ratio <= 1 + eps_high (DAPO: 0.28)")
    g("--clip-ratio-c", type=float, default=10.0, help="dual clip for A < 0: loss <= -A * c (DAPO/verl: 10)")
    g("--loss-agg", default="token-mean", choices=["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"],
      help="token-mean (DAPO's token-level loss); GRPO's original is seq-mean-token-mean")
    g("--kl-coef", type=float, default=0.0,
      help="weight of a KL penalty to the run's initial policy (verl's low_var_kl per token, aggregated like the "
           "policy loss); 0 = off, as DAPO (> 0 keeps a frozen second copy of the policy)")
    o = p.add_argument_group("optimisation")
    g = o.add_argument
    g("--mini-batch", type=int, default=16,
      help="prompts (with all their responses) per optimiser update (DAPO: 32, i.e. 16 updates per step)")
    g("--micro-batch", type=int, default=64, help="sequences per forward/backward (gradient accumulation)")
    g("--share-prompt", action=B, default=None,
      help="each prompt runs once per micro-batch, its responses read its KV cache (the same gradients, 38%% fewer "
           "matmul FLOPs on the toy); default on, off with --grad-checkpointing (no KV cache there)")
    g("--lr", type=float, default=5e-5, help="AdamW learning rate (DAPO: 1e-6)")
    g("--warmup-steps", type=int, default=3, help="linear lr warm-up over this many steps, then constant (DAPO: 10)")
    g("--weight-decay", type=float, default=0.1, help="AdamW weight decay (DAPO: 0.1)")
    g("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this (DAPO: 1.0)")
    g("--max-nonfinite", type=int, default=5,
      help="stop after this many consecutive updates with a non-finite loss or gradient (each is skipped)")
    add_trainer_args(o, "cpu / cuda / auto (under torchrun on GPU: cuda:LOCAL_RANK)")  # --bf16, --grad-checkpointing
    e = p.add_argument_group("engine")
    add_engine_args(e, gpu_memory_utilization=0.5, colocated=True)  # --backend, --tp, --sleep-mode, --rollout-dtype
    e.add_argument("--max-model-len", type=int, default=0,
                   help="context in tokens (prompt + response) of sampling and training; 0 = the model's "
                        "max_position_embeddings. Above the model's, its config is raised to N (vLLM hf_overrides; every "
                        "checkpoint carries N). verl's DAPO on Qwen2.5-Math-7B (4096): 32768")
    e.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off: safer)")
    validation.add_args(p.add_argument_group("validation during RL"))  # --eval-benchmarks, --eval-every, ...
    p.add_argument_group("logging").add_argument(
        "--logger", default="", help="live tracking, comma-separated: tensorboard (OUT/tensorboard), wandb; every "
                                     "metrics.jsonl row mirrored as explore/KEY, plus a table of sampled responses "
                                     "every --save-every steps")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args) -> None:
    """The flags, checked: one line naming the flag."""
    tracking.parse_loggers(args.logger)  # an unknown name or a missing package: one line, now
    validation.check_args(args)
    cli.check_positive(args, "rl_steps", "save_every", "prompts_per_step", "n_samples", "max_new_tokens", "mini_batch",
                       "micro_batch", "max_nonfinite")
    cli.check_positive(args, "kl_coef", "limit", "gen_batch_size", "max_gen_batches", "overlong_buffer",
                       "warmup_steps", "max_model_len", "max_prompt_len", allow_zero=True)
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
    args.share_prompt = not args.grad_checkpointing if args.share_prompt is None else args.share_prompt
    check_engine_args(args)


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


if __name__ == "__main__":
    cli.run_main(main)
