#!/usr/bin/env bash
# scripts/rehearse.sh — the full-scale recipe (recipes/qwen2.5-math-7b-dapo.sh), run on CPU with its sizes shrunk,
# under both its presets, and its smoke run (SMOKE=1) at the smoke run's own sizes.
#
#   bash scripts/rehearse.sh [OUT]          # default OUT=runs/rehearse; ~10 min on 2 cores
#   FAST=1 bash scripts/rehearse.sh OUT     # the test suite's: one process instead of torchrun, no vanilla run,
#                                           # a 2,048-entry vocabulary (same layout) instead of 152,064, and the
#                                           # first preset only (the second adds ~1 min)
#
# What stays real: the recipe file and every flag it passes (only values change); Qwen2.5-Math-7B's vocabulary
# (152,064), its special tokens (<|endoftext|> eos, ChatML turns ending in <|im_end|>, a generation config stopping on
# both) and a config context (256) shorter than prompt + response, so --max-model-len is what makes the run work;
# DAPO-Math-17k's parquet schema with repeated rows; plain {problem, answer} benchmarks; validation during RL before
# training and every step; TensorBoard tracking; torchrun with 2 ranks (gloo, FSDP2); bf16 training (autocast; older
# checkpoints rewritten in bf16); gradient checkpointing; math-verify scoring for evaluation; with BACKEND=vllm (a venv
# with vLLM's CPU build: PYTHON=.venv-vllm/bin/python, as scripts/vllm_cpu_check.sh runs it) vLLM samples, else the HF
# engine. What is not: CUDA, NCCL, vLLM on a GPU, the model's size.
# The second preset (PRESET=dapo-32b-lengths; not with FAST=1) runs shrunk the same way, with what differs between
# the presets kept different: a longer response cap, a larger generation batch, a smaller micro-batch (and the
# recipe's own KEEP_CHECKPOINTS = RL_STEPS).
# The smoke run (SMOKE=1) runs with its own sizes (two RL steps, one iteration, RFT, vanilla, four evaluations on 8
# problems per benchmark) and only what the miniature and the CPU need set: the model, data and benchmarks, the HF
# engine, the processes.
# Then it checks what it can, one line each (exit 1 if any fails):
#   - the stages all finished and the report exists, under each preset; a rerun of the recipe skips every stage
#   - the smoke run ran every stage: explore, harvest, filter, consolidate (RFT trained), vanilla, four evaluations,
#     the report
#   - the prompt cap's line, validation at step 0, the generation-batch cap's count at the end of each RL run
#   - without --max-model-len the same recipe stops before any weight loads, with one line naming the flag
#   - checkpoints, the consolidated policy load with from_pretrained, and carry the raised context
#   - RFT trains on sequences ending with <|im_end|>, the stop token the policy sampled (not the eos_token)
#   - the older checkpoint's weights are bf16, the newest's fp32 with the resume state
#   - the largest process's peak memory stays under PEAK_GB
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/rehearse}
PYTHON=${PYTHON:-python}
FAST=${FAST:-0}
BACKEND=${BACKEND:-hf}  # hf | vllm (vLLM's CPU build in PYTHON's venv)
PEAK_GB=${PEAK_GB:-3}   # bound on the largest single process (measured: see docs/full-scale.md)
if (( FAST )); then VOCAB=${VOCAB:-2048}; else VOCAB=${VOCAB:-152064}; fi   # the fast variant: a small vocabulary
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

