"""kill -9 and resume: explore.py and consolidate.py run as subprocesses, are SIGKILLed at several moments
(before the first checkpoint, with a half-written line, during a checkpoint write, after a step's log line,
during the final model write, at a polled moment), rerun with --resume, and must end exactly where an
uninterrupted run ends: same weights, every step logged once, no torn line, every checkpoint loadable.

The exact moments come from a small driver (written below) that runs a stage's own main() with one pause
point patched in: it creates a flag file and sleeps there, and the test kills it while it sleeps. One kill
per stage is at a polled moment of the plain script instead (whatever it was doing then).
evaluate.py and harvest.py --n-samples are killed between a part's records and its marker (an earlier part
finished), and (evaluate) between samples.jsonl and metrics.json: the rerun samples only the unfinished rounds and
ends with the uninterrupted run's files. loop.sh killed mid-stage is in tests/test_loop.py (and across two
"nodes" in scripts/rehearse_nodes.sh). About 60 s on 2 CPU cores.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import Killed, dying_train
from safetensors.torch import load_file

from lib.run.records import Trajectory, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}

DRIVER = '''
import json, os, sys, time, importlib
from pathlib import Path
sys.path.insert(0, {root!r})
stage, where, at, flag, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:]
mod = importlib.import_module(stage)
import torch
from lib.run import cli, records

def pause():
    flag.write_text("paused")
    time.sleep(600)  # the test SIGKILLs us here

if where == "logged":  # step `at`'s metrics row is on disk; nothing after it has happened
    real_log = cli.log_metrics
    def log_metrics(path, tag, row, echo=True):
        real_log(path, tag, row, echo)
        if row.get("step") == at:
            pause()
    cli.log_metrics = log_metrics
elif where == "ckpt":  # inside checkpoint.save: weights + tokenizer in the temp folder, resume state not yet
    real_save = torch.save
    def save(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("step") == at:
            pause()
        return real_save(obj, f, *a, **kw)
    torch.save = save
elif where == "torn":  # explore: half of step `at`'s rollouts written -- a torn last line
    def append_jsonl(path, rows):
        rows = list(rows)
        if rows and rows[0].get("step") == at:
            data = "".join(json.dumps(r, ensure_ascii=False) + "\\n" for r in rows).encode()
            with open(path, "ab") as f:
                f.write(data[: len(data) // 2 + 7])
                f.flush()
                os.fsync(f.fileno())
            pause()
        return records.append_jsonl(path, rows)
    importlib.import_module('lib.explore_setup').append_jsonl = append_jsonl  # where explore writes its rollouts
elif where == "final":  # consolidate: the finished model is in its temp folder, not yet renamed over --out
    out = Path(argv[argv.index("--out") + 1])
    real_replace = cli.replace_dir
    def replace_dir(tmp, final):
        if Path(final) == out:
            pause()
        return real_replace(tmp, final)
    cli.replace_dir = replace_dir
elif where == "meta":  # evaluate / harvest --n-samples: part `at`'s records written, its .json (marker) not yet
    from lib.engine import rounds
    from lib.run.records import write_jsonl
    real_write, calls = rounds.Parts.write, []
    def write(self, name, lo, hi, records, seconds):
        calls.append(name)
        if len(calls) == at:
            write_jsonl(self._file(name, lo, "jsonl"), records)
            pause()
        real_write(self, name, lo, hi, records, seconds)
    rounds.Parts.write = write
elif where == "metrics":  # evaluate: samples.jsonl written, metrics.json not yet
    real_json = cli.atomic_write_json
    def atomic_write_json(path, obj):
        if Path(path).name == "metrics.json":
            pause()
        return real_json(path, obj)
    cli.atomic_write_json = atomic_write_json
sys.argv = [stage + ".py", *argv]
cli.run_main(mod.main)
'''


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER.format(root=str(ROOT)))
    return path


def start(stage: str, args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / f"{stage}.py"), *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    """Wait for a run that must succeed; its stdout."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    return out


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 180) -> None:
    """Poll `ready()` every 5 ms; SIGKILL the process as soon as it holds. Fails if the process ends first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}:\n{out[-1500:]}\n{err[-1500:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def kill_at(driver: Path, stage: str, where: str, at: int, args, tmp: Path) -> None:
    """Run `stage` under the driver and SIGKILL it while it waits at pause point (where, at)."""
    flag = tmp / f"paused-{stage}-{where}-{at}"
    proc = subprocess.Popen([sys.executable, str(driver), stage, where, str(at), str(flag), *map(str, args)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_when(proc, flag.exists, f"pause point {where} {at}")


def strict_json(line: str):
    def no_constant(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=no_constant)


def clean_lines(path: Path) -> list[dict]:
    """Every line whole (ends in a newline), strict JSON, an object."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path}: torn last line {raw[-80:]!r}"
    rows = [strict_json(line) for line in raw.decode("utf-8").splitlines()]
    assert all(isinstance(r, dict) for r in rows)
    return rows


