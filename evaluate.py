"""evaluate.py — avg@n accuracy and unbiased pass@k of a policy on held-out benchmarks.

For every problem of every benchmark, sample n responses, score each with the rule-based verifier
(lib/reward.py), then report per benchmark:
  mean_acc   = mean over problems of (correct / n)                    (the paper's "avg@n")
  pass@k     = mean over problems of 1 - C(n-c, k) / C(n, k)           (unbiased, Chen et al. 2021)
for k = 1, 2, 4, ... up to n, and the unweighted average over benchmarks.

    python evaluate.py                                   # the toy base on the toy's test / ood / probe splits
    python evaluate.py --model runs/loop/iter1/consolidated --benchmarks aime24=data/aime24.jsonl --n 32

Writes OUT/samples.jsonl (every scored sample, the shared trajectory record), OUT/metrics.json, OUT/args.json.
"""
from __future__ import annotations

import time
from pathlib import Path

from lib import cli, data, reward, toy
from lib.metrics import ks_up_to, summarize
from lib.modeling import load_config, load_policy, load_tokenizer, longest_prompt, plan_context
from lib.records import write_jsonl
from lib.rollout import (add_engine_args, check_engine_args, make_engine, rollout_dtype, sample_and_score,
                         trajectories)


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    p.add_argument("--model", default="toy", help="policy folder or hub id; 'toy' = the embedded toy base model")
    p.add_argument("--benchmarks", default="toy",
                   help="NAME=PATH[@SPLIT][,NAME=PATH[@SPLIT]...] (JSONL / JSON / parquet files or dataset ids; "
                        "@SPLIT picks a hub set's split, e.g. aime24=HuggingFaceH4/aime_2024@train); "
                        "'toy' = the toy's test, ood and probe splits")
    p.add_argument("--split", default="test", help="dataset split, for hub dataset ids given without @SPLIT")
    p.add_argument("--n", type=int, default=8, help="samples per problem (avg@n, pass@k up to k = n)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (DAPO eval: 1.0)")
    p.add_argument("--top-p", type=float, default=0.7, help="nucleus sampling (DAPO eval: 0.7)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="response length cap (DAPO: 20480)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N problems per benchmark (0 = all)")
    p.add_argument("--max-prompt-len", type=int, default=0,
                   help="drop every problem whose rendered prompt is longer than N tokens (one line per benchmark "
                        "counts them; never truncated); the context is planned for N + --max-new-tokens. 0 = no cap")
    p.add_argument("--reward", default="dapo",
                   help="verifier: dapo (DAPO's string match, what RL trains on), math_verify (symbolic "
                        "equivalence: compares with published MATH-500 / AIME scores; pip install math-verify), "
                        "or path/to/file.py:function (runs that file; same signature as lib/reward.score)")
    p.add_argument("--out", default="runs/eval/toy-base", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_engine_args(p, gpu_memory_utilization=0.85)  # --backend, --gpu-memory-utilization, --tp
    p.add_argument("--max-model-len", type=int, default=0,
                   help="context (prompt + response) in tokens; 0 = the model's max_position_embeddings (explore.py's "
                        "checkpoints carry its --max-model-len). Qwen2.5-Math-7B itself (4096) at DAPO's 20480 new "
                        "tokens: 32768")
    p.add_argument("--device", default="auto", help="cpu / cuda / auto")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off: safer)")
    args = p.parse_args(argv)
    cli.check_positive(args, "n", "max_new_tokens")
    check_engine_args(args)
    cli.check_positive(args, "limit", "max_model_len", "max_prompt_len", allow_zero=True)
    if not 0 < args.top_p <= 1:
        raise cli.UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    cli.check_out_dir(args.out)
    return args


def main(argv=None):
    args = get_args(argv)
    benches = data.benchmark_splits(toy.resolve(args.benchmarks, "benchmarks"), args.split)
    # load every benchmark before any sampling: a bad file fails in a second, not after an hour of generation
    problems = {name: data.load_problems(path, split=split, limit=args.limit) for name, (path, split) in benches.items()}
    verifier = reward.load_reward(args.reward)  # (a bad --reward fails here too, before the model loads)
    device = cli.pick_device(args.device)
    model_path = toy.resolve(args.model, "model")
    # the context every benchmark needs, from the config and the tokenizer, before any weight loads
    tok = load_tokenizer(model_path, args.trust_remote_code)
    problems = {name: data.drop_long_prompts(data.render_prompts(probs, tok), tok, args.max_prompt_len, name)
                for name, probs in problems.items()}
    context, overrides = plan_context(load_config(model_path, args.trust_remote_code),
                                      longest_prompt(tok, [p.prompt for ps in problems.values() for p in ps]),
                                      args.max_new_tokens, args.max_model_len, model_path, args.max_prompt_len)
    # With vLLM the engine loads the weights itself: no HF copy of the policy may sit on the GPU beside it (7.6B in
    # fp32 is 30 GB, and vLLM asks for --gpu-memory-utilization of the whole card): make_engine calls the loader
    # only for the HF engine
    load = lambda: load_policy(model_path, device=device, trust_remote_code=args.trust_remote_code)[0]  # noqa: E731
    engine = make_engine(args.backend, load, tok, model_path, max_model_len=context, hf_overrides=overrides,
                         dtype=rollout_dtype(args.rollout_dtype, device.type == "cuda"),
                         gpu_memory_utilization=args.gpu_memory_utilization, tp=args.tp, seed=args.seed,
                         trust_remote_code=args.trust_remote_code)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli.save_args(args, out)
    samples, result = [], {}
    for name, probs in problems.items():
        t0 = time.time()
        trajs = trajectories(sample_and_score(engine, probs, verifier, n=args.n, max_new_tokens=args.max_new_tokens,
                                              temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                              tokenizer=tok, source=f"eval:{name}", keep_ids=False))
        result[name] = summarize(trajs, args.n)
        result[name]["seconds"] = round(time.time() - t0, 1)
        samples += trajs
    ks = [str(k) for k in ks_up_to(args.n)]
    average = {"mean_acc": sum(r["mean_acc"] for r in result.values()) / len(result),
               "pass@k": {k: sum(r["pass@k"][k] for r in result.values()) / len(result) for k in ks}}
    metrics = {"model": args.model if args.model != "toy" else model_path, "n": args.n,
               "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
               "benchmarks": result, "average": average}
    write_jsonl(out / "samples.jsonl", samples)
    cli.atomic_write_json(out / "metrics.json", metrics)  # written last: its presence means the run finished

    # the table
    head = f"{'benchmark':<12} {'problems':>8} {'mean_acc':>9} " + " ".join(f"{'pass@' + k:>8}" for k in ks)
    print(head)
    print("-" * len(head))
    for name, r in list(result.items()) + [("average", {"problems": sum(x["problems"] for x in result.values()),
                                                         **average})]:
        print(f"{name:<12} {r['problems']:>8} {r['mean_acc']:>9.3f} " + " ".join(f"{r['pass@k'][k]:>8.3f}" for k in ks))
    print(f"wrote {out / 'metrics.json'} and {out / 'samples.jsonl'}")


if __name__ == "__main__":
    cli.run_main(main)
