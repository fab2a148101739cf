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
                   "--n", "4", "--limit", "5", "--max-new-tokens", "8", "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and m["temperature"] == 1.0 and m["top_p"] == 0.7 and m["max_new_tokens"] == 8
    assert set(m["benchmarks"]) == {"test", "probe"}
    for b in m["benchmarks"].values():
        assert b["problems"] == 5 and list(b["pass@k"]) == ["1", "2", "4"]
        assert b["pass@k"]["1"] == pytest.approx(b["mean_acc"])
    assert set(m["average"]) >= {"mean_acc", "pass@k"}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 5 * 4
    assert {"problem_id", "prompt", "response", "reward", "acc"} <= set(samples[0]) and "step" not in samples[0]
    assert json.loads((out / "args.json").read_text())["n"] == 4


def test_metrics_from_samples_literal():
    from evaluate import summarize
    from lib.records import Trajectory

    t = [Trajectory("a", "", "", 1.0, True), Trajectory("a", "", "", -1.0, False),
         Trajectory("b", "", "", -1.0, False), Trajectory("b", "", "", -1.0, False)]
    s = summarize(t, 2)
    assert s == {"problems": 2, "mean_acc": 0.25, "pass@k": {"1": 0.25, "2": 0.5}}


@pytest.mark.parametrize("case, expect", [
    ("missing", "missing.jsonl: no such file"),
    ("notjson", "bench.jsonl:2: not valid JSON"),
    ("noanswer", "bench.jsonl:1: missing field 'answer'"),
    ("n0", "--n must be >= 1"),
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
        extra = ["--n", "0"]
    elif case == "nomodel":
        model = str(tmp_path / "nope")
    out = tmp_path / "out"
    r = run(["--model", model, "--benchmarks", bench, "--out", str(out), *extra])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and expect in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not (out / "metrics.json").exists()
