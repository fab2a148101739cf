"""The lab report (report.py LAB_DIR): lib/lab/tables.py's and lib/lab/questions.py's records rendered as
LAB_DIR/report/summary.md, lab.json and plots (lab_accuracy.png, overfit.png, horizon.png, stability.png). It opens
with the verdicts on the paper's claims in words, then the answers to the open questions.
"""
from __future__ import annotations

import dataclasses
import math
import subprocess
from pathlib import Path

from lib.lab import questions as Q
from lib.lab import tables as T
from lib.lab.report_run import fmt
from lib.run import cli


def interval(d: T.Difference | None) -> str:
    if d is None:
        return "no seed in common"
    if not math.isfinite(d.half):
        return f"{d.mean:+.3f}"  # (the verdict says: one seed)
    return f"{d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}]"


def cell(e: T.Estimate | None, digits: int = 3) -> str:
    return e.cell(digits) if e else "–"


def diff_cell(d: T.Difference | None, higher_better: bool = True) -> str:
    return d.cell(higher_better) if d else "–"


def verdict_lines(t: T.LabTables) -> list[str]:
    """One line per claim, every judged pair in it (in order of RL steps), then the threshold sweep's finding."""
    if not t.verdicts and not t.sweep_finding:
        return []
    out = ["## Verdicts", "",
           "Each of the paper's claims, judged on an arm against the arm it is measured against (RLoop − vanilla RL "
           "at equal RL steps), paired by seed: mean difference [95% interval]. Reproduced only when the interval "
           "excludes 0 in the paper's direction.", ""]
    claims = list(dict.fromkeys(v.claim for v in t.verdicts))
    for claim in claims:
        vs = sorted((v for v in t.verdicts if v.claim == claim), key=lambda v: v.steps)
        better = "higher" if vs[0].higher_better else "lower"
        parts = [f"at {v.steps} RL steps, {v.arm} − {v.against}: {v.word}, {interval(v.diff)}" for v in vs]
        out.append(f"- **{claim}** ({vs[0].metric}; {better} is better): " + "; ".join(parts))
    if t.sweep_finding:
        out.append(f"- {t.sweep_finding}")
    return out + [""]


def question_lines(q: Q.Questions) -> list[str]:
    """One line per open question whose two arms ran: each metric's paired difference, and for a gradient-norm
    question the first blow-up step of both arms."""
    if not q.rows:
        return []
    out = ["## Open questions", "",
           "Each question: the first arm − the second at the first's RL steps, paired by seed, mean [95% interval]; "
           "higher or lower only when the interval excludes 0 (lib/lab/arms.py QUESTIONS).", ""]
    for r in q.rows:
        parts = [f"{a.metric} {interval(a.diff)}, {a.word}" for a in r.answers]
        line = f"- **{r.ask}** {r.arm} − {r.against} at {r.steps} RL steps: " + "; ".join(parts)
        if r.first_exceed:
            line += (f". First step with a gradient norm above {q.blowup:g}× its run's median: "
                     + "; ".join(f"{arm} {Q.exceed_words(s)}" for arm, s in r.first_exceed.items()))
        out.append(line + ".")
    return out + [""]


def stability_lines(q: Q.Questions) -> list[str]:
    """The per-step stability of every arm: its largest step norm, the first blow-up, the largest sampler gap."""
    out = ["## Stability per RL step", "",
           f"explore.py's per-step gradient norm (the mean pre-clip norm of a step's updates) and the sampler/trainer "
           f"gap (rollout_probs_diff_max: the largest per-token probability difference), over every step and seed; "
           f"a blow-up is a step whose norm exceeds {q.blowup:g}× the median of its own run's.", "",
           "| arm | largest step norm | first blow-up | largest rollout_probs_diff_max |", "|---|---|---|---|"]
    out += [f"| {s.arm} | {fmt(s.largest_norm, 3)} | {Q.exceed_words(s.first_exceed)} | "
            f"{'–' if s.largest_gap is None else f'{s.largest_gap:.3g}'} |" for s in q.stability]
    return out + (["", "![stability](stability.png)"] if q.curves else []) + [""]


