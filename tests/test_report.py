"""report.py's numbers on a run folder built by hand: literal metrics.json / metrics.jsonl / filter_stats.json
files and three literal successful responses. The summary's cells, the vanilla-at-equal-RL-steps lookup and
the intra- / inter-step similarity are checked against values worked out by hand."""
import json
from pathlib import Path

import pytest

import report
from lib.lab import diversity
from lib.lab.report_run import comparison


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def evaluation(test: tuple[float, float], probe: tuple[float, float]) -> dict:
    """evaluate.py's metrics.json for two splits: (mean_acc, pass@4) each; the average is their mean."""
    b = {name: {"problems": 10, "mean_acc": acc, "pass@1": acc, "pass@2": (acc + pk) / 2, "pass@4": pk}
         for name, (acc, pk) in (("test", test), ("probe", probe))}
    mean = lambda key: round((b["test"][key] + b["probe"][key]) / 2, 6)  # noqa: E731
    return {"n": 4, "benchmarks": b, "average": {key: mean(key) for key in ("mean_acc", "pass@1", "pass@2", "pass@4")}}


# Three successful responses to problem p1 of iteration 1, as word/symbol tokens:
#   R1 = 2 + 3 = 5 so 5     trigrams {2+3, +3=, 3=5, =5so, 5so5}
#   R2 = 2 + 3 = 5 hence 5  trigrams {2+3, +3=, 3=5, =5hence, 5hence5}
#   R3 = 3 + 2 = 5 so 5     trigrams {3+2, +2=, 2=5, =5so, 5so5}
# R1, R2 at step 1 (intra): |{2+3, +3=, 3=5}| / 7 = 3/7.   R1, R3 (inter): |{=5so, 5so5}| / 8 = 1/4.
# R2, R3 (inter): 0 / 10. So intra = 3/7 = 0.4286, inter = (1/4 + 0) / 2 = 0.125.
R1, R2, R3 = "2+3=5 so 5", "2+3=5 hence 5", "3+2=5 so 5"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    # iteration 1: 2 RL steps; iteration 2: 3 (RLoop's RL steps so far: 2, then 5)
    write_rows(run / "iter1" / "explore" / "metrics.jsonl", [
        {"step": 1, "reward": -0.5, "grad_norm": 1.0, "grad_norm_max": 1.5, "entropy": 1.2, "resp_len_mean": 20,
         "groups_kept": 0.5, "capped": 0},
        {"step": 2, "reward": 0.0, "grad_norm": 2.0, "grad_norm_max": 2.5, "entropy": 1.1, "resp_len_mean": 18,
         "groups_kept": 0.75, "capped": 1}])
    write_rows(run / "iter1" / "explore" / "rollouts.jsonl", [
        {"problem_id": "p1", "step": 1, "acc": True, "response": R1},
        {"problem_id": "p1", "step": 1, "acc": True, "response": R2},
        {"problem_id": "p1", "step": 2, "acc": True, "response": R3},
        {"problem_id": "p1", "step": 2, "acc": False, "response": "2+3=5 so 5"},  # failures are not counted
        {"problem_id": "p2", "step": 1, "acc": True, "response": "7"}])  # alone: no pair
    write(run / "iter1" / "filter" / "filter_stats.json", {"buckets": {"hard": 3}, "kept_trajectories": 5})
    write_rows(run / "iter2" / "explore" / "metrics.jsonl", [
        {"step": s, "reward": 0.1 * s, "grad_norm": 0.5, "grad_norm_max": g, "entropy": 1.0, "resp_len_mean": 15,
         "groups_kept": 1.0} for s, g in ((1, 0.5), (2, 3.25), (3, 1.0))])
    write(run / "iter2" / "filter" / "filter_stats.json", {"buckets": {"hard": 2}, "kept_trajectories": 4})
    # vanilla: 5 steps; its largest norm is in its last row
    write_rows(run / "vanilla" / "metrics.jsonl",
               [{"step": s, "reward": 0.0, "grad_norm": 1.0, "grad_norm_max": 1.0, "capped": 0} for s in (1, 2, 3, 4)]
               + [{"step": 5, "reward": 0.0, "grad_norm": 1.5, "grad_norm_max": 4.75}])
    ev = run / "eval"
    write(ev / "base" / "metrics.json", evaluation((0.1, 0.3), (0.5, 0.7)))
    write(ev / "iter1-rl" / "metrics.json", evaluation((0.2, 0.4), (0.46, 0.6)))
    write(ev / "iter1-rft" / "metrics.json", evaluation((0.25, 0.45), (0.55, 0.75)))
    write(ev / "iter2-rl" / "metrics.json", evaluation((0.3, 0.5), (0.4, 0.6)))
    write(ev / "iter2-rft" / "metrics.json", evaluation((0.36, 0.56), (0.5, 0.7)))
    write(ev / "vanilla-2" / "metrics.json", evaluation((0.16, 0.36), (0.36, 0.5)))
    write(ev / "vanilla-4" / "metrics.json", evaluation((0.9, 0.9), (0.9, 0.9)))  # no RLoop row has 4 steps
    write(ev / "vanilla-5" / "metrics.json", evaluation((0.28, 0.48), (0.3, 0.44)))
    report.main([str(run)])
    return run


