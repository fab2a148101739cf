"""The lab: the arms table (lib/lab/arms.py) drives lab.py (through lab.sh) over micro labs in seconds, with
stand-in stages (a PYTHON shim; filter.py, lab.py and the lab's report.py are the real ones): the horizon arms
x 2 seeds end to end, what each arm reuses and when it starts, the report's verdicts against hand-computed
intervals, a rerun that skips every finished run, a failed run that stops nothing else; and, with the real
explore.py, every reuse of an RL run ending with the weights of a run from scratch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.lab import arms as A

ROOT = Path(__file__).resolve().parent.parent

# The shim. explore.py writes rollouts in the toy's two written forms and metrics rows; it resumes (--resume) from
# the rows already there. evaluate.py's accuracy is a literal function of the policy it is given and the seed:
#   base 0.30; an RL policy 0.45; vanilla at step s: 0.40 + s / 1000 + 0.02 * seed; a consolidated policy:
#   rloop-long's 0.55 + 0.01 * seed, no-al-long's 0.40 + 0.03 * seed, any other arm's 0.50 + 0.01 * seed.
# explore's per-step grad_norm is 1, and 50 from step 10 with a bf16 sampler and no --rollout-is (grad_norm_max: the
# larger of it and 1 + explore seed + step / 10). SHIM_FAIL: a command holding this text fails.
# SHIM_REAL_EXPLORE: the first RL run of every arm (iteration 1's, the vanilla run) is the real explore.py.
SHIM = '''#!{python}
import json, os, re, sys
from pathlib import Path

script, args = sys.argv[1], sys.argv[2:]
with open(os.environ["SHIM_LOG"], "a") as f:
    f.write(json.dumps([script, *args]) + "\\n")
if os.environ.get("SHIM_FAIL") and os.environ["SHIM_FAIL"] in " ".join(args):
    sys.exit("shim: " + os.environ["SHIM_FAIL"])
flag = lambda name: args[args.index(name) + 1]
if script in ("filter.py", "lab.py") or (script == "report.py" and "/seed" not in args[0]) or (
        script == "explore.py" and os.environ.get("SHIM_REAL_EXPLORE")
        and flag("--out").endswith(("/iter1/explore", "/vanilla"))):
    os.execv(sys.executable, [sys.executable, script, *args])
if script == "report.py":  # (a run's own report; the lab's is the real one)
    (Path(args[0]) / "report").mkdir(exist_ok=True)
    (Path(args[0]) / "report" / "summary.md").write_text("stand-in")
    sys.exit()
out = Path(flag("--out"))
if script == "harvest.py":  # every logged rollout, as harvest.py's default mode pools them
    out.mkdir(parents=True, exist_ok=True)
    (out / "harvest.jsonl").write_text((Path(flag("--run-dir")) / "rollouts.jsonl").read_text())
    sys.exit()
out.mkdir(parents=True, exist_ok=True)
if script == "explore.py":
    steps, every, seed = int(flag("--rl-steps")), int(flag("--save-every")), int(flag("--seed"))
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
            bf16 = "bfloat16" in args  # (a bf16 sampler: its norm jumps 50-fold from step 10, unless corrected)
            norm = 50.0 if bf16 and "--rollout-is" not in args and s >= 10 else 1.0
            g.write(json.dumps({{"step": s, "reward": -1 + s / 100, "grad_norm": norm,
                                "grad_norm_max": max(norm, 1 + seed + s / 10),
                                "rollout_probs_diff_max": 0.3 if bf16 else 1e-6}}) + "\\n")
    for s in range(every, steps + 1, every):
        (out / f"ckpt_{{s:06d}}").mkdir(exist_ok=True)
elif script == "consolidate.py":
    (out / "config.json").write_text("{{}}")
elif script == "evaluate.py":
    model, seed = flag("--model"), int(flag("--seed"))
    if model.endswith("consolidated"):
        acc = {{"rloop-long": 0.55 + 0.01 * seed, "no-al-long": 0.40 + 0.03 * seed}}.get(Path(model).parts[-4],
                                                                                     0.5 + 0.01 * seed)
    elif "ckpt_" in model and "/vanilla/" in model:
        acc = 0.4 + int(re.search(r"ckpt_(\\d+)", model).group(1)) / 1000 + 0.02 * seed
    elif "ckpt_" in model:
        acc = 0.45
    else:
        acc = 0.3
    b = {{"problems": 2, "mean_acc": acc, "pass@1": acc, "pass@2": acc + 0.1}}
    (out / "metrics.json").write_text(json.dumps({{"benchmarks": {{"memo": b, "probe": b}}, "average": b}}))
'''
HORIZON = "rloop,vanilla,rloop-long,overfit,no-al-long"


def run_lab(tmp_path, out, **over):
    shim = tmp_path / "py"
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("THRESHOLD", "TRAIN_LAUNCH", "VANILLA", "ITERS", "OUT",
                                                            "PRESET", "SEEDS", "ARMS", "EXPLORE_ARGS", "DRY_RUN")}
    env.update(PYTHON=str(shim), SHIM_LOG=str(tmp_path / "calls.jsonl"), MODEL="/models/base", DATA="d.jsonl",
               BENCHMARKS="memo=m.jsonl", OUT=str(out), SEEDS="2", ARMS=HORIZON, ITERS="2", RL_STEPS="2",
               OVERFIT_X="3", FILTER_ARGS="--threshold 0.5", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update({k: v for k, v in over.items() if v is not None})
    env = {k: v for k, v in env.items() if over.get(k, "") is not None}  # (None: unset it)
    return subprocess.run(["bash", "lab.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def calls(tmp_path):
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def flag(call, name):
    return call[call.index(name) + 1]


# --- the table ------------------------------------------------------------------------------------------------
def test_the_table_is_consistent_and_refuses_what_is_not_the_same_computation():
    A.check()
    rloop, kl = A.BY_NAME["rloop"], A.BY_NAME["kl"]
    bad = {
        "not an arm listed before it": (A.Arm("x", "", reuses=(A.Reuse("y", A.BASE_EVAL),)),),
        "explore.py flags differ": (rloop, kl, A.Arm("x", "", env=A.VANILLA_ONLY, reuses=(A.Reuse("kl", A.RL_RUN),))),
        "two RLoop arms iterating alike": (rloop, A.Arm("x", "", scale="rl_steps",
                                                        reuses=(A.Reuse("rloop", A.ITERATION_1),))),
        "unknown part": (rloop, A.Arm("x", "", reuses=(A.Reuse("rloop", "everything"),))),
    }
    for message, table in bad.items():
        with pytest.raises(ValueError, match=message):
            A.check(table, presets=(), questions=())


def test_sizes_and_settings_of_the_horizon_arms():
    s = A.Sizes()  # the toy's: 3 x 20, OVERFIT_X 5
    env = {a.name: A.loop_env(a, s) for a in A.ARMS}
    assert (env["rloop-long"]["ITERS"], env["rloop-long"]["RL_STEPS"]) == ("3", "100")
    assert (env["overfit"]["ITERS"], env["overfit"]["RL_STEPS"]) == ("15", "20")
    assert env["no-al-long"]["THRESHOLD"] == "1" and env["rloop-long"]["EVAL_ITERS"] == "all"
    assert {e["SAVE_EVERY"] for e in env.values()} == {"5"} and env["kl"]["EXPLORE_ARGS"] == "--kl-coef 0.1"
    assert A.total_steps(A.BY_NAME["rloop-long"], s) == A.total_steps(A.BY_NAME["overfit"], s) == 300
    # the chain rloop (20) -> vanilla (60) -> rloop-long's iteration 1 (100) -> overfit (300); a longer source
    # run is never taken (OVERFIT_X 2: rloop-long's iteration 1 is 40 steps, vanilla's run 60)
    first = A.copies(A.BY_NAME["rloop-long"], A.BY_NAME["rloop-long"].reuses[0], s)
    assert [(c.stage, c.path, c.dest, c.done) for c in first if c.stage.endswith("explore")] == \
        [("vanilla-explore", "vanilla", "iter1/explore", False)]
    assert [c.stage for c in A.copies(A.BY_NAME["rloop-long"], A.BY_NAME["rloop-long"].reuses[0],
                                      A.Sizes(overfit_x=2))] == ["eval-base"]


def test_the_docs_example_adds_a_threshold_arm_in_one_entry():
    """docs/lab.md's entry, appended to the table: consistent, and the arm it describes."""
    import ast

    def build(node):  # the entry's calls, names and literals, read without executing any text
        if isinstance(node, ast.Call):
            return getattr(A, node.func.id)(*map(build, node.args), **{k.arg: build(k.value) for k in node.keywords})
        if isinstance(node, ast.Name):
            return getattr(A, node.id)
        if isinstance(node, ast.Tuple):
            return tuple(map(build, node.elts))
        if isinstance(node, ast.Dict):
            return {build(k): build(v) for k, v in zip(node.keys, node.values)}
        return ast.literal_eval(node)

    doc = (ROOT / "docs" / "lab.md").read_text()
    entry = doc.split("```python\n", 1)[1].split("```", 1)[0]
    arm = build(ast.parse(entry.strip().rstrip(","), mode="eval").body)
    A.check(A.ARMS + (arm,))
    assert A.loop_env(arm, A.Sizes())["THRESHOLD"] == "0.3" and arm.sweep and arm.against == "rloop"
    assert [c.stage for r in arm.reuses for c in A.copies(arm, r, A.Sizes())] == \
        ["eval-base", "iter1-explore", "iter1-harvest", "eval-iter1-rl"]


