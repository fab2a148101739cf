"""--reward path/to/file.py:function (lib/algo/reward.load_reward) on explore, harvest and evaluate: the user's
function scores rollouts; a bad path, a missing function or a wrong return shape is one line, exit != 0,
before any model loads."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import explore
from lib.algo import reward
from lib.run import cli
from lib.run.records import read_jsonl

ROOT = Path(__file__).resolve().parent.parent

GOOD = '''
def has_seven(response, ground_truth):
    ok = "7" in response
    return {"score": 1.0 if ok else -1.0, "acc": ok, "pred": "7" if ok else ""}
'''


@pytest.fixture
def reward_file(tmp_path) -> Path:
    f = tmp_path / "my_reward.py"
    f.write_text(GOOD + '''
def returns_list(response, ground_truth):
    return [1.0]

def no_pred(response, ground_truth):
    return {"score": 1, "acc": True}

def str_score(response, ground_truth):
    return {"score": "1", "acc": True, "pred": ""}

def raises(response, ground_truth):
    raise KeyError("boom")

NOT_A_FUNCTION = 3
''')
    return f


def test_builtin_modes_and_a_file_function(reward_file):
    assert reward.load_reward("dapo")("so\nAnswer: 5", "5") == {"score": 1.0, "acc": True, "pred": "5"}
    fn = reward.load_reward(f"{reward_file}:has_seven")
    assert fn("it is 7", "x") == {"score": 1.0, "acc": True, "pred": "7"}
    assert fn("it is 8", "x")["acc"] is False


@pytest.mark.parametrize("spec, expect", [
    ("{d}/nope.py:f", "--reward: {d}/nope.py: no such file"),
    ("{f}:missing", "--reward: {f} has no function 'missing'"),
    ("{f}:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is not a function"),
    ("{f}:returns_list", 'expected a dict {{"score", "acc", "pred"}}, got list'),
    ("{f}:no_pred", "the result lacks 'pred'"),
    ("{f}:str_score", "'score' should be a number, got str"),
    ("{f}:raises", "raised KeyError: 'boom'"),
    ("{f}", "expected 'dapo', 'math_verify' or 'path/to/file.py:function'"),
    ("dapo2", "expected 'dapo', 'math_verify' or 'path/to/file.py:function', got 'dapo2'"),
])
def test_bad_specs_are_one_line(reward_file, spec, expect):
    spec = spec.format(f=reward_file, d=reward_file.parent)
    with pytest.raises(cli.UserError) as e:
        reward.load_reward(spec)
    assert expect.format(f=reward_file, d=reward_file.parent) in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_fails_to_import(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("def f(r, g):\n    return {\n")
    with pytest.raises(cli.UserError, match=r"broken.py: importing it raised SyntaxError"):
        reward.load_reward(f"{f}:f")


@pytest.mark.parametrize("argv", [
    ["explore.py", "--model", "/no/such/model", "--data", "DATA"],
    ["evaluate.py", "--model", "/no/such/model", "--benchmarks", "a=DATA"],
])
def test_stages_fail_before_the_model_loads(tmp_path, reward_file, argv):
    """The model path does not exist: the reward's error coming out shows it was checked first."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "problem": "1+1", "answer": "2"}) + "\n")
    argv = [x.replace("DATA", str(data)) for x in argv]
    r = subprocess.run([sys.executable, *argv, "--reward", f"{reward_file}:no_pred", "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == cli.EXIT_USER_ERROR, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: --reward {reward_file}:no_pred: the result lacks 'pred' "
                                             f"(the probe call no_pred('Answer: 1', '1') returned "
                                             f"{{'score': 1, 'acc': True}})"]


def test_harvest_resample_checks_the_reward_first(tmp_path, reward_file):
    run = tmp_path / "run"
    (run / "ckpt_000001").mkdir(parents=True)  # a checkpoint folder with a config but no weights
    (run / "ckpt_000001" / "config.json").write_text("{}")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "problem": "1+1", "answer": "2"}) + "\n")
    r = subprocess.run([sys.executable, "harvest.py", "--run-dir", str(run), "--out", str(tmp_path / "h"),
                        "--n-samples", "2", "--data", str(data), "--max-new-tokens", "8",
                        "--reward", f"{reward_file}:missing"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == cli.EXIT_USER_ERROR
    assert r.stderr.strip().splitlines() == [f"error: --reward: {reward_file} has no function 'missing'"]


def test_explore_trains_on_the_file_reward(tiny_model_dir, tmp_path, reward_file):
    """The file's function is the verifier of every rollout (its pred lands in rollouts.jsonl)."""
    from test_explore import run_args, write_problems

    data = write_problems(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    explore.main(run_args(tiny_model_dir, data, out, "--rl-steps", "1", "--reward", f"{reward_file}:has_seven"))
    rolls = [r for _, r in read_jsonl(out / "rollouts.jsonl")]
    assert rolls and all(r["acc"] == ("7" in r["response"]) for r in rolls)
    assert all(r["pred"] == ("7" if r["acc"] else "") for r in rolls)
    assert json.loads((out / "args.json").read_text())["reward"] == f"{reward_file}:has_seven"
