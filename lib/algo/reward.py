"""Rule-based reward for math answers.

mode="dapo" reproduces the DAPO-Math-17k reward of verl's DAPO recipe (math_dapo.compute_score):
take the last "Answer: ..." line of the response tail, normalise it and the ground truth with the
Minerva/Hendrycks rules, and compare the two strings. +1.0 if equal, -1.0 otherwise.
Nothing in dapo mode evaluates or parses model text as math; it is string surgery only, and every
step is linear in the input length, so adversarial responses cannot stall a rollout.

mode="math_verify" asks Hugging Face's math-verify (requirements.txt; tested with 0.9.0) for symbolic
equivalence instead, under one SIGALRM deadline.
"""

import functools
import re
import signal
import threading

TAIL_CHARS = 300  # only the response's last 300 chars are searched (MATH-500's longest answer is 159)
INVALID = "[INVALID]"  # pred when no "Answer:" line is found; it is normalised like any answer
# \s also matches '\n', so "Answer:\n\n5" still extracts "5"; the capture itself stops at the line end.
ANSWER_RE = re.compile(r"Answer\s*:\s*([^\n]+)", re.IGNORECASE)

# Plain str.replace, applied in this order, anywhere in the string (not only on word boundaries).
SUBSTITUTIONS = (
    ("an ", ""),  # meant to drop the article, but also eats word endings: "tan 3" -> "t3"
    ("a ", ""),  # same quirk: "banana 3" -> "banan3"
    (".$", "$"),  # a full stop just before the closing dollar
    ("\\$", ""),  # an escaped dollar sign (currency)
    ("\\ ", ""),  # TeX forced space
    (" ", ""),  # then every remaining space: "1 000" == "1000"
    ("mbox", "text"),  # \mbox{..} becomes \text{..} so the \text unwrapping below catches it
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),  # a metre unit; the empty \text{} it leaves is removed below
)

# Deleted wherever they occur, in this order, after SUBSTITUTIONS (so they see a space-free string).
REMOVED_EXPRESSIONS = (
    # units and nouns; substring deletion, so e.g. "sue" also vanishes from "issue"
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots",
    "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds",
    "meters", "meals", "edges", "students", "childrentickets", "multiples",
    # TeX leftovers; "\\text{\ns}" and "\\text{\n}" hold a real newline, so only multi-line strings hit them
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
    "\\mathrm{th}", "^\\circ", "^{\\circ}",  # ordinals and degree signs: 90^\circ == 90
    "\\;", ",\\!", "{,}", '"', "\\dots",  # thin spaces and TeX thousands separators
)

# The reference does these unwrappings with lazy/greedy ".*" patterns that are quadratic when the
# closing token is missing. Each pattern below has a second branch that swallows, unchanged, the
# stretch where no match can start (up to the line end), so the scan never restarts inside it.
# Replacement r"\1\2": exactly one branch matched, the other group is empty.
# '.' and [^\n] never cross a newline, like the reference's '.', so everything works per line.

# A line holding two or more '$' becomes "$<text between its first two $>$" (text before and after
# the pair is dropped); a line with fewer '$' is left as it is.
_DOLLARS_RE = re.compile(r"[^$\n]*(\$[^$\n]*\$).*|([^\n]+)")
# \text{..}, \textbf{..}, \overline{..}: unwrap up to the FIRST '}', so nested braces come out
# unbalanced ("\text{\text{5}}" -> "\text{5}"); no '}' before the line end -> left as is.
_TEXT_RE = re.compile(r"\\text\{([^}\n]*)\}|(\\text\{[^}\n]*)")
_TEXTBF_RE = re.compile(r"\\textbf\{([^}\n]*)\}|(\\textbf\{[^}\n]*)")
_OVERLINE_RE = re.compile(r"\\overline\{([^}\n]*)\}|(\\overline\{[^}\n]*)")
# \boxed{..}: greedy, from the first \boxed{ of a line to the LAST '}' of that line.
_BOXED_RE = re.compile(r"\\boxed\{(.*)\}|(\\boxed\{.*)")
# TeX shorthand: "\frac12" -> "\frac{1}{2}", "\sqrt2" -> "\sqrt{2}". Fixed width, so no backtracking.
# The first char may be anything but '{' (even '\n' or '$'); "\frac1" alone is too short to match.
_FRAC_RE = re.compile(r"frac([^{])(.)")
_SQRT_RE = re.compile(r"sqrt([^{])")


