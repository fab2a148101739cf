"""Validation during RL: avg@n and pass@k of the current policy on held-out benchmarks, between steps.

explore.py --eval-benchmarks SPEC --eval-every K --eval-n-samples N (verl's test_freq; --eval-before-train is its
val_before_train). SPEC is what evaluate.py's --benchmarks takes ('toy', NAME=PATH[@SPLIT],...), and the
numbers are evaluate.py's (lib.algo.passk.summarize), so a curve point at step s equals an evaluate.py run on
ckpt_s with the same n, sampling settings and seed. They go into that step's metrics.jsonl row as flat keys:
  val/<bench>/mean_acc   avg@n of benchmark <bench>
  val/<bench>/pass@<k>   unbiased pass@k, k = 1, 2, 4, ... up to n
  val/mean_acc           the unweighted mean of the benchmarks' avg@n
"""
from __future__ import annotations

from lib.algo.passk import ks_of, summarize
from lib.engine.rollout import sample_and_score, trajectories
from lib.run import cli, data

PREFIX = "val/"


def add_args(p) -> None:
    """explore.py's validation flags (their defaults are evaluate.py's sampling settings)."""
    a = p.add_argument
    a("--eval-benchmarks", default="", metavar="SPEC",
      help="validate during RL on these benchmarks (evaluate.py's --benchmarks: 'toy' or NAME=PATH[@SPLIT],...): "
           "val/<bench>/mean_acc (avg@n) and val/<bench>/pass@k in metrics.jsonl; '' = off")
    a("--eval-every", type=int, default=0, help="validate every K steps and at the last (0 = at the last step only)")
    a("--eval-n-samples", type=int, default=4,
      help="samples per validation problem (avg@n, pass@k up to n)")
    a("--eval-before-train", action="store_true", help="also validate the initial policy: a metrics row at step 0")
    a("--eval-limit", type=int, default=0, help="validate on the first N problems of each benchmark (0 = all)")
    a("--eval-split", default="test", help="split of hub benchmarks given without @SPLIT")
    a("--eval-temperature", type=float, default=1.0, help="validation sampling temperature (evaluate.py's default)")
    a("--eval-top-p", type=float, default=0.7, help="validation nucleus sampling (evaluate.py's default)")


def check_args(args) -> None:
    """add_args' flags, checked: one line naming the flag."""
    cli.check_positive(args, "eval_n_samples")
    cli.check_positive(args, "eval_every", "eval_limit", allow_zero=True)
    if not 0 < args.eval_top_p <= 1 or args.eval_temperature <= 0:
        raise cli.UserError(f"--eval-top-p must be in (0, 1] and --eval-temperature > 0, got {args.eval_top_p} "
                            f"and {args.eval_temperature}")


# the flags that only watch an RL run (free to change on --resume)
FLAGS = ("eval_benchmarks", "eval_every", "eval_n_samples", "eval_before_train", "eval_limit", "eval_split",
         "eval_temperature", "eval_top_p")


def load_benchmarks(spec: str, default_split: str = "test", limit: int = 0) -> dict[str, list[data.Problem]]:
    """{name: problems} for an --eval-benchmarks SPEC; bad files fail now (one line), before any model loads."""
    return {name: data.load_problems(path, split=split, limit=limit)
            for name, (path, split) in data.benchmark_splits(spec, default_split).items()}


def validate(engine, benchmarks: dict[str, list[data.Problem]], n: int, reward_fn, max_new_tokens: int,
             temperature: float, top_p: float, seed: int) -> dict[str, float]:
    """Sample n responses per problem (prompts already rendered), score them with reward_fn -> the flat
    val/ keys above. The same seed at every call: two steps' points differ by the policy, not the dice.
    Under torchrun every rank calls this with the same arguments (an engine call can be a collective)."""
    row: dict[str, float] = {}
    accs = []
    for name, problems in benchmarks.items():
        scored = sample_and_score(engine, problems, reward_fn, n=n, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_p=top_p, seed=seed, source=f"val:{name}")
        s = summarize(trajectories(scored), n)
        row[f"{PREFIX}{name}/mean_acc"] = s["mean_acc"]
        for k in ks_of(s):
            row[f"{PREFIX}{name}/pass@{k}"] = s[f"pass@{k}"]
        accs.append(s["mean_acc"])
    if accs:
        row[f"{PREFIX}mean_acc"] = sum(accs) / len(accs)
    return row


def due(step: int, every: int, last: int) -> bool:
    """Validate after `step`? Every `every` steps (0 = only at the end) and always after the last step."""
    return step == last or (every > 0 and step % every == 0)
