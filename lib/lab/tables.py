"""The lab's numbers as plain records: every table of the lab report (lib/lab/report_lab.py renders them).

A lab folder holds OUT/<arm>/seed<k>/, one finished loop.sh run each (lab.py). Every number is per seed first,
then a mean over seeds with its 95% t interval (Estimate); two arms are compared paired by seed (Difference), a
gain or a loss only when the interval excludes 0 (lib/lab/stats.py). Which arm is compared with which, judged on the
paper's claims, swept, drawn as a curve: lib/lab/arms.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from lib.algo.passk import ks_of, pass_at
from lib.lab import arms as A
from lib.lab import stats
from lib.lab.diversity import similarity, strategy_entropy
from lib.lab.report_run import comparison, end_to_end, load_run, peak_norm


# --- values over seeds ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and the half-width of its 95% t interval (nan with one seed)."""
    values: dict[int, float]
    mean: float
    half: float

    def cell(self, digits: int = 3) -> str:
        return stats.fmt_ci(self.mean, self.half, digits)


def estimate(values: dict[int, float]) -> Estimate | None:
    if not values:
        return None
    m, h = stats.mean_ci(values.values())
    return Estimate(dict(values), m, h)


@dataclass(frozen=True)
class Difference:
    """a - b paired by seed: each common seed's difference, their mean and its 95% interval."""
    seeds: list[int]
    diffs: list[float]
    mean: float
    half: float
    lo: float
    hi: float

    def verdict(self, higher_better: bool = True) -> str:
        return stats.verdict({"half": self.half, "lo": self.lo, "hi": self.hi}, higher_better)

    def cell(self, higher_better: bool = True) -> str:
        if not math.isfinite(self.half):
            return f"{self.mean:+.3f} (1 seed)"
        return f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}] {self.verdict(higher_better)}"


def difference(a: dict[int, float], b: dict[int, float]) -> Difference | None:
    d = stats.paired_diff(a, b)
    if d is None:
        return None
    return Difference(sorted(set(a) & set(b)), d["diffs"], d["mean"], d["half"], d["lo"], d["hi"])


# --- one arm's runs -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished loop.sh run of an arm (one seed)."""
    seed: int
    folder: Path
    steps: int  # RL steps of the output policy
    final: dict | None  # evaluate.py's metrics.json of the output policy
    evals: dict[str, dict]  # every evaluation of the run, by name (base, iter1-rl, vanilla-20, ...)
    rows: list[dict]  # explore metrics rows, RLoop's iterations end to end
    filters: list[dict]  # filter_stats.json per iteration
    points: list[tuple[int, str, dict]]  # every evaluation on the RL-steps axis: (steps, policy, metrics)
    window: int  # RL steps per iteration (vanilla: the whole run)
    rollouts: list[Path]  # RLoop: one file per iteration; vanilla: the run's
    strategy: list[dict | None] = field(default_factory=list)
    similarity: list[dict | None] = field(default_factory=list)


def load_arm_run(seed: int, folder: Path) -> Run:
    r = load_run(folder, with_diversity=False)
    base = r["eval"].get("base")
    points = [(0, "base", base)] if base else []
    if r["iters"]:  # RLoop: the output is the last consolidated policy (its RL policy when the filter kept nothing)
        comp = comparison(r)
        for c in comp:
            points += [(c["rl_steps"], name, c[key]) for key, name in (("rl", "RL policy"), ("rft", "consolidated"))
                       if c[key]]
        steps, final = comp[-1]["rl_steps"], comp[-1]["rft"] or comp[-1]["rl"]
        rows = end_to_end(r)
        window = max((x["step"] for x in r["iters"][0]["rl"]), default=0)
        rollouts = [it["rollouts"] for it in r["iters"]]
    else:  # vanilla-only: its last evaluated checkpoint
        done = sorted(int(k.split("-")[1]) for k in r["eval"] if k.startswith("vanilla-"))
        points += [(s, "vanilla", r["eval"][f"vanilla-{s}"]) for s in done]
        steps, final = (done[-1], r["eval"][f"vanilla-{done[-1]}"]) if done else (0, None)
        rows = r["vanilla"]
        window = max((x.get("step", 0) for x in rows), default=0)
        rollouts = [folder / "vanilla" / "rollouts.jsonl"]
    return Run(seed, folder, steps, final, r["eval"], rows, [it["filter"] for it in r["iters"] if it["filter"]],
               points, window, rollouts)


