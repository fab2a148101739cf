"""harvest.py on a small fake explore.py output (rollouts.jsonl, two checkpoints of an untrained toy model,
args.json): the default pool with --select-steps ranges and lists, --n-samples from the checkpoints (and its
resume), and bad input refused with one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import harvest
from lib.run.cli import EXIT_USER_ERROR, UserError
from lib.run.records import Trajectory, read_trajectories, write_jsonl
from lib.train import checkpoint
from lib.worlds import toy

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PIDS = ["t0", "t1", "t2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest) tiny models, shared 2-core box


def acc_of(step: int, pid: str, k: int) -> bool:
    return (step + int(pid[1]) + k) % 3 == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """EXPLORE_OUT as explore.py leaves it: 4 steps x 3 problems x 2 samples, checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("explore")
    problems = [{"prompt": [{"role": "user", "content": f"Compute {i}+1."}], "data_source": "toy-chain",
                 "reward_model": {"ground_truth": str(i + 1)}, "extra_info": {"index": pid}}
                for i, pid in enumerate(PIDS)]
    (root / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    rollouts = [Trajectory(pid, f"<prompt {pid}>", f"s{step}-{pid}-{k}", 1.0 if acc_of(step, pid, k) else -1.0,
                           acc_of(step, pid, k), step=step, source="rollout")
                for step in (1, 2, 3, 4) for pid in PIDS for k in (0, 1)]
    write_jsonl(root / "rollouts.jsonl", rollouts)
    tok = toy.make_tokenizer()
    model = toy.make_model(tok, seed=0)
    checkpoint.save(root, 2, model, tok, {})
    checkpoint.drop_resume_state(checkpoint.save(root, 4, toy.make_model(tok, seed=1), tok, {}))
    (root / "args.json").write_text(json.dumps({"data": str(root / "train.jsonl"), "max_new_tokens": 6,
                                                "temperature": 1.0, "top_p": 1.0, "seed": 0}))
    return root


def test_parse_steps():
    inf = float("inf")
    assert harvest.parse_steps("") == [(0, inf)]
    assert harvest.parse_steps("1-200") == [(1, 200)]
    assert harvest.parse_steps("50,100, 150") == [(50, 50), (100, 100), (150, 150)]
    assert harvest.parse_steps("1-50,100,150-") == [(1, 50), (100, 100), (150, inf)]
    for bad in ("a", "5-1", "1-2-3", "-5", "1,,2"):
        with pytest.raises(UserError, match="--select-steps"):
            harvest.parse_steps(bad)


def test_step_chunks():
    assert harvest.step_chunks(list(range(1, 201)))[1] == list(range(21, 41))
    assert len(harvest.step_chunks(list(range(1, 201)))) == 10
    assert harvest.step_chunks([5, 9]) == [[5], [9]]


def test_default_pools_every_rollout(run, tmp_path, capsys):
    out = tmp_path / "h"
    harvest.main(["--run-dir", str(run), "--out", str(out)])
    got = read_trajectories(out / "harvest.jsonl")
    assert [t.response for t in got] == [t.response for t in read_trajectories(run / "rollouts.jsonl")]
    lines = capsys.readouterr().out.splitlines()
    # step 1: t1's 2nd and t2's 1st sample are correct (acc_of)
    assert lines[0] == "step 1: 6 trajectories, acc 0.333, 3 problems (2 solved at least once)"
    assert lines[4].startswith("total (4 steps): 24 trajectories")


def test_out_folder_has_the_harvest_its_args_and_done(run, tmp_path):
    """--out a folder (the canonical names): OUT/harvest.jsonl, OUT/args.json with provenance, OUT/done.json last;
    filter.py takes the folder as it is."""
    out = tmp_path / "harvest"
    harvest.main(["--run-dir", str(run), "--out", str(out), "--select-steps", "2-3"])
    assert {t.step for t in read_trajectories(out / "harvest.jsonl")} == {2, 3}
    args = json.loads((out / "args.json").read_text())
    assert args["select_steps"] == "2-3" and args["run_dir"] == str(run)
    assert {"commit", "argv", "versions"} <= set(args["_run"]) and "torch" in args["_run"]["versions"]
    done = json.loads((out / "done.json").read_text())
    assert (done["stage"], done["trajectories"]) == ("harvest", 12)
    import filter as filter_stage

    filter_stage.main(["--trajectories", str(out), "--out", str(tmp_path / "f"), "--threshold", "1.0"])
    assert json.loads((tmp_path / "f" / "filter_stats.json").read_text())["trajectories_in"] == 12


@pytest.mark.parametrize("spec,steps", [("2-3", {2, 3}), ("1,4", {1, 4}), ("3-", {3, 4}), ("1-2,4", {1, 2, 4})])
def test_steps_ranges_and_lists(run, tmp_path, spec, steps):
    out = tmp_path / "h"
    harvest.main(["--run-dir", str(run), "--out", str(out), "--select-steps", spec])
    got = read_trajectories(out / "harvest.jsonl")
    assert {t.step for t in got} == steps and len(got) == 6 * len(steps)


def test_no_step_matches(run, tmp_path):
    with pytest.raises(UserError, match="logged steps 1-4"):
        harvest.main(["--run-dir", str(run), "--out", str(tmp_path / "h"), "--select-steps", "7-9"])
    assert not list(tmp_path.glob("h/*"))  # no harvest.jsonl, no done.json


def test_resample_from_checkpoints(run, tmp_path, capsys):
    out = tmp_path / "h"
    harvest.main(["--run-dir", str(run), "--out", str(out), "--n-samples", "2", "--device", "cpu"])
    got = read_trajectories(out / "harvest.jsonl")
    assert len(got) == 2 * 3 * 2  # checkpoints x problems x K
    assert [(t.step, t.source) for t in got[::6]] == [(2, "ckpt_000002"), (4, "ckpt_000004")]
    assert [t.problem_id for t in got[:6]] == ["t0", "t0", "t1", "t1", "t2", "t2"]
    assert all(t.prompt.startswith("<|im_start|>user\nCompute") for t in got)  # the chat template was applied
    assert all(0 < t.response_tokens <= 6 and t.prompt_tokens > 0 for t in got)  # args.json's max_new_tokens
    assert got[0].ground_truth == "1"
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "done.json", "harvest.jsonl"]  # (no parts left)
    printed = capsys.readouterr().out
    assert "ckpt_000002 (step 2): 6 trajectories" in printed and "ckpt_000004 (step 4): 6 trajectories" in printed

    # --select-steps picks the checkpoints; overrides beat args.json
    out2 = tmp_path / "h2"
    harvest.main(["--run-dir", str(run), "--out", str(out2), "--n-samples", "1", "--select-steps", "3-",
                  "--max-new-tokens", "2"])
    got2 = read_trajectories(out2 / "harvest.jsonl")
    assert {t.source for t in got2} == {"ckpt_000004"} and len(got2) == 3
    assert all(t.response_tokens <= 2 for t in got2)


