"""footprint.py — what a full-scale run needs: parameters, memory per GPU, and disk, from a model config and the
recipe's settings. Arithmetic only (no model is loaded); every figure the README's full-scale tables give comes
from this command with its defaults (Qwen2.5-Math-7B's shape; recipes/qwen2.5-math-7b-dapo.sh's values).

    python scripts/footprint.py                                  # the recipe: 8 GPUs, 3 x 200 steps, save every 20
    python scripts/footprint.py --config path/to/config.json --ranks 4 --keep-checkpoints last
The log-prob step's activation memory is measured, not computed: `python bench.py --sections memory`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

# Qwen2.5-Math-7B's config.json (the fields that size it)
QWEN25_MATH_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
GB = 1e9


def n_params(c: dict) -> int:
    """Decoder-only Qwen2: embeddings, per layer q/k/v (with biases) / o / gated MLP / two norms, final norm, head."""
    H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    kv = H // c["num_attention_heads"] * c["num_key_value_heads"]
    layer = (H * H + H) + 2 * (H * kv + kv) + H * H + 3 * H * I + 2 * H
    return V * H * (1 if c.get("tie_word_embeddings") else 2) + L * layer + H


def checkpoints(steps: int, save_every: int, keep: str) -> tuple[int, int]:
    """(folders kept, of which the newest) for one explore run under --keep-checkpoints."""
    saved = sorted(set(range(save_every, steps + 1, save_every)) | {steps})
    if keep == "all":
        return len(saved), 1
    if keep == "last":
        return 1, 1
    k = int(keep)
    return len([s for s in saved if s % k == 0 or s == saved[-1]]), 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", help="a model's config.json (default: Qwen2.5-Math-7B's shape)")
    p.add_argument("--ranks", type=int, default=8, help="FSDP ranks (GPUs)")
    p.add_argument("--iters", type=int, default=3, help="RLoop iterations")
    p.add_argument("--rl-steps", type=int, default=200, help="RL steps per iteration (vanilla: iters x rl-steps)")
    p.add_argument("--save-every", type=int, default=20, help="explore.py --save-every")
    p.add_argument("--keep-checkpoints", default="all", help="explore.py --keep-checkpoints: all | last | K")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 training: older checkpoints are rewritten in bf16 (the newest stays fp32)")
    p.add_argument("--vanilla", action=argparse.BooleanOptionalAction, default=True, help="count the vanilla run")
    p.add_argument("--rollouts-per-step", type=int, default=1536 * 16 * 2,
                   help="responses drawn (and logged) per RL step: gen batch 1536 x n 16 x ~2 generation batches")
    p.add_argument("--response-tokens", type=int, default=3000, help="mean response length in tokens (an assumption)")
    p.add_argument("--text-bytes", type=float, default=3.5, help="bytes of response text per token (an assumption)")
    p.add_argument("--ids-bytes", type=float, default=7.0, help="bytes per token id in JSON ('151643, ')")
    p.add_argument("--acc", type=float, default=0.5, help="share of correct responses (they carry their ids)")
    args = p.parse_args(argv)
    cfg = json.load(open(args.config)) if args.config else QWEN25_MATH_7B
    P = n_params(cfg)
    fp32, bf16 = 4 * P, 2 * P
    R = args.ranks
    print(f"parameters: {P / 1e9:.2f} B ({'config ' + args.config if args.config else 'Qwen2.5-Math-7B shape'})")
    print("\nmemory per GPU, before activations (FSDP shards weights, gradients and AdamW over the ranks):")
    rows = [("fp32 master weights", fp32 / R), ("fp32 gradients", fp32 / R), ("AdamW moments (2 x fp32)", 2 * fp32 / R),
            ("one layer's bf16 weights, gathered (FSDP unit in flight)", 2 * (P - 2 * cfg["vocab_size"] *
                                                                           cfg["hidden_size"]) / cfg["num_hidden_layers"]),
            ("vLLM engine bf16 weights (--tp 1; --sleep-mode offloads them during the update)", bf16)]
    for name, b in rows:
        print(f"  {name:<82} {b / GB:7.1f} GB")
    print(f"  {'training state in all (16 bytes / parameter / ranks)':<82} {16 * P / R / GB:7.1f} GB")

    runs = [args.rl_steps] * args.iters + ([args.iters * args.rl_steps] if args.vanilla else [])
    folders = newest = 0
    for steps in runs:
        f, n = checkpoints(steps, args.save_every, args.keep_checkpoints)
        folders, newest = folders + f, newest + n
    older = folders - newest
    weights = newest * fp32 + older * (bf16 if args.bf16 else fp32)
    resume = newest * 2 * fp32  # the newest folder of each run keeps AdamW's moments (its weights stay fp32)
    rollout = args.rollouts_per_step * args.response_tokens * (args.text_bytes + args.acc * args.ids_bytes)
    rl_steps = sum(runs)
    print(f"\ndisk: {len(runs)} explore runs ({' + '.join(map(str, runs))} steps), save every {args.save_every}, "
          f"--keep-checkpoints {args.keep_checkpoints}{', bf16' if args.bf16 else ''}:")
    print(f"  {'checkpoint folders kept':<60} {folders:7d}  ({newest} newest in fp32, {older} older in "
          f"{'bf16' if args.bf16 else 'fp32'})")
    print(f"  {'their weights':<60} {weights / GB:7.0f} GB  (fp32 folder {fp32 / GB:.1f} GB, bf16 {bf16 / GB:.1f} GB)")
    print(f"  {'resume states (AdamW moments, the newest folder of each run)':<60} {resume / GB:7.0f} GB")
    print(f"  {'rollouts.jsonl (every rollout; ids of the correct ones)':<60} {rollout * rl_steps / GB:7.0f} GB  "
          f"({rollout / GB:.2f} GB per step: {args.rollouts_per_step} responses x {args.response_tokens} tokens)")
    print(f"  {'total':<60} {(weights + resume + rollout * rl_steps) / GB:7.0f} GB")
    all_fp32 = sum(len(sorted(set(range(args.save_every, s + 1, args.save_every)) | {s})) for s in runs) * fp32
    print(f"  (every folder kept in fp32, as before --keep-checkpoints and bf16 folders: {all_fp32 / GB:.0f} GB of weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
