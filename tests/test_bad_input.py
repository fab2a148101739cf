"""Bad input, one table across the five stages, and non-finite training steps.

Every case runs a stage as a subprocess (offline) and must give: ONE stderr line `error: ...` naming the
file / line / field / flag at fault, a non-zero exit (2 for bad input, 3 when the filter keeps nothing), no
traceback, and nothing partial in the output location (no result file, no temp file). Cases that other test
files check in more depth are repeated here on purpose: this is the catalogue. ~25 s on 2 CPU cores.

Non-finite steps: explore.py skips an update whose loss or gradient is NaN/inf, counts it in metrics.jsonl
and goes on; --max-nonfinite consecutive ones stop the run with a clear message (exit 1). consolidate.py does
the same, and never writes a NaN model as finished.
"""
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib.run.records import Trajectory, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest) tiny models, shared 2-core box


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def traj(pid="a", acc=True, **kw) -> dict:
    return {"problem_id": pid, "prompt": "p", "response": f"r-{pid}-{acc}-{len(kw)}", "reward": 1.0 if acc else -1.0,
            "acc": acc, "step": 1, **kw}


@pytest.fixture(scope="module")
def w(tmp_path_factory, tiny_model_dir) -> Path:
    """The world every case draws from: data files (good and bad) and model folders (good and broken)."""
    w = tmp_path_factory.mktemp("bad")
    (w / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    problem = {"id": "p0", "problem": "Compute 1+1.", "answer": "2"}
    jsonl(w / "problems.jsonl", [problem])
    (w / "bad_utf8.jsonl").write_bytes(json.dumps(problem).encode() + b"\n" + b'{"problem": "caf\xe9"}\n')
    jsonl(w / "wrong_type.jsonl", [problem, {"id": "p1", "problem": 12, "answer": "2"}])
    jsonl(w / "noanswer.jsonl", [{"problem": "Compute 1+1."}])
    (w / "empty.jsonl").write_text("")
    jsonl(w / "missing_acc.jsonl", [traj(), traj(), {k: v for k, v in traj().items() if k != "acc"}])
    # every problem always solved: nothing is hard
    jsonl(w / "easy.jsonl", [traj("a"), traj("a"), traj("b"), traj("b")])
    jsonl(w / "reward_str.jsonl", [traj(reward="high")])
    jsonl(w / "list_line.jsonl", ["[1, 2]"])
    (w / "run_notjson").mkdir()
    jsonl(w / "run_notjson" / "rollouts.jsonl", [traj(), "{oops"])
    (w / "run_ok").mkdir()
    jsonl(w / "run_ok" / "rollouts.jsonl", [traj()])
    # broken model folders
    files = [p for p in tiny_model_dir.iterdir() if p.is_file()]
    for name in ("notok", "truncated", "missing_weights"):
        (w / name).mkdir()
        for f in files:
            if name != "notok" or not f.name.startswith(("tokenizer", "chat_template")):
                (w / name / f.name).write_bytes(f.read_bytes())
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    (w / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 3])  # a copy cut short
    sd = load_file(tiny_model_dir / "model.safetensors")
    save_file({k: v for k, v in sd.items() if ".layers.1." not in k}, w / "missing_weights" / "model.safetensors",
              metadata={"format": "pt"})
    return w


TINY_RL = ("--prompts-per-step 2 --mini-batch 2 --n-samples 2 --max-new-tokens 8 --overlong-buffer 2 --rl-steps 1 "
           "--backend hf --device cpu")

