"""filter.py: the hard-problem rule, dedup, the spread-out cap and the stats, on literal fixtures; the CLI's
exit codes and its refusal of bad input (as a subprocess, the way loop.sh runs it)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import filter as filter_stage
from filter import is_success, spread_cap
from lib.run import scan
from lib.run.cli import EXIT_NOTHING_KEPT, EXIT_USER_ERROR
from lib.run.records import Trajectory, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def T(pid: str, acc: bool, response: str = "", step: int | None = 1) -> Trajectory:
    return Trajectory(problem_id=pid, prompt=f"Q{pid}", response=response or f"r-{pid}-{acc}", reward=1.0 if acc
                      else -1.0, acc=acc, step=step, source="rollout")


def problem(pid: str, correct: int, total: int, step: int = 1) -> list[Trajectory]:
    """`correct` successes with distinct responses, then `total - correct` failures."""
    return ([T(pid, True, f"{pid}-ok-{i}", step) for i in range(correct)]
            + [T(pid, False, f"{pid}-bad-{i}", step) for i in range(total - correct)])


def select(trajs: list[Trajectory], threshold: float, max_per_problem: int = 0) -> tuple[list[Trajectory], dict]:
    """filter.select on trajectories in memory (each one's list index stands for its line's offset): the kept
    trajectories and the stats."""
    found = scan.Scan()
    for i, t in enumerate(trajs):
        found.add(t, is_success(t), offset=i)
    kept, stats = filter_stage.select(found.counts, found.successes(), threshold, max_per_problem)
    return [trajs[x.offset] for x in kept], stats


def pids(trajs):
    return sorted({t.problem_id for t in trajs})


def test_exactly_at_threshold_is_not_hard():
    trajs = problem("ten", 1, 10) + problem("eleven", 1, 11) + problem("thirty", 3, 30)
    kept, stats = select(trajs, threshold=0.1)
    assert pids(kept) == ["eleven"]  # 1/10 == 0.1 and 3/30 == 0.1: not < 0.1; 1/11 is
    assert stats["buckets"] == {"never_solved": 0, "hard": 1, "medium": 2, "always_solved": 0}


def test_never_solved_is_not_hard():
    kept, stats = select(problem("zero", 0, 20) + problem("one", 1, 20), threshold=0.1)
    assert pids(kept) == ["one"]
    assert stats["buckets"]["never_solved"] == 1


def test_only_correct_trajectories_are_kept():
    kept, _ = select(problem("a", 2, 30), threshold=0.1)
    assert [t.response for t in kept] == ["a-ok-0", "a-ok-1"]
    assert all(t.acc for t in kept)


def test_duplicates_removed_before_the_cap():
    trajs = [T("a", True, "same", step=1), T("a", True, "same", step=1), T("a", True, "other", step=1)]
    trajs += problem("a", 0, 37)  # 3 / 40 = 0.075: hard
    kept, stats = select(trajs, threshold=0.1, max_per_problem=2)
    # cap first would keep "same" twice; dedup first keeps both distinct answers
    assert [t.response for t in kept] == ["same", "other"]
    assert (stats["candidates"], stats["deduplicated"], stats["capped"], stats["kept_trajectories"]) == (3, 1, 0, 2)


def test_duplicates_are_per_problem():
    trajs = [T("a", True, "42"), *problem("a", 0, 19), T("b", True, "42"), *problem("b", 0, 19)]
    kept, stats = select(trajs, threshold=0.1)
    assert [(t.problem_id, t.response) for t in kept] == [("a", "42"), ("b", "42")]
    assert stats["deduplicated"] == 0


def test_cap_round_robin_over_steps_and_deterministic():
    steps = [3, 1, 1, 1, 2, 2, 3, 5]  # harvest order is not step order
    correct = [T("a", True, f"s{s}-{i}", step=s) for i, s in enumerate(steps)]
    trajs = correct + problem("a", 0, 92)  # 8 / 100: hard
    kept, stats = select(trajs, threshold=0.1, max_per_problem=5)
    # one per step in ascending step order (each step's own in harvest order), then a second round
    assert [t.response for t in kept] == ["s1-1", "s2-4", "s3-0", "s5-7", "s1-2"]
    assert stats["capped"] == 3
    assert stats["kept_per_step"] == {"1": 2, "2": 1, "3": 1, "5": 1}
    again, _ = select(list(trajs), threshold=0.1, max_per_problem=5)
    assert [t.response for t in again] == [t.response for t in kept]


def test_spread_cap_edge_cases():
    a = [T("a", True, f"x{i}", step=None if i == 0 else 7) for i in range(3)]
    assert [t.response for t in spread_cap(a, 2)] == ["x0", "x1"]  # no step sorts first
    assert spread_cap(a, 0) == a and spread_cap(a, 10) == a  # 0 = no cap


def test_threshold_one_is_the_no_active_learning_ablation():
    trajs = problem("never", 0, 4) + problem("hard", 1, 20) + problem("medium", 2, 4) + problem("always", 4, 4)
    kept, stats = select(trajs, threshold=1.0)
    assert pids(kept) == ["always", "hard", "medium"]  # every problem with a success
    assert stats["problems_selected"] == 3 and stats["kept_trajectories"] == 1 + 2 + 4
    kept, _ = select(trajs, threshold=0.999)
    assert pids(kept) == ["hard", "medium"]  # below 1, always-solved problems are never hard
    kept, _ = select(trajs, threshold=5.0)
    assert pids(kept) == ["always", "hard", "medium"]


def test_stats_counts():
    trajs = (problem("never", 0, 10) + problem("medium", 5, 10) + problem("always", 10, 10)
             + [T("hard", True, "h1", step=50), T("hard", True, "h1", step=100), T("hard", True, "h2", step=100),
                T("hard", True, "h3", step=150)] + problem("hard", 0, 46))
    kept, stats = select(trajs, threshold=0.1, max_per_problem=2)
    assert stats == {
        "threshold": 0.1, "max_per_problem": 2, "problems_seen": 4,
        "buckets": {"never_solved": 1, "hard": 1, "medium": 1, "always_solved": 1},
        "problems_selected": 1, "trajectories_in": 80, "trajectories_per_problem": {"min": 10, "max": 50},
        "candidates": 4, "deduplicated": 1, "capped": 1,
        "kept_trajectories": 2, "kept_per_problem": {"min": 2, "max": 2, "mean": 2.0},
        "kept_per_step": {"50": 1, "100": 1},
    }
    assert [t.response for t in kept] == ["h1", "h2"]  # h1@50, then step 100's first unique: h2


def test_a_fork_of_the_two_rules_carries_through(tmp_path, monkeypatch, capsys):
    """is_success is asked once per trajectory and is_selected once per problem; every count, bucket and kept record
    follows from their answers (here: success = reward >= 0.5, selected = a band 0.2 <= rate <= 0.5)."""
    asked = Counter()

    def is_success(t, metric, threshold):  # (the flags' values reach the fork: acc and 1.0 here)
        asked["is_success"] += 1
        return t.reward >= 0.5

    def is_selected(successes, total, threshold):
        asked["is_selected"] += 1
        return 0.2 <= successes / total <= 0.5

    trajs = [T("a", False, "a-half", step=2), T("a", True, "a-ok", step=1)] + problem("a", 0, 8)
    trajs[0].reward = 0.5  # a success to the fork, not to the verifier
    trajs += problem("b", 5, 10) + problem("c", 1, 10) + problem("d", 0, 3)
    write_jsonl(tmp_path / "harvest.jsonl", trajs)
    monkeypatch.setattr(filter_stage, "is_success", is_success)
    monkeypatch.setattr(filter_stage, "is_selected", is_selected)
    filter_stage.main(["--trajectories", str(tmp_path), "--out", str(tmp_path / "f")])
    assert asked == {"is_success": len(trajs), "is_selected": 4}
    rows = [json.loads(line) for line in (tmp_path / "f" / "rft.jsonl").read_text().splitlines()]
    assert [(d["problem_id"], d["response"]) for d in rows] == [("a", "a-half"), ("a", "a-ok")] + [
        ("b", f"b-ok-{i}") for i in range(5)]
    stats = json.loads((tmp_path / "f" / "filter_stats.json").read_text())
    assert stats["buckets"] == {"never_solved": 1, "hard": 2, "medium": 1, "always_solved": 0}
    assert stats["candidates"] == stats["kept_trajectories"] == 7
    assert "note: 1 problems succeeded once and are not selected" in capsys.readouterr().out  # c: 1 in 10


def scored(pid: str, rewards: list[float]) -> list[Trajectory]:
    """A problem's trajectories under a partial-credit verifier: reward in [0, 1], acc only at full credit."""
    return [Trajectory(problem_id=pid, prompt=f"Q{pid}", response=f"{pid}-{r}-{i}", reward=r, acc=r == 1.0, step=1,
                       source="rollout") for i, r in enumerate(rewards)]


