"""evaluate.py — avg@n accuracy and unbiased pass@k of a policy on held-out benchmarks.

For every problem of every benchmark, sample n responses, score each with the rule-based verifier
(lib/algo/reward.py), then report per benchmark:
  mean_acc   = mean over problems of (correct / n)                    (the paper's "avg@n")
  pass@k     = mean over problems of 1 - C(n-c, k) / C(n, k)           (unbiased, Chen et al. 2021)
for k = 1, 2, 4, ... up to n, and the unweighted average over benchmarks.

    python evaluate.py                                   # the toy base on the toy's test / ood / probe splits
    python evaluate.py --model runs/loop/iter1/consolidated --benchmarks aime24=data/aime24.jsonl --n-samples 32
    torchrun --nproc-per-node 8 evaluate.py --model ... --n-samples 32     # data-parallel: 8 ranks

Writes OUT/samples.jsonl (every scored sample, the shared trajectory record), OUT/metrics.json (per benchmark
and on average: problems, mean_acc, pass@1, pass@2, ...), OUT/args.json and, last, OUT/done.json.

Data-parallel under torchrun (lib/engine/rounds.py): every rank holds its own whole engine (the HF model, or a vLLM
engine in the rank's process; no FSDP: nothing trains), samples its contiguous share of each benchmark with the
problems' global seeds, and rank 0 gathers the records and alone writes: the outputs equal one process's.
Resume: finished rounds of problems (--part-size per rank) are kept in OUT/.parts/; a killed evaluation rerun
with the same command samples only the rest (parts made with other settings are discarded). samples.jsonl and
metrics.json are written atomically once every benchmark is complete, then .parts/ goes, then done.json.
"""
from __future__ import annotations

from pathlib import Path

