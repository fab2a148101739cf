"""A partial-credit verifier for the toy world's whole-number answers: a reward file for `--reward`.

    python explore.py --reward lib/worlds/toy_reward.py:partial_credit --filter-metric reward

It has `lib/algo/reward.score`'s signature and shape. `acc` and `pred` are the default verifier's (verl's DAPO
rule), so the exact verdict, and every held-out metric that reads it, is unchanged; `score` gives credit that
halves with each unit the answer is off, on the binary verifier's scale (+1 right, -1 wrong):

    score = 2 * 2 ** -d - 1,   d = |answer - truth|:   exact +1, off by 1: 0, by 2: -0.5, by 3: -0.75, far: -> -1

The toy's chains are one-digit additions and subtractions (lib/worlds/toy.py), so a slip in one step usually
leaves the answer a few units off: the reward tells such a near miss from a wild guess, which the binary one
does not. An answer that is not a whole number (or no `Answer:` line) scores -1, as a wrong answer does there.
The lab's `*-partial` arms train on it (lib/lab/arms.py).
"""
from __future__ import annotations

import re

from lib.algo.reward import normalize_final_answer, score

WHOLE = re.compile(r"-?\d+")
FAR = 64  # distances beyond this score as this (2 ** -64 is -1 to float precision)


def partial_credit(response: str, ground_truth: str) -> dict:
    """{"score": 2 * 2 ** -|answer - truth| - 1, "acc": the exact verdict, "pred": the normalised answer}."""
    out = score(response, ground_truth)  # the DAPO rule: acc and pred
    truth = normalize_final_answer(ground_truth)  # (as the rule compares it)
    if out["acc"]:
        return {**out, "score": 1.0}
    if not (WHOLE.fullmatch(out["pred"]) and WHOLE.fullmatch(truth)):
        return {**out, "score": -1.0}
    # a wrong verdict is at least one unit off ("017" for 17 too): full credit stays the exact verdict's
    d = min(max(abs(int(out["pred"]) - int(truth)), 1), FAR)
    return {**out, "score": 2.0 * 2.0 ** -d - 1.0}