def test_resample_prompt_cap(run, tmp_path, capsys):
    # the cap (here from the flag; by default explore's args.json) drops problems before any model loads
    with pytest.raises(UserError, match=r"every one of its 3 prompts is longer than --max-prompt-len 2 tokens"):
        harvest.main(["--run-dir", str(run), "--out", str(tmp_path / "h"), "--n-samples", "2", "--device", "cpu",
                      "--max-prompt-len", "2"])
    assert not (tmp_path / "h").exists()
    harvest.main(["--run-dir", str(run), "--out", str(tmp_path / "h"), "--n-samples", "1", "--device", "cpu",
                  "--max-prompt-len", "1000", "--select-steps", "4"])
    assert "dropped 0 of 3 prompts longer than 1000 tokens (--max-prompt-len)" in capsys.readouterr().out


def test_default_harvest_is_a_hard_link_to_the_rollouts(run, tmp_path, capsys):
    out = tmp_path / "h" / "harvest.jsonl"
    harvest.main(["--run-dir", str(run), "--out", str(out.parent)])
    assert out.stat().st_ino == (run / "rollouts.jsonl").stat().st_ino  # every step: no copy
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out} (a hard link to the run's rollouts.jsonl: " \
                                                      "every step, as logged; no copy)"
    # a rerun with a range: a file of its own
    harvest.main(["--run-dir", str(run), "--out", str(out.parent), "--select-steps", "1-4"])
    assert out.stat().st_ino != (run / "rollouts.jsonl").stat().st_ino
    assert out.read_bytes() == (run / "rollouts.jsonl").read_bytes()  # (its records needed no change)
    bare = tmp_path / "bare"  # records without a source are written out, with source "rollout"
    bare.mkdir()
    rows = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    (bare / "rollouts.jsonl").write_text("".join(json.dumps({**r, "source": ""}) + "\n" for r in rows))
    harvest.main(["--run-dir", str(bare), "--out", str(out.parent)])
    assert out.stat().st_ino != (bare / "rollouts.jsonl").stat().st_ino
    assert {t.source for t in read_trajectories(out)} == {"rollout"}


def test_resample_resumes_after_a_kill(run, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    harvest.main(["--run-dir", str(run), "--out", str(straight), "--n-samples", "2"])

    real = harvest.load_for_sampling

    def dies_at_step_4(ckpt, *a, **kw):
        if ckpt.name == "ckpt_000004":
            raise KeyboardInterrupt
        return real(ckpt, *a, **kw)

    out = tmp_path / "h"
    monkeypatch.setattr(harvest, "load_for_sampling", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        harvest.main(["--run-dir", str(run), "--out", str(out), "--n-samples", "2"])
    assert not (out / "harvest.jsonl").exists()
    assert (out / ".harvest.jsonl.parts" / "ckpt_000002.0000000.json").is_file()

    calls = []

    def counts_calls(ckpt, *a, **kw):
        calls.append(ckpt.name)
        return real(ckpt, *a, **kw)

    monkeypatch.setattr(harvest, "load_for_sampling", counts_calls)
    harvest.main(["--run-dir", str(run), "--out", str(out), "--n-samples", "2"])
    assert calls == ["ckpt_000004"]  # step 2's samples were reused
    assert [t.to_json() for t in read_trajectories(out / "harvest.jsonl")] == \
        [t.to_json() for t in read_trajectories(straight / "harvest.jsonl")]


def run_harvest(*argv):
    return subprocess.run([sys.executable, str(ROOT / "harvest.py"), *map(str, argv)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)


GOOD = {"problem_id": "a", "prompt": "p", "response": "r", "reward": 1.0, "acc": True, "step": 1}


@pytest.mark.parametrize("lines,expect", [
    ([json.dumps(GOOD), "{oops"], "rollouts.jsonl:2: not valid JSON"),
    ([json.dumps(GOOD), json.dumps(GOOD), json.dumps({k: v for k, v in GOOD.items() if k != "step"})],
     "rollouts.jsonl:3: missing field 'step'"),
], ids=["not_json", "missing_step"])
def test_bad_rollouts_one_line_no_output(tmp_path, lines, expect):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "rollouts.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "h"
    r = run_harvest("--run-dir", tmp_path / "run", "--out", out)
    assert r.returncode == EXIT_USER_ERROR
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