def markdown(t: T.LabTables, q: Q.Questions) -> str:
    k = t.kmax
    L = [f"# RLoop lab: `{t.folder}`", "",
         f"Commit {t.commit}; seeds {', '.join(map(str, t.seeds))}; every cell is the mean over seeds ± the half-width "
         f"of its 95% t interval (lib/lab/stats.py). Evaluation: avg@{k} accuracy and unbiased pass@k "
         f"(k = {', '.join(t.ks)}) of each arm's output policy; RLoop arms: the last consolidated policy.", ""]
    L += verdict_lines(t)
    L += question_lines(q)
    for split, rows in t.accuracy.items():
        L += [f"## {split}: accuracy and pass@k", "",
              "| arm | RL steps | seeds | acc | " + " | ".join(f"pass@{x}" for x in t.ks) + " |",
              "|---" * (4 + len(t.ks)) + "|"]
        L += [f"| {r.arm} | {r.rl_steps} | {r.seeds} | {cell(r.acc)} | "
              + " | ".join(cell(r.pass_at[x]) for x in t.ks) + " |" for r in rows]
        L.append("")
    if t.differences:
        L += ["## Paired differences", "",
              "arm − the arm it is measured against (lib/lab/arms.py), per seed, mean [95% interval]; a gain (or loss) "
              "only when the interval excludes 0, otherwise \"no measurable difference\".", "",
              "| arm | against | " + " | ".join(t.diff_columns) + " |", "|---" * (2 + len(t.diff_columns)) + "|"]
        L += [f"| {r.arm} | {r.against} | " + " | ".join(diff_cell(r.cells[c]) for c in t.diff_columns) + " |"
              for r in t.differences]
        L.append("")
    L += ["## Stability and forgetting", "",
          "Largest pre-clip gradient norm of any single update in a run (per seed, then over seeds); probe = a task "
          "family RL never trains (forgetting: probe accuracy against the base's, paired by seed).", "",
          "| arm | max grad norm | largest over seeds | probe acc | probe − base |", "|---|---|---|---|---|"]
    L += [f"| {r.arm} | {cell(r.grad_norm, 2)} | {fmt(r.largest, 2)} | {cell(r.probe)} | {diff_cell(r.probe_vs_base)} |"
          for r in t.stability]
    L.append("")
    L += stability_lines(q)
    for c in t.overfit:
        if not c.points:
            continue
        first, last = c.points[0], c.points[-1]
        L += [f"## RL overfitting: {c.arm}", "",
              f"Train reward = mean reward of the rollouts sampled over the last {first.window} steps before each "
              f"evaluation; held-out = pass@{k} of the checkpoint on each held-out split.", "",
              "| RL steps | train reward | " + " | ".join(f"{s} pass@{k}" for s in t.splits) + " |",
              "|---" * (2 + len(t.splits)) + "|"]
        L += [f"| {p.step} | {cell(p.reward)} | " + " | ".join(cell(p.held_out[s]) for s in t.splits) + " |"
              for p in c.points]
        L.append(f"| change {first.step} → {last.step} | {diff_cell(c.change['reward'])} | "
                 + " | ".join(diff_cell(c.change[s]) for s in t.splits) + " |")
        L += ["", "![overfitting](overfit.png)", ""]
    if t.horizon:
        L += ["## The horizon: held-out accuracy and pass@k against RL steps", "",
              "Every evaluation of the curve arms (RLoop: each iteration's RL policy and consolidated policy), "
              "average over the held-out splits.", "",
              f"| RL steps | arm | policy | seeds | average acc | average pass@{k} |", "|---|---|---|---|---|---|"]
        for p in sorted(t.horizon, key=lambda p: (p.step, p.arm, p.policy)):
            n = len(p.acc["average"].values) if p.acc["average"] else 0
            L.append(f"| {p.step} | {p.arm} | {p.policy} | {n} | {cell(p.acc['average'])} | "
                     f"{cell(p.pass_k['average'])} |")
        L += ["", "![horizon](horizon.png)", ""]
    if t.diversity:
        L += ["## Diversity of successful solutions", "",
              "Strategy entropy (bits; 2 strategies: at most 1) of a problem's successful rollouts, within one RL step "
              "and across the steps of an iteration (vanilla: the same windows of steps), mean over problems; the "
              "share of the regrouping strategy; and the paper's measure, mean trigram-Jaccard similarity within a "
              "step (intra) and across steps (inter), over a seeded sample (lib/lab/diversity.py). Over seeds.", "",
              "| arm | entropy within step | entropy across steps | share 'group' | similarity intra | "
              "similarity inter |", "|---|---|---|---|---|---|"]
        L += [f"| {r.arm} | {cell(r.within_step)} | {cell(r.across_steps)} | {cell(r.share_group)} | "
              f"{cell(r.similarity_intra)} | {cell(r.similarity_inter)} |" for r in t.diversity]
        L.append("")
    if t.sweep:
        L += ["## Open question: the hard-problem threshold", "",
              "RLoop keeps the successes of problems with 0 < success < THRESHOLD (1.0: every problem with a success: "
              "no active learning). Per arm, the RFT set per iteration (mean over iterations, then seeds) and the "
              f"output policy's average accuracy / pass@k, each against {t.sweep_reference} paired by seed.", "",
              f"| arm | threshold | problems kept / iter | RFT examples / iter | average acc | average pass@{k} | "
              f"acc − {t.sweep_reference} | pass@{k} − {t.sweep_reference} |", "|---" * 8 + "|"]
        L += [f"| {r.arm} | {r.threshold:g} | {cell(r.problems_selected, 1)} | {cell(r.rft_examples, 1)} | "
              f"{cell(r.acc)} | {cell(r.pass_k)} | {diff_cell(r.d_acc)} | {diff_cell(r.d_pass)} |" for r in t.sweep]
        L += ["", t.sweep_finding, ""]
    for r in t.kl:
        L += ["## Open question: a KL-constrained baseline", "",
              f"{r.arm} = vanilla with a KL penalty to the initial policy (explore.py --kl-coef; verl's low_var_kl). "
              f"Against {r.against}, paired by seed: average acc {diff_cell(r.d_acc)}; average pass@{k} "
              f"{diff_cell(r.d_pass)}. Mean KL term per update: {cell(r.kl_mean, 4)}.", ""]
    L += ["## Plots", "", "![accuracy per arm](lab_accuracy.png)", ""]
    return "\n".join(L)


