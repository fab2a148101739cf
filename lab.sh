#!/usr/bin/env bash
# The RLoop lab through environment variables: each one is a flag of lab.py (`python lab.py --help`), which runs
# the arms of lib/lab/arms.py x seeds through loop.sh and then report.py.
#
#   bash lab.sh                                    # the quick preset: 8 arms x 3 seeds, runs/lab/report/summary.md
#   PRESET=horizon bash lab.sh                     # the claims at 60 and 300 RL steps: 5 arms x 5 seeds
#   SEEDS=0,1,2,3,4 ARMS=rloop,vanilla bash lab.sh
#   DRY_RUN=1 bash lab.sh                          # print the loop.sh commands, run nothing
#
# Variables (unset: the preset's or lab.py's default):
#   PRESET       quick | horizon | questions | questions-2   (--preset)
#   ARMS         comma list of arms                   (--arms)
#   SEEDS        a count (3 = seeds 0, 1, 2) or a comma list of seeds   (--seeds)
#   OUT          the lab folder                       (--out)
#   ITERS, RL_STEPS, OVERFIT_X, KL_COEF, SAVE_EVERY   the sizes (--iters, --rl-steps, --overfit-x, --kl-coef,
#                                                      --save-every)
#   JOBS         loop.sh runs side by side            (--jobs, default 2)
#   PYTHON       the python of lab.py and the stages  (--python, default python)
#   EXPLORE_ARGS, HARVEST_ARGS, FILTER_ARGS, CONSOLIDATE_ARGS, EVAL_ARGS   stage flags for every arm
#   DRY_RUN=1    print the commands only              (--dry-run)
# MODEL, DATA, BENCHMARKS, TRAIN_LAUNCH and LOGGER pass through to loop.sh. Arguments after lab.sh go to lab.py.
set -euo pipefail
cd "$(dirname "$0")"

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
PYTHON=${PYTHON:-python}
args=()
given=()
for pair in PRESET:--preset ARMS:--arms SEEDS:--seeds OUT:--out ITERS:--iters RL_STEPS:--rl-steps \
            OVERFIT_X:--overfit-x KL_COEF:--kl-coef SAVE_EVERY:--save-every JOBS:--jobs \
            EXPLORE_ARGS:--explore-args HARVEST_ARGS:--harvest-args FILTER_ARGS:--filter-args \
            CONSOLIDATE_ARGS:--consolidate-args EVAL_ARGS:--eval-args; do
  var=${pair%%:*} flag=${pair#*:}
  if [[ -n "${!var+x}" ]]; then
    args+=("$flag=${!var}")
    given+=("$var=${!var}")
  fi
done
if [[ "${DRY_RUN:-0}" != 0 ]]; then args+=(--dry-run); fi
# (common words such as OUT are easily left set by something else: say which ones this run takes)
echo "lab.sh: from the environment: ${given[*]:-(none)}" >&2
exec $PYTHON lab.py --python "$PYTHON" "${args[@]}" "$@"
