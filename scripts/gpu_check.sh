#!/usr/bin/env bash
# scripts/gpu_check.sh — the toy loop's stages on CUDA in bf16, with wall-clock timings (it has never run on a GPU:
# the timings are what it is for; a stage is stopped after STAGE_TIMEOUT seconds).
#
#   bash scripts/gpu_check.sh                 # OUT=runs/gpu_check; every stage's log in $OUT/<stage>.log
#
# Needs torch (CUDA), transformers, safetensors, tokenizers, numpy, tqdm, matplotlib, pandas, pyarrow; vLLM is
# optional (its rows run when it imports). One PASS / FAIL line per stage and per check, then a summary.
# 0. scripts/logprob_check.py: the chunked LM head against the full logits on CUDA (fp32 exact, bf16), and its peak
#    CUDA memory at Qwen2.5's vocabulary, T = 4096 and 16384, against the bound (1/4 of one fp32 [T, V])
# 1. explore.py  --backend hf   (HF engine, bf16 autocast training, shared-prompt forward, chunked log-probs)
# 2. explore.py  --backend vllm, then --backend vllm --sleep-mode   (when vllm imports)
# 3. harvest.py + filter.py (CPU) -> consolidate.py --bf16 on the explore run's successes
# 4. evaluate.py on the consolidated model, --backend hf (and vllm when it imports, with
#    scripts/vllm_sync_check.py: after sync_weights vLLM's greedy decode is the updated HF model's)
# 5. with >= 2 GPUs: the same under `torchrun --nproc_per_node 2` (FSDP2): explore hf, explore vllm
#    (one colocated engine per rank), consolidate
# The toy base is the cached one (runs/toy/, built by `python -m lib.worlds.toy`: 102 s on 2 CPU cores, README's
# Measured) or, when there is none, a quick 120-step one built into $OUT/base (weaker: the timings are what this
# check is for). A stage that fails is reported and the next one runs; the exit status
# is the number of failed stages.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/gpu_check}
STEPS=${STEPS:-4}                      # RL steps per explore run
STAGE_TIMEOUT=${STAGE_TIMEOUT:-240}    # seconds; a hung stage is killed and reported
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

rm -rf "$OUT" && mkdir -p "$OUT"
NGPU=$($PYTHON -c "import torch; print(torch.cuda.device_count())")
if (( NGPU < 1 )); then echo "error: no CUDA device visible to torch" >&2; exit 2; fi
HAS_VLLM=0; $PYTHON -c "import vllm" 2>/dev/null && HAS_VLLM=1
$PYTHON - <<'EOF'
import torch
print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
try:
    import vllm; print(f"vllm {vllm.__version__}")
except Exception as e:  # noqa: BLE001
    print(f"vllm: not importable ({type(e).__name__})")
EOF

declare -a SUMMARY=()
FAILED=0
# run NAME CMD...: time CMD, its output to $OUT/NAME.log, one summary line
run() {
  local name=$1; shift
  echo "+ $*"
  local t0=$SECONDS rc=0
  timeout "$STAGE_TIMEOUT" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local dt=$((SECONDS - t0)) status=PASS
  if (( rc != 0 )); then
    status="FAIL rc=$rc"; FAILED=$((FAILED + 1))
    tail -n 15 "$OUT/$name.log" | sed 's/^/    | /'
  fi
  SUMMARY+=("$(printf '%-24s %5ds  %s' "$name" "$dt" "$status")")
  echo "  $name: ${dt}s $status"
  return $rc
}
# the last metrics row of an explore run, in short
explore_tail() {
  [[ -f "$1/metrics.jsonl" ]] && $PYTHON - "$1/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = rows[-1]
print(f"    steps {len(rows)}, last: acc {r.get('mean_acc', r.get('acc'))}, updates {r['updates']}, gen {r['gen_time']:.2f}s, "
      f"step {r['step_time']:.2f}s, {r['tokens_per_s']:.0f} tok/s; mean step {sum(x['step_time'] for x in rows) / len(rows):.2f}s")
EOF
}

# --- the chunked log-probs on CUDA --------------------------------------------------------------------------
run logprob-check $PYTHON scripts/logprob_check.py --device cuda; sed 's/^/    /' "$OUT/logprob-check.log"

