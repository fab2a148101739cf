import sys
import time
import types

import pytest

from lib import reward
from lib.reward import normalize_final_answer, score

# (response, ground_truth, expected acc, expected pred), expectations worked out by hand from the
# semantics of verl's math_dapo.compute_score.
CASES = [
    # plain correct / incorrect
    ("Let me think.\nAnswer: 42", "42", True, "42"),
    ("Answer: 41", "42", False, "41"),
    # the LAST Answer line wins
    ("Answer: 3\nWait, recheck.\nAnswer: 5", "5", True, "5"),
    ("Answer: 3\nWait, recheck.\nAnswer: 5", "3", False, "5"),
    # case-insensitive, any whitespace around the colon
    ("answer :  5", "5", True, "5"),
    ("ANSWER:7", "7", True, "7"),
    ("AnSwEr\t:\t8", "8", True, "8"),
    # \s* after the colon also crosses newlines
    ("Answer:\n\n5", "5", True, "5"),
    # only the last 300 chars are searched
    ("Answer: 5\n" + "x" * 290, "5", True, "5"),  # exactly 300 chars: still seen
    ("Answer: 5\n" + "x" * 291, "5", False, "[INVALID]"),  # 301 chars: the "A" is cut off
    ("Answer: 98765\n" + "y" * 290, "98765", False, "[INVALID]"),  # tail starts at "er: 98765"
    # no Answer at all
    ("The result is 5.", "5", False, "[INVALID]"),
    ("", "5", False, "[INVALID]"),
    ("", "[INVALID]", True, "[INVALID]"),  # quirk: the sentinel is compared like any answer
    # split on '=' and keep the last part
    ("Answer: x = 5", "5", True, "5"),
    ("Answer: a = b = 7", "7", True, "7"),
    # \boxed, $..$, \text, \textbf, \overline unwrapping
    ("Answer: \\boxed{5}", "5", True, "5"),
    ("Answer: $5$", "5", True, "5"),
    ("Answer: The value is $5$ exactly", "5", True, "5"),  # text around a $..$ pair is dropped
    ("Answer: \\text{5}", "5", True, "5"),
    ("Answer: \\textbf{5}", "5", True, "5"),
    ("Answer: \\overline{3}", "3", True, "3"),
    ("Answer: \\text{\\text{5}}", "5", False, "\\text{5}"),  # unwraps to the FIRST '}' only, once
    ("Answer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", True, "\\frac{1}{2}"),  # \boxed is greedy
    # thousands separators
    ("Answer: 1,000", "1000", True, "1000"),
    ("Answer: 1,2", "12", True, "12"),  # quirk: any all-digit-and-comma string loses its commas
    ("Answer: 1{,}000", "1000", True, "1000"),
    ("Answer: 1, 2", "1,2", True, "12"),  # spaces go first, then both sides collapse to "12"
    # TeX shorthand
    ("Answer: \\frac12", "\\frac{1}{2}", True, "\\frac{1}{2}"),
    ("Answer: \\sqrt2", "\\sqrt{2}", True, "\\sqrt{2}"),
    ("Answer: \\frac1", "\\frac{1}{}", False, "\\frac1"),  # too short for the shorthand rule
    # units and words
    ("Answer: 5 dollars", "5", True, "5"),
    ("Answer: 5 units", "5", True, "5"),
    ("Answer: 3 issues", "3iss", True, "3iss"),  # quirk: "sue" is removed from inside words
    ("Answer: \\$12", "12", True, "12"),
    # degrees
    ("Answer: 90^\\circ", "90", True, "90"),
    ("Answer: 90^{\\circ}", "90", True, "90"),
    ("Answer: 90 degrees", "90", True, "90"),
    # the "an " / "a " substitutions apply anywhere in the string
    ("Answer: banana 3", "banan3", True, "banan3"),
    ("Answer: tan 3", "t3", True, "t3"),
    ("Answer: an 8", "8", True, "8"),
    ("Answer: a 5", "5", True, "5"),
    # the ground truth is normalised too
    ("Answer: 5", "$5$", True, "5"),
    ("Answer: 5", "\\boxed{5}", True, "5"),
    ("Answer: 1000", "1,000", True, "1000"),
    ("Answer: 5", "x=5", True, "5"),
    ("Answer: 5", " 5\n", True, "5"),
    # trailing whitespace / text after the answer line
    ("Answer: 5   ", "5", True, "5"),
    ("Answer: 5\t", "5", True, "5"),
    ("Answer: 5\n\nDone.", "5", True, "5"),
    # matches don't overlap: the second "Answer:" is part of the first match
    ("Answer: Answer: 5", "5", False, "Answer:5"),
    # NUL is not whitespace, so it survives strip()
    ("Answer: 5\x00", "5", False, "5\x00"),
]


@pytest.mark.parametrize("response,gt,acc,pred", CASES)
def test_dapo_cases(response, gt, acc, pred):
    out = score(response, gt)
    assert out == {"score": 1.0 if acc else -1.0, "acc": acc, "pred": pred}


def test_default_mode_is_dapo():
    assert score("Answer: 5", "5") == score("Answer: 5", "5", mode="dapo")


