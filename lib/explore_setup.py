"""explore.py's run around the algorithm: its flags, the typed config it hands the stage, and the run itself (the
policy, its rollout engine, optimiser and schedule, the prompt stream, resume, validation, logging, checkpoints).

explore.py reads as DAPO (advantages, losses, the batch, the step loop); everything here is what a run needs to
get there and to be resumable. Bad input fails before any weight loads or anything is written.
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
from lib.engine import validation
from lib.engine.rollout import add_engine_args, check_engine_args, make_engine, rollout_dtype
from lib.run import cli, data, tracking
from lib.run.metrics import capped_summary, json_num, rl_step_row
from lib.run.records import append_jsonl, read_jsonl
from lib.train import checkpoint, dist
from lib.train.modeling import extend_context, load_config, load_policy, load_tokenizer, longest_prompt, plan_context
from lib.train.update import (
    UpdateConfig,
    add_trainer_args,
    default_bf16,
    frozen_reference,
    load_device,
    lr_factor,
    prepare,
)
from lib.worlds import toy

RewardFn = Callable[[str, str], dict]  # (response, ground_truth) -> {"score", "acc", "pred"}


# ---------------------------------------------------------------------------------------------------------
# The config the stage reads


@dataclass(frozen=True)
class Sampling:
    """What a step samples, and DAPO's shaping of it."""
    prompts_per_step: int  # groups trained on per step
    gen_batch_size: int  # prompts per generation batch (0 = prompts_per_step)
    n_samples: int  # responses per prompt
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    tp: int  # ranks sharing one vLLM engine (a rollout replica)
    dynamic_sampling: bool
    filter_metric: str  # "acc" | "reward": what must vary within a group to keep it
    max_gen_batches: int  # 0 = no cap
    overlong_shaping: bool
    overlong_buffer: int
    overlong_factor: float
    replay: bool  # a group with no success trains on a stored earlier success of its prompt (explore.replay)


@dataclass(frozen=True)
class Loss:
    """The policy loss of every micro-batch (explore.py's LOSSES[loss])."""
    loss: str  # a key of explore.LOSSES
    eps_low: float
    eps_high: float  # eps_low itself with --no-clip-higher
    clip_ratio_c: float
    agg: str  # lib/algo/dapo.aggregate's mode
    kl_coef: float  # 0 = no KL term (DAPO)
    rollout_is: str  # "none" | "token" | "sequence": explore.rollout_correction's level
    rollout_is_threshold: float  # its truncation


@dataclass(frozen=True)
class Config:
    rl_steps: int
    sampling: Sampling
    loss: Loss
    update: UpdateConfig
    flags: dict  # every flag's value (args.json, resume checks, tracking): the run's business, not the algorithm's


# ---------------------------------------------------------------------------------------------------------
# Flags. Those that only place, watch or pace the run may change on --resume (lib/train/checkpoint.check_same_args).

FREE_ON_RESUME = {"resume", "out", "rl_steps", "save_every", "device", "backend", "rollout_dtype",
                  "gpu_memory_utilization", "max_nonfinite", "tp", "sleep_mode", "grad_checkpointing", "share_prompt",
                  "keep_checkpoints", "config", "logger", *validation.FLAGS}