def test_default_success_is_the_verifiers_verdict():
    """--success-metric acc --success-threshold 1 (the defaults): acc alone decides, whatever the reward says
    (an accepted answer under the overlong penalty, a rejected one with a high score)."""
    trajs = [T("a", True), T("a", False)] + scored("b", [1.0, 0.9, 0.0])
    trajs[0].reward = -0.4
    trajs[1].reward = 1.0
    assert [is_success(t) for t in trajs] == [t.acc for t in trajs] == [True, False, True, False, False]
    assert [is_success(t, "acc", 0.5) for t in trajs] == [t.acc for t in trajs]  # any threshold in (0, 1]


# ---------------------------------------------------------------------------------------------------------
# the CLI

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_filter(*argv):
    return subprocess.run([sys.executable, str(ROOT / "filter.py"), *map(str, argv)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_rft_and_stats_then_nothing_kept_exits_3(tmp_path):
    harvest = tmp_path / "harvest.jsonl"
    write_jsonl(harvest, problem("a", 1, 20) + problem("b", 0, 5))
    out = tmp_path / "f"
    r = run_filter("--trajectories", harvest, "--out", out, "--threshold", "0.1")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "rft.jsonl").read_text().splitlines()]
    assert [(d["problem_id"], d["response"], d["step"]) for d in rows] == [("a", "a-ok-0", 1)]
    assert json.loads((out / "filter_stats.json").read_text())["kept_trajectories"] == 1
    assert json.loads((out / "done.json").read_text())["stage"] == "filter"

    # same folder, a threshold nothing passes: exit 3, stats say why, the stale rft.jsonl is gone
    r = run_filter("--trajectories", harvest, "--out", out, "--threshold", "0.05")
    assert r.returncode == EXIT_NOTHING_KEPT
    assert "nothing kept" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "rft.jsonl").exists() and not (out / "done.json").exists()
    stats = json.loads((out / "filter_stats.json").read_text())
    assert stats["kept_trajectories"] == 0 and stats["buckets"]["medium"] == 1 and stats["threshold"] == 0.05


