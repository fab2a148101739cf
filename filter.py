"""filter.py — RLoop's active-learning filter: keep the successes of the problems the policy finds hard.

Per problem, over every trajectory of the harvest (all source steps pooled):
  success rate = correct trajectories / all trajectories
  bucket       = never solved (rate 0) | hard (0 < rate < threshold) | medium (threshold <= rate < 1)
                 | always solved (rate 1)
The *selected* problems are the hard ones; a threshold >= 1 selects every problem with at least one success,
always-solved ones included (the paper's "no active learning" ablation). Never-solved problems can give
nothing: they have no success to imitate. The buckets describe difficulty only; with a threshold >= 1 the
medium bucket is empty and the always-solved one is selected too (stats: problems_selected).
Note the resolution: with n trajectories of a problem, one success is a rate of 1/n, so at threshold 0.1 a
problem needs more than 10 trajectories in the harvest to ever count as hard.

From each selected problem, in order:
  1. keep its correct trajectories,
  2. drop exact duplicate responses (the first occurrence in harvest order stays),
  3. cap at --max-per-problem with a deterministic, diverse subset: round-robin over the source steps in
     ascending order (one from step a, one from step b, ..., then a second from a, ...), each step's own
     trajectories in harvest order — so the kept set spans the RL run instead of crowding at one step.

    python filter.py --trajectories runs/loop/iter1/harvest --out runs/loop/iter1/filter --threshold 0.1

Writes DIR/rft.jsonl (the kept trajectories, the shared record, grouped by problem), DIR/args.json,
DIR/filter_stats.json and, last, DIR/done.json (docs/outputs.md). When nothing is kept: a one-line message, exit code 3 (lib.run.cli.EXIT_NOTHING_KEPT, so
loop.sh can branch on it), filter_stats.json still written (it says why), and no rft.jsonl — a stale one from
an earlier run in DIR is removed, so no later stage can train on it by mistake.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lib.run import cli
from lib.run.records import Trajectory, read_jsonl, stage_file, trajectory_from_dict

BUCKETS = ("never_solved", "hard", "medium", "always_solved")


def is_selected(correct: int, total: int, threshold: float) -> bool:
    """The selection rule, the one place it lives: hard = 0 < success rate < threshold (strict; compared as a
    float: c / n == threshold exactly when they are equal reals); threshold >= 1: any problem with a success.
    To fork (another notion of "worth imitating", e.g. a band lo < rate < hi): change this function; the
    buckets (`bucket`), the stats and the kept set all follow from it."""
    return correct > 0 and (threshold >= 1 or correct / total < threshold)


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--trajectories", "--in", dest="trajectories", required=True,
                   help="the harvest: harvest.py's --out folder (its harvest.jsonl) or any JSONL of trajectory records")
    g.add_argument("--out", required=True, help="output folder: rft.jsonl, filter_stats.json, args.json, done.json")
    g = p.add_argument_group("selection")
    g.add_argument("--threshold", type=float, default=0.1,
                   help="a problem is hard when 0 < success rate < threshold (paper: 0.1); >= 1 keeps every "
                        "problem with a success (the no-active-learning ablation)")
    g.add_argument("--max-per-problem", type=int, default=0,
                   help="keep at most M trajectories per problem, spread across source steps (0 = no cap)")
    args = p.parse_args(argv)
    if not args.threshold > 0:
        raise cli.UserError(f"--threshold must be > 0, got {args.threshold}")
    cli.check_positive(args, "max_per_problem", allow_zero=True)
    cli.check_out_dir(args.out)
    args.trajectories = str(stage_file(args.trajectories, "harvest.jsonl"))
    return args


def bucket(correct: int, total: int, threshold: float) -> str:
    """Difficulty bucket of a problem with `correct` successes out of `total` trajectories, derived from the
    selection rule: between never and always solved, a selected problem is "hard", the rest "medium"."""
    if correct == 0:
        return "never_solved"
    if correct == total:
        return "always_solved"
    return "hard" if is_selected(correct, total, threshold) else "medium"


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


def iter_trajectories(path) -> Iterator[Trajectory]:
    """Stream a JSONL of trajectories, validating each line (errors name file:line:field)."""
    for ln, d in read_jsonl(path):
        yield trajectory_from_dict(d, f"{path}:{ln}")


def count(trajectories: Iterable[Trajectory]) -> dict[str, list[int]]:
    """problem_id -> [correct, total], in first-seen order."""
    counts: dict[str, list[int]] = {}
    for t in trajectories:
        c = counts.setdefault(t.problem_id, [0, 0])
        c[0] += int(t.acc)
        c[1] += 1
    return counts


def select(trajectories: list[Trajectory], threshold: float, max_per_problem: int = 0
           ) -> tuple[list[Trajectory], dict]:
    """The filter itself, pure: (kept trajectories grouped by problem in first-seen order, stats)."""
    return select_counted(count(trajectories), (t for t in trajectories if t.acc), threshold, max_per_problem)


def select_counted(counts: dict[str, list[int]], correct: Iterable, threshold: float, max_per_problem: int = 0,
                   key: Callable = lambda t: t.response) -> tuple[list, dict]:
    """`select` in two passes, so a harvest of any size streams: `counts` from a first pass (`count`), then the
    correct trajectories (a second pass), or stand-ins for them: anything with .problem_id and .step, told apart
    by key(item) (the response, or its digest). Only the selected problems' unique successes are held."""
    buckets = Counter({b: 0 for b in BUCKETS})
    selected: dict[str, list] = {}  # problem -> its unique successes, harvest order
    for pid, (c, n) in counts.items():
        buckets[bucket(c, n, threshold)] += 1
        if is_selected(c, n, threshold):
            selected[pid] = []
    seen: dict[str, set] = defaultdict(set)
    candidates = deduplicated = 0
    for t in correct:
        if t.problem_id not in selected:
            continue
        candidates += 1
        k = key(t)
        if k in seen[t.problem_id]:  # dedup before the cap, so the cap never spends a slot on a repeat
            deduplicated += 1
            continue
        seen[t.problem_id].add(k)
        selected[t.problem_id].append(t)

    kept: list = []
    per_problem = []
    for unique in selected.values():
        chosen = spread_cap(unique, max_per_problem)
        kept += chosen
        per_problem.append(len(chosen))
    steps = Counter(-1 if t.step is None else t.step for t in kept)
    stats = {
        "threshold": threshold,
        "max_per_problem": max_per_problem,
        "problems_seen": len(counts),
        "buckets": dict(buckets),
        "problems_selected": len(selected),
        "trajectories_in": sum(n for _, n in counts.values()),
        "trajectories_per_problem": {"min": min((n for _, n in counts.values()), default=0),
                                     "max": max((n for _, n in counts.values()), default=0)},
        "candidates": candidates,  # correct trajectories of the selected problems
        "deduplicated": deduplicated,
        "capped": candidates - deduplicated - len(kept),
        "kept_trajectories": len(kept),
        "kept_per_problem": {"min": min(per_problem, default=0), "max": max(per_problem, default=0),
                             "mean": round(sum(per_problem) / len(per_problem), 3) if per_problem else 0.0},
        # JSON keys are strings; "none" = trajectories without a source step
        "kept_per_step": {("none" if s == -1 else str(s)): n for s, n in sorted(steps.items())},
    }
    return kept, stats