def normalize_final_answer(s: str) -> str:
    """Minerva-style normalisation of a final answer, quirk for quirk as in verl's math_dapo."""
    s = s.split("=")[-1]  # "x = 5" -> " 5"; also "a=b=c" -> "c"
    for before, after in SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        s = s.replace(expr, "")
    s = _DOLLARS_RE.sub(r"\1\2", s)
    s = _TEXT_RE.sub(r"\1\2", s)
    s = _TEXTBF_RE.sub(r"\1\2", s)
    s = _OVERLINE_RE.sub(r"\1\2", s)
    s = _BOXED_RE.sub(r"\1\2", s)
    s = _FRAC_RE.sub(r"frac{\1}{\2}", s)
    s = _SQRT_RE.sub(r"sqrt{\1}", s)
    s = s.replace("$", "")  # the $..$ extraction above kept its dollars; only now are they dropped
    # "1,000" -> "1000", but only if the whole thing is digits and commas; "1,2" -> "12" too
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s.strip()  # spaces are long gone; this drops tabs/newlines (e.g. a ground truth's trailing "\n")


def extract_answer(response: str) -> str:
    """Raw text after the last "Answer:" in the response's last TAIL_CHARS chars, or INVALID."""
    last = None
    for m in ANSWER_RE.finditer(response[-TAIL_CHARS:]):  # matches don't overlap: "Answer: Answer: 5" is one
        last = m
    return last.group(1) if last is not None else INVALID


def _score_dapo(response: str, ground_truth: str) -> dict:
    pred = normalize_final_answer(extract_answer(response))
    acc = pred == normalize_final_answer(ground_truth)  # the ground truth goes through the same rules
    return {"score": 1.0 if acc else -1.0, "acc": acc, "pred": pred}


MATH_VERIFY_TIMEOUT_S = 3.0  # wall-clock budget for one whole math_verify call
MATH_VERIFY_TAIL_CHARS = 2000  # math-verify's regexes run in C, where no alarm can interrupt them


class _Deadline(BaseException):
    """Raised by our SIGALRM handler; BaseException so math-verify's `except Exception` can't swallow it."""


def _score_math_verify(response: str, ground_truth: str, timeout_s: float = MATH_VERIFY_TIMEOUT_S) -> dict:
    try:
        import math_verify  # lazy: optional dependency, and importing sympy is slow
    except ImportError as e:
        raise RuntimeError("mode='math_verify' needs Hugging Face's math-verify: pip install math-verify") from e
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        raise RuntimeError("mode='math_verify' enforces its time limit with SIGALRM: POSIX main thread only")

    def on_alarm(signum, frame):
        raise _Deadline()

    # One deadline for parse + parse + verify. math-verify's own per-step timeouts are turned off
    # (None) because they call signal.alarm(0) on exit, which would cancel our timer.
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        gold = math_verify.parse("\\boxed{" + ground_truth + "}", parsing_timeout=None)
        answer = math_verify.parse(response[-MATH_VERIFY_TAIL_CHARS:], parsing_timeout=None)
        acc = bool(gold) and bool(answer) and bool(math_verify.verify(gold, answer, timeout_seconds=None))
    except _Deadline:
        answer, acc = [], False  # out of time counts as incorrect
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
    # parse() returns [sympy_obj, its string]: math-verify's normalised LaTeX of the extracted answer ("0.5"
    # comes back as "\\frac{1}{2}"); report that string (str() of a sympy object can be slow)
    pred = next((a for a in answer if isinstance(a, str)), INVALID)
    return {"score": 1.0 if acc else -1.0, "acc": acc, "pred": pred}