def test_cli_streams_by_reference_and_writes_what_select_keeps(tmp_path):
    """filter.py holds successes as references to their lines (a harvest can outgrow memory): its rft.jsonl is
    byte for byte what the in-memory `select` keeps, through duplicates, the cap, steps, non-ASCII text, a
    byte-order mark on line 1 and a line written without spaces."""
    trajs = ([T("h", True, "déjà 1", step=s) for s in (3, 1, 2, 2)] + [T("h", True, "déjà 1", step=4)]
             + problem("h", 0, 40) + problem("m", 3, 6) + [T("z", True, "only", step=None)] + problem("z", 0, 30))
    trajs[0].response_ids = [1, 2, 3]
    lines = [t.to_json() for t in trajs]
    lines[5] = json.dumps(trajs[5].to_dict(), ensure_ascii=False, separators=(",", ":"))
    harvest = tmp_path / "harvest.jsonl"
    harvest.write_bytes(b"\xef\xbb\xbf" + "".join(x + "\n" for x in lines).encode())
    for threshold, cap in ((0.2, 0), (0.2, 2), (1.0, 0)):
        out = tmp_path / f"f{threshold}-{cap}"
        r = run_filter("--trajectories", harvest, "--out", out, "--threshold", threshold, "--max-per-problem", cap)
        assert r.returncode == 0, r.stderr
        kept, stats = select(trajs, threshold, cap)
        write_jsonl(tmp_path / "want.jsonl", kept)
        assert (out / "rft.jsonl").read_bytes() == (tmp_path / "want.jsonl").read_bytes(), (threshold, cap)
        assert json.loads((out / "filter_stats.json").read_text()) == {
            **stats, "success_metric": "acc", "success_threshold": 1.0, "input": str(harvest)}


GOOD = json.dumps({"problem_id": "a", "prompt": "p", "response": "r", "reward": 1.0, "acc": True})
BAD_INPUTS = {
    "not_json": (GOOD + "\n{not json\n", ":2:", "not valid JSON"),
    "missing_acc": (GOOD + "\n" + GOOD + "\n" + json.dumps({"problem_id": "a", "prompt": "p", "response": "r",
                                                           "reward": 1.0}) + "\n", ":3:", "'acc'"),
    "empty": ("", "empty", "empty"),
    "bool_id": (json.dumps({**json.loads(GOOD), "response_ids": [5, True]}) + "\n", ":1:", "'response_ids'"),
    "negative_id": (GOOD + "\n" + json.dumps({**json.loads(GOOD), "response_ids": [5, -1]}) + "\n", ":2:",
                    "'response_ids'"),
}


