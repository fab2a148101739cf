"""footprint.py — an ESTIMATE, on paper, of what a full run of the recipe needs: GPU memory per rank, host memory per
node, the disk every file of the run takes, and GPU-hours per RL step and for the whole loop, with the arithmetic
shown.

The run's values are the recipe's own: the script reads `bash recipes/qwen2.5-math-7b-dapo.sh --vars` under the same
environment, so `PRESET=...`, `NPROC=4`, `KEEP_CHECKPOINTS=all` change them exactly as they change the recipe. The
model's shape is Qwen2.5-Math-7B's config.json (or --config). What no file fixes (response lengths, accuracy, MFU,
...) is an assumption: a flag, printed beside the figures it feeds. Arithmetic only: nothing loads, nothing runs,
and nothing of this has been measured on a GPU.

    python scripts/footprint.py                                       # PRESET=dapo-7b
    python scripts/footprint.py --preset dapo-32b-lengths
    NPROC=4 KEEP_CHECKPOINTS=all python scripts/footprint.py          # any recipe variable
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `lib` importable from the repo root
    sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "qwen2.5-math-7b-dapo.sh"
# Qwen2.5-Math-7B's config.json (the fields that size it)
QWEN25_MATH_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
# problems per benchmark source (their hub cards); another source counts as --bench-problems
BENCH_SIZES = {"HuggingFaceH4/aime_2024": 30, "yentinglin/aime_2025": 30, "math-ai/amc23": 40,
               "HuggingFaceH4/MATH-500": 500, "math-ai/minervamath": 272}
GB = 1e9


def n_params(c: dict) -> int:
    """Decoder-only Qwen2: embeddings, per layer q/k/v (with biases) / o / gated MLP / two norms, final norm, head."""
    H, I, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    kv = kv_dim(c)
    layer = (H * H + H) + 2 * (H * kv + kv) + H * H + 3 * H * I + 2 * H
    return V * H * (1 if c.get("tie_word_embeddings") else 2) + L * layer + H


def kv_dim(c: dict) -> int:
    return c["hidden_size"] // c["num_attention_heads"] * c["num_key_value_heads"]


@dataclass
class Recipe:
    """The recipe's values this estimate reads (recipes/qwen2.5-math-7b-dapo.sh --vars)."""
    preset: str
    nproc: int
    iters: int
    rl_steps: int
    save_every: int
    keep: str
    vanilla: bool
    prompts: int  # PROMPTS_PER_STEP
    gen_batch: int
    dynamic: bool
    max_gen_batches: int
    n: int
    max_prompt: int
    max_new: int
    mini_batch: int
    micro_batch: int
    bf16: bool
    grad_ckpt: bool
    gpu_mem: float
    tp: int
    eval_benchmarks: str
    eval_every: int
    eval_before: bool
    eval_n: int
    benchmarks: str
    bench_n: int
    rft_epochs: int
    max_per_problem: int
    backend: str
    sleep_mode: bool

    @classmethod
    def from_vars(cls, v: dict) -> Recipe:
        i = lambda k: int(v[k])  # noqa: E731
        return cls(v["PRESET"], i("NPROC"), i("ITERS"), i("RL_STEPS"), i("SAVE_EVERY"), v["KEEP_CHECKPOINTS"],
                   bool(i("VANILLA")), i("PROMPTS_PER_STEP"), i("GEN_BATCH_SIZE"), bool(i("DYNAMIC_SAMPLING")),
                   i("MAX_GEN_BATCHES"), i("N_SAMPLES"), i("MAX_PROMPT_LEN"), i("MAX_NEW_TOKENS"), i("MINI_BATCH"),
                   i("MICRO_BATCH"), bool(i("BF16")), bool(i("GRAD_CKPT")), float(v["GPU_MEM"]), i("TP"),
                   v["EVAL_BENCHMARKS"], i("EVAL_EVERY"), bool(i("EVAL_BEFORE_TRAIN")), i("EVAL_N_SAMPLES"),
                   v["BENCHMARKS"], i("BENCH_N_SAMPLES"), i("RFT_EPOCHS"), i("MAX_PER_PROBLEM"), v["BACKEND"],
                   bool(i("SLEEP_MODE")))


