#!/usr/bin/env bash
# scripts/rollout_gap.sh — how far the rollout engine's probabilities are from the trainer's, per engine and dtype.
#
#   bash scripts/rollout_gap.sh [OUT]         # OUT=runs/rollout_gap; ~5 min on 2 cores once the venv exists
#   VENV=DIR RL_STEPS=5 bash scripts/rollout_gap.sh
#
# explore.py on the toy for RL_STEPS (3) steps in each setting below; every step logs rollout_probs_diff_mean and
# rollout_probs_diff_max (|p_engine - p_trainer| over the sampled tokens of the batch, verl's names). The table
# prints the mean of the per-step means and the largest per-step max. vLLM rows need a venv with vllm (VENV,
# default .venv-vllm: bash scripts/vllm_cpu_env.sh); without it they are skipped and say so.
#   engine  rollout dtype  trainer
#   hf      float32        fp32       the HF engine samples the policy itself: the floor (rounding only)
#   vllm    float32        fp32       vLLM in the trainer's dtype: a different kernel, the same numbers
#   hf      bfloat16       bf16       both in bf16 (--bf16: autocast)
#   vllm    bfloat16       fp32       a bf16 engine against an fp32 trainer
#   vllm    bfloat16       bf16       the full-scale setting: a bf16 engine, a bf16-autocast trainer
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/rollout_gap}
VENV=${VENV:-.venv-vllm}
RL_STEPS=${RL_STEPS:-3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-WARNING}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PYTHON:-python}
VPY=$VENV/bin/python
have_vllm=0
if [[ -x "$VPY" ]] && "$VPY" -c "import vllm" 2>/dev/null; then have_vllm=1; fi
mkdir -p "$OUT"
"$PY" -m lib.worlds.toy > /dev/null  # the toy base, once

rows=()
for setting in "hf float32 fp32" "vllm float32 fp32" "hf bfloat16 bf16" "vllm bfloat16 fp32" "vllm bfloat16 bf16"; do
  read -r engine dtype trainer <<< "$setting"
  name=$engine-$dtype-$trainer
  py=$PY
  if [[ $engine == vllm ]]; then
    if (( ! have_vllm )); then rows+=("$name skipped: no vllm in $VENV (bash scripts/vllm_cpu_env.sh)"); continue; fi
    py=$VPY
  fi
  bf16=--no-bf16
  [[ $trainer == bf16 ]] && bf16=--bf16
  rm -rf "${OUT:?}/$name"
  if ! "$py" explore.py --backend "$engine" --rollout-dtype "$dtype" "$bf16" --rl-steps "$RL_STEPS" \
       --save-every "$RL_STEPS" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; then
    rows+=("$name FAILED (log: $OUT/$name.log)")
    continue
  fi
  rows+=("$("$PY" - "$OUT/$name/metrics.jsonl" "$name" <<'EOF'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if '"rollout_probs_diff_mean"' in x]
means = [r["rollout_probs_diff_mean"] for r in rows if r["rollout_probs_diff_mean"] is not None]
peaks = [r["rollout_probs_diff_max"] for r in rows if r["rollout_probs_diff_max"] is not None]
print(f"{sys.argv[2]:<22} {sum(means) / len(means):>10.3g} {max(peaks):>10.3g} {len(means):>6}")
EOF
)")
done
printf '%-22s %10s %10s %6s\n' "engine-dtype-trainer" "mean" "max" "steps"
printf '%s\n' "${rows[@]}"
