"""filter.py — RLoop's active-learning filter: keep the successes of the problems the policy finds hard.

The rule is two functions, the first thing below: `is_success` (a trajectory -> keep it? its --success-metric
reaches --success-threshold; by default the verifier accepted it) and `is_selected` (a problem's successes and
trajectories -> keep its successes?). Per problem, over every trajectory of the harvest (all source steps pooled):
  success rate = successes / trajectories
  bucket       = never solved (rate 0) | hard (selected: 0 < rate < threshold) | medium (threshold <= rate < 1)
                 | always solved (rate 1)
The *selected* problems are the hard ones; a threshold >= 1 selects every problem with at least one success,
always-solved ones included (the paper's "no active learning" ablation). Never-solved problems can give
nothing: they have no success to imitate. The buckets describe difficulty only; with a threshold >= 1 the
medium bucket is empty and the always-solved one is selected too (stats: problems_selected).
Note the resolution: with n trajectories of a problem, one success is a rate of 1/n, so at threshold 0.1 a
problem needs more than 10 trajectories in the harvest to ever count as hard.

From each selected problem, in order:
  1. keep its successes,
  2. drop exact duplicate responses (the first occurrence in harvest order stays),
  3. cap at --max-per-problem with a deterministic, diverse subset: round-robin over the source steps in
     ascending order (one from step a, one from step b, ..., then a second from a, ...), each step's own
     trajectories in harvest order — so the kept set spans the RL run instead of crowding at one step.

    python filter.py --trajectories runs/loop/iter1/harvest --out runs/loop/iter1/filter --threshold 0.1
    python filter.py --trajectories runs/loop/iter1/harvest --out runs/loop/iter1/filter-reward \
        --success-metric reward --success-threshold 0.5

Writes DIR/rft.jsonl (the kept trajectories, the shared record, grouped by problem), DIR/args.json,
DIR/filter_stats.json and, last, DIR/done.json (docs/outputs.md). When nothing is kept: a one-line message, exit
code 3 (lib.run.cli.EXIT_NOTHING_KEPT, so loop.sh can branch on it), filter_stats.json still written (it says
why), and no rft.jsonl — a stale one from an earlier run in DIR is removed, so no later stage can train on it by
mistake. The harvest is streamed (lib/run/scan.py): one pass reads and checks every line, keeping the successes by
reference; a second reads back only the kept lines.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from lib.run import cli, scan
from lib.run.records import Trajectory, stage_file
from lib.run.scan import Success

# --- the rule, in two parts: what a success is, and which problems' successes are kept ---------------------------
SUCCESS_METRICS = {  # --success-metric: a trajectory's value, compared with --success-threshold
    "acc": lambda t: float(t.acc),  # the verifier's verdict as 0 / 1
    "reward": lambda t: t.reward,  # the record's reward: the verifier's score (rollouts: + the overlong penalty)
}


def is_success(t: Trajectory, metric: str = "acc", threshold: float = 1.0) -> bool:
    """A trajectory worth imitating: its metric (SUCCESS_METRICS) is at least the threshold; by default, the verifier
    accepted its answer. Evaluated once per trajectory as the harvest is read; the counts (`select`'s), the buckets
    and the kept records all follow from it."""
    return SUCCESS_METRICS[metric](t) >= threshold


def is_selected(successes: int, total: int, threshold: float) -> bool:
    """Which problems' successes are kept, from a problem's statistics: hard = 0 < success rate < threshold
    (strict; compared as a float: s / n == threshold exactly when they are equal reals); threshold >= 1: any
    problem with a success. To fork (another notion of "worth imitating", e.g. a band lo < rate < hi): change
    this function; the buckets, the stats and the kept set all follow from it (`select`, its one caller)."""
    return successes > 0 and (threshold >= 1 or successes / total < threshold)


BUCKETS = ("never_solved", "hard", "medium", "always_solved")


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--trajectories", required=True,
                   help="the harvest: harvest.py's --out folder (its harvest.jsonl) or any JSONL of trajectory records")
    g.add_argument("--out", required=True, help="output folder: rft.jsonl, filter_stats.json, args.json, done.json")
    g = p.add_argument_group("selection")
    g.add_argument("--threshold", type=float, default=0.1,
                   help="a problem is hard when 0 < success rate < threshold (paper: 0.1); >= 1 keeps every "
                        "problem with a success (the no-active-learning ablation)")
    g.add_argument("--success-metric", default="acc", choices=list(SUCCESS_METRICS),
                   help="what makes a trajectory a success (is_success): its metric >= --success-threshold. acc: the "
                        "verifier's verdict as 0 / 1; reward: the record's reward field (the verifier's score, e.g. a "
                        "partial-credit --reward; in explore.py's rollouts it includes the overlong penalty)")
    g.add_argument("--success-threshold", type=float, default=1.0,
                   help="a trajectory is a success when its --success-metric is >= this (acc: in (0, 1], any such "
                        "value means the verifier accepted it; reward: any finite number)")
    g.add_argument("--max-per-problem", type=int, default=0,
                   help="keep at most M trajectories per problem, spread across source steps (0 = no cap)")
    args = p.parse_args(argv)
    if not args.threshold > 0:
        raise cli.UserError(f"--threshold must be > 0, got {args.threshold}")
    if not math.isfinite(args.success_threshold):
        raise cli.UserError(f"--success-threshold must be a finite number, got {args.success_threshold}")
    if args.success_metric == "acc" and not 0 < args.success_threshold <= 1:
        raise cli.UserError(f"--success-threshold must be in (0, 1] with --success-metric acc (the verdict is 0 or "
                            f"1), got {args.success_threshold}")
    cli.check_positive(args, "max_per_problem", allow_zero=True)
    cli.check_out_dir(args.out)
    args.trajectories = str(stage_file(args.trajectories, "harvest.jsonl"))
    return args


def bucket(successes: int, total: int, selected: bool) -> str:
    """Difficulty bucket of a problem with `successes` out of `total` trajectories: never or always solved, and
    between them "hard" when the rule selects it (`selected`: is_selected's verdict), else "medium"."""
    if successes == 0:
        return "never_solved"
    if successes == total:
        return "always_solved"
    return "hard" if selected else "medium"


def spread_cap(trajs: list, cap: int) -> list:
    """At most `cap` trajectories, taken round-robin over source steps in ascending order (no step -> first).
    Deterministic: depends only on the input order. Returns them in the order they were picked."""
    if not cap or len(trajs) <= cap:
        return list(trajs)
    by_step: dict[int, list] = defaultdict(list)
    for t in trajs:
        by_step[-1 if t.step is None else t.step].append(t)
    queues = [by_step[s] for s in sorted(by_step)]
    picked, rnd = [], 0
    while len(picked) < cap:
        for q in queues:
            if rnd < len(q):
                picked.append(q[rnd])
                if len(picked) == cap:
                    break
        rnd += 1
    return picked


def select(counts: dict[str, list[int]], successes: Iterable[Success], threshold: float, max_per_problem: int = 0
           ) -> tuple[list[Success], dict]:
    """The filter itself, pure: from each problem's [successes, total] (`counts`, first-seen order) and the
    successes in harvest order (lib/run/scan.Scan gives both), the kept successes grouped by problem in first-seen
    order, and the stats. Only the selected problems' unique successes are held."""
    buckets = Counter({b: 0 for b in BUCKETS})
    selected: dict[str, list[Success]] = {}  # problem -> its unique successes, harvest order
    for pid, (s, n) in counts.items():
        chosen = is_selected(s, n, threshold)
        buckets[bucket(s, n, chosen)] += 1
        if chosen:
            selected[pid] = []
    seen: dict[str, set[bytes]] = defaultdict(set)
    candidates = deduplicated = 0
    for x in successes:
        if x.problem_id not in selected:
            continue
        candidates += 1
        if x.digest in seen[x.problem_id]:  # dedup before the cap, so the cap never spends a slot on a repeat
            deduplicated += 1
            continue
        seen[x.problem_id].add(x.digest)
        selected[x.problem_id].append(x)

    kept: list[Success] = []
    per_problem = []
    for unique in selected.values():
        chosen = spread_cap(unique, max_per_problem)
        kept += chosen
        per_problem.append(len(chosen))
    steps = Counter(-1 if x.step is None else x.step for x in kept)
    stats = {
        "threshold": threshold,
        "max_per_problem": max_per_problem,
        "problems_seen": len(counts),
        "buckets": dict(buckets),
        "problems_selected": len(selected),
        "trajectories_in": sum(n for _, n in counts.values()),
        "trajectories_per_problem": {"min": min((n for _, n in counts.values()), default=0),
                                     "max": max((n for _, n in counts.values()), default=0)},
        "candidates": candidates,  # successes of the selected problems
        "deduplicated": deduplicated,
        "capped": candidates - deduplicated - len(kept),
        "kept_trajectories": len(kept),
        "kept_per_problem": {"min": min(per_problem, default=0), "max": max(per_problem, default=0),
                             "mean": round(sum(per_problem) / len(per_problem), 3) if per_problem else 0.0},
        # JSON keys are strings; "none" = trajectories without a source step
        "kept_per_step": {("none" if s == -1 else str(s)): n for s, n in sorted(steps.items())},
    }
    return kept, stats


def main(argv=None):
    args = get_args(argv)
    # one streaming pass (a harvest can be far larger than memory): every line validated before anything is
    # written, the counts, and each success by reference to its line
    found = scan.scan(args.trajectories, lambda t: is_success(t, args.success_metric, args.success_threshold))
    kept, stats = select(found.counts, found.successes(), args.threshold, args.max_per_problem)
    stats.update(success_metric=args.success_metric, success_threshold=args.success_threshold,
                 input=str(args.trajectories))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli.clear_done(out)
    (out / "filter_stats.json").unlink(missing_ok=True)  # (it describes a finished run: not until this one is)
    cli.save_args(args, out)
    b = stats["buckets"]
    print(f"{stats['problems_seen']} problems: {b['never_solved']} never solved, {b['hard']} hard, "
          f"{b['medium']} medium, {b['always_solved']} always solved (threshold {args.threshold})")
    print(f"{stats['trajectories_in']} trajectories in -> {stats['candidates']} successes of "
          f"{stats['problems_selected']} selected problems -> -{stats['deduplicated']} duplicates "
          f"-> -{stats['capped']} over the cap -> {stats['kept_trajectories']} kept")
    picked = {x.problem_id for x in kept}
    once = sum(s == 1 < n and pid not in picked for pid, (s, n) in found.counts.items())
    if once:  # the rule's resolution: with n trajectories a success rate moves in steps of 1/n
        print(f"note: {once} problems succeeded once and are not selected: one success in n trajectories is a rate "
              f"of 1/n (more samples per problem: explore longer or harvest --n-samples K)")
    if not kept:
        rft = out / "rft.jsonl"
        if rft.exists():  # a stale set from an earlier run must not be trained on
            rft.unlink()
        cli.atomic_write_json(out / "filter_stats.json", stats)
        raise cli.UserError(f"{args.trajectories}: nothing kept — no problem with a success is selected at "
                            f"--threshold {args.threshold} ({b['never_solved']} never solved, {b['medium']} medium, "
                            f"{b['always_solved']} always solved); see {out / 'filter_stats.json'}",
                            code=cli.EXIT_NOTHING_KEPT)
    scan.write_lines(args.trajectories, (x.offset for x in kept), out / "rft.jsonl")
    cli.atomic_write_json(out / "filter_stats.json", stats)
    cli.mark_done(out, "filter", kept_trajectories=len(kept))  # written last
    print(f"wrote {out / 'rft.jsonl'} ({len(kept)} trajectories) and {out / 'filter_stats.json'}")


if __name__ == "__main__":
    cli.run_main(main)
