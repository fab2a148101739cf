"""metrics.jsonl rows: explore.py's per-step row, number formatting for JSONL, the end-of-run cap summary."""

import math


def json_num(v, digits: int = 5):
    """A metrics value for JSONL: floats rounded to `digits` decimals, or to `digits` significant digits when that
    keeps more (a probability gap of 3e-7 stays 3e-7, not 0); nan / inf as null (strict JSON: jq and friends reject
    NaN)."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return round(v, digits) if abs(v) >= 0.1 else float(f"{v:.{digits}g}")
    return v


def mean(xs) -> float:
    """The mean, nan for no values."""
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def rl_step_row(step: int, batch, st: dict, lr_used: float, t_gen: float, step_time: float) -> dict:
    """explore.py's metrics.jsonl row of one step: its rollouts (batch: explore.StepBatch), the update's numbers
    (st: explore.train_on_batch's: lib/train/update.rl_update's, every stat of the loss included) and timings."""
    lengths = [r["response_tokens"] for r in batch.rows]
    return {
        "step": step,
        "reward": mean([r["reward"] for r in batch.rows]),  # over every rollout drawn this step
        "mean_acc": mean([float(r["acc"]) for r in batch.rows]),
        "train_reward": mean([x for g in batch.groups for x in g.rewards]),  # the trained (filtered) groups
        "groups_kept": batch.passed_filter / max(1, batch.drawn_groups),
        "gen_batches": batch.gen_batches,
        "train_prompts": len(batch.groups),
        "capped": int(batch.capped),
        "resp_len_mean": mean(lengths),
        "resp_len_max": max(lengths),
        "truncated_frac": mean([float(r["finish_reason"] == "length") for r in batch.rows]),
        # the update: updates, skipped_updates, pg_loss, entropy, grad_norm(_max), train_tokens, the loss's stats,
        # rollout_probs_diff_mean / _max (|p_engine - p_trainer| of the trained tokens: the sampler / trainer gap)
        **{k: v for k, v in st.items() if k != "skipped_flags"},
        "lr": lr_used,
        # verl's throughput: prompt + response tokens of every rollout drawn, per second of the whole step
        "tokens_per_s": sum(r["prompt_tokens"] + r["response_tokens"] for r in batch.rows) / max(step_time, 1e-9),
        "gen_time": t_gen,
        "step_time": step_time,
    }


def capped_summary(rows: list[dict], max_gen_batches: int) -> str:
    """The end-of-run line counting the steps explore.py's generation-batch cap cut short (metrics rows with
    `capped` 1), over every RL step row (validation-only rows have no `capped`)."""
    steps = [r for r in rows if "capped" in r]
    hit = sum(int(r["capped"]) for r in steps)
    return (f"the generation-batch cap was hit on {hit} of {len(steps)} steps (--max-gen-batches {max_gen_batches})"
            + (": those steps trained on fewer than --prompts-per-step prompts" if hit else ""))
