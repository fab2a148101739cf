#!/usr/bin/env bash
# recipes/qwen2.5-math-7b-dapo.sh — RLoop at full scale: Qwen2.5-Math-7B on DAPO-Math-17k, the paper's 3 x 200 RL
# steps with verl's DAPO settings for this model, torchrun + FSDP2 over every GPU, colocated vLLM rollouts.
#
#   bash recipes/qwen2.5-math-7b-dapo.sh --help                    # every variable: default, meaning, origin
#   DRY_RUN=1 bash recipes/qwen2.5-math-7b-dapo.sh                 # the values, footprint's estimate, the stage
#                                                                  # commands in order; runs and writes nothing
#   SMOKE=1 bash recipes/qwen2.5-math-7b-dapo.sh                   # every stage at the smallest sizes: run it first
#   bash recipes/qwen2.5-math-7b-dapo.sh                           # one node, 8 GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash recipes/qwen2.5-math-7b-dapo.sh   # node 0 of 2; node 1 the same
#                                                                  # with NODE_RANK=1, OUT on a shared filesystem
#   PRESET=dapo-32b-lengths bash recipes/qwen2.5-math-7b-dapo.sh   # DAPO's 32B lengths: 20,480-token responses
#   RL_STEPS=100 NPROC=4 TP=2 bash recipes/qwen2.5-math-7b-dapo.sh # any value, by its variable
#
# Every value is an environment variable; each default says where it comes from: "verl 7B" (verl's
# recipe/dapo/test_dapo_7b_math.sh, DAPO on Qwen2.5-Math-7B), "DAPO 32B" (recipe/dapo/run_dapo_qwen2.5_32b.sh),
# "paper" (arXiv 2511.04285) or "ours" (with why). The recipe turns them into the stages' flags and runs loop.sh,
# which runs explore, consolidate, evaluate (and harvest --n-samples) under torchrun over NNODES x NPROC GPUs, and
# harvest, filter and the report as one process on node 0. A variable this file does not list is not read: loop.sh's
# others (JOBS, EVAL_ITERS, TRAIN_LAUNCH, ...) are unset before it starts, with a note when the shell sets one. The
# values in use are printed first. scripts/rehearse.sh runs THIS file on CPU with the sizes shrunk (both presets and
# the smoke run); docs/full-scale.md has the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- presets: what differs between them, one entry each (every other default is shared) --------------------
declare -A PRESETS=(
  # verl 7B: responses <= 8,192 tokens; generation batch = the train batch (main_ppo draws 512 prompts a round)
  [dapo-7b]="MAX_NEW_TOKENS=8192 GEN_BATCH_SIZE=512 MICRO_BATCH=4"
  # DAPO 32B: responses <= 20,480 (16,384 + the 4,096 buffer), generation batches of 3 x 512 prompts; ours: half the
  # sequences per forward, so a micro-batch holds about as many tokens as dapo-7b's (verl 32B halves its token budget)
  [dapo-32b-lengths]="MAX_NEW_TOKENS=20480 GEN_BATCH_SIZE=1536 MICRO_BATCH=2"
)
# the smoke run (SMOKE=1): the whole chain on the real model and data at the smallest sizes, in its own OUT: 2 RL
# steps of 16 prompts x 4 responses of <= 1,024 tokens, one iteration, validation and evaluation on 8 problems per
# benchmark x 2 samples; THRESHOLD=1.0 so that the filter keeps successes and RFT runs. It wins over the preset.
SMOKE_SIZES="OUT=runs/qwen2.5-math-7b-dapo-smoke ITERS=1 RL_STEPS=2 SAVE_EVERY=1 THRESHOLD=1.0 DATA_LIMIT=64
  PROMPTS_PER_STEP=16 GEN_BATCH_SIZE=16 MAX_GEN_BATCHES=2 N_SAMPLES=4 MINI_BATCH=8 MAX_NEW_TOKENS=1024
  OVERLONG_BUFFER=256 EVAL_EVERY=1 EVAL_LIMIT=8 EVAL_N_SAMPLES=2 RFT_EPOCHS=1 RFT_BATCH=16 BENCH_LIMIT=8
  BENCH_N_SAMPLES=2"