from lib.algo import reward
from lib.algo.passk import ks_up_to, summarize
from lib.engine import rounds
from lib.engine.rollout import add_engine_args, check_engine_args, make_engine, resolve_backend, rollout_dtype
from lib.run import cli, data
from lib.train import dist
from lib.train.modeling import load_config, load_policy, load_tokenizer, longest_prompt, plan_context
from lib.worlds import toy


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--model", default="toy", help="policy folder or hub id; 'toy' = the embedded toy base model")
    g.add_argument("--benchmarks", default="toy",
                   help="NAME=PATH[@SPLIT][,NAME=PATH[@SPLIT]...] (JSONL / JSON / parquet files or dataset ids; "
                        "@SPLIT picks a hub set's split, e.g. aime24=HuggingFaceH4/aime_2024@train); "
                        "'toy' = the toy's test, ood and probe splits")
    g.add_argument("--split", default="test", help="dataset split, for hub dataset ids given without @SPLIT")
    g.add_argument("--limit", type=int, default=0, help="evaluate only the first N problems per benchmark (0 = all)")
    g.add_argument("--max-prompt-len", type=int, default=0,
                   help="drop every problem whose rendered prompt is longer than N tokens (one line per benchmark "
                        "counts them; never truncated); the context is planned for N + --max-new-tokens. 0 = no cap")
    g.add_argument("--reward", default="dapo",
                   help="verifier: dapo (DAPO's string match, what RL trains on), math_verify (symbolic "
                        "equivalence, Hugging Face's math-verify: compares with published MATH-500 / AIME scores), "
                        "or path/to/file.py:function (runs that file; same signature as lib/algo/reward.score)")
    g.add_argument("--out", default="runs/eval/toy-base", help="output folder")
    g = p.add_argument_group("sampling")
    g.add_argument("--n-samples", type=int, default=8, help="samples per problem (avg@n, pass@k up to k = n)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (DAPO eval: 1.0)")
    g.add_argument("--top-p", type=float, default=0.7, help="nucleus sampling (DAPO eval: 0.7)")
    g.add_argument("--max-new-tokens", type=int, default=96, help="response length cap (DAPO: 20480)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g = p.add_argument_group("engine")
    add_engine_args(g, gpu_memory_utilization=0.85)  # --backend, --gpu-memory-utilization, --tp
    g.add_argument("--max-model-len", type=int, default=0,
                   help="context (prompt + response) in tokens; 0 = the model's max_position_embeddings (explore.py's "
                        "checkpoints carry its --max-model-len). Qwen2.5-Math-7B itself (4096) at DAPO's 20480 new "
                        "tokens: 32768")
    g.add_argument("--part-size", type=int, default=0,
                   help="problems each rank samples per saved part (what a killed run keeps), rounded up to whole HF "
                        "engine batches; 0 = one HF engine batch (512 // n prompts) or "
                        f"{rounds.VLLM_PART_SIZE} with vLLM")
    g.add_argument("--device", default="auto", help="cpu / cuda / auto (under torchrun: each rank's own GPU)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off: safer)")
    args = p.parse_args(argv)
    cli.check_positive(args, "n_samples", "max_new_tokens")
    check_engine_args(args)
    cli.check_positive(args, "limit", "max_model_len", "max_prompt_len", "part_size", allow_zero=True)
    if not 0 < args.top_p <= 1:
        raise cli.UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    cli.check_out_dir(args.out)
    return args


def main(argv=None):
    args = get_args(argv)
    with dist.session():  # (without torchrun nothing below touches torch.distributed)
        return run(args)


def run(args):
    if dist.is_distributed() and args.tp > 1:
        raise cli.UserError("--tp > 1 under torchrun: evaluate.py runs one engine per rank (data-parallel); "
                            "use --tp 1, or run it with python for tensor-parallel vLLM")
    # every benchmark loads before any sampling: a bad file fails in a second, not after an hour of generation
    # ('toy' writes its files once: rank 0 first)
    benches = dist.main_first(lambda: data.benchmark_splits(toy.resolve(args.benchmarks, "benchmarks"), args.split))
    problems = {name: data.load_problems(path, split=split, limit=args.limit)
                for name, (path, split) in benches.items()}
    verifier = reward.load_reward(args.reward)  # (a bad --reward fails here too, before the model loads)
    device = dist.device(args.device)
    model_path = dist.main_first(lambda: toy.resolve(args.model, "model"))
    # the context every benchmark needs, from the config and the tokenizer, before any weight loads
    tok = load_tokenizer(model_path, args.trust_remote_code)
    problems = {name: data.drop_long_prompts(data.render_prompts(probs, tok), tok, args.max_prompt_len, name)
                for name, probs in problems.items()}
    context, overrides = plan_context(load_config(model_path, args.trust_remote_code),
                                      longest_prompt(tok, [p.prompt for ps in problems.values() for p in ps]),
                                      args.max_new_tokens, args.max_model_len, model_path, args.max_prompt_len)
    backend, dtype = resolve_backend(args.backend), rollout_dtype(args.rollout_dtype, device.type == "cuda")
    if dist.is_distributed():
        print(f"{dist.world_size()} ranks, data-parallel: one {backend} engine per rank")
    out = Path(args.out)
    # what the samples depend on: parts made with anything else are discarded (the world size is not in it)
    key = {"model": model_path, "benchmarks": {k: list(v) for k, v in benches.items()}, "limit": args.limit,
           "n_samples": args.n_samples, "temperature": args.temperature, "top_p": args.top_p,
           "max_new_tokens": args.max_new_tokens,
           "max_model_len": args.max_model_len, "max_prompt_len": args.max_prompt_len, "reward": args.reward,
           "seed": args.seed, "backend": backend, "rollout_dtype": dtype}
    parts, main_rank = rounds.Parts(out / ".parts", key), dist.is_main()
    todo = [name for name, probs in problems.items() if rounds.done_upto(parts, name) < len(probs)]
    for name in (n for n in problems if n not in todo):
        print(f"{name}: {len(problems[name])} problems sampled by an earlier run")
    # With vLLM the engine loads the weights itself: no HF copy of the policy may sit on the GPU beside it (7.6B in
    # fp32 is 30 GB, and vLLM asks for --gpu-memory-utilization of the whole card): make_engine calls the loader
    # only for the HF engine. Under torchrun each rank builds its own engine, vLLM's in this process
    # (external_launcher, one engine per rank). Bad weights fail here, before anything is written.
    load = lambda: load_policy(model_path, device=device, trust_remote_code=args.trust_remote_code)[0]  # noqa: E731
    engine = make_engine(backend, load, tok, model_path, max_model_len=context, hf_overrides=overrides, dtype=dtype,
                         gpu_memory_utilization=args.gpu_memory_utilization, tp=args.tp, seed=args.seed,
                         trust_remote_code=args.trust_remote_code, in_process=dist.is_distributed()) if todo else None
    rounds.open_parts(parts)
    if main_rank:
        cli.clear_done(out)
        cli.save_args(args, out)
    for name in todo:
        probs = problems[name]
        rounds.sample_in_rounds(engine, probs, verifier, parts, name, n=args.n_samples, seed=args.seed,
                                part_size=args.part_size, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_p=args.top_p, tokenizer=tok,
                                source=f"eval:{name}", keep_ids=False)
    if engine is not None:
        engine.close()  # (after the last collective: vLLM's close takes torch.distributed down with its own groups)
    if main_rank:
        write_outputs(args, out, parts, list(problems), model_path)


def write_outputs(args, out: Path, parts: rounds.Parts, names: list[str], model_path: str) -> None:
    """samples.jsonl, metrics.json, then done.json (its presence means the evaluation finished), then the table."""
    result = {}
    with cli.atomic_open(out / "samples.jsonl") as f:
        for name in names:
            trajs, seconds = parts.records(name)
            result[name] = {**summarize(trajs, args.n_samples), "seconds": seconds}
            f.writelines(t.to_json() + "\n" for t in trajs)
    ks = [str(k) for k in ks_up_to(args.n_samples)]
    average = {"mean_acc": sum(r["mean_acc"] for r in result.values()) / len(result),
               **{f"pass@{k}": sum(r[f"pass@{k}"] for r in result.values()) / len(result) for k in ks}}
    metrics = {"model": args.model if args.model != "toy" else model_path, "n_samples": args.n_samples,
               "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
               "benchmarks": result, "average": average}
    cli.atomic_write_json(out / "metrics.json", metrics)
    parts.remove()
    cli.mark_done(out, "evaluate", **average)

    head = f"{'benchmark':<12} {'problems':>8} {'mean_acc':>9} " + " ".join(f"{'pass@' + k:>8}" for k in ks)
    print(head)
    print("-" * len(head))
    for name, r in list(result.items()) + [("average", {"problems": sum(x["problems"] for x in result.values()),
                                                         **average})]:
        print(f"{name:<12} {r['problems']:>8} {r['mean_acc']:>9.3f} " + " ".join(f"{r['pass@' + k]:>8.3f}" for k in ks))
    print(f"wrote {out / 'metrics.json'} and {out / 'samples.jsonl'}")


if __name__ == "__main__":
    cli.run_main(main)