def finished_runs(folder: Path) -> dict[str, dict[int, Path]]:
    """{arm: {seed: run folder}} of the finished runs (.done/report), the table's arms first in its order."""
    out: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.glob("*/seed*")):
        if p.name[4:].isdigit() and (p / ".done" / "report").exists():
            out.setdefault(p.parent.name, {})[int(p.name[4:])] = p
    order = [a.name for a in A.ARMS]
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def arm_of(name: str, runs: dict[int, Path]) -> A.Arm:
    """The table's entry, or for a folder the table does not name, a plain arm of the kind its runs are."""
    if name in A.BY_NAME:
        return A.BY_NAME[name]
    rloop = any(p.is_dir() for run in runs.values() for p in run.glob("iter*"))
    return A.Arm(name, "", env={} if rloop else A.VANILLA_ONLY)


def is_lab(folder: Path) -> bool:
    """A lab folder holds <arm>/seed<k>/ run folders (a loop.sh OUT holds iter*/ and vanilla/ instead)."""
    return any(p.is_dir() for p in folder.glob("*/seed*"))


def metric_of(m: dict | None, split: str, key: str) -> float | None:
    """One number of an evaluate.py metrics.json: split 'average' or a benchmark; key 'acc' or 'pass@K'."""
    if not m:
        return None
    b = m["average"] if split == "average" else m["benchmarks"].get(split)
    if b is None:
        return None
    return b["mean_acc"] if key == "acc" else pass_at(b, key[5:])


def per_seed(runs: dict[int, Run], fn) -> dict[int, float]:
    """{seed: fn(run)}, without the seeds where fn gives None."""
    return {s: v for s, r in runs.items() if (v := fn(r)) is not None}


def final_values(runs: dict[int, Run], split: str, key: str) -> dict[int, float]:
    return per_seed(runs, lambda r: metric_of(r.final, split, key))


def mean_or_none(v: list) -> float | None:
    return sum(v) / len(v) if v else None


# --- the tables -----------------------------------------------------------------------------------------------
@dataclass
class AccuracyRow:
    arm: str
    rl_steps: int
    seeds: int
    acc: Estimate | None
    pass_at: dict[str, Estimate | None]


@dataclass
class DiffRow:
    arm: str
    against: str
    cells: dict[str, Difference | None]  # "<split> <acc | pass@K>" -> arm - against


@dataclass
class StabilityRow:
    arm: str
    grad_norm: Estimate | None  # per seed: the largest pre-clip norm of any single update
    largest: float | None
    probe: Estimate | None
    probe_vs_base: Difference | None


@dataclass
class OverfitPoint:
    step: int
    window: int
    reward: Estimate | None  # mean train reward of the `window` steps before the evaluation
    held_out: dict[str, Estimate | None]  # split -> pass@kmax


@dataclass
class OverfitCurve:
    arm: str
    points: list[OverfitPoint]
    change: dict[str, Difference | None]  # "reward" and each split: last point - first point


@dataclass
class CurvePoint:
    arm: str
    policy: str  # base, vanilla, RL policy, consolidated
    step: int
    acc: dict[str, Estimate | None]  # split (and "average") -> mean acc
    pass_k: dict[str, Estimate | None]  # split (and "average") -> pass@kmax


@dataclass
class DiversityRow:
    arm: str
    within_step: Estimate | None
    across_steps: Estimate | None
    share_group: Estimate | None
    similarity_intra: Estimate | None
    similarity_inter: Estimate | None


@dataclass
class SweepRow:
    arm: str
    threshold: float
    problems_selected: Estimate | None  # per iteration, mean over iterations then seeds
    rft_examples: Estimate | None
    acc: Estimate | None
    pass_k: Estimate | None
    d_acc: Difference | None  # against the sweep's reference
    d_pass: Difference | None