def get_args(argv=None, *, doc: str | None = None, losses: dict[str, Callable] | None = None) -> Config:
    """explore.py's flags (doc: its docstring, for --help; losses: its LOSSES, each listed in --help by its
    docstring's first sentence) -> the typed config."""
    losses = losses or {"dapo": None}
    p = cli.make_parser(doc)
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("run").add_argument
    g("--model", default="toy", help="initial policy: folder or hub id; 'toy' = the embedded toy base model")
    g("--out", default="runs/explore", help="output folder")
    g("--rl-steps", type=int, default=60, help="RL steps of this run")
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
    g("--n-samples", type=int, default=8, help="responses per prompt (DAPO: 16)")
    g("--max-new-tokens", type=int, default=80, help="response length cap (verl's 7B DAPO: 8192; DAPO 32B: 20480)")
    g("--temperature", type=float, default=1.0, help="sampling temperature (DAPO: 1.0)")
    g("--top-p", type=float, default=1.0, help="nucleus sampling (DAPO: 1.0)")
    g = p.add_argument_group("DAPO").add_argument
    g("--dynamic-sampling", action=B, default=True,
      help="drop prompts whose responses all have the same accuracy, draw more until full")
    g("--filter-metric", default="acc", choices=["acc", "reward"],
      help="what must vary within a group to keep it (verl's DAPO scripts: acc, before the overlong penalty)")
    g("--replay", action=B, default=False,
      help="experience replay (explore.replay): in a group with no success, this run's newest earlier success of "
           "the prompt replaces a failure before dynamic sampling; metrics log `replayed` (off: DAPO)")
    g("--max-gen-batches", type=int, default=10,
      help="generation batches per step (0 = no cap; DAPO: 10). At the cap the step trains on the prompts kept "
           "(verl stops instead: a multi-day run should not die on one hard stretch of data): one log line, "
           "capped 1 in its metrics row, the count of capped steps at the end")
    g("--overlong-shaping", action=B, default=True,
      help="soft penalty for responses within --overlong-buffer tokens of --max-new-tokens")
    g("--overlong-buffer", type=int, default=16, help="penalty ramp length in tokens (DAPO: 4096)")
    g("--overlong-factor", type=float, default=1.0, help="penalty at the cap (DAPO: 1.0)")
    g = p.add_argument_group("loss").add_argument
    g("--loss", default="dapo", choices=list(losses),
      help="the policy loss, a key of explore.py's LOSSES: " + "; ".join(f"{k} = {first_sentence(fn)}"
                                                                         for k, fn in losses.items()))
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
    g("--rollout-is", default="none", choices=["none", "token", "sequence"],
      help="sampler/trainer mismatch correction (explore.rollout_correction, verl's rollout correction): the loss "
           "of every token times the truncated importance weight pi_trainer / pi_sampler of its token (token) or of "
           "its whole response (sequence); none = DAPO as published")
    g("--rollout-is-threshold", type=float, default=2.0,
      help="--rollout-is: weights above it are truncated to it (truncated importance sampling)")
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
                        "max_position_embeddings. Above the model's, its config is raised to N (vLLM hf_overrides; "
                        "every checkpoint carries N). verl's DAPO on Qwen2.5-Math-7B (4096): 32768")
    e.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off: safer)")
    validation.add_args(p.add_argument_group("validation during RL"))  # --eval-benchmarks, --eval-every, ...
    p.add_argument_group("logging").add_argument(
        "--logger", default="", help="live tracking, comma-separated: tensorboard (OUT/tensorboard), wandb; every "
                                     "metrics.jsonl row mirrored as explore/KEY, plus a table of sampled responses "
                                     "every --save-every steps")
    args = p.parse_args(argv)
    check_args(args)
    return config(vars(args))


def first_sentence(fn) -> str:
    """A function's docstring up to its first full stop, on one line (--help's words for a loss)."""
    text = " ".join((getattr(fn, "__doc__", None) or "").split())
    return text.split(". ")[0].rstrip(".") if text else ""


def check_args(args: argparse.Namespace) -> None:
    """The flags, checked (one line naming the flag) and the derived ones resolved."""
    tracking.parse_loggers(args.logger)  # an unknown name or a missing package: one line, now
    validation.check_args(args)
    cli.check_positive(args, "rl_steps", "save_every", "prompts_per_step", "n_samples", "max_new_tokens", "mini_batch",
                       "micro_batch", "max_nonfinite", "rollout_is_threshold")
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


def config(f: dict) -> Config:
    """The typed config of checked flag values."""
    sampling = Sampling(f["prompts_per_step"], f["gen_batch_size"], f["n_samples"], f["max_new_tokens"],
                        f["temperature"], f["top_p"], f["seed"], f["tp"], f["dynamic_sampling"], f["filter_metric"],
                        f["max_gen_batches"], f["overlong_shaping"], f["overlong_buffer"], f["overlong_factor"],
                        f["replay"])
    loss = Loss(f["loss"], f["eps_low"], f["eps_high"] if f["clip_higher"] else f["eps_low"], f["clip_ratio_c"],
                f["loss_agg"], f["kl_coef"], f["rollout_is"], f["rollout_is_threshold"])
    update = UpdateConfig(f["mini_batch"], f["micro_batch"], f["share_prompt"], f["grad_clip"], f["temperature"],
                          f["bf16"])
    return Config(f["rl_steps"], sampling, loss, update, dict(f))


