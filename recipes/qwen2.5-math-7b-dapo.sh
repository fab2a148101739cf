#!/usr/bin/env bash
# recipes/qwen2.5-math-7b-dapo.sh — RLoop at full scale: Qwen2.5-Math-7B on DAPO-Math-17k, the paper's 3 x 200 RL
# steps, with DAPO's settings (verl's DAPO recipe), torchrun + FSDP2 over the node's GPUs and colocated vLLM rollouts.
#
#   pip install -r requirements-gpu.txt
#   bash recipes/qwen2.5-math-7b-dapo.sh                  # one node, 8 GPUs
#   RL_STEPS=100 NPROC=4 TP=2 bash recipes/qwen2.5-math-7b-dapo.sh       # any value, by environment variable
#
# One node: loop.sh runs harvest, filter and evaluate as single processes between the torchrun stages, so it does
# not span nodes (README, "Scaling out", has the multi-node torchrun commands for explore.py and consolidate.py).
#
# Every value below is an environment variable with DAPO's value as its default; the recipe turns them into the
# stages' flags and runs loop.sh. scripts/rehearse.sh runs THIS file on CPU with the sizes shrunk (a miniature of
# Qwen2.5-Math-7B's vocabulary, special tokens and short context; 2 gloo ranks; the HF engine in place of vLLM), so
# the flags a user launches are the flags that were rehearsed. What was and was not run where: README, "Full scale".
set -euo pipefail
cd "$(dirname "$0")/.."

# --- what -------------------------------------------------------------------------------------------------
MODEL=${MODEL:-Qwen/Qwen2.5-Math-7B}                 # folder or hub id
DATA=${DATA:-BytedTsinghua-SIA/DAPO-Math-17k}         # parquet file or hub id (1.79M rows, 17,917 distinct)
# benchmarks as NAME=SOURCE[@SPLIT]: hub ids with the splits their cards list (no hub is reachable from the machines
# this was written on: not checked), or local JSONL files in the plain {problem, answer} schema
EVAL=${EVAL:-aime24=HuggingFaceH4/aime_2024@train,aime25=yentinglin/aime_2025@train,amc23=math-ai/amc23@test,math500=HuggingFaceH4/MATH-500@test,minerva=math-ai/minervamath@test}
OUT=${OUT:-runs/qwen2.5-math-7b-dapo}
SEED=${SEED:-0}
ITERS=${ITERS:-3}                 # RLoop iterations
RL_STEPS=${RL_STEPS:-200}         # RL steps per iteration (the paper: ~600 in all); vanilla RL runs ITERS x RL_STEPS
SAVE_EVERY=${SAVE_EVERY:-20}      # checkpoint interval: the intermediate policies harvest.py can sample
KEEP_CHECKPOINTS=${KEEP_CHECKPOINTS:-all}   # 'all' | 'last' | K (see explore.py --keep-checkpoints)
THRESHOLD=${THRESHOLD:-0.1}       # hard problems: 0 < success < 10%
VANILLA=${VANILLA:-1}             # the vanilla-RL baseline at equal RL steps

# --- launch -----------------------------------------------------------------------------------------------
NPROC=${NPROC:-8}                 # processes (GPUs) on the node
PYTHON=${PYTHON:-python}
TRAIN_LAUNCH=${TRAIN_LAUNCH:-torchrun --nproc_per_node $NPROC}   # explore.py and consolidate.py

# --- rollouts (DAPO) --------------------------------------------------------------------------------------
BACKEND=${BACKEND:-vllm}          # vllm (GPU) | hf
PROMPTS_PER_STEP=${PROMPTS_PER_STEP:-512}
GEN_BATCH=${GEN_BATCH:-1536}      # prompts per generation batch: 3x the train batch (dynamic sampling draws more)
MAX_GEN_BATCHES=${MAX_GEN_BATCHES:-10}
N=${N:-16}                        # responses per prompt
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-20480}
OVERLONG_BUFFER=${OVERLONG_BUFFER:-4096}   # soft penalty over the last 4096 tokens before the cap
MAX_MODEL_LEN=${MAX_MODEL_LEN:-32768}      # Qwen2.5-Math-7B's config says 4096; DAPO raises it to 32768
TEMPERATURE=${TEMPERATURE:-1.0}
TOP_P=${TOP_P:-1.0}
REWARD=${REWARD:-dapo}            # dapo | math_verify | path/to/file.py:function
GPU_MEM=${GPU_MEM:-0.4}           # vLLM's share of each GPU (the trainer lives there too)
TP=${TP:-1}                       # vLLM tensor parallel size (ranks per engine)
SLEEP_MODE=${SLEEP_MODE:-1}       # vLLM: free the engine's memory during the update

