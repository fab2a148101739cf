"""Validation during RL (explore.py --eval-benchmarks / --eval-every / --eval-n-samples / --eval-before-train,
lib/engine/validation.py), per-benchmark splits (NAME=PATH@SPLIT), and report.py's curves of the val keys."""
import json
from pathlib import Path

import pytest

import explore
import report
from lib.engine import validation
from lib.engine.rollout import Completion
from lib.run import data
from lib.run.records import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("spec, expect", [
    ("HuggingFaceH4/aime_2024@train", ("HuggingFaceH4/aime_2024", "train")),
    ("HuggingFaceH4/MATH-500", ("HuggingFaceH4/MATH-500", "test")),
    ("ds:config@test[:100]", ("ds:config", "test[:100]")),
    ("runs/v@2/test.jsonl", ("runs/v@2/test.jsonl", "test")),  # '@' inside a folder name is part of the path
    ("data/@train", ("data/@train", "test")),  # nothing before '@' in the last component: a name, not a split
])
def test_split_spec(spec, expect):
    assert data.split_spec(spec, "test") == expect


def test_split_spec_leaves_an_existing_file_alone(tmp_path):
    f = tmp_path / "set@home"
    f.write_text("")
    assert data.split_spec(str(f), "test") == (str(f), "test")


def test_benchmark_splits():
    assert data.benchmark_splits("aime24=HuggingFaceH4/aime_2024@train,math500=HuggingFaceH4/MATH-500@test,"
                                 "local=x.jsonl", "validation") == {
        "aime24": ("HuggingFaceH4/aime_2024", "train"), "math500": ("HuggingFaceH4/MATH-500", "test"),
        "local": ("x.jsonl", "validation")}


class ScriptedEngine:
    """Answers problem i's samples from a fixed script of right (1) / wrong (0) marks."""

    def __init__(self, script: dict[str, list[int]]):
        self.script, self.calls = script, []

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        self.calls.append((len(prompts), n, max_new_tokens, temperature, top_p, seed))
        return [[Completion([1], [0.0], f"Answer: {'ok' if m else 'no'}", "stop") for m in self.script[p]]
                for p in prompts]


def test_validate_literal_numbers():
    probs = {"a": [data.Problem("a1", [], "ok", prompt="A1"), data.Problem("a2", [], "ok", prompt="A2")],
             "b": [data.Problem("b1", [], "ok", prompt="B1")]}
    engine = ScriptedEngine({"A1": [1, 0, 0, 0], "A2": [0, 0, 0, 0], "B1": [1, 1, 0, 1]})
    row = validation.validate(engine, probs, 4, lambda r, g: {"score": 0.0, "acc": r.endswith(g), "pred": ""},
                              max_new_tokens=9, temperature=0.8, top_p=0.7, seed=5)
    # a: problems with 1/4 and 0/4 right -> avg@4 = 0.125; pass@2 of 1-of-4 = 1 - C(3,2)/C(4,2) = 0.5 -> mean 0.25
    assert row == pytest.approx({"val/a/mean_acc": 0.125, "val/a/pass@1": 0.125, "val/a/pass@2": 0.25,
                                 "val/a/pass@4": 0.5, "val/b/mean_acc": 0.75, "val/b/pass@1": 0.75,
                                 "val/b/pass@2": 1.0, "val/b/pass@4": 1.0, "val/mean_acc": 0.4375})
    assert engine.calls == [(2, 4, 9, 0.8, 0.7, 5), (1, 4, 9, 0.8, 0.7, 5)]


def test_due():
    assert [s for s in range(1, 8) if validation.due(s, 3, 7)] == [3, 6, 7]
    assert [s for s in range(1, 8) if validation.due(s, 0, 7)] == [7]


def eval_file(tmp_path: Path) -> Path:
    f = tmp_path / "val.jsonl"
    f.write_text("".join(json.dumps({"id": f"v{i}", "problem": f"Compute {i}+1.", "answer": str(i + 1)}) + "\n"
                         for i in range(3)))
    return f


def test_explore_writes_val_rows_and_resumes(tiny_model_dir, tmp_path):
    from test_explore import digit_reward, run_args, strip_times, write_problems

    train, val = write_problems(tmp_path / "train.jsonl"), eval_file(tmp_path)
    flags = ["--eval-benchmarks", f"held={val}", "--eval-every", "2", "--eval-n-samples", "2", "--eval-before-train",
             "--save-every", "2"]
    out = tmp_path / "run"
    explore.main(run_args(tiny_model_dir, train, out, "--rl-steps", "3", *flags), reward_fn=digit_reward)
    rows = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    val_keys = {"val/held/mean_acc", "val/held/pass@1", "val/held/pass@2", "val/mean_acc"}
    assert set(rows[0]) == {"step"} | val_keys  # the initial policy's row holds only the validation
    assert [val_keys <= set(r) for r in rows] == [True, False, True, True]  # step 0, every 2 steps, the last
    for r in (rows[0], rows[2], rows[3]):
        # 3 problems x 2 samples: avg@2 is a multiple of 1/6, and pass@1 (unbiased) equals it
        assert r["val/held/pass@1"] == pytest.approx(r["val/held/mean_acc"])
        assert round(r["val/held/mean_acc"] * 6, 3) == int(round(r["val/held/mean_acc"] * 6))
        assert r["val/held/pass@2"] >= r["val/held/mean_acc"] and r["val/mean_acc"] == r["val/held/mean_acc"]

    # resume from ckpt_000002 re-runs step 3 (and its validation) alone: the same rows as before
    import shutil

    shutil.rmtree(out / "ckpt_000003")
    explore.main(run_args(tiny_model_dir, train, out, "--rl-steps", "3", "--resume", *flags), reward_fn=digit_reward)
    again = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    assert strip_times(again) == strip_times(rows)

    # report.py draws a panel of the validation curve, from the rows that have it
    assert report.val_curves(rows) == [("val/held/mean_acc", "val held avg@n")]


def test_report_plots_a_run_with_val_rows(tmp_path):
    run = tmp_path / "loop"
    rows = [{"step": 0, "val/t/mean_acc": 0.2}] + [
        {"step": s, "reward": 0.1 * s, "grad_norm": 1.0, "entropy": 1.0, "resp_len_mean": 9, "groups_kept": 0.5,
         **({"val/t/mean_acc": 0.2 + 0.1 * s} if s % 2 == 0 else {})} for s in (1, 2, 3, 4)]
    for d in (run / "iter1" / "explore", run / "vanilla"):
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report.main([str(run)])
    assert (run / "report" / "rl_curves.png").stat().st_size > 0
    r = report.load_run(run)
    assert [x["global_step"] for x in report.end_to_end(r)] == [0, 1, 2, 3, 4]


def test_bad_eval_data_fails_before_the_model_loads(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "explore.py", "--model", "/no/such/model", "--data", str(eval_file(tmp_path)),
                        "--eval-benchmarks", "x=/no/such.jsonl", "--out", str(tmp_path / "o")], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: /no/such.jsonl: no such file"]
