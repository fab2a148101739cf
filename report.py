"""report.py — what an RLoop run shows: RLoop against vanilla RL at equal RL steps.

    python report.py RUN_DIR          (RUN_DIR = loop.sh's OUT, default runs/loop)

Reads the stages' own outputs (explore metrics.jsonl and rollouts.jsonl, filter_stats.json, evaluate.py's
metrics.json) and writes RUN_DIR/report/summary.md with PNG plots:
  rl_curves.png   per RL step, RLoop's iterations laid end to end against vanilla: train reward, pre-clip
                  gradient norm, entropy, response length, share of groups kept by dynamic sampling
  eval.png        mean accuracy and pass@k per split after each iteration, vanilla at the same RL steps
  forgetting.png  accuracy on the probe split (a skill RL never trains): base -> each iteration
and the diversity measure behind the paper's mechanism: how similar are successful solutions to the same
problem drawn at the same RL step (intra-step) versus at different steps (inter-step)?

    python report.py LAB_DIR          (LAB_DIR = lab.sh's OUT, default runs/lab: <arm>/seed<k>/ run folders)

writes LAB_DIR/report/summary.md, lab.json and plots (lab_accuracy.png, overfit.png) over the lab's arms and
seeds: per arm, mean accuracy and pass@k per split as mean +- 95% t interval over seeds (lib/stats.py); paired
differences against vanilla (same seed), a gain only when the interval excludes 0; the overfitting curve
(train reward vs held-out pass@n over the overfit arm's steps); the strategy entropy of successful rollouts
within vs across steps (lib.toy.strategy) beside the similarity measure above; largest pre-clip gradient
norm and probe accuracy (forgetting) per arm; and the paper's four claims, each answered from those numbers.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from lib import cli, stats
from lib.records import read_jsonl

CURVES = [("reward", "train reward"), ("grad_norm", "grad norm (pre-clip)"), ("entropy", "entropy"),
          ("resp_len_mean", "response length"), ("groups_kept", "groups kept (dynamic sampling)")]
WORD = re.compile(r"\w+|[^\w\s]")


def peak_norm(row: dict) -> float:
    """A metrics row's largest pre-clip gradient norm over its updates (older rows: the step's mean)."""
    return row.get("grad_norm_max") or row.get("grad_norm") or 0


def read_rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path, allow_empty=True)] if path.exists() else []


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# --- diversity -------------------------------------------------------------------------------------------
def ngrams(text: str, n: int = 3) -> frozenset:
    """Word/symbol trigrams ("7+5=12" -> 7 + 5, + 5 =, 5 = 12): shared reasoning steps, not shared letters."""
    toks = WORD.findall(text)
    return frozenset(tuple(toks[i:i + n]) for i in range(max(1, len(toks) - n + 1)))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def diversity(rollouts: Path, max_pairs: int = 20000, seed: int = 0) -> dict | None:
    """Mean pairwise trigram-Jaccard similarity of successful responses to the same problem:
    intra = both drawn at the same RL step, inter = drawn at different steps. Pairs are subsampled
    (deterministically) to at most max_pairs of each kind."""
    by_problem: dict[str, list[tuple[int, frozenset]]] = defaultdict(list)
    if not rollouts.exists():
        return None
    with open(rollouts, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)
            if t.get("acc") and t.get("step") is not None:
                by_problem[t["problem_id"]].append((t["step"], ngrams(t["response"])))
    intra, inter = [], []
    for items in by_problem.values():
        for (s1, g1), (s2, g2) in combinations(items, 2):
            (intra if s1 == s2 else inter).append((g1, g2))
    rng = random.Random(seed)
    out = {}
    for name, pairs in (("intra_step", intra), ("inter_step", inter)):
        if len(pairs) > max_pairs:
            pairs = rng.sample(pairs, max_pairs)
        out[name] = round(sum(jaccard(a, b) for a, b in pairs) / len(pairs), 4) if pairs else None
        out[name + "_pairs"] = len(pairs)
    return out


# --- the run ---------------------------------------------------------------------------------------------
def load_run(run: Path, with_diversity: bool = True) -> dict:
    """A loop.sh run's outputs; with_diversity: also each iteration's similarity measure (reads its rollouts)."""
    iters = sorted((int(p.name[4:]), p) for p in run.glob("iter*") if p.name[4:].isdigit())
    r = {"iters": [], "vanilla": read_rows(run / "vanilla" / "metrics.jsonl"), "eval": {}}
    for i, p in iters:
        r["iters"].append({"i": i, "rl": read_rows(p / "explore" / "metrics.jsonl"),
                           "filter": read_json(p / "filter" / "filter_stats.json"),
                           "rollouts": p / "explore" / "rollouts.jsonl",
                           "diversity": diversity(p / "explore" / "rollouts.jsonl") if with_diversity else None})
    for d in sorted((run / "eval").glob("*")):
        m = read_json(d / "metrics.json")
        if m:
            r["eval"][d.name] = m
    return r


def end_to_end(r: dict) -> list[dict]:
    """RLoop's RL rows with a global step: iteration i's step s becomes (i-1) * steps_per_iter + s."""
    rows, offset = [], 0
    for it in r["iters"]:
        for row in it["rl"]:
            rows.append({**row, "global_step": offset + row["step"], "iter": it["i"]})
        offset += max((row["step"] for row in it["rl"]), default=0)
    return rows


def val_curves(rows: list[dict]) -> list[tuple[str, str]]:
    """Panels for explore.py's validation keys (val/<bench>/mean_acc, lib/validation.py), when a run has them."""
    names = dict.fromkeys(k for row in rows for k in row if k.startswith("val/") and k.endswith("/mean_acc")
                          and k != "val/mean_acc")
    return [(k, f"val {k[4:-9]} avg@n") for k in names]


