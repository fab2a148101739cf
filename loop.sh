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
#
#   bash loop.sh                  # zero configuration: the embedded toy world on CPU
#   bash loop.sh --help           # every variable: name, default, meaning
#   DRY_RUN=1 bash loop.sh        # the stage commands a run would make now, in order; runs and writes nothing
#
# With JOBS=2 (the toy's default) the vanilla run and half the evaluations go beside RLoop's chain, one torch
# thread each: the same stages, the same outputs, in less wall time on a 2-core box.
#
# Several GPUs, several nodes (docs/scaling.md): explore, consolidate, evaluate and harvest --n-samples run under
# torchrun over NNODES x NPROC_PER_NODE processes (static rendezvous at MASTER_ADDR:MASTER_PORT); every node runs
# this same script with its NODE_RANK and the same OUT on a shared filesystem. The single-process stages (harvest's
# default mode, filter, report, the toy base build) run on node 0, the other nodes wait for node 0's marker.
# Node 0 alone writes markers and OUT/loop.log; node k logs to OUT/loop.node<k>.log.
#
# Rerunning resumes: a stage that finished is skipped (OUT/.done/<stage> is written last), an interrupted one
# resumes (explore and consolidate from their last checkpoint, evaluate and harvest --n-samples from their last
# finished part). After a failure on any node, rerun the same command on every node. The settings that shape the
# results (RECORDED below) are written to OUT/.settings at the first start: a rerun with another value stops at once.
set -euo pipefail
cd "$(dirname "$0")"

# --- variables: the one list (--help prints it, every run echoes it) ------------------------------------------
VAR_NAMES=() VAR_DEFAULTS=() VAR_HELPS=()
declare -A FROM_ENV
var() {  # var NAME DEFAULT MEANING: NAME keeps a non-empty value from the environment, else DEFAULT
  VAR_NAMES+=("$1") VAR_DEFAULTS+=("$2") VAR_HELPS+=("$3")
  if [[ -n "${!1:-}" ]]; then FROM_ENV[$1]=1; else printf -v "$1" '%s' "$2"; fi
}
var MODEL toy "initial policy: folder or hub id; toy = the embedded toy base (built once)"
var DATA toy "RL prompt set: JSONL / parquet / dataset id; toy = the toy's train split"
var BENCHMARKS toy "NAME=PATH,... held-out benchmarks of evaluate.py; toy = test, ood, probe"
var ITERS 3 "RLoop iterations"
var RL_STEPS 20 "RL steps per iteration (vanilla runs ITERS x RL_STEPS)"
var SAVE_EVERY "" "checkpoint interval of every RL run, dividing RL_STEPS (empty: the largest of 5 4 3 2 1 that does)"
var OUT runs/loop "the run's folder (several nodes: on a filesystem every node sees)"
var SEED 0 "seed of iteration 1's RL run, vanilla RL, consolidation and evaluation"
var VANILLA 1 "0 = no vanilla-RL baseline"
var RLOOP 1 "0 = no RLoop iterations (a vanilla-only run, e.g. lab.sh's vanilla arms)"
var THRESHOLD 0.1 "hard = 0 < success < THRESHOLD; 1.0 = the no-active-learning ablation"
var EXPLORE_ARGS "" "extra flags of explore.py, e.g. \"--lr 1e-6 --n-samples 16\""
var HARVEST_ARGS "" "extra flags of harvest.py (--n-samples K: sampled from the checkpoints, data-parallel)"
var FILTER_ARGS "" "extra flags of filter.py"
var CONSOLIDATE_ARGS "" "extra flags of consolidate.py"
var EVAL_ARGS "--n-samples 8" "extra flags of evaluate.py"
var EVAL_ITERS all "all: every iteration's policies (vanilla every RL_STEPS); last: the last iteration's; "\
"output: the output policies only (RLoop's last consolidated one, or its last RL policy when the last filter kept "\
"nothing; vanilla's last)"
var LOGGER "" "live tracking of explore / consolidate: tensorboard, wandb or both (comma list)"
var PYTHON python "the Python that runs every stage"
var NNODES 1 "nodes; every node runs this script with the same variables but NODE_RANK"
var NODE_RANK 0 "this node's rank, 0..NNODES-1 (node 0 runs the single-process stages and writes the markers)"
var MASTER_ADDR 127.0.0.1 "node 0's address, reachable from every node (torchrun's static rendezvous)"
var MASTER_PORT 29500 "a free port on node 0; every distributed stage rendezvous there, one after another"
var NPROC_PER_NODE "" "processes per node (empty: the node's GPU count, 1 without a GPU)"
var TRAIN_LAUNCH "" "launcher of explore / consolidate, one node only (empty: torchrun over NNODES x NPROC_PER_NODE "\
"processes when more than one, else PYTHON)"
var EVAL_LAUNCH "" "launcher of evaluate / harvest --n-samples, one node only (empty: TRAIN_LAUNCH; PYTHON with JOBS=2)"
var JOBS "" "stages side by side, 1 or 2: 2 = vanilla RL and half the evaluations beside RLoop's chain (empty: 2 "\
"for the toy in one process, else 1)"
var NODE_TIMEOUT 600 "seconds a node > 0 waits on a silent node 0 (heartbeat OUT/.node0.alive unchanged), then fails"
var RLOOP_RUN_GROUP "" "the run's id for tracking, exported to every stage with RLOOP_STAGE (empty: OUT's name and "\
"a random suffix, kept in OUT/.run_group)"
var DRY_RUN 0 "1 = print the stage commands in order, run and write nothing"
# the variables that shape a run's results: OUT/.settings records them at the run's first start, and a rerun into
# the same OUT with another value of one of them stops before any stage (the others place, log or launch the run)
RECORDED=(MODEL DATA BENCHMARKS ITERS RL_STEPS SAVE_EVERY SEED VANILLA RLOOP THRESHOLD EXPLORE_ARGS HARVEST_ARGS
          FILTER_ARGS CONSOLIDATE_ARGS EVAL_ARGS EVAL_ITERS)

