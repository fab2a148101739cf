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
#   vanilla RL:   explore from MODEL for ITERS x RL_STEPS steps (same seed and batch settings)
#   evaluate:     the base, every iteration's final RL policy and consolidated policy, vanilla at equal RL steps
#   report.py:    OUT/report/summary.md + plots
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
EVAL_ITERS=${EVAL_ITERS:-all}    # all: every iteration's policies (and vanilla every RL_STEPS); last: the last only
LOGGER=${LOGGER:-}               # live tracking of explore / consolidate: tensorboard, wandb or both (comma list)
log_flag=()
if [[ -n "$LOGGER" ]]; then log_flag=(--logger "$LOGGER"); fi

if [[ "$EVAL_ITERS" != all && "$EVAL_ITERS" != last ]]; then
  echo "error: EVAL_ITERS=$EVAL_ITERS must be 'all' or 'last'" >&2
  exit 2
fi
if (( RL_STEPS % SAVE_EVERY != 0 )); then
  echo "error: SAVE_EVERY=$SAVE_EVERY must divide RL_STEPS=$RL_STEPS (vanilla is evaluated at multiples of RL_STEPS)" >&2
  exit 2
fi
mkdir -p "$OUT/.done"
exec > >(tee -a "$OUT/loop.log") 2>&1
echo "== RLoop $(date -u +%FT%TZ)"
for v in MODEL DATA EVAL ITERS RL_STEPS SAVE_EVERY OUT SEED VANILLA RLOOP THRESHOLD PYTHON TRAIN_LAUNCH LOGGER \
         EXPLORE_ARGS HARVEST_ARGS FILTER_ARGS CONSOLIDATE_ARGS EVAL_ARGS EVAL_ITERS; do
  printf '   %-16s %s\n' "$v" "${!v}"
done

# stage NAME CMD...: run CMD unless NAME finished before; echo it; mark it done when it succeeds.
stage() {
  local name=$1; shift
  if [[ -e "$OUT/.done/$name" ]]; then echo "-- $name: done, skipped"; return 0; fi
  echo "+ $*"
  "$@"
  touch "$OUT/.done/$name"
}
ckpt() { printf '%s/ckpt_%06d' "$1" "$2"; }  # ckpt DIR STEP -> the checkpoint folder explore.py writes

# --- RLoop ---------------------------------------------------------------------------------------------
policy=$MODEL
for ((i = 1; i <= ITERS * RLOOP; i++)); do
  it=$OUT/iter$i
  # shellcheck disable=SC2086  # *_ARGS are deliberately word-split into flags
  stage "iter$i-explore" $TRAIN_LAUNCH explore.py --model "$policy" --data "$DATA" --out "$it/explore" \
    --steps "$RL_STEPS" --save-every "$SAVE_EVERY" --seed $((SEED + i - 1)) --resume "${log_flag[@]}" $EXPLORE_ARGS
  # shellcheck disable=SC2086
  stage "iter$i-harvest" $PYTHON harvest.py --run "$it/explore" --out "$it/harvest.jsonl" $HARVEST_ARGS
  if [[ ! -e "$OUT/.done/iter$i-filter" ]]; then
    echo "+ $PYTHON filter.py --in $it/harvest.jsonl --out $it/filter --threshold $THRESHOLD $FILTER_ARGS"
    rc=0
    # shellcheck disable=SC2086
    $PYTHON filter.py --in "$it/harvest.jsonl" --out "$it/filter" --threshold "$THRESHOLD" $FILTER_ARGS || rc=$?
    if (( rc == 3 )); then  # nothing kept: this iteration keeps its initial policy
      echo "-- iter$i: the filter kept nothing; iteration $((i + 1)) starts again from $policy"
      echo "$policy" > "$it/next_policy"
      touch "$OUT/.done/iter$i-consolidate"
    elif (( rc != 0 )); then
      exit "$rc"
    fi
    touch "$OUT/.done/iter$i-filter"
  fi
  # shellcheck disable=SC2086
  stage "iter$i-consolidate" $TRAIN_LAUNCH consolidate.py --model "$policy" --data "$it/filter/rft.jsonl" \
    --out "$it/consolidated" --seed "$SEED" --resume "${log_flag[@]}" $CONSOLIDATE_ARGS
  [[ -e "$it/next_policy" ]] || echo "$it/consolidated" > "$it/next_policy"
  policy=$(cat "$it/next_policy")
done

# --- vanilla RL at equal RL steps ------------------------------------------------------------------------
if (( VANILLA )); then
  # shellcheck disable=SC2086
  stage vanilla-explore $TRAIN_LAUNCH explore.py --model "$MODEL" --data "$DATA" --out "$OUT/vanilla" \
    --steps $((ITERS * RL_STEPS)) --save-every "$SAVE_EVERY" --seed "$SEED" --resume "${log_flag[@]}" $EXPLORE_ARGS
fi

# --- evaluation ----------------------------------------------------------------------------------------
evaluate() {  # evaluate NAME MODEL
  # shellcheck disable=SC2086
  stage "eval-$1" $PYTHON evaluate.py --model "$2" --benchmarks "$EVAL" --out "$OUT/eval/$1" --seed "$SEED" $EVAL_ARGS
}
evaluate base "$MODEL"
for ((i = 1; i <= ITERS; i++)); do
  if [[ "$EVAL_ITERS" == last ]] && (( i < ITERS )); then continue; fi
  if (( ! RLOOP )); then
    if (( VANILLA )); then evaluate "vanilla-$((i * RL_STEPS))" "$(ckpt "$OUT/vanilla" $((i * RL_STEPS)))"; fi
    continue
  fi
  evaluate "iter$i-rl" "$(ckpt "$OUT/iter$i/explore" "$RL_STEPS")"
  if [[ "$(cat "$OUT/iter$i/next_policy")" == "$OUT/iter$i/consolidated" ]]; then
    evaluate "iter$i-rft" "$OUT/iter$i/consolidated"
  fi
  if (( VANILLA )); then evaluate "vanilla-$((i * RL_STEPS))" "$(ckpt "$OUT/vanilla" $((i * RL_STEPS)))"; fi
done

stage report $PYTHON report.py "$OUT"
echo "== done: $OUT/report/summary.md"
