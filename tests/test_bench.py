"""bench.py runs end to end on a tiny model (without TRL: the peer rows are skipped) and writes what it prints.
Timings are not asserted (tests never time things); the table, the profile and bench.json are."""
import json

import pytest
import torch

import bench

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest) tiny models, shared 2-core box


def test_bench_runs_every_section_and_writes_its_table(tiny_model_dir, toy_data_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--quick", "--no-trl", "--threads", "1", "--model", str(tiny_model_dir), "--device", "cpu",
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