# ---------------------------------------------------------------------------------------------------------
# The run: everything a step needs besides the algorithm, and what happens between steps


@dataclass
class Run:
    cfg: Config
    flags: dict  # cfg.flags with the device's defaults resolved (bf16)
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
    start: int = 0  # steps done
    bad_streak: int = 0  # consecutive non-finite updates
    rollouts_bytes: int = 0  # rollouts.jsonl's size (a checkpoint's resume point)
    bar: object = None

    @property
    def rollouts_path(self) -> Path:
        return self.out / "rollouts.jsonl"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def steps(self):
        """The steps still to run, with a progress bar (rank 0)."""
        self.bar = tqdm(range(self.start + 1, self.cfg.rl_steps + 1), desc="explore", leave=False,
                        disable=None if self.main_rank else True)
        return self.bar

    def record(self, rows: list[dict]) -> None:
        """Append a step's rollouts to rollouts.jsonl (rank 0 holds every rank's rows)."""
        if self.main_rank:
            self.rollouts_bytes = append_jsonl(self.rollouts_path, rows)

    def scan_rollouts(self, fn: Callable):
        """fn(the rows of rollouts.jsonl so far, streamed; after --resume: up to its checkpoint), computed on rank 0
        and its result sent to every rank (explore --replay rebuilds its store this way)."""
        rows = lambda: (row for _, row in read_jsonl(self.rollouts_path, allow_empty=True))  # noqa: E731
        return dist.main_decides(lambda: fn(rows() if self.rollouts_path.exists() else iter(())))

    def engine_sleep(self) -> None:
        """vLLM --sleep-mode: hand the engine's GPU memory to the update."""
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()

    def end_step(self, step: int, batch, stats: dict, t_gen: float, t0: float) -> dict:
        """After a step's updates: the new weights into the engine, the lr schedule, the metrics row (validation when
        due), the stop on non-finite updates, the checkpoint when due. Returns the row."""
        # the gradients are dead weight until the next update (7.6B fp32: 30 GB unsharded): free them, and hand
        # the cached blocks back, before a sleeping vLLM engine wakes up and asks for its memory again
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        lr_used = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # a step without an update (nothing kept) is fine: the schedule is by step
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.scheduler.step()
        if hasattr(self.engine, "wake_up"):
            self.engine.wake_up()
        self.engine.sync_weights(self.model)  # vLLM: push the new weights in memory; HF engine: no-op (same model)
        if not stats["updates"]:
            print(f"step {step}: no prompt with a reward spread; no update this step")
        for skipped in stats["skipped_flags"]:  # consecutive non-finite updates, across steps (same on every rank)
            self.bad_streak = self.bad_streak + 1 if skipped else 0
        # (rank 0 holds every rank's rollout rows: the step's numbers are computed there)
        row = self.log_row(rl_step_row(step, batch, stats, lr_used, t_gen, time.time() - t0) if self.main_rank else
                           {"step": step}, step)
        f = self.flags
        save = step % f["save_every"] == 0 or step == self.cfg.rl_steps
        if self.main_rank:
            if save:
                self.tracker.table("samples", tracking.SAMPLE_COLUMNS, tracking.sample_rows(batch.rows), step)
            self.bar.set_postfix(reward=row["reward"], acc=row["mean_acc"], tok_s=round(row["tokens_per_s"] or 0))
        if self.bad_streak >= f["max_nonfinite"]:
            raise cli.UserError(f"step {step}: {self.bad_streak} consecutive updates had a non-finite loss or gradient "
                                f"(--max-nonfinite {f['max_nonfinite']}); stopping. Lower --lr or check the data; "
                                f"--resume continues from the last checkpoint", code=1)
        if save:
            self.save(step)
        return row

    def save(self, step: int) -> None:
        """A checkpoint that is also the resume point (a collective under FSDP)."""
        f = self.flags
        state = checkpoint.trainer_state(self.optimizer, self.scheduler, data_position=self.stream.position,
                                         nonfinite_streak=self.bad_streak, rollouts_bytes=self.rollouts_bytes,
                                         metrics_bytes=self.metrics_path.stat().st_size if self.main_rank else 0,
                                         args=f)
        saved = checkpoint.save(self.out, step, self.model, self.tok, state)
        if self.main_rank:  # one resume state is enough (the newest); older folders: bf16 weights, or deleted
            checkpoint.retire_older(self.out, saved, keep=f["keep_checkpoints"],
                                    dtype=torch.bfloat16 if f["bf16"] else None)
        print(f"saved {saved}")

    def log_row(self, row: dict, step: int) -> dict:
        """Validate when due (every rank: an engine call may be a collective), log the row (rank 0), return it."""
        f = self.flags
        if self.val_sets and (step == 0 or validation.due(step, f["eval_every"], self.cfg.rl_steps)):
            row.update(validation.validate(self.engine, self.val_sets, f["eval_n_samples"], self.verifier,
                                           f["max_new_tokens"], f["eval_temperature"], f["eval_top_p"], f["seed"]))
        row = {k: json_num(v) for k, v in row.items()}
        if self.main_rank:
            cli.log_metrics(self.metrics_path, "explore", row)
            self.tracker.log(row, step)
        return row

    def finish(self) -> None:
        self.tracker.close()
        f = self.flags
        if self.main_rank and f["dynamic_sampling"] and f["max_gen_batches"]:  # the whole run's, resumed parts too
            rows = [x for _, x in read_jsonl(self.metrics_path, allow_empty=True)]
            print(capped_summary(rows, f["max_gen_batches"]))
        if self.main_rank:
            cli.mark_done(self.out, "explore", rl_steps=self.cfg.rl_steps)
        self.engine.close()  # (vLLM: frees its memory and its process groups before torch.distributed is torn down)


