"""The report of one loop.sh run: RLoop against vanilla RL at equal RL steps (report.py RUN_DIR).

Reads the stages' own outputs (explore metrics.jsonl and rollouts.jsonl, filter_stats.json, evaluate.py's
metrics.json) and writes RUN_DIR/report/summary.md, report.json and PNG plots:
  rl_curves.png   per RL step, RLoop's iterations laid end to end against vanilla: train reward, pre-clip
                  gradient norm, entropy, response length, share of groups kept by dynamic sampling
  eval.png        mean accuracy and pass@k per split after each iteration, vanilla at the same RL steps
  forgetting.png  accuracy on the probe split (a skill RL never trains): base -> each iteration
and the diversity measure behind the paper's mechanism (lib/lab/diversity.py): how similar are successful solutions
to the same problem drawn at the same RL step (intra-step) versus at different steps (inter-step)?
"""
from __future__ import annotations

import json
from pathlib import Path

from lib.algo.passk import ks_of, pass_at
from lib.lab.diversity import similarity
from lib.run import cli
from lib.run.records import read_jsonl

CURVES = [("reward", "train reward"), ("grad_norm", "grad norm (pre-clip)"), ("entropy", "entropy"),
          ("resp_len_mean", "response length"), ("groups_kept", "groups kept (dynamic sampling)"),
          ("rollout_probs_diff_max", "engine vs trainer: max |p diff|")]


def peak_norm(row: dict) -> float:
    """A metrics row's largest pre-clip gradient norm over its updates (0 for a validation-only row)."""
    return row.get("grad_norm_max") or 0


def read_rows(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path, allow_empty=True)] if path.exists() else []


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def engine_gap(rows: list[dict]) -> str:
    """'mean M, max X over N steps' of explore's rollout_probs_diff_* ('' when no row has them)."""
    means = [r["rollout_probs_diff_mean"] for r in rows if r.get("rollout_probs_diff_mean") is not None]
    peaks = [r["rollout_probs_diff_max"] for r in rows if r.get("rollout_probs_diff_max") is not None]
    if not means:
        return ""
    return f"mean {sum(means) / len(means):.3g}, max {max(peaks):.3g} over {len(means)} steps"


def capped_steps(rows: list[dict]) -> str:
    """'N of M': RL steps whose generation stopped at the --max-gen-batches cap (explore's `capped`), of those
    that record it; '' when none does."""
    steps = [r for r in rows if "capped" in r]
    return f"{sum(int(r['capped']) for r in steps)} of {len(steps)}" if steps else ""


# --- the run ---------------------------------------------------------------------------------------------
def load_run(run: Path, with_diversity: bool = True) -> dict:
    """A loop.sh run's outputs; with_diversity: also each iteration's similarity measure (reads its rollouts)."""
    iters = sorted((int(p.name[4:]), p) for p in run.glob("iter*") if p.name[4:].isdigit())
    r = {"iters": [], "vanilla": read_rows(run / "vanilla" / "metrics.jsonl"), "eval": {}}
    for i, p in iters:
        r["iters"].append({"i": i, "rl": read_rows(p / "explore" / "metrics.jsonl"),
                           "filter": read_json(p / "filter" / "filter_stats.json"),
                           "rollouts": p / "explore" / "rollouts.jsonl",
                           "diversity": similarity(p / "explore" / "rollouts.jsonl") if with_diversity else None})
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
    """Panels for explore.py's validation keys (val/<bench>/mean_acc, lib/engine/validation.py), when a run has them."""
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
    kmax = max(ks_of(next(iter((base or comp[0]["rl"])["benchmarks"].values()))), key=int)
    fig, axes = plt.subplots(2, len(splits), figsize=(4 * len(splits), 6), squeeze=False)
    for j, split in enumerate(splits):
        for row_i, (field, label) in enumerate((("mean_acc", "mean acc"), (f"pass@{kmax}", f"pass@{kmax}"))):
            ax = axes[row_i][j]

            def val(m, split=split, field=field):
                b = m and m["benchmarks"].get(split)
                return b.get(field) if b else None

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


def cell(x) -> str:
    return "–" if x is None else str(x)


def summary(r: dict, comp: list[dict], run: Path) -> str:
    base = r["eval"].get("base")
    lines = [f"# RLoop report: `{run}`", ""]
    last = comp[-1] if comp else None
    # --- the headline table at equal RL steps
    if last and (last["rl"] or last["rft"]):
        splits = list((last["rl"] or last["rft"])["benchmarks"])
        kmax = max(ks_of((last["rl"] or last["rft"])["average"]), key=int)
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
                cells += [fmt(b and b["mean_acc"]), fmt(b and pass_at(b, kmax))]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(m['average']['mean_acc'])} | "
                         f"{fmt(pass_at(m['average'], kmax))} | {fmt(gn, 2)} |")
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
                    d_pk = pass_at(m["average"], kmax) - pass_at(v["average"], kmax)
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
                         f"{cell(f.get('kept_trajectories'))} | {fmt(d.get('intra_step'))} | "
                         f"{fmt(d.get('inter_step'))} |")
        lines += ["", "Similarity = mean pairwise Jaccard similarity of word/symbol trigram sets of two successful "
                  "responses to the same problem, drawn at the same RL step (intra) or at different steps (inter), "
                  "over a seeded sample of problems and of their successes (lib/lab/diversity.py). The paper's "
                  "mechanism predicts inter < intra: intermediate checkpoints solve problems differently.", ""]
    # --- RL steps the generation-batch cap cut short
    capped = [(name, capped_steps(rows)) for name, rows in
              (("RLoop", [x for it in r["iters"] for x in it["rl"]]), ("vanilla", r["vanilla"]))]
    gaps = [(name, engine_gap(rows)) for name, rows in
            (("RLoop", [x for it in r["iters"] for x in it["rl"]]), ("vanilla", r["vanilla"]))]
    if any(c for _, c in capped) or any(g for _, g in gaps):
        lines += ["## RL", ""]
    if any(c for _, c in capped):
        lines += ["capped steps: " + ", ".join(f"{c} ({name})" for name, c in capped if c)
                  + " — steps whose sampling stopped at explore.py's --max-gen-batches before dynamic sampling had "
                  "--prompts-per-step prompts with a reward spread (they trained on fewer).", ""]
    if any(g for _, g in gaps):
        lines += ["engine vs trainer: " + "; ".join(f"{g} ({name})" for name, g in gaps if g)
                  + " — |p| of each trained token as the rollout engine sampled it against the training forward "
                  "(rollout_probs_diff_mean / _max): rounding when both compute in fp32; larger gaps are the "
                  "off-policy drift of a lower-precision or different-kernel sampler.", ""]
    lines += ["## Plots", "", "![RL curves](rl_curves.png)", "", "![evaluation](eval.png)", "",
              "![forgetting](forgetting.png)", ""]
    return "\n".join(lines)




def write_report(run: Path) -> str:
    """RUN/report/: summary.md, report.json and the plots. Returns the summary."""
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
    return text
