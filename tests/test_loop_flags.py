"""loop.sh's knobs, without running any stage: PYTHON=echo prints each stage's command line instead."""
import os
import re
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


# ---------------------------------------------------------------------------------------------------------
# --help and DRY_RUN=1: nothing runs, nothing is written


def loop(tmp_path, *args, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("TRAIN_LAUNCH", "EVAL_LAUNCH", "JOBS", "NPROC_PER_NODE")}
    e.update({"OUT": str(tmp_path / "loop"), "CUDA_VISIBLE_DEVICES": "", **env})
    r = subprocess.run(["bash", "loop.sh", *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def stage_lines(out: str) -> list[str]:
    return [ln[2:] for ln in out.splitlines() if ln.startswith("+ ")]


def test_help_lists_every_variable_and_runs_nothing(tmp_path):
    rc, out, err = loop(tmp_path, "--help")
    assert rc == 0 and err == ""
    names = re.findall(r"^var (\w+) ", (ROOT / "loop.sh").read_text(), re.M)
    assert len(names) >= 30 and {"NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE", "EVAL_LAUNCH",
                                 "DRY_RUN", "RLOOP_RUN_GROUP"} <= set(names)
    listed = [ln.split()[0] for ln in out.splitlines() if ln.startswith("  ")]
    assert listed == names  # every variable, in the script's order, each with its default and meaning
    assert not (tmp_path / "loop").exists() and not stage_lines(out)
    rc, out, err = loop(tmp_path, "--bogus")
    assert rc == 2 and "takes no arguments" in err


def test_dry_run_prints_the_stage_commands_in_order_and_writes_nothing(tmp_path):
    rc, out, err = loop(tmp_path, DRY_RUN="1", ITERS="2", RL_STEPS="4", MODEL="m", BENCHMARKS="b=b.jsonl",
                        NPROC_PER_NODE="2", MASTER_PORT="29533", EVAL_ITERS="all")
    assert rc == 0, err
    assert not (tmp_path / "loop").exists()  # no folder, no log, no marker, no run group
    o = tmp_path / "loop"
    tr = ("python -m torch.distributed.run --nnodes 1 --node-rank 0 --master-addr 127.0.0.1 --master-port 29533 "
          "--nproc-per-node 2")
    def explore(model, out, steps, seed):
        return (f"{tr} explore.py --model {model} --data toy --out {o}/{out} --rl-steps {steps} --save-every 4 "
                f"--seed {seed} --resume")
    def iteration(i, initial):  # (iteration i starts from `initial`: explores it, consolidates it)
        return [explore(initial, f"iter{i}/explore", 4, i - 1),
                f"python harvest.py --run-dir {o}/iter{i}/explore --out {o}/iter{i}/harvest",
                f"python filter.py --trajectories {o}/iter{i}/harvest --out {o}/iter{i}/filter --threshold 0.1",
                f"{tr} consolidate.py --model {initial} --trajectories {o}/iter{i}/filter "
                f"--out {o}/iter{i}/consolidated --seed 0 --resume"]
    evals = [("base", "m"), ("iter1-rl", f"{o}/iter1/explore/ckpt_000004"), ("iter1-rft", f"{o}/iter1/consolidated"),
             ("vanilla-4", f"{o}/vanilla/ckpt_000004"), ("iter2-rl", f"{o}/iter2/explore/ckpt_000004"),
             ("iter2-rft", f"{o}/iter2/consolidated"), ("vanilla-8", f"{o}/vanilla/ckpt_000008")]
    assert stage_lines(out) == [
        *iteration(1, "m"), *iteration(2, f"{o}/iter1/consolidated"), explore("m", "vanilla", 8, 0),
        *[f"{tr} evaluate.py --model {m} --benchmarks b=b.jsonl --out {o}/eval/{n} --seed 0 --n-samples 8"
          for n, m in evals],
        f"python report.py {o}"]
    assert "   NPROC_PER_NODE   2   (from the environment)" in out and "   NNODES           1\n" in out


@pytest.mark.parametrize("which, evals", [
    ("all", ["base", "iter1-rl", "iter1-rft", "vanilla-2", "iter2-rl", "iter2-rft", "vanilla-4"]),
    ("last", ["base", "iter2-rl", "iter2-rft", "vanilla-4"]),
    ("output", ["base", "iter2-rft", "vanilla-4"])])
def test_eval_iters(tmp_path, which, evals):
    rc, out, err = loop(tmp_path, DRY_RUN="1", ITERS="2", RL_STEPS="2", MODEL="m", EVAL_ITERS=which)
    assert rc == 0, err
    outs = [ln.split("--out ")[1].split()[0] for ln in stage_lines(out) if "evaluate.py" in ln]
    assert [o.rsplit("/", 1)[1] for o in outs] == evals


def test_dry_run_of_node_1_and_of_a_resampling_harvest(tmp_path):
    """Node 1 of 2 launches the distributed stages (harvest --n-samples among them) and leaves the single-process
    ones to node 0; markers already written are skipped."""
    (tmp_path / "loop" / ".done").mkdir(parents=True)
    (tmp_path / "loop" / ".done" / "iter1-explore").write_text("7\n")
    rc, out, err = loop(tmp_path, DRY_RUN="1", ITERS="1", RL_STEPS="2", NNODES="2", NODE_RANK="1", NPROC_PER_NODE="1",
                        MASTER_ADDR="10.0.0.1", HARVEST_ARGS="--n-samples 4", VANILLA="0")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "loop").rglob("*")) == [".done", "iter1-explore"]
    lines = stage_lines(out)
    assert all(ln.startswith("python -m torch.distributed.run --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 "
                             "--master-port 29500 --nproc-per-node 1 ") for ln in lines)
    assert [ln.split()[13] for ln in lines] == ["harvest.py", "consolidate.py", "evaluate.py", "evaluate.py",
                                                "evaluate.py"]
    assert "--run-dir" in lines[0] and "--n-samples 4" in lines[0]
    for name in ("toy-base", "iter1-filter", "report"):
        assert f"-- {name}: node 0 runs it" in out
    assert "-- iter1-explore: done, skipped" in out


