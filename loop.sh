#!/usr/bin/env bash
# RLoop (arXiv 2511.04285): RL that loops.
#
#   policy_0 = MODEL
#   for i in 1..ITERS:
#       explore      DAPO RL from policy_{i-1} for RL_STEPS steps, saving checkpoints and every rollout
#       harvest      pool the trajectories of all intermediate steps (inter-step diversity)
#       filter       keep the successful trajectories of hard problems (success rate < THRESHOLD)
#       consolidate  rejection-sampling fine-tuning of policy_{i-1} (the iteration's *initial* policy) on them
#       policy_i = the consolidated model
#   vanilla RL:   explore from MODEL for ITERS x RL_STEPS steps (same seed and batch settings); its first
#                 RL_STEPS steps are iteration 1's RL run, so it starts as a copy of that run and goes on
#   evaluate:     the base, every iteration's final RL policy and consolidated policy, vanilla at equal RL steps
#   report.py:    OUT/report/summary.md + plots
# With JOBS=2 (the toy's default) the vanilla run and half the evaluations go beside RLoop's chain, one torch
# thread each: the same stages, the same outputs, in less wall time on a 2-core box.
#
# Zero configuration runs the embedded toy world on CPU. The real world, on GPUs:
#   MODEL=Qwen/Qwen2.5-Math-7B DATA=BytedTsinghua-SIA/DAPO-Math-17k EVAL=aime24=...,math500=... \
#   RL_STEPS=200 TRAIN_LAUNCH="torchrun --nproc_per_node 8" EXPLORE_ARGS="..." bash loop.sh   (see README)
#
# Rerunning resumes: a stage that finished is skipped (OUT/.done/<stage> is written last), an interrupted one
# resumes from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-toy}              # initial policy: folder or hub id; 'toy' = the embedded toy base (built once)
DATA=${DATA:-toy}                # RL prompt set: JSONL / parquet / dataset id; 'toy' = the toy train split
EVAL=${EVAL:-toy}                # NAME=PATH,... benchmarks for evaluate.py; 'toy' = test, ood and probe splits
ITERS=${ITERS:-3}                # RLoop iterations
RL_STEPS=${RL_STEPS:-20}         # RL steps per iteration (vanilla runs ITERS x RL_STEPS)
# checkpoint interval of every RL run (must divide RL_STEPS); default: the largest of 5, 4, 3, 2, 1 dividing it
if [[ -z "${SAVE_EVERY:-}" ]]; then
  for SAVE_EVERY in 5 4 3 2 1; do (( RL_STEPS % SAVE_EVERY == 0 )) && break; done
fi
OUT=${OUT:-runs/loop}            # everything goes here
SEED=${SEED:-0}
VANILLA=${VANILLA:-1}            # 0 = skip the vanilla-RL baseline
RLOOP=${RLOOP:-1}                # 0 = skip RLoop's iterations (a vanilla-only run, e.g. lab.sh's vanilla arms)
THRESHOLD=${THRESHOLD:-0.1}      # hard = 0 < success < THRESHOLD; 1.0 = the no-active-learning ablation
PYTHON=${PYTHON:-python}
TRAIN_LAUNCH=${TRAIN_LAUNCH:-$PYTHON}   # e.g. "torchrun --nproc_per_node 8" for explore / consolidate
EXPLORE_ARGS=${EXPLORE_ARGS:-}   # extra flags for each stage, e.g. EXPLORE_ARGS="--lr 1e-6 --n 16"
HARVEST_ARGS=${HARVEST_ARGS:-}
FILTER_ARGS=${FILTER_ARGS:-}
CONSOLIDATE_ARGS=${CONSOLIDATE_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:---n 8}
EVAL_ITERS=${EVAL_ITERS:-all}    # all: every iteration's policies (and vanilla every RL_STEPS); last: the last only;
                                 # output: the run's output policies only (RLoop's last consolidated one, or its last
                                 # RL policy when the last filter kept nothing; vanilla's last checkpoint)
JOBS=${JOBS:-}                   # stages side by side: 2 = vanilla RL and half the evaluations beside RLoop's chain,
                                 # each stage with cores / 2 torch threads. Default: 2 for the toy, 1 otherwise (at
                                 # full scale each stage takes every GPU of the node)
LOGGER=${LOGGER:-}               # live tracking of explore / consolidate: tensorboard, wandb or both (comma list)
log_flag=()
if [[ -n "$LOGGER" ]]; then log_flag=(--logger "$LOGGER"); fi

if [[ "$EVAL_ITERS" != all && "$EVAL_ITERS" != last && "$EVAL_ITERS" != output ]]; then
  echo "error: EVAL_ITERS=$EVAL_ITERS must be 'all', 'last' or 'output'" >&2
  exit 2
fi
if [[ -z "$JOBS" ]]; then if [[ "$MODEL" == toy ]]; then JOBS=2; else JOBS=1; fi; fi
if [[ ! "$JOBS" =~ ^[12]$ ]]; then
  echo "error: JOBS=$JOBS must be 1 or 2" >&2
  exit 2
