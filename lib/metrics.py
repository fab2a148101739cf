"""pass@k: the unbiased estimator of Chen et al. 2021 (Codex paper), and helpers."""

import math
import operator


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct), given c of n correct.

    Equals 1 - C(n-c, k) / C(n, k). Computed as a product of n-c..n ratios instead of binomials,
    which overflow floats for large n:
        C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (i - k) / i = prod (1 - k/i)
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)  # ints only; 2.5 samples is a bug
    if n < 0 or c < 0:
        raise ValueError(f"n and c must be non-negative, got n={n}, c={c}")
    if c > n:
        raise ValueError(f"c={c} correct out of n={n} samples is impossible")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got k={k}")
    if n - c < k:
        return 1.0  # fewer than k wrong samples: every k-subset contains a correct one
    all_wrong = 1.0  # probability that all k drawn samples are wrong
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems; counts holds one (n, c) per problem."""
    if len(counts) == 0:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def ks_up_to(n: int) -> list[int]:
    """The k values to report for n samples: 1, 2, 4, ... <= n, plus n itself (6 -> [1, 2, 4, 6])."""
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def summarize(trajectories, n: int) -> dict:
    """Per-benchmark numbers from scored samples (objects with .problem_id and .acc): problems, mean_acc
    (avg@n: the mean over problems of correct / samples), and one flat key pass@K for each K in ks_up_to(n).
    evaluate.py and explore.py's validation report the same numbers through this one function."""
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for t in trajectories:
        total[t.problem_id] = total.get(t.problem_id, 0) + 1
        correct[t.problem_id] = correct.get(t.problem_id, 0) + int(t.acc)
    counts = [(total[p], correct[p]) for p in total]
    return {"problems": len(counts),
            "mean_acc": sum(c / m for m, c in counts) / len(counts),
            **{f"pass@{k}": mean_pass_at_k(counts, k) for k in ks_up_to(n)}}


def ks_of(b: dict) -> list[str]:
    """The K values of one evaluation's pass@K keys (flat "pass@K"; outputs written earlier nest them under
    "pass@k": {"K": ...}, and are read too)."""
    return list(b["pass@k"]) if "pass@k" in b else [k[5:] for k in b if k.startswith("pass@")]


def pass_at(b: dict, k) -> float | None:
    """One evaluation's pass@k (either layout, see ks_of); None when it has no such k."""
    return b["pass@k"].get(str(k)) if "pass@k" in b else b.get(f"pass@{k}")


# Keys renamed so that one name means one thing in every output (docs/outputs.md): canonical name -> the names
# outputs written earlier carry. Readers look keys up through `metric`, so old run folders still report.
RENAMED = {"mean_acc": ("acc",), "truncated_frac": ("truncated",), "truncated_count": ("truncated",),
           "skipped_updates": ("skipped",), "kept_trajectories": ("kept",), "sft_steps": ("steps",),
           "warmup_steps": ("warmup",)}


def metric(row: dict, name: str, default=None):
    """row[name], else the value under one of its earlier names (RENAMED), else default."""
    if name in row:
        return row[name]
    for old in RENAMED.get(name, ()):
        if old in row:
            return row[old]
    return default


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
    """explore.py's metrics.jsonl row of one step: its rollouts (batch: explore.StepBatch), the update's stats
    (st: explore.train_on_batch's) and timings."""
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
        "entropy": st["entropy"],
        "pg_loss": st["pg_loss"],
        "grad_norm": st["grad_norm"],
        "grad_norm_max": st["grad_norm_max"],
        "clipfrac_high": st["clipfrac_high"],
        "clipfrac_low": st["clipfrac_low"],
        "clipfrac_dual": st["clipfrac_dual"],
        "approx_kl": st["approx_kl"],
        "kl": st.get("kl", 0.0),  # the KL-penalty term to the initial policy (0 without --kl-coef)
        # |p_engine - p_trainer| of the trained tokens: the sampler / trainer numerical gap (lib/train.rollout_probs_diff)
        "rollout_probs_diff_mean": st.get("rollout_probs_diff_mean", float("nan")),
        "rollout_probs_diff_max": st.get("rollout_probs_diff_max", float("nan")),
        "updates": st["updates"],
        "skipped_updates": st["skipped"],
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