@dataclass
class KlRow:
    arm: str
    against: str
    d_acc: Difference | None
    d_pass: Difference | None
    kl_mean: Estimate | None


@dataclass
class Verdict:
    claim: str  # accuracy, pass@k, stability, forgetting
    metric: str  # what is compared
    arm: str
    against: str
    steps: int
    higher_better: bool
    diff: Difference | None

    @property
    def word(self) -> str:
        v = self.diff.verdict(self.higher_better) if self.diff else "not enough seeds"
        return {"gain": "reproduced", "loss": "not reproduced (the opposite)",
                "no measurable difference": "no measurable difference",
                "not enough seeds": "undecided (one seed)"}[v]


@dataclass
class LabTables:
    folder: str
    commit: str
    seeds: list[int]
    splits: list[str]
    ks: list[str]
    accuracy: dict[str, list[AccuracyRow]]  # split (and "average") -> rows, the base first
    diff_columns: list[str]
    differences: list[DiffRow]
    stability: list[StabilityRow]
    overfit: list[OverfitCurve]
    horizon: list[CurvePoint]
    diversity: list[DiversityRow]
    sweep_reference: str
    sweep: list[SweepRow]
    sweep_finding: str
    kl: list[KlRow]
    verdicts: list[Verdict]

    @property
    def kmax(self) -> str:
        return self.ks[-1]


# --- computing them -------------------------------------------------------------------------------------------
def load(folder: Path, label=None) -> dict[str, tuple[A.Arm, dict[int, Run]]]:
    """Every finished arm run; with `label` (lib.worlds.toy.strategy), the diversity arms' strategy entropy too."""
    lab = {}
    for name, seeds in finished_runs(folder).items():
        arm = arm_of(name, seeds)
        lab[name] = (arm, {s: load_arm_run(s, p) for s, p in seeds.items()})
    # one window (an RLoop diversity arm's iteration) cuts every diversity arm's rollouts alike
    window = next((r.window for arm, runs in lab.values() if arm.diversity and arm.is_rloop
                   for r in runs.values() if r.window), 0)
    for arm, runs in lab.values():
        if arm.diversity:
            for r in runs.values():
                r.similarity = [similarity(p) for p in r.rollouts]
                if label is not None and window:
                    r.strategy = [strategy_entropy(p, window, label) for p in r.rollouts]
    return lab


