"""scale_bench.py — report.py, harvest.py and filter.py on an RL iteration's rollouts at full scale: the wall time
and peak memory of each, against 10 minutes and 2 GB.

At full scale one RL step writes 1,536-15,360 prompts x 16 responses of ~2k tokens, and an iteration of 200 steps
millions of records. This writes such a file (lib/worlds/synthetic.write_rollouts; by default 2,000,000 records of
~10 KB, ~21 GB: 4,000 problems, ~10% correct, token ids on the correct ones) as iteration 1 of a loop.sh run folder,
then runs each stage in its own process, as loop.sh does:
  report   python report.py DIR/run                                 (its diversity pass reads every rollout)
  harvest  python harvest.py --run-dir DIR/run/iter1/explore --out DIR/harvest    (default mode: the logged rollouts)
  filter   python filter.py --trajectories DIR/harvest --out DIR/filter --threshold 0.1
and prints each one's wall time and peak resident memory (its own high-water mark, from os.wait4) against the
bounds, as ratios: PASS when both are <= 1.

    python scripts/scale_bench.py --out /work/scale-bench            # full size: ~45 GB of disk while it runs
    python scripts/scale_bench.py --out /tmp/scale --records 2000    # seconds
Writes DIR/scale.json and DIR/logs/; the generated files are removed at the end unless --keep (a rerun with the
same settings reuses kept ones).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `lib` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.run import cli  # noqa: E402
from lib.worlds.synthetic import write_rollouts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BOUND_S, BOUND_GB = 600.0, 2.0


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    p.add_argument("--out", required=True, help="work folder (the generated run, the stages' outputs, scale.json)")
    p.add_argument("--records", type=int, default=2_000_000, help="rollout records")
    p.add_argument("--problems", type=int, default=4000, help="distinct problems")
    p.add_argument("--rl-steps", type=int, default=200, help="RL steps the records are spread over")
    p.add_argument("--response-tokens", type=int, default=2000, help="response length (about 4 characters a token)")
    p.add_argument("--correct", type=float, default=0.1, help="mean success rate")
    p.add_argument("--threshold", type=float, default=0.1, help="filter.py --threshold")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated file")
    p.add_argument("--keep", action="store_true", help="keep the generated rollouts and the stages' outputs")
    args = p.parse_args(argv)
    cli.check_positive(args, "records", "problems", "rl_steps", "response_tokens")
    if not 0 < args.correct < 1:
        raise cli.UserError(f"--correct must be in (0, 1), got {args.correct}")
    cli.check_out_dir(args.out)
    return args


def measure(name: str, cmd: list[str], logs: Path) -> dict:
    """Run one stage to its end; its wall time and its own peak RSS (ru_maxrss of the waited child, KiB)."""
    log = logs / f"{name}.log"
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = rc = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if rc != 0:
        raise cli.UserError(f"{name} failed (exit {rc}): see {log}")
    peak = usage.ru_maxrss * 1024 / 1e9
    return {"stage": name, "command": " ".join(cmd[1:]), "seconds": round(seconds, 1), "peak_gb": round(peak, 3),
            "time_ratio": round(seconds / BOUND_S, 3), "memory_ratio": round(peak / BOUND_GB, 3),
            "status": "PASS" if seconds <= BOUND_S and peak <= BOUND_GB else "MISS"}


def generate(args, explore: Path) -> dict:
    """The run folder's iteration 1: rollouts.jsonl and a metrics row per step (reused when kept with the same
    settings)."""
    key = {k: getattr(args, k) for k in ("records", "problems", "rl_steps", "response_tokens", "correct", "seed")}
    made = explore / "generated.json"
    if (explore / "rollouts.jsonl").is_file() and cli.read_json(made) and cli.read_json(made)["settings"] == key:
        return cli.read_json(made)
    explore.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    info = write_rollouts(explore / "rollouts.jsonl", args.records, args.problems, steps=args.rl_steps,
                          response_tokens=args.response_tokens, correct=args.correct, seed=args.seed)
    info["seconds"] = round(time.perf_counter() - t, 1)
    cli.atomic_write_text(explore / "metrics.jsonl", "".join(
        json.dumps({"step": s, "reward": -0.8, "grad_norm": 0.2, "grad_norm_max": 0.3, "entropy": 0.5,
                    "resp_len_mean": args.response_tokens, "groups_kept": 0.5, "capped": 0}) + "\n"
        for s in range(1, info["steps"] + 1)))
    info["settings"] = key
    cli.atomic_write_json(made, info)
    return info


def main(argv=None) -> int:
    args = get_args(argv)
    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run, explore = out / "run", out / "run" / "iter1" / "explore"
    info = generate(args, explore)
    print(f"rollouts: {info['records']:,} records over {info['steps']} steps ({info['prompts_per_step']} prompts x "
          f"16 a step), {info['bytes'] / 1e9:.2f} GB: {explore / 'rollouts.jsonl'} (written in {info['seconds']} s)",
          flush=True)
    py = sys.executable
    rows = [measure("report", [py, "report.py", str(run)], logs)]
    print(f"  report done in {rows[-1]['seconds']} s", flush=True)
    harvest = out / "harvest"
    rows.append(measure("harvest", [py, "harvest.py", "--run-dir", str(explore), "--out", str(harvest)], logs))
    print(f"  harvest done in {rows[-1]['seconds']} s", flush=True)
    rows.append(measure("filter", [py, "filter.py", "--trajectories", str(harvest), "--out", str(out / "filter"),
                                   "--threshold", str(args.threshold)], logs))
    stats = json.loads((out / "filter" / "filter_stats.json").read_text(encoding="utf-8"))
    print()
    print(f"{'stage':<8} {'wall time':>10} {'/ 600 s':>8} {'peak RSS':>10} {'/ 2 GB':>7}  result")
    for r in rows:
        print(f"{r['stage']:<8} {r['seconds']:>8.1f} s {r['time_ratio']:>8.3f} {r['peak_gb']:>7.3f} GB "
              f"{r['memory_ratio']:>7.3f}  {r['status']}")
    print(f"(filter kept {stats['kept_trajectories']:,} of {stats['trajectories_in']:,} trajectories, "
          f"{stats['problems_selected']:,} problems selected)")
    result = {"command": " ".join(["python scripts/scale_bench.py"] + (sys.argv[1:] if argv is None else list(argv))),
              "rollouts": info, "rows": rows,
              "filter": {k: stats[k] for k in ("kept_trajectories", "problems_selected")},
              "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "python": platform.python_version()}}
    cli.atomic_write_json(out / "scale.json", result)
    print(f"wrote {out / 'scale.json'}")
    if not args.keep:
        for p in (run, harvest, out / "filter"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return 0 if all(r["status"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    cli.run_main(main)
