"""loop.sh end to end on a micro setting: two iterations + vanilla, evaluation and report; reruns resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def loop_env(model, data, out, **over):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHON": sys.executable,
           "MODEL": str(model), "DATA": str(data), "BENCHMARKS": f"memo={data}", "OUT": str(out),
           "ITERS": "2", "RL_STEPS": "2", "SAVE_EVERY": "1", "THRESHOLD": "1.0",
           "EXPLORE_ARGS": "--prompts-per-step 4 --n-samples 4 --mini-batch 2 --micro-batch 8 --max-new-tokens 24 "
                           "--overlong-buffer 4 --max-gen-batches 2 --lr 1e-3 --warmup-steps 0 --backend hf",
           "CONSOLIDATE_ARGS": "--epochs 1 --batch-size 8",
           "EVAL_ARGS": "--n-samples 4 --max-new-tokens 24 --backend hf",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # (one thread: runs compare bit for bit, whatever JOBS)
    env.update(over)
    return env


def run_loop(env, timeout=300):
    return subprocess.run(["bash", "loop.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished_run(memo_model_dir, memo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("loop") / "run"
    r = run_loop(loop_env(memo_model_dir, memo_data, out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_micro_loop_produces_the_report(finished_run, memo_model_dir):
    out = finished_run
    for name in ("base", "iter1-rl", "iter2-rl", "vanilla-2", "vanilla-4"):
        assert (out / "eval" / name / "metrics.json").exists(), name
    assert (out / "iter1" / "explore" / "ckpt_000002" / "config.json").exists()
    assert (out / "vanilla" / "ckpt_000004" / "config.json").exists()
    summary = (out / "report" / "summary.md").read_text()
    assert "RLoop vs vanilla RL at equal RL steps (4)" in summary and "What this run shows" in summary
    for png in ("rl_curves.png", "eval.png"):
        assert (out / "report" / png).stat().st_size > 1000
    # iteration 2 started from what iteration 1 produced (consolidated, or the same initial policy when the
    # filter kept nothing) -- never from iteration 1's RL policy
    nxt = (out / "iter1" / "next_policy").read_text().strip()
    assert nxt in (str(out / "iter1" / "consolidated"), str(memo_model_dir))
    assert json.loads((out / "iter2" / "explore" / "args.json").read_text())["model"] == nxt
    log = (out / "loop.log").read_text()
    assert "MODEL" in log and "+ " in log  # settings echoed, commands echoed


def test_rerun_of_a_finished_run_does_nothing(finished_run, memo_model_dir, memo_data):
    before = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file() and p.name != "loop.log"}
    r = run_loop(loop_env(memo_model_dir, memo_data, finished_run), timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [line for line in r.stdout.splitlines() if line.startswith("+ ")]  # no command ran
    after = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*") if p.is_file() and p.name != "loop.log"}
    assert before == after


def weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def test_vanilla_starting_from_iteration_1s_copy_is_the_uninterrupted_run(finished_run, memo_model_dir, memo_data,
                                                                          tmp_path):
    """loop.sh copies iteration 1's RL run as vanilla's first RL_STEPS steps (same model, seed, data, flags) and
    resumes it: it must end with the weights of a vanilla run made from scratch (RLOOP=0)."""
    van = finished_run / "vanilla"
    assert weights(van / "ckpt_000002") == weights(finished_run / "iter1" / "explore" / "ckpt_000002")
    rows = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in rows(van)] == [1, 2, 3, 4]
    r = run_loop(loop_env(memo_model_dir, memo_data, tmp_path / "alone", RLOOP="0"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    alone = tmp_path / "alone" / "vanilla"
    assert "iter1/explore's (copied)" in (finished_run / "loop.log").read_text()
    for step in (2, 4):
        assert weights(alone / f"ckpt_{step:06d}") == weights(van / f"ckpt_{step:06d}"), step
    same = lambda run: [(r["step"], r["reward"], r["grad_norm"]) for r in rows(run)]  # noqa: E731
    assert same(alone) == same(van)


def test_two_lanes_make_the_same_run(finished_run, memo_model_dir, memo_data, tmp_path):
    """JOBS=2 (vanilla RL and evaluations beside RLoop's chain) writes what JOBS=1 writes: the same weights at
    every checkpoint and the same evaluation numbers; its second lane's lines are marked."""
    out = tmp_path / "lanes"
    r = run_loop(loop_env(memo_model_dir, memo_data, out, JOBS="2"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[lane 2] + " in r.stdout and "JOBS             2" in r.stdout
    ckpts = sorted(p.relative_to(finished_run) for p in finished_run.rglob("model.safetensors"))
    assert len(ckpts) >= 6 and ckpts == sorted(p.relative_to(out) for p in out.rglob("model.safetensors"))
    for c in ckpts:
        assert (finished_run / c).read_bytes() == (out / c).read_bytes(), c
    evals = sorted(p.name for p in (finished_run / "eval").iterdir())
    assert evals == sorted(p.name for p in (out / "eval").iterdir())
    for name in evals:
        a, b = (json.loads((run / "eval" / name / "metrics.json").read_text()) for run in (finished_run, out))
        assert a["average"] == b["average"], name
    assert not (out / ".claim").exists() and (out / "report" / "summary.md").exists()


def test_killed_loop_resumes_and_finishes(memo_model_dir, memo_data, tmp_path):
    out = tmp_path / "run"
    env = loop_env(memo_model_dir, memo_data, out, ITERS="1", VANILLA="1")
    p = subprocess.Popen(["bash", "loop.sh"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (out / ".done" / "iter1-harvest").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # mid-filter / mid-consolidate: whatever ran next dies
    p.wait()
    assert not (out / "report" / "summary.md").exists()
    r = run_loop(env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "iter1-explore: done, skipped" in r.stdout
    assert (out / "report" / "summary.md").exists()


# ---------------------------------------------------------------------------------------------------------
# loop.sh's control flow in seconds: the training and evaluation stages are stand-ins (PYTHON = a shim that
# logs every command); harvest.py, filter.py and report.py are the real ones, so filter.py's exit code 3
# ("kept nothing") reaches loop.sh exactly as in a real run.

SHIM = '''#!{python}
import json, os, sys
from pathlib import Path

script, args = sys.argv[1], sys.argv[2:]
with open(os.environ["SHIM_LOG"], "a") as f:
    f.write(json.dumps([script, *args]) + "\\n")
if script in ("harvest.py", "filter.py", "report.py", "-m"):  # the real stage, or a real module (lib.run.linkcopy)
    os.execv(sys.executable, [sys.executable, script, *args])
flag = lambda name: args[args.index(name) + 1]
out = Path(flag("--out"))
out.mkdir(parents=True, exist_ok=True)
if script == "explore.py":
    # SUCCESSES: per run, "problem@step" -> how many of its 6 samples at that step are correct
    succ = json.loads(os.environ["SUCCESSES"])[out.parent.name if out.name == "explore" else out.name]
    steps, every = int(flag("--rl-steps")), int(flag("--save-every"))
    with open(out / "rollouts.jsonl", "w") as f:
        for (pid, step), c in ((tuple(k.split("@")), v) for k, v in succ.items()):
            for j in range(6):
                ok = j < c
                f.write(json.dumps({{"problem_id": pid, "prompt": pid + "?", "response": f"{{pid}} s{{step}} r{{j}}",
                                    "reward": 1.0 if ok else -1.0, "acc": ok, "step": int(step)}}) + "\\n")
    with open(out / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({{"step": s, "reward": 0.0, "grad_norm": 1.0}}) + "\\n" for s in range(1, steps + 1))
    for s in range(every, steps + 1, every):
        (out / f"ckpt_{{s:06d}}").mkdir(exist_ok=True)
elif script == "consolidate.py":
    (out / "config.json").write_text("{{}}")
elif script == "evaluate.py":
    b = {{"problems": 2, "mean_acc": 0.5, "pass@1": 0.5, "pass@2": 0.75}}
    (out / "metrics.json").write_text(json.dumps({{"benchmarks": {{"memo": b}}, "average": b}}))
'''


def shim_env(tmp_path, successes: dict, **over) -> dict:
    """loop.sh's environment with PYTHON = the shim (its calls in tmp_path/calls.jsonl), OUT = tmp_path/run: two
    iterations of 2 RL steps, THRESHOLD unset."""
    shim = tmp_path / "py"
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("THRESHOLD", "TRAIN_LAUNCH", "VANILLA")}
    env.update(PYTHON=str(shim), SHIM_LOG=str(tmp_path / "calls.jsonl"), SUCCESSES=json.dumps(successes),
               MODEL="/models/initial", DATA="d.jsonl", BENCHMARKS="memo=m.jsonl", OUT=str(tmp_path / "run"),
               ITERS="2", RL_STEPS="2", SAVE_EVERY="2", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return {**env, **over}


def test_filter_keeps_nothing_at_the_default_threshold(tmp_path):
    """THRESHOLD unset = 0.1. Iteration 1 solves `a` 2 times in 12 samples (rate 0.17 >= 0.1: medium) and `b`
    never: nothing is hard, filter.py exits 3, iteration 1 keeps its initial policy (no RFT, no RFT
    evaluation) and iteration 2 starts from it again. Iteration 2 solves `a` once in 12 (0.083: hard): RFT of
    the initial policy on that one success, and its evaluation."""
    log, out, model = tmp_path / "calls.jsonl", tmp_path / "run", "/models/initial"
    env = shim_env(tmp_path, {"iter1": {"a@1": 1, "a@2": 1, "b@1": 0, "b@2": 0},
                              "iter2": {"a@1": 0, "a@2": 1, "b@1": 0, "b@2": 0},
                              "vanilla": {"a@1": 0, "a@2": 0, "a@3": 0, "a@4": 0}})
    r = run_loop(env, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    flag = lambda call, name: call[call.index(name) + 1]  # noqa: E731
    by = lambda script: [c for c in calls if c[0] == script]  # noqa: E731

    assert [flag(c, "--threshold") for c in by("filter.py")] == ["0.1", "0.1"]  # the default
    assert "iteration 2 starts again from /models/initial" in r.stdout
    stats1 = json.loads((out / "iter1" / "filter" / "filter_stats.json").read_text())
    assert stats1["kept_trajectories"] == 0
    assert stats1["buckets"]["medium"] == 1 and stats1["buckets"]["never_solved"] == 1
    assert not (out / "iter1" / "filter" / "rft.jsonl").exists() and not (out / "iter1" / "consolidated").exists()
    assert (out / "iter1" / "next_policy").read_text().strip() == model
    # iteration 2 explores from the initial policy again, and consolidates it (not iteration 1's RL policy)
    assert [flag(c, "--model") for c in by("explore.py")] == [model, model, model]  # iter1, iter2, vanilla
    (cons,) = by("consolidate.py")
    assert flag(cons, "--model") == model and flag(cons, "--out") == str(out / "iter2" / "consolidated")
    rft = [json.loads(line) for line in (out / "iter2" / "filter" / "rft.jsonl").read_text().splitlines()]
    assert [(t["problem_id"], t["step"], t["response"]) for t in rft] == [("a", 2, "a s2 r0")]
    assert (out / "iter2" / "next_policy").read_text().strip() == str(out / "iter2" / "consolidated")
    # evaluations: no RFT one for iteration 1
    assert sorted(Path(flag(c, "--out")).name for c in by("evaluate.py")) == \
        ["base", "iter1-rl", "iter2-rft", "iter2-rl", "vanilla-2", "vanilla-4"]
    assert (out / "report" / "summary.md").exists()


def test_a_rerun_with_another_setting_stops_before_any_stage(tmp_path):
    """The first start records the settings that shape the results (OUT/.settings); a finished run rerun with
    another THRESHOLD stops with one line naming it, both values and the way out, before any stage; rerun with
    the same settings, every stage is skipped."""
    runs = {f"iter{i}": {"a@1": 1, "a@2": 0} for i in (1, 2)} | {"vanilla": {"a@1": 1, "a@2": 0, "a@3": 0, "a@4": 0}}
    env = shim_env(tmp_path, runs, ITERS="1")
    r = run_loop(env, timeout=120)
    out, log = tmp_path / "run", tmp_path / "calls.jsonl"
    assert r.returncode == 0 and (out / "report" / "summary.md").exists(), r.stdout[-3000:] + r.stderr[-3000:]
    assert "THRESHOLD=0.1\n" in (out / ".settings").read_text()
    calls = log.read_text()
    r = run_loop({**env, "THRESHOLD": "0.5"}, timeout=60)
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and "+ " not in r.stdout and log.read_text() == calls, r.stdout
    assert all(s in errors[0] for s in ("THRESHOLD=0.1", "THRESHOLD=0.5", "new OUT", f"delete {out}/.settings"))
    r = run_loop(env, timeout=60)
    assert r.returncode == 0 and "done, skipped" in r.stdout and "\n+ " not in r.stdout and log.read_text() == calls
