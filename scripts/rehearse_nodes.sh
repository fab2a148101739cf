#!/usr/bin/env bash
# scripts/rehearse_nodes.sh — the whole loop across two "nodes" on one machine, on CPU: docs/scaling.md rehearsed.
#
#   bash scripts/rehearse_nodes.sh [OUT]      # default OUT=runs/rehearse_nodes; ~10 min on 2 cores
#
# Two `bash loop.sh` processes with NNODES=2, NPROC_PER_NODE=1 and NODE_RANK 0 / 1 play two nodes (torchrun's
# static rendezvous on localhost, gloo), on the toy at tiny sizes: ITERS=2, RL_STEPS=2, harvest --n-samples (so
# every kind of distributed stage runs), EVAL_ITERS=output. One PASS / FAIL line per check, exit 1 if any fails:
#   1. node 1 lost (SIGKILL to all its processes) during iteration 2's explore: node 0 fails by itself
#      within BOUND seconds
#   2. both relaunched with the same command: the loop finishes; the stages finished before the kill are skipped
#      (their markers untouched), the interrupted explore resumes from its checkpoint; node 1 launched only
#      distributed stages (never filter, report, the toy base build)
#   3. the same settings on ONE node with 2 processes, uninterrupted, make the same run: every RL metrics row
#      (times aside), every rollout, every checkpoint's weights, the harvest, the filter's output, every
#      evaluation's samples and numbers, file for file. So the kill and the relaunch left no rollout or sample
#      duplicated, torn or missing, and the world size is what matters, not where its ranks sit. (One process
#      would make another RL run: with 2 ranks explore samples through 2 rollout replicas, each with its own seed.)
#   4. evaluation does not depend on the ranks: the two-node run's evaluations equal a single process's
#      evaluate.py of the same policies (samples and numbers)
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/rehearse_nodes}
PYTHON=${PYTHON:-python}
PORT=${MASTER_PORT:-29531}
BOUND=${BOUND:-60}   # seconds node 0 may take to fail after node 1 dies
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
unset TRAIN_LAUNCH EVAL_LAUNCH JOBS NNODES NODE_RANK NPROC_PER_NODE MASTER_ADDR RLOOP_RUN_GROUP DRY_RUN
rm -rf "$OUT" && mkdir -p "$OUT"
eval_args="--n-samples 4 --limit 8 --max-new-tokens 48 --backend hf"
settings=(MODEL=toy DATA=toy BENCHMARKS=toy ITERS=2 RL_STEPS=2 SAVE_EVERY=1 THRESHOLD=1.0 EVAL_ITERS=output
  PYTHON="$PYTHON" MASTER_PORT="$PORT" NODE_TIMEOUT=60
  EXPLORE_ARGS="--prompts-per-step 8 --n-samples 4 --mini-batch 4 --micro-batch 16 --max-new-tokens 48
    --overlong-buffer 8 --max-gen-batches 2 --lr 1e-4 --warmup-steps 0 --backend hf"
  HARVEST_ARGS="--n-samples 2 --limit 16 --backend hf" CONSOLIDATE_ARGS="--epochs 1 --batch-size 8 --lr 1e-4"
  EVAL_ARGS="$eval_args")

