"""lib/worlds/toy_reward.partial_credit, the lab's partial-credit verifier: its values on literal strings, the exact
verdict unchanged, loadable as a --reward file, and filter.py's success at the lab's threshold."""
import pytest

import filter as rfilter
from lib.algo import reward
from lib.lab import arms as A
from lib.run.records import Trajectory
from lib.worlds.toy_reward import partial_credit

SOLUTION = "7+5=12\n12-3=9\n9+8=17\nAnswer: {}"


@pytest.mark.parametrize("answer, score", [
    ("17", 1.0), ("16", 0.0), ("18", 0.0), ("15", -0.5), ("20", -0.75), ("27", 2 * 2 ** -10 - 1), ("9999", -1.0),
    ("-17", 2 * 2 ** -34 - 1), ("017", 0.0), ("seventeen", -1.0), ("17.5", -1.0)])
def test_credit_halves_with_each_unit_off(answer, score):
    out = partial_credit(SOLUTION.format(answer), "17")
    assert out["score"] == pytest.approx(score, abs=1e-12)
    assert (out["acc"], out["pred"]) == (answer == "17", reward.score(SOLUTION.format(answer), "17")["pred"])


def test_no_answer_line_is_a_failure_and_acc_is_the_exact_verdict():
    assert partial_credit("7+5=12", "17") == {"score": -1.0, "acc": False, "pred": reward.INVALID}
    for resp in ("Answer: 3", "x\nAnswer: 4", "Answer: $3$", "nothing", "Answer: 3.0"):
        assert partial_credit(resp, "3")["acc"] == reward.score(resp, "3")["acc"], resp


def test_it_loads_as_the_lab_arms_name_it_and_the_filter_keeps_exact_answers_only():
    spec = next(w for a in A.ARMS for w in a.explore.split() if w.endswith(":partial_credit"))
    fn = reward.load_reward(spec)  # (the probe call checks the result's shape)
    tau = float(next(a for a in A.ARMS if a.filter).filter.split("--success-threshold ")[1].split()[0])
    record = lambda answer: Trajectory(  # noqa: E731
        "p", "Compute 7+5-3+8.", SOLUTION.format(answer), fn(SOLUTION.format(answer), "17")["score"], answer == "17")
    kept = [a for a in ("17", "16", "15", "x") if rfilter.is_success(record(a), "reward", tau)]
    assert kept == ["17"]
    # an exact answer under the overlong penalty (at most -0.5 of it) still counts; a near miss never does
    assert 1.0 - 0.5 >= tau > 0.0