if [[ "${1:-}" == --help || "${1:-}" == -h ]]; then
  echo "usage: [VARIABLE=value ...] bash loop.sh [--help]      (DRY_RUN=1: print the stage commands only)"
  echo "RLoop's whole run: ITERS x (explore, harvest, filter, consolidate), vanilla RL, evaluations, report."
  echo "Variables (from the environment; empty = the default):"
  for k in "${!VAR_NAMES[@]}"; do
    printf '  %-16s %-16s %s\n' "${VAR_NAMES[k]}" "${VAR_DEFAULTS[k]:-\"\"}" "${VAR_HELPS[k]}"
  done
  echo "Recorded in OUT/.settings at a run's first start (a rerun into the same OUT keeps them): ${RECORDED[*]}"
  echo "Several GPUs or nodes: docs/scaling.md"
  exit 0
elif (( $# )); then
  echo "error: loop.sh takes no arguments but --help (settings are environment variables): got '$*'" >&2
  exit 2
fi

# --- derived settings, checked before anything is written ------------------------------------------------------
die() { echo "error: $*" >&2; exit 2; }
for v in ITERS RL_STEPS NNODES NODE_RANK MASTER_PORT NODE_TIMEOUT DRY_RUN; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v=${!v} must be a whole number"
done
if [[ -z "$SAVE_EVERY" ]]; then
  for SAVE_EVERY in 5 4 3 2 1; do (( RL_STEPS % SAVE_EVERY == 0 )) && break; done
fi
(( RL_STEPS % SAVE_EVERY == 0 )) ||
  die "SAVE_EVERY=$SAVE_EVERY must divide RL_STEPS=$RL_STEPS (vanilla is evaluated at multiples of RL_STEPS)"
[[ "$EVAL_ITERS" =~ ^(all|last|output)$ ]] || die "EVAL_ITERS=$EVAL_ITERS must be 'all', 'last' or 'output'"
if [[ -z "$NPROC_PER_NODE" ]]; then
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"; NPROC_PER_NODE=${#gpus[@]}
  else
    NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  (( NPROC_PER_NODE > 0 )) || NPROC_PER_NODE=1
fi
[[ "$NPROC_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "NPROC_PER_NODE=$NPROC_PER_NODE must be a positive number"
(( NNODES >= 1 && NODE_RANK < NNODES )) || die "NODE_RANK=$NODE_RANK must be in 0..NNODES-1 (NNODES=$NNODES)"
world=$((NNODES * NPROC_PER_NODE))
if (( NNODES > 1 )); then  # every distributed stage must span the nodes: the launchers are built here
  [[ -z "$TRAIN_LAUNCH$EVAL_LAUNCH" ]] ||
    die "with NNODES=$NNODES loop.sh builds TRAIN_LAUNCH / EVAL_LAUNCH itself: unset them"
  [[ -z "$JOBS" || "$JOBS" == 1 ]] || die "JOBS=$JOBS: two lanes run on one node only (NNODES=$NNODES needs JOBS=1)"
fi
if [[ -z "$JOBS" ]]; then if [[ "$MODEL" == toy ]] && (( world == 1 )); then JOBS=2; else JOBS=1; fi; fi
[[ "$JOBS" =~ ^[12]$ ]] || die "JOBS=$JOBS must be 1 or 2"
(( JOBS == 1 || world == 1 )) ||
  die "JOBS=2 runs two stages at once on one process each: NNODES x NPROC_PER_NODE must be 1"
if (( ! RLOOP )); then JOBS=1; fi  # (a vanilla-only run has nothing to run beside its RL run)
torchrun="$PYTHON -m torch.distributed.run --nnodes $NNODES --node-rank $NODE_RANK --master-addr $MASTER_ADDR"
torchrun+=" --master-port $MASTER_PORT --nproc-per-node $NPROC_PER_NODE"
if [[ -z "$TRAIN_LAUNCH" ]]; then if (( world > 1 )); then TRAIN_LAUNCH=$torchrun; else TRAIN_LAUNCH=$PYTHON; fi; fi
if [[ -z "$EVAL_LAUNCH" ]]; then if (( JOBS == 2 )); then EVAL_LAUNCH=$PYTHON; else EVAL_LAUNCH=$TRAIN_LAUNCH; fi; fi
cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
all_threads=${OMP_NUM_THREADS:-$cores}
if (( JOBS == 2 )) && [[ -z "${OMP_NUM_THREADS:-}" ]]; then  # two stages at a time: half the cores each
  export OMP_NUM_THREADS=$(( cores > 3 ? cores / 2 : 1 ))
  export MKL_NUM_THREADS=$OMP_NUM_THREADS
fi
log_flag=()
if [[ -n "$LOGGER" ]]; then log_flag=(--logger "$LOGGER"); fi

# --- the run's folder: node 0 writes, the others wait for it (nothing at all with DRY_RUN) ---------------------
# wait_for PATH: a node > 0 waits for node 0 to write PATH; it fails when node 0's heartbeat (OUT/.node0.alive,
# rewritten every 5 s) stays unchanged for NODE_TIMEOUT seconds: node 0 died
wait_for() {
  local beat last=none since=$SECONDS
  until [[ -e "$1" ]]; do
    beat=$(cat "$OUT/.node0.alive" 2>/dev/null || true)
    if [[ "$beat" != "$last" ]]; then last=$beat since=$SECONDS; fi
    if (( SECONDS - since > NODE_TIMEOUT )); then
      echo "error: node $NODE_RANK waited $NODE_TIMEOUT s for $1 and node 0 shows no sign of life; rerun the same" \
        "command on every node" >&2
      exit 1
    fi
    sleep 1
  done
}
beat=
if (( ! DRY_RUN )); then
  if (( NODE_RANK == 0 )); then
    mkdir -p "$OUT/.done"
    exec > >(tee -a "$OUT/loop.log") 2>&1
    if (( NNODES > 1 )); then  # (ends with this shell, even when only the shell is killed)
      ( while kill -0 $$ 2>/dev/null; do date +%s%N > "$OUT/.node0.alive"; sleep 5; done ) &
      beat=$!
    fi
  else
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/loop.node$NODE_RANK.log") 2>&1
  fi
fi
if [[ -z "$RLOOP_RUN_GROUP" ]]; then  # one id per run, kept for its reruns
  if (( NODE_RANK > 0 && ! DRY_RUN )); then wait_for "$OUT/.run_group"; fi
  RLOOP_RUN_GROUP=$(cat "$OUT/.run_group" 2>/dev/null ||
                    echo "$(basename "$OUT")-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')")
fi
if (( NODE_RANK == 0 && ! DRY_RUN )) && [[ ! -e "$OUT/.run_group" ]]; then
  echo "$RLOOP_RUN_GROUP" > "$OUT/.run_group"
fi
export RLOOP_RUN_GROUP

# --- the settings record: node 0 writes OUT/.settings at the run's first start, every node checks it -----------
settings() { local v; for v in "${RECORDED[@]}"; do printf '%s=%q\n' "$v" "${!v}"; done; }  # one line each
if (( NODE_RANK > 0 && ! DRY_RUN )); then wait_for "$OUT/.settings"; fi
if [[ -e "$OUT/.settings" ]]; then
  was=() now=()
  while IFS= read -r line; do
    name=${line%%=*}
    [[ " ${RECORDED[*]} " == *" $name "* ]] || continue
    value=$(printf '%q' "${!name}")
    if [[ "${line#*=}" != "$value" ]]; then was+=("$line") now+=("$name=$value"); fi
  done < "$OUT/.settings"
  list() { local all=$1 x; shift; for x; do all+=", $x"; done; echo "$all"; }
  (( ${#was[@]} == 0 )) || die "$OUT was made with $(list "${was[@]}") ($OUT/.settings); this run has" \
    "$(list "${now[@]}"): rerun with the recorded settings, pick a new OUT, or delete $OUT/.settings to go on with" \
    "this run's"
elif (( NODE_RANK == 0 && ! DRY_RUN )); then
  settings > "$OUT/.settings.partial" && mv "$OUT/.settings.partial" "$OUT/.settings"
fi

echo "== RLoop $(date -u +%FT%TZ)$( (( DRY_RUN )) && echo " (dry run: nothing runs)")"\
"$( (( NNODES > 1 )) && echo " node $NODE_RANK of $NNODES")"
for v in "${VAR_NAMES[@]}" OMP_NUM_THREADS; do
  printf '   %-16s %s%s\n' "$v" "${!v:-}" "${FROM_ENV[$v]:+   (from the environment)}"
done

# --- stages -------------------------------------------------------------------------------------------------
declare -A DRY_DONE
finished() { [[ -e "$OUT/.done/$1" || -n "${DRY_DONE[$1]:-}" ]]; }  # finished NAME: stage NAME is done
# stage NAME WHERE CMD...: run CMD unless NAME finished before, and echo it. WHERE: all = every node runs CMD (a
# torchrun launch when distributed), 0 = node 0 runs it and the other nodes wait. Node 0 marks NAME done when CMD
# succeeds (the marker holds the stage's seconds: bench.py --sections walltime reads them); the other nodes wait
# for that marker before they go on. filter.py's exit 3 (nothing kept) is no failure: see nothing_kept.
stage() {
  local name=$1 where=$2 t0=$SECONDS rc=0; shift 2
  if finished "$name"; then echo "-- $name: done, skipped"; return 0; fi
  if [[ "$where" == 0 ]] && (( NODE_RANK > 0 )); then
    echo "-- $name: node 0 runs it"
    if (( DRY_RUN )); then DRY_DONE[$name]=1; else wait_for "$OUT/.done/$name"; fi
    return 0
  fi
  echo "+ $*"
  if (( DRY_RUN )); then DRY_DONE[$name]=1; return 0; fi
  RLOOP_STAGE=$name "$@" || rc=$?
  if (( rc == 3 )) && [[ "$name" == iter*-filter ]]; then
    nothing_kept "${name%-filter}"
  elif (( rc != 0 )); then
    exit "$rc"
  fi
  if (( NODE_RANK == 0 )); then echo $((SECONDS - t0)) > "$OUT/.done/$name"; else wait_for "$OUT/.done/$name"; fi
}
ckpt() { printf '%s/ckpt_%06d' "$1" "$2"; }  # ckpt DIR STEP -> the checkpoint folder explore.py writes
next_policy() {  # next_policy I: the policy iteration I hands on (its consolidated one unless its filter kept nothing)
  cat "$OUT/iter$1/next_policy" 2>/dev/null || echo "$OUT/iter$1/consolidated"
}
initial_policy() { if (( $1 == 1 )); then echo "$MODEL"; else next_policy $(($1 - 1)); fi; }
nothing_kept() {  # nothing_kept iterI: the filter kept nothing: the iteration hands on its initial policy, no RFT
  local i=${1#iter} policy
  policy=$(initial_policy "$i")
  echo "-- iter$i: the filter kept nothing; iteration $((i + 1)) starts again from $policy"
  echo "$policy" > "$OUT/iter$i/next_policy"
  echo 0 > "$OUT/.done/iter$i-consolidate"  # (before the filter's marker: the other nodes read both after it)
}
resampling() {  # HARVEST_ARGS asks harvest.py for fresh samples (--n-samples K > 0): a data-parallel stage
  local a prev=
  for a in $HARVEST_ARGS; do
    if [[ "$prev" == --n-samples && "$a" != 0 ]] || [[ "$a" =~ ^--n-samples=[1-9] ]]; then
      return 0
    fi
    prev=$a
  done
  return 1
}

# --- RLoop ---------------------------------------------------------------------------------------------
rloop() {
  local policy i it
  for ((i = 1; i <= ITERS * RLOOP; i++)); do
    it=$OUT/iter$i
    policy=$(initial_policy "$i")
    # shellcheck disable=SC2086  # *_ARGS and the launchers are deliberately word-split
    stage "iter$i-explore" all $TRAIN_LAUNCH explore.py --model "$policy" --data "$DATA" --out "$it/explore" \
      --rl-steps "$RL_STEPS" --save-every "$SAVE_EVERY" --seed $((SEED + i - 1)) --resume "${log_flag[@]}" $EXPLORE_ARGS
    if resampling; then
      # shellcheck disable=SC2086
      stage "iter$i-harvest" all $EVAL_LAUNCH harvest.py --run-dir "$it/explore" --out "$it/harvest" $HARVEST_ARGS
    else
      # shellcheck disable=SC2086
      stage "iter$i-harvest" 0 $PYTHON harvest.py --run-dir "$it/explore" --out "$it/harvest" $HARVEST_ARGS
    fi
    # shellcheck disable=SC2086
    stage "iter$i-filter" 0 $PYTHON filter.py --trajectories "$it/harvest" --out "$it/filter" --threshold "$THRESHOLD" \
      $FILTER_ARGS
    # shellcheck disable=SC2086
    stage "iter$i-consolidate" all $TRAIN_LAUNCH consolidate.py --model "$policy" --trajectories "$it/filter" \
      --out "$it/consolidated" --seed "$SEED" --resume "${log_flag[@]}" $CONSOLIDATE_ARGS
    if (( NODE_RANK == 0 && ! DRY_RUN )) && [[ ! -e "$it/next_policy" ]]; then
      echo "$it/consolidated" > "$it/next_policy"
    fi
  done
}

# --- vanilla RL at equal RL steps ------------------------------------------------------------------------
# Its first RL_STEPS steps ARE iteration 1's RL run: the same model, seed, data and flags (explore.py's data
# order, sampling seeds and constant-after-warm-up learning rate are functions of (seed, step)), and --resume
# ends with the weights an uninterrupted run ends with. So the run starts as a copy of iter1/explore (node 0
# copies, the other nodes wait for the copy).
vanilla() {
  if (( RLOOP )) && finished iter1-explore && [[ ! -e "$OUT/vanilla" ]] &&
     { (( DRY_RUN )) || [[ -d "$OUT/iter1/explore" ]]; }; then
    echo "-- vanilla: steps 1..$RL_STEPS are iter1/explore's (copied); it resumes from there"
    if (( DRY_RUN )); then
      :
    elif (( NODE_RANK == 0 )); then
      rm -rf "$OUT/vanilla.partial"
      $PYTHON -m lib.run.linkcopy "$OUT/iter1/explore" "$OUT/vanilla.partial"  # hard links for what is written once
      mv "$OUT/vanilla.partial" "$OUT/vanilla"
    else
      wait_for "$OUT/vanilla"
    fi
  fi
  # shellcheck disable=SC2086
  stage vanilla-explore all $TRAIN_LAUNCH explore.py --model "$MODEL" --data "$DATA" --out "$OUT/vanilla" \
    --rl-steps $((ITERS * RL_STEPS)) --save-every "$SAVE_EVERY" --seed "$SEED" --resume "${log_flag[@]}" $EXPLORE_ARGS
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
  finished "iter$1-consolidate" && [[ "$(next_policy "$1")" == "$OUT/iter$1/consolidated" ]]
}
policy_of() {  # policy_of NAME -> the folder evaluation NAME reads; fails while it is not trained, or if none
  local name=$1 i=${1#iter}
  i=${i%%-*}
  case $name in
    base) echo "$MODEL" ;;
    vanilla-*) finished vanilla-explore && ckpt "$OUT/vanilla" "${name#vanilla-}" ;;
    iter*-rl)  # (EVAL_ITERS=output: only when the last filter kept nothing, so that it is the output policy)
      finished "iter$i-explore" || return 1
      if [[ "$EVAL_ITERS" == output ]]; then finished "iter$i-consolidate" && ! consolidated "$i" || return 1; fi
      ckpt "$OUT/iter$i/explore" "$RL_STEPS" ;;
    iter*-rft) consolidated "$i" && echo "$OUT/iter$i/consolidated" ;;
  esac
}
# evaluations [NAME...]: every evaluation (or those named) whose policy is ready and, with two lanes, that the
# other lane did not take (a lane takes one by creating OUT/.claim/NAME); lane 1 calls it last, when every
# policy is ready
evaluations() {
  local name model
  for name in ${*:-$(eval_names)}; do
    model=$(policy_of "$name") || continue
    if (( lanes == 2 )); then mkdir "$OUT/.claim/$name" 2>/dev/null || continue; fi
    # shellcheck disable=SC2086
    stage "eval-$name" all $EVAL_LAUNCH evaluate.py --model "$model" --benchmarks "$BENCHMARKS" \
      --out "$OUT/eval/$name" --seed "$SEED" $EVAL_ARGS
  done
}

# --- the run ------------------------------------------------------------------------------------------
# JOBS=1: RLoop's iterations, vanilla RL, the evaluations, one after another (a dry run lists JOBS=2's stages
# in this order too).
# JOBS=2: lane 1 runs RLoop's iterations; lane 2 evaluates the base while iteration 1 explores, runs vanilla RL
# from iteration 1's copy, then takes evaluations as their policies become ready; lane 1 ends with the rest.
lanes=$JOBS lane=
if (( DRY_RUN )); then lanes=1; fi
if [[ "$MODEL" == toy ]] && (( JOBS == 2 || NNODES > 1 )); then  # the toy base, built once (cached) with every
  stage toy-base 0 env OMP_NUM_THREADS="$all_threads" MKL_NUM_THREADS="$all_threads" $PYTHON -m lib.worlds.toy  # core
fi
cleanup() {
  if [[ -n "$lane" ]]; then pkill -P "$lane" 2>/dev/null || true; kill "$lane" 2>/dev/null || true; fi
  if [[ -n "$beat" ]]; then kill "$beat" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if (( lanes == 2 )); then
  rm -rf "$OUT/.claim" && mkdir -p "$OUT/.claim"
  lane2() {
    evaluations base
    while ! finished iter1-explore; do
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
  PYTHONUNBUFFERED=1 lane2 > >(while IFS= read -r line; do printf '[lane 2] %s\n' "$line"; done) 2>&1 &
  lane=$!
fi
rloop
if (( lanes == 2 )); then touch "$OUT/.claim/.iterations-done"; fi
if (( lanes == 1 && VANILLA )); then vanilla; fi
evaluations
if [[ -n "$lane" ]]; then
  wait "$lane" || { lane=; echo "error: lane 2 failed (its lines above start with [lane 2])" >&2; exit 1; }
  lane=
fi
if (( lanes == 2 )); then rm -rf "$OUT/.claim"; fi

stage report 0 $PYTHON report.py "$OUT"
if (( DRY_RUN )); then echo "== dry run: nothing ran"; else echo "== done: $OUT/report/summary.md"; fi