fails=0
verdict() {  # verdict NAME RC [DETAIL]
  if (( $2 == 0 )); then echo "PASS  $1${3:+ ($3)}"; else echo "FAIL  $1${3:+ ($3)}"; fails=$((fails + 1)); fi
}
node() {  # node OUT K: node K of 2, in the background
  env "${settings[@]}" OUT="$1" NNODES=2 NODE_RANK="$2" NPROC_PER_NODE=1 bash loop.sh > "$1.node$2.out" 2>&1 &
}
lose() {  # lose PID: the machine PID runs on is lost: PID and every process below it die at once (SIGKILL). (A
  # process group is not enough: torchrun starts each worker in a session of its own.) The tree is frozen from the
  # top down first, so that no process escapes by starting a child in between.
  local all=("$1") new
  kill -STOP "$1" 2>/dev/null
  while :; do
    mapfile -t new < <(ps -o pid= --ppid "$(IFS=,; echo "${all[*]}")" | tr -d ' ' |
                       grep -vxF -f <(printf '%s\n' "${all[@]}"))
    (( ${#new[@]} )) || break
    kill -STOP "${new[@]}" 2>/dev/null
    all+=("${new[@]}")
  done
  kill -9 "${all[@]}" 2>/dev/null
}
two_nodes() {  # two_nodes OUT: both nodes, until both end; rc 0 if both succeed
  local a b rc=0
  node "$1" 0; a=$!
  node "$1" 1; b=$!
  wait "$a" || rc=1
  wait "$b" || rc=1
  return $rc
}
same_run() {  # same_run A B: every output of run A equals B's, times and the runs' own paths aside; says what differs
  $PYTHON - "$@" <<'EOF'
import json, sys
from pathlib import Path

import torch

a, b = Path(sys.argv[1]), Path(sys.argv[2])

def canon(x, root):
    """x with its run folder's path written OUT and every time (seconds, rates, run stamps, the byte size of a
    log that holds times) left out."""
    if isinstance(x, dict):
        return {k: canon(v, root) for k, v in x.items()
                if not ("seconds" in str(k) or "time" in str(k) or k in ("tokens_per_s", "_run", "metrics_bytes", "finished"))}
    if isinstance(x, (list, tuple)):
        return [canon(v, root) for v in x]
    if isinstance(x, str):
        return x.replace(str(root), "OUT")
    if isinstance(x, torch.Tensor):
        return (str(x.dtype), tuple(x.shape), x.numpy().tobytes())
    return x

def load(path: Path, root: Path):
    if path.suffix == ".json":
        return canon(json.loads(path.read_text()), root)
    if path.suffix == ".jsonl":
        return [canon(json.loads(line), root) for line in path.read_text().splitlines()]
    if path.suffix == ".pt":
        return canon(torch.load(path, weights_only=True), root)
    data = path.read_bytes()
    return data if path.suffix == ".safetensors" else data.replace(str(root).encode(), b"OUT")

def outputs(run: Path) -> list[Path]:  # (not: logs, markers, the report's plots, trackers)
    return sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and not p.name.startswith("loop.") and not {".done", "report", "tensorboard", "wandb"} & set(p.parts))

files, other = outputs(a), outputs(b)
diff = [str(f) for f in files if f not in other or load(a / f, a) != load(b / f, b)]
diff += [str(f) for f in other if f not in files]
kinds = {k: sum(str(f).endswith(k) for f in files) for k in ("rollouts.jsonl", "samples.jsonl", "model.safetensors",
                                                             "harvest.jsonl", "metrics.json")}
print(f"{len(files)} files compared ({', '.join(f'{v} {k}' for k, v in kinds.items())}); "
      f"{len(diff)} differ{': ' + ', '.join(diff[:6]) if diff else ''}")
sys.exit(1 if diff or not kinds["rollouts.jsonl"] or not kinds["samples.jsonl"] else 0)
EOF
}

t_all=$SECONDS
# --- 1. two nodes; node 1 dies during iteration 2's explore -------------------------------------------------------
A=$OUT/two_nodes t0=$SECONDS
node "$A" 0; n0=$!
node "$A" 1; n1=$!
until [[ -e "$A/iter2/explore/metrics.jsonl" ]] || ! kill -0 "$n0" 2>/dev/null; do sleep 0.5; done
lose "$n1"
t_kill=$SECONDS hung=0
while kill -0 "$n0" 2>/dev/null && (( SECONDS - t_kill <= BOUND )); do sleep 0.5; done
if kill -0 "$n0" 2>/dev/null; then lose "$n0"; hung=1; fi
{ wait "$n0"; rc0=$?; wait "$n1"; } 2>/dev/null  # (bash's "Killed" notices: expected here)
rc=0
(( hung == 0 && rc0 != 0 )) && [[ ! -e "$A/.done/iter2-explore" ]] || rc=1
verdict "node 1 lost during iteration 2's explore: node 0 fails by itself" $rc \
  "$((t_kill - t0)) s in; node 0 exit $rc0 $((SECONDS - t_kill)) s after the kill (bound $BOUND s)"

# --- 2. both relaunched with the same command ---------------------------------------------------------------------
declare -A before
for m in "$A"/.done/*; do before[$m]=$(stat -c %y "$m"); done
mv "$A.node0.out" "$A.node0.killed.out"; mv "$A.node1.out" "$A.node1.killed.out"
t0=$SECONDS
two_nodes "$A"; rc=$?
[[ -e "$A/report/summary.md" ]] || rc=1
for m in "${!before[@]}"; do
  [[ "$(stat -c %y "$m")" == "${before[$m]}" ]] || rc=1
  grep -q -- "-- $(basename "$m"): done, skipped" "$A.node0.out" || rc=1
done
grep -q "resuming" "$A.node0.out" || rc=1
launched=$(grep -c '^+ .*--node-rank 1 ' "$A.node1.out")
single=$(grep -c '^+ .*\(filter\.py\|report\.py\|lib\.toy\)' "$A.node1.out")
(( launched > 0 && single == 0 )) || rc=1
verdict "both relaunched: the loop finishes, ${#before[@]} finished stages skipped, explore resumed" $rc \
  "$((SECONDS - t0)) s; node 1 launched $launched distributed stages and $single single-process ones"

# --- 3. one node, two processes, uninterrupted: the same run ------------------------------------------------------
B=$OUT/one_node t0=$SECONDS
env "${settings[@]}" OUT="$B" NPROC_PER_NODE=2 bash loop.sh > "$B.out" 2>&1
rc=$?
detail=$(same_run "$A" "$B") || rc=1
verdict "one node x 2 processes, uninterrupted, makes the same run" $rc "$((SECONDS - t0)) s; $detail"

# --- 4. evaluation: 2 ranks on 2 nodes = 1 process ----------------------------------------------------------------
t0=$SECONDS rc=0 compared=
for dir in "$A"/eval/*/; do
  name=$(basename "$dir")
  model=$($PYTHON -c "import json,sys; print(json.load(open(sys.argv[1]))['model'])" "$dir/args.json")
  # shellcheck disable=SC2086
  $PYTHON evaluate.py --model "$model" --benchmarks toy --out "$OUT/one_process/$name" --seed 0 $eval_args \
    > "$OUT/one_process.$name.out" 2>&1 || rc=1
  cmp -s "$dir/samples.jsonl" "$OUT/one_process/$name/samples.jsonl" || rc=1
  $PYTHON - "$dir/metrics.json" "$OUT/one_process/$name/metrics.json" <<'EOF' || rc=1
import json, sys
m = [json.load(open(p)) for p in sys.argv[1:]]
for x in m:
    for b in x["benchmarks"].values():
        b.pop("seconds")
sys.exit(m[0] != m[1])
EOF
  compared+=" $name"
done
[[ -n "$compared" ]] || rc=1
verdict "evaluations on 2 nodes equal one process's evaluate.py" $rc \
  "$((SECONDS - t0)) s;$compared: samples and numbers"

echo "rehearsal: $fails failed, $((SECONDS - t_all)) s in all (logs: $OUT/*.out)"
exit $(( fails > 0 ))