FIX=$($PYTHON scripts/miniature.py --out "$OUT/fixtures" --vocab-size "$VOCAB" | tail -n 1) || { echo "FAIL building the miniature"; exit 1; }
RUN=$OUT/run
RUN2=$OUT/run-dapo-32b-lengths
RUN_SMOKE=$OUT/run-smoke
rm -rf "$RUN" "$RUN2" "$RUN_SMOKE"
# one process, or torchrun over 2 (loop.sh's launcher: PYTHON -m torch.distributed.run, gloo on CPU)
if (( FAST )); then nproc=1 vanilla=0; else nproc=2 vanilla=1; fi
# where the run is: the miniature's model, data and benchmarks, on this CPU
where=(MODEL="$FIX/model" DATA="$FIX/train.parquet" BENCHMARKS="a=$FIX/bench_a.jsonl,b=$FIX/bench_b.jsonl"
  EVAL_BENCHMARKS="a=$FIX/bench_a.jsonl" PYTHON="$PYTHON" BACKEND="$BACKEND" NPROC=$nproc
  MASTER_PORT="${MASTER_PORT:-29517}")
# the recipe's values, shrunk for 2 CPU cores (every flag stays); the miniature's prompts have 293 tokens
shrunk=("${where[@]}" EVAL_EVERY=1 EVAL_N_SAMPLES=2 OUT="$RUN"
  ITERS=1 RL_STEPS=2 SAVE_EVERY=1 KEEP_CHECKPOINTS=all VANILLA=$vanilla THRESHOLD=0.5
  PROMPTS_PER_STEP=4 GEN_BATCH_SIZE=4 MAX_GEN_BATCHES=2 N_SAMPLES=4
  MAX_PROMPT_LEN=300 MAX_NEW_TOKENS=40 OVERLONG_BUFFER=8 MAX_MODEL_LEN=512 MINI_BATCH=2 MICRO_BATCH=4 LR=1e-4
  WARMUP_STEPS=0 RFT_LR=1e-4 RFT_EPOCHS=1 RFT_BATCH=4 RFT_MICRO=2 MAX_PER_PROBLEM=2 BENCH_N_SAMPLES=2)
# the second preset: longer responses, larger generation batches, fewer sequences per forward than the first's, and
# the recipe's own KEEP_CHECKPOINTS (= RL_STEPS: the newest folder only here)
shrunk2=(PRESET=dapo-32b-lengths OUT="$RUN2" MAX_NEW_TOKENS=100 GEN_BATCH_SIZE=8 MICRO_BATCH=2 VANILLA=0)
for kv in "${shrunk[@]}"; do [[ " ${shrunk2[*]%%=*} KEEP_CHECKPOINTS " == *" ${kv%%=*} "* ]] || shrunk2+=("$kv"); done
fails=0
check() {  # check NAME CMD...: one PASS / FAIL line
  local name=$1; shift
  if "$@" > "$OUT/check.log" 2>&1; then
    echo "PASS  $name"
  else
    echo "FAIL  $name"; sed 's/^/      | /' "$OUT/check.log" | tail -n 8; fails=$((fails + 1))
  fi
}
fail_without_flag() {  # the recipe without --max-model-len must stop at once, naming the flag, writing nothing
  local out rc=0
  out=$(env "${shrunk[@]}" OUT="$OUT/noflag" MAX_MODEL_LEN=0 bash recipes/qwen2.5-math-7b-dapo.sh 2>&1) || rc=$?
  (( rc != 0 )) && grep -q -- "--max-model-len" <<<"$out" && ! ls "$OUT"/noflag/iter1/explore/ckpt_* >/dev/null 2>&1 \
    && grep -q "exceed" <<<"$out"
}

rerun_skips() {  # the same recipe again: every stage is found finished, none runs a command
  env "${shrunk[@]}" bash recipes/qwen2.5-math-7b-dapo.sh > "$OUT/rerun.log" 2>&1 &&
    ! grep -q '^+ ' "$OUT/rerun.log" && grep -q 'done, skipped' "$OUT/rerun.log"
}

