#!/usr/bin/env bash
# The RLoop lab: the paper's claims and open questions, measured over seeds on the same base.
#
#   bash lab.sh                       # the toy, SEEDS=3 (seeds 0, 1, 2), every arm, then OUT/report/summary.md
#   SEEDS=0,1,2,3,4 ARMS=rloop,vanilla bash lab.sh
#
# Arms (each one loop.sh run per seed, under OUT/<arm>/seed<k>/, all from the same MODEL):
#   rloop      the default loop (ITERS x RL_STEPS RL steps, THRESHOLD=0.1)
#   vanilla    DAPO for the same ITERS x RL_STEPS steps, evaluated every RL_STEPS
#   overfit    vanilla run OVERFIT_X (5) times longer, evaluated every RL_STEPS: the paper's "RL overfitting"
#              (train reward against held-out pass@k over steps)
#   no-al      RLoop without active learning (THRESHOLD=1: every problem with a success is kept)
#   thr-0.05, thr-0.2, thr-0.5   the hard-problem threshold (the paper's open question)
#   kl         vanilla with a KL penalty to the initial policy (explore.py --kl-coef KL_COEF)
# ITERS, RL_STEPS, SAVE_EVERY, MODEL, DATA, EVAL and the *_ARGS pass through to loop.sh.
#
# A rerun skips every finished arm (OUT/<arm>/seed<k>/.done/report) and resumes unfinished ones (loop.sh's
# own stage bookkeeping). Up to JOBS runs go side by side, each with one torch thread.
#
# Shared work, copied rather than recomputed. Within one seed some arms start with exactly the same
# computation (same model, seed and arguments; explore.py's data order, sampling seeds and constant-after-warm-up
# learning rate are functions of (seed, step), and a resumed run ends with the weights an uninterrupted one
# does), so the later arm's folder starts as a copy of the earlier's finished stages:
#   the base evaluation           every arm (one per seed)
#   rloop's iteration 1 RL run, its harvest   no-al, thr-* (the threshold acts after them)
#   rloop's iteration 1 RL run    vanilla, whose first RL_STEPS steps it is (vanilla resumes from its copy)
#   vanilla's RL run (ITERS x RL_STEPS steps) and its evaluations   overfit, which resumes it to OVERFIT_X times
# An arm starts when the arm it copies from has finished (same seed); the pool takes the first such arm in the
# order rloop, vanilla, overfit, the rest. Each arm's folder is still a complete, self-contained loop.sh run.
# Evaluations: the lab reads each run's output policy, so the RLoop arms and kl evaluate the base and their
# output policy only (loop.sh EVAL_ITERS=output); vanilla and overfit evaluate every RL_STEPS (the overfitting
# curve). Each loop.sh runs its stages one after another (its JOBS=1): the lab runs JOBS of them side by side.
set -euo pipefail
cd "$(dirname "$0")"

SEEDS=${SEEDS:-3}                # a count (3 = seeds 0, 1, 2) or a comma list of seeds (0,1,2,3,4)
ALL_ARMS=rloop,vanilla,overfit,no-al,thr-0.05,thr-0.2,thr-0.5,kl
ARMS=${ARMS:-$ALL_ARMS}
OUT=${OUT:-runs/lab}
ITERS=${ITERS:-3}
RL_STEPS=${RL_STEPS:-20}
OVERFIT_X=${OVERFIT_X:-5}        # the overfit arm runs OVERFIT_X x ITERS x RL_STEPS RL steps
KL_COEF=${KL_COEF:-0.1}          # the kl arm's --kl-coef
JOBS=${JOBS:-2}                  # runs side by side (one torch thread each)
PYTHON=${PYTHON:-python}
export ITERS RL_STEPS PYTHON OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

