"""report.py — what a run or a lab shows.

    python report.py RUN_DIR     (loop.sh's OUT, default runs/loop): RLoop against vanilla RL at equal RL steps;
                                 RUN_DIR/report/summary.md, report.json and plots (lib/lab/report_run.py)
    python report.py LAB_DIR     (lab.py's OUT, e.g. runs/lab: <arm>/seed<k>/ run folders): the verdicts on the
                                 paper's claims, every arm over seeds with 95% intervals, the overfitting horizon,
                                 the threshold sweep; LAB_DIR/report/summary.md, lab.json and plots
                                 (lib/lab/tables.py computes, lib/lab/report_lab.py renders)
"""
from __future__ import annotations

from pathlib import Path

from lib.lab import report_lab
from lib.lab.report_run import end_to_end, load_run, val_curves, write_report  # noqa: F401 (the run report's API)
from lib.lab.tables import is_lab
from lib.run import cli


def main(argv=None):
    p = cli.make_parser(__doc__)
    p.add_argument("run", nargs="?", default="runs/loop", help="loop.sh's OUT folder, or lab.py's (the lab report)")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        raise cli.UserError(f"{run}: no such run folder")
    text = report_lab.write_report(run) if is_lab(run) else write_report(run)
    print(text)
    print(f"wrote {run / 'report' / 'summary.md'}")


if __name__ == "__main__":
    cli.run_main(main)