# run_recipe LOG PEAK_JSON VAR=VALUE...: the recipe under those values, its largest process's peak RSS recorded
run_recipe() {
  local log=$1 peak=$2; shift 2
  $PYTHON - "$peak" env "$@" bash recipes/qwen2.5-math-7b-dapo.sh <<'EOF' > "$log" 2>&1
import json, resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest descendant's peak RSS
json.dump({"rc": rc, "peak_bytes": peak}, open(sys.argv[1], "w"))
sys.exit(rc)
EOF
}
# run_logs LOG RUN: the lines the recipe's defaults add: prompt cap, validation at step 0, the cap's count
run_logs() {
  grep -q "dropped 0 of 16 prompts longer than 300 tokens (--max-prompt-len)" "$1" &&
    grep -q "a: dropped 0 of 6 prompts longer than 300 tokens" "$1" &&
    grep -q "the generation-batch cap was hit on [0-9]* of 2 steps (--max-gen-batches 2)" "$1" &&
    head -n 1 "$2/iter1/explore/metrics.jsonl" | grep -q '"step": 0, "val/a/mean_acc"' &&
    ls "$2"/iter1/explore/tensorboard/events.* > /dev/null
}

t0=$SECONDS
run_recipe "$OUT/recipe.log" "$OUT/peak.json" "${shrunk[@]}"
rc=$?
echo "recipe (PRESET=dapo-7b): rc $rc in $((SECONDS - t0)) s (log: $OUT/recipe.log)"
if (( rc != 0 )); then tail -n 30 "$OUT/recipe.log"; echo "FAIL  the recipe ran"; exit 1; fi
echo "PASS  the recipe ran every stage (report: $RUN/report/summary.md)"
check "the prompt cap's line, validation at step 0, the cap's count, TensorBoard" run_logs "$OUT/recipe.log" "$RUN"

t1=$SECONDS
check "a rerun skips every stage" rerun_skips
echo "      (rerun: $((SECONDS - t1)) s)"
check "without --max-model-len: one line, before any weight loads" fail_without_flag
check "checkpoints load, carry the context, bf16 older / fp32 newest; RFT ends on <|im_end|>; peak < ${PEAK_GB} GB" \
  $PYTHON - "$RUN" "$OUT/peak.json" "$PEAK_GB" "$VOCAB" <<'EOF'
import json, sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

run, peak, bound = Path(sys.argv[1]), json.load(open(sys.argv[2]))["peak_bytes"], float(sys.argv[3])
vocab = int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(run / "iter1/explore/ckpt_000002")
eot, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
assert tok.eos_token_id == eos != eot, (tok.eos_token, eot)
for folder in [run / "iter1/explore/ckpt_000001", run / "iter1/explore/ckpt_000002", run / "iter1/consolidated"]:
    if not folder.exists():
        continue
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert m.config.max_position_embeddings == 512 and m.config.vocab_size == vocab, (folder, m.config)
    print(f"{folder.name}: loads, context {m.config.max_position_embeddings}")
dtypes = lambda f: {s.get_slice(k).get_dtype() for s in [safe_open(str(f / "model.safetensors"), "pt")] for k in s.keys()}
assert dtypes(run / "iter1/explore/ckpt_000001") == {"BF16"}, dtypes(run / "iter1/explore/ckpt_000001")
assert dtypes(run / "iter1/explore/ckpt_000002") == {"F32"} and (run / "iter1/explore/ckpt_000002/resume").is_dir()
rft = run / "iter1/filter/rft.jsonl"
if rft.exists():
    rows = [json.loads(l) for l in rft.read_text().splitlines() if l.strip()]
    assert rows and all(r["response_ids"][-1] == eot for r in rows if r["finish_reason"] == "stop"), rows[:2]
    assert all(eos not in r["response_ids"] for r in rows)
    assert (run / "iter1/consolidated/config.json").exists()
    print(f"rft.jsonl: {len(rows)} sequences, every stopped one ends with <|im_end|> ({eot})")
else:
    print("rft.jsonl: the filter kept nothing (no RFT this time)")
print(f"peak RSS of the largest process: {peak / 2**30:.2f} GB (bound {bound} GB)")
assert peak < bound * 2**30
EOF
sed -n '/peak RSS/p;/rft.jsonl/p' "$OUT/check.log" | sed 's/^/      /'

