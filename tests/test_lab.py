"""lab.sh end to end on a micro lab in seconds: 2 seeds, the arms rloop / vanilla / overfit, stand-in training
and evaluation stages (a PYTHON shim; harvest.py, filter.py and report.py are the real ones), the lab report's
numbers against hand-computed ones, reuse of shared work, and a rerun that skips every finished arm."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The shim. explore.py writes rollouts in the toy's two written forms and metrics rows; it resumes (--resume) from
# the rows already there. evaluate.py's accuracy is a literal function of the policy it is given and the seed:
#   base 0.30; RLoop's consolidated policy 0.50 + 0.01 * seed; vanilla at step s: 0.40 + s / 1000 + 0.02 * seed
SHIM = '''#!{python}
import json, os, re, sys
from pathlib import Path

script, args = sys.argv[1], sys.argv[2:]
with open(os.environ["SHIM_LOG"], "a") as f:
    f.write(json.dumps([script, *args]) + "\\n")
if script in ("harvest.py", "filter.py", "report.py"):
    os.execv(sys.executable, [sys.executable, script, *args])
flag = lambda name: args[args.index(name) + 1]
out = Path(flag("--out"))
out.mkdir(parents=True, exist_ok=True)
if script == "explore.py":
    steps, every, seed = int(flag("--steps")), int(flag("--save-every")), int(flag("--seed"))
    m = out / "metrics.jsonl"
    start = len(m.read_text().splitlines()) if "--resume" in args and m.exists() else 0
    with open(out / "rollouts.jsonl", "a" if start else "w") as f, open(m, "a" if start else "w") as g:
        for s in range(start + 1, steps + 1):
            for j in range(4):  # problem a: 1 success in 4 per step (hard at THRESHOLD 0.5), b: never
                resp = ("1+2=3" if (s + j) % 2 else "1+2+4-1") + "\\nAnswer: 3"
                f.write(json.dumps({{"problem_id": "a", "prompt": "a?", "response": resp, "reward": 1.0 if j == 0
                                    else -1.0, "acc": j == 0, "step": s}}) + "\\n")
                f.write(json.dumps({{"problem_id": "b", "prompt": "b?", "response": "x", "reward": -1.0, "acc": False,
                                    "step": s}}) + "\\n")
            g.write(json.dumps({{"step": s, "reward": -1 + s / 100, "grad_norm": 1.0, "grad_norm_max": 1 + seed + s / 10}})
                    + "\\n")
    for s in range(every, steps + 1, every):
        (out / f"ckpt_{{s:06d}}").mkdir(exist_ok=True)
elif script == "consolidate.py":
    (out / "config.json").write_text("{{}}")
elif script == "evaluate.py":
    model, seed = flag("--model"), int(flag("--seed"))
    if model.endswith("consolidated"):
        acc = 0.5 + 0.01 * seed
    elif "ckpt_" in model and "/vanilla/" in model:
        acc = 0.4 + int(re.search(r"ckpt_(\\d+)", model).group(1)) / 1000 + 0.02 * seed
    elif "ckpt_" in model:
        acc = 0.45
    else:
        acc = 0.3
    b = {{"problems": 2, "mean_acc": acc, "pass@k": {{"1": acc, "2": acc + 0.1}}}}
    (out / "metrics.json").write_text(json.dumps({{"benchmarks": {{"memo": b, "probe": b}}, "average": b}}))
'''


def run_lab(tmp_path, out, **over):
    shim = tmp_path / "py"
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("THRESHOLD", "TRAIN_LAUNCH", "VANILLA", "ITERS", "OUT")}
    env.update(PYTHON=str(shim), SHIM_LOG=str(tmp_path / "calls.jsonl"), MODEL="/models/base", DATA="d.jsonl",
               EVAL="memo=m.jsonl", OUT=str(out), SEEDS="2", ARMS="rloop,vanilla,overfit", ITERS="2", RL_STEPS="2",
               SAVE_EVERY="2", OVERFIT_X="2", FILTER_ARGS="--threshold 0.5", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    env.update(over)
    return subprocess.run(["bash", "lab.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def calls(tmp_path):
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def micro_lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    out = tmp / "lab"
    r = run_lab(tmp, out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, out, r


def test_micro_lab_layout_and_shared_work(micro_lab):
    tmp, out, r = micro_lab
    for arm in ("rloop", "vanilla", "overfit"):
        for seed in (0, 1):
            assert (out / arm / f"seed{seed}" / ".done" / "report").exists(), (arm, seed)
    assert (out / "report" / "summary.md").exists() and (out / "report" / "lab_accuracy.png").stat().st_size > 1000
    assert (out / "report" / "overfit.png").stat().st_size > 1000
    c = calls(tmp)
    flag = lambda call, name: call[call.index(name) + 1]  # noqa: E731
    explores = [(flag(x, "--out"), flag(x, "--steps"), flag(x, "--seed")) for x in c if x[0] == "explore.py"]
    # rloop: 2 iterations of 2 steps (seeds k, k + 1); vanilla: 4 steps; overfit: 2 x 4 = 8 steps, resumed from a
    # copy of vanilla's run (never from step 0), and never re-evaluating what vanilla evaluated
    for seed in (0, 1):
        assert (str(out / "rloop" / f"seed{seed}" / "iter2" / "explore"), "2", str(seed + 1)) in explores
        assert (str(out / "vanilla" / f"seed{seed}" / "vanilla"), "4", str(seed)) in explores
        assert (str(out / "overfit" / f"seed{seed}" / "vanilla"), "8", str(seed)) in explores
        rows = (out / "overfit" / f"seed{seed}" / "vanilla" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in rows] == list(range(1, 9))
    evals = [flag(x, "--out") for x in c if x[0] == "evaluate.py"]
    assert len(evals) == len(set(evals))
    assert not [e for e in evals if "/overfit/" in e and e.endswith(("vanilla-2", "vanilla-4", "base"))]
    assert {e.split("/")[-1] for e in evals if "/overfit/seed0/" in e} == {"vanilla-6", "vanilla-8"}
    for arm in ("rloop", "vanilla"):
        assert (out / arm / "seed0" / "report" / "summary.md").exists()  # each run has its own report too
    # the RLoop arm evaluates the base and its output policy only (EVAL_ITERS=output); vanilla every RL_STEPS (the
    # curve), the base copied from rloop's
    assert {e.split("/")[-1] for e in evals if "/rloop/seed0/" in e} == {"base", "iter2-rft"}
    assert {e.split("/")[-1] for e in evals if "/vanilla/seed0/" in e} == {"vanilla-2", "vanilla-4"}
    assert (out / "vanilla" / "seed0" / "eval" / "base" / "metrics.json").exists()
    # vanilla's first RL_STEPS steps are rloop's iteration 1 (copied, then resumed): the same rows, and no explore
    # call for the vanilla arm starts from step 0 (the shim appends to what is there)
    for seed in (0, 1):
        it1 = (out / "rloop" / f"seed{seed}" / "iter1" / "explore" / "rollouts.jsonl").read_text()
        van = (out / "vanilla" / f"seed{seed}" / "vanilla" / "rollouts.jsonl").read_text()
        assert van.startswith(it1) and len(van) == 2 * len(it1)
    # each arm started only after the arm it copies from had finished (same seed)
    log = r.stdout.splitlines()
    line = lambda prefix: next(i for i, x in enumerate(log) if x.startswith(prefix))  # noqa: E731
    for seed in (0, 1):
        for src, dst in (("rloop", "vanilla"), ("vanilla", "overfit")):
            assert line(f"-- {src} seed {seed}: finished") < line(f"+ {dst} seed {seed} -> ")


def test_micro_lab_report_numbers(micro_lab):
    tmp, out, r = micro_lab
    js = json.loads((out / "report" / "lab.json").read_text())
    assert js["seeds"] == [0, 1]
    acc = js["arms"]
    # hand-computed: rloop 0.50, 0.51; vanilla at 4 steps 0.404, 0.424; overfit at 8 steps 0.408, 0.428
    assert acc["rloop"]["memo"]["acc"] == {"0": 0.5, "1": 0.51}
    assert acc["vanilla"]["memo"]["acc"] == pytest.approx({"0": 0.404, "1": 0.424})
    assert acc["overfit"]["memo"]["acc"] == pytest.approx({"0": 0.408, "1": 0.428})
    assert acc["base"]["memo"]["acc"] == {"0": 0.3, "1": 0.3}
    d = js["diffs"]["rloop"]["memo acc"]  # 0.096, 0.086: mean 0.091, sd 0.0070711, half 12.706 * 0.005
    assert d["diffs"] == pytest.approx([0.096, 0.086]) and d["mean"] == pytest.approx(0.091)
    assert d["half"] == pytest.approx(12.706 * 0.005) and d["lo"] == pytest.approx(0.02747)
    o = js["diffs"]["overfit"]["memo acc"]  # +0.004 on both seeds: zero spread, the interval is [0.004, 0.004]
    assert o["mean"] == pytest.approx(0.004) and o["half"] == pytest.approx(0.0, abs=1e-12)
    summary = (out / "report" / "summary.md").read_text()
    assert "| rloop | 4 | 2 | 0.505 ± 0.064 |" in summary  # mean 0.505, half 12.706 * 0.005 = 0.0635
    assert "+0.091 [+0.027, +0.155] gain" in summary
    p = js["diffs"]["rloop"]["memo pass@2"]  # the same differences: the same interval
    assert p["mean"] == pytest.approx(0.091)
    assert "+0.004 [+0.004, +0.004] gain" in summary
    # the largest pre-clip gradient norm per run: 1 + seed + last step / 10
    assert js["grad_norm_max"]["overfit"] == pytest.approx({"0": 1.8, "1": 2.8})
    # rloop: iteration 2 explores with seed k + 1 -> 1 + (k + 1) + 0.2
    assert js["grad_norm_max"]["rloop"] == pytest.approx({"0": 2.2, "1": 3.2})
    # the overfitting curve: one point per evaluation (every RL_STEPS), train reward over the 2 steps before
    assert [c["step"] for c in js["overfit"]] == [2, 4, 6, 8]
    assert js["overfit"][3]["reward"] == pytest.approx({"0": -1 + 7.5 / 100, "1": -1 + 7.5 / 100})
    # its change from the first evaluation (step 2) to the last (step 8), paired by seed: reward -1 + 1.5 / 100 ->
    # -1 + 7.5 / 100 (+0.06 on both seeds); held-out pass@2 = 0.5 + step / 1000 + 0.02 seed (+0.006)
    ch = js["overfit_change"]
    assert (ch["from"], ch["to"]) == (2, 8)
    assert ch["reward"]["mean"] == pytest.approx(0.06) and ch["memo"]["mean"] == pytest.approx(0.006)
    assert "| change 2 → 8 | +0.060 [+0.060, +0.060] gain |" in summary
    # diversity: 'a' succeeds once per step (entropy 0 within a step: one success), and across an iteration's
    # 2 steps its successes alternate strategies (j = 0: step 1 -> 'group', step 2 -> 'left'): 1 bit
    div = {(x["arm"], x["seed"], x["part"]): x for x in js["diversity"]}
    sd = div[("rloop", 0, 0)]["strategy"]
    assert sd["within_step"] is None and sd["across_steps"] == pytest.approx(1.0)
    assert sd["shares"] == {"group": 0.5, "left": 0.5}
    assert "## The paper's four claims" in summary and "forgetting (probe accuracy)" in summary


def test_rerun_skips_finished_arms(micro_lab):
    tmp, out, _ = micro_lab
    n_before = len(calls(tmp))
    r = run_lab(tmp, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("done, skipped") == 6
    assert [c[0] for c in calls(tmp)[n_before:]] == ["report.py"]  # only the lab report ran again


def test_unknown_arm_is_one_clear_line(tmp_path):
    r = run_lab(tmp_path, tmp_path / "lab", ARMS="rloop,bogus")
    assert r.returncode == 2 and "unknown arm 'bogus'" in r.stderr


def test_open_questions_threshold_sweep_and_kl():
    import report

    def arm(acc, pk, kept, kls=()):  # two seeds; acc / pass@2 per seed; filter stats per iteration
        return {s: {"run": {"iters": [{"filter": {"problems_selected": k, "kept": 2 * k}} for k in kept]},
                    "rows": [{"kl": x} for x in kls], "avg": {"acc": acc[s], "pass@2": pk[s]}} for s in (0, 1)}

    arms = {"rloop": arm([0.50, 0.52], [0.70, 0.72], [4, 6]), "thr-0.5": arm([0.40, 0.44], [0.71, 0.72], [10, 12]),
            "vanilla": arm([0.45, 0.47], [0.60, 0.61], []), "kl": arm([0.46, 0.47], [0.62, 0.62], [], [0.01, 0.03])}
    js = {}
    text = "\n".join(report.open_questions(arms, "2", js, lambda per, key: {s: p["avg"][key] for s, p in per.items()}))
    t = js["threshold"]
    assert list(t) == ["rloop", "thr-0.5"] and t["rloop"]["diff_acc"] is None
    # thr-0.5 - rloop: acc -0.10, -0.08 (mean -0.09, sd 0.014142, half 12.706 * 0.01); pass@2 +0.01, 0.00
    assert t["thr-0.5"]["diff_acc"]["mean"] == pytest.approx(-0.09)
    assert t["thr-0.5"]["diff_acc"]["half"] == pytest.approx(0.12706)
    assert "| thr-0.5 | 0.5 | 11.0 ± 0.0 | 22.0 ± 0.0 |" in text  # (4+6)/2 = 5 for rloop; (10+12)/2 = 11 here
    assert "| rloop | 0.1 | 5.0 ± 0.0 | 10.0 ± 0.0 |" in text
    assert js["kl"]["diff_acc"]["mean"] == pytest.approx(0.005)
    assert js["kl"]["kl_mean"] == pytest.approx({0: 0.02, 1: 0.02})
    assert "## Open question: a KL-constrained baseline" in text
    assert report.open_questions({"rloop": arms["rloop"]}, "2", {}, lambda per, key: {}) == []  # nothing to sweep