def plots(t: T.LabTables, q: Q.Questions, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mh(e: T.Estimate | None) -> tuple[float, float]:
        return (e.mean, e.half if math.isfinite(e.half) else 0.0) if e else (float("nan"), 0.0)

    splits = t.splits + ["average"]
    fig, axes = plt.subplots(1, len(splits), figsize=(3.6 * len(splits), 3.4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        rows = t.accuracy[split]
        ms, hs = zip(*(mh(r.acc) for r in rows))
        ax.bar(range(len(rows)), ms, yerr=hs, capsize=3, color="tab:blue", alpha=0.75)
        ax.set_xticks(range(len(rows)), [r.arm for r in rows], rotation=60, fontsize=7)
        ax.set_title(f"{split}: mean acc (95% CI)")
    fig.tight_layout()
    fig.savefig(out / "lab_accuracy.png", dpi=110)
    plt.close(fig)

    def band(ax, xs, es, label, color, style="-o"):
        pts = [(x, *mh(e)) for x, e in zip(xs, es) if e]
        if pts:
            x, m, h = zip(*pts)
            ax.plot(x, m, style, ms=3, color=color, label=label)
            ax.fill_between(x, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)], color=color, alpha=0.2)

    colors = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink")
    c = next((c for c in t.overfit if c.points), None)
    if c:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        xs = [p.step for p in c.points]
        band(ax, xs, [p.reward for p in c.points], "train reward (left)", "tab:red")
        ax.set_xlabel("RL steps")
        ax.set_ylabel("train reward")
        ax2 = ax.twinx()
        for s, color in zip(t.splits, colors):
            band(ax2, xs, [p.held_out[s] for p in c.points], f"{s} pass@{t.kmax} (right)", color)
        ax2.set_ylabel("held-out pass@k")
        ax.set_title(f"RL overfitting: {c.arm} (mean, 95% band)")
        fig.tight_layout()
        fig.subplots_adjust(bottom=0.3)  # room for the legend under the axes, clear of the curves and the ticks
        fig.legend(fontsize=7, loc="lower center", ncol=2)
        fig.savefig(out / "overfit.png", dpi=110)
        plt.close(fig)
    if t.horizon:
        series = list(dict.fromkeys((p.arm, p.policy) for p in t.horizon if p.policy != "base"))
        fig, axes = plt.subplots(2, len(splits), figsize=(4 * len(splits), 6), squeeze=False)
        for j, split in enumerate(splits):
            for i, (what, label) in enumerate((("acc", "mean acc"), ("pass_k", f"pass@{t.kmax}"))):
                ax = axes[i][j]
                for (arm, policy), color in zip(series, colors * 3):
                    pts = sorted((p for p in t.horizon if p.arm == arm and p.policy in (policy, "base")),
                                 key=lambda p: p.step)
                    band(ax, [p.step for p in pts], [getattr(p, what)[split] for p in pts], f"{arm} ({policy})",
                         color, "--s" if policy == "consolidated" else "-o")
                ax.set_title(f"{split}: {label}")
                ax.set_xlabel("RL steps")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "horizon.png", dpi=110)
        plt.close(fig)
    if q.curves:  # every seed's own line: a mean over seeds would hide a spike in one of them
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for c, color in zip(q.curves, colors * 3):
            for i, pts in enumerate(c.seeds.values()):
                for ax, j in zip(axes, (1, 2)):
                    xy = [(p[0], p[j]) for p in pts if p[j] is not None and math.isfinite(p[j]) and p[j] > 0]
                    if xy:
                        ax.plot(*zip(*xy), lw=0.8, alpha=0.7, color=color, label=c.arm if i == 0 else None)
        for ax, title in zip(axes, ("gradient norm per step (pre-clip, mean of its updates)",
                                    "sampler/trainer gap: rollout_probs_diff_max")):
            ax.set_yscale("log")
            ax.set_xlabel("RL steps")
            ax.set_title(title, fontsize=9)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "stability.png", dpi=110)
        plt.close(fig)


def as_json(obj):
    """The records as strict JSON values (nan -> null; the properties a record derives are left to readers)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)} | (
            {"word": obj.word} if isinstance(obj, (T.Verdict, Q.Answer)) else {})
    if isinstance(obj, dict):
        return {str(k): as_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def git_commit(folder: Path) -> str:
    """The commit the lab ran on (lab.py records it at its start), else the working tree's now."""
    rec = folder / "lab_commit"
    if rec.exists():
        return rec.read_text(encoding="utf-8").strip()
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(folder: Path) -> str:
    """LAB_DIR/report/: summary.md, lab.json and the plots. Returns the summary."""
    try:
        from lib.worlds.toy import strategy as label
    except ImportError:  # (no toy: no strategy labels)
        label = None
    lab = T.load(folder, label)
    if not lab:
        raise cli.UserError(f"{folder}: no finished arm run (<arm>/seed<k>/.done/report) to report")
    try:
        t = T.tables(folder, lab, git_commit(folder))
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    q = Q.questions(lab, t)
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots(t, q, out)
    text = markdown(t, q)
    cli.atomic_write_text(out / "summary.md", text)
    cli.atomic_write_json(out / "lab.json", as_json(t) | {"questions": as_json(q)})
    return text

