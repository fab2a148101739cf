"""Build (once) and measure the toy base model: the figures the README quotes.

    python scripts/toy_base_report.py [--seed 0] [--n-samples 16]

Accuracy per split (n samples, temperature 1.0, top_p 1.0) through evaluate.py — the same code path users
run — the share of hard train problems (0 < success < 0.1), of never-solved ones, and the build time.
Writes TOY_DIR/base_report/ (evaluate.py's output) and TOY_DIR/base_report.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: lib/ and the stages

import evaluate  # noqa: E402
from lib.algo.passk import pass_at  # noqa: E402
from lib.run.cli import atomic_write_json  # noqa: E402
from lib.worlds import toy  # noqa: E402


def report(seed: int = 0, n: int = 16) -> dict:
    base = toy.ensure_base(seed)
    out = toy.toy_dir(seed) / "base_report"
    benches = ",".join(f"{s}={toy.data_path(s, seed)}" for s in ("train", "test", "ood", "probe"))
    evaluate.main(["--model", str(base), "--benchmarks", benches, "--n-samples", str(n), "--top-p", "1.0",
                   "--max-new-tokens", "96", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    per = defaultdict(list)
    for line in open(out / "samples.jsonl", encoding="utf-8"):
        t = json.loads(line)
        if t["source"] == "eval:train":
            per[t["problem_id"]].append(t["acc"])
    rates = [sum(v) / len(v) for v in per.values()]
    rep = {"n": n, "mean_acc": {k: round(v["mean_acc"], 3) for k, v in metrics["benchmarks"].items()},
           f"pass@{n}": {k: round(pass_at(v, n), 3) for k, v in metrics["benchmarks"].items()},
           "train_hard_share": round(sum(0 < r < 0.1 for r in rates) / len(rates), 3),
           "train_never_solved_share": round(sum(r == 0 for r in rates) / len(rates), 3),
           "build_seconds": json.loads((toy.toy_dir(seed) / "base_build.json").read_text())["seconds"]}
    atomic_write_json(toy.toy_dir(seed) / "base_report.json", rep)
    print(json.dumps(rep, indent=2))
    return rep


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Build (once) and measure the toy base model.", allow_abbrev=False)
    ap.add_argument("--seed", type=int, default=0, help="toy world seed")
    ap.add_argument("--n-samples", type=int, default=16, help="samples per problem")
    a = ap.parse_args()
    report(a.seed, a.n_samples)
