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
           "MODEL": str(model), "DATA": str(data), "EVAL": f"memo={data}", "OUT": str(out),
           "ITERS": "2", "RL_STEPS": "2", "SAVE_EVERY": "1", "THRESHOLD": "1.0",
           "EXPLORE_ARGS": "--prompts-per-step 4 --n 4 --mini-batch 2 --micro-batch 8 --max-new-tokens 24 "
                           "--overlong-buffer 4 --max-gen-batches 2 --lr 1e-3 --warmup-steps 0 --backend hf",
           "CONSOLIDATE_ARGS": "--epochs 1 --batch-size 8", "EVAL_ARGS": "--n 4 --max-new-tokens 24 --backend hf"}
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