declare -A PRESET_VALUE SMOKE_VALUE MEANING FROM
FROM[PRESET]=$([[ -n "${PRESET+set}" ]] && echo environment || echo default)
PRESET=${PRESET:-dapo-7b}
if [[ -z "${PRESETS[$PRESET]+set}" ]]; then
  echo "error: PRESET=$PRESET: expected one of: ${!PRESETS[*]}" >&2
  exit 2
fi
for kv in ${PRESETS[$PRESET]}; do PRESET_VALUE[${kv%%=*}]=${kv#*=}; done
FROM[SMOKE]=$([[ -n "${SMOKE+set}" ]] && echo environment || echo default)
SMOKE=${SMOKE:-0}
if [[ ! "$SMOKE" =~ ^[01]$ ]]; then echo "error: SMOKE=$SMOKE: expected 0 or 1" >&2; exit 2; fi
if (( SMOKE )); then for kv in $SMOKE_SIZES; do SMOKE_VALUE[${kv%%=*}]=${kv#*=}; done; fi
NAMES=(PRESET SMOKE)
MEANING[PRESET]="dapo-7b (verl 7B) | dapo-32b-lengths (DAPO 32B's response cap and generation batch)"
MEANING[SMOKE]="1 = the smoke run: every stage at the smallest sizes, in its own OUT (run it before the long run)"
var() {  # var NAME DEFAULT MEANING: $NAME from the environment, else the smoke run's, else the preset's, else DEFAULT
  local name=$1
  NAMES+=("$name")
  MEANING[$name]=$3
  if [[ -n "${!name+set}" ]]; then
    FROM[$name]=environment
  elif [[ -n "${SMOKE_VALUE[$name]+set}" ]]; then
    printf -v "$name" '%s' "${SMOKE_VALUE[$name]}"
    FROM[$name]=smoke
  elif [[ -n "${PRESET_VALUE[$name]+set}" ]]; then
    printf -v "$name" '%s' "${PRESET_VALUE[$name]}"
    FROM[$name]="preset $PRESET"
  else
    printf -v "$name" '%s' "$2"
    FROM[$name]=default
  fi
}

# --- what -----------------------------------------------------------------------------------------------------
var MODEL Qwen/Qwen2.5-Math-7B "initial policy: folder or hub id (verl 7B)"
var DATA BytedTsinghua-SIA/DAPO-Math-17k "RL prompts: parquet file or hub id (verl 7B; 1.79M rows, 17,917 distinct)"
var DATA_LIMIT 0 "train on the first N problems of DATA only (0 = all)"
var OUT runs/qwen2.5-math-7b-dapo "output folder of the whole loop"
var SEED 0 "data order and sampling seed"
var ITERS 3 "RLoop iterations (paper)"
var RL_STEPS 200 "RL steps per iteration; vanilla RL runs ITERS x RL_STEPS (verl 7B: 200 steps; paper: 3 x 200)"
var SAVE_EVERY 10 "checkpoint every N RL steps: a resume point (verl 7B: save_freq 10)"
var KEEP_CHECKPOINTS "$RL_STEPS" "checkpoint folders kept: all | last | K = multiples of K and the newest (ours: \
= RL_STEPS, the folders evaluation reads; harvest reads the logged rollouts)"
var THRESHOLD 0.1 "hard problems: 0 < success rate < THRESHOLD (paper)"
var MAX_PER_PROBLEM 8 "RFT successes kept per hard problem (ours: no problem dominates the RFT set)"
var VANILLA 1 "1 = the vanilla-RL baseline at equal RL steps (paper)"

# --- launch: loop.sh builds every launcher, PYTHON -m torch.distributed.run over NNODES x NPROC processes ---------
var NPROC 8 "GPUs (processes) per node (ours: one node; verl 7B ran 8 nodes x 8)"
var NNODES 1 "nodes: each runs this recipe with the same values but NODE_RANK, OUT on a filesystem all see \
(docs/scaling.md)"
var NODE_RANK 0 "this node's rank, 0..NNODES-1 (node 0 runs harvest, filter and the report)"
var MASTER_ADDR 127.0.0.1 "node 0's address, reachable from every node (torchrun's static rendezvous)"
var MASTER_PORT 29500 "a free port on node 0"
var NODE_TIMEOUT 600 "seconds a node > 0 waits on a silent node 0, then fails"
var PYTHON python "Python of the stages (torchrun: its torch.distributed.run)"

# --- rollouts -------------------------------------------------------------------------------------------------
var BACKEND vllm "rollout engine: vllm (GPU) | hf"
var PROMPTS_PER_STEP 512 "prompts trained on per RL step (verl 7B: train_prompt_bsz)"
var GEN_BATCH_SIZE 512 "prompts per generation batch (preset; verl 7B: the train batch; DAPO 32B: 1536)"
var DYNAMIC_SAMPLING 1 "1 = drop groups whose responses all score alike, draw more until PROMPTS_PER_STEP \
(DAPO 32B: filter_groups on acc; verl 7B runs main_ppo, which has none: 0 reproduces it; ours: on, it is DAPO)"
var MAX_GEN_BATCHES 10 "cap on generation batches per step; when hit the step trains on fewer prompts, counted \
(DAPO 32B: max_num_gen_batches)"
var N_SAMPLES 16 "responses per prompt (verl 7B: n_resp_per_prompt)"
var MAX_PROMPT_LEN 2048 "prompts longer than this many tokens are dropped at load time, one line counting them \
(verl 7B: max_prompt_length 2048; ours: dropped, where verl 7B cuts them on the left, data.truncation=left)"
var MAX_NEW_TOKENS 8192 "response cap in tokens (preset; verl 7B: 8192; DAPO 32B: 20480)"
var OVERLONG_BUFFER 4096 "overlong penalty ramp over the last N tokens before the cap (verl 7B)"
var OVERLONG_FACTOR 1.0 "overlong penalty at the cap (verl 7B: overlong_penalty_factor)"
var MAX_MODEL_LEN 32768 "context in tokens; Qwen2.5-Math-7B's config says 4096 (verl 7B: \
override_config.max_position_embeddings=32768)"
var TEMPERATURE 1.0 "sampling temperature (verl 7B)"
var TOP_P 1.0 "nucleus sampling (verl 7B)"
var REWARD dapo "RL verifier: dapo | math_verify | file.py:function (verl 7B: reward_manager dapo)"
# GPU_MEM's default, scripts/footprint.py's arithmetic: the share of an 80 GB GPU the trainer leaves while vLLM samples
# (it keeps fp32 weights and AdamW's moments, 12 B x Qwen2.5-Math-7B's 7,615,616,512 parameters / NPROC), less a
# margin of 0.1 (8 GB) for what the footprint does not count: the CUDA context, NCCL's buffers, the weight push's
# largest gathered tensor (the fp32 embedding, 2.2 GB, and its bf16 copy) and fragmentation; at least 0.1
gpu_mem_default() {
  awk -v n="$NPROC" 'BEGIN { f = 1 - 12 * 7615616512 / n / 80e9 - 0.1; printf "%.2f", f < 0.1 ? 0.1 : f }'
}
var GPU_MEM "$(gpu_mem_default)" "vLLM's share of each GPU while it samples beside the trainer (ours: what \
scripts/footprint.py finds fits on an 80 GB GPU beside the trainer's resident weights and AdamW state, less 0.1 for \
the CUDA context, NCCL, the weight push and fragmentation: 0.76 at NPROC=8; verl 7B offloads the trainer and gives 0.8)"
var TP 1 "vLLM tensor-parallel ranks per engine (ours: a 7B engine fits one GPU)"
var SLEEP_MODE 1 "1 = vLLM frees its GPU memory during the update (ours)"

# --- optimisation ---------------------------------------------------------------------------------------------
var MINI_BATCH 32 "prompts per optimiser update: 16 updates per step (verl 7B: train_prompt_mini_bsz)"
var MICRO_BATCH 4 "sequences per forward/backward on a rank (preset; ours: bounds activation memory)"
var LR 1e-6 "AdamW learning rate (verl 7B)"
var WARMUP_STEPS 10 "linear warm-up steps, then constant (verl 7B: lr_warmup_steps)"
var WEIGHT_DECAY 0.1 "AdamW weight decay (verl 7B)"
var GRAD_CLIP 1.0 "gradient-norm clip (verl 7B)"
var EPS_LOW 0.2 "lower clip: ratio >= 1 - EPS_LOW (verl 7B: clip_ratio_low)"
var EPS_HIGH 0.28 "upper clip: ratio <= 1 + EPS_HIGH (verl 7B: clip_ratio_high)"
var CLIP_RATIO_C 10 "dual clip for negative advantages (verl 7B: clip_ratio_c)"
var LOSS_AGG token-mean "loss aggregation (verl 7B: loss_agg_mode)"
var ROLLOUT_IS none "sampler/trainer mismatch correction: none, token or sequence (verl's \
algorithm.rollout_correction.rollout_is; its default: off)"
var ROLLOUT_IS_THRESHOLD 2.0 "its truncation of the importance weights (verl: rollout_is_threshold, default 2.0)"
var BF16 1 "1 = bf16 compute, fp32 master weights and AdamW states (ours)"
var GRAD_CKPT 1 "1 = activation checkpointing (verl 7B: enable_gradient_checkpointing)"

# --- validation during RL (explore.py --eval-*) and tracking -------------------------------------------------
var EVAL_BENCHMARKS aime24=HuggingFaceH4/aime_2024@train "validation set, NAME=SOURCE[@SPLIT],... (verl 7B: \
AIME-2024); empty = no validation"
var EVAL_EVERY 10 "validate every N RL steps and at the last (verl 7B: test_freq 10)"
var EVAL_BEFORE_TRAIN 1 "1 = validate each RL run's initial policy too, at step 0 (verl 7B: val_before_train)"
var EVAL_N_SAMPLES 32 "validation samples per problem (ours: avg@32; verl 7B: n 1 per row of its AIME file)"
var EVAL_LIMIT 0 "validate on the first N problems of each set only (0 = all)"
var EVAL_TEMPERATURE 1.0 "validation temperature (verl 7B: val_kwargs.temperature)"
var EVAL_TOP_P 0.7 "validation nucleus sampling (verl 7B: val_kwargs.top_p)"
var LOGGER tensorboard "live tracking of explore and consolidate: tensorboard, wandb or both (ours; verl 7B: \
wandb). wandb: one group per loop run, a run per stage"

# --- consolidation (RFT) --------------------------------------------------------------------------------------
var RFT_LR 1e-5 "RFT learning rate (ours)"
var RFT_EPOCHS 2 "RFT epochs over the filtered set (ours)"
var RFT_BATCH 64 "RFT sequences per optimiser step (ours)"
var RFT_MICRO 2 "RFT sequences per forward/backward (ours)"
var RFT_MAX_LEN "$MAX_MODEL_LEN" "RFT context in tokens (ours: = MAX_MODEL_LEN)"

# --- evaluation (evaluate.py under torchrun, every GPU: the base, every iteration, vanilla every RL_STEPS) -------
var BENCHMARKS aime24=HuggingFaceH4/aime_2024@train,aime25=yentinglin/aime_2025@train,amc23=math-ai/amc23@test,\
math500=HuggingFaceH4/MATH-500@test,minerva=math-ai/minervamath@test "held-out benchmarks, NAME=SOURCE[@SPLIT],... \
(ours: hub ids with the splits their cards list)"
var BENCH_N_SAMPLES 32 "samples per problem: avg@32, pass@k up to 32 (ours)"
var BENCH_LIMIT 0 "evaluate the first N problems of each benchmark only (0 = all)"
var BENCH_TEMPERATURE 1.0 "evaluation temperature (verl 7B's validation)"
var BENCH_TOP_P 0.7 "evaluation nucleus sampling (verl 7B's validation)"
var BENCH_REWARD math_verify "evaluation verifier (ours: symbolic equivalence, comparable with published scores)"
var BENCH_GPU_MEM 0.85 "vLLM's share of each GPU in evaluation (ours: nothing else on it)"

# --- anything else: flags appended to a stage's, as they are ---------------------------------------------------
var EXTRA_EXPLORE_ARGS "" "more explore.py flags (e.g. --kl-coef 0.001)"
var EXTRA_HARVEST_ARGS "" "more harvest.py flags (e.g. --n-samples 8)"
var EXTRA_FILTER_ARGS "" "more filter.py flags"
var EXTRA_CONSOLIDATE_ARGS "" "more consolidate.py flags"
var EXTRA_EVAL_ARGS "" "more evaluate.py flags (e.g. --limit 50)"

usage() {
  echo "usage: [VAR=value ...] bash $0 [--help | --vars]"
  echo "  DRY_RUN=1: print the values, footprint's estimate and loop.sh's stage commands, run nothing"
  echo "  --vars: the resolved values as NAME=VALUE lines (scripts/footprint.py reads them)"
  echo
  echo "presets (PRESET=NAME): the values each one sets"
  local p name
  for p in $(printf '%s\n' "${!PRESETS[@]}" | sort -r); do printf '  %-18s %s\n' "$p" "${PRESETS[$p]}"; done
  echo "the smoke run (SMOKE=1): the values it sets, over the preset's"
  printf '  %s\n' "$(echo $SMOKE_SIZES)"
  echo
  echo "variables: NAME  value under PRESET=$PRESET$( (( SMOKE )) && echo " SMOKE=1") ('environment' where your shell sets" \
    "it), then its meaning (origin)"
  for name in "${NAMES[@]}"; do
    printf '  %-18s %s\n  %-18s %s\n' "$name" "${!name}$([[ ${FROM[$name]} == environment ]] && echo "  (environment)")" \
      "" "${MEANING[$name]}"
  done
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --vars) for name in "${NAMES[@]}"; do printf '%s=%q\n' "$name" "${!name}"; done; exit 0 ;;
  "") ;;
  *) echo "error: unknown argument '$1' (values are environment variables; see --help)" >&2; exit 2 ;;