def test_diversity_of_three_literal_responses(run):
    d = diversity.similarity(run / "iter1" / "explore" / "rollouts.jsonl")
    assert d == {"intra_step": round(3 / 7, 4), "intra_step_pairs": 1, "inter_step": 0.125, "inter_step_pairs": 2,
                 "sampled": 4}
    assert diversity.similarity(run / "iter2" / "explore" / "rollouts.jsonl") is None  # no rollouts file
    assert diversity.jaccard(diversity.ngrams(R1), diversity.ngrams(R3)) == 0.25


def test_vanilla_is_looked_up_at_equal_rl_steps(run):
    comp = comparison(report.load_run(run))
    assert [(c["iter"], c["rl_steps"]) for c in comp] == [(1, 2), (2, 5)]
    avg = [(c["rl"]["average"]["mean_acc"], c["rft"]["average"]["mean_acc"], c["vanilla"]["average"]["mean_acc"])
           for c in comp]
    assert avg == [(0.33, 0.4, 0.26), (0.35, 0.43, 0.29)]  # vanilla-2 and vanilla-5; never vanilla-4
    rep = json.loads((run / "report" / "report.json").read_text())
    assert [c["vanilla"]["mean_acc"] for c in rep["comparison"]] == [0.26, 0.29]
    assert rep["diversity"]["1"]["inter_step"] == 0.125 and rep["filter"]["2"] == {"buckets": {"hard": 2},
                                                                                "kept_trajectories": 4}


def test_summary_cells(run):
    lines = (run / "report" / "summary.md").read_text().splitlines()
    i = lines.index("## RLoop vs vanilla RL at equal RL steps (5)")
    assert lines[i + 2:i + 8] == [
        "| policy | test acc | test pass@4 | probe acc | probe pass@4 | avg acc | avg pass@4 | max grad norm |",
        "|---|---|---|---|---|---|---|---|",
        "| base | 0.100 | 0.300 | 0.500 | 0.700 | 0.300 | 0.500 | – |",
        # the largest single update's norm over both iterations (iteration 2, step 2), not a step's mean
        "| RLoop, last RL policy | 0.300 | 0.500 | 0.400 | 0.600 | 0.350 | 0.550 | 3.25 |",
        "| RLoop, last consolidated | 0.360 | 0.560 | 0.500 | 0.700 | 0.430 | 0.630 | 3.25 |",
        "| vanilla RL | 0.280 | 0.480 | 0.300 | 0.440 | 0.290 | 0.460 | 4.75 |"]
    text = "\n".join(lines)
    # 0.35 - 0.29, 0.55 - 0.46; 0.43 - 0.29, 0.63 - 0.46
    assert ("**What this run shows.** After 5 RL steps, RLoop's final RL policy has average accuracy higher than "
            "vanilla RL (+0.060) and pass@4 higher than vanilla RL (+0.090); RLoop's final consolidated policy has "
            "average accuracy higher than vanilla RL (+0.140) and pass@4 higher than vanilla RL (+0.170).") in text
    assert "Probe accuracy (forgetting): base 0.500 -> RLoop RL 0.400, RLoop consolidated 0.500, vanilla 0.300." \
        in text
    assert "Largest pre-clip gradient norm: RLoop 3.25, vanilla 4.75." in text
    # iteration 1 records the generation-batch cap (hit at step 2), iteration 2's rows do not; vanilla: 4 rows
    assert "capped steps: 1 of 2 (RLoop), 0 of 4 (vanilla)" in text
    j = lines.index("## By iteration")
    assert lines[j + 4:j + 6] == ["| 1 | 2 | 0.330 | 0.400 | 0.260 | 3 | 5 | 0.429 | 0.125 |",
                                  "| 2 | 5 | 0.350 | 0.430 | 0.290 | 2 | 4 | – | – |"]
    for png in ("rl_curves.png", "eval.png", "forgetting.png"):
        assert (run / "report" / png).stat().st_size > 1000


