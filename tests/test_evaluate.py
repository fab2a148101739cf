"""evaluate.py end to end on a tiny model, its output contract, and its bad-input behaviour."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench_file(tmp_path, rows):
    f = tmp_path / "bench.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def run(args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_end_to_end_contract(tmp_path, tiny_model_dir, toy_data_dir):
    import evaluate

    out = tmp_path / "ev"
    evaluate.main(["--model", str(tiny_model_dir), "--benchmarks",
                   f"test={toy_data_dir / 'test.jsonl'},probe={toy_data_dir / 'probe.jsonl'}",
                   "--n-samples", "4", "--limit", "5", "--max-new-tokens", "8", "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_samples"] == 4 and m["temperature"] == 1.0 and m["top_p"] == 0.7 and m["max_new_tokens"] == 8
    assert set(m["benchmarks"]) == {"test", "probe"}
    for b in m["benchmarks"].values():
        assert b["problems"] == 5 and [k for k in b if k.startswith("pass@")] == ["pass@1", "pass@2", "pass@4"]
        assert b["pass@1"] == pytest.approx(b["mean_acc"])
    assert set(m["average"]) == {"mean_acc", "pass@1", "pass@2", "pass@4"}
    assert json.loads((out / "done.json").read_text())["stage"] == "evaluate"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 5 * 4
    assert {"problem_id", "prompt", "response", "reward", "acc"} <= set(samples[0]) and "step" not in samples[0]
    assert json.loads((out / "args.json").read_text())["n_samples"] == 4


def test_metrics_from_samples_literal():
    from evaluate import summarize
    from lib.run.records import Trajectory

    t = [Trajectory("a", "", "", 1.0, True), Trajectory("a", "", "", -1.0, False),
         Trajectory("b", "", "", -1.0, False), Trajectory("b", "", "", -1.0, False)]
    s = summarize(t, 2)
    assert s == {"problems": 2, "mean_acc": 0.25, "pass@1": 0.25, "pass@2": 0.5}


@pytest.mark.parametrize("case, expect", [
    ("missing", "missing.jsonl: no such file"),
    ("notjson", "bench.jsonl:2: not valid JSON"),
    ("noanswer", "bench.jsonl:1: missing field 'answer'"),
    ("n0", "--n-samples must be >= 1"),
    ("nomodel", "model folder does not exist"),
])
def test_bad_input_one_line(tmp_path, tiny_model_dir, case, expect):
    f = bench_file(tmp_path, [{"problem": "1+1", "answer": "2"}])
    model = str(tiny_model_dir)
    bench = f"b={f}"
    extra = []
    if case == "missing":
        bench = f"b={tmp_path / 'missing.jsonl'}"
    elif case == "notjson":
        f.write_text('{"problem": "1+1", "answer": "2"}\n{oops\n')
    elif case == "noanswer":
        f.write_text('{"problem": "1+1"}\n')
    elif case == "n0":
        extra = ["--n-samples", "0"]
    elif case == "nomodel":
        model = str(tmp_path / "nope")
    out = tmp_path / "out"
    r = run(["--model", model, "--benchmarks", bench, "--out", str(out), *extra])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and expect in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not (out / "metrics.json").exists()


class ScriptedEngine:
    """An engine whose completions are literal: for a prompt holding problem text P, SCRIPT[P] says which of
    the n samples answer right (1) or wrong (0), in order. Records its calls."""

    def __init__(self, script: dict[str, list[int]], answers: dict[str, str]):
        self.script, self.answers, self.calls = script, answers, []

    def close(self):
        self.calls.append("close")

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        from lib.engine.rollout import Completion

        self.calls.append({"prompts": len(prompts), "n": n, "max_new_tokens": max_new_tokens,
                           "temperature": temperature, "top_p": top_p, "seed": seed})
        out = []
        for prompt in prompts:
            (problem,) = [p for p in self.script if p in prompt]  # exactly one problem per prompt
            assert len(self.script[problem]) == n
            texts = [f"so\nAnswer: {self.answers[problem] if ok else 'wrong'}" for ok in self.script[problem]]
            out.append([Completion([5, 6], [-0.5, -0.5], t, "stop") for t in texts])
        return out


def test_metrics_of_a_policy_that_solves_some_problems(tmp_path, tiny_model_dir, monkeypatch):
    """n = 4, literal successes per problem; mean_acc and unbiased pass@k = 1 - C(4-c, k) / C(4, k) by hand."""
    import evaluate
    from lib.engine.rollout import prompt_seed

    script = {"Compute 1+2.": [1, 0, 1, 1],  # c = 3: pass@1 3/4, pass@2 1 - C(1,2)/C(4,2) = 1, pass@4 1
              "Compute 3+4.": [0, 0, 0, 0],  # c = 0: 0, 0, 0
              "Compute 2+5.": [1, 1, 1, 1],  # c = 4: 1, 1, 1
              "Compute 6+1.": [0, 0, 1, 0],  # c = 1: 1/4, 1 - C(3,2)/6 = 1/2, 1
              "Compute 4+4.": [1, 0, 0, 1]}  # c = 2: 1/2, 1 - C(2,2)/6 = 5/6, 1
    answers = {"Compute 1+2.": "3", "Compute 3+4.": "7", "Compute 2+5.": "7", "Compute 6+1.": "7",
               "Compute 4+4.": "8"}
    ids = {p: f"q{i}" for i, p in enumerate(script)}
    rows = lambda ps: [{"id": ids[p], "problem": p, "answer": answers[p]} for p in ps]  # noqa: E731
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = bench_file(tmp_path / "a", rows(list(script)[:3]))
    b = bench_file(tmp_path / "b", rows(list(script)[3:]))
    engine = ScriptedEngine(script, answers)
    monkeypatch.setattr(evaluate, "make_engine", lambda *args, **kw: engine)
    out = tmp_path / "ev"
    evaluate.main(["--model", str(tiny_model_dir), "--benchmarks", f"a={a},b={b}", "--n-samples", "4", "--seed", "7",
                   "--max-new-tokens", "8", "--device", "cpu", "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    A, B = m["benchmarks"]["a"], m["benchmarks"]["b"]
    assert A["problems"] == 3 and B["problems"] == 2
    assert A["mean_acc"] == pytest.approx((3 / 4 + 0 + 1) / 3)
    pk = lambda b: {k[5:]: v for k, v in b.items() if k.startswith("pass@")}  # noqa: E731
    assert pk(A) == pytest.approx({"1": (3 / 4 + 0 + 1) / 3, "2": (1 + 0 + 1) / 3, "4": 2 / 3})
    assert B["mean_acc"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert pk(B) == pytest.approx({"1": 3 / 8, "2": (1 / 2 + 5 / 6) / 2, "4": 1.0})
    # the average is over benchmarks (unweighted), not over problems
    assert m["average"]["mean_acc"] == pytest.approx((7 / 12 + 3 / 8) / 2)
    assert pk(m["average"]) == pytest.approx({"1": (7 / 12 + 3 / 8) / 2, "2": (2 / 3 + 2 / 3) / 2,
                                                    "4": (2 / 3 + 1) / 2})
    # the flags reach the engine; one call per benchmark, each prompt with its own seed (problem i: prompt_seed(7, i));
    # the engine is closed at the end
    seeds = [prompt_seed(7, i) for i in range(3)]
    flags = {"n": 4, "max_new_tokens": 8, "temperature": 1.0, "top_p": 0.7}
    assert engine.calls == [{"prompts": 3, **flags, "seed": seeds}, {"prompts": 2, **flags, "seed": seeds[:2]}, "close"]
    # every sample is recorded, in order, with the verifier's verdict
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    got = {}
    for s in samples:
        got.setdefault(s["problem_id"], []).append(int(s["acc"]))
    assert got == {ids[p]: v for p, v in script.items()}
    assert {s["source"] for s in samples} == {"eval:a", "eval:b"}