esac

# every value in use, and where it came from
echo "== recipes/qwen2.5-math-7b-dapo.sh (PRESET=$PRESET$( (( SMOKE )) && echo ", SMOKE=1: the smoke run"))"
for name in "${NAMES[@]}"; do printf '   %-18s %-40s %s\n' "$name" "${!name}" "(${FROM[$name]})"; done

flag() { (( $1 )) && echo "$2" || echo "${3:-}"; }
vllm_only() { [[ "$BACKEND" == vllm ]] && echo "$1" || true; }
validation=""
if [[ -n "$EVAL_BENCHMARKS" ]]; then
  validation="--eval-benchmarks $EVAL_BENCHMARKS --eval-every $EVAL_EVERY --eval-n-samples $EVAL_N_SAMPLES \
--eval-temperature $EVAL_TEMPERATURE --eval-top-p $EVAL_TOP_P $(flag "$EVAL_BEFORE_TRAIN" --eval-before-train) \
$(flag "$EVAL_LIMIT" "--eval-limit $EVAL_LIMIT")"
fi

EXPLORE_ARGS="--backend $BACKEND --prompts-per-step $PROMPTS_PER_STEP --gen-batch-size $GEN_BATCH_SIZE \
$(flag "$DYNAMIC_SAMPLING" --dynamic-sampling --no-dynamic-sampling) --max-gen-batches $MAX_GEN_BATCHES \
--n-samples $N_SAMPLES --max-prompt-len $MAX_PROMPT_LEN --max-new-tokens $MAX_NEW_TOKENS \
--overlong-buffer $OVERLONG_BUFFER --overlong-factor $OVERLONG_FACTOR --max-model-len $MAX_MODEL_LEN \
--temperature $TEMPERATURE --top-p $TOP_P --reward $REWARD --mini-batch $MINI_BATCH --micro-batch $MICRO_BATCH \
--lr $LR --warmup-steps $WARMUP_STEPS --weight-decay $WEIGHT_DECAY --grad-clip $GRAD_CLIP --eps-low $EPS_LOW \
--eps-high $EPS_HIGH --clip-ratio-c $CLIP_RATIO_C --loss-agg $LOSS_AGG --rollout-is $ROLLOUT_IS \
--rollout-is-threshold $ROLLOUT_IS_THRESHOLD $(flag "$BF16" --bf16 --no-bf16) \
$(flag "$GRAD_CKPT" --grad-checkpointing) --keep-checkpoints $KEEP_CHECKPOINTS --gpu-memory-utilization $GPU_MEM \
$(vllm_only "--tp $TP") $(vllm_only "$(flag "$SLEEP_MODE" --sleep-mode)") $(flag "$DATA_LIMIT" "--limit $DATA_LIMIT") \
$validation $EXTRA_EXPLORE_ARGS"
HARVEST_ARGS="$EXTRA_HARVEST_ARGS"
FILTER_ARGS="--max-per-problem $MAX_PER_PROBLEM $EXTRA_FILTER_ARGS"
CONSOLIDATE_ARGS="--lr $RFT_LR --epochs $RFT_EPOCHS --batch-size $RFT_BATCH --micro-batch $RFT_MICRO \
--max-model-len $RFT_MAX_LEN $(flag "$BF16" --bf16 --no-bf16) $(flag "$GRAD_CKPT" --grad-checkpointing) \
$EXTRA_CONSOLIDATE_ARGS"
EVAL_ARGS="--backend $BACKEND --n-samples $BENCH_N_SAMPLES --temperature $BENCH_TEMPERATURE --top-p $BENCH_TOP_P \
--max-prompt-len $MAX_PROMPT_LEN --max-new-tokens $MAX_NEW_TOKENS --max-model-len $MAX_MODEL_LEN \
--reward $BENCH_REWARD --gpu-memory-utilization $BENCH_GPU_MEM $(flag "$BENCH_LIMIT" "--limit $BENCH_LIMIT") \
$EXTRA_EVAL_ARGS"
NPROC_PER_NODE=$NPROC DRY_RUN=${DRY_RUN:-0}