# (id, stage, argv with {w} = the world folder and {o} = the output path, pre-existing output ('' | 'dir' |
#  'file'), expected exit code, what the one stderr line must contain)
CASES = [
    # explore.py
    ("explore-missing-file", "explore", "--data {w}/nope.jsonl --out {o}", "", 2, ["{w}/nope.jsonl: no such file"]),
    ("explore-non-utf8", "explore", "--data {w}/bad_utf8.jsonl --out {o}", "", 2,
     ["{w}/bad_utf8.jsonl:2: not valid UTF-8"]),
    ("explore-wrong-type", "explore", "--data {w}/wrong_type.jsonl --out {o}", "", 2,
     ["{w}/wrong_type.jsonl:2: field 'problem' should be str, got int"]),
    ("explore-n0", "explore", "--data {w}/problems.jsonl --out {o} " + TINY_RL + " --n-samples 0", "", 2,
     ["--n-samples must be >= 1, got 0"]),
    ("explore-mini-batch-larger-than-batch", "explore",
     "--data {w}/problems.jsonl --out {o} " + TINY_RL + " --mini-batch 4", "", 2,
     ["--prompts-per-step (2) must be a multiple of --mini-batch (4)"]),
    ("explore-model-without-tokenizer", "explore", "--model {w}/notok --data {w}/problems.jsonl --out {o} " + TINY_RL,
     "", 2, ["{w}/notok: model folder has no tokenizer"]),
    ("explore-out-is-a-file", "explore", "--model {w}/model --data {w}/problems.jsonl --out {o} " + TINY_RL, "file", 2,
     ["{o}: exists and is not a folder"]),
    # harvest.py
    ("harvest-not-json", "harvest", "--run-dir {w}/run_notjson --out {o}", "", 2,
     ["{w}/run_notjson/rollouts.jsonl:2: not valid JSON"]),
    ("harvest-run-missing", "harvest", "--run-dir {w}/nope --out {o}", "", 2,
     ["{w}/nope: no such folder", "--run-dir"]),
    ("harvest-out-is-a-file", "harvest", "--run-dir {w}/run_ok --out {o}", "file", 2,
     ["{o}: exists and is not a folder", "--out"]),
    # filter.py
    ("filter-empty-file", "filter", "--trajectories {w}/empty.jsonl --out {o}", "", 2, ["{w}/empty.jsonl: empty file"]),
    ("filter-missing-field", "filter", "--trajectories {w}/missing_acc.jsonl --out {o}", "", 2,
     ["{w}/missing_acc.jsonl:3: missing field 'acc'"]),
    ("filter-folder-without-harvest", "filter", "--trajectories {w}/run_ok --out {o}", "", 2,
     ["{w}/run_ok/harvest.jsonl: no such file"]),
    ("filter-out-is-a-file", "filter", "--trajectories {w}/easy.jsonl --out {o}", "file", 2,
     ["{o}: exists and is not a folder"]),
    ("filter-zero-hard-problems", "filter", "--trajectories {w}/easy.jsonl --out {o} --threshold 0.5", "", 3,
     ["{w}/easy.jsonl: nothing kept", "2 always solved"]),
    # consolidate.py
    ("consolidate-wrong-type", "consolidate", "--model {w}/model --trajectories {w}/reward_str.jsonl --out {o}", "", 2,
     ["{w}/reward_str.jsonl:1: field 'reward' should be int or float, got str"]),
    ("consolidate-line-not-an-object", "consolidate",
     "--model {w}/model --trajectories {w}/list_line.jsonl --out {o}", "", 2,
     ["{w}/list_line.jsonl:1: expected a JSON object, got list"]),
    ("consolidate-model-missing", "consolidate", "--model {w}/nope --trajectories {w}/easy.jsonl --out {o}", "", 2,
     ["{w}/nope: model folder does not exist"]),
    ("consolidate-batch-size-0", "consolidate", "--trajectories {w}/easy.jsonl --out {o} --batch-size 0", "", 2,
     ["--batch-size must be >= 1, got 0"]),
    # evaluate.py
    ("evaluate-benchmark-without-answers", "evaluate", "--model {w}/model --benchmarks b={w}/noanswer.jsonl --out {o}",
     "", 2, ["{w}/noanswer.jsonl:1: missing field 'answer'"]),
    ("evaluate-truncated-weights", "evaluate", "--model {w}/truncated --benchmarks b={w}/problems.jsonl --out {o}",
     "", 2, ["{w}/truncated: cannot load model"]),
    ("evaluate-weights-missing", "evaluate",
     "--model {w}/missing_weights --benchmarks b={w}/problems.jsonl --out {o}", "", 2,
     ["{w}/missing_weights: cannot load model", "weights missing", "model.layers.1."]),
    ("evaluate-duplicate-benchmark", "evaluate",
     "--model {w}/model --benchmarks b={w}/problems.jsonl,b={w}/noanswer.jsonl --out {o}", "", 2,
     ["--benchmarks", "'b' is given twice"]),
]


def run_case(case, root: Path, w: Path):
    """Run one case in its own folder `root`; its output location is root/outs/o."""
    name, stage, argv, pre, _, _ = case
    where = root / "outs"  # holds the output location and nothing else: a temp file left behind shows
    where.mkdir(parents=True)
    out = where / "o"
    if pre == "dir":
        out.mkdir()
    elif pre == "file":
        out.write_text("not yours\n")
    r = subprocess.run([sys.executable, str(ROOT / f"{stage}.py"), *argv.format(w=w, o=out).split()], cwd=root,
                       env=ENV, capture_output=True, text=True, timeout=120)
    return r, where, out