# --- the base policy -------------------------------------------------------------------------------------
BASE=$($PYTHON -c "
from lib.worlds import toy
p = toy.toy_dir(0) / 'base'
print(p if (p / 'config.json').exists() else '')")
if [[ -z "$BASE" ]]; then
  run toy-base-quick $PYTHON -c "
from pathlib import Path
from lib.worlds import toy
toy.build_base(Path('$OUT/base'), steps=120, quiet=True)" && BASE=$OUT/base
fi
[[ -n "$BASE" ]] || { echo "error: no toy base model"; exit 1; }
echo "base: $BASE"
TOY="--model $BASE --data toy --device cuda --bf16 --rl-steps $STEPS --save-every $STEPS"

# --- one GPU ---------------------------------------------------------------------------------------------
# shellcheck disable=SC2086
run explore-hf $PYTHON explore.py $TOY --backend hf --out "$OUT/explore_hf"; explore_tail "$OUT/explore_hf"
if (( HAS_VLLM )); then
  # shellcheck disable=SC2086
  run explore-vllm $PYTHON explore.py $TOY --backend vllm --gpu-memory-utilization 0.3 --out "$OUT/explore_vllm"
  explore_tail "$OUT/explore_vllm"
  # shellcheck disable=SC2086
  run explore-vllm-sleep $PYTHON explore.py $TOY --backend vllm --gpu-memory-utilization 0.3 --sleep-mode \
    --out "$OUT/explore_vllm_sleep"
  explore_tail "$OUT/explore_vllm_sleep"
fi

run harvest $PYTHON harvest.py --run-dir "$OUT/explore_hf" --out "$OUT/harvest"
run filter $PYTHON filter.py --trajectories "$OUT/harvest" --out "$OUT/filter" --threshold 1.0
if [[ -s "$OUT/filter/rft.jsonl" ]]; then
  run consolidate $PYTHON consolidate.py --model "$BASE" --trajectories "$OUT/filter" --out "$OUT/consolidated" \
    --epochs 1 --device cuda --bf16 && tail -n 1 "$OUT/consolidate.log" | sed 's/^/    /'
  POLICY=$OUT/consolidated
else
  echo "  (no successful trajectory to consolidate on: evaluating the base)"
  POLICY=$BASE
fi
run evaluate-hf $PYTHON evaluate.py --model "$POLICY" --benchmarks toy --limit 64 --n-samples 4 --device cuda --backend hf \
  --out "$OUT/eval_hf" && grep -i "mean_acc\|average" "$OUT/evaluate-hf.log" | tail -n 3 | sed 's/^/    /'
if (( HAS_VLLM )); then
  run vllm-sync-check $PYTHON scripts/vllm_sync_check.py; tail -n 1 "$OUT/vllm-sync-check.log" | sed 's/^/    /'
  run evaluate-vllm $PYTHON evaluate.py --model "$POLICY" --benchmarks toy --limit 64 --n-samples 4 --backend vllm \
    --gpu-memory-utilization 0.3 --out "$OUT/eval_vllm" && grep -i "mean_acc\|average" "$OUT/evaluate-vllm.log" | tail -n 3 | sed 's/^/    /'
fi

# --- two GPUs: torchrun + FSDP2 ----------------------------------------------------------------------------
if (( NGPU >= 2 )); then
  TR="$PYTHON -m torch.distributed.run --standalone --nproc_per_node 2"
  # shellcheck disable=SC2086
  run torchrun-explore-hf $TR explore.py $TOY --backend hf --out "$OUT/tr_explore_hf"; explore_tail "$OUT/tr_explore_hf"
  if (( HAS_VLLM )); then
    # shellcheck disable=SC2086
    run torchrun-explore-vllm $TR explore.py $TOY --backend vllm --gpu-memory-utilization 0.3 --sleep-mode \
      --out "$OUT/tr_explore_vllm"
    explore_tail "$OUT/tr_explore_vllm"
  fi
  if [[ -s "$OUT/filter/rft.jsonl" ]]; then
    run torchrun-consolidate $TR consolidate.py --model "$BASE" --trajectories "$OUT/filter" \
      --out "$OUT/tr_consolidated" --epochs 1 --device cuda --bf16
  fi
else
  echo "(one GPU: the torchrun stages are skipped)"
fi

echo
echo "== gpu_check: $NGPU GPU(s), vllm $HAS_VLLM"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
