"""lib/lab/stats.py: the lab's 95% intervals, paired differences, verdicts and strategy entropy, on hand-computed
cases."""
import math

import pytest

from lib.lab import stats


def test_t_table_values_and_large_df():
    assert stats.t95(1) == 12.706 and stats.t95(2) == 4.303 and stats.t95(30) == 2.042
    assert stats.t95(60) == pytest.approx(2.000, abs=1e-3)  # table value 2.000
    assert stats.t95(120) == pytest.approx(1.980, abs=1e-3)  # table value 1.980
    with pytest.raises(ValueError):
        stats.t95(0)


def test_mean_ci_hand_computed():
    # [1, 2, 3]: mean 2, sample sd 1, se 1/sqrt(3); half = 4.303 / sqrt(3) = 2.48434
    m, h = stats.mean_ci([1, 2, 3])
    assert m == 2 and h == pytest.approx(4.303 / math.sqrt(3))
    assert h == pytest.approx(2.48434, abs=1e-5)
    # [0.5, 0.7]: sd = sqrt(0.02) = 0.141421, se = 0.1, half = 12.706 * 0.1
    m, h = stats.mean_ci([0.5, 0.7])
    assert m == pytest.approx(0.6) and h == pytest.approx(1.2706)
    m, h = stats.mean_ci([0.4])
    assert m == 0.4 and math.isnan(h)  # one seed: the interval is unknown, not zero
    assert stats.mean_ci([0.3, 0.3, 0.3]) == (pytest.approx(0.3), 0.0)


def test_paired_difference_and_verdicts():
    a = {0: 0.5, 1: 0.6, 2: 0.7, 9: 1.0}  # seed 9 has no partner: left out
    b = {0: 0.4, 1: 0.4, 2: 0.5}
    d = stats.paired_diff(a, b)
    # diffs 0.1, 0.2, 0.2: mean 1/6, sd = sqrt(0.0066667 / 2) = 0.057735, se = 0.033333, half = 0.143433
    assert d["n"] == 3 and d["diffs"] == pytest.approx([0.1, 0.2, 0.2])
    assert d["mean"] == pytest.approx(1 / 6) and d["half"] == pytest.approx(4.303 * 0.057735 / math.sqrt(3), rel=1e-4)
    assert d["lo"] == pytest.approx(0.023234, abs=1e-5) and d["hi"] == pytest.approx(0.310100, abs=1e-5)
    assert stats.verdict(d) == "gain"
    assert stats.verdict(d, higher_better=False) == "loss"
    # diffs 0.1, -0.1, 0.05: the interval holds 0
    d2 = stats.paired_diff({0: 0.6, 1: 0.4, 2: 0.55}, {0: 0.5, 1: 0.5, 2: 0.5})
    assert d2["lo"] < 0 < d2["hi"] and stats.verdict(d2) == "no measurable difference"
    d3 = stats.paired_diff({0: 0.1, 1: 0.2, 2: 0.1}, {0: 0.5, 1: 0.5, 2: 0.45})
    assert d3["hi"] < 0 and stats.verdict(d3) == "loss"
    assert stats.paired_diff({0: 1.0}, {1: 1.0}) is None and stats.verdict(None) == "not enough seeds"
    assert stats.verdict(stats.paired_diff({0: 1.0}, {0: 0.5})) == "not enough seeds"


def test_entropy_bits():
    assert stats.entropy([]) == 0.0
    assert stats.entropy(["left"] * 5) == 0.0
    assert stats.entropy(["left", "group", "left", "group"]) == pytest.approx(1.0)
    assert stats.entropy(["left", None, "group", None]) == pytest.approx(1.0)  # unlabelled responses skipped
    # 3 : 1 -> -(0.75 log2 0.75 + 0.25 log2 0.25) = 0.811278
    assert stats.entropy(["a", "a", "a", "b"]) == pytest.approx(0.811278, abs=1e-6)


def test_fmt_ci():
    assert stats.fmt_ci(0.41234, 0.0312) == "0.412 ± 0.031"
    assert stats.fmt_ci(0.4, float("nan")) == "0.400"
