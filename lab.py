"""lab.py — the RLoop lab: the paper's claims and open questions, measured over seeds on the same base.

    python lab.py                                 # the quick preset: 8 arms x 3 seeds on the toy, ~1 h on 2 cores
    python lab.py --preset horizon                # the claims at 60 and 300 RL steps, 5 arms x 5 seeds
    python lab.py --arms rloop,vanilla --seeds 0,1,2,3,4
    python lab.py --preset questions              # the open questions (stability; then --preset questions-2)
    python lab.py --preset horizon --dry-run      # the loop.sh commands it would run, in order; writes nothing

Every arm (lib/lab/arms.py: the table of arms and presets) is one `loop.sh` run per seed, in OUT/<arm>/seed<k>/, with
the arm's loop.sh settings; JOBS runs go side by side, one torch thread each, every run's own output in its
lab_job.log. An arm that reuses another's finished work (same seed) starts when that arm has finished, as a copy
of what it reuses; when that arm failed or is not in this lab, it computes everything itself. A rerun skips the
finished runs (OUT/<arm>/seed<k>/.done/report) and resumes the others (loop.sh's own bookkeeping). A failed run
is reported with its log and the others go on; the exit code is 1 then. Last, `report.py OUT` writes
OUT/report/summary.md. MODEL, DATA, BENCHMARKS, TRAIN_LAUNCH and LOGGER pass through the environment to loop.sh.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lib.lab import arms as A
from lib.run import cli

ROOT = Path(__file__).resolve().parent
STAGE_ARGS = ("explore", "harvest", "filter", "consolidate", "eval")  # --X-args -> loop.sh's X_ARGS
# what the lab sets for every run (an inherited value of these would blur what an arm is)
SET_BY_LAB = ("VANILLA", "RLOOP", "THRESHOLD", "EVAL_ITERS", "ITERS", "RL_STEPS", "SAVE_EVERY", "OUT", "SEED", "JOBS",
              *(f"{s.upper()}_ARGS" for s in STAGE_ARGS))


class Help(cli.HelpFormatter):
    """Defaults shown, except the preset-given ones (None here)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    g = p.add_argument_group("what to run")
    g.add_argument("--preset", default="quick", choices=sorted(A.PRESETS),
                   help="; ".join(f"{x.name}: {x.about} ({len(x.arms)} arms x {x.seeds} seeds, {x.out})"
                                  for x in A.PRESETS.values()))
    g.add_argument("--arms", default=None, help="comma list of arms (default: the preset's); known: "
                                                + ", ".join(a.name for a in A.ARMS))
    g.add_argument("--seeds", default=None,
                   help="a count (3 = seeds 0, 1, 2) or a comma list of seeds (0,1,2,3,4); default: the preset's")
    g.add_argument("--out", default=None, help="the lab folder (default: the preset's)")
    g = p.add_argument_group("sizes (every arm's ITERS and RL_STEPS derive from them; lib/lab/arms.py)")
    d = A.Sizes()
    g.add_argument("--iters", type=int, default=d.iters, help="RLoop iterations")
    g.add_argument("--rl-steps", type=int, default=d.rl_steps, help="RL steps per iteration")
    g.add_argument("--overfit-x", type=int, default=d.overfit_x,
                   help="the horizon: overfit runs OVERFIT_X x ITERS x RL_STEPS steps, rloop-long OVERFIT_X x RL_STEPS "
                        "per iteration")
    g.add_argument("--kl-coef", type=float, default=d.kl_coef, help="the kl arm's explore.py --kl-coef")
    g.add_argument("--save-every", type=int, default=d.save_every,
                   help="checkpoint interval of every RL run (0: the largest of 5, 4, 3, 2, 1 dividing --rl-steps)")
    g = p.add_argument_group("how")
    g.add_argument("--jobs", type=int, default=2, help="loop.sh runs side by side (one torch thread each)")
    g.add_argument("--python", default=os.environ.get("PYTHON", sys.executable), help="the stages' python")
    g.add_argument("--dry-run", action="store_true",
                   help="print the loop.sh commands (variables and command) in the order they start, and exit")
    g = p.add_argument_group("stage flags, for every arm (loop.sh's EXPLORE_ARGS, ...)")
    for s in STAGE_ARGS:
        g.add_argument(f"--{s}-args", default=None, help=f"loop.sh's {s.upper()}_ARGS (default: loop.sh's)")
    args = p.parse_args(argv)
    preset = A.PRESETS[args.preset]
    args.arms = parse_arms(args.arms) if args.arms is not None else list(preset.arms)
    args.seeds = parse_seeds(args.seeds) if args.seeds is not None else list(range(preset.seeds))
    args.out = Path(args.out or preset.out)
    cli.check_positive(args, "iters", "rl_steps", "overfit_x", "jobs")
    cli.check_positive(args, "save_every", allow_zero=True)
    if args.save_every and args.rl_steps % args.save_every:
        raise cli.UserError(f"--save-every {args.save_every} must divide --rl-steps {args.rl_steps}")
    args.sizes = A.Sizes(args.iters, args.rl_steps, args.overfit_x, args.kl_coef, args.save_every)
    return args


