"""--config FILE on every stage (lib/run/cli.StageParser): file values are defaults, command-line flags win,
values go through argparse's own types, unknown keys fail in one line, and each stage's args.json replays."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

import consolidate
import evaluate
import explore
import filter as filter_stage
import harvest
from lib.run import cli

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_json_values_are_defaults_and_the_command_line_wins(tmp_path):
    cfg = write(tmp_path / "c.json", json.dumps({"rl_steps": 7, "lr": 1e-4, "dynamic_sampling": False,
                                                 "reward": "math_verify", "out": str(tmp_path / "a")}))
    a = explore.get_args(["--config", str(cfg)]).flags
    assert (a["rl_steps"], a["lr"], a["dynamic_sampling"], a["reward"]) == (7, 1e-4, False, "math_verify")
    assert a["out"] == str(tmp_path / "a") and a["n_samples"] == 8  # unset keys keep the stage's defaults
    b = explore.get_args(["--config", str(cfg), "--rl-steps", "3", "--dynamic-sampling", "--out", str(tmp_path / "b")])
    assert (b.rl_steps, b.sampling.dynamic_sampling, b.flags["out"], b.flags["lr"]) == (3, True, str(tmp_path / "b"),
                                                                                         1e-4)
    c = explore.get_args([f"--config={cfg}", "--n-samples", "2"])  # the '=' spelling
    assert (c.sampling.n_samples, c.rl_steps) == (2, 7)


def test_yaml_with_dashed_keys(tmp_path):
    pytest.importorskip("yaml")
    cfg = write(tmp_path / "c.yaml", "max-new-tokens: 40\ntop_p: 0.9\nseed: 3\n# a comment\n")
    a = evaluate.get_args(["--config", str(cfg), "--out", str(tmp_path / "e")])
    assert (a.max_new_tokens, a.top_p, a.seed) == (40, 0.9, 3)


def test_required_flags_may_come_from_the_file(tmp_path):
    cfg = write(tmp_path / "c.json", json.dumps({"run_dir": "r", "out": str(tmp_path / "h"), "select-steps": "1-5"}))
    a = harvest.get_args(["--config", str(cfg)])
    assert (a.run_dir, a.select_steps, a.step_ranges) == ("r", "1-5", [(1, 5)])
    with pytest.raises(SystemExit):  # still required when neither gives it
        harvest.get_args(["--config", str(write(tmp_path / "d.json", "{}"))])


@pytest.mark.parametrize("values, expect", [
    ({"stepz": 3}, "unknown key 'stepz' (this stage has no --stepz flag)"),
    ({"rl_steps": 2.5}, "key 'rl_steps' (--rl-steps): invalid int value: '2.5'"),
    ({"rl-steps": True}, "key 'rl-steps' (--rl-steps): expected a single value, got True"),
    ({"resume": "yes"}, "key 'resume' (--resume): expected true or false, got 'yes'"),
    ({"backend": "tpu"}, "key 'backend' (--backend): invalid choice: 'tpu'"),
    ({"rl_steps": None}, "key 'rl_steps' (--rl-steps): null is not a value of this flag (default 60)"),
    ({"rl_steps": [1, 2]}, "expected a single value, got [1, 2]"),
    ([1, 2], "expected a mapping of flag names to values, got list"),
])
def test_bad_values_are_one_line_naming_file_and_key(tmp_path, values, expect):
    cfg = write(tmp_path / "c.json", json.dumps(values))
    with pytest.raises(cli.UserError, match=None) as e:
        explore.get_args(["--config", str(cfg)])
    assert str(e.value).startswith(f"{cfg}: ") and expect in str(e.value), str(e.value)


@pytest.mark.parametrize("stage, key", [(explore, "steps"), (explore, "n"), (harvest, "run"), (harvest, "steps"),
                                        (harvest, "resample"),
                                        (filter_stage, "in"), (consolidate, "data"), (consolidate, "max_len"),
                                        (consolidate, "warmup"), (evaluate, "n")])
def test_a_key_is_a_flag_name_only(tmp_path, stage, key):
    """A key names a flag as its dest or its one spelling: any other name is an unknown key."""
    cfg = write(tmp_path / "c.json", json.dumps({key: 1}))
    with pytest.raises(cli.UserError, match=f"unknown key '{key}'"):
        stage.get_args(["--config", str(cfg)])


def test_bad_files(tmp_path):
    for path, expect in ((tmp_path / "none.json", "no such file (--config)"),
                         (write(tmp_path / "c.toml", "a = 1"), "takes a .json or .yaml / .yml file"),
                         (write(tmp_path / "c.json", "{steps: 1"), "not valid JSON")):
        with pytest.raises(cli.UserError) as e:
            explore.get_args(["--config", str(path)])
        assert str(e.value).startswith(str(path)) and expect in str(e.value)


def test_the_command_line_error_is_one_line(tmp_path):
    cfg = write(tmp_path / "c.json", json.dumps({"stepz": 1}))
    r = subprocess.run([sys.executable, "explore.py", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == cli.EXIT_USER_ERROR
    assert r.stderr.strip().splitlines() == [f"error: {cfg}: unknown key 'stepz' (this stage has no --stepz flag)"]


@pytest.mark.parametrize("stage, argv, derived", [
    (explore, ["--rl-steps", "5", "--resume", "--no-clip-higher", "--logger", ""], {"bf16": False}),
    (evaluate, ["--benchmarks", "a=x.jsonl@test", "--n-samples", "2"], {}),
    (filter_stage, ["--trajectories", "h.jsonl", "--threshold", "0.3"], {}),
    (consolidate, ["--trajectories", "rft.jsonl", "--sft-steps", "4", "--kl-coef", "0.1"], {"bf16": False}),
])
def test_every_stage_args_json_replays(tmp_path, stage, argv, derived):
    """What a stage writes as args.json (its resolved args, plus the values its run fills in, like bf16)
    reads back through --config into the same namespace (explore's: its typed config's flags)."""

    def get_args(argv):
        a = stage.get_args(argv)
        return argparse.Namespace(**a.flags) if stage is explore else a

    a = get_args(argv + ["--out", str(tmp_path / "out")])
    vars(a).update(derived)
    cli.save_args(a, tmp_path)
    b = get_args(["--config", str(tmp_path / "args.json")])
    assert vars(b) == {**vars(a), "config": str(tmp_path / "args.json")}
    # and its own args.json (which names the file it came from) replays too
    cli.save_args(b, tmp_path / "again")
    c = get_args(["--config", str(tmp_path / "again" / "args.json")])
    assert {k: v for k, v in vars(c).items() if k != "config"} == {k: v for k, v in vars(a).items() if k != "config"}


def test_explore_replays_from_its_args_json(tiny_model_dir, tmp_path):
    """`explore.py --config runs/x/args.json --out runs/y` repeats run x: the same metrics, step for step."""
    from test_explore import digit_reward, run_args, strip_times, write_problems

    from lib.run.records import read_jsonl

    data = write_problems(tmp_path / "train.jsonl")
    x, y = tmp_path / "x", tmp_path / "y"
    explore.main(run_args(tiny_model_dir, data, x, "--rl-steps", "2", "--seed", "3", "--no-overlong-shaping"),
                 reward_fn=digit_reward)
    explore.main(["--config", str(x / "args.json"), "--out", str(y)], reward_fn=digit_reward)
    rows = [strip_times([r for _, r in read_jsonl(d / "metrics.jsonl")]) for d in (x, y)]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    ax, ay = (json.loads((d / "args.json").read_text()) for d in (x, y))
    assert {k: v for k, v in ay.items() if k not in ("out", "config", "_run")} == \
        {k: v for k, v in ax.items() if k not in ("out", "config", "_run")}
    run = ay["_run"]  # where the run came from: commit, versions, command line (--config skips it)
    assert run["commit"] and {"python", "torch", "transformers"} <= set(run["versions"]) and run["argv"]
    assert (ay["config"], ay["seed"], ay["overlong_shaping"]) == (str(x / "args.json"), 3, False)
