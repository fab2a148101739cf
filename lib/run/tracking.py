"""Live experiment tracking: every metrics.jsonl row mirrored to TensorBoard and / or Weights & Biases.

metrics.jsonl stays the record (report.py, resume and the tests read it); a tracker only shows the same
numbers while a run is going. `--logger tensorboard,wandb` picks any of the two; each is an optional package
imported only when asked for, and a missing one fails at argument parsing with one line naming what to install.

  tensorboard   OUT/tensorboard/ (torch.utils.tensorboard): `tensorboard --logdir runs/` shows every stage
  wandb         one run per stage (project: $WANDB_PROJECT, default "rloop"; $WANDB_MODE=offline works), its
                files under OUT/wandb/; a resumed stage continues the same wandb run (id in that folder). Under
                loop.sh the run is named after the stage (iter1-explore, vanilla-explore, iter2-consolidate, ...)
                and grouped with the loop run's other stages: loop.sh exports RLOOP_STAGE per stage and
                RLOOP_RUN_GROUP once (the folder's name + an id kept in LOOP_OUT/.run_group, so a rerun joins
                its group). A stage run by hand: named after its OUT, in no group.

Scalars are named STAGE/KEY (explore/reward, consolidate/loss, explore/val/test/mean_acc); non-numeric values
are not logged. Tables of sampled responses go to TensorBoard as a markdown text panel, to wandb as a Table.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

from lib.run.cli import UserError

LOGGERS = ("tensorboard", "wandb")
DIRS = ("tensorboard", "wandb")  # what trackers write inside a stage's OUT (consolidate.py keeps them)
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}
STAGE_ENV, GROUP_ENV = "RLOOP_STAGE", "RLOOP_RUN_GROUP"  # what loop.sh exports (see the docstring)


def parse_loggers(spec: str | None) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; '' / 'none' -> []. Unknown names and missing
    packages fail here, in one line, before any work."""
    names = [x.strip() for x in (spec or "").split(",") if x.strip() and x.strip() != "none"]
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"--logger: unknown logger '{name}' (choose from {', '.join(LOGGERS)}, comma-separated)")
        if importlib.util.find_spec(name) is None:
            raise UserError(f"--logger {name}: the {name} package is not installed: {INSTALL[name]}")
    return list(dict.fromkeys(names))


def numeric(row: dict) -> dict[str, float]:
    """The row's loggable numbers: ints and finite floats (bools as 0 / 1); None, NaN and text are left out."""
    out = {}
    for k, v in row.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


def markdown_table(columns: list[str], rows: list[list], max_chars: int = 400) -> str:
    """A markdown table TensorBoard's text panel renders; cells cut to max_chars, '|' and newlines escaped."""
    def cell(v) -> str:
        s = str(v)
        if len(s) > max_chars:
            s = s[:max_chars] + "…"
        return s.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


class Tracker:
    """The chosen loggers of one stage. Only rank 0 makes one (it alone writes); `Tracker([], ...)` is a
    no-op, so call sites need no branches."""

    def __init__(self, names: list[str], out_dir: str | Path, stage: str, config: dict | None = None,
                 resume_step: int = 0):
        self.stage, self.tb, self.wandb_run = stage, None, None
        out = Path(out_dir)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the older events at steps >= it: a resumed run drops what a killed
            # run logged after its checkpoint (as metrics.jsonl is truncated), a fresh start all of an old run's
            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step else 0)
        if "wandb" in names:
            import wandb

            wdir = out / "wandb"
            wdir.mkdir(parents=True, exist_ok=True)
            id_file = wdir / "rloop-run-id"
            run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
            id_file.write_text(run_id + "\n")
            self.wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rloop"), id=run_id,
                                        resume="allow", dir=str(out), job_type=stage, config=_plain(config or {}),
                                        **wandb_names(out))

    def log(self, row: dict, step: int) -> None:
        """One metrics row at `step`, its numbers as STAGE/KEY scalars."""
        nums = {f"{self.stage}/{k}": v for k, v in numeric(row).items() if k != "step"}
        if self.tb is not None:
            for k, v in nums.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()  # live: the event file is readable while the run goes on
        if self.wandb_run is not None:
            self.wandb_run.log(nums, step=step)

    def table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        """A small table (e.g. sampled responses) at `step`, as STAGE/NAME."""
        key = f"{self.stage}/{name}"
        if self.tb is not None:
            self.tb.add_text(key, markdown_table(columns, rows), step)
            self.tb.flush()
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Table(columns=columns, data=[[str(v) for v in r] for r in rows])},
                               step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def wandb_names(out: str | Path, env=None) -> dict:
    """A stage's wandb run name and group: loop.sh's stage name (RLOOP_STAGE) in the loop run's group
    (RLOOP_RUN_GROUP); without them (a stage run by hand) the run is named after its OUT, in no group."""
    env = os.environ if env is None else env
    return {"name": env.get(STAGE_ENV) or str(out), "group": env.get(GROUP_ENV) or None}


def _plain(config: dict) -> dict:
    """The run's arguments as wandb config: JSON-friendly values only."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for k, v in config.items()}


SAMPLE_COLUMNS = ["problem_id", "prompt", "response", "ground_truth", "pred", "reward", "acc"]


def sample_rows(rollouts: list[dict], k: int = 4) -> list[list]:
    """The first k rollout records of a step as table rows (one response per distinct problem first, so the
    table shows k problems, not k answers to one)."""
    picked, seen = [], set()
    for r in rollouts:
        if r["problem_id"] not in seen and len(picked) < k:
            seen.add(r["problem_id"])
            picked.append(r)
    taken = {id(r) for r in picked}
    picked += [r for r in rollouts if id(r) not in taken][:k - len(picked)]
    return [[r.get(c, "") for c in SAMPLE_COLUMNS] for r in picked]