fi
if (( ! RLOOP )); then JOBS=1; fi  # (a vanilla-only run has nothing to run beside its RL run)
cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
all_threads=${OMP_NUM_THREADS:-$cores}
if (( JOBS == 2 )) && [[ -z "${OMP_NUM_THREADS:-}" ]]; then  # two stages at a time: half the cores each
  export OMP_NUM_THREADS=$(( cores > 3 ? cores / 2 : 1 ))
  export MKL_NUM_THREADS=$OMP_NUM_THREADS
fi
if (( RL_STEPS % SAVE_EVERY != 0 )); then
  echo "error: SAVE_EVERY=$SAVE_EVERY must divide RL_STEPS=$RL_STEPS (vanilla is evaluated at multiples of RL_STEPS)" >&2
  exit 2
fi
mkdir -p "$OUT/.done"
exec > >(tee -a "$OUT/loop.log") 2>&1
echo "== RLoop $(date -u +%FT%TZ)"
for v in MODEL DATA EVAL ITERS RL_STEPS SAVE_EVERY OUT SEED VANILLA RLOOP THRESHOLD PYTHON TRAIN_LAUNCH LOGGER \
         EXPLORE_ARGS HARVEST_ARGS FILTER_ARGS CONSOLIDATE_ARGS EVAL_ARGS EVAL_ITERS JOBS OMP_NUM_THREADS; do
  printf '   %-16s %s\n' "$v" "${!v:-}"
done

# stage NAME CMD...: run CMD unless NAME finished before; echo it; mark it done when it succeeds (the marker
# holds the stage's seconds: bench.py --sections walltime reads them)
stage() {
  local name=$1 t0=$SECONDS; shift
  if [[ -e "$OUT/.done/$name" ]]; then echo "-- $name: done, skipped"; return 0; fi
  echo "+ $*"
  "$@"
  echo $((SECONDS - t0)) > "$OUT/.done/$name"
}
ckpt() { printf '%s/ckpt_%06d' "$1" "$2"; }  # ckpt DIR STEP -> the checkpoint folder explore.py writes

# --- RLoop ---------------------------------------------------------------------------------------------
rloop() {
  local policy=$MODEL i it rc t0
  for ((i = 1; i <= ITERS * RLOOP; i++)); do
    it=$OUT/iter$i
    # shellcheck disable=SC2086  # *_ARGS are deliberately word-split into flags
    stage "iter$i-explore" $TRAIN_LAUNCH explore.py --model "$policy" --data "$DATA" --out "$it/explore" \
      --steps "$RL_STEPS" --save-every "$SAVE_EVERY" --seed $((SEED + i - 1)) --resume "${log_flag[@]}" $EXPLORE_ARGS
    # shellcheck disable=SC2086
    stage "iter$i-harvest" $PYTHON harvest.py --run "$it/explore" --out "$it/harvest.jsonl" $HARVEST_ARGS
    if [[ ! -e "$OUT/.done/iter$i-filter" ]]; then
      echo "+ $PYTHON filter.py --in $it/harvest.jsonl --out $it/filter --threshold $THRESHOLD $FILTER_ARGS"
      rc=0 t0=$SECONDS
      # shellcheck disable=SC2086
      $PYTHON filter.py --in "$it/harvest.jsonl" --out "$it/filter" --threshold "$THRESHOLD" $FILTER_ARGS || rc=$?
      if (( rc == 3 )); then  # nothing kept: this iteration keeps its initial policy
        echo "-- iter$i: the filter kept nothing; iteration $((i + 1)) starts again from $policy"
        echo "$policy" > "$it/next_policy"
        echo 0 > "$OUT/.done/iter$i-consolidate"
      elif (( rc != 0 )); then
        exit "$rc"
      fi
      echo $((SECONDS - t0)) > "$OUT/.done/iter$i-filter"  # (filter.py's exit 3 is not a failure: no stage())
    fi
    # shellcheck disable=SC2086
    stage "iter$i-consolidate" $TRAIN_LAUNCH consolidate.py --model "$policy" --data "$it/filter/rft.jsonl" \
      --out "$it/consolidated" --seed "$SEED" --resume "${log_flag[@]}" $CONSOLIDATE_ARGS
    [[ -e "$it/next_policy" ]] || echo "$it/consolidated" > "$it/next_policy"
    policy=$(cat "$it/next_policy")
  done
}

# --- vanilla RL at equal RL steps ------------------------------------------------------------------------
# Its first RL_STEPS steps ARE iteration 1's RL run: the same model, seed, data and flags (explore.py's data
# order, sampling seeds and constant-after-warm-up learning rate are functions of (seed, step)), and --resume
# ends with the weights an uninterrupted run ends with. So the run starts as a copy of iter1/explore.
vanilla() {
  if (( RLOOP )) && [[ -e "$OUT/.done/iter1-explore" && -d "$OUT/iter1/explore" && ! -e "$OUT/vanilla" ]]; then
    echo "-- vanilla: steps 1..$RL_STEPS are iter1/explore's (copied); it resumes from there"
    rm -rf "$OUT/vanilla.partial"
    cp -a "$OUT/iter1/explore" "$OUT/vanilla.partial"
    mv "$OUT/vanilla.partial" "$OUT/vanilla"
  fi
  # shellcheck disable=SC2086
  stage vanilla-explore $TRAIN_LAUNCH explore.py --model "$MODEL" --data "$DATA" --out "$OUT/vanilla" \
    --steps $((ITERS * RL_STEPS)) --save-every "$SAVE_EVERY" --seed "$SEED" --resume "${log_flag[@]}" $EXPLORE_ARGS
}

