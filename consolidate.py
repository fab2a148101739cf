"""consolidate.py — RLoop's exploitation phase: rejection-sampling fine-tuning (RFT) of the iteration's
*initial* policy on the filtered successes, giving the next iteration's starting policy.

SFT (lib/train/sft.py, the same code that builds the toy base model) on `rft_loss` below, the objective:
  loss = - sum over response tokens of log p(token | prefix) / response tokens in the optimiser step
         (+ kl_coef * KL(policy || starting policy) on the same tokens, optional)
The prompt is masked; AdamW, linear warm-up then cosine decay; the batch is length-grouped into micro-batches
(right-padded rows, no packing, so no attention crosses examples); bf16 autocast on GPU. RFT weights every
success equally (an absolute signal, unlike RL's relative advantages), which is what anchors the policy.

    python consolidate.py --model toy --trajectories runs/loop/iter1/filter \
                          --out runs/loop/iter1/consolidated

Output: DIR is a `from_pretrained` folder (weights + tokenizer; evaluate.py and vLLM load it as it is) with
args.json, metrics.jsonl (one row per optimiser step) and consolidate.json (a summary). While training, DIR
holds only args.json, metrics.jsonl and the latest resume checkpoint DIR/ckpt_{step:06d}/; the finished folder
replaces it in one rename, so DIR has config.json only once it is complete. A rerun on a finished DIR does
nothing; --resume continues an interrupted run from its checkpoint to the same final weights.
Defaults are sized for the toy (a ~1M-parameter model, a few hundred trajectories); for a 7B policy use
an lr around 1e-5 and a larger batch.

Several GPUs / nodes: `torchrun --nproc_per_node N consolidate.py ...` (lib/train/dist.py). The policy (and the KL
reference) are sharded with FSDP2; each rank trains on a contiguous slice of every optimiser step's examples,
the loss normalised by the whole step's token count, so the run computes the single-process objective.
Rank 0 alone writes; the folder is the same one from_pretrained model. --resume needs the same world size.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from lib.run import cli, tracking
from lib.run.records import read_jsonl, read_trajectories, stage_file
from lib.train import checkpoint, dist, sft
from lib.train.modeling import end_of_turn_id, extend_context, load_policy
from lib.train.sft import nll_loss
from lib.train.update import add_trainer_args, default_bf16, frozen_reference, load_device, prepare
from lib.worlds import toy


def rft_loss(logp: torch.Tensor, mask: torch.Tensor, examples: list[sft.Example]) -> torch.Tensor:
    """RFT's objective on one micro-batch, summed over its response tokens (lib/train/sft.train divides by the
    step's response tokens): the NLL of the successes, -(logp * mask).sum() (lib/train/sft.nll_loss). Every success
    weighs the same: an absolute signal.
    logp, mask: [b, T] (mask 1.0 on response tokens); examples[i] is row i (its .reward: the trajectory's).
    To fork (e.g. reward-weighted RFT): weigh each row here, e.g.
        w = torch.tensor([e.reward for e in examples], device=logp.device)[:, None]  # [b, 1]
        return -(logp * mask * w).sum()
    (a padding pass has no examples and an all-zero mask: return something that is 0 there)."""
    return nll_loss(logp, mask, examples)


DONE = "consolidate.json"  # in DIR only when the final model is complete
# the flags that only place, watch or pace the run: free to change on --resume (lib/train/checkpoint.check_same_args);
# every other flag changes the final weights and must keep its value
FREE_ON_RESUME = {"out", "resume", "micro_batch", "max_nonfinite", "save_every", "bf16", "grad_checkpointing",
                  "device", "trust_remote_code", "logger", "config"}


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--model", default="toy", help="the policy to fine-tune (the iteration's initial policy); "
                                                  "'toy' = the embedded toy base model")
    g.add_argument("--trajectories", required=True,
                   help="RFT trajectories: filter.py's rft.jsonl, or its --out folder")
    g.add_argument("--max-model-len", type=int, default=0,
                   help="truncate prompt + response to this many tokens (0 = the model's max_position_embeddings; "
                        "above it, the output's config is raised to N, as explore.py --max-model-len does)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=float, default=3.0, help="passes over the data (used when --sft-steps is 0)")
    g.add_argument("--sft-steps", type=int, default=0,
                   help="optimiser steps (0 = from --epochs)")
    g.add_argument("--batch-size", type=int, default=32, help="trajectories per optimiser step")
    g.add_argument("--micro-batch", type=int, default=0,
                   help="most trajectories per forward/backward (0 = no limit: the step is split into length-sorted "
                        "micro-batches that minimise padding); does not change the objective")
    g.add_argument("--lr", type=float, default=2e-5,
                   help="peak learning rate (toy: 2e-5 -- on a loop's iteration-1 RFT set it lifted test accuracy, "
                        "while 2e-4 lowered it and made the probe skill fade; 7B: ~1e-5)")
    g.add_argument("--warmup-steps", type=int, default=5,
                   help="linear warm-up steps (at most a quarter of the run), then cosine decay")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decays to this fraction of --lr")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this")
    g.add_argument("--kl-coef", type=float, default=0.0,
                   help="weight of KL(policy || starting policy) on response tokens (0 = off; loads a 2nd copy)")
    g.add_argument("--seed", type=int, default=0, help="data order (and torch) seed")
    g.add_argument("--max-nonfinite", type=int, default=5,
                   help="stop after this many consecutive steps with a non-finite loss or gradient (each is skipped)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder (a from_pretrained model when done)")
    g.add_argument("--save-every", type=int, default=100, help="write a resume checkpoint every N steps (0 = never)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its checkpoint")
    g = p.add_argument_group("engine")
    add_trainer_args(g)  # --device, --bf16, --grad-checkpointing
    g.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off: safer)")
    g = p.add_argument_group("logging")
    g.add_argument("--logger", default="", help="live tracking, comma-separated: tensorboard (DIR/tensorboard), "
                                                "wandb; every metrics.jsonl row mirrored as consolidate/KEY")
    args = p.parse_args(argv)
    tracking.parse_loggers(args.logger)  # an unknown name or a missing package: one line, now
    cli.check_positive(args, "batch_size", "max_nonfinite")
    cli.check_positive(args, "sft_steps", "micro_batch", "warmup_steps", "save_every", "max_model_len", "kl_coef",
                       "weight_decay", allow_zero=True)
    cli.check_positive(args, "lr", "grad_clip")
    if args.sft_steps == 0 and not args.epochs > 0:
        raise cli.UserError(f"--epochs must be > 0 when --sft-steps is 0, got {args.epochs}")
    args.trajectories = str(stage_file(args.trajectories, "rft.jsonl"))
    return args


def out_state(out: Path) -> str:
    """'missing' | 'empty' | 'finished' | 'ours' (an unfinished consolidate.py run) | 'foreign'."""
    if not out.exists():
        return "missing"
    if not out.is_dir():
        return "foreign"
    if (out / DONE).is_file() and (out / "config.json").is_file():
        return "finished"
    names = [d.name for d in out.iterdir()]
    if not names:
        return "empty"
    ours = all(n in ("args.json", "metrics.jsonl", *tracking.DIRS) or checkpoint.CKPT_RE.match(n)
               or n.startswith(".ckpt_") for n in names)
    return "ours" if ours else "foreign"


def main(argv=None):
    args = get_args(argv)
    distributed = dist.init()  # False without torchrun: nothing below touches torch.distributed then
    try:
        with dist.quiet_unless_main():
            return run(args)
    finally:
        if distributed:
            dist.teardown()


def inspect_out(args, out: Path) -> tuple[str, Path | None]:
    """(out_state, checkpoint to resume from); refuses a foreign folder or a forgotten --resume."""
    cli.restore_dir(out)  # a kill inside the final folder swap must not lose the folder
    state = out_state(out)
    if state == "foreign":
        raise cli.UserError(f"{out}: exists and is not a consolidate.py output folder; pick another --out")
    ckpt = checkpoint.resume_point(out, args.resume) if state == "ours" else None
    return state, ckpt


def run(args):
    out = Path(args.out)
    main_rank = dist.is_main()
    # under torchrun rank 0 looks, every rank gets the same answer (no rank sees a folder another just changed)
    state, ckpt = dist.main_decides(lambda: inspect_out(args, out))
    if state == "finished":
        print(f"{out}: already holds a finished consolidated model ({DONE}); nothing to do "
              f"(delete it or pick another --out to retrain)")
        return 0

    # --- everything that can fail on bad input happens before anything is written ---------------------
    trajs = read_trajectories(args.trajectories)
    n_wrong = sum(not t.acc for t in trajs)
    device = dist.device(args.device)
    if args.bf16 is None:
        args.bf16 = default_bf16(device)
    load_to = load_device(device)  # under FSDP a skeleton: each rank reads only its shard (prepare)
    model_path = dist.main_first(lambda: toy.resolve(args.model, "model"))  # ('toy' may build the base: rank 0 first)
    model, tok = load_policy(model_path, device=load_to, trust_remote_code=args.trust_remote_code)
    native = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    max_len = args.max_model_len or native
    if native and max_len > native:  # trained at a longer context: the output's config says so (as explore's do)
        extend_context(model, {"max_position_embeddings": max_len})
    # RFT trains on the tokens the policy sampled (records' response_ids, the stop token included); records
    # without them get their text tokenised + the policy's end-of-turn token (not necessarily its eos_token)
    examples = sft.tokenize(tok, trajs, append_eos=True, max_len=max_len, stop_id=end_of_turn_id(model, tok))
    if not examples:
        raise cli.UserError(f"{args.trajectories}: no trainable trajectory (every response is empty or past "
                            f"--max-model-len)")
    truncated = sum(e.truncated for e in examples)  # cut by max_len: they lost their end and their stop token
    if ckpt:  # a resumed run is the same run (no record of the old settings: nothing to compare)
        checkpoint.check_same_args(cli.read_json(out / "args.json") or {}, vars(args), FREE_ON_RESUME, out)
    cfg = sft.SFTConfig(steps=args.sft_steps, epochs=args.epochs, batch_size=args.batch_size,
                        micro_batch=args.micro_batch, lr=args.lr, warmup=args.warmup_steps,
                        min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                        kl_coef=args.kl_coef, seed=args.seed, bf16=args.bf16, max_nonfinite=args.max_nonfinite)
    total = sft.total_steps(len(examples), cfg)
    # a small RFT set makes a short run: a warm-up longer than the run would never reach --lr
    cfg.warmup = min(args.warmup_steps, total // 4)

    # --- the run ---------------------------------------------------------------------------------------
    dist.barrier()  # every rank has read --out before rank 0 changes it
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_partial(out)
        for d in out.parent.glob(f".{out.name}.final.*"):  # a final folder a kill left half-written
            shutil.rmtree(d, ignore_errors=True)
    cli.seed_everything(args.seed)
    overrides = {"max_position_embeddings": max_len} if native and max_len > native else None
    # the KL reference: the starting policy, frozen (loaded after the policy is sharded: one unsharded copy at a time)
    ref = None
    resume_state = None
    metrics = out / "metrics.jsonl"
    if ckpt:
        del model
        model, _ = load_policy(str(ckpt), device=load_to, trust_remote_code=args.trust_remote_code)
        resume_state = checkpoint.load_state(ckpt)
        checkpoint.set_rng_state(resume_state["rng"])
        if main_rank:  # rows logged after the checkpoint are redone; a kill may have torn the last one
            checkpoint.restore_logs(resume_state, {"metrics_bytes": metrics})
        print(f"resuming {out} from {ckpt.name} (step {resume_state['step']} of {total})")
    elif main_rank:
        checkpoint.start_fresh(out, [metrics], drop_checkpoints=True)
    prepare(model, device, args.bf16, args.grad_checkpointing)
    if args.kl_coef > 0:
        ref = frozen_reference(model_path, device, args.bf16, overrides, args.trust_remote_code)
    if main_rank:
        cli.save_args(args, out)
    n_tok = sum(len(e.response_ids) for e in examples)
    print(f"consolidating {model_path} on {len(examples)} trajectories ({n_tok} response tokens"
          f"{f', {truncated} truncated to {max_len} tokens' if truncated else ''}"
          f"{f', {n_wrong} marked incorrect' if n_wrong else ''}): {total} steps of {args.batch_size}, "
          f"lr {args.lr}, warmup {cfg.warmup}, kl_coef {args.kl_coef}, {device}{' bf16' if args.bf16 else ''}"
          f"{f', {dist.world_size()} ranks (FSDP)' if dist.is_distributed() else ''}")

    tracker = tracking.Tracker(tracking.parse_loggers(args.logger) if main_rank else [], out, "consolidate",
                               vars(args), resume_step=resume_state["step"] if resume_state else 0)

    def on_step(step, row, opt, sched):
        row["epoch"] = round(step * args.batch_size / len(examples), 3)
        if main_rank:
            cli.log_metrics(metrics, "consolidate", row)
            tracker.log(row, step)
        if args.save_every and step % args.save_every == 0 and step < total:
            state = checkpoint.trainer_state(opt, sched, metrics_bytes=metrics.stat().st_size if main_rank else 0)
            new = checkpoint.save(out, step, model, tok, state)  # (every rank)
            if main_rank:  # a resume point is all we need: keep the latest
                checkpoint.retire_older(out, new, keep="last")

    t0 = time.time()
    try:
        rows = sft.train(model, examples, cfg, tok.pad_token_id, rft_loss, ref_model=ref, state=resume_state,
                         on_step=on_step)
    except sft.NonFiniteError as e:  # no final folder: a NaN model must never look finished
        last = checkpoint.latest(out)
        raise cli.UserError(f"{e}. Lower --lr or check the data; --resume continues from "
                            f"{last.name if last else 'the start (no checkpoint yet)'}", code=1) from None

    # --- the final folder: complete, then renamed over DIR in one step (drops the resume checkpoints) -------
    tracker.close()  # (its files travel into the final folder below)
    model.eval()
    if not main_rank:
        checkpoint.write_model(model, tok, None)  # the gather rank 0's write_model below needs
        dist.barrier()
        return 0
    all_rows = [r for _, r in read_jsonl(metrics, allow_empty=True)]
    summary = {"model": model_path, "trajectories_file": args.trajectories, "trajectories": len(trajs),
               "examples": len(examples), "response_tokens": n_tok, "truncated_count": truncated, "sft_steps": total,
               "warmup_steps": cfg.warmup,
               "loss_first": all_rows[0]["loss"] if all_rows else None,
               "loss_last": all_rows[-1]["loss"] if all_rows else None,
               "seconds_this_run": round(time.time() - t0, 1), "steps_this_run": len(rows)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.final.", dir=out.parent))
    try:
        checkpoint.write_model(model, tok, tmp)  # under FSDP: the weights gathered from every rank's shard
        for name in ("args.json", "metrics.jsonl"):
            shutil.copy2(out / name, tmp / name)
        for name in tracking.DIRS:  # the live-tracking logs, if any
            if (out / name).is_dir():
                shutil.copytree(out / name, tmp / name)
        cli.atomic_write_json(tmp / DONE, summary)
        cli.mark_done(tmp, "consolidate", sft_steps=total)
        cli.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()  # the other ranks wait for the finished folder
    sps = len(rows) / max(1e-9, time.time() - t0)
    print(f"loss {summary['loss_first']} -> {summary['loss_last']} over {total} steps ({sps:.2f} steps/s); "
          f"wrote {out}")


if __name__ == "__main__":
    cli.run_main(main)