# --- a micro lab: the horizon arms x 2 seeds --------------------------------------------------------------------
@pytest.fixture(scope="module")
def micro_lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lab")
    out = tmp / "lab"
    r = run_lab(tmp, out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, out, r


def test_micro_lab_runs_every_arm_reusing_what_it_shares(micro_lab):
    tmp, out, r = micro_lab
    assert "from the environment: " in r.stderr and f"OUT={out}" in r.stderr
    for arm in HORIZON.split(","):
        for seed in (0, 1):
            assert (out / arm / f"seed{seed}" / ".done" / "report").exists(), (arm, seed)
            assert (out / arm / f"seed{seed}" / "report" / "summary.md").exists()  # each run's own report
    for png in ("lab_accuracy.png", "overfit.png", "horizon.png"):
        assert (out / "report" / png).stat().st_size > 1000, png
    c = calls(tmp)
    explores = [(flag(x, "--out"), flag(x, "--rl-steps"), flag(x, "--seed")) for x in c if x[0] == "explore.py"]
    for seed in (0, 1):
        run = lambda arm, *p, seed=seed: str(out.joinpath(arm, f"seed{seed}", *p))  # noqa: E731
        rows = lambda arm, *p, seed=seed: [json.loads(x)["step"] for x in  # noqa: E731
                                           (out.joinpath(arm, f"seed{seed}", *p) / "metrics.jsonl").read_text()
                                           .splitlines()]
        text = lambda arm, *p, seed=seed: (out.joinpath(arm, f"seed{seed}", *p) / "rollouts.jsonl").read_text()  # noqa: E731
        # the chain: rloop's iteration 1 (2 steps) -> vanilla (4) -> rloop-long's iteration 1 (3 x 2 = 6)
        # -> overfit (2 x 3 iterations of 2 = 12): each a copy of the one before, resumed, never from step 0
        assert [e for e in explores if f"/seed{seed}/" in e[0]] == [
            (run("rloop", "iter1", "explore"), "2", str(seed)), (run("rloop", "iter2", "explore"), "2", str(seed + 1)),
            (run("vanilla", "vanilla"), "4", str(seed)), (run("rloop-long", "iter1", "explore"), "6", str(seed)),
            (run("rloop-long", "iter2", "explore"), "6", str(seed + 1)), (run("overfit", "vanilla"), "12", str(seed)),
            (run("no-al-long", "iter2", "explore"), "6", str(seed + 1))]
        assert rows("overfit", "vanilla") == list(range(1, 13)) and rows("rloop-long", "iter1", "explore") == \
            list(range(1, 7))
        chain = [text("rloop", "iter1", "explore"), text("vanilla", "vanilla"), text("rloop-long", "iter1", "explore"),
                 text("overfit", "vanilla")]
        assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(chain, chain[1:]))
        # no-al-long starts from rloop-long's iteration 1 (RL run and harvest: the threshold acts after them)
        assert text("no-al-long", "iter1", "explore") == chain[2]
        assert (out / "no-al-long" / f"seed{seed}" / "iter1" / "harvest" / "harvest.jsonl").read_bytes() == \
            (out / "rloop-long" / f"seed{seed}" / "iter1" / "harvest" / "harvest.jsonl").read_bytes()
        assert [flag(x, "--threshold") for x in c
                if x[0] == "filter.py" and run("no-al-long") in flag(x, "--trajectories")] == ["1", "1"]
    evals = [flag(x, "--out") for x in c if x[0] == "evaluate.py"]
    assert len(evals) == len(set(evals))  # nothing evaluated twice
    name = lambda arm: {e.split("/")[-1] for e in evals if f"/{arm}/seed0/" in e}  # noqa: E731
    assert name("rloop") == {"base", "iter2-rft"}  # the output policy only (EVAL_ITERS=output)
    assert name("vanilla") == {"vanilla-2", "vanilla-4"}  # every RL_STEPS (its base copied from rloop's)
    assert name("rloop-long") == {"iter1-rl", "iter1-rft", "iter2-rl", "iter2-rft"}  # each iteration: the curve
    assert name("overfit") == {"vanilla-6", "vanilla-8", "vanilla-10", "vanilla-12"}  # 2 and 4 are vanilla's
    assert name("no-al-long") == {"iter2-rft"}
    # each arm started after the arms it reuses had finished (same seed)
    log = r.stdout.splitlines()
    line = lambda prefix: next(i for i, x in enumerate(log) if x.startswith(prefix))  # noqa: E731
    for seed in (0, 1):
        for src, dst in (("rloop", "vanilla"), ("vanilla", "rloop-long"), ("rloop-long", "overfit"),
                         ("vanilla", "overfit"), ("rloop-long", "no-al-long")):
            assert line(f"-- {src} seed {seed}: finished") < line(f"+ {dst} seed {seed} -> "), (src, dst)
    assert f"+ overfit seed 0 -> {out}/overfit/seed0 (from rloop-long/iter1/explore as vanilla (resumed), " \
           "vanilla/eval/base, vanilla/eval/vanilla-2, vanilla/eval/vanilla-4)" in log
    t = json.loads((out / "lab_time.json").read_text())
    assert (t["arms"], t["seeds"], t["jobs"], t["failed"]) == (HORIZON.replace(",", " "), "0 1", 2, [])