def recipe_vars(preset: str | None = None, env: dict | None = None) -> dict:
    """The recipe's resolved values (its --vars), under `env` (default: this process's) and PRESET=preset."""
    env = dict(os.environ if env is None else env)
    if preset:
        env["PRESET"] = preset
    out = subprocess.run(["bash", str(RECIPE), "--vars"], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr.strip() or f"{RECIPE} --vars failed")
    return dict(line.split("=", 1) for line in (shlex.split(x)[0] for x in out.stdout.splitlines() if x))


# --- the arithmetic: pure functions of the recipe, the shape and the assumptions --------------------------------


def gen_batches(r: Recipe, kept_share: float) -> int:
    """Generation batches per step: until PROMPTS_PER_STEP groups pass the filter (kept_share of each batch, with
    dynamic sampling; all of them without), at most MAX_GEN_BATCHES."""
    need = math.ceil(r.prompts / (r.gen_batch * (kept_share if r.dynamic else 1.0)))
    return min(need, r.max_gen_batches) if r.max_gen_batches else need


def record_bytes(overhead: int, prompt_tok: float, resp_tok: float, text_bpt: float, ids_bpt: float,
                 acc: float) -> float:
    """One trajectory record in JSONL: its fixed fields, the prompt and response text, and the sampled ids of a
    correct response (share acc)."""
    return overhead + (prompt_tok + resp_tok) * text_bpt + acc * resp_tok * ids_bpt


def record_overhead() -> int:
    """Bytes of a rollouts.jsonl record without its texts: the field names and short values, as lib/run/records
    writes them (measured on an empty record: the format itself, not an assumption)."""
    from lib.run.records import Trajectory

    t = Trajectory("a" * 16, "", "", -1.0, False, pred="12", ground_truth="12", prompt_tokens=200,
                   response_tokens=2000, step=100, source="explore")
    return len(json.dumps({**t.to_dict(), "kept": True}).encode()) + 1


def forward_flops(P: int, c: dict, S: float) -> float:
    """One forward pass over a sequence of S tokens: 2 FLOPs per parameter per token, plus causal attention
    (QK^T and AV: 2 x L x D x S^2, D = heads x head_dim = hidden)."""
    return 2 * P * S + 2 * c["num_hidden_layers"] * c["hidden_size"] * S * S


def decode_flops(P: int, c: dict, p: float, r: float) -> float:
    """Sampling r tokens after a p-token prompt: 2 P per token of both, plus attention over the growing context
    (4 x L x D x t FLOPs for the token at position t: 2LDp^2 for the prefill, 4LD(pr + r^2/2) for the decode)."""
    L, D = c["num_hidden_layers"], c["hidden_size"]
    return 2 * P * (p + r) + 2 * L * D * p * p + 4 * L * D * (p * r + r * r / 2)


def checkpoint_folders(steps: int, save_every: int, keep: str) -> int:
    """Folders an explore run of `steps` steps leaves under --keep-checkpoints (the newest among them)."""
    saved = sorted(set(range(save_every, steps + 1, save_every)) | {steps})
    if keep == "all":
        return len(saved)
    if keep == "last":
        return 1
    return len([s for s in saved if s % int(keep) == 0 or s == saved[-1]])


