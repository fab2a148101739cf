import pytest

from lib.algo.passk import ks_of, ks_up_to, mean_pass_at_k, pass_at, pass_at_k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (8, 2, 4, 1 - 15 / 70),  # 1 - C(6,4)/C(8,4)
        (10, 3, 2, 1 - 21 / 45),  # 1 - C(7,2)/C(10,2)
        (5, 1, 2, 1 - 6 / 10),  # 1 - C(4,2)/C(5,2) = 2/5
        (16, 4, 8, 1 - 495 / 12870),  # 1 - C(12,8)/C(16,8)
        (4, 2, 2, 1 - 1 / 6),  # 1 - C(2,2)/C(4,2)
    ],
)
def test_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n,c", [(1, 0), (1, 1), (8, 0), (8, 3), (8, 8), (100, 37)])
def test_k1_is_fraction_correct(n, c):
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_fewer_wrong_than_k_is_one():
    assert pass_at_k(8, 5, 4) == 1.0  # 3 wrong < k=4
    assert pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(4, 1, 4) == 1.0  # k = n: any correct sample is drawn


def test_no_correct_is_zero():
    assert pass_at_k(8, 0, 4) == 0.0
    assert pass_at_k(1, 0, 1) == 0.0


def test_large_n_is_stable():
    # C(1000, 500) overflows a float; the product form does not.
    p = pass_at_k(1000, 1, 500)
    assert p == pytest.approx(0.5, abs=1e-12)  # one correct sample is in half of all k=n/2 subsets


def test_monotone_in_k():
    vals = [pass_at_k(16, 3, k) for k in range(1, 17)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))


@pytest.mark.parametrize(
    "n,c,k",
    [(4, 1, 5), (4, 1, 0), (4, 5, 1), (-1, 0, 1), (4, -1, 1), (4, 1, -2), (0, 0, 1)],
)
def test_invalid_args(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_non_int_rejected():
    with pytest.raises(TypeError):
        pass_at_k(8.0, 2, 4)


def test_mean_pass_at_k():
    counts = [(8, 2), (8, 0), (8, 8)]
    assert mean_pass_at_k(counts, 4) == pytest.approx((1 - 15 / 70 + 0.0 + 1.0) / 3, abs=1e-12)
    assert mean_pass_at_k([(4, 1), (4, 3)], 1) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


@pytest.mark.parametrize(
    "n,expected",
    [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8]), (16, [1, 2, 4, 8, 16]),
     (100, [1, 2, 4, 8, 16, 32, 64, 100])],
)
def test_ks_up_to(n, expected):
    assert ks_up_to(n) == expected


def test_ks_up_to_invalid():
    with pytest.raises(ValueError):
        ks_up_to(0)


def test_capped_summary_counts_rl_steps_only():
    from lib.run.metrics import capped_summary

    rows = [{"step": 0, "val/mean_acc": 0.1}, {"step": 1, "capped": 0}, {"step": 2, "capped": 1},
            {"step": 3, "capped": 1}, {"step": 4, "capped": 0}]
    assert capped_summary(rows, 10) == ("the generation-batch cap was hit on 2 of 4 steps (--max-gen-batches 10): "
                                        "those steps trained on fewer than --prompts-per-step prompts")
    assert capped_summary(rows[:2], 3) == "the generation-batch cap was hit on 0 of 1 steps (--max-gen-batches 3)"


def test_ks_and_pass_at_read_the_flat_keys():
    b = {"problems": 3, "mean_acc": 0.5, "pass@1": 0.5, "pass@2": 0.7, "pass@4": 0.9}
    assert ks_of(b) == ["1", "2", "4"] and pass_at(b, 2) == pass_at(b, "2") == 0.7 and pass_at(b, 8) is None