def test_trajectory_to_dict_copies_the_token_ids():
    t = T("a", True, "r")
    t.response_ids = [1, 2]
    d = t.to_dict()
    d["response_ids"].append(3)
    assert t.response_ids == [1, 2] and "step" in d and "response_ids" not in T("a", False).to_dict()


def test_cli_bad_input_one_line_no_output(tmp_path):
    for name, (text, where, what) in BAD_INPUTS.items():
        harvest = tmp_path / f"{name}.jsonl"
        harvest.write_text(text)
        out = tmp_path / f"out-{name}"
        r = run_filter("--trajectories", harvest, "--out", out)
        assert r.returncode == EXIT_USER_ERROR, (name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, (name, r.stderr)
        assert f"{harvest.name}" in lines[0] and where in lines[0] and what in lines[0], (name, lines[0])
        assert not out.exists()  # nothing partial


def test_cli_bad_flag(tmp_path):
    r = run_filter("--trajectories", tmp_path / "x.jsonl", "--out", tmp_path / "o", "--threshold", "0")
    assert r.returncode == EXIT_USER_ERROR and "--threshold" in r.stderr


def test_cli_success_on_reward_keeps_the_trajectories_at_or_above_the_threshold(tmp_path):
    """Scores in [0, 1]: --success-metric reward --success-threshold 0.5 makes every trajectory with reward >= 0.5
    a success, accepted by the verifier or not; the problems' success rates, buckets and the kept set follow."""
    harvest = tmp_path / "harvest.jsonl"
    write_jsonl(harvest, scored("a", [0.5, 0.2, 0.7, 0.0, 1.0]) + scored("b", [0.3, 0.49, 0.0])
                + scored("c", [0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]) + scored("d", [0.9, 0.8]))
    out = tmp_path / "f"
    r = run_filter("--trajectories", harvest, "--out", out, "--threshold", "0.5", "--success-metric", "reward",
                   "--success-threshold", "0.5")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "rft.jsonl").read_text().splitlines()]
    # a: 3 of 5 (0.6, medium at --threshold 0.5); b: none; c: 1 of 10 (hard); d: 2 of 2 (always solved)
    assert [d["response"] for d in rows] == ["c-0.6-0"]
    stats = json.loads((out / "filter_stats.json").read_text())
    assert stats["buckets"] == {"never_solved": 1, "hard": 1, "medium": 1, "always_solved": 1}
    assert (stats["success_metric"], stats["success_threshold"]) == ("reward", 0.5)

    r = run_filter("--trajectories", harvest, "--out", out, "--threshold", "1", "--success-metric", "reward",
                   "--success-threshold", "0.5")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "rft.jsonl").read_text().splitlines()]
    assert [d["response"] for d in rows] == ["a-0.5-0", "a-0.7-2", "a-1.0-4", "c-0.6-0", "d-0.9-0", "d-0.8-1"]

    r = run_filter("--trajectories", harvest, "--out", out, "--threshold", "1")  # the default: acc
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "rft.jsonl").read_text().splitlines()]
    assert [d["response"] for d in rows] == ["a-1.0-4"]


def test_cli_bad_success_flags_are_one_line(tmp_path):
    harvest = tmp_path / "harvest.jsonl"
    write_jsonl(harvest, problem("a", 1, 20))
    for flags, what in ((["--success-threshold", "nan"], "--success-threshold must be a finite number"),
                        (["--success-metric", "reward", "--success-threshold", "inf"], "must be a finite number"),
                        (["--success-threshold", "0"], "must be in (0, 1] with --success-metric acc"),
                        (["--success-threshold", "1.5"], "must be in (0, 1] with --success-metric acc")):
        out = tmp_path / "o"
        r = run_filter("--trajectories", harvest, "--out", out, *flags)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == EXIT_USER_ERROR and len(lines) == 1 and what in lines[0], (flags, r.stderr)
        assert not out.exists()
    r = run_filter("--trajectories", harvest, "--out", tmp_path / "o", "--success-metric", "score")
    last = r.stderr.strip().splitlines()[-1]  # (argparse: its usage line, then the error)
    assert r.returncode == EXIT_USER_ERROR and "--success-metric: invalid choice: 'score'" in last, r.stderr
    assert not (tmp_path / "o").exists()


def test_help_explains_the_success_flags():
    r = run_filter("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--success-metric {acc,reward}" in text and "--success-threshold" in text
    assert "acc: the verifier's verdict as 0 / 1; reward: the record's reward field" in text
