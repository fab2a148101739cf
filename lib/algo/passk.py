"""pass@k: the unbiased estimator of Chen et al. 2021 (Codex paper), and the per-benchmark summary built on it."""

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
    """The K values of one evaluation's "pass@K" keys (summarize's)."""
    return [k[5:] for k in b if k.startswith("pass@")]


def pass_at(b: dict, k) -> float | None:
    """One evaluation's pass@k; None when it has no such k."""
    return b.get(f"pass@{k}")