def parse_arms(spec: str) -> list[str]:
    names = [x.strip() for x in spec.split(",") if x.strip()]
    for n in names:
        if n not in A.BY_NAME:
            raise cli.UserError(f"--arms: unknown arm '{n}' (known: {', '.join(a.name for a in A.ARMS)})")
    return [a.name for a in A.ARMS if a.name in names]  # (the table's order: sources before their users)


def parse_seeds(spec: str) -> list[int]:
    items = [x.strip() for x in spec.split(",")] if "," in spec else None
    for x in items or [spec.strip()]:
        if not x.isdigit():
            raise cli.UserError(f"--seeds: '{x}' is not a seed number")
    if not items and int(spec) == 0:
        raise cli.UserError("--seeds 0: a count of no seeds (seed 0 alone: --seeds 1)")
    return [int(x) for x in items] if items else list(range(int(spec)))


# --- jobs ---------------------------------------------------------------------------------------------------
@dataclass
class Job:
    arm: A.Arm
    seed: int
    folder: Path
    env: dict[str, str]
    state: str = "pending"  # pending, running, finished, skipped (finished before), failed
    log: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.arm.name} seed {self.seed}"

    def command(self) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " bash loop.sh"


def make_jobs(args) -> list[Job]:
    """Arms x seeds, in the table's order (the long chain first: the pool starts the first ready job)."""
    stage = {f"{s.upper()}_ARGS": getattr(args, f"{s}_args") for s in STAGE_ARGS}
    jobs = []
    for name in args.arms:
        arm = A.BY_NAME[name]
        for seed in args.seeds:
            folder = args.out / name / f"seed{seed}"
            env = A.loop_env(arm, args.sizes, stage["EXPLORE_ARGS"] or "", stage["FILTER_ARGS"] or "")
            env.update({k: v for k, v in stage.items() if v is not None and k not in ("EXPLORE_ARGS", "FILTER_ARGS")})
            env.update(OUT=str(folder), SEED=str(seed), JOBS="1", PYTHON=args.python,
                       OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                       MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS", "1"))
            jobs.append(Job(arm, seed, folder, env))
    return jobs


def sources(job: Job, jobs: dict[tuple[str, int], Job]) -> list[Job]:
    """The jobs of this lab whose finished work `job` reuses (same seed)."""
    return [jobs[(r.source, job.seed)] for r in job.arm.reuses if (r.source, job.seed) in jobs]


def ready(job: Job, jobs: dict[tuple[str, int], Job]) -> bool:
    return all(s.state in ("finished", "skipped", "failed") for s in sources(job, jobs))


def is_finished(folder: Path) -> bool:
    return (folder / ".done" / "report").exists()


def start_from_sources(job: Job, out: Path, sizes: A.Sizes) -> list[str]:
    """A fresh arm folder starts with what it reuses from its sources' folders (same seed): each part the source
    finished is copied (first source wins a destination), built aside and moved into place whole. Returns the
    lines saying what was copied."""
    if (job.folder / ".done").exists():
        return []  # (an unfinished run: loop.sh resumes it as it is)
    tmp = job.folder.with_name(f".{job.folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    said = []
    for reuse in job.arm.reuses:
        src = out / reuse.source / job.folder.name
        if not (src / ".done").is_dir():
            continue
        markers = sorted(p.name for p in (src / ".done").iterdir())
        for c in A.copies(job.arm, reuse, sizes):
            for marker in markers:
                hit = c.resolve(marker)
                if hit is None or not (src / hit[0]).exists() or (tmp / hit[1]).exists():
                    continue
                (tmp / hit[1]).parent.mkdir(parents=True, exist_ok=True)
                if (src / hit[0]).is_dir():
                    shutil.copytree(src / hit[0], tmp / hit[1], symlinks=True)
                else:
                    shutil.copy2(src / hit[0], tmp / hit[1])
                (tmp / ".done").mkdir(parents=True, exist_ok=True)
                if c.done:
                    (tmp / ".done" / marker).touch()
                said.append(f"{reuse.source}/{hit[0]}" + ("" if hit[0] == hit[1] else f" as {hit[1]}")
                            + ("" if c.done else " (resumed)"))
    if not said:
        return []
    shutil.rmtree(job.folder, ignore_errors=True)  # (no .done: at most the log of a run that failed at once)
    os.replace(tmp, job.folder)
    return said


class Lab:
    """The pool: up to `jobs` loop.sh runs at a time; whenever one ends, the first pending job whose sources are
    done (finished, skipped or failed) starts."""

    def __init__(self, args):
        self.args = args
        self.jobs = make_jobs(args)
        self.by_key = {(j.arm.name, j.seed): j for j in self.jobs}
        self.lock = threading.Lock()

    def say(self, line: str, err: bool = False) -> None:
        with self.lock:
            print(line, file=sys.stderr if err else sys.stdout, flush=True)
            with open(self.args.out / "lab.log", "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def run_one(self, job: Job) -> str:
        t0 = time.time()
        try:
            copied = start_from_sources(job, self.args.out, self.args.sizes)
        except OSError as e:
            self.say(f"!! {job.name}: copying its sources' work failed: {e}", err=True)
            return "failed"
        job.folder.mkdir(parents=True, exist_ok=True)
        self.say(f"+ {job.arm.name} seed {job.seed} -> {job.folder}"
                 + (f" (from {', '.join(copied)})" if copied else ""))
        env = {k: v for k, v in os.environ.items() if k not in SET_BY_LAB}
        env.update(job.env)
        log = job.folder / "lab_job.log"
        with open(log, "w", encoding="utf-8") as f:
            rc = subprocess.run(["bash", "loop.sh"], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                check=False).returncode
        if rc != 0:
            self.say(f"!! {job.name} failed (exit {rc}): see {log}", err=True)
            return "failed"
        self.say(f"-- {job.name}: finished in {time.time() - t0:.0f} s")
        return "finished"

    def run(self) -> list[Job]:
        """Every job to its end; returns the failed ones."""
        pending = []
        for j in self.jobs:
            if is_finished(j.folder):
                j.state = "skipped"
                self.say(f"-- {j.name}: done, skipped")
            else:
                pending.append(j)
        running = {}
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            while pending or running:
                while len(running) < self.args.jobs:
                    job = next((j for j in pending if ready(j, self.by_key)), None)
                    if job is None:
                        break
                    pending.remove(job)
                    job.state = "running"
                    running[pool.submit(self.run_one, job)] = job
                if not running:  # (the table lists sources first: this cannot happen)
                    raise RuntimeError(f"no job can start: {', '.join(j.name for j in pending)}")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    running.pop(fut).state = fut.result()
        return [j for j in self.jobs if j.state == "failed"]


def dry_run(lab: Lab) -> None:
    """The commands in the pool's order with one lane (with more, a job may start before an earlier one that
    waits for its source), each after a comment saying what it waits for and copies."""
    a = lab.args
    print(f"# RLoop lab, preset {a.preset}: arms {','.join(a.arms)}; seeds {','.join(map(str, a.seeds))}; "
          f"OUT={a.out}; {a.jobs} side by side")
    for j in lab.jobs:
        if is_finished(j.folder):
            print(f"# {j.name}: finished, skipped")
            continue
        after = [s.name for s in sources(j, lab.by_key)]
        parts = [f"{r.source}: {', '.join(r.parts)}" for r in j.arm.reuses]
        print(f"# {j.name}" + (f", after {' and '.join(after)}" if after else "")
              + (f"; starts from {'; else '.join(parts)}" if parts else ""))
        print(j.command())
    print(f"{shlex.quote(a.python)} report.py {shlex.quote(str(a.out))}")


def git_commit() -> str:
    """The commit the lab runs on (+dirty: tracked files differ from it), for the report."""
    try:
        run = lambda *c: subprocess.run(["git", *c], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
        commit = run("rev-parse", "--short", "HEAD").stdout.strip()
        if not commit:
            return "unknown"
        return commit + ("+dirty" if run("diff", "--quiet", "HEAD", "--").returncode else "")
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    A.check()
    args = get_args(argv)
    lab = Lab(args)
    if args.dry_run:
        dry_run(lab)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    cli.atomic_write_text(args.out / "lab_commit", git_commit() + "\n")
    t0 = time.time()
    s = args.sizes
    lab.say(f"== RLoop lab {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}: preset {args.preset}; arms "
            f"{' '.join(args.arms)}; seeds {' '.join(map(str, args.seeds))}; ITERS={s.iters} RL_STEPS={s.rl_steps} "
            f"OVERFIT_X={s.overfit_x}; {args.jobs} jobs; OUT={args.out}")
    failed = lab.run()
    rep = subprocess.run([args.python, "report.py", str(args.out)], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    print("\n".join((rep.stdout + rep.stderr).strip().splitlines()[-3:]))
    elapsed = round(time.time() - t0)
    lab.say(f"== lab done in {elapsed} s: {args.out / 'report' / 'summary.md'}"
            + (f"; FAILED: {', '.join(j.name for j in failed)}" if failed else ""))
    cli.atomic_write_json(args.out / "lab_time.json", {
        "seconds": elapsed, "preset": args.preset, "arms": " ".join(args.arms),
        "seeds": " ".join(map(str, args.seeds)), "iters": s.iters, "rl_steps": s.rl_steps,
        "overfit_x": s.overfit_x, "jobs": args.jobs, "failed": [j.name for j in failed]})
    return 1 if failed or rep.returncode else 0


if __name__ == "__main__":
    cli.run_main(main)