# --- the smoke run: SMOKE=1's own sizes, on the miniature ---------------------------------------------------------
smoke_ran() {  # every stage's marker; RFT trained (iteration 1 hands on its consolidated policy); the smoke's sizes
  local m
  for m in iter1-explore iter1-harvest iter1-filter iter1-consolidate vanilla-explore eval-base eval-iter1-rl \
           eval-iter1-rft eval-vanilla-2 report; do
    [[ -e "$RUN_SMOKE/.done/$m" ]] || { echo "no marker $m"; return 1; }
  done
  [[ "$(cat "$RUN_SMOKE/iter1/next_policy")" == "$RUN_SMOKE/iter1/consolidated" ]] || { echo "no RFT"; return 1; }
  grep -q "(PRESET=dapo-7b, SMOKE=1: the smoke run)" "$OUT/recipe-smoke.log" &&
    $PYTHON -c "import json, sys; a = json.load(open(sys.argv[1])); print(a); \
assert (a['rl_steps'], a['limit'], a['n_samples'], a['max_new_tokens']) == (2, 64, 4, 1024)" \
      "$RUN_SMOKE/iter1/explore/args.json"
}
t3=$SECONDS
run_recipe "$OUT/recipe-smoke.log" "$OUT/peak-smoke.json" SMOKE=1 "${where[@]}" OUT="$RUN_SMOKE"
rc=$?
echo "recipe (SMOKE=1): rc $rc in $((SECONDS - t3)) s (log: $OUT/recipe-smoke.log)"
if (( rc != 0 )); then
  tail -n 30 "$OUT/recipe-smoke.log"; echo "FAIL  the smoke run ran"; fails=$((fails + 1))
else
  check "SMOKE=1: every stage at the smoke run's sizes (RFT trained, vanilla, 4 evaluations, the report)" smoke_ran
fi

if (( FAST )); then
  echo "rehearsal: $fails failed, $((SECONDS - t0)) s in all (FAST=1: PRESET=dapo-7b and the smoke run)"
  exit $(( fails > 0 ))
fi
t2=$SECONDS
run_recipe "$OUT/recipe-dapo-32b-lengths.log" "$OUT/peak2.json" "${shrunk2[@]}"
rc=$?
echo "recipe (PRESET=dapo-32b-lengths): rc $rc in $((SECONDS - t2)) s (log: $OUT/recipe-dapo-32b-lengths.log)"
if (( rc != 0 )); then
  tail -n 30 "$OUT/recipe-dapo-32b-lengths.log"; echo "FAIL  the recipe ran under PRESET=dapo-32b-lengths"; fails=$((fails + 1))
else
  echo "PASS  the recipe ran every stage under PRESET=dapo-32b-lengths (report: $RUN2/report/summary.md)"
  check "PRESET=dapo-32b-lengths: its lengths and batches reach explore; KEEP_CHECKPOINTS = RL_STEPS keeps the newest" \
    $PYTHON - "$RUN2" "$OUT/recipe-dapo-32b-lengths.log" <<'EOF'
import json, sys
from pathlib import Path

run, log = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
args = json.loads((run / "iter1/explore/args.json").read_text())
got = {k: args[k] for k in ("max_new_tokens", "gen_batch_size", "micro_batch", "keep_checkpoints", "max_prompt_len")}
assert got == {"max_new_tokens": 100, "gen_batch_size": 8, "micro_batch": 2, "keep_checkpoints": 2,
               "max_prompt_len": 300}, got
assert "(PRESET=dapo-32b-lengths)" in log and "MAX_NEW_TOKENS     100" in log
assert [d.name for d in sorted((run / "iter1/explore").glob("ckpt_*"))] == ["ckpt_000002"]
assert "the generation-batch cap was hit on" in log
EOF
  check "PRESET=dapo-32b-lengths: the prompt cap's line, validation at step 0, the cap's count, TensorBoard" \
    run_logs "$OUT/recipe-dapo-32b-lengths.log" "$RUN2"
fi
echo "rehearsal: $fails failed, $((SECONDS - t0)) s in all"
exit $(( fails > 0 ))
