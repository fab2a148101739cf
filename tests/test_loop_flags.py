"""loop.sh's knobs, without running any stage: PYTHON=echo prints each stage's command line instead."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dry_run(tmp_path, **env):
    """loop.sh with every stage replaced by `echo`: (exit code, the stage command lines it printed)."""
    e = {**os.environ, "PYTHON": "echo", "OUT": str(tmp_path / "loop"), "ITERS": "1", **env}
    (tmp_path / "loop" / "iter1").mkdir(parents=True)  # (a real explore.py would have made it)
    r = subprocess.run(["bash", "loop.sh"], cwd=ROOT, env=e, capture_output=True, text=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).replace("[lane 2] ", "")  # (JOBS=2, the toy's default: two lanes)


@pytest.mark.parametrize("rl_steps, save_every", [("2", "2"), ("6", "3"), ("20", "5"), ("7", "1"), ("8", "4")])
def test_save_every_defaults_to_a_divisor_of_rl_steps(tmp_path, rl_steps, save_every):
    rc, out = dry_run(tmp_path, RL_STEPS=rl_steps)
    assert rc == 0, out
    explore_lines = [ln for ln in out.splitlines() if ln.startswith("explore.py ")]
    assert len(explore_lines) == 2  # iteration 1 and vanilla
    assert all(f"--save-every {save_every} " in ln for ln in explore_lines), explore_lines


def test_an_explicit_save_every_must_still_divide(tmp_path):
    rc, out = dry_run(tmp_path, RL_STEPS="2", SAVE_EVERY="3")
    assert rc == 2 and "error: SAVE_EVERY=3 must divide RL_STEPS=2" in out


def test_logger_reaches_explore_and_consolidate_only(tmp_path):
    rc, out = dry_run(tmp_path, RL_STEPS="2", LOGGER="tensorboard,wandb")
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if ln.split(" ", 1)[0].endswith(".py")]
    with_flag = {ln.split(" ", 1)[0] for ln in lines if "--logger tensorboard,wandb" in ln}
    assert with_flag == {"explore.py", "consolidate.py"}
    rc, out = dry_run(tmp_path / "b", RL_STEPS="2")
    assert rc == 0 and "--logger" not in out