def test_unknown_mode():
    with pytest.raises(ValueError):
        score("Answer: 5", "5", mode="nope")


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("x = 5", "5"),
        ("\\frac{3}{4}", "\\frac{3}{4}"),
        ("\\fracab", "\\frac{a}{b}"),
        ("\\frac123", "\\frac{1}{2}3"),
        ("\\sqrt3x", "\\sqrt{3}x"),
        ("10\\%", "10\\%"),
        ("\\text{(A)}", "(A)"),
        ("\\mbox{5}", "5"),  # mbox -> text, then unwrapped
        ("1,\\!000", "1000"),
        ("5\\text{ m}", "5"),  # space removed, \text{m} -> \text{} -> removed
        ("$1$ and $2$", "1"),  # only the first $..$ pair of a line survives
        ("line1 $a$\nline2 $b$", "a\nb"),  # the $..$ rule works line by line
        ("\\boxed{1} \\boxed{2}", "1}\\boxed{2"),  # greedy: first \boxed{ to last }
        ("\\boxed{5", "\\boxed{5"),  # unclosed: untouched
        ("12th", "12th"),
        ("12\\mathrm{th}", "12"),
        ("", ""),
    ],
)
def test_normalize_literals(raw, expected):
    assert normalize_final_answer(raw) == expected


def test_constants_are_tuples():
    assert isinstance(reward.SUBSTITUTIONS, tuple) and isinstance(reward.REMOVED_EXPRESSIONS, tuple)
    assert reward.SUBSTITUTIONS[0] == ("an ", "") and reward.SUBSTITUTIONS[1] == ("a ", "")


# ---- adversarial inputs: every dapo call must stay fast (target < 10 ms; asserted < 50 ms) ----

ADVERSARIAL_RESPONSES = [
    "a" * 1_000_000,
    "Answer: " * 125_000,
    "Answer: " + "\\boxed{" * 10_000 + "5" + "}" * 10_000,
    "Answer: " + "{" * 10_000 + "}" * 10_000,
    "Answer" + " " * 1_000_000,  # \s* with no colon
    "\x00" * 1_000_000 + "Answer: 5\x00",
    "Answer: $" + "x" * 1_000_000,
    "\n" * 1_000_000,
    "x" * 1_000_000 + "Answer: " + "\\text{" * 40,
]

# The ground truth is not truncated, so normalisation itself must be linear. The reference's
# patterns take seconds on each of these (quadratic backtracking when the closing token is missing).
ADVERSARIAL_GROUND_TRUTHS = [
    "\\text{" * 3_000,
    "\\boxed{" * 3_000,
    "$" + "a" * 20_000,
    ("\\text{" * 300 + "\n") * 10 + "}",
    "\\overline{" * 2_000,
    "frac" * 5_000,
]


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


@pytest.mark.parametrize("i", range(len(ADVERSARIAL_RESPONSES)))
def test_adversarial_response_is_fast(i):
    resp = ADVERSARIAL_RESPONSES[i]
    assert _timed(score, resp, "5") < 0.05
    assert score(resp, "5")["acc"] in (True, False)


@pytest.mark.parametrize("i", range(len(ADVERSARIAL_GROUND_TRUTHS)))
def test_adversarial_ground_truth_is_fast(i):
    gt = ADVERSARIAL_GROUND_TRUTHS[i]
    assert _timed(score, "Answer: 5", gt) < 0.05
    assert _timed(normalize_final_answer, gt) < 0.05


def test_nested_braces_answer():
    resp = "Answer: \\boxed{" + "{" * 10_000 + "5" + "}" * 10_000 + "}"
    out = score(resp, "5")
    assert out["acc"] is False and len(out["pred"]) <= 300


# ---- math_verify mode ----


def test_math_verify_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` raise ImportError
    with pytest.raises(RuntimeError, match="pip install math-verify"):
        score("Answer: 5", "5", mode="math_verify")


def test_math_verify_timeout_counts_as_incorrect(monkeypatch):
    # A stand-in module whose verify hangs: the SIGALRM deadline must cut it off.
    fake = types.ModuleType("math_verify")
    fake.parse = lambda text, parsing_timeout=None: [5, "5"]

    def hang(gold, answer, timeout_seconds=None):
        time.sleep(30)
        return True

    fake.verify = hang
    monkeypatch.setitem(sys.modules, "math_verify", fake)
    t0 = time.perf_counter()
    out = reward._score_math_verify("\\boxed{5}", "5", timeout_s=0.2)
    assert time.perf_counter() - t0 < 2.0
    assert out == {"score": -1.0, "acc": False, "pred": "[INVALID]"}


def test_math_verify_real():
    pytest.importorskip("math_verify")
    assert score("so x is \\boxed{0.5}", "\\frac{1}{2}", mode="math_verify")["acc"] is True
    assert score("so x is \\boxed{\\frac{2}{4}}", "0.5", mode="math_verify")["acc"] is True
    out = score("so x is \\boxed{3}", "4", mode="math_verify")
    assert out["acc"] is False and out["score"] == -1.0
    assert score("no math here", "4", mode="math_verify")["pred"] == "[INVALID]"