def plot_curves(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loop = end_to_end(r)
    curves = CURVES + val_curves(r["vanilla"] + loop)
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2))
    for ax, (key, title) in zip(axes, curves):
        vanilla = [x for x in r["vanilla"] if key in x]  # (validation rows are sparse; a step-0 row has only them)
        if vanilla:
            ax.plot([x["step"] for x in vanilla], [x.get(key) for x in vanilla], label="vanilla RL",
                    color="tab:gray", lw=1, marker="." if key.startswith("val/") else None)
        for it in sorted({x["iter"] for x in loop}):
            seg = [x for x in loop if x["iter"] == it and key in x]
            ax.plot([x["global_step"] for x in seg], [x.get(key) for x in seg], lw=1.2, label=f"RLoop iter {it}",
                    marker="." if key.startswith("val/") else None)
        ax.set_title(title)
        ax.set_xlabel("RL step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "rl_curves.png", dpi=110)
    plt.close(fig)


def comparison(r: dict) -> list[dict]:
    """Rows of (RL steps, RLoop RL policy, RLoop consolidated policy, vanilla) evaluations."""
    rows = []
    steps = 0
    for it in r["iters"]:
        steps += max((x["step"] for x in it["rl"]), default=0)
        rows.append({"iter": it["i"], "rl_steps": steps, "rl": r["eval"].get(f"iter{it['i']}-rl"),
                     "rft": r["eval"].get(f"iter{it['i']}-rft"), "vanilla": r["eval"].get(f"vanilla-{steps}")})
    return rows


def plot_eval(r: dict, comp: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = r["eval"].get("base")
    splits = list((base or next((c["rl"] for c in comp if c["rl"]), {"benchmarks": {}}))["benchmarks"])
    if not splits:
        return
    kmax = str(max(int(k) for k in next(iter((base or comp[0]["rl"])["benchmarks"].values()))["pass@k"]))
    fig, axes = plt.subplots(2, len(splits), figsize=(4 * len(splits), 6), squeeze=False)
    for j, split in enumerate(splits):
        for row_i, (metric, label) in enumerate((("mean_acc", "mean acc"), ("pass", f"pass@{kmax}"))):
            ax = axes[row_i][j]

            def val(m):
                if not m or split not in m["benchmarks"]:
                    return None
                b = m["benchmarks"][split]
                return b["mean_acc"] if metric == "mean_acc" else b["pass@k"][kmax]

            x = [0] + [c["rl_steps"] for c in comp]
            for key, name, style in (("rl", "RLoop (RL policy)", "-o"), ("rft", "RLoop (consolidated)", "--s"),
                                     ("vanilla", "vanilla RL", "-^")):
                y = [val(base)] + [val(c[key]) for c in comp]
                pts = [(a, b) for a, b in zip(x, y) if b is not None]
                if len(pts) > 1 or (pts and pts[0][0] != 0):
                    ax.plot(*zip(*pts), style, label=name, ms=4)
            ax.set_title(f"{split}: {label}")
            ax.set_xlabel("RL steps")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "eval.png", dpi=110)
    if "probe" in splits:
        fig2, ax = plt.subplots(figsize=(4.5, 3.2))
        x = [0] + [c["rl_steps"] for c in comp]
        for key, name in (("rl", "RLoop (RL policy)"), ("rft", "RLoop (consolidated)"), ("vanilla", "vanilla RL")):
            y = [base["benchmarks"]["probe"]["mean_acc"] if base else None] + [
                c[key]["benchmarks"]["probe"]["mean_acc"] if c[key] else None for c in comp]
            pts = [(a, b) for a, b in zip(x, y) if b is not None]
            if len(pts) > 1:
                ax.plot(*zip(*pts), "-o", label=name, ms=4)
        ax.set_title("forgetting: probe accuracy (never trained by RL)")
        ax.set_xlabel("RL steps")
        if ax.lines:  # (a run with one evaluation has no curve yet)
            ax.legend(fontsize=7)
        fig2.tight_layout()
        fig2.savefig(out / "forgetting.png", dpi=110)
        plt.close(fig2)
    plt.close(fig)


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def summary(r: dict, comp: list[dict], run: Path) -> str:
    base = r["eval"].get("base")
    lines = [f"# RLoop report: `{run}`", ""]
    last = comp[-1] if comp else None
    # --- the headline table at equal RL steps
    if last and (last["rl"] or last["rft"]):
        splits = list((last["rl"] or last["rft"])["benchmarks"])
        kmax = str(max(int(k) for k in (last["rl"] or last["rft"])["average"]["pass@k"]))
        lines += [f"## RLoop vs vanilla RL at equal RL steps ({last['rl_steps']})", "",
                  "| policy | " + " | ".join(f"{s} acc | {s} pass@{kmax}" for s in splits)
                  + " | avg acc | avg pass@" + kmax + " | max grad norm |",
                  "|---" * (2 * len(splits) + 4) + "|"]
        # the largest single update's pre-clip norm (a step's grad_norm is the mean over its updates)
        loop_gn = max((peak_norm(x) for it in r["iters"] for x in it["rl"]), default=None)
        van_gn = max((peak_norm(x) for x in r["vanilla"]), default=None)
        for name, m, gn in (("base", base, None), ("RLoop, last RL policy", last["rl"], loop_gn),
                            ("RLoop, last consolidated", last["rft"], loop_gn),
                            ("vanilla RL", last["vanilla"], van_gn)):
            if not m:
                continue
            cells = []
            for s in splits:
                b = m["benchmarks"].get(s)
                cells += [fmt(b and b["mean_acc"]), fmt(b and b["pass@k"].get(kmax))]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(m['average']['mean_acc'])} | "
                         f"{fmt(m['average']['pass@k'].get(kmax))} | {fmt(gn, 2)} |")
        lines.append("")
        # --- say plainly what it shows
        a, v = last["rl"] or last["rft"], last["vanilla"]
        if a and v:
            def compare(d):  # against vanilla RL
                return ("higher" if d > 0 else "lower") + " than vanilla RL" if abs(d) > 0.005 else \
                    "about the same as vanilla RL"
            said = []
            for name, m in (("final RL policy", last["rl"]), ("final consolidated policy", last["rft"])):
                if m:
                    d_acc = m["average"]["mean_acc"] - v["average"]["mean_acc"]
                    d_pk = m["average"]["pass@k"][kmax] - v["average"]["pass@k"][kmax]
                    said.append(f"RLoop's {name} has average accuracy {compare(d_acc)} ({d_acc:+.3f}) and "
                                f"pass@{kmax} {compare(d_pk)} ({d_pk:+.3f})")
            lines += [f"**What this run shows.** After {last['rl_steps']} RL steps, " + "; ".join(said) + "."]
            if "probe" in splits and base:
                pb = base["benchmarks"]["probe"]["mean_acc"]
                rl = ", ".join(f"RLoop {n} {m['benchmarks']['probe']['mean_acc']:.3f}"
                               for n, m in (("RL", last["rl"]), ("consolidated", last["rft"])) if m)
                lines.append(f"Probe accuracy (forgetting): base {pb:.3f} -> {rl}, vanilla "
                             f"{v['benchmarks']['probe']['mean_acc']:.3f}.")
            if loop_gn is not None and van_gn is not None:
                lines.append(f"Largest pre-clip gradient norm: RLoop {loop_gn:.2f}, vanilla {van_gn:.2f}.")
            lines.append("This is one seed of a toy-scale run: differences of a few points are within noise." if
                         a["benchmarks"] and next(iter(a["benchmarks"].values()))["problems"] < 1000 else "")
            lines.append("")
    # --- by iteration
    if comp:
        lines += ["## By iteration", "", "| iter | RL steps | RL policy avg acc | consolidated avg acc | "
                  "vanilla avg acc | hard problems | RFT set | intra-step sim | inter-step sim |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c, it in zip(comp, r["iters"]):
            f = it["filter"] or {}
            d = it["diversity"] or {}
            buckets = f.get("buckets", {})
            lines.append(f"| {c['iter']} | {c['rl_steps']} | {fmt(c['rl'] and c['rl']['average']['mean_acc'])} | "
                         f"{fmt(c['rft'] and c['rft']['average']['mean_acc'])} | "
                         f"{fmt(c['vanilla'] and c['vanilla']['average']['mean_acc'])} | {buckets.get('hard', '–')} | "
                         f"{f.get('kept', '–')} | {fmt(d.get('intra_step'))} | {fmt(d.get('inter_step'))} |")
        lines += ["", "Similarity = mean pairwise Jaccard similarity of word/symbol trigram sets of two successful "
                  "responses to the same problem, drawn at the same RL step (intra) or at different steps (inter). "
                  "The paper's mechanism predicts inter < intra: intermediate checkpoints solve problems differently.",
                  ""]
    lines += ["## Plots", "", "![RL curves](rl_curves.png)", "", "![evaluation](eval.png)", "",
              "![forgetting](forgetting.png)", ""]
    return "\n".join(lines)


# --- the lab (lab.sh): arms x seeds ----------------------------------------------------------------------
# OUT/<arm>/seed<k>/ is one loop.sh run. Every number below is per seed first, then mean +- 95% t interval over
# seeds (lib/stats.py); comparisons with vanilla are paired by seed.
LOOP_ARMS = ("rloop", "no-al", "thr-0.05", "thr-0.2", "thr-0.5")  # RLoop runs: their output is the last policy
VANILLA_ARMS = ("vanilla", "kl", "overfit")  # vanilla-only runs: their output is the vanilla checkpoint
ARM_ORDER = ("rloop", "vanilla", "overfit", "no-al", "thr-0.05", "thr-0.2", "thr-0.5", "kl")


def is_lab(folder: Path) -> bool:
    """A lab folder holds <arm>/seed<k>/ run folders (a loop.sh OUT holds iter*/ and vanilla/ instead)."""
    return any(p.is_dir() for p in folder.glob("*/seed*"))


def arm_seeds(folder: Path) -> dict[str, dict[int, Path]]:
    """{arm: {seed: run folder}} for the arms whose runs finished (their .done/report exists)."""
    out: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.glob("*/seed*")):
        if p.name[4:].isdigit() and (p / ".done" / "report").exists():
            out.setdefault(p.parent.name, {})[int(p.name[4:])] = p
    return dict(sorted(out.items(), key=lambda kv: (ARM_ORDER.index(kv[0]) if kv[0] in ARM_ORDER else 99, kv[0])))