def bench_problems(spec: str, default: int) -> int:
    """Problems in NAME=SOURCE[@SPLIT],...: the known hub sets' sizes, `default` for any other."""
    if not spec:
        return 0
    return sum(BENCH_SIZES.get(item.split("=", 1)[-1].split("@")[0], default) for item in spec.split(","))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", default=None, help="the recipe's PRESET (default: $PRESET, else the recipe's default)")
    a("--config", default="", help="a model's config.json (default: Qwen2.5-Math-7B's shape)")
    g = p.add_argument_group("assumptions (nothing here has been measured at this scale)")
    g.add_argument("--gpu-gb", type=float, default=80, help="GPU memory in GB (H100 / H800: 80; H200: 141)")
    g.add_argument("--peak-tflops", type=float, default=989, help="dense bf16 peak per GPU (H100 / H200 SXM: 989)")
    g.add_argument("--mfu", type=float, default=0.3, help="training's share of the peak (FSDP2, bf16, checkpointing)")
    g.add_argument("--gen-mfu", type=float, default=0.1,
                   help="generation's share of the peak (decode is memory-bound: weights and KV cache reads)")
    g.add_argument("--response-frac", type=float, default=0.25,
                   help="mean response length as a share of MAX_NEW_TOKENS (training and evaluation)")
    g.add_argument("--prompt-tokens", type=float, default=200, help="mean prompt tokens (DAPO's template + problem)")
    g.add_argument("--kept-share", type=float, default=0.5,
                   help="share of groups that pass dynamic sampling (a spread of accuracy among the n responses)")
    g.add_argument("--acc", type=float, default=0.5, help="share of correct responses (their records carry ids)")
    g.add_argument("--text-bytes", type=float, default=3.5, help="bytes of text per token, JSON-escaped")
    g.add_argument("--ids-bytes", type=float, default=7.0, help="bytes per token id in JSON ('151645, ')")
    g.add_argument("--problems", type=int, default=17917, help="distinct RL problems (DAPO-Math-17k: 17,917)")
    g.add_argument("--hard-share", type=float, default=0.15,
                   help="share of problems the filter keeps (0 < success < THRESHOLD, at least one success)")
    g.add_argument("--bench-problems", type=int, default=500, help="problems of a benchmark of unknown size")
    args = p.parse_args(argv)
    print(report(Recipe.from_vars(recipe_vars(args.preset)),
                 json.load(open(args.config)) if args.config else QWEN25_MATH_7B, args))
    return 0