# --- evaluation ----------------------------------------------------------------------------------------
eval_names() {  # every evaluation this run makes, in order
  local i
  echo base
  for ((i = 1; i <= ITERS; i++)); do
    if [[ "$EVAL_ITERS" != all ]] && (( i < ITERS )); then continue; fi
    if (( RLOOP )); then echo "iter$i-rl" "iter$i-rft"; fi
    if (( VANILLA )); then echo "vanilla-$((i * RL_STEPS))"; fi
  done
}
consolidated() {  # consolidated I: iteration I finished with a consolidated policy (its filter kept something)
  [[ -e "$OUT/.done/iter$1-consolidate" && "$(cat "$OUT/iter$1/next_policy")" == "$OUT/iter$1/consolidated" ]]
}
policy_of() {  # policy_of NAME -> the folder evaluation NAME reads; fails while it is not trained, or if none
  local name=$1 i=${1#iter}
  i=${i%%-*}
  case $name in
    base) echo "$MODEL" ;;
    vanilla-*) [[ -e "$OUT/.done/vanilla-explore" ]] && ckpt "$OUT/vanilla" "${name#vanilla-}" ;;
    iter*-rl)  # (EVAL_ITERS=output: only when the last filter kept nothing, so that it is the output policy)
      [[ -e "$OUT/.done/iter$i-explore" ]] || return 1
      if [[ "$EVAL_ITERS" == output ]]; then [[ -e "$OUT/.done/iter$i-consolidate" ]] && ! consolidated "$i" || return 1; fi
      ckpt "$OUT/iter$i/explore" "$RL_STEPS" ;;
    iter*-rft) consolidated "$i" && echo "$OUT/iter$i/consolidated" ;;
  esac
}
# evaluations [NAME...]: every evaluation (or those named) whose policy is ready and that no other lane took (a
# lane takes one by creating OUT/.claim/NAME); lane 1 calls it last, when every policy is ready
evaluations() {
  local name model
  for name in ${*:-$(eval_names)}; do
    model=$(policy_of "$name") || continue
    mkdir "$OUT/.claim/$name" 2>/dev/null || continue
    # shellcheck disable=SC2086
    stage "eval-$name" $PYTHON evaluate.py --model "$model" --benchmarks "$EVAL" --out "$OUT/eval/$name" \
      --seed "$SEED" $EVAL_ARGS
  done
}

# --- the run ------------------------------------------------------------------------------------------
# JOBS=1: RLoop's iterations, vanilla RL, the evaluations, one after another.
# JOBS=2: lane 1 runs RLoop's iterations; lane 2 evaluates the base while iteration 1 explores, runs vanilla RL
# from iteration 1's copy, then takes evaluations as their policies become ready; lane 1 ends with the rest.
rm -rf "$OUT/.claim" && mkdir -p "$OUT/.claim"
lane=
if (( JOBS == 2 )) && [[ "$MODEL" == toy ]]; then  # the toy base, built once (cached) with every core, before
  OMP_NUM_THREADS=$all_threads MKL_NUM_THREADS=$all_threads $PYTHON -m lib.toy  # two one-thread lanes need it
fi
if (( JOBS == 2 )); then
  lane2() {
    evaluations base
    while [[ ! -e "$OUT/.done/iter1-explore" ]]; do
      sleep 1
      kill -0 $$ 2>/dev/null || exit 1  # lane 1 died
    done
    if (( VANILLA )); then vanilla; fi
    local last=0
    until (( last )); do  # a pass that starts after lane 1's iterations sees every policy ready: the last one
      [[ -e "$OUT/.claim/.iterations-done" ]] && last=1
      evaluations
      (( last )) || sleep 1
    done
  }
  stop_lane() { if [[ -n "$lane" ]]; then pkill -P "$lane" 2>/dev/null || true; kill "$lane" 2>/dev/null || true; fi; }
  trap stop_lane EXIT
  trap 'exit 130' INT TERM
  PYTHONUNBUFFERED=1 lane2 > >(while IFS= read -r line; do printf '[lane 2] %s\n' "$line"; done) 2>&1 &
  lane=$!
fi
rloop
touch "$OUT/.claim/.iterations-done"
if (( JOBS == 1 && VANILLA )); then vanilla; fi
evaluations
if [[ -n "$lane" ]]; then
  wait "$lane" || { lane=; echo "error: lane 2 failed (its lines above start with [lane 2])" >&2; exit 1; }
  lane=
fi

rm -rf "$OUT/.claim"

stage report $PYTHON report.py "$OUT"
echo "== done: $OUT/report/summary.md"
