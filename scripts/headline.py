"""The README's headline figures, measured again by one command: it runs what they come from and prints the rows of the
README's Measured table (what, figure, command, commit) and the machine they ran on.

    python scripts/headline.py                 # ~15 min on 2 cores: the toy base build, the quickstart, bench.py
    python scripts/headline.py --only bench    # one of: toy, loop, bench

Each row's `what` is a key of HEADLINES; tests/test_docs.py holds the README's rows with these names to the command
named here. The other rows of the README's table come from their own, longer commands (the vLLM check, the scale
bench, the lab), each named in its row. Scratch and logs go to --out (runs/headline/); nothing else is touched: the toy
base is built into --out/toy/ (RLOOP_TOY_DIR), not into runs/toy/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# what (the README's first column) -> (the command that measures it, the bench.py row it reads, or None)
HEADLINES = {
    "toy base build": ("python -m lib.worlds.toy", None),
    "quickstart wall time (base cached)": ("bash loop.sh", None),
    "rollout tokens/s vs `model.generate`": ("python bench.py --quick --threads 1", "rollout tokens/s"),
    "RL step time vs TRL `GRPOTrainer`": ("python bench.py --quick --threads 1", "RL step wall time"),
    "SFT tokens/s vs TRL `SFTTrainer`": ("python bench.py --quick --threads 1", "SFT tokens/s"),
}
PARTS = {"toy": ["toy base build"], "loop": ["quickstart wall time (base cached)"],
         "bench": [k for k, (_, metric) in HEADLINES.items() if metric]}


def run(cmd: list[str], log: Path, env: dict) -> float:
    """Run one command to the end (its output to log); its wall time in seconds. A failure stops the script."""
    t = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"error: {' '.join(cmd)} exited {r.returncode} (log: {log})")
    return time.time() - t


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head.strip() + ("+dirty" if dirty else "")


def fmt_time(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {s % 60:.0f} s"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/headline", help="scratch and logs")
    p.add_argument("--only", default="toy,loop,bench", help="comma list of: toy, loop, bench")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    if bad := [x for x in parts if x not in PARTS]:
        sys.exit(f"error: --only: unknown part {bad[0]!r} (one of: {', '.join(PARTS)})")
    sha = commit()  # the code measured: the commit at the start
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RLOOP_TOY_DIR": str(out / "toy"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    figures: dict[str, str] = {}
    if "toy" in parts or "loop" in parts:
        if (out / "toy").exists():
            subprocess.run(["rm", "-rf", str(out / "toy")], check=True)
        s = run([sys.executable, "-m", "lib.worlds.toy"], out / "toy.log", env)
        figures["toy base build"] = fmt_time(s)
    if "loop" in parts:
        subprocess.run(["rm", "-rf", str(out / "loop")], check=True)
        s = run(["bash", "loop.sh"], out / "loop.log", {**env, "OUT": str(out / "loop"), "PYTHON": sys.executable})
        figures["quickstart wall time (base cached)"] = fmt_time(s)
    if "bench" in parts:
        run([sys.executable, "bench.py", "--quick", "--threads", "1", "--sections", "rollout,rl,sft", "--configs",
             "toy", "--out", str(out / "bench")], out / "bench.log", env)
        rows = json.loads((out / "bench" / "bench.json").read_text())["rows"]
        by_metric = {r["metric"]: r for r in rows if r["config"] == "toy"}
        for what in PARTS["bench"]:
            r = by_metric[HEADLINES[what][1]]
            figures[what] = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "peer not measured"
    if "toy" not in parts:
        figures.pop("toy base build", None)
    print(f"machine: {machine()}")
    print("| what | figure | command | commit |")
    print("|---|---|---|---|")
    for what in HEADLINES:
        if what in figures:
            print(f"| {what} | {figures[what]} | `{HEADLINES[what][0]}` | {sha} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
