"""The open questions' records (lib/lab/report_lab.py renders them): each arm's per-step gradient norm and
sampler/trainer gap, the first step its gradient norm blows up, and the answers to QUESTIONS (lib/lab/arms.py),
each a paired difference over seeds with its 95% interval (lib/lab/stats.py).

A blow-up is a step whose gradient norm exceeds BLOWUP times the median norm of its own run: a scale-free test,
so a run whose norms are all large is not a blow-up, and one spike in a calm run is. The norm is explore.py's
per-step `grad_norm` (the mean pre-clip norm of the step's updates); a step whose updates were skipped as
non-finite counts as infinite.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from lib.lab import arms as A
from lib.lab import tables as T
from lib.lab.report_run import peak_norm

BLOWUP = 10.0


def step_of(row: dict) -> int:
    """A metrics row's RL step, RLoop's iterations end to end (lib/lab/report_run.end_to_end)."""
    return row.get("global_step", row.get("step", 0))


def norm_of(row: dict) -> float | None:
    """A row's per-step gradient norm; inf when it is not finite (null in metrics.jsonl); None: no update (a
    validation-only row)."""
    if "grad_norm" not in row:
        return None
    v = row["grad_norm"]
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf


def first_exceed(norms: list[tuple[int, float]], factor: float = BLOWUP) -> int | None:
    """The first step whose norm exceeds `factor` x the median of all the run's norms; None: never."""
    if not norms:
        return None
    median = statistics.median(v for _, v in norms)
    return next((step for step, v in norms if v > factor * median), None)


@dataclass
class Curve:
    """One arm's per-step series, per seed: (step, grad_norm, rollout_probs_diff_max; None where not logged)."""
    arm: str
    seeds: dict[int, list[tuple[int, float | None, float | None]]]


@dataclass
class ArmStability:
    arm: str
    first_exceed: dict[int, int | None]  # seed -> the first blow-up step, None: never
    largest_norm: float | None  # the largest per-step grad_norm over its steps and seeds
    largest_gap: float | None  # the largest rollout_probs_diff_max over its steps and seeds


@dataclass
class Answer:
    metric: str  # what is compared, in words
    diff: T.Difference | None  # arm - against, paired by seed

    @property
    def word(self) -> str:
        """Direction-neutral: a question asks whether, not which way is good."""
        if self.diff is None:
            return "no seed in common"
        if not math.isfinite(self.diff.half):
            return "undecided (one seed)"
        return "higher" if self.diff.lo > 0 else "lower" if self.diff.hi < 0 else "no measurable difference"


@dataclass
class QuestionRow:
    ask: str
    arm: str
    against: str
    steps: int  # the arm's RL steps
    answers: list[Answer]
    first_exceed: dict[str, dict[int, int | None]]  # arm -> seed -> step (gradient-norm questions only)


@dataclass
class Questions:
    blowup: float
    stability: list[ArmStability]  # every arm of the lab
    curves: list[Curve]  # the arms drawn in stability.png
    rows: list[QuestionRow]  # the questions whose two arms both ran


def curve(arm: str, runs: dict[int, T.Run]) -> Curve:
    return Curve(arm, {s: [(step_of(x), norm_of(x), x.get("rollout_probs_diff_max")) for x in r.rows
                           if norm_of(x) is not None] for s, r in runs.items()})


def questions(lab: dict[str, tuple[A.Arm, dict[int, T.Run]]], t: T.LabTables,
              asked: tuple[A.Question, ...] = A.QUESTIONS) -> Questions:
    runs_of = {name: runs for name, (_, runs) in lab.items()}
    curves = {name: curve(name, runs) for name, runs in runs_of.items()}
    exceed = {name: {s: first_exceed([(st, v) for st, v, _ in pts]) for s, pts in c.seeds.items()}
              for name, c in curves.items()}
    stability = []
    for name, c in curves.items():
        norms = [v for pts in c.seeds.values() for _, v, _ in pts]
        gaps = [g for pts in c.seeds.values() for _, _, g in pts if g is not None]
        stability.append(ArmStability(name, exceed[name], max(norms, default=None), max(gaps, default=None)))

    kmax = t.kmax
    metrics = {  # (words, per-seed values of one arm's runs)
        "grad_norm": ("largest pre-clip gradient norm",
                      lambda runs: T.per_seed(runs, lambda r: max((peak_norm(x) for x in r.rows), default=None))),
        "acc": ("average acc", lambda runs: T.final_values(runs, "average", "acc")),
        "pass@k": (f"average pass@{kmax}", lambda runs: T.final_values(runs, "average", f"pass@{kmax}")),
        "probe": ("probe acc", lambda runs: T.final_values(runs, "probe", "acc") if "probe" in t.splits else {}),
    }
    rows = []
    for q in asked:
        if q.arm not in runs_of or q.against not in runs_of:
            continue
        a, b = runs_of[q.arm], runs_of[q.against]
        answers = [Answer(metrics[m][0], T.difference(metrics[m][1](a), metrics[m][1](b))) for m in q.metrics]
        blow = {n: exceed[n] for n in (q.arm, q.against)} if "grad_norm" in q.metrics else {}
        rows.append(QuestionRow(q.ask, q.arm, q.against, max(r.steps for r in a.values()), answers, blow))
    drawn = [curves[n] for n, (arm, _) in lab.items() if arm.stability]
    return Questions(BLOWUP, stability, drawn, rows)


def exceed_words(by_seed: dict[int, int | None]) -> str:
    """'never' (no seed blew up), else each seed's step: 'step 212 (seed 1); never (seeds 0, 2)'."""
    hit = {s: v for s, v in sorted(by_seed.items()) if v is not None}
    if not hit:
        return "never"
    never = [s for s in sorted(by_seed) if by_seed[s] is None]
    return "; ".join([f"step {v} (seed {s})" for s, v in hit.items()]
                     + ([f"never (seed{'s' * (len(never) > 1)} {', '.join(map(str, never))})"] if never else []))