def test_micro_lab_report_verdicts_against_hand_computed_intervals(micro_lab):
    """Accuracy at 4 steps: rloop 0.50, 0.51 vs vanilla 0.404, 0.424 -> +0.096, +0.086: mean 0.091, sd 0.0070711,
    half 12.706 * 0.005 = 0.0635 -> [+0.027, +0.155]. At 12 steps: rloop-long 0.55, 0.56 vs overfit 0.412, 0.432
    -> +0.138, +0.128: [0.133 -/+ 0.0635] = [+0.069, +0.197]; no-al-long 0.40, 0.43 -> -0.012, -0.002:
    [-0.071, +0.057]. pass@2 and the probe split are acc + 0.1 and acc: the same differences. Largest gradient
    norm (1 + explore seed + step / 10): rloop 2.2, 3.2 (iteration 2, seed k + 1) vs vanilla 1.4, 2.4: +0.8 on
    both seeds (zero spread); rloop-long and no-al-long 2.6, 3.6 (seed k + 1, step 6) vs overfit 2.2, 3.2: +0.4."""
    tmp, out, r = micro_lab
    summary = (out / "report" / "summary.md").read_text()
    lines = summary.splitlines()
    i = lines.index("## Verdicts")
    assert lines[i + 4:i + 8] == [
        "- **accuracy** (average acc; higher is better): at 4 RL steps, rloop − vanilla: reproduced, +0.091 "
        "[+0.027, +0.155]; at 12 RL steps, rloop-long − overfit: reproduced, +0.133 [+0.069, +0.197]; at 12 RL "
        "steps, no-al-long − overfit: no measurable difference, -0.007 [-0.071, +0.057]",
        "- **pass@k** (average pass@2; higher is better): at 4 RL steps, rloop − vanilla: reproduced, +0.091 "
        "[+0.027, +0.155]; at 12 RL steps, rloop-long − overfit: reproduced, +0.133 [+0.069, +0.197]; at 12 RL "
        "steps, no-al-long − overfit: no measurable difference, -0.007 [-0.071, +0.057]",
        "- **stability** (largest pre-clip gradient norm; lower is better): at 4 RL steps, rloop − vanilla: not "
        "reproduced (the opposite), +0.800 [+0.800, +0.800]; at 12 RL steps, rloop-long − overfit: not reproduced "
        "(the opposite), +0.400 [+0.400, +0.400]; at 12 RL steps, no-al-long − overfit: not reproduced (the "
        "opposite), +0.400 [+0.400, +0.400]",
        "- **forgetting** (probe acc; higher is better): at 4 RL steps, rloop − vanilla: reproduced, +0.091 "
        "[+0.027, +0.155]; at 12 RL steps, rloop-long − overfit: reproduced, +0.133 [+0.069, +0.197]; at 12 RL "
        "steps, no-al-long − overfit: no measurable difference, -0.007 [-0.071, +0.057]"]
    assert i < lines.index("## memo: accuracy and pass@k")  # the report opens with them
    js = json.loads((out / "report" / "lab.json").read_text())
    acc = {r["arm"]: r["acc"]["values"] for r in js["accuracy"]["memo"]}
    assert acc["overfit"] == pytest.approx({"0": 0.412, "1": 0.432}) and acc["base"] == {"0": 0.3, "1": 0.3}
    assert "| rloop | 4 | 2 | 0.505 ± 0.064 |" in summary  # mean 0.505, half 12.706 * 0.005 = 0.0635
    # the horizon curve: rloop-long after each iteration (RL policy 0.45, consolidated 0.55 + 0.01 seed) beside
    # overfit every 2 steps (0.4 + step / 1000 + 0.02 seed), both from the base at 0
    curve = {(p["arm"], p["policy"], p["step"]): p["acc"]["average"]["mean"] for p in js["horizon"]}
    assert curve[("rloop-long", "consolidated", 6)] == pytest.approx(0.555)
    assert curve[("rloop-long", "RL policy", 12)] == pytest.approx(0.45)
    assert [s for a, _, s in curve if a == "overfit"] == [0, 2, 4, 6, 8, 10, 12]
    assert "| 12 | rloop-long | consolidated | 2 | 0.555 ± 0.064 | 0.655 ± 0.064 |" in summary
    # overfit's train reward over the 2 steps before each evaluation, its change from the first to the last
    (of,) = js["overfit"]
    assert of["points"][-1]["reward"]["values"] == pytest.approx({"0": -1 + 11.5 / 100, "1": -1 + 11.5 / 100})
    assert of["change"]["reward"]["mean"] == pytest.approx(0.1) and of["change"]["memo"]["mean"] == pytest.approx(0.01)
    # diversity of rloop and vanilla: 'a' succeeds once per step, its strategy alternating from step to step
    div = {r["arm"]: r for r in js["diversity"]}
    assert div["rloop"]["across_steps"]["mean"] == pytest.approx(1.0) and div["rloop"]["within_step"] is None