# --- a harvest far larger than memory: successes are held as references to their lines -----------------------
CORRECT = re.compile(rb'"acc"\s*:\s*true')  # what every line of a successful trajectory holds (a cheap pre-check)


@dataclass(frozen=True)
class Ref:
    """A correct trajectory of a selected problem, by the byte offset of its line in the harvest."""
    problem_id: str
    step: int | None
    offset: int
    digest: bytes  # of its response (dedup)


def correct_refs(path, selected: set[str]) -> Iterator[Ref]:
    """The second pass: a Ref per correct trajectory of the selected problems (the first pass validated every
    line), in harvest order. A line without `"acc": true` is not parsed."""
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            at, offset = offset, offset + len(raw)
            if not CORRECT.search(raw):
                continue
            d = json.loads(raw.decode("utf-8-sig" if at == 0 else "utf-8"))
            pid = str(d["problem_id"])
            if d["acc"] is True and pid in selected:
                yield Ref(pid, d.get("step"), at, hashlib.blake2b(d["response"].encode(), digest_size=16).digest())


def write_kept(path, refs: list[Ref], out: Path) -> None:
    """The third pass: the referenced lines, in the order given, as the shared record (written atomically)."""
    with open(path, "rb") as f, cli.atomic_open(out) as w:
        for r in refs:
            f.seek(r.offset)
            raw = f.readline()
            d = json.loads(raw.decode("utf-8-sig" if r.offset == 0 else "utf-8"))
            w.write(trajectory_from_dict(d, f"{path}:byte {r.offset}").to_json() + "\n")