def start(cfg: Config, reward_fn: RewardFn | None = None, engine_fn: Callable | None = None) -> Run | None:
    """The run, ready for its next step: policy (FSDP-sharded under torchrun), rollout engine, optimiser and
    schedule, prompt stream, resumed from the newest checkpoint with --resume. None: the run had finished.
    reward_fn / engine_fn(model, tokenizer, model_path) replace the verifier / the rollout engine (tests)."""
    f = dict(cfg.flags)
    out, main_rank = Path(f["out"]), dist.is_main()
    if dist.world_size() % f["tp"]:
        raise cli.UserError(f"--tp {f['tp']} must divide the number of processes ({dist.world_size()}); "
                            f"--tp > 1 needs torchrun")
    # the prompt set first: a bad file fails in a second, before any model loads ('toy' writes files: rank 0 first)
    problems = dist.main_first(lambda: data.load_problems(toy.resolve(f["data"], "data"), f["split"], limit=f["limit"]))
    verifier = reward_fn or reward.load_reward(f["reward"])  # a bad --reward fails here too
    val_sets = dist.main_first(lambda: validation.load_benchmarks(toy.resolve(f["eval_benchmarks"], "benchmarks"),
                                                                  f["eval_split"], f["eval_limit"])
                               if f["eval_benchmarks"] else {})
    # rank 0 alone inspects and cleans --out; every rank then reads its own part of the resume state
    resume_from = dist.main_decides(lambda: checkpoint.resume_point(out, f["resume"]))
    state = checkpoint.load_state(resume_from) if resume_from else None
    if state is not None and state["step"] >= cfg.rl_steps:
        print(f"{out}: finished run (checkpoint {resume_from.name} is at step {state['step']} >= --rl-steps "
              f"{cfg.rl_steps}); nothing to do")
        return None

    cli.seed_everything(f["seed"])
    device = dist.device(f["device"])
    if f["bf16"] is None:
        f["bf16"] = default_bf16(device)
    if state is not None:  # before anything is written: a resumed run is the same run
        checkpoint.check_same_args(state["args"], f, FREE_ON_RESUME, out)
    init_path = dist.main_first(lambda: toy.resolve(f["model"], "model"))
    model_path = str(resume_from) if resume_from else init_path
    trust_remote_code = f["trust_remote_code"]  # (only ever from its flag: tests/test_trust.py)
    # The context (prompt + response) the engine samples and the trainer scores, checked from the config and the
    # tokenizer alone, before any weight is loaded or anything written (lib/train/modeling.plan_context).
    tok = load_tokenizer(model_path, trust_remote_code)
    problems = data.drop_long_prompts(data.render_prompts(problems, tok), tok, f["max_prompt_len"], f["data"])
    val_sets = {name: data.drop_long_prompts(data.render_prompts(ps, tok), tok, f["max_prompt_len"],
                                             f"validation set {name}") for name, ps in val_sets.items()}
    prompts = [p.prompt for ps in (problems, *val_sets.values()) for p in ps]
    context, overrides = plan_context(load_config(model_path, trust_remote_code), longest_prompt(tok, prompts),
                                      f["max_new_tokens"], f["max_model_len"], model_path, f["max_prompt_len"])
    model, tok = load_policy(model_path, device=load_device(device), trust_remote_code=trust_remote_code)
    extend_context(model, overrides)  # saved with every checkpoint: later stages load the same context
    prepare(model, device, f["bf16"], f["grad_checkpointing"])  # (under torchrun: FSDP2 shards)
    # the KL reference: this run's initial policy (--model, also on --resume), loaded after the policy is sharded
    ref = frozen_reference(init_path, device, f["bf16"], overrides, trust_remote_code) if f["kl_coef"] else None
    engine = engine_fn(model, tok, model_path) if engine_fn else make_engine(
        f["backend"], model, tok, model_path, colocated=True, tp=f["tp"], sleep_mode=f["sleep_mode"],
        dtype=rollout_dtype(f["rollout_dtype"], f["bf16"]), max_model_len=context, hf_overrides=overrides,
        gpu_memory_utilization=f["gpu_memory_utilization"], seed=f["seed"], trust_remote_code=trust_remote_code)

    optimizer = torch.optim.AdamW(model.parameters(), lr=f["lr"], weight_decay=f["weight_decay"], betas=(0.9, 0.999))
    # linear warm-up, then constant (min_ratio 1.0: lr_factor's cosine part is flat), stepped once per step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, f["warmup_steps"], cfg.rl_steps, min_ratio=1.0))
    stream = data.PromptStream(problems, f["seed"])
    run = Run(cfg, f, out, main_rank, device, model, tok, engine, optimizer, scheduler, stream, verifier, val_sets,
              ref, tracker=None)
    if state is not None:
        checkpoint.restore_trainer(state, optimizer, scheduler)
        checkpoint.set_rng_state(state["rng"])
        stream.position = state["data_position"]
        run.start, run.bad_streak = state["step"], state["nonfinite_streak"]
        if main_rank:
            checkpoint.restore_logs(state, {"rollouts_bytes": run.rollouts_path, "metrics_bytes": run.metrics_path})
        print(f"resuming {out} from {resume_from.name} (step {run.start}, data position {stream.position})")
    elif main_rank:
        checkpoint.start_fresh(out, [run.rollouts_path, run.metrics_path])
    dist.barrier()  # every rank reads rollouts.jsonl (explore --replay) only as the resume point left it
    if main_rank:
        cli.save_args(argparse.Namespace(**f), out)
        run.rollouts_bytes = run.rollouts_path.stat().st_size if run.rollouts_path.exists() else 0
    world = f", {dist.world_size()} ranks (FSDP)" if dist.is_distributed() else ""
    print(f"explore: {len(problems)} prompts, model {model_path}, device {device}{world}, engine "
          f"{type(engine).__name__}, steps {run.start + 1}..{cfg.rl_steps}")
    run.tracker = tracking.Tracker(tracking.parse_loggers(f["logger"]) if main_rank else [], out, "explore", f,
                                   resume_step=run.start)
    if val_sets and f["eval_before_train"] and run.start == 0:
        run.log_row({"step": 0}, 0)
    return run