def test_rerun_skips_finished_arms(micro_lab):
    tmp, out, _ = micro_lab
    n_before = len(calls(tmp))
    r = run_lab(tmp, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("done, skipped") == 10
    assert [c[0] for c in calls(tmp)[n_before:]] == ["lab.py", "report.py"]  # only the lab report ran again


def test_dry_run_prints_the_commands_and_writes_nothing(tmp_path):
    out = tmp_path / "lab"
    r = run_lab(tmp_path, out, DRY_RUN="1", ARMS="rloop,overfit", SEEDS="0,3")
    assert r.returncode == 0, r.stderr
    cmds = [x for x in r.stdout.splitlines() if x.endswith("bash loop.sh")]
    assert len(cmds) == 4 and f"OUT={out}/overfit/seed3 SEED=3 " in cmds[3] and "ITERS=6 RL_STEPS=2" in cmds[3]
    assert cmds[0].startswith("VANILLA=0 RLOOP=1 THRESHOLD=0.1 EVAL_ITERS=output ITERS=2 RL_STEPS=2 SAVE_EVERY=2 ")
    assert not out.exists() and not (tmp_path / "calls.jsonl").read_text().count("loop.sh")


def test_a_failed_run_is_reported_and_stops_nothing_else(tmp_path):
    """rloop seed 1 fails (its first explore); vanilla seed 1, which would start from it, computes everything
    itself; every other run finishes; the lab reports the failure with its log and exits 1."""
    out = tmp_path / "lab"
    r = run_lab(tmp_path, out, ARMS="rloop,vanilla", SHIM_FAIL="rloop/seed1/iter1")
    assert r.returncode == 1
    log = out / "rloop" / "seed1" / "lab_job.log"
    assert f"!! rloop seed 1 failed (exit 1): see {log}" in r.stderr and "shim: rloop/seed1/iter1" in log.read_text()
    for arm, seed in (("rloop", 0), ("vanilla", 0), ("vanilla", 1)):
        assert (out / arm / f"seed{seed}" / ".done" / "report").exists(), (arm, seed)
    van = [x for x in calls(tmp_path) if x[0] == "explore.py" and "vanilla/seed1" in flag(x, "--out")]
    assert len(van) == 1 and len((out / "vanilla" / "seed1" / "vanilla" / "metrics.jsonl").read_text().splitlines()) \
        == 4 and not (out / "vanilla" / "seed1" / "eval" / "base").is_symlink()
    assert "+ vanilla seed 1 -> " in r.stdout and "(from " not in next(x for x in r.stdout.splitlines()
                                                                      if x.startswith("+ vanilla seed 1"))
    assert json.loads((out / "lab_time.json").read_text())["failed"] == ["rloop seed 1"]
    assert (out / "report" / "summary.md").exists()


def test_unknown_arm_is_one_clear_line(tmp_path):
    r = run_lab(tmp_path, tmp_path / "lab", ARMS="rloop,bogus")
    assert r.returncode == 2 and "unknown arm 'bogus'" in r.stderr
    r = run_lab(tmp_path, tmp_path / "lab", SEEDS="0")
    assert r.returncode == 2 and "--seeds 0: a count of no seeds (seed 0 alone: --seeds 1)" in r.stderr


def test_lab_sh_help_lists_its_variables():
    r = subprocess.run(["bash", "lab.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "PRESET" in r.stdout and "EXPLORE_ARGS" in r.stdout and "DRY_RUN" in r.stdout


# --- the open questions: presets questions and questions-2 ------------------------------------------------------
QUESTIONS_ARMS = {"questions": ["rloop-long", "overfit", "rloop-long-bf16", "overfit-bf16", "overfit-bf16-tis"],
                  "questions-2": ["rloop-long", "overfit", "replay-long", "rloop-long-partial", "overfit-partial"]}


def test_questions_presets_dry_run_lists_their_arms_and_commands():
    """`python lab.py --preset questions --dry-run` as a user types it: 5 arms x 5 seeds at the toy's sizes, each
    arm's explore.py and filter.py flags, what it starts from; questions-2 writes into the same folder."""
    for preset, arms in QUESTIONS_ARMS.items():
        r = subprocess.run([sys.executable, "lab.py", "--preset", preset, "--dry-run"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"# RLoop lab, preset {preset}: arms {','.join(arms)}; seeds 0,1,2,3,4; "
                                   "OUT=runs/lab-questions;")
        cmds = {(x.split("OUT=runs/lab-questions/")[1].split()[0]): x for x in lines if x.endswith("bash loop.sh")}
        assert sorted(cmds) == sorted(f"{a}/seed{k}" for a in arms for k in range(5))
        assert lines[-1].endswith("report.py runs/lab-questions")
    out = subprocess.run([sys.executable, "lab.py", "--arms", "overfit-bf16,overfit-bf16-tis,rloop-long-partial",
                          "--seeds", "1", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    bf16 = "EXPLORE_ARGS='--backend hf --rollout-dtype bfloat16 --no-bf16"
    assert f"VANILLA=1 RLOOP=0 THRESHOLD=0.1 EVAL_ITERS=output ITERS=15 RL_STEPS=20 SAVE_EVERY=5 {bf16}' " in out
    assert f"{bf16} --rollout-is token' " in out
    assert ("ITERS=3 RL_STEPS=100 SAVE_EVERY=5 EXPLORE_ARGS='--reward lib/worlds/toy_reward.py:partial_credit "
            "--filter-metric reward' FILTER_ARGS='--success-metric reward --success-threshold 0.5' ") in out
    assert "# overfit-bf16 seed 0; starts from rloop-long-bf16: base-eval, rl-run" in out


@pytest.fixture(scope="module")
def questions_lab(tmp_path_factory):
    """A micro run of both presets, 2 seeds, into one folder: questions, then questions-2."""
    tmp = tmp_path_factory.mktemp("questions")
    out = tmp / "lab"
    runs = [run_lab(tmp, out, PRESET=preset, ARMS=None) for preset in QUESTIONS_ARMS]
    for r in runs:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, out, runs


def test_micro_questions_lab_runs_both_presets_into_one_folder(questions_lab):
    tmp, out, (first, second) = questions_lab
    for arm in {a for arms in QUESTIONS_ARMS.values() for a in arms}:
        for seed in (0, 1):
            assert (out / arm / f"seed{seed}" / ".done" / "report").exists(), (arm, seed)
    assert "rloop-long seed 0: done, skipped" in second.stdout and "overfit seed 1: done, skipped" in second.stdout
    c = calls(tmp)
    for seed in (0, 1):
        run = lambda arm, *p, seed=seed: str(out.joinpath(arm, f"seed{seed}", *p))  # noqa: E731
        explores = {flag(x, "--out"): x for x in c if x[0] == "explore.py"}
        # the bf16 chain: rloop-long-bf16's iteration 1 (6 steps) -> overfit-bf16 (12), resumed, flags alike
        assert [flag(explores[run(a, *p)], "--rl-steps") for a, *p in
                (("rloop-long-bf16", "iter1", "explore"), ("overfit-bf16", "vanilla"))] == ["6", "12"]
        rows = (out / "overfit-bf16" / f"seed{seed}" / "vanilla" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in rows] == list(range(1, 13))
        assert "--rollout-is" in explores[run("overfit-bf16-tis", "vanilla")]
        assert "--replay" in explores[run("replay-long", "vanilla")]
        for arm, p in (("rloop-long-partial", ("iter2", "explore")), ("overfit-partial", ("vanilla",))):
            assert flag(explores[run(arm, *p)], "--reward") == "lib/worlds/toy_reward.py:partial_credit", arm
        filters = [x for x in c if x[0] == "filter.py" and run("rloop-long-partial") in flag(x, "--out")]
        assert len(filters) == 2 and all((flag(x, "--success-metric"), flag(x, "--success-threshold")) ==
                                         ("reward", "0.5") for x in filters)
    assert (out / "report" / "stability.png").stat().st_size > 1000


def test_micro_questions_lab_answers_in_words(questions_lab):
    """The shim's numbers: overfit-bf16's largest norm is 50 (steps 10-12), overfit's 2.2 and 3.2 (seeds 0, 1):
    +47.8, +46.8, mean +47.3, half 12.706 * 0.5 = 6.353; its per-step norm is 1 before step 10, so step 10 is its
    first above 10x the median (1). rloop-long - replay-long on average acc: 0.55, 0.56 vs 0.412, 0.432;
    rloop-long-partial - overfit-partial: 0.50, 0.51 vs 0.412, 0.432: +0.088, +0.078."""
    tmp, out, _ = questions_lab
    summary = (out / "report" / "summary.md").read_text()
    lines = summary.splitlines()
    i = lines.index("## Open questions")
    assert lines[i + 4] == (
        "- **Does vanilla RL's gradient norm grow under a bf16 sampler?** overfit-bf16 − overfit at 12 RL steps: "
        "largest pre-clip gradient norm +47.300 [+40.947, +53.653], higher. First step with a gradient norm above "
        "10× its run's median: overfit-bf16 step 10 (seed 0); step 10 (seed 1); overfit never.")
    assert lines[i + 5].startswith("- **Does RLoop prevent it?** rloop-long-bf16 − overfit-bf16 at 12 RL steps: "
                                   "largest pre-clip gradient norm -46.900 [-53.253, -40.547], lower.")
    assert lines[i + 7] == (
        "- **Is RLoop better than experience replay at equal RL steps?** rloop-long − replay-long at 12 RL steps: "
        "average acc +0.133 [+0.069, +0.197], higher; average pass@2 +0.133 [+0.069, +0.197], higher; probe acc "
        "+0.133 [+0.069, +0.197], higher.")
    assert lines[i + 9].startswith("- **Does RLoop's gain survive a non-binary reward?** rloop-long-partial − "
                                   "overfit-partial at 12 RL steps: average acc +0.083 [+0.019, +0.147], higher;")
    assert "| overfit-bf16 | 50.000 | step 10 (seed 0); step 10 (seed 1) | 0.3 |" in lines
    assert "| overfit | 1.000 | never | 1e-06 |" in lines
    js = json.loads((out / "report" / "lab.json").read_text())["questions"]
    assert [c["arm"] for c in js["curves"]] == QUESTIONS_ARMS["questions"]
    assert js["rows"][2]["answers"][0]["word"] == "lower"  # the correction: overfit-bf16-tis - overfit-bf16


def test_first_blow_up_step_on_synthetic_norms():
    from lib.lab import questions as Q

    assert Q.first_exceed([(1, 1.0), (2, 1.2), (3, 0.9), (4, 12.0), (5, 30.0)]) == 5  # median 1.2: > 12 first at 5
    assert Q.first_exceed([(1, 1.0), (2, 1.2), (3, 0.9), (4, 12.1), (5, 1.0)]) == 4
    assert Q.first_exceed([(s, 1.0 + s) for s in range(1, 50)]) is None  # growth, but never 10x the median
    assert Q.first_exceed([(1, 0.5), (2, 0.5), (3, float("inf"))]) == 3 and Q.first_exceed([]) is None
    assert Q.first_exceed([(1, 1.0), (2, 4.0)], factor=2.0) is None  # median 2.5: 4 is not above 5
    assert Q.first_exceed([(1, 1.0), (2, 1.0), (3, 4.0)], factor=2.0) == 3  # median 1
    assert [Q.norm_of(r) for r in ({"grad_norm": 0.4}, {"grad_norm": None, "updates": 2}, {"val/mean_acc": 1})] == \
        [0.4, float("inf"), None]
    assert Q.exceed_words({0: None, 1: 7, 2: None}) == "step 7 (seed 1); never (seeds 0, 2)"
    assert Q.exceed_words({0: None}) == "never"


def test_stability_section_on_a_lab_built_by_hand(tmp_path):
    """overfit-bf16's seed 0 blows up at step 4 (norm 9 against a median of 0.5), seed 1 never (4 against 0.7);
    overfit never. Largest norms 9, 4 against 0.5, 0.6: +8.5, +3.4, mean 5.95, sd 3.606, half 12.706 * 2.55 = 32.4."""
    import report

    lab = tmp_path / "lab"
    norms = {("overfit-bf16", 0): [0.5, 0.4, 0.6, 9.0, 0.5], ("overfit-bf16", 1): [0.5, 0.6, 0.7, 0.8, 4.0],
             ("overfit", 0): [0.5] * 5, ("overfit", 1): [0.6] * 5}
    for (arm, seed), ns in norms.items():
        fake_run(lab / arm / f"seed{seed}", False, 0.4, 0.6)
        rows = [{"step": s, "grad_norm": n, "grad_norm_max": n, "rollout_probs_diff_max": 0.25 if "bf16" in arm
                 else 2e-6} for s, n in enumerate(ns, start=1)]
        (lab / arm / f"seed{seed}" / "vanilla" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                                                      for r in rows))
    report.main([str(lab)])
    lines = (lab / "report" / "summary.md").read_text().splitlines()
    assert "| overfit-bf16 | 9.000 | step 4 (seed 0); never (seed 1) | 0.25 |" in lines
    assert "| overfit | 0.600 | never | 2e-06 |" in lines
    assert any(x.startswith("- **Does vanilla RL's gradient norm grow under a bf16 sampler?** overfit-bf16 − overfit "
                            "at 2 RL steps: largest pre-clip gradient norm +5.950 [-26.450, +38.350], no measurable "
                            "difference. First step with a gradient norm above 10× its run's median: overfit-bf16 step "
                            "4 (seed 0); never (seed 1); overfit never.") for x in lines)
    assert (lab / "report" / "stability.png").stat().st_size > 1000


# --- the report on a lab folder built by hand -------------------------------------------------------------------
def fake_run(folder: Path, rloop: bool, acc: float, pk: float, kept=(), kl=()) -> None:
    """A finished loop.sh run: its output policy's evaluation (acc, pass@2 on memo, probe and on average), the
    base's, filter stats per iteration (problems kept, RFT examples = 2 x problems), KL terms per RL step."""
    def write(path, obj):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))

    def evaluation(a, p):
        b = {"problems": 2, "mean_acc": a, "pass@1": a, "pass@2": p}
        return {"benchmarks": {"memo": b, "probe": b}, "average": b}

    write(folder / ".done" / "report", "1")
    write(folder / "eval" / "base" / "metrics.json", evaluation(0.3, 0.6))
    rows = "".join(json.dumps({"step": s, "reward": 0.0, "grad_norm_max": 1.0, "kl": k}) + "\n"
                   for s, k in enumerate(kl or [0.0, 0.0], start=1))
    if rloop:
        for i, k in enumerate(kept, start=1):
            write(folder / f"iter{i}" / "explore" / "metrics.jsonl", rows)
            write(folder / f"iter{i}" / "filter" / "filter_stats.json",
                  {"problems_selected": k, "kept_trajectories": 2 * k})
        write(folder / "eval" / f"iter{len(kept)}-rft" / "metrics.json", evaluation(acc, pk))
    else:
        write(folder / "vanilla" / "metrics.jsonl", rows)
        write(folder / "eval" / "vanilla-2" / "metrics.json", evaluation(acc, pk))


def test_threshold_sweep_and_kl_sections_on_a_lab_built_by_hand(tmp_path):
    """Two seeds per arm. Against rloop (acc 0.50, 0.52; pass@2 0.70, 0.72): thr-0.5 +0.060, +0.062 on acc (mean
    0.061, sd 0.0014142, half 12.706 * 0.001 = 0.0127: a gain) and +0.050, +0.052 on pass@2 (a gain); no-al
    +0.01, +0.02 on both (mean 0.015, half 0.0635: no measurable difference, higher means); thr-0.05 -0.05 on
    acc on both seeds (a loss, zero spread) and +0.01 on pass@2 (a gain): mixed. kl against vanilla: acc +0.01,
    0.00."""
    import report

    lab = tmp_path / "lab"
    arms = {"rloop": ([0.50, 0.52], [0.70, 0.72], [4, 6]), "thr-0.5": ([0.56, 0.582], [0.75, 0.772], [10, 12]),
            "no-al": ([0.51, 0.54], [0.71, 0.74], [20, 30]), "thr-0.05": ([0.45, 0.47], [0.71, 0.73], [1, 1])}
    for name, (acc, pk, kept) in arms.items():
        for seed in (0, 1):
            fake_run(lab / name / f"seed{seed}", True, acc[seed], pk[seed], kept)
    for seed, (a, k) in enumerate(((0.45, 0.01), (0.47, 0.03))):
        fake_run(lab / "vanilla" / f"seed{seed}", False, a, 0.6)
        fake_run(lab / "kl" / f"seed{seed}", False, [0.46, 0.47][seed], 0.6, kl=[k, k])
    report.main([str(lab)])
    summary = (lab / "report" / "summary.md").read_text()
    finding = ("Threshold sweep, each against rloop (THRESHOLD 0.1) on average acc and pass@2, paired by seed: "
               "measurably better on both: thr-0.5; higher on both, within noise: no-al; mixed: thr-0.05.")
    lines = summary.splitlines()
    assert f"- {finding}" in lines[:lines.index("## memo: accuracy and pass@k")]  # among the verdicts, first
    i = lines.index("## Open question: the hard-problem threshold")
    assert lines[i + 5:i + 11] == [
        "|---|---|---|---|---|---|---|---|",
        "| thr-0.05 | 0.05 | 1.0 ± 0.0 | 2.0 ± 0.0 | 0.460 ± 0.127 | 0.720 ± 0.127 | -0.050 [-0.050, -0.050] loss | "
        "+0.010 [+0.010, +0.010] gain |",
        "| rloop | 0.1 | 5.0 ± 0.0 | 10.0 ± 0.0 | 0.510 ± 0.127 | 0.710 ± 0.127 | – | – |",
        "| thr-0.5 | 0.5 | 11.0 ± 0.0 | 22.0 ± 0.0 | 0.571 ± 0.140 | 0.761 ± 0.140 | +0.061 [+0.048, +0.074] gain | "
        "+0.051 [+0.038, +0.064] gain |",
        "| no-al | 1 | 25.0 ± 0.0 | 50.0 ± 0.0 | 0.525 ± 0.191 | 0.725 ± 0.191 | +0.015 [-0.049, +0.079] no measurable "
        "difference | +0.015 [-0.049, +0.079] no measurable difference |",
        "", ]
    assert lines[i + 11] == finding
    js = json.loads((lab / "report" / "lab.json").read_text())
    (kl,) = js["kl"]
    assert kl["d_acc"]["mean"] == pytest.approx(0.005) and kl["kl_mean"]["values"] == pytest.approx({"0": 0.01,
                                                                                                      "1": 0.03})
    assert "## Open question: a KL-constrained baseline" in summary
    assert {(v["arm"], v["against"]) for v in js["verdicts"]} == {("rloop", "vanilla")} and not js["horizon"]


# --- every reuse of an RL run is exact --------------------------------------------------------------------------
# no dynamic sampling: the memo model at these sizes has no success, so dynamic sampling would drop every group and
# no step would train; without it the overlong penalty's spread trains the steps after the first few
REAL_FLAGS = ("--prompts-per-step 4 --n-samples 4 --mini-batch 2 --micro-batch 8 --max-new-tokens 24 "
              "--overlong-buffer 4 --max-gen-batches 2 --lr 1e-3 --warmup-steps 0 --no-dynamic-sampling")


def trains_after(run: Path, step: int) -> bool:
    """A step after `step` moved the weights (else every later checkpoint equals the one at `step`, for no reason
    a resume could break)."""
    return any(r["step"] > step and r["grad_norm"] > 0 for r in map(json.loads, (run / "metrics.jsonl").read_text()
                                                                     .splitlines()))


def test_each_reused_rl_run_ends_with_the_weights_of_a_run_from_scratch(memo_model_dir, memo_data, tmp_path,
                                                                        one_thread):
    """The real explore.py for every arm's first RL run: vanilla (2 steps) -> rloop-long's iteration 1 (3) ->
    overfit (6), each resumed from a copy of the one before (rloop's iteration 1 -> vanilla is the same copy and
    resume: tests/test_loop.py). Their checkpoints are those of one explore.py run of 6 steps from scratch, weight
    for weight."""
    import explore

    out = tmp_path / "lab"
    flags = REAL_FLAGS + " --backend hf"
    r = run_lab(tmp_path, out, ARMS="vanilla,rloop-long,overfit", SEEDS="1", ITERS="2", RL_STEPS="1",
                OVERFIT_X="3", SAVE_EVERY="1", MODEL=str(memo_model_dir), DATA=str(memo_data),
                EXPLORE_ARGS=flags, SHIM_REAL_EXPLORE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    scratch = tmp_path / "scratch"
    assert explore.main(["--model", str(memo_model_dir), "--data", str(memo_data), "--out", str(scratch),
                         "--rl-steps", "6", "--save-every", "1", "--seed", "0", *flags.split()]) == 0
    assert trains_after(scratch, 3)  # (overfit resumes at 3)
    weights = lambda d: (d / "model.safetensors").read_bytes()  # noqa: E731
    for arm, path, steps, resumed_from in (("vanilla", "vanilla", 2, None), ("rloop-long", "iter1/explore", 3, 2),
                                           ("overfit", "vanilla", 6, 3)):
        run = out / arm / "seed0" / path
        for step in range(1, steps + 1):
            assert weights(run / f"ckpt_{step:06d}") == weights(scratch / f"ckpt_{step:06d}"), (arm, step)
        if resumed_from:
            assert f"from ckpt_{resumed_from:06d} (step {resumed_from}" in \
                (out / arm / "seed0" / "loop.log").read_text(), arm


def test_the_bf16_chain_ends_with_the_weights_of_a_run_from_scratch(memo_model_dir, memo_data, tmp_path,
                                                                     one_thread):
    """The same with a bf16 sampler: rloop-long-bf16's iteration 1 (3 steps) -> overfit-bf16 (6), the real
    explore.py with the arms' flags, against one run of 6 steps from scratch with them."""
    import explore

    out = tmp_path / "lab"
    flags = REAL_FLAGS
    r = run_lab(tmp_path, out, ARMS="rloop-long-bf16,overfit-bf16", SEEDS="1", ITERS="2", RL_STEPS="1",
                OVERFIT_X="3", SAVE_EVERY="1", MODEL=str(memo_model_dir), DATA=str(memo_data),
                EXPLORE_ARGS=flags, SHIM_REAL_EXPLORE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    scratch = tmp_path / "scratch"
    assert explore.main(["--model", str(memo_model_dir), "--data", str(memo_data), "--out", str(scratch),
                         "--rl-steps", "6", "--save-every", "1", "--seed", "0", *flags.split(),
                         *A.BF16_SAMPLER.split()]) == 0
    run = out / "overfit-bf16" / "seed0" / "vanilla"
    assert trains_after(run, 3) and trains_after(scratch, 3)
    assert "from ckpt_000003 (step 3" in (out / "overfit-bf16" / "seed0" / "loop.log").read_text()
    for step in range(1, 7):
        assert (run / f"ckpt_{step:06d}" / "model.safetensors").read_bytes() == \
            (scratch / f"ckpt_{step:06d}" / "model.safetensors").read_bytes(), step
    assert max(json.loads(x)["rollout_probs_diff_max"] for x in (run / "metrics.jsonl").read_text().splitlines()) > 1e-4


def test_every_command_of_the_lab_page_runs(tmp_path):
    """docs/lab.md's commands as written: the lab ones with a dry run (they would run for an hour), report.py's
    help (it needs a finished lab)."""
    import shlex

    doc = (ROOT / "docs" / "lab.md").read_text()
    lines = [x.split("#")[0].strip() for x in doc.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()]
    assert len(lines) == 8
    for line in filter(None, lines):
        words = shlex.split(line)
        env = {k: v for k, v in (w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))}
        cmd = [w for w in words if not ("=" in w and not w.startswith("-"))]
        env = {**os.environ, "PYTHON": sys.executable, **env}
        if cmd[:2] == ["python", "lab.py"]:
            cmd = [sys.executable, "lab.py", *cmd[2:], "--dry-run"]
        elif cmd[:2] == ["bash", "lab.sh"]:
            env["DRY_RUN"] = "1"
        else:
            assert cmd[:2] == ["python", "report.py"], line
            cmd = [sys.executable, "report.py", "--help"]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and ("bash loop.sh" in r.stdout or "report.py" in cmd[1]), (line, r.stderr)