def tables(folder: Path, lab: dict[str, tuple[A.Arm, dict[int, Run]]], commit: str) -> LabTables:
    any_final = next((r.final for _, runs in lab.values() for r in runs.values() if r.final), None)
    if any_final is None:
        raise ValueError(f"{folder}: no finished arm with an evaluation to report")
    splits = list(any_final["benchmarks"])
    ks = sorted(ks_of(any_final["average"]), key=int)
    kmax = ks[-1]
    runs_of = {name: runs for name, (_, runs) in lab.items()}
    arms = {name: arm for name, (arm, _) in lab.items()}
    base = {}
    for runs in runs_of.values():
        for s, r in runs.items():
            if r.evals.get("base"):
                base.setdefault(s, r.evals["base"])
    seeds = sorted({s for runs in runs_of.values() for s in runs})

    accuracy = {}
    for split in splits + ["average"]:
        rows = [AccuracyRow("base", 0, len(base), estimate({s: metric_of(m, split, "acc") for s, m in base.items()}),
                            {k: estimate({s: metric_of(m, split, f"pass@{k}") for s, m in base.items()})
                             for k in ks})]
        for name, runs in runs_of.items():
            rows.append(AccuracyRow(name, max(r.steps for r in runs.values()), len(runs),
                                    estimate(final_values(runs, split, "acc")),
                                    {k: estimate(final_values(runs, split, f"pass@{k}")) for k in ks}))
        accuracy[split] = rows

    columns = [(s, "acc") for s in splits] + [(s, f"pass@{kmax}") for s in splits] + \
              [("average", "acc"), ("average", f"pass@{kmax}")]
    differences = [DiffRow(name, arms[name].against, {
        f"{s} {k}": difference(final_values(runs, s, k), final_values(runs_of[arms[name].against], s, k))
        for s, k in columns}) for name, runs in runs_of.items() if arms[name].against in runs_of]

    grad = {name: per_seed(runs, lambda r: max((peak_norm(x) for x in r.rows), default=None))
            for name, runs in runs_of.items()}
    base_probe = {s: v for s, m in base.items() if (v := metric_of(m, "probe", "acc")) is not None}
    stability = []
    for name, runs in runs_of.items():
        probe = final_values(runs, "probe", "acc") if "probe" in splits else {}
        stability.append(StabilityRow(name, estimate(grad[name]), max(grad[name].values(), default=None),
                                      estimate(probe), difference(probe, base_probe) if probe else None))

    overfit = [overfit_curve(name, runs, splits, kmax) for name, runs in runs_of.items()
               if arms[name].curve and not arms[name].is_rloop]
    horizon = [p for name, runs in runs_of.items() if arms[name].curve for p in curve(name, runs, splits, kmax)]

    diversity = []
    for name, runs in runs_of.items():
        if not arms[name].diversity:
            continue

        def parts(fn, runs=runs):  # mean over a seed's parts (iterations / the vanilla run), then over seeds
            return estimate(per_seed(runs, lambda r: mean_or_none(
                [v for sd, sim in zip(r.strategy or [None] * len(r.similarity), r.similarity)
                 if (v := fn(sd, sim)) is not None])))
        diversity.append(DiversityRow(
            name, parts(lambda sd, sim: sd and sd["within_step"]), parts(lambda sd, sim: sd and sd["across_steps"]),
            parts(lambda sd, sim: sd and sd["shares"].get("group", 0.0)),
            parts(lambda sd, sim: sim and sim["intra_step"]), parts(lambda sd, sim: sim and sim["inter_step"])))

    reference, sweep = sweep_rows(arms, runs_of, kmax)
    kl = [KlRow(name, arms[name].against,
                difference(final_values(runs, "average", "acc"), final_values(runs_of[arms[name].against],
                                                                              "average", "acc")),
                difference(final_values(runs, "average", f"pass@{kmax}"),
                           final_values(runs_of[arms[name].against], "average", f"pass@{kmax}")),
                estimate(per_seed(runs, lambda r: mean_or_none([x["kl"] for x in r.rows if x.get("kl") is not None]))))
          for name, runs in runs_of.items() if "--kl-coef" in arms[name].explore and arms[name].against in runs_of]

    verdicts = []
    for name, runs in runs_of.items():
        arm = arms[name]
        if not (arm.claims and arm.against in runs_of):
            continue
        ref = runs_of[arm.against]
        steps = max(r.steps for r in runs.values())
        items = [("accuracy", "average acc", True, "average", "acc"),
                 ("pass@k", f"average pass@{kmax}", True, "average", f"pass@{kmax}")]
        for claim, metric, hb, s, k in items:
            verdicts.append(Verdict(claim, metric, name, arm.against, steps, hb,
                                    difference(final_values(runs, s, k), final_values(ref, s, k))))
        verdicts.append(Verdict("stability", "largest pre-clip gradient norm", name, arm.against, steps, False,
                                difference(grad[name], grad[arm.against])))
        if "probe" in splits:
            verdicts.append(Verdict("forgetting", "probe acc", name, arm.against, steps, True,
                                    difference(final_values(runs, "probe", "acc"), final_values(ref, "probe", "acc"))))

    return LabTables(str(folder), commit, seeds, splits, ks, accuracy, [f"{s} {k}" for s, k in columns], differences,
                     stability, overfit, horizon, diversity, reference, sweep, sweep_finding(reference, sweep, kmax),
                     kl, verdicts)