def main(argv=None):
    args = get_args(argv)
    # streaming passes: a harvest can be far larger than memory (every rollout of a long RL run): counts, then
    # the selected problems' successes as references to their lines, then the kept lines
    counts = count(iter_trajectories(args.trajectories))  # validates every line before anything is written
    selected = {pid for pid, (c, n) in counts.items() if is_selected(c, n, args.threshold)}
    kept, stats = select_counted(counts, correct_refs(args.trajectories, selected), args.threshold, args.max_per_problem,
                                 key=lambda r: r.digest)
    stats["input"] = str(args.trajectories)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli.clear_done(out)
    (out / "filter_stats.json").unlink(missing_ok=True)  # (it describes a finished run: not until this one is)
    cli.save_args(args, out)
    b = stats["buckets"]
    print(f"{stats['problems_seen']} problems: {b['never_solved']} never solved, {b['hard']} hard, "
          f"{b['medium']} medium, {b['always_solved']} always solved (threshold {args.threshold})")
    print(f"{stats['trajectories_in']} trajectories in -> {stats['candidates']} correct of "
          f"{stats['problems_selected']} selected problems -> -{stats['deduplicated']} duplicates "
          f"-> -{stats['capped']} over the cap -> {stats['kept_trajectories']} kept")
    few = sum(n * args.threshold <= 1 for _, n in counts.values())
    if args.threshold < 1 and few:  # one success in n already reaches the threshold: "hard" is out of reach
        print(f"note: {few} problems have <= {1 / args.threshold:g} trajectories; at threshold {args.threshold} "
              f"they can never be hard (more samples per problem: explore longer or harvest --n-samples K)")
    if not kept:
        rft = out / "rft.jsonl"
        if rft.exists():  # a stale set from an earlier run must not be trained on
            rft.unlink()
        cli.atomic_write_json(out / "filter_stats.json", stats)
        want = "a success" if args.threshold >= 1 else f"0 < success rate < {args.threshold}"
        raise cli.UserError(f"{args.trajectories}: nothing kept — no problem has {want} "
                            f"({b['never_solved']} never solved, {b['medium']} medium, "
                            f"{b['always_solved']} always solved); see {out / 'filter_stats.json'}",
                            code=cli.EXIT_NOTHING_KEPT)
    write_kept(args.trajectories, kept, out / "rft.jsonl")
    cli.atomic_write_json(out / "filter_stats.json", stats)
    cli.mark_done(out, "filter", kept_trajectories=len(kept))  # written last
    print(f"wrote {out / 'rft.jsonl'} ({len(kept)} trajectories) and {out / 'filter_stats.json'}")


if __name__ == "__main__":
    cli.run_main(main)