def ckpts(out: Path) -> list[Path]:
    return sorted(d for d in out.iterdir() if d.name.startswith("ckpt_"))


def temps(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.name.startswith("."))


def assert_loads(folder: Path) -> None:
    """A from_pretrained folder: safetensors weights (no pickle), config, tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin")), folder
    AutoModelForCausalLM.from_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ---------------------------------------------------------------------------------------------------------
# explore.py


def memo_dapo(memo_data: Path, tmp: Path) -> Path:
    """The memo problems in the DAPO schema: the prompt is used as it is (no instruction template), i.e. the
    format the memo model was fine-tuned on, so the real verifier sees a reward spread and updates happen."""
    rows = [json.loads(x) for x in memo_data.read_text().splitlines()]
    path = tmp / "memo_dapo.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["problem"]}],
                                        "reward_model": {"ground_truth": r["answer"]},
                                        "extra_info": {"index": r["id"]}}) + "\n" for r in rows))
    return path


def explore_args(model, data, out, *extra):
    """6 steps of 4 prompts x 4 responses x 24 tokens, 2 updates per step, checkpoints at 2, 4, 6; with the state a
    resume must rebuild: --replay's store (from rollouts.jsonl) and --rollout-is token's weights."""
    return ["--model", model, "--data", data, "--out", out, "--rl-steps", "6", "--save-every", "2",
            "--prompts-per-step", "4", "--n-samples", "4", "--mini-batch", "2", "--micro-batch", "8",
            "--max-new-tokens", "24", "--overlong-buffer", "4", "--lr", "3e-4", "--warmup-steps", "0",
            "--max-gen-batches", "2", "--backend", "hf", "--device", "cpu", "--replay", "--rollout-is", "token",
            *extra]


def strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "gen_time", "step_time")} for r in rows]


def test_explore_killed_four_times_ends_like_an_uninterrupted_run(memo_model_dir, memo_data, driver, tmp_path):
    data = memo_dapo(memo_data, tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    reference = start("explore", explore_args(memo_model_dir, data, ref))  # uninterrupted, alongside (2 cores)

    # 1. before the first checkpoint, with half of step 1's rollouts written
    kill_at(driver, "explore", "torn", 1, explore_args(memo_model_dir, data, out), tmp_path)
    assert not ckpts(out) and not (out / "rollouts.jsonl").read_bytes().endswith(b"\n")  # really torn

    # 2. during the step-4 checkpoint write (the first kill left no checkpoint: this run starts over)
    kill_at(driver, "explore", "ckpt", 4, explore_args(memo_model_dir, data, out, "--resume"), tmp_path)
    assert [d.name for d in ckpts(out)] == ["ckpt_000002"]
    (tmp,) = [out / n for n in temps(out)]  # the half-written checkpoint: weights, no resume state yet
    assert tmp.name.startswith(".ckpt_000004") and (tmp / "model.safetensors").exists()
    assert not (tmp / "resume" / "state.pt").exists()
    assert [r["step"] for r in clean_lines(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert_loads(out / "ckpt_000002")

    # 3. the plain script, killed as soon as step 5's metrics row shows up (somewhere in step 6)
    proc = start("explore", explore_args(memo_model_dir, data, out, "--resume"))
    metrics = out / "metrics.jsonl"
    kill_when(proc, lambda: b'"step": 5,' in metrics.read_bytes(), "step 5's metrics row")
    assert not [n for n in temps(out) if n.startswith(".ckpt_000004")]  # the resume cleaned the old temp
    for d in ckpts(out):
        if (d / "model.safetensors").exists() and (d / "tokenizer_config.json").exists():
            assert_loads(d)

    # 4. resume to the end
    stdout = finish(start("explore", explore_args(memo_model_dir, data, out, "--resume")))
    assert "resuming" in stdout or "nothing to do" in stdout
    finish(reference)
    ref_metrics = clean_lines(ref / "metrics.jsonl")
    assert sum(r["updates"] - r["skipped_updates"] for r in ref_metrics) >= 4  # it did train
    assert sum(r["replayed"] for r in ref_metrics) > 0  # the replay store, rebuilt on every resume, was used
    assert all(0 < r["rollout_is_mean"] for r in ref_metrics)

    # the same run as the uninterrupted one: weights, metrics (times aside), rollouts byte for byte
    same_weights(ref / "ckpt_000006", out / "ckpt_000006")
    rows = clean_lines(metrics)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert strip_times(rows) == strip_times(ref_metrics)
    rolls = clean_lines(out / "rollouts.jsonl")
    steps = [r["step"] for r in rolls]
    assert steps == sorted(steps) and set(steps) == set(range(1, 7))
    assert (out / "rollouts.jsonl").read_bytes() == (ref / "rollouts.jsonl").read_bytes()
    # checkpoints: all complete and loadable, no temp folder left, the newest alone keeps its resume state
    assert [d.name for d in ckpts(out)] == ["ckpt_000002", "ckpt_000004", "ckpt_000006"]
    for d in ckpts(out):
        assert_loads(d)
    assert temps(out) == []
    assert [d.name for d in ckpts(out) if (d / "resume").exists()] == ["ckpt_000006"]


# ---------------------------------------------------------------------------------------------------------
# consolidate.py


@pytest.fixture(scope="module")
def rft(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rft") / "rft.jsonl"
    write_jsonl(path, [Trajectory(f"p{i}", f"Compute {i}+{i + 3}.", f"{i}+{i + 3}={2 * i + 3}\nAnswer: {2 * i + 3}",
                                  1.0, True, step=1 + i % 3) for i in range(16)])
    return path


def cons_args(model, data, out, *extra):
    """6 steps of 4 trajectories; resume checkpoints at steps 2 and 4; the final folder at 6."""
    return ["--model", model, "--trajectories", data, "--out", out, "--batch-size", "4", "--sft-steps", "6",
            "--save-every", "2", "--lr", "1e-3", "--warmup-steps", "1", "--device", "cpu", *extra]


def test_consolidate_killed_three_times_ends_like_an_uninterrupted_run(tiny_model_dir, rft, driver, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "killed"
    reference = start("consolidate", cons_args(tiny_model_dir, rft, ref))  # uninterrupted, alongside

    # 1. right after step 3's log line, before anything else (the step-2 checkpoint is the resume point)
    kill_at(driver, "consolidate", "logged", 3, cons_args(tiny_model_dir, rft, out), tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "ckpt_000002", "metrics.jsonl"]
    assert [r["step"] for r in clean_lines(out / "metrics.jsonl")] == [1, 2, 3]
    assert_loads(out / "ckpt_000002")

    # 2. during the step-4 checkpoint write
    kill_at(driver, "consolidate", "ckpt", 4, cons_args(tiny_model_dir, rft, out, "--resume"), tmp_path)
    assert [d.name for d in ckpts(out)] == ["ckpt_000002"]  # the complete one is kept until a newer exists
    (tmp,) = temps(out)
    assert tmp.startswith(".ckpt_000004")
    assert [r["step"] for r in clean_lines(out / "metrics.jsonl")] == [1, 2, 3, 4]  # step 3 redone once

    # 3. during the final write: the finished model sits in a temp folder next to --out
    kill_at(driver, "consolidate", "final", 0, cons_args(tiny_model_dir, rft, out, "--resume"), tmp_path)
    assert not (out / "consolidate.json").exists()  # not finished, and nothing says it is
    assert [n for n in temps(tmp_path) if n.startswith(f".{out.name}.final.")]
    assert [d.name for d in ckpts(out)] == ["ckpt_000004"]
    assert_loads(out / "ckpt_000004")

    # 4. resume to the end
    stdout = finish(start("consolidate", cons_args(tiny_model_dir, rft, out, "--resume")))
    assert "resuming" in stdout and "ckpt_000004" in stdout
    finish(reference)

    same_weights(ref, out)
    assert_loads(out)
    rows, ref_rows = clean_lines(out / "metrics.jsonl"), clean_lines(ref / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert json.loads((out / "consolidate.json").read_text())["sft_steps"] == 6
    assert not ckpts(out) and temps(out) == []
    assert not [n for n in temps(tmp_path) if n.startswith((f".{out.name}.", f".{ref.name}."))]


def test_a_kill_between_the_two_renames_of_a_folder_swap_is_undone(tmp_path, monkeypatch):
    import consolidate
    from lib.run import cli

    out, new = tmp_path / "c", tmp_path / ".c.final.x"
    for d, text in ((out, "old"), (new, "new")):
        d.mkdir()
        (d / "config.json").write_text(text)
    (out / consolidate.DONE).write_text("{}")
    real_replace, calls = os.replace, []

    def killed_at_the_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill: out is already .c.old, the new folder not yet renamed
        real_replace(src, dst)

    monkeypatch.setattr(cli.os, "replace", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        cli.replace_dir(new, out)
    monkeypatch.setattr(cli.os, "replace", real_replace)
    assert not out.exists() and (tmp_path / ".c.old").is_dir()
    # the rerun finds the finished folder again, instead of retraining from nothing
    state, ckpt = consolidate.inspect_out(consolidate.get_args(["--trajectories", "x", "--out", str(out)]), out)
    assert state == "finished" and ckpt is None and (out / "config.json").read_text() == "old"
    assert not (tmp_path / ".c.old").exists() and cli.restore_dir(out) is False


def test_consolidate_resumes_over_a_torn_metrics_line(tiny_model_dir, rft, tmp_path, monkeypatch):
    """A kill in the middle of a metrics row (a torn last line) must not make the run un-resumable."""
    import consolidate
    from lib.train import sft

    real_train = sft.train
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared 2-core box: a second thread only contends
    monkeypatch.setattr(sft, "train", dying_train(real_train, after_step=3))
    with pytest.raises(Killed):
        consolidate.main([str(a) for a in cons_args(tiny_model_dir, rft, out)])
    monkeypatch.setattr(sft, "train", real_train)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 5.1')  # the kill landed mid-row
    try:
        consolidate.main([str(a) for a in cons_args(tiny_model_dir, rft, out, "--resume")])
    finally:
        torch.set_num_threads(threads)
    assert [r["step"] for r in clean_lines(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------------------------------------
# evaluate.py and harvest.py --n-samples: resumable by parts


def eval_args(model, bench, out):
    """Two benchmarks of the 8 memo problems, 64 samples each: one round (one HF engine batch) per benchmark."""
    return ["--model", model, "--benchmarks", f"a={bench},b={bench}", "--n-samples", "64", "--max-new-tokens", "16",
            "--backend", "hf", "--device", "cpu", "--out", out]


def test_evaluate_killed_twice_ends_like_an_uninterrupted_run(memo_model_dir, memo_data, driver, tmp_path):
    bench = memo_dapo(memo_data, tmp_path)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    reference = start("evaluate", eval_args(memo_model_dir, bench, ref))

    # 1. benchmark a's part finished; b's records written, its marker not (the rerun keeps a, redoes b)
    kill_at(driver, "evaluate", "meta", 2, eval_args(memo_model_dir, bench, out), tmp_path)
    assert sorted(p.name for p in (out / ".parts").iterdir()) == ["a.0000000.json", "a.0000000.jsonl",
                                                                  "b.0000000.jsonl", "settings.json"]
    # 2. samples.jsonl written, metrics.json not
    kill_at(driver, "evaluate", "metrics", 0, eval_args(memo_model_dir, bench, out), tmp_path)
    assert (out / "samples.jsonl").exists() and not (out / "metrics.json").exists()
    # 3. to the end: nothing left to sample
    stdout = finish(start("evaluate", eval_args(memo_model_dir, bench, out)))
    assert "a: 8 problems sampled by an earlier run" in stdout and "b: 8 problems sampled by an earlier run" in stdout
    finish(reference)

    assert (out / "samples.jsonl").read_bytes() == (ref / "samples.jsonl").read_bytes()
    rows = clean_lines(out / "samples.jsonl")
    assert len(rows) == 2 * 8 * 64 and 0 < sum(r["acc"] for r in rows) < len(rows)
    m, r = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    for x in (m, r):
        for b in x["benchmarks"].values():
            b.pop("seconds")
    assert m == r and not (out / ".parts").exists() and temps(out) == []


def test_harvest_resample_killed_ends_like_an_uninterrupted_run(memo_model_dir, memo_data, driver, tmp_path):
    from lib.train import checkpoint
    from lib.train.modeling import load_policy

    run = tmp_path / "run"
    model, tok = load_policy(str(memo_model_dir))
    for step in (1, 2):
        checkpoint.drop_resume_state(checkpoint.save(run, step, model, tok, {}))
    (run / "args.json").write_text(json.dumps({"data": str(memo_dapo(memo_data, tmp_path)), "max_new_tokens": 16}))
    args = lambda out: ["--run-dir", run, "--out", out, "--n-samples", "64", "--backend", "hf",  # noqa: E731
                        "--device", "cpu"]
    ref, out = tmp_path / "ref", tmp_path / "h"
    reference = start("harvest", args(ref))
    kill_at(driver, "harvest", "meta", 2, args(out), tmp_path)  # ckpt_000001 finished; ckpt_000002's records, no marker
    assert sorted(p.name for p in (out / ".harvest.jsonl.parts").iterdir()) == [
        "ckpt_000001.0000000.json", "ckpt_000001.0000000.jsonl", "ckpt_000002.0000000.jsonl", "settings.json"]
    stdout = finish(start("harvest", args(out)))
    assert "ckpt_000001 (step 1): sampled by an earlier run" in stdout and "ckpt_000002 (step 2): 512" in stdout
    finish(reference)
    assert (out / "harvest.jsonl").read_bytes() == (ref / "harvest.jsonl").read_bytes()
    assert len(clean_lines(out / "harvest.jsonl")) == 2 * 8 * 64 and not (out / ".harvest.jsonl.parts").exists()