@pytest.fixture(scope="module")
def ran(request, w, tmp_path_factory) -> dict:
    """Every selected case, run two at a time (a case is mostly imports: ~1-3 s of one core)."""
    wanted = {item.callspec.params["case"][0] for item in request.session.items
              if hasattr(item, "callspec") and "case" in item.callspec.params}
    root = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(2) as pool:
        futures = {c[0]: pool.submit(run_case, c, root / c[0], w) for c in CASES if c[0] in wanted}
    return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in CASES])
def test_bad_input_one_line_nothing_written(w, ran, case):
    name, stage, argv, pre, code, expect = case
    r, where, out = ran[name]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    for want in expect:
        assert want.format(w=w, o=out) in lines[0], (want, lines[0])
    # nothing partial: the output is absent, or exactly what was there before
    if pre == "dir":
        assert sorted(where.iterdir()) == [out] and not list(out.iterdir())
    elif pre == "file":
        assert sorted(where.iterdir()) == [out] and out.read_text() == "not yours\n"
    elif name == "filter-zero-hard-problems":  # documented: the stats say why, and there is no rft.jsonl
        assert sorted(p.name for p in out.iterdir()) == ["args.json", "filter_stats.json"]
    else:
        assert list(where.iterdir()) == [], list(where.iterdir())


def test_catalogue_covers_every_stage_and_twelve_kinds():
    assert {c[1] for c in CASES} == {"explore", "harvest", "filter", "consolidate", "evaluate"}
    assert len(CASES) >= 12


def test_weights_that_do_not_fit_the_config_are_refused(w, tmp_path):
    """transformers would warn in a many-line report and initialise the misfits at random; we refuse, in one
    line, and leave the logging level as it was."""
    from transformers.utils import logging as hf_logging

    from lib.run.cli import UserError
    from lib.train.modeling import load_policy

    folder = tmp_path / "wider"
    folder.mkdir()
    for f in (w / "model").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] *= 2  # the MLP weights on disk are now the wrong shape
    (folder / "config.json").write_text(json.dumps(cfg))
    level = hf_logging.get_verbosity()
    with pytest.raises(UserError, match="weight shapes do not match config.json"):
        load_policy(str(folder))
    with pytest.raises(UserError, match="weights missing from the checkpoint"):
        load_policy(str(w / "missing_weights"))
    assert hf_logging.get_verbosity() == level


def test_a_byte_order_mark_is_not_an_error(tmp_path):
    from lib.run.data import load_problems

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "p0", "problem": "1+1?", "answer": "2"}).encode() + b"\n")
    assert [p.id for p in load_problems(str(path))] == ["p0"]  # (a Windows editor's file)


# ---------------------------------------------------------------------------------------------------------
# non-finite steps: explore.py


def digit_reward(response: str, ground_truth: str) -> dict:
    """Synthetic verifier for an untrained model: 'correct' iff the text holds a digit (about half do)."""
    ok = any(ch.isdigit() for ch in response)
    return {"score": 1.0 if ok else -1.0, "acc": ok, "pred": ""}


def explore_args(model, data, out, *extra):
    """4 prompts x 4 responses, 2 updates per step, every group trained on (one generation batch per step:
    exactly 16 verifier calls per step), a checkpoint every step."""
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--prompts-per-step", "4",
            "--n-samples", "4", "--mini-batch", "2", "--micro-batch", "8", "--max-new-tokens", "16",
            "--overlong-buffer", "4", "--lr", "1e-3", "--warmup-steps", "0", "--no-dynamic-sampling", "--save-every",
            "1", "--backend", "hf", "--device", "cpu", *map(str, extra)]


def nan_reward_on(calls: range):
    """digit_reward, except that the verifier calls in `calls` (0-based) return a NaN score."""
    n = [0]

    def fn(response, ground_truth):
        out = digit_reward(response, ground_truth)
        if n[0] in calls:
            out["score"] = float("nan")
        n[0] += 1
        return out

    return fn


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    rows = [{"id": f"p{i}", "problem": f"Compute {i}+{i}.", "answer": str(2 * i)} for i in range(8)]
    return jsonl(tmp_path_factory.mktemp("problems") / "train.jsonl", rows)