def test_equal_steps_by_hand_when_vanilla_lags(tmp_path):
    """No vanilla evaluation at RLoop's step count: the vanilla row is absent, not taken from another step."""
    run = tmp_path / "run"
    write_rows(run / "iter1" / "explore" / "metrics.jsonl", [{"step": 1, "reward": 0.0, "grad_norm": 1.0},
                                                             {"step": 2, "reward": 0.0, "grad_norm": 1.0}])
    write(run / "eval" / "iter1-rl" / "metrics.json", evaluation((0.2, 0.4), (0.4, 0.6)))
    write(run / "eval" / "vanilla-1" / "metrics.json", evaluation((0.9, 0.9), (0.9, 0.9)))
    report.main([str(run)])
    text = (run / "report" / "summary.md").read_text()
    assert "| vanilla RL |" not in text and "0.900" not in text
    assert "| 1 | 2 | 0.300 | – | – | – | – | – | – |" in text


def brute_force(path: Path) -> dict:
    """Every pair of successes of the same problem, scored: the mean over all intra- and all inter-step pairs."""
    by_problem = {}
    for line in path.read_text().splitlines():
        t = json.loads(line)
        if t["acc"]:
            by_problem.setdefault(t["problem_id"], []).append((t["step"], diversity.ngrams(t["response"])))
    sims = {True: [], False: []}
    for items in by_problem.values():
        for i, (s1, g1) in enumerate(items):
            for s2, g2 in items[i + 1:]:
                sims[s1 == s2].append(diversity.jaccard(g1, g2))
    return {"intra_step": round(sum(sims[True]) / len(sims[True]), 4),
            "inter_step": round(sum(sims[False]) / len(sims[False]), 4)}


def random_rollouts(path: Path, problems: int, per_step: int, steps: int, seed: int = 0) -> None:
    """Successes and failures of `problems` problems over `steps` steps, responses drawn from a few phrasings."""
    import random

    rng = random.Random(seed)
    words = ["add", "the", "two", "then", "so", "carry", "1", "2", "3", "=", "+", "hence", "answer"]
    rows = [{"problem_id": f"p{p}", "step": s, "acc": rng.random() < 0.6, "prompt": "q",
             "response": " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))}
            for s in range(1, steps + 1) for p in range(problems) for _ in range(rng.randint(0, per_step))]
    write_rows(path, rows)


def test_sampled_similarity_equals_the_brute_force_when_the_sample_holds_everything(tmp_path):
    f = tmp_path / "rollouts.jsonl"
    random_rollouts(f, problems=6, per_step=3, steps=4)
    d = diversity.similarity(f, problems=100, per_problem=100)
    assert {k: d[k] for k in ("intra_step", "inter_step")} == brute_force(f)
    assert d["sampled"] == sum(1 for x in f.read_text().splitlines() if json.loads(x)["acc"])


def test_sampled_similarity_is_bounded_whatever_the_input(tmp_path):
    """3 problems x 4 successes are held and 3 x 6 pairs scored, from 300 successes or from 3,000; the sample is
    seeded (the same numbers twice) and does not depend on the file's order."""
    held = []
    for problems in (10, 100):
        f = tmp_path / f"r{problems}.jsonl"
        random_rollouts(f, problems=problems, per_step=4, steps=10)
        d = diversity.similarity(f, problems=3, per_problem=4)
        held.append((d["sampled"], d["intra_step_pairs"] + d["inter_step_pairs"]))
        assert d == diversity.similarity(f, problems=3, per_problem=4)
        shuffled = tmp_path / "shuffled.jsonl"
        lines = f.read_text().splitlines()
        shuffled.write_text("\n".join(reversed(lines)) + "\n")
        r = diversity.similarity(shuffled, problems=3, per_problem=4)
        assert r["intra_step"] == pytest.approx(d["intra_step"], abs=1e-4) and r["sampled"] == d["sampled"]
    assert held == [(12, 18), (12, 18)]
