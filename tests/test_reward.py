import sys
import time
import types

import pytest

from lib.algo import reward
from lib.algo.reward import normalize_final_answer, score

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


# ---- adversarial inputs: no dapo call may go quadratic ----
# The bound is a generous 2 s, not a speed goal (a call takes ~1-50 ms; timing is no test's business on a
# shared machine): the inputs are sized so that one quadratic pattern (the reference's lazy ".*?" with a
# missing closing token, ~0.16 s on 3,000 openers, ~16 s on 30,000) blows far past it.

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
    "\\text{" * 30_000,
    "\\boxed{" * 30_000,
    "$" + "a" * 200_000,
    ("\\text{" * 20_000 + "\n") * 3 + "}",
    "\\overline{" * 20_000,
    "frac" * 50_000,
]
SLOW_S = 2.0  # catastrophic backtracking only


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


@pytest.mark.parametrize("i", range(len(ADVERSARIAL_RESPONSES)))
def test_adversarial_response_is_fast(i):
    resp = ADVERSARIAL_RESPONSES[i]
    assert _timed(score, resp, "5") < SLOW_S
    assert score(resp, "5")["acc"] in (True, False)


@pytest.mark.parametrize("i", range(len(ADVERSARIAL_GROUND_TRUTHS)))
def test_adversarial_ground_truth_is_fast(i):
    gt = ADVERSARIAL_GROUND_TRUTHS[i]
    assert _timed(score, "Answer: 5", gt) < SLOW_S
    assert _timed(normalize_final_answer, gt) < SLOW_S


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


# The real package (requirements.txt): literal cases, each checked by hand against math-verify 0.9's
# semantics. pred is math-verify's own string of the answer it extracted (its normalised LaTeX: "0.5" comes
# back as "\\frac{1}{2}"), so it is asserted only where that string is the text itself.
MATH_VERIFY_CASES = [
    # (response, ground truth, acc, pred or None)
    ("so x is \\boxed{0.5}", "\\frac{1}{2}", True, None),  # decimal vs fraction: symbolic, not string, equality
    ("so x is \\boxed{\\frac{1}{2}}", "0.5", True, "\\frac{1}{2}"),
    ("so x is \\boxed{\\frac{2}{4}}", "0.5", True, None),
    ("\\boxed{3}", "3", True, "3"),
    ("\\boxed{3}", "4", False, "3"),
    ("Answer: 3", "3", True, "3"),  # no \\boxed: the last expression of the text
    ("The answer is $\\sqrt{8}$", "2\\sqrt{2}", True, "\\sqrt{8}"),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True, "x^2+2x+1"),
    ("\\boxed{x=2}", "2", True, "x=2"),  # an equation's right-hand side is its value
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", True, None),  # sets: order does not matter
    ("\\boxed{(1,2)}", "(2,1)", False, "(1,2)"),  # tuples / intervals: it does
    ("\\boxed{0.33}", "\\frac{1}{3}", False, None),  # rounding to 6 places, not 2
    ("no math here", "4", False, "[INVALID]"),
]


@pytest.mark.parametrize("response,gt,acc,pred", MATH_VERIFY_CASES)
def test_math_verify_real(response, gt, acc, pred):
    out = score(response, gt, mode="math_verify")
    assert out["acc"] is acc and out["score"] == (1.0 if acc else -1.0), out
    if pred is not None:
        assert out["pred"] == pred


def test_math_verify_keywords_exist_in_the_installed_package():
    """The deadline design needs math-verify's own timeouts off: parse(parsing_timeout=None) and
    verify(timeout_seconds=None). A renamed keyword would be a TypeError inside every rollout."""
    import inspect

    import math_verify

    assert "parsing_timeout" in inspect.signature(math_verify.parse).parameters
    verify = inspect.signature(math_verify.verify).parameters
    assert list(verify)[:2] == ["gold", "target"] and "timeout_seconds" in verify  # gold first, as we call it


# ---- verifier under attack (issue 7): no adversarial response stalls a rollout, and nothing in it ever runs ----

