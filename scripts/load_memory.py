"""load_memory.py — each rank's peak host memory while a policy loads for FSDP2 training under torchrun (CPU, gloo),
summed over the ranks and set against one fp32 copy of the weights, for the two ways a rank can load it:

  whole      load_policy(path, "cpu") then shard_model: every rank reads the whole model, then keeps its shard
  skeleton   load_policy(path, "meta") then shard_model: each rank reads only its shard from the safetensors files
             (lib/train/shardload)

    python scripts/load_memory.py                             # a 660 MB fp32 Qwen2 (152k vocabulary, untied head)
    python scripts/load_memory.py --hidden 64 --layers 2      # the miniature's shape (scripts/miniature.py)
    python scripts/load_memory.py --model FOLDER --nproc 4    # any from_pretrained folder

Each scheme runs in fresh processes (torchrun --nproc-per-node N). A rank records its resident memory once torch,
transformers, the model's code and the process group are up (its baseline: the fixed per-rank overhead), resets its
high-water mark (/proc/self/clear_refs), loads and shards the model, and reads VmHWM: its peak. A scheme passes when
the peaks' sum is at most 1.5 x one fp32 copy + the baselines' sum. Rank 0 then checks the sharded weights, buffers
and configs against a single-process load_policy, bit for bit. On a GPU node the shards live on the GPUs: the host
holds what the whole scheme reads (a copy per rank) or what the skeleton scheme has in flight (a chunk of rows per
rank). The generated model is cached under runs/load_memory/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `lib` importable from the repo root
    sys.path.insert(0, str(ROOT))

from lib.run import cli  # noqa: E402

SCHEMES = {"whole": "cpu", "skeleton": "meta"}  # scheme -> the device load_policy is given
BOUND = 1.5  # copies of the fp32 weights the ranks' peaks may add up to, beyond their baselines
MB = 1e6


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    p.add_argument("--model", default="", help="a from_pretrained folder (default: generate one of the shape below)")
    p.add_argument("--hidden", type=int, default=512, help="hidden size of the generated Qwen2 (head size 64)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the generated Qwen2")
    p.add_argument("--vocab", type=int, default=152_064, help="embedding rows (Qwen2.5-Math-7B: 152,064)")
    p.add_argument("--tied", action="store_true", help="the generated Qwen2's head tied to its embeddings")
    p.add_argument("--nproc", type=int, default=2, help="ranks (torchrun --nproc-per-node)")
    p.add_argument("--schemes", default="whole,skeleton", help=f"comma-separated, of {', '.join(SCHEMES)}")
    p.add_argument("--rank-worker", default="", help=argparse.SUPPRESS)  # (torchrun runs this file)
    args = p.parse_args(argv)
    cli.check_positive(args, "hidden", "layers", "vocab", "nproc")
    args.schemes = [s for s in args.schemes.split(",") if s]
    if bad := [s for s in args.schemes if s not in SCHEMES]:
        raise cli.UserError(f"--schemes: unknown {', '.join(bad)} (expected {', '.join(SCHEMES)})")
    return args


def build_model(out: Path, hidden: int, layers: int, vocab: int, tied: bool = False) -> Path:
    """A Qwen2 at random (seed 0) with the toy's tokenizer (the tokenizer's size is not the model's: only the weights
    are measured), its head untied as Qwen2.5-Math-7B's (tied: as the small Qwen2.5s'), saved as safetensors.
    Cached."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lib.train.modeling import save_policy
    from lib.worlds import toy

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), tie_word_embeddings=tied,
                      max_position_embeddings=256)
    save_policy(Qwen2ForCausalLM(cfg), toy.make_tokenizer(), out)
    return out