@pytest.mark.parametrize("env, expect", [
    ({"NNODES": "2", "JOBS": "2"}, "needs JOBS=1"),
    ({"NNODES": "2", "TRAIN_LAUNCH": "torchrun"}, "builds TRAIN_LAUNCH / EVAL_LAUNCH itself"),
    ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK=2 must be in 0..NNODES-1"),
    ({"NPROC_PER_NODE": "2", "JOBS": "2"}, "JOBS=2 runs two stages at once"),
    ({"NNODES": "two"}, "NNODES=two must be a whole number"),
])
def test_bad_settings_stop_before_anything_is_written(tmp_path, env, expect):
    rc, out, err = loop(tmp_path, **env)
    assert rc == 2 and expect in err and not (tmp_path / "loop").exists()


def test_every_loop_command_of_the_scaling_page_runs(tmp_path):
    """docs/scaling.md's `bash loop.sh` commands (the GPU and multi-node ones too), as written, with DRY_RUN=1 in
    front, on a pretend node of 8 GPUs (CUDA_VISIBLE_DEVICES): each is a valid setting (exit 0) and launches
    explore on the nodes and ranks it names."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [c.strip().rstrip("&").strip() for b in blocks for c in b.replace("\\\n", " ").splitlines()
                if c.strip().endswith(("bash loop.sh", "bash loop.sh &"))]
    assert len(commands) == 5
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "JOBS", "TRAIN_LAUNCH", "NPROC_PER_NODE")}
    for cmd in commands:
        r = subprocess.run(["bash", "-c", f"DRY_RUN=1 {cmd}"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**env, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
        assert r.returncode == 0, (cmd, r.stderr)
        want = dict(re.findall(r"(NNODES|NODE_RANK|MASTER_ADDR|NPROC_PER_NODE)=(\S+)", cmd))
        launch = (f"--nnodes {want.get('NNODES', 1)} --node-rank {want.get('NODE_RANK', 0)} --master-addr "
                  f"{want.get('MASTER_ADDR', '127.0.0.1')} ")
        nproc = f"--nproc-per-node {want.get('NPROC_PER_NODE', 8)} "
        explore = [ln for ln in stage_lines(r.stdout) if " explore.py " in ln]
        assert explore and all(launch in ln and nproc in ln for ln in explore), (cmd, explore)


def test_every_node_checks_the_settings_record(tmp_path):
    """OUT/.settings (node 0 writes it at the first start) is checked on every node, dry runs too: another value
    of a recorded variable stops the node before any stage, with one line; a placement variable may differ."""
    out = tmp_path / "loop"
    out.mkdir()
    rc, _, _ = loop(tmp_path, DRY_RUN="1", RL_STEPS="2", MODEL="m")
    assert rc == 0 and not (out / ".settings").exists()  # a dry run writes no record
    names = re.findall(r"^var (\w+) ", (ROOT / "loop.sh").read_text(), re.M)
    recorded = re.search(r"RECORDED=\((.*?)\)", (ROOT / "loop.sh").read_text(), re.S).group(1).split()
    assert set(recorded) < set(names) and not {"NNODES", "NODE_RANK", "MASTER_ADDR", "JOBS", "PYTHON"} & set(recorded)
    (out / ".settings").write_text("".join(f"{k}={v}\n" for k, v in
                                           {"MODEL": "m", "RL_STEPS": "2", "THRESHOLD": "0.1"}.items()))
    for node in ("0", "1"):
        rc, out_, err = loop(tmp_path, DRY_RUN="1", RL_STEPS="2", MODEL="m", THRESHOLD="0.5", NNODES="2",
                             NODE_RANK=node, NPROC_PER_NODE="1")
        assert rc == 2 and not stage_lines(out_), err
        assert err.strip().count("\n") == 0 and "THRESHOLD=0.1" in err and "THRESHOLD=0.5" in err, err
        assert "delete" in err and ".settings" in err
        rc, out_, err = loop(tmp_path, DRY_RUN="1", RL_STEPS="2", MODEL="m", NNODES="2", NODE_RANK=node,
                             NPROC_PER_NODE="1", MASTER_PORT="29599")
        assert rc == 0 and stage_lines(out_), err
