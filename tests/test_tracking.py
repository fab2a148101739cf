"""--logger (lib/run/tracking.py): TensorBoard event files read back, wandb offline (skipped without wandb),
one-line errors for unknown loggers and missing packages, and explore / consolidate mirroring every
metrics.jsonl row."""
import importlib.util
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import consolidate
import explore
from lib.run import cli, tracking
from lib.run.records import Trajectory, read_jsonl, write_jsonl
from lib.worlds import toy

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from a TensorBoard log folder (what TensorBoard itself would show)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}


def texts(logdir: Path) -> dict[str, dict[int, str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return {tag: {e.step: e.tensor_proto.string_val[0].decode() for e in ea.Tensors(tag)}
            for tag in ea.Tags()["tensors"]}


def test_parse_loggers():
    assert tracking.parse_loggers("") == [] and tracking.parse_loggers("none") == []
    assert tracking.parse_loggers("tensorboard, tensorboard") == ["tensorboard"]
    with pytest.raises(cli.UserError, match=r"--logger: unknown logger 'mlflow' \(choose from tensorboard, wandb"):
        tracking.parse_loggers("tensorboard,mlflow")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_package_is_one_line_naming_what_to_install(tmp_path):
    r = subprocess.run([sys.executable, "explore.py", "--logger", "wandb", "--out", str(tmp_path / "o")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == cli.EXIT_USER_ERROR
    assert r.stderr.strip().splitlines() == ["error: --logger wandb: the wandb package is not installed: "
                                             "pip install wandb"]


def test_numeric_and_markdown_helpers():
    assert tracking.numeric({"step": 3, "a": 0.5, "b": None, "c": float("nan"), "d": "x", "e": True}) == \
        {"step": 3.0, "a": 0.5, "e": 1.0}
    assert tracking.markdown_table(["x", "y"], [["a|b", "1\n2"]]) == "| x | y |\n|---|---|\n| a\\|b | 1<br>2 |"
    rows = [{"problem_id": p, "response": str(i)} for i, p in enumerate("aabbc")]
    picked = tracking.sample_rows(rows, k=4)  # one per problem first, then the rest in order
    assert [(r[0], r[2]) for r in picked] == [("a", "0"), ("b", "2"), ("c", "4"), ("a", "1")]


def test_tensorboard_event_file_reads_back(tmp_path):
    t = tracking.Tracker(["tensorboard"], tmp_path, "explore")
    t.log({"step": 1, "reward": 0.25, "note": "text", "entropy": None}, 1)
    t.log({"step": 2, "reward": -0.5, "val/test/mean_acc": 0.75}, 2)
    t.table("samples", ["prompt", "response"], [["1+1", "Answer: 2"]], 2)
    t.close()
    s = scalars(tmp_path / "tensorboard")
    assert s == {"explore/reward": {1: 0.25, 2: -0.5}, "explore/val/test/mean_acc": {2: 0.75}}
    assert texts(tmp_path / "tensorboard")["explore/samples/text_summary"] == \
        {2: "| prompt | response |\n|---|---|\n| 1+1 | Answer: 2 |"}


def test_resumed_tracker_hides_what_a_killed_run_logged_after_its_checkpoint(tmp_path):
    t = tracking.Tracker(["tensorboard"], tmp_path, "explore")
    for step in (1, 2, 3):
        t.log({"reward": float(step)}, step)
    t.close()
    time.sleep(1.1)  # event files are named by the second they were opened in: the second writer gets its own
    t = tracking.Tracker(["tensorboard"], tmp_path, "explore", resume_step=1)  # checkpoint at step 1
    t.log({"reward": 20.0}, 2)
    t.close()
    assert scalars(tmp_path / "tensorboard")["explore/reward"] == {1: 1.0, 2: 20.0}


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    t = tracking.Tracker(["wandb"], tmp_path, "explore", config={"lr": 1e-3, "path": tmp_path})
    t.log({"step": 1, "reward": 0.5}, 1)
    t.table("samples", ["prompt", "response"], [["1+1", "2"]], 1)
    run_id = t.wandb_run.id
    t.close()
    assert (tmp_path / "wandb" / "rloop-run-id").read_text().strip() == run_id
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def test_wandb_run_per_stage_in_the_loop_group(tmp_path, monkeypatch):
    """Under loop.sh (RLOOP_STAGE, RLOOP_RUN_GROUP) a stage's wandb run is named after the stage, in the loop
    run's group; by hand, after its OUT, in no group. (A stand-in wandb records what init is given.)"""
    import types

    inits = []
    fake = types.SimpleNamespace(util=types.SimpleNamespace(generate_id=lambda: "id0"),
                                 init=lambda **kw: inits.append(kw) or types.SimpleNamespace(finish=lambda: None))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv(tracking.STAGE_ENV, raising=False)
    monkeypatch.delenv(tracking.GROUP_ENV, raising=False)
    tracking.Tracker(["wandb"], tmp_path / "a", "explore").close()
    monkeypatch.setenv(tracking.STAGE_ENV, "iter2-explore")
    monkeypatch.setenv(tracking.GROUP_ENV, "loop-3f9a1c2e")
    tracking.Tracker(["wandb"], tmp_path / "b", "explore").close()
    assert [(kw["name"], kw["group"], kw["job_type"]) for kw in inits] == \
        [(str(tmp_path / "a"), None, "explore"), ("iter2-explore", "loop-3f9a1c2e", "explore")]
    assert tracking.wandb_names("x", env={}) == {"name": "x", "group": None}


def test_explore_mirrors_every_row_and_logs_samples(tiny_model_dir, tmp_path):
    from test_explore import digit_reward, run_args, write_problems

    data = write_problems(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    explore.main(run_args(tiny_model_dir, data, out, "--rl-steps", "3", "--save-every", "2", "--logger", "tensorboard"),
                 reward_fn=digit_reward)
    rows = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    s = scalars(out / "tensorboard")
    for key in ("reward", "mean_acc", "grad_norm", "tokens_per_s", "lr"):
        assert s[f"explore/{key}"] == pytest.approx({r["step"]: r[key] for r in rows}, rel=1e-6), key
    samples = texts(out / "tensorboard")["explore/samples/text_summary"]
    assert sorted(samples) == [2, 3]  # every --save-every steps and at the last
    first = next(r for _, r in read_jsonl(out / "rollouts.jsonl") if r["step"] == 2)
    assert samples[2].splitlines()[0] == "| " + " | ".join(tracking.SAMPLE_COLUMNS) + " |"
    assert f"| {first['problem_id']} |" in samples[2].splitlines()[2]


def test_consolidate_mirrors_its_rows_and_keeps_them_in_the_final_folder(tiny_model_dir, tmp_path):
    tok = toy.make_tokenizer()
    rng = random.Random(0)
    trajs = []
    for i in range(8):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        prompt = tok.apply_chat_template([{"role": "user", "content": f"Compute {a}+{b}."}], tokenize=False,
                                         add_generation_prompt=True)
        trajs.append(Trajectory(f"p{i}", prompt, f"Answer: {a + b}", 1.0, True, ground_truth=str(a + b)))
    write_jsonl(tmp_path / "rft.jsonl", trajs)
    out = tmp_path / "cons"
    consolidate.main(["--model", str(tiny_model_dir), "--trajectories", str(tmp_path / "rft.jsonl"), "--out", str(out),
                      "--sft-steps", "3", "--batch-size", "4", "--device", "cpu", "--logger", "tensorboard"])
    assert (out / "consolidate.json").is_file()
    rows = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    s = scalars(out / "tensorboard")
    assert s["consolidate/loss"] == pytest.approx({r["step"]: r["loss"] for r in rows}, rel=1e-6)
    assert sorted(s["consolidate/loss"]) == [1, 2, 3]
    assert json.loads((out / "args.json").read_text())["logger"] == "tensorboard"
    assert consolidate.out_state(out) == "finished"