PWNED = "/tmp/rloop-reward-pwned"  # created only if some response text were executed
ATTACKS = {
    "1MB_of_text": "lorem ipsum " * 90_000,
    "1MB_then_answer": "x" * 1_000_000 + "\nAnswer: 5",
    "10k_nested_braces": "Answer: " + "{" * 10_000 + "5" + "}" * 10_000,
    "10k_open_braces": "Answer: " + "{" * 10_000,
    "10k_nested_boxed_unclosed": "Answer: " + "\\boxed{" * 10_000,
    # regex backtracking bait: every pattern's closing token is missing, the opener repeated to the end
    "answer_without_colon": "Answer " * 150_000,
    "answer_whitespace_run": "Answer" + " \t" * 500_000 + "x",
    "text_unclosed": "Answer: " + "\\text{" * 50_000,
    "dollar_unpaired": "Answer: " + "$a" * 500_000,
    "frac_shorthand": "Answer: " + "\\frac" * 200_000,
    "NUL_bytes": "\x00" * 1_000_000,
    "NUL_around_answer": "\x00" * 1_000 + "Answer: 5" + "\x00" * 100,
    "code_import": f"Answer: __import__('os').system('touch {PWNED}')",
    "code_boxed": f"Answer: \\boxed{{__import__('os').system('touch {PWNED}')}}",
    "code_eval_chain": "Answer: ().__class__.__bases__[0].__subclasses__()",
}


class _Forbidden:
    """Replaces eval / exec / compile / os.system / os.popen / subprocess.Popen while a dapo score runs.
    (__import__ stays: the re module imports its template parser lazily inside re.sub.)"""

    def __enter__(self):
        import builtins
        import os
        import subprocess

        def boom(*a, **kw):
            raise AssertionError("the verifier tried to run code")

        self.saved = [(builtins, n, getattr(builtins, n)) for n in ("eval", "exec", "compile")]
        self.saved += [(os, "system", os.system), (os, "popen", os.popen), (subprocess, "Popen", subprocess.Popen)]
        for mod, name, _ in self.saved:
            setattr(mod, name, boom)

    def __exit__(self, *exc):
        for mod, name, fn in self.saved:
            setattr(mod, name, fn)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_scores_fast_and_runs_nothing(name):
    import os

    resp = ATTACKS[name]
    with _Forbidden():
        t0 = time.perf_counter()
        out = score(resp, "5")
        took = time.perf_counter() - t0
    assert took < SLOW_S, f"{name}: {took:.1f} s"  # (~0.05 ms: a bound that only catches a quadratic scan)
    assert out["score"] in (1.0, -1.0) and isinstance(out["acc"], bool) and len(out["pred"]) <= reward.TAIL_CHARS
    assert out["acc"] is (name in ("1MB_then_answer",))  # only the honest answer counts
    assert not os.path.exists(PWNED)


def test_code_in_an_answer_is_just_text():
    out = score("Answer: __import__('os').getcwd()", "__import__('os').getcwd()")
    assert out["acc"] is True and out["pred"] == "__import__('os').getcwd()"  # compared as strings, not run


def test_math_verify_deadline_covers_parsing_and_is_cleared(monkeypatch):
    import signal

    fake = types.ModuleType("math_verify")

    def slow_parse(text, parsing_timeout=None):
        time.sleep(30)  # a parse that never ends (sympy on 9^9^9^9, say)
        return [5, "5"]

    fake.parse, fake.verify = slow_parse, lambda *a, **kw: True
    monkeypatch.setitem(sys.modules, "math_verify", fake)
    before = signal.getsignal(signal.SIGALRM)
    t0 = time.perf_counter()
    out = reward._score_math_verify("\\boxed{5}", "5", timeout_s=0.2)
    assert time.perf_counter() - t0 < 2.0 and out["acc"] is False
    # no alarm left armed, the previous handler back: the next rollout is not interrupted by our timer
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is before


def test_math_verify_real_attacks_are_cut_off():
    import os

    for resp in ("\\boxed{9^{9^{9^{9}}}}", f"\\boxed{{__import__('os').system('touch {PWNED}')}}"):
        t0 = time.perf_counter()
        out = score(resp, "5", mode="math_verify")
        assert time.perf_counter() - t0 < reward.MATH_VERIFY_TIMEOUT_S + 1.0 and out["acc"] is False
    assert not os.path.exists(PWNED)