if [[ "$SEEDS" == *,* ]]; then IFS=, read -r -a seeds <<< "$SEEDS"; else seeds=($(seq 0 $((SEEDS - 1)))); fi
IFS=, read -r -a arms <<< "$ARMS"
for a in "${arms[@]}"; do
  [[ ",$ALL_ARMS," == *",$a,"* ]] || { echo "error: ARMS: unknown arm '$a' (known: $ALL_ARMS)" >&2; exit 2; }
done
for s in "${seeds[@]}"; do
  [[ "$s" =~ ^[0-9]+$ ]] || { echo "error: SEEDS: '$s' is not a seed number" >&2; exit 2; }
done
mkdir -p "$OUT"
t_start=$(date +%s)
# the commit the lab runs on, for the report (+dirty: tracked files differ from it)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then commit+=+dirty; fi
echo "$commit" > "$OUT/lab_commit"
echo "== RLoop lab $(date -u +%FT%TZ): arms ${arms[*]}; seeds ${seeds[*]}; ITERS=$ITERS RL_STEPS=$RL_STEPS; $JOBS jobs" \
  | tee -a "$OUT/lab.log"

# arm_env ARM: the loop.sh settings of an arm (printed one per line)
# (the lab reads the output policy of each run, so only the vanilla runs, whose evaluations every RL_STEPS make
# the overfitting curve, evaluate every iteration: EVAL_ITERS=output elsewhere, unless set)
arm_env() {
  local last="EVAL_ITERS=${EVAL_ITERS:-output}"
  case $1 in
    rloop) printf '%s\n' VANILLA=0 "$last" ;;
    vanilla) printf '%s\n' VANILLA=1 RLOOP=0 EVAL_ITERS=all ;;
    overfit) printf '%s\n' VANILLA=1 RLOOP=0 EVAL_ITERS=all "ITERS=$((OVERFIT_X * ITERS))" ;;
    no-al) printf '%s\n' VANILLA=0 THRESHOLD=1 "$last" ;;
    thr-*) printf '%s\n' VANILLA=0 "THRESHOLD=${1#thr-}" "$last" ;;
    kl) printf '%s\n' VANILLA=1 RLOOP=0 "$last" "EXPLORE_ARGS=${EXPLORE_ARGS:-} --kl-coef $KL_COEF" ;;
  esac
}

# seed_from SRC DST STAGE:PATH[=DEST]...: start DST (a fresh arm folder) with SRC's finished stages: when SRC
# finished STAGE, SRC/PATH is copied to DST/DEST (DEST defaults to PATH) and STAGE marked done in DST. A STAGE
# written -STAGE marks nothing (DST's loop.sh resumes from the copy); a STAGE of '-' copies PATH unconditionally.
seed_from() {
  local src=$1 dst=$2 item stage mark path dest; shift 2
  [[ -d "$src/.done" && ! -e "$dst/.done" ]] || return 0
  mkdir -p "$dst/.done"
  for item in "$@"; do
    stage=${item%%:*} path=${item#*:} mark=1
    if [[ "$stage" == -* ]]; then stage=${stage#-} mark=0; fi
    dest=$path
    if [[ "$path" == *=* ]]; then dest=${path#*=} path=${path%%=*}; fi
    if [[ -n "$stage" && ! -e "$src/.done/$stage" ]]; then continue; fi
    [[ -e "$src/$path" ]] || continue
    mkdir -p "$(dirname "$dst/$dest")"
    cp -a "$src/$path" "$dst/$dest"
    if (( mark )); then touch "$dst/.done/$stage"; fi
  done
}

# run_arm ARM SEED: one loop.sh run (skipped when finished), its output in its own loop.log
run_arm() {
  local arm=$1 seed=$2 dir=$OUT/$1/seed$2 t0 i
  if [[ -e "$dir/.done/report" ]]; then echo "-- $arm seed $seed: done, skipped"; return 0; fi
  case $arm in
    no-al | thr-*) seed_from "$OUT/rloop/seed$seed" "$dir" iter1-explore:iter1/explore iter1-harvest:iter1/harvest.jsonl \
                     eval-base:eval/base eval-iter1-rl:eval/iter1-rl ;;
    overfit)
      local items=(-:vanilla eval-base:eval/base)
      for ((i = 1; i <= ITERS; i++)); do items+=("eval-vanilla-$((i * RL_STEPS)):eval/vanilla-$((i * RL_STEPS))"); done
      seed_from "$OUT/vanilla/seed$seed" "$dir" "${items[@]}" ;;
    vanilla) seed_from "$OUT/rloop/seed$seed" "$dir" -iter1-explore:iter1/explore=vanilla eval-base:eval/base ;;
    kl) seed_from "$OUT/rloop/seed$seed" "$dir" eval-base:eval/base ;;
  esac
  t0=$(date +%s)
  echo "+ $arm seed $seed -> $dir"
  mkdir -p "$dir"
  rm -f "$dir/.failed"
  local envs
  mapfile -t envs < <(arm_env "$arm")
  if env "${envs[@]}" OUT="$dir" SEED="$seed" JOBS=1 bash loop.sh > "$dir/lab_job.log" 2>&1; then
    echo "-- $arm seed $seed: finished in $(( $(date +%s) - t0 )) s"
  else
    echo "!! $arm seed $seed failed (exit $?): see $dir/lab_job.log" >&2
    touch "$dir/.failed"
    return 1
  fi
}

