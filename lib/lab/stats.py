"""Statistics over seeds for the lab (lab.sh, report.py): a mean with its 95% interval, paired differences,
the verdict wording, and the entropy of strategy labels.

Seeds are few (3 by default), so the interval is Student's t, not the normal one: with 3 seeds the half-width
is 4.30 standard errors, not 1.96. Arms are compared *paired* by seed (the same seed draws the same data order
and the same base-model evaluation), which removes the seed-to-seed spread both arms share.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping

# two-sided 95% critical values of Student's t, df = 1 .. 30 (standard table values, 3 decimals)
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
       2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
       2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z95 = 1.959964


def t95(df: int) -> float:
    """Two-sided 95% critical value of Student's t with df degrees of freedom (df >= 1). Above the table, the
    Cornish-Fisher expansion z + (z^3 + z) / (4 df), within 0.001 of the exact value from df 31 on."""
    if df < 1:
        raise ValueError(f"t95 needs df >= 1, got {df}")
    if df <= len(T95):
        return T95[df - 1]
    return Z95 + (Z95 ** 3 + Z95) / (4 * df)


def mean_ci(values: Iterable[float]) -> tuple[float, float]:
    """(mean, half-width of its 95% t interval) over independent values (one per seed). One value: the
    half-width is nan (no spread to estimate: the interval is unknown, not zero)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci of no values")
    n = len(xs)
    m = sum(xs) / n
    if n == 1:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))  # sample standard deviation
    return m, t95(n - 1) * sd / math.sqrt(n)


def paired_diff(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> dict | None:
    """a - b paired by key (seed): the seeds both hold, each seed's difference, and mean_ci over them.
    Returns {"n", "mean", "half", "lo", "hi", "diffs"} or None without a common seed."""
    common = sorted(set(a) & set(b), key=str)
    if not common:
        return None
    diffs = [float(a[k]) - float(b[k]) for k in common]
    m, h = mean_ci(diffs)
    return {"n": len(diffs), "mean": m, "half": h, "lo": m - h, "hi": m + h, "diffs": diffs}


def verdict(d: dict | None, higher_better: bool = True) -> str:
    """The words for a paired difference: a gain / a loss only when its 95% interval excludes 0."""
    if d is None or not math.isfinite(d["half"]):
        return "not enough seeds"
    if d["lo"] > 0:
        return "gain" if higher_better else "loss"
    if d["hi"] < 0:
        return "loss" if higher_better else "gain"
    return "no measurable difference"


def entropy(labels: Iterable[Hashable | None]) -> float:
    """Shannon entropy in bits of the labels' distribution (None labels skipped); 0 for none or one kind.
    Two strategies used half and half: 1 bit; one strategy only: 0."""
    counts = Counter(x for x in labels if x is not None)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def fmt_ci(m: float, h: float, digits: int = 3) -> str:
    """'0.412 ± 0.031' (or '0.412' when the interval is unknown)."""
    if not math.isfinite(h):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {h:.{digits}f}"