# --- optimisation (DAPO) ----------------------------------------------------------------------------------
MINI_BATCH=${MINI_BATCH:-32}      # prompts per optimiser update: 16 updates per step
MICRO_BATCH=${MICRO_BATCH:-4}     # sequences per forward/backward
LR=${LR:-1e-6}
WARMUP=${WARMUP:-10}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.1}
GRAD_CLIP=${GRAD_CLIP:-1.0}
BF16=${BF16:-1}                   # bf16 compute, fp32 master weights and AdamW states
GRAD_CKPT=${GRAD_CKPT:-1}         # activation checkpointing: 20k-token responses

# --- consolidation (RFT) ----------------------------------------------------------------------------------
RFT_LR=${RFT_LR:-1e-5}
RFT_EPOCHS=${RFT_EPOCHS:-2}
RFT_BATCH=${RFT_BATCH:-64}
RFT_MICRO=${RFT_MICRO:-2}
RFT_MAX_LEN=${RFT_MAX_LEN:-$MAX_MODEL_LEN}
MAX_PER_PROBLEM=${MAX_PER_PROBLEM:-8}

# --- evaluation -------------------------------------------------------------------------------------------
EVAL_N=${EVAL_N:-32}              # avg@32, pass@k up to 32
EVAL_TOP_P=${EVAL_TOP_P:-0.7}
EVAL_REWARD=${EVAL_REWARD:-math_verify}   # symbolic equivalence: comparable with published scores
EVAL_GPU_MEM=${EVAL_GPU_MEM:-0.85}
LOGGER=${LOGGER:-}                # e.g. tensorboard,wandb

flag() { (( $1 )) && echo "$2" || echo "${3:-}"; }
vllm_only() { [[ "$BACKEND" == vllm ]] && echo "$1" || true; }

EXPLORE_ARGS="--backend $BACKEND --prompts-per-step $PROMPTS_PER_STEP --gen-batch-size $GEN_BATCH \
--max-gen-batches $MAX_GEN_BATCHES --n-responses $N --max-new-tokens $MAX_NEW_TOKENS --overlong-buffer $OVERLONG_BUFFER \
--max-model-len $MAX_MODEL_LEN --temperature $TEMPERATURE --top-p $TOP_P --reward $REWARD \
--mini-batch $MINI_BATCH --micro-batch $MICRO_BATCH --lr $LR --warmup-steps $WARMUP --weight-decay $WEIGHT_DECAY \
--grad-clip $GRAD_CLIP $(flag "$BF16" --bf16 --no-bf16) $(flag "$GRAD_CKPT" --grad-checkpointing) \
--keep-checkpoints $KEEP_CHECKPOINTS --gpu-memory-utilization $GPU_MEM $(vllm_only "--tp $TP") \
$(vllm_only "$(flag "$SLEEP_MODE" --sleep-mode)") ${EXTRA_EXPLORE_ARGS:-}"
HARVEST_ARGS="${EXTRA_HARVEST_ARGS:-}"
FILTER_ARGS="--max-per-problem $MAX_PER_PROBLEM ${EXTRA_FILTER_ARGS:-}"
CONSOLIDATE_ARGS="--lr $RFT_LR --epochs $RFT_EPOCHS --batch-size $RFT_BATCH --micro-batch $RFT_MICRO \
--max-len $RFT_MAX_LEN $(flag "$BF16" --bf16 --no-bf16) $(flag "$GRAD_CKPT" --grad-checkpointing) ${EXTRA_CONSOLIDATE_ARGS:-}"
EVAL_ARGS="--backend $BACKEND --n $EVAL_N --temperature 1.0 --top-p $EVAL_TOP_P --max-new-tokens $MAX_NEW_TOKENS \
--max-model-len $MAX_MODEL_LEN --reward $EVAL_REWARD --gpu-memory-utilization $EVAL_GPU_MEM ${EXTRA_EVAL_ARGS:-}"

export MODEL DATA EVAL OUT SEED ITERS RL_STEPS SAVE_EVERY THRESHOLD VANILLA PYTHON TRAIN_LAUNCH LOGGER \
  EXPLORE_ARGS HARVEST_ARGS FILTER_ARGS CONSOLIDATE_ARGS EVAL_ARGS
exec bash loop.sh