def overfit_curve(name: str, runs: dict[int, Run], splits: list[str], kmax: str) -> OverfitCurve:
    """A vanilla run's train reward over the window of steps before each evaluation, against held-out pass@kmax."""
    steps = sorted({s for r in runs.values() for s, policy, _ in r.points if policy == "vanilla"})
    points = []
    window = steps[0] if steps else 0
    for st in steps:
        def window_reward(r, st=st):  # the mean train reward of the window's steps
            return mean_or_none([x["reward"] for x in r.rows
                                 if x.get("reward") is not None and st - window < x.get("step", 0) <= st])

        reward = per_seed(runs, window_reward)
        held = {s: estimate(per_seed(runs, lambda r, s=s, st=st: metric_of(r.evals.get(f"vanilla-{st}"), s,
                                                                           f"pass@{kmax}")))
                for s in splits}
        points.append(OverfitPoint(st, window, estimate(reward), held))
    change = {}
    if points:
        first, last = points[0], points[-1]
        values = lambda e: e.values if e else {}  # noqa: E731
        change["reward"] = difference(values(last.reward), values(first.reward))
        for s in splits:
            change[s] = difference(values(last.held_out[s]), values(first.held_out[s]))
    return OverfitCurve(name, points, change)


def curve(name: str, runs: dict[int, Run], splits: list[str], kmax: str) -> list[CurvePoint]:
    """Every evaluation of an arm's runs on the RL-steps axis, mean over seeds per (policy, step)."""
    keys = sorted({(s, policy) for r in runs.values() for s, policy, _ in r.points})
    out = []
    for step, policy in keys:
        ms = {seed: m for seed, r in runs.items() for s, p, m in r.points if (s, p) == (step, policy)}
        out.append(CurvePoint(name, policy, step,
                              {s: estimate({k: v for k, m in ms.items() if (v := metric_of(m, s, "acc")) is not None})
                               for s in splits + ["average"]},
                              {s: estimate({k: v for k, m in ms.items()
                                            if (v := metric_of(m, s, f"pass@{kmax}")) is not None})
                               for s in splits + ["average"]}))
    return out


def sweep_rows(arms: dict[str, A.Arm], runs_of: dict[str, dict[int, Run]], kmax: str) -> tuple[str, list[SweepRow]]:
    """The threshold sweep: its members, each against the member the others are measured against (rloop)."""
    members = [n for n in runs_of if arms[n].sweep]
    reference = next((arms[n].against for n in members if arms[n].against in members), "")
    if not reference or len(members) < 2:
        return "", []
    ref = runs_of[reference]
    rows = []
    for name in sorted(members, key=lambda n: arms[n].threshold):
        runs = runs_of[name]

        def filt(key, runs=runs):  # {seed: mean over iterations of filter_stats[key]}
            return estimate(per_seed(runs, lambda r: mean_or_none([v for f in r.filters
                                                                   if (v := f.get(key)) is not None])))
        acc, pk = final_values(runs, "average", "acc"), final_values(runs, "average", f"pass@{kmax}")
        other = name != reference
        rows.append(SweepRow(name, arms[name].threshold, filt("problems_selected"), filt("kept_trajectories"),
                             estimate(acc), estimate(pk),
                             difference(acc, final_values(ref, "average", "acc")) if other else None,
                             difference(pk, final_values(ref, "average", f"pass@{kmax}")) if other else None))
    return reference, rows


def sweep_finding(reference: str, rows: list[SweepRow], kmax: str) -> str:
    """The sweep in one line: which thresholds beat the reference on both average acc and pass@k."""
    if not rows:
        return ""
    ref = next(r for r in rows if r.arm == reference)
    groups: dict[str, list[str]] = {}
    for r in rows:
        if r.arm == reference or not (r.d_acc and r.d_pass):
            continue
        both = [r.d_acc, r.d_pass]
        if all(d.verdict() == "gain" for d in both):
            key = "measurably better on both"
        elif all(d.verdict() == "loss" for d in both):
            key = "measurably worse on both"
        elif all(d.mean > 0 for d in both):
            key = "higher on both, within noise"
        elif all(d.mean < 0 for d in both):
            key = "lower on both, within noise"
        else:
            key = "mixed"
        groups.setdefault(key, []).append(r.arm)
    order = ("measurably better on both", "higher on both, within noise", "mixed", "lower on both, within noise",
             "measurably worse on both")
    said = "; ".join(["no threshold measurably beats it on both"] * ("measurably better on both" not in groups)
                     + [f"{k}: {', '.join(groups[k])}" for k in order if k in groups])
    return (f"Threshold sweep, each against {reference} (THRESHOLD {ref.threshold:g}) on average acc and "
            f"pass@{kmax}, paired by seed: {said}.")