def score(response: str, ground_truth: str, mode: str = "dapo") -> dict:
    """Reward of one response: {"score": 1.0 | -1.0, "acc": bool, "pred": str}."""
    if mode == "dapo":
        return _score_dapo(response, ground_truth)
    if mode == "math_verify":
        return _score_math_verify(response, ground_truth)
    raise ValueError(f"unknown reward mode {mode!r}; expected 'dapo' or 'math_verify'")


# ---------------------------------------------------------------------------------------------------------
# Choosing a verifier by name: the built-in modes, or a function in the user's own Python file.

BUILTIN = ("dapo", "math_verify")
PROBE = ("Answer: 1", "1")  # a literal (response, ground_truth) every verifier must be able to score


def load_reward(spec: str):
    """The verifier a --reward value names: 'dapo' | 'math_verify' | 'path/to/file.py:function'.

    A file spec RUNS that file (an import, as `python file.py` would): the user's own choice of code, so it
    needs no extra flag. The function must take (response, ground_truth) and return {"score": number,
    "acc": bool, "pred": str}, like `score`; one probe call on a literal input checks that now, so a bad
    path, a missing function or a wrong return shape fails in one line before any model loads."""
    from lib.run.cli import UserError  # (lib.run.cli is below every stage; imported here to keep this module light)

    if spec in BUILTIN:
        fn = functools.partial(score, mode=spec)
    else:
        path, colon, name = spec.rpartition(":")
        if not colon or not path.endswith(".py") or not name.isidentifier():
            raise UserError(f"--reward: expected 'dapo', 'math_verify' or 'path/to/file.py:function', got '{spec}'")
        fn = _function_from_file(path, name, UserError)
    try:
        out = fn(*PROBE)
    except RuntimeError as e:  # e.g. math_verify not installed: say what to install
        raise UserError(f"--reward {spec}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's function failed on the probe input
        raise UserError(f"--reward {spec}: the probe call {name_of(fn)}{PROBE!r} raised "
                        f"{e.__class__.__name__}: {e}") from None
    problem = check_result(out)
    if problem:
        raise UserError(f"--reward {spec}: {problem} (the probe call {name_of(fn)}{PROBE!r} returned {out!r})")
    return fn


def check_result(out) -> str:
    """'' if `out` has the shape of `score`'s result, else what is wrong with it."""
    if not isinstance(out, dict):
        return f'expected a dict {{"score", "acc", "pred"}}, got {type(out).__name__}'
    missing = [k for k in ("score", "acc", "pred") if k not in out]
    if missing:
        return f"the result lacks {', '.join(repr(k) for k in missing)}"
    if isinstance(out["score"], bool) or not isinstance(out["score"], (int, float)):
        return f"'score' should be a number, got {type(out['score']).__name__}"
    if not isinstance(out["acc"], bool) and out["acc"] not in (0, 1):
        return f"'acc' should be a bool, got {out['acc']!r}"
    if not isinstance(out["pred"], str):
        return f"'pred' should be a str, got {type(out['pred']).__name__}"
    return ""


def name_of(fn) -> str:
    return getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "reward")


def _function_from_file(path: str, name: str, error):
    """Import `path` as a module of its own (not added to sys.modules: two files may share a stem) and
    return its callable `name`."""
    import importlib.util
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise error(f"--reward: {path}: no such file")
    mod_spec = importlib.util.spec_from_file_location(f"rloop_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure while importing the user's file is their input
        msg = str(e).splitlines()[0] if str(e) else ""
        raise error(f"--reward: {path}: importing it raised {e.__class__.__name__}: {msg}") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise error(f"--reward: {path} has no function '{name}'")
    if not callable(fn):
        raise error(f"--reward: {path}: '{name}' is not a function")
    return fn
