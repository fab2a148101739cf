"""Validation during RL: avg@n and pass@k of the current policy on held-out benchmarks, between steps.

explore.py --eval-data SPEC --eval-every K --eval-n N (verl's test_freq; --eval-before-train is its
val_before_train). SPEC is what evaluate.py's --benchmarks takes ('toy', NAME=PATH[@SPLIT],...), and the
numbers are evaluate.py's (lib.metrics.summarize), so a curve point at step s equals an evaluate.py run on
ckpt_s with the same n, sampling settings and seed. They go into that step's metrics.jsonl row as flat keys:
  val/<bench>/mean_acc   avg@n of benchmark <bench>
  val/<bench>/pass@<k>   unbiased pass@k, k = 1, 2, 4, ... up to n
  val/mean_acc           the unweighted mean of the benchmarks' avg@n
"""
from __future__ import annotations

from lib import data
from lib.metrics import summarize
from lib.rollout import to_trajectories

PREFIX = "val/"


def load_benchmarks(spec: str, default_split: str = "test", limit: int = 0) -> dict[str, list[data.Problem]]:
    """{name: problems} for an --eval-data SPEC; bad files fail now (one line), before any model loads."""
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
        comps = engine.generate([p.prompt for p in problems], n=n, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed)
        s = summarize(to_trajectories(problems, comps, reward_fn, source=f"val:{name}"), n)
        row[f"{PREFIX}{name}/mean_acc"] = s["mean_acc"]
        for k, v in s["pass@k"].items():
            row[f"{PREFIX}{name}/pass@{k}"] = v
        accs.append(s["mean_acc"])
    if accs:
        row[f"{PREFIX}mean_acc"] = sum(accs) / len(accs)
    return row


def due(step: int, every: int, last: int) -> bool:
    """Validate after `step`? Every `every` steps (0 = only at the end) and always after the last step."""
    return step == last or (every > 0 and step % every == 0)
