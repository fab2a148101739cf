"""The diversity of successful solutions (the paper's mechanism), read from an explore.py rollouts file in one
streaming pass, in memory and time bounded whatever the file's size.

similarity(): how alike are two successful responses to the same problem, drawn at the same RL step (intra-step)
or at different steps (inter-step)? Mean word/symbol-trigram Jaccard similarity over such pairs. A full-scale
rollouts file holds millions of ~10 KB records (1,536+ prompts x 16 responses per step), so neither the responses
nor their pairs are ever all held. The pass keeps, seeded and independent of the file's order:
  - the `problems` problems with the smallest hash of (seed, problem id) that have a success (a bottom-k sample),
  - in each, exact success counts per step, and the `per_problem` successes with the smallest hash of
    (seed, problem id, step, response): a uniform sample of its successes,
then scores every pair among a problem's sampled successes (trigram sets are built for sampled responses only,
one problem at a time). A uniform sample of a problem's successes gives a uniform sample of its same-step and of
its different-step pairs, and each problem's mean is weighted by its true number of such pairs (from the exact
counts): the estimate of the mean over all pairs that a brute force computes, and equal to it when the sample holds
every success (problems and per_problem at least the file's).

strategy_entropy(): the entropy of the toy's solution strategies (lib.worlds.toy.strategy) among a problem's successes,
within a step and across a window of steps (the lab's report).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import combinations
from pathlib import Path

from lib.lab import stats

WORD = re.compile(r"\w+|[^\w\s]")
SAMPLE_PROBLEMS = 500  # problems sampled
SAMPLE_PER_PROBLEM = 12  # successes sampled per problem: at most 500 x 66 pairs scored


def ngrams(text: str, n: int = 3) -> frozenset:
    """Word/symbol trigrams ("7+5=12" -> 7 + 5, + 5 =, 5 = 12): shared reasoning steps, not shared letters."""
    toks = WORD.findall(text)
    return frozenset(tuple(toks[i:i + n]) for i in range(max(1, len(toks) - n + 1)))


def jaccard(a: frozenset, b: frozenset) -> float:
    both = len(a & b)
    return both / (len(a) + len(b) - both) if a or b else 1.0


def trigram_ids(text: str, vocab: dict[str, int]) -> frozenset[int]:
    """ngrams(text) as ints (the same sets, one to one, for one `vocab`): tokens numbered in `vocab`, a trigram
    packed into one int. Sets of ints intersect several times faster than sets of tuples of strings."""
    ids = [vocab.setdefault(w, len(vocab)) for w in WORD.findall(text)]
    if len(ids) < 3:
        return frozenset([tuple(ids)])  # (as ngrams: a text of fewer than 3 tokens is one short gram)
    return frozenset((a << 64) | (b << 32) | c for a, b, c in zip(ids, ids[1:], ids[2:]))


ACC = re.compile(rb'"acc"\s*:\s*true')


def successes(rollouts: Path) -> Iterator[tuple[str, int, str]]:
    """(problem id, step, response) of every successful rollout that carries its RL step, streamed. A line is
    parsed only when its last "acc" key says true (explore.py writes `acc` after the response and before the token
    ids, a few hundred bytes from a failure's end): most lines are skipped unparsed, after a short search."""
    with open(rollouts, "rb") as f:
        for raw in f:
            at = raw.rfind(b'"acc"')
            if at < 0 or not ACC.match(raw, at):
                continue
            t = json.loads(raw)
            if t.get("acc") is True and t.get("step") is not None:
                yield str(t["problem_id"]), t["step"], t["response"]


def _hash(*key) -> int:
    return int.from_bytes(hashlib.blake2b("\0".join(map(str, key)).encode(), digest_size=8).digest(), "big")


class _Problem:
    """One sampled problem: exact success counts per step, and a bottom-k sample of its successes."""
    __slots__ = ("counts", "sample")

    def __init__(self):
        self.counts: dict[int, int] = defaultdict(int)
        self.sample: list[tuple[int, int, str]] = []  # max-heap by hash: (-hash, step, response)


def sample_successes(rollouts: Path, problems: int, per_problem: int, seed: int) -> dict[str, _Problem]:
    """The streaming pass: {problem id: its counts and sampled successes} for the sampled problems."""
    kept: dict[str, _Problem] = {}
    heap: list[tuple[int, str]] = []  # max-heap by hash of the kept problems: (-hash, id)
    for pid, step, response in successes(rollouts):
        p = kept.get(pid)
        if p is None:
            h = _hash(seed, pid)
            if len(heap) == problems:
                if h >= -heap[0][0]:
                    continue  # (the largest kept hash only falls: this problem never gets in)
                del kept[heapq.heappop(heap)[1]]
            heapq.heappush(heap, (-h, pid))
            p = kept[pid] = _Problem()
        p.counts[step] += 1
        h = _hash(seed, pid, step, response)
        if len(p.sample) < per_problem:
            heapq.heappush(p.sample, (-h, step, response))
        elif h < -p.sample[0][0]:
            heapq.heapreplace(p.sample, (-h, step, response))
    return kept


def similarity(rollouts: Path, problems: int = SAMPLE_PROBLEMS, per_problem: int = SAMPLE_PER_PROBLEM,
               seed: int = 0) -> dict | None:
    """Intra- and inter-step similarity of successful responses (see the module's docstring): {intra_step,
    inter_step: the estimates (None without such pairs), intra_step_pairs, inter_step_pairs: pairs scored,
    sampled: successes held}. None when the file does not exist."""
    if not rollouts.exists():
        return None
    sums = {"intra_step": [0.0, 0.0, 0], "inter_step": [0.0, 0.0, 0]}  # weighted sum, weight, pairs scored
    sampled = 0
    vocab: dict[str, int] = {}
    for p in sample_successes(rollouts, problems, per_problem, seed).values():
        items = [(step, trigram_ids(text, vocab)) for _, step, text in p.sample]
        sampled += len(items)
        n = sum(p.counts.values())
        squares = sum(c * c for c in p.counts.values())
        weights = {"intra_step": (squares - n) / 2, "inter_step": (n * n - squares) / 2}  # pairs in the problem
        scored = {"intra_step": [], "inter_step": []}
        for (s1, g1), (s2, g2) in combinations(items, 2):
            scored["intra_step" if s1 == s2 else "inter_step"].append(jaccard(g1, g2))
        for kind, sims in scored.items():
            if sims:
                sums[kind][0] += weights[kind] * sum(sims) / len(sims)
                sums[kind][1] += weights[kind]
                sums[kind][2] += len(sims)
    out: dict = {}
    for kind, (total, weight, pairs) in sums.items():
        out[kind] = round(total / weight, 4) if weight else None
        out[kind + "_pairs"] = pairs
    out["sampled"] = sampled
    return out


def strategy_entropy(rollouts: Path, window: int, label: Callable[[str], str | None]) -> dict | None:
    """Entropy (bits) of the solution strategies (label(response), e.g. lib.worlds.toy.strategy) among a problem's
    successful responses: within one RL step, and across the steps of a window of `window` steps (an RLoop
    iteration, what one harvest pools; vanilla cut into windows of the same length). Means over (problem, step)
    and (problem, window) cells with at least two labelled successes; plus the share of each strategy. Holds
    one label per success (the toy's lab: thousands)."""
    if not rollouts.exists():
        return None
    cells: dict[tuple, list] = defaultdict(list)
    for pid, step, response in successes(rollouts):
        lab = label(response)
        if lab is not None:
            cells[(pid, step)].append(lab)
    if not cells:
        return None
    windows: dict[tuple, list] = defaultdict(list)
    for (pid, step), labs in cells.items():
        windows[(pid, (step - 1) // window)] += labs
    within = [stats.entropy(v) for v in cells.values() if len(v) >= 2]
    across = [stats.entropy(v) for v in windows.values() if len(v) >= 2]
    every = [x for v in cells.values() for x in v]
    shares = {k: round(every.count(k) / len(every), 4) for k in sorted(set(every))}
    return {"within_step": sum(within) / len(within) if within else None,
            "across_steps": sum(across) / len(across) if across else None, "shares": shares}