# what loop.sh is handed; its other variables are unset, so that a shell's JOBS, TRAIN_LAUNCH, ... never reach it
HANDED=(MODEL DATA BENCHMARKS OUT SEED ITERS RL_STEPS SAVE_EVERY THRESHOLD VANILLA PYTHON LOGGER NNODES NODE_RANK
        MASTER_ADDR MASTER_PORT NODE_TIMEOUT NPROC_PER_NODE EXPLORE_ARGS HARVEST_ARGS FILTER_ARGS CONSOLIDATE_ARGS
        EVAL_ARGS DRY_RUN)
for v in $(sed -n 's/^var \([A-Z_0-9]*\) .*/\1/p' loop.sh); do
  [[ " ${HANDED[*]} " == *" $v "* ]] && continue
  if [[ -n "${!v+set}" ]]; then echo "   note: $v is set in the environment and not read (the recipe unsets it)"; fi
  unset "$v"
done
export "${HANDED[@]}"
if [[ "$DRY_RUN" != 0 ]]; then
  echo "   what loop.sh is handed:"
  for v in EXPLORE_ARGS HARVEST_ARGS FILTER_ARGS CONSOLIDATE_ARGS EVAL_ARGS; do printf '   %-18s %s\n' "$v" "${!v}"; done
  echo
  "$PYTHON" scripts/footprint.py --preset "$PRESET"
  echo
fi
exec bash loop.sh