def measure(model: str | Path, scheme: str, nproc: int, timeout: int = 600) -> dict:
    """One scheme in fresh processes under torchrun: rank 0's report (see rank_worker)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(port),
           str(Path(__file__).resolve()), "--rank-worker", scheme, "--model", str(model)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    reports = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode or not reports:
        raise RuntimeError(f"{scheme}: torchrun exited {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(reports[-1])


def memory_kb(field: str) -> int:
    """A /proc/self/status figure (VmRSS, VmHWM) in kB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def rank_worker(model: str, scheme: str) -> None:
    """Under torchrun: load `model` as `scheme` says and shard it; rank 0 prints one JSON line: every rank's baseline
    and peak (bytes), the load's seconds, one fp32 copy's bytes and whether the weights are a single-process load's."""
    import torch
    import transformers
    from safetensors import safe_open  # noqa: F401 (imported before the baseline, as everything the load needs)
    from torch.distributed.fsdp import fully_shard  # noqa: F401

    from lib.train import dist
    from lib.train.modeling import load_config, load_policy

    torch.set_num_threads(1)
    dist.init()
    with torch.device("meta"):  # the model's code imported, its construction run once: before the baseline
        transformers.AutoModelForCausalLM.from_config(load_config(model))
    dist.barrier()
    baseline = memory_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS: the peak from here on
        f.write("5")
    t0 = time.perf_counter()
    policy = load_policy(model, SCHEMES[scheme])[0]
    dist.shard_model(policy, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    peak = memory_kb("VmHWM")
    dist.barrier()
    rows = dist.gather_object((baseline * 1024, peak * 1024))
    copy = 4 * sum(p.numel() for p in policy.parameters())  # (a DTensor's numel is the whole tensor's)
    weights = dist.full_state_dict(policy)
    if dist.is_main():
        ref = load_policy(model, "cpu")[0]
        same = (weights.keys() == ref.state_dict().keys()
                and all(torch.equal(weights[k], v) and weights[k].dtype == v.dtype for k, v in ref.state_dict().items())
                and all(torch.equal(b, dict(policy.named_buffers())[k]) for k, b in ref.named_buffers())
                and policy.config.to_dict() == ref.config.to_dict()
                and policy.generation_config.to_dict() == ref.generation_config.to_dict())
        print(json.dumps({"scheme": scheme, "ranks": len(rows), "baseline": [b for b, _ in rows],
                          "peak": [p for _, p in rows], "seconds": round(seconds, 2), "copy": copy,
                          "identical": same}))
    dist.barrier()  # (no rank leaves the group while rank 0 checks)
    dist.teardown()


def verdict(r: dict) -> tuple[float, float, bool]:
    """(the peaks' sum, the bound, within it) of a report."""
    bound = BOUND * r["copy"] + sum(r["baseline"])
    return sum(r["peak"]), bound, sum(r["peak"]) <= bound


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        mem = memory_total_gb()
    except OSError:
        mem = 0.0
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GB"


def memory_total_gb() -> float:
    with open("/proc/meminfo", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemTotal:")) * 1024 / 1e9


def main(argv=None) -> int:
    args = get_args(argv)
    if args.rank_worker:
        rank_worker(args.model, args.rank_worker)
        return 0
    model = Path(args.model) if args.model else build_model(
        ROOT / "runs" / "load_memory" / f"qwen2-v{args.vocab}-h{args.hidden}-l{args.layers}{'-tied' * args.tied}",
        args.hidden, args.layers, args.vocab, args.tied)
    print(f"host memory while {model} loads for FSDP2 training, torchrun --nproc-per-node {args.nproc} on CPU "
          f"(gloo); commit {cli.provenance()['commit']}; {machine()}")
    for scheme in args.schemes:
        r = measure(model, scheme, args.nproc)
        total, bound, ok = verdict(r)
        per_rank = " + ".join(f"{p / MB:,.0f}" for p in r["peak"])
        print(f"{scheme:<9} peak {per_rank} = {total / MB:,.0f} MB over baselines {sum(r['baseline']) / MB:,.0f} MB: "
              f"load {(total - sum(r['baseline'])) / r['copy']:.2f} x one fp32 copy ({r['copy'] / MB:,.0f} MB); "
              f"bound {BOUND:g} x copy + baselines = {bound / MB:,.0f} MB: {'within' if ok else 'ABOVE'}; "
              f"{r['seconds']:.1f} s; weights {'identical to' if r['identical'] else 'DIFFER from'} a "
              f"single-process load")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