def final_eval(arm: str, r: dict) -> tuple[int, dict | None]:
    """(RL steps, evaluation) of an arm run's output policy: RLoop's last consolidated policy (its last RL policy
    when the last filter kept nothing), a vanilla run's last evaluated checkpoint."""
    comp = comparison(r)
    if arm not in VANILLA_ARMS and comp:
        last = comp[-1]
        return last["rl_steps"], last["rft"] or last["rl"]
    steps = sorted(int(k.split("-")[1]) for k in r["eval"] if k.startswith("vanilla-"))
    return (steps[-1], r["eval"][f"vanilla-{steps[-1]}"]) if steps else (0, None)


def metric_of(m: dict, split: str, key: str) -> float | None:
    """One number of an evaluate.py metrics.json: split 'average' or a benchmark; key 'acc' or 'pass@K'."""
    b = m["average"] if split == "average" else m["benchmarks"].get(split)
    if b is None:
        return None
    return b["mean_acc"] if key == "acc" else b["pass@k"].get(key[5:])


def strategy_diversity(rollouts: Path, window: int, label) -> dict | None:
    """Entropy (bits) of the solution strategies (label(response), e.g. lib.toy.strategy) among a problem's
    successful responses: within one RL step, and across the steps of a window of `window` steps (an RLoop
    iteration, what one harvest pools; vanilla cut into windows of the same length). Means over (problem, step)
    and (problem, window) cells with at least two labelled successes; plus the share of each strategy."""
    if not rollouts.exists():
        return None
    cells: dict[tuple, list] = defaultdict(list)
    with open(rollouts, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)
            if t.get("acc") and t.get("step") is not None:
                lab = label(t["response"])
                if lab is not None:
                    cells[(t["problem_id"], t["step"])].append(lab)
    if not cells:
        return None
    windows: dict[tuple, list] = defaultdict(list)
    for (pid, step), labs in cells.items():
        windows[(pid, (step - 1) // window)] += labs
    within = [stats.entropy(v) for v in cells.values() if len(v) >= 2]
    across = [stats.entropy(v) for v in windows.values() if len(v) >= 2]
    every = [x for v in cells.values() for x in v]
    shares = {k: round(every.count(k) / len(every), 4) for k in sorted(set(every))}
    return {"within_step": sum(within) / len(within) if within else None,
            "across_steps": sum(across) / len(across) if across else None, "shares": shares}


def rl_rows(arm: str, r: dict) -> list[dict]:
    """Every explore metrics row of a run, end to end (RLoop's iterations laid end to end)."""
    return r["vanilla"] if arm in VANILLA_ARMS else end_to_end(r)


def load_lab(folder: Path, label=None) -> dict:
    """Per arm and seed: the output policy's evaluation, RL rows, diversity; plus the base evaluation per seed."""
    lab = {"arms": {}, "base": {}}
    for arm, seeds in arm_seeds(folder).items():
        per = {}
        for seed, run in seeds.items():
            r = load_run(run, with_diversity=arm == "rloop")  # (the lab compares diversity of rloop and vanilla)
            steps, m = final_eval(arm, r)
            if r["eval"].get("base"):
                lab["base"].setdefault(seed, r["eval"]["base"])
            window = max((x["step"] for x in r["iters"][0]["rl"]), default=0) if r["iters"] else 0
            per[seed] = {"run": r, "steps": steps, "final": m, "rows": rl_rows(arm, r), "window": window}
        lab["arms"][arm] = per
    # the window (steps per RLoop iteration) also cuts vanilla's rollouts for the diversity comparison
    window = next((p["window"] for per in lab["arms"].values() for p in per.values() if p["window"]), 0)
    for arm, per in lab["arms"].items():
        for seed, p in per.items():
            if arm in ("rloop", "vanilla") and label is not None and window:
                its = p["run"]["iters"]
                roll = [it["rollouts"] for it in its] if arm == "rloop" else \
                    [folder / arm / f"seed{seed}" / "vanilla" / "rollouts.jsonl"]
                p["strategy"] = [strategy_diversity(x, window, label) for x in roll]
                p["similarity"] = [it["diversity"] for it in its] if arm == "rloop" else [diversity(x) for x in roll]
    return lab


def seed_values(per: dict, fn) -> dict[int, float]:
    """{seed: fn(seed's record)} without the seeds where fn gives None."""
    out = {}
    for seed, p in per.items():
        v = fn(p)
        if v is not None:
            out[seed] = v
    return out


def ci_cell(values: dict[int, float], digits: int = 3) -> str:
    if not values:
        return "–"
    m, h = stats.mean_ci(values.values())
    return stats.fmt_ci(m, h, digits)


def diff_cell(d: dict | None, higher_better: bool = True) -> str:
    if d is None:
        return "–"
    if not math.isfinite(d["half"]):
        return f"{d['mean']:+.3f} (1 seed)"
    v = stats.verdict(d, higher_better)
    return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {v}"


def lab_summary(folder: Path, lab: dict, commit: str) -> tuple[str, dict]:
    arms = lab["arms"]
    seeds = sorted({s for per in arms.values() for s in per})
    any_m = next((p["final"] for per in arms.values() for p in per.values() if p["final"]), None)
    if any_m is None:
        raise cli.UserError(f"{folder}: no finished arm with an evaluation to report")
    splits = list(any_m["benchmarks"])
    ks = sorted(any_m["average"]["pass@k"], key=int)
    kmax = ks[-1]
    base_per = {s: {"final": m} for s, m in lab["base"].items()}
    table_arms = [("base", base_per, 0)] + [(a, per, max(p["steps"] for p in per.values())) for a, per in arms.items()]
    js: dict = {"commit": commit, "seeds": seeds, "splits": splits, "ks": ks, "arms": {}, "diffs": {}}
    L = [f"# RLoop lab: `{folder}`", "",
         f"Commit {commit}; seeds {', '.join(map(str, seeds))}; every cell is the mean over seeds ± the half-width "
         f"of its 95% t interval (lib/stats.py). Evaluation: avg@{kmax} accuracy and unbiased pass@k "
         f"(k = {', '.join(ks)}) of each arm's output policy; RLoop arms: the last consolidated policy.", ""]

    def vals(per, split, key):
        return seed_values(per, lambda p: p["final"] and metric_of(p["final"], split, key))

    # --- accuracy and pass@k per split
    for split in splits + ["average"]:
        L += [f"## {split}: accuracy and pass@k", "",
              "| arm | RL steps | seeds | acc | " + " | ".join(f"pass@{k}" for k in ks) + " |",
              "|---" * (4 + len(ks)) + "|"]
        for name, per, steps in table_arms:
            cells = [ci_cell(vals(per, split, "acc"))] + [ci_cell(vals(per, split, f"pass@{k}")) for k in ks]
            L.append(f"| {name} | {steps} | {len(per)} | " + " | ".join(cells) + " |")
            js["arms"].setdefault(name, {})[split] = {
                key: vals(per, split, key) for key in ["acc"] + [f"pass@{k}" for k in ks]}
        L.append("")

    # --- paired differences against vanilla
    van = arms.get("vanilla")
    if van:
        cols = [(s, "acc") for s in splits] + [(s, f"pass@{kmax}") for s in splits] + \
               [("average", "acc"), ("average", f"pass@{kmax}")]
        L += ["## Paired differences against vanilla (same seed)", "",
              "arm − vanilla per seed, mean [95% interval]; called a gain (or loss) only when the interval "
              "excludes 0, otherwise \"no measurable difference\". (overfit runs more RL steps than vanilla.)", "",
              "| arm | " + " | ".join(f"{s} {k}" for s, k in cols) + " |", "|---" * (1 + len(cols)) + "|"]
        for arm, per in arms.items():
            if arm == "vanilla":
                continue
            cells = []
            for s, k in cols:
                d = stats.paired_diff(vals(per, s, k), vals(van, s, k))
                js["diffs"].setdefault(arm, {})[f"{s} {k}"] = d
                cells.append(diff_cell(d))
            L.append(f"| {arm} | " + " | ".join(cells) + " |")
        L.append("")

    # --- stability and forgetting
    L += ["## Stability and forgetting", "",
          "Largest pre-clip gradient norm of any single update in a run (per seed, then over seeds); probe = a "
          "task family RL never trains (forgetting: probe accuracy against the base's, paired by seed).", "",
          "| arm | max grad norm | largest over seeds | probe acc | probe − base |", "|---|---|---|---|---|"]
    base_probe = vals(base_per, "probe", "acc") if "probe" in splits else {}
    js["grad_norm_max"] = {}
    for arm, per in arms.items():
        gn = seed_values(per, lambda p: max((peak_norm(x) for x in p["rows"]), default=None))
        js["grad_norm_max"][arm] = gn
        probe = vals(per, "probe", "acc") if "probe" in splits else {}
        d = stats.paired_diff(probe, base_probe) if probe and base_probe else None
        L.append(f"| {arm} | {ci_cell(gn, 2)} | {fmt(max(gn.values()) if gn else None, 2)} | {ci_cell(probe)} | "
                 f"{diff_cell(d)} |")
    L.append("")

    # --- the overfitting curve
    of = arms.get("overfit")
    curve = overfit_curve(of, splits, kmax) if of else []
    js["overfit"] = curve
    if curve:
        L += ["## RL overfitting: vanilla run long", "",
              f"Train reward = mean reward of the rollouts sampled over the last {curve[0]['window']} steps before "
              f"each evaluation; held-out = pass@{kmax} of the checkpoint on each held-out split.", "",
              f"| RL steps | train reward | " + " | ".join(f"{s} pass@{kmax}" for s in splits) + " |",
              "|---" * (2 + len(splits)) + "|"]
        for c in curve:
            L.append(f"| {c['step']} | {ci_cell(c['reward'])} | " + " | ".join(ci_cell(c[s]) for s in splits) + " |")
        first, last = curve[0], curve[-1]  # the change over the run, paired by seed
        change = {key: stats.paired_diff(last[key], first[key]) for key in ["reward"] + splits}
        js["overfit_change"] = {"from": first["step"], "to": last["step"], **change}
        L.append(f"| change {first['step']} → {last['step']} | {diff_cell(change['reward'])} | " +
                 " | ".join(diff_cell(change[s]) for s in splits) + " |")
        L += ["", "![overfitting](overfit.png)", ""]

    # --- diversity
    div_rows = []
    for arm in ("rloop", "vanilla"):
        for seed, p in (arms.get(arm) or {}).items():
            for i, (sd, sim) in enumerate(zip(p.get("strategy") or [], p.get("similarity") or [])):
                div_rows.append((arm, seed, i, sd, sim))
    if div_rows:
        js["diversity"] = [{"arm": a, "seed": s, "part": i, "strategy": sd, "similarity": sim}
                           for a, s, i, sd, sim in div_rows]
        L += ["## Diversity of successful solutions", "",
              "Strategy entropy (bits; 2 strategies: at most 1) of a problem's successful rollouts, within one RL "
              "step and across the steps of an iteration (vanilla: the same windows of steps), mean over problems; "
              "the share of the regrouping strategy; and the paper's measure, mean trigram-Jaccard similarity "
              "within a step (intra) and across steps (inter). Over seeds.", "",
              "| arm | entropy within step | entropy across steps | share 'group' | similarity intra | "
              "similarity inter |", "|---|---|---|---|---|---|"]
        for arm in ("rloop", "vanilla"):
            rows = [r for r in div_rows if r[0] == arm]
            if not rows:
                continue

            def per_seed(fn):  # mean over a seed's parts (iterations / windows), then over seeds
                out = defaultdict(list)
                for _, s, _, sd, sim in rows:
                    v = fn(sd, sim)
                    if v is not None:
                        out[s].append(v)
                return {s: sum(v) / len(v) for s, v in out.items()}

            L.append(f"| {arm} | {ci_cell(per_seed(lambda sd, sim: sd and sd['within_step']))} | "
                     f"{ci_cell(per_seed(lambda sd, sim: sd and sd['across_steps']))} | "
                     f"{ci_cell(per_seed(lambda sd, sim: sd and sd['shares'].get('group', 0.0)))} | "
                     f"{ci_cell(per_seed(lambda sd, sim: sim and sim['intra_step']))} | "
                     f"{ci_cell(per_seed(lambda sd, sim: sim and sim['inter_step']))} |")
        L.append("")

    # --- the paper's open questions: the hard-problem threshold, a KL-constrained baseline
    L += open_questions(arms, kmax, js, lambda per, key: vals(per, "average", key))

    # --- the paper's claims, in words
    L += claims(arms, splits, kmax, js)
    L += ["## Plots", "", "![accuracy per arm](lab_accuracy.png)", ""]
    return "\n".join(L), js


def mean_or_none(v: list) -> float | None:
    return sum(v) / len(v) if v else None


THRESHOLD_ARMS = (("thr-0.05", 0.05), ("rloop", 0.1), ("thr-0.2", 0.2), ("thr-0.5", 0.5), ("no-al", 1.0))


def open_questions(arms: dict, kmax: str, js: dict, avg) -> list[str]:
    """The threshold sweep (each RLoop arm against rloop, THRESHOLD 0.1, paired by seed: what the filter kept and
    what it bought) and the KL-constrained baseline (against vanilla). avg(per, key): {seed: average metric}."""
    out, ref = [], arms.get("rloop")
    sweep = [(a, t) for a, t in THRESHOLD_ARMS if a in arms]
    if ref and len(sweep) > 1:
        out += ["## Open question: the hard-problem threshold", "",
                "RLoop keeps the successes of problems with 0 < success < THRESHOLD (no-al: 1.0, every problem with a "
                "success: no active learning). Per arm, the RFT set per iteration (mean over iterations, then "
                "seeds) and the output policy's average accuracy / pass@k, each against rloop (0.1) paired by seed.",
                "", f"| arm | threshold | problems kept / iter | RFT examples / iter | average acc | average "
                f"pass@{kmax} | acc − rloop | pass@{kmax} − rloop |", "|---" * 8 + "|"]
        js["threshold"] = {}
        for arm, thr in sweep:
            per = arms[arm]

            def filt(key, per=per):  # {seed: mean over iterations of filter_stats[key]}
                return seed_values(per, lambda p: mean_or_none([it["filter"][key] for it in p["run"]["iters"]
                                                                if it.get("filter")]))
            acc, pk = avg(per, "acc"), avg(per, f"pass@{kmax}")
            d_acc = stats.paired_diff(acc, avg(ref, "acc")) if arm != "rloop" else None
            d_pk = stats.paired_diff(pk, avg(ref, f"pass@{kmax}")) if arm != "rloop" else None
            js["threshold"][arm] = {"threshold": thr, "acc": acc, f"pass@{kmax}": pk, "diff_acc": d_acc,
                                    f"diff_pass@{kmax}": d_pk}
            out.append(f"| {arm} | {thr} | {ci_cell(filt('problems_selected'), 1)} | {ci_cell(filt('kept'), 1)} | "
                       f"{ci_cell(acc)} | {ci_cell(pk)} | {diff_cell(d_acc) if d_acc else '–'} | "
                       f"{diff_cell(d_pk) if d_pk else '–'} |")
        out.append("")
    van, kl = arms.get("vanilla"), arms.get("kl")
    if van and kl:
        d_acc, d_pk = (stats.paired_diff(avg(kl, k), avg(van, k)) for k in ("acc", f"pass@{kmax}"))
        kl_mean = seed_values(kl, lambda p: mean_or_none([x["kl"] for x in p["rows"] if x.get("kl") is not None]))
        js["kl"] = {"diff_acc": d_acc, f"diff_pass@{kmax}": d_pk, "kl_mean": kl_mean}
        out += ["## Open question: a KL-constrained baseline", "",
                f"kl = vanilla with a KL penalty to the initial policy (explore.py --kl-coef; verl's low_var_kl). "
                f"Against vanilla, paired by seed: average acc {diff_cell(d_acc)}; average pass@{kmax} "
                f"{diff_cell(d_pk)}. Mean KL term per update: {ci_cell(kl_mean, 4)}.", ""]
    return out


def overfit_curve(per: dict, splits: list[str], kmax: str) -> list[dict]:
    """Per evaluated checkpoint of the overfit runs: RL step, train reward over the preceding window, held-out
    pass@kmax per split ({seed: value} each)."""
    steps = sorted({int(k.split("-")[1]) for p in per.values() for k in p["run"]["eval"] if k.startswith("vanilla-")})
    if not steps:
        return []
    window = steps[0]
    out = []
    for st in steps:
        row = {"step": st, "window": window, "reward": {}}
        for seed, p in per.items():
            rew = [x["reward"] for x in p["rows"] if st - window < x.get("step", 0) <= st and x.get("reward") is not None]
            if rew:
                row["reward"][seed] = sum(rew) / len(rew)
        for s in splits:
            row[s] = seed_values(per, lambda p: (m := p["run"]["eval"].get(f"vanilla-{st}")) and metric_of(m, s, f"pass@{kmax}"))
        out.append(row)
    return out


def claims(arms: dict, splits: list[str], kmax: str, js: dict) -> list[str]:
    """The paper's four claims, each answered from the paired differences (rloop vs vanilla)."""
    d = js["diffs"].get("rloop", {})
    if not d:
        return []
    gn_r, gn_v = js["grad_norm_max"].get("rloop", {}), js["grad_norm_max"].get("vanilla", {})
    d_gn = stats.paired_diff(gn_r, gn_v) if gn_r and gn_v else None
    out = ["## The paper's four claims on this lab (rloop vs vanilla, paired by seed)", ""]
    items = [("accuracy (average acc)", d.get("average acc"), True),
             (f"pass@k (average pass@{kmax})", d.get(f"average pass@{kmax}"), True),
             ("stability (largest pre-clip gradient norm; lower is better)", d_gn, False)]
    if "probe" in splits:
        items.append(("forgetting (probe accuracy)", d.get("probe acc"), True))
    for name, diff, hb in items:
        v = stats.verdict(diff, hb)
        word = {"gain": "reproduced", "loss": "reversed", "no measurable difference": "not reproduced "
                "(no measurable difference)", "not enough seeds": "undecided (not enough seeds)"}[v]
        out.append(f"- {name}: {word}: {diff_cell(diff, hb)}")
    js["claims"] = {name: stats.verdict(diff, hb) for name, diff, hb in items}
    return out + [""]


def plot_lab(lab: dict, js: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = js["splits"] + ["average"]
    names = list(js["arms"])
    fig, axes = plt.subplots(1, len(splits), figsize=(3.6 * len(splits), 3.4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        ms, hs = [], []
        for n in names:
            v = js["arms"][n].get(split, {}).get("acc") or {}
            m, h = stats.mean_ci(v.values()) if v else (float("nan"), float("nan"))
            ms.append(m)
            hs.append(h if math.isfinite(h) else 0.0)
        ax.bar(range(len(names)), ms, yerr=hs, capsize=3, color="tab:blue", alpha=0.75)
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_title(f"{split}: mean acc (95% CI)")
    fig.tight_layout()
    fig.savefig(out / "lab_accuracy.png", dpi=110)
    plt.close(fig)
    curve = js.get("overfit") or []
    if curve:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        x = [c["step"] for c in curve]

        def band(ax, key, label, color):
            pts = [(xx, stats.mean_ci(c[key].values())) for xx, c in zip(x, curve) if c[key]]
            if not pts:
                return
            xs = [p[0] for p in pts]
            m = [p[1][0] for p in pts]
            h = [p[1][1] if math.isfinite(p[1][1]) else 0.0 for p in pts]
            ax.plot(xs, m, "-o", ms=3, color=color, label=label)
            ax.fill_between(xs, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)], color=color, alpha=0.2)

        band(ax, "reward", "train reward (left)", "tab:red")
        ax.set_xlabel("RL steps")
        ax.set_ylabel("train reward")
        ax2 = ax.twinx()
        for s, color in zip(js["splits"], ("tab:blue", "tab:green", "tab:purple", "tab:orange")):
            band(ax2, s, f"{s} pass@{js['ks'][-1]} (right)", color)
        ax2.set_ylabel("held-out pass@k")
        ax.set_title("RL overfitting: vanilla RL run long (mean, 95% band)")
        fig.tight_layout()
        fig.subplots_adjust(bottom=0.3)  # room for the legend under the axes, clear of the curves and the ticks
        fig.legend(fontsize=7, loc="lower center", ncol=2)
        fig.savefig(out / "overfit.png", dpi=110)
        plt.close(fig)


def git_commit(folder: Path) -> str:
    """The commit the lab ran on (lab.sh records it at its start), else the working tree's now."""
    rec = folder / "lab_commit"
    if rec.exists():
        return rec.read_text(encoding="utf-8").strip()
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lab_main(folder: Path) -> None:
    try:
        from lib.toy import strategy as label
    except ImportError:  # (no toy: no strategy labels)
        label = None
    lab = load_lab(folder, label)
    if not lab["arms"]:
        raise cli.UserError(f"{folder}: no finished arm run (<arm>/seed<k>/.done/report) to report")
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    text, js = lab_summary(folder, lab, git_commit(folder))
    plot_lab(lab, js, out)
    cli.atomic_write_text(out / "summary.md", text)
    cli.atomic_write_json(out / "lab.json", js)
    print(text)
    print(f"wrote {out / 'summary.md'}")


def main(argv=None):
    p = cli.make_parser(__doc__)
    p.add_argument("run", nargs="?", default="runs/loop", help="loop.sh's OUT folder, or lab.sh's (the lab report)")
    args = p.parse_args(argv)
    run = Path(args.run)
    if not run.is_dir():
        raise cli.UserError(f"{run}: no such run folder")
    if is_lab(run):
        return lab_main(run)
    r = load_run(run)
    if not r["iters"] and not r["vanilla"]:
        raise cli.UserError(f"{run}: no iter*/ or vanilla/ results to report")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    comp = comparison(r)
    plot_curves(r, out)
    plot_eval(r, comp, out)
    text = summary(r, comp, run)
    cli.atomic_write_text(out / "summary.md", text)
    cli.atomic_write_json(out / "report.json", {"comparison": comp and [
        {k: (v["average"] if isinstance(v, dict) and "average" in v else v) for k, v in c.items()} for c in comp],
        "diversity": {it["i"]: it["diversity"] for it in r["iters"]},
        "filter": {it["i"]: it["filter"] for it in r["iters"]}})
    print(text)
    print(f"wrote {out / 'summary.md'}")


if __name__ == "__main__":
    cli.run_main(main)