# source_of ARM: the arm whose finished run ARM starts from (see "Shared work" above; none for rloop)
source_of() {
  case $1 in
    vanilla | no-al | thr-* | kl) echo rloop ;;
    overfit) echo vanilla ;;
  esac
}
# ready ARM:SEED: its source arm finished, or is not part of this lab, or failed (then ARM computes everything)
ready() {
  local src; src=$(source_of "${1%%:*}")
  [[ -z "$src" || -e "$OUT/$src/seed${1#*:}/.done/report" || -e "$OUT/$src/seed${1#*:}/.failed" ]] || ! has "$src"
}
# a pool of JOBS runs: whenever a slot is free, the first pending job that is ready starts
pool() {  # pool ARM:SEED...
  local pending=("$@") job i started fail=0 running=0
  while (( ${#pending[@]} || running )); do
    started=0
    if (( running < JOBS )); then
      for i in "${!pending[@]}"; do
        job=${pending[$i]}
        ready "$job" || continue
        run_arm "${job%%:*}" "${job#*:}" &
        running=$((running + 1)) started=1
        unset "pending[$i]"; pending=("${pending[@]}")
        break
      done
    fi
    if (( ! started )); then
      if (( running == 0 )); then echo "!! lab: no job can start: ${pending[*]}" >&2; return 1; fi
      wait -n || fail=1
      running=$((running - 1))
    fi
  done
  return $fail
}
has() { [[ " ${arms[*]} " == *" $1 "* ]]; }
jobs_list=()
for a in rloop vanilla overfit no-al thr-0.05 thr-0.2 thr-0.5 kl; do  # the long chain (rloop, vanilla, overfit) first
  for s in "${seeds[@]}"; do has $a && jobs_list+=("$a:$s"); done
done
rm -f "$OUT"/*/seed*/.failed  # (marks of an earlier lab's failed arms: these run again)
rc=0
pool "${jobs_list[@]}" 2>&1 | tee -a "$OUT/lab.log" || rc=1
$PYTHON report.py "$OUT" | tail -n 3
elapsed=$(( $(date +%s) - t_start ))
echo "== lab done in ${elapsed} s: $OUT/report/summary.md" | tee -a "$OUT/lab.log"
printf '{"seconds": %d, "arms": "%s", "seeds": "%s", "iters": %d, "rl_steps": %d, "jobs": %d}\n' \
  "$elapsed" "${arms[*]}" "${seeds[*]}" "$ITERS" "$RL_STEPS" "$JOBS" > "$OUT/lab_time.json"
exit $rc