def test_explore_skips_nonfinite_updates_counts_them_and_goes_on(tiny_model_dir, problems, tmp_path):
    import explore

    out = tmp_path / "run"
    explore.main(explore_args(tiny_model_dir, problems, out, "--rl-steps", "3"), reward_fn=nan_reward_on(range(16, 32)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["updates"], r["skipped_updates"]) for r in rows] == [(1, 2, 0), (2, 2, 2), (3, 2, 0)]
    assert rows[1]["pg_loss"] is None  # NaN is written as null: metrics.jsonl stays strict JSON
    w = {s: load_file(out / f"ckpt_00000{s}" / "model.safetensors") for s in (1, 2, 3)}
    assert all(torch.equal(w[1][k], w[2][k]) for k in w[1])  # step 2 changed nothing ...
    assert any(not torch.equal(w[2][k], w[3][k]) for k in w[2])  # ... and step 3 trained again
    assert all(torch.isfinite(t).all() for t in w[3].values())


def test_explore_stops_after_k_consecutive_nonfinite_updates(tiny_model_dir, problems, tmp_path):
    import explore
    from lib.run.cli import UserError

    out = tmp_path / "run"
    with pytest.raises(UserError) as e:
        explore.main(explore_args(tiny_model_dir, problems, out, "--rl-steps", "4", "--max-nonfinite", "3"),
                     reward_fn=nan_reward_on(range(10**9)))
    msg = str(e.value)
    assert e.value.code == 1 and "\n" not in msg
    # (the streak is checked once per step, after both of its updates: 4 >= 3 at step 2)
    assert msg.startswith("step 2: 4 consecutive updates had a non-finite loss or gradient (--max-nonfinite 3)")
    assert "--resume" in msg
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_updates"]) for r in rows] == [(1, 2), (2, 2)]  # the stopping step is logged
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_000001"]  # no checkpoint of the failed step
    base, ck = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "ckpt_000001" / "model.safetensors")
    assert all(torch.equal(base[k], ck[k]) for k in base)  # every update was skipped


# ---------------------------------------------------------------------------------------------------------
# non-finite steps: lib/train/sft.py and consolidate.py skip them, count them and stop after --max-nonfinite


class NaNWhenTold(torch.nn.Module):
    """Wraps a causal LM; while `poison` is set, its logits are NaN (so are the loss and every gradient)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.poison = model, False

    def forward(self, **kw):
        out = self.model(**kw)
        if self.poison:
            out.logits = out.logits * float("nan")
        return out


def test_sft_skips_a_nonfinite_step_and_goes_on():
    from lib.train import sft
    from lib.worlds import toy

    tok = toy.make_tokenizer()
    model = NaNWhenTold(toy.make_model(tok, seed=0))
    examples = [sft.Example([5, 6, 7], [10 + i, 11, 12]) for i in range(4)]
    snap = {}

    def on_step(step, row, opt, sched):
        snap[step] = [p.detach().clone() for p in model.parameters()]
        model.poison = step == 1  # step 2's forward passes give NaN

    rows = sft.train(model, examples, sft.SFTConfig(steps=3, batch_size=4, lr=1e-2), tok.pad_token_id,
                     sft.nll_loss, on_step=on_step, progress=False)
    assert [r["skipped_updates"] for r in rows] == [0, 1, 0]
    assert rows[1]["loss"] is None or not math.isfinite(rows[1]["loss"])
    assert all(torch.equal(a, b) for a, b in zip(snap[1], snap[2]))  # the skipped step changed nothing
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(snap[2], snap[3]))  # and training went on


def test_consolidate_stops_on_nonfinite_steps_and_writes_no_model(tiny_model_dir, tmp_path):
    data = tmp_path / "rft.jsonl"
    write_jsonl(data, [Trajectory(f"p{i}", f"Compute {i}+1.", f"Answer: {i + 1}", 1.0, True) for i in range(8)])
    out = tmp_path / "out"
    # lr 1e30: step 1's update sends the weights to ~1e30, every later forward overflows to NaN
    r = subprocess.run([sys.executable, str(ROOT / "consolidate.py"), "--model", str(tiny_model_dir),
                        "--trajectories", str(data), "--out", str(out), "--batch-size", "4", "--sft-steps", "8",
                        "--warmup-steps", "0",
                        "--lr", "1e30", "--max-nonfinite", "3", "--device", "cpu"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip() and "sft" not in line]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and "non-finite" in lines[0] and "--max-nonfinite 3" in lines[0], lines
    assert not (out / "consolidate.json").exists() and not (out / "config.json").exists()  # not "finished"
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
            for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_updates"] for r in rows] == [0, 1, 1, 1]