def report(r: Recipe, c: dict, a) -> str:
    """The whole estimate as text: every figure with the arithmetic that gives it."""
    out: list[str] = []
    say = out.append
    P = n_params(c)
    R, H, L, V, I, kv = (r.nproc, c["hidden_size"], c["num_hidden_layers"], c["vocab_size"],
                         c["intermediate_size"], kv_dim(c))
    gb = lambda b: f"{b / GB:,.1f} GB"  # noqa: E731
    W = 56  # label column
    say(f"ESTIMATE (arithmetic, not a measurement; nothing here has run on a GPU) — PRESET={r.preset}, {R} GPUs "
        f"of {a.gpu_gb:g} GB, {P / 1e9:.2f} B parameters ({a.config or 'Qwen2.5-Math-7B shape'})")
    p_tok, r_tok = a.prompt_tokens, a.response_frac * r.max_new
    S_max, S = r.max_prompt + r.max_new, p_tok + r_tok
    say(f"assumptions: mean prompt {p_tok:g} tokens, mean response {r_tok:g} (--response-frac {a.response_frac:g} x "
        f"{r.max_new}), kept share {a.kept_share:g}, acc {a.acc:g}, {a.text_bytes:g} bytes/token of text, "
        f"{a.ids_bytes:g} per id, MFU {a.mfu:g} training / {a.gen_mfu:g} generation of {a.peak_tflops:g} TFLOP/s")

    # --- memory per rank ---
    say("\nGPU memory per rank, during the update (FSDP2 over the ranks; vLLM asleep):")
    layer = (P - (2 - bool(c.get("tie_word_embeddings"))) * V * H - H) / L
    root = (2 - bool(c.get("tie_word_embeddings"))) * V * H + H
    T = r.micro_batch * S_max
    rows = [("fp32 master weights", 4 * P / R, f"4 B x {P:,} / {R}"),
            ("fp32 gradients", 4 * P / R, f"4 B x P / {R}"),
            ("AdamW moments", 8 * P / R, f"2 x 4 B x P / {R}"),
            ("bf16 compute copies: root (embeddings, head), 2 layers", 2 * (root + 2 * layer),
             f"2 B x ({root / 1e6:,.0f} M + 2 x {layer / 1e6:,.0f} M)")]
    if r.grad_ckpt:
        rows += [("activations: every layer's input (checkpoints)", 2 * L * T * H,
                  f"2 B x {L} layers x {T:,} tokens (MICRO_BATCH {r.micro_batch} x {S_max:,}) x {H}"),
                 ("activations: one layer recomputed for its backward", 2 * T * (6 * H + 2 * kv + 4 * I),
                  f"2 B x {T:,} x (6 x {H} + 2 x {kv} + 4 x {I})")]
    else:
        rows += [("activations of every layer (no checkpointing)", 2 * L * T * (7 * H + 2 * kv + 4 * I),
                  f"2 B x {L} x {T:,} x (7H + 2kv + 4I)")]
    rows += [("chunked LM head: 3 fp32 [256, V] tensors", 3 * 256 * V * 4, f"3 x 256 x {V:,} x 4 B")]
    train_peak = sum(b for _, b, _ in rows)
    for name, b, how in rows:
        say(f"  {name:<{W}} {gb(b):>10}   {how}")
    say(f"  {'peak during the update':<{W}} {gb(train_peak):>10}")
    kv_tok = 2 * L * kv * 2 / r.tp  # bytes of K and V per token, bf16, on one of the engine's TP ranks
    vllm = r.gpu_mem * a.gpu_gb * GB
    kv_cache = vllm - 2 * P / r.tp
    say(f"during generation (trainer resident: master + AdamW, gradients freed; vLLM awake at GPU_MEM {r.gpu_mem:g}):")
    say(f"  {'trainer: fp32 master + AdamW':<{W}} {gb(12 * P / R):>10}   12 B x P / {R}")
    say(f"  {'vLLM: its share of the GPU':<{W}} {gb(vllm):>10}   {r.gpu_mem:g} x {a.gpu_gb:g} GB")
    say(f"  {'  of which bf16 weights':<{W}} {gb(2 * P / r.tp):>10}   2 B x P / TP {r.tp}")
    say(f"  {'  of which KV cache':<{W}} {gb(kv_cache):>10}   {kv_cache / kv_tok / 1e3:,.0f} k tokens at "
        f"{kv_tok / 1e3:.1f} kB/token: {kv_cache / kv_tok / S_max:,.0f} sequences of {S_max:,}, "
        f"{kv_cache / kv_tok / S:,.0f} of the mean {S:,.0f}")
    gen_peak = 12 * P / R + vllm
    fits = max(train_peak, gen_peak) <= a.gpu_gb * GB
    say(f"  {'peak during generation':<{W}} {gb(gen_peak):>10}")
    say(f"  the larger peak, {gb(max(train_peak, gen_peak))}, {'fits' if fits else 'does NOT fit'} in "
        f"{a.gpu_gb:g} GB; GPU_MEM up to {(a.gpu_gb * GB - 12 * P / R) / (a.gpu_gb * GB):.2f} fits beside the "
        f"resident trainer (CUDA context and fragmentation not counted)")

    # --- host memory per node ---
    from lib.train.shardload import CHUNK_BYTES

    say(f"\nhost memory per node ({R} ranks; the processes themselves, interpreter, torch, CUDA, not counted):")
    host = [("load for FSDP: each rank reads its shard onto its GPU", R * 2 * CHUNK_BYTES,
             f"{R} x at most 2 x {CHUNK_BYTES / 2**20:.0f} MiB in flight: file rows + their cast "
             f"(lib/train/shardload)"),
            ("  a folder without safetensors: every rank, all of it", R * 4 * P, f"{R} x 4 B x P"),
            ("trainer, resident: master weights, gradients, AdamW", 0, "FSDP2 shards, on the GPUs")]
    offload = R / r.tp * 2 * P if r.backend == "vllm" and r.sleep_mode else 0
    if offload:
        host += [("vLLM asleep in the update (level 1): bf16 weights", offload,
                  f"{R} ranks / TP {r.tp} = {R // r.tp} engines x 2 B x P, pinned")]
    host += [("checkpoint save: the full fp32 weights on rank 0", 4 * P,
              f"4 B x P, every {r.save_every} steps" + (" (vLLM awake by then)" if offload else ""))]
    for name, b, how in host:
        say(f"  {name:<{W}} {gb(b):>10}   {how}")
    peak = max(R * 2 * CHUNK_BYTES, offload, 4 * P)
    say(f"  {'peak':<{W}} {gb(peak):>10}" + (f"   {gb(offload + 4 * P)} if torch's pinned-memory cache keeps vLLM's "
                                             f"offload buffers after it wakes" if offload else ""))

    # --- rollouts, disk ---
    batches = gen_batches(r, a.kept_share)
    per_step = r.gen_batch * batches * r.n
    overhead = record_overhead()
    rec = record_bytes(overhead, p_tok, r_tok, a.text_bytes, a.ids_bytes, a.acc)
    why = (f"ceil({r.prompts} / ({r.gen_batch} x {a.kept_share:g} kept))" if r.dynamic
           else f"ceil({r.prompts} / {r.gen_batch}), no dynamic sampling")
    cap = f", at most {r.max_gen_batches}" if r.max_gen_batches else ""
    say(f"\nrollouts per RL step: {batches} generation batch(es) x {r.gen_batch} prompts x {r.n} = {per_step:,} "
        f"responses ({why}{cap})")
    say(f"  a record: {rec / 1e3:,.1f} kB = {overhead} B of fields (lib/run/records' format) + ({p_tok:g} + {r_tok:g}) "
        f"tokens x {a.text_bytes:g} B + {a.acc:g} x {r_tok:g} ids x {a.ids_bytes:g} B")
    runs = [r.rl_steps] * r.iters + ([r.iters * r.rl_steps] if r.vanilla else [])
    explore_steps = sum(runs)
    trained = r.iters * r.rl_steps + (r.iters - 1) * r.rl_steps * r.vanilla  # vanilla's first RL_STEPS are copied
    rollouts = explore_steps * per_step * rec
    metrics = explore_steps * 2e3  # ~2 kB a metrics row with its validation keys; TensorBoard mirrors as much
    fp32, half = 4 * P, (2 if r.bf16 else 4) * P
    folders = [checkpoint_folders(s, r.save_every, r.keep) for s in runs]
    weights = sum(fp32 + (f - 1) * half for f in folders)
    resume = len(runs) * 8 * P
    rft_records = a.problems * a.hard_share * r.max_per_problem
    rft_bytes = r.iters * rft_records * record_bytes(overhead, p_tok, r_tok, a.text_bytes, a.ids_bytes, 1.0)
    consolidated = r.iters * fp32
    n_evals = 1 + 2 * r.iters + (r.iters if r.vanilla else 0)
    bench = bench_problems(r.benchmarks, a.bench_problems)
    samples = n_evals * bench * r.bench_n * record_bytes(overhead, p_tok, r_tok, a.text_bytes, 0, 0)
    say(f"\ndisk, every file the run writes ({len(runs)} explore runs of {' + '.join(map(str, runs))} steps, "
        f"KEEP_CHECKPOINTS={r.keep}, SAVE_EVERY={r.save_every}{', bf16 older folders' if r.bf16 else ''}):")
    disk = [("rollouts.jsonl of every explore run (vanilla's: a copy)", rollouts,
             f"{explore_steps:,} steps x {per_step:,} x {rec / 1e3:,.1f} kB"),
            ("harvest.jsonl: a hard link to the rollouts", 0, "every step taken; a copy where links fail"),
            ("filter: rft.jsonl, at most", rft_bytes,
             f"{r.iters} x {a.problems:,} problems x {a.hard_share:g} hard x {r.max_per_problem} (with ids)"),
            ("checkpoint weights", weights, f"per run {folders} folders: the newest fp32 {gb(fp32)}, others "
                                           f"{gb(half)}"),
            ("resume states: AdamW, the newest folder of a run", resume, f"{len(runs)} x 8 B x P"),
            ("consolidated policies (fp32 folders)", consolidated, f"{r.iters} x 4 B x P"),
            ("evaluation samples.jsonl", samples,
             f"{n_evals} evaluations x {bench} problems x {r.bench_n} x "
             f"{samples / max(1, n_evals * bench * r.bench_n) / 1e3:,.1f} kB (no ids)"),
            ("metrics.jsonl, TensorBoard, logs", 2 * metrics, f"{explore_steps:,} steps x 2 x 2 kB")]
    for name, b, how in disk:
        say(f"  {name:<{W}} {gb(b):>10}   {how}")
    total = sum(b for _, b, _ in disk)
    say(f"  {'total at the end of the run':<{W}} {gb(total):>10}")
    say(f"  while a checkpoint is written, the new folder stands beside the previous newest: +{gb(12 * P)}; a "
        f"finished run's resume state ({gb(8 * P)}) is needed only to extend that run")

    # --- compute ---
    gen = per_step * decode_flops(P, c, p_tok, r_tok)
    passes = (4 if r.grad_ckpt else 3) + (1 - r.mini_batch / r.prompts)  # fwd + bwd(2) [+ recompute] + old log-probs
    train = r.prompts * r.n * passes * forward_flops(P, c, S)
    val_n = bench_problems(r.eval_benchmarks, a.bench_problems)
    val = val_n * r.eval_n * decode_flops(P, c, p_tok, r_tok) / r.eval_every if r.eval_every and val_n else 0
    peak = a.peak_tflops * 1e12
    gpu_s = gen / (peak * a.gen_mfu) + train / (peak * a.mfu) + val / (peak * a.gen_mfu)
    say(f"\ncompute per RL step (mean sequence {S:,.0f} tokens):")
    say(f"  generation  {gen:.3g} FLOP = {per_step:,} x [2P(p + r) + 2LDp^2 + 4LD(pr + r^2/2)]   "
        f"-> {gen / (peak * a.gen_mfu) / 3600:.2f} GPU-h at {a.gen_mfu:g} x peak")
    say(f"  training    {train:.3g} FLOP = {r.prompts} x {r.n} x {passes:.3g} passes x (2PS + 2LDS^2)   "
        f"-> {train / (peak * a.mfu) / 3600:.2f} GPU-h at {a.mfu:g} x peak")
    say(f"              (passes: forward 1 + backward 2{' + recompute 1' if r.grad_ckpt else ''} + old log-probs "
        f"1 - {r.mini_batch}/{r.prompts})")
    say(f"  validation  {val:.3g} FLOP per step = {val_n} problems x {r.eval_n} samples every {r.eval_every} steps   "
        f"-> {val / (peak * a.gen_mfu) / 3600:.2f} GPU-h")
    say(f"  one RL step: {gpu_s / 3600:.2f} GPU-h, {gpu_s / R / 60:.1f} min on {R} GPUs")
    rft = r.iters * r.rft_epochs * rft_records * (4 if r.grad_ckpt else 3) * forward_flops(P, c, S)
    ev = n_evals * bench * r.bench_n * decode_flops(P, c, p_tok, r_tok)
    steps_h = trained * gpu_s / 3600
    rft_h, ev_h = rft / (peak * a.mfu) / 3600, ev / (peak * a.gen_mfu) / 3600
    say(f"\nthe whole loop: {trained:,} RL steps ({r.iters} x {r.rl_steps}"
        f"{f' + vanilla {(r.iters - 1) * r.rl_steps} beyond its copy' if r.vanilla else ''}) {steps_h:,.0f} GPU-h; "
        f"RFT {rft_h:,.0f} GPU-h ({r.iters} x {r.rft_epochs} epochs x {rft_records:,.0f} sequences); "
        f"{n_evals} evaluations {ev_h:,.0f} GPU-h")
    wall = (steps_h + rft_h + ev_h) / R
    say(f"  {steps_h + rft_h + ev_h:,.0f} GPU-h; wall-clock on one node of {R} GPUs: {wall:,.0f} h = {wall / 24:.1f} "
        f"days (explore, consolidate and evaluate under torchrun on all {R})")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
