"""recipes/qwen2.5-math-7b-dapo.sh without a GPU: --help and --vars run nothing; the values in use and their origin
are printed first; a variable it does not list never leaks in; DRY_RUN=1 prints the values, footprint's estimate and
the stage commands in order, writing nothing under OUT, on one node or several, for the long run and the smoke run;
GPU_MEM's default is footprint's room beside the trainer less its margin. The recipe running the stages is
scripts/rehearse.sh's job (tests/test_rehearse.py)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/qwen2.5-math-7b-dapo.sh"
CLEAN_ENV = {"PATH": os.environ["PATH"], "PYTHON": sys.executable}  # no recipe variable from the caller's shell


def recipe(*args, **env):
    return subprocess.run(["bash", RECIPE, *args], cwd=ROOT, env={**CLEAN_ENV, **env}, capture_output=True,
                          text=True, timeout=120)


def values(**env) -> dict:
    r = recipe("--vars", **env)
    assert r.returncode == 0, r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines())


def test_help_lists_every_variable_and_runs_nothing(tmp_path):
    r = recipe("--help", OUT=str(tmp_path / "out"))
    assert r.returncode == 0 and r.stderr == ""
    for name in values():  # each with its value and a meaning line that names its origin
        assert f"\n  {name:<18} " in r.stdout, name
    assert "dapo-32b-lengths   MAX_NEW_TOKENS=20480 GEN_BATCH_SIZE=1536 MICRO_BATCH=2" in r.stdout
    assert "(verl 7B: override_config.max_position_embeddings=32768)" in r.stdout
    assert not (tmp_path / "out").exists()
    assert recipe("--bogus").returncode == 2


def test_defaults_follow_verl_7b_and_the_preset():
    v = values()
    assert {k: v[k] for k in ("MAX_PROMPT_LEN", "MAX_NEW_TOKENS", "OVERLONG_BUFFER", "OVERLONG_FACTOR",
                              "MAX_MODEL_LEN", "PROMPTS_PER_STEP", "GEN_BATCH_SIZE", "N_SAMPLES", "MINI_BATCH", "LR",
                              "WARMUP_STEPS", "WEIGHT_DECAY", "GRAD_CLIP", "EPS_LOW", "EPS_HIGH", "CLIP_RATIO_C",
                              "LOSS_AGG", "TEMPERATURE", "TOP_P", "EVAL_EVERY", "EVAL_BEFORE_TRAIN", "EVAL_TOP_P",
                              "EVAL_TEMPERATURE", "RL_STEPS", "SAVE_EVERY", "LOGGER", "KEEP_CHECKPOINTS")} == {
        "MAX_PROMPT_LEN": "2048", "MAX_NEW_TOKENS": "8192", "OVERLONG_BUFFER": "4096", "OVERLONG_FACTOR": "1.0",
        "MAX_MODEL_LEN": "32768", "PROMPTS_PER_STEP": "512", "GEN_BATCH_SIZE": "512", "N_SAMPLES": "16",
        "MINI_BATCH": "32", "LR": "1e-6", "WARMUP_STEPS": "10", "WEIGHT_DECAY": "0.1", "GRAD_CLIP": "1.0",
        "EPS_LOW": "0.2", "EPS_HIGH": "0.28", "CLIP_RATIO_C": "10", "LOSS_AGG": "token-mean", "TEMPERATURE": "1.0",
        "TOP_P": "1.0", "EVAL_EVERY": "10", "EVAL_BEFORE_TRAIN": "1", "EVAL_TOP_P": "0.7", "EVAL_TEMPERATURE": "1.0",
        "RL_STEPS": "200", "SAVE_EVERY": "10", "LOGGER": "tensorboard", "KEEP_CHECKPOINTS": "200"}
    assert v["EVAL_BENCHMARKS"] == "aime24=HuggingFaceH4/aime_2024@train"
    v32 = values(PRESET="dapo-32b-lengths")
    assert (v32["MAX_NEW_TOKENS"], v32["GEN_BATCH_SIZE"], v32["MICRO_BATCH"]) == ("20480", "1536", "2")
    assert {k: x for k, x in v32.items() if v[k] != x} == {"PRESET": "dapo-32b-lengths", "MAX_NEW_TOKENS": "20480",
                                                          "GEN_BATCH_SIZE": "1536", "MICRO_BATCH": "2"}
    assert values(PRESET="dapo-32b-lengths", MAX_NEW_TOKENS="9000")["MAX_NEW_TOKENS"] == "9000"  # a variable wins
    r = recipe("--vars", PRESET="dapo-70b")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: PRESET=dapo-70b: expected one of:")


def test_no_common_word_leaks_in(tmp_path):
    v = values(N="3", EVAL="x=y.jsonl", GEN_BATCH="7")
    assert v["N_SAMPLES"] == "16" and v["BENCHMARKS"].startswith("aime24=") and v["GEN_BATCH_SIZE"] == "512"
    # loop.sh's variables the recipe does not list are unset before loop.sh starts, each named in a note
    text = dry_run(tmp_path, TRAIN_LAUNCH="torchrun --nproc_per_node 2", JOBS="2", EVAL_ITERS="last")
    for name in ("TRAIN_LAUNCH", "JOBS", "EVAL_ITERS"):
        assert f"note: {name} is set in the environment and not read (the recipe unsets it)" in text
    launches = [s for s in stages(text) if re.search(r" (explore|consolidate|evaluate)\.py ", s)]
    assert len([s for s in launches if " evaluate.py " in s]) == 10  # EVAL_ITERS=all, not the shell's last
    assert all("-m torch.distributed.run " in s and "--nproc-per-node 8 " in s for s in launches), launches[:2]


def dry_run(tmp_path, **env):
    out = tmp_path / "out"
    r = recipe(DRY_RUN="1", OUT=str(out), **env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert not out.exists()  # nothing written under OUT
    return r.stdout


def stages(text: str) -> list[str]:
    return [line[2:] for line in text.splitlines() if line.startswith("+ ")]


def test_dry_run_prints_values_and_the_estimate_and_runs_nothing(tmp_path):
    text = dry_run(tmp_path, N="5", RL_STEPS="100")
    assert "== recipes/qwen2.5-math-7b-dapo.sh (PRESET=dapo-7b)" in text
    assert "   MAX_NEW_TOKENS     8192" in text and "(preset dapo-7b)" in text
    assert "   RL_STEPS           100" in text and "(environment)" in text
    assert "ESTIMATE (arithmetic, not a measurement; nothing here has run on a GPU) — PRESET=dapo-7b" in text
    assert "ESTIMATE" in dry_run(tmp_path, PRESET="dapo-32b-lengths")


@pytest.mark.parametrize("preset, new_tokens", [("dapo-7b", 8192), ("dapo-32b-lengths", 20480)])
def test_dry_run_lists_the_stage_commands_in_order(tmp_path, preset, new_tokens):
    text = dry_run(tmp_path, PRESET=preset)
    stages = [line for line in text.splitlines() if line.startswith("+ ")]
    explore = [s for s in stages if "explore.py" in s]
    assert len(explore) == 4 and "iter1/explore" in explore[0] and "vanilla" in explore[-1]
    for flag in (f"--max-new-tokens {new_tokens}", "--max-prompt-len 2048", "--max-model-len 32768",
                 "--eval-every 10", "--eval-before-train", "--eval-benchmarks aime24=HuggingFaceH4/aime_2024@train",
                 "--logger tensorboard", "--n-samples 16", "--prompts-per-step 512", "--lr 1e-6"):
        assert flag in explore[0], flag
    order = [next(i for i, s in enumerate(stages) if word in s) for word in
             ("explore.py", "harvest.py", "filter.py", "consolidate.py", "evaluate.py", "report.py")]
    assert order[:4] == sorted(order[:4]) and order[-1] == len(stages) - 1


@pytest.mark.parametrize("rank", ["0", "1"])
def test_several_nodes_leave_the_launchers_to_loop_sh(tmp_path, rank):
    """NNODES=2: every distributed stage (explore, consolidate, evaluate, harvest --n-samples) is one torchrun over
    both nodes, from PYTHON's own torch; node 1 leaves filter and the report to node 0."""
    text = dry_run(tmp_path, NNODES="2", NODE_RANK=rank, MASTER_ADDR="10.0.0.1", EXTRA_HARVEST_ARGS="--n-samples 4")
    launch = (f"{sys.executable} -m torch.distributed.run --nnodes 2 --node-rank {rank} --master-addr 10.0.0.1 "
              f"--master-port 29500 --nproc-per-node 8 ")
    lines = stages(text)
    scripts = [re.search(r" (\w+)\.py ", s).group(1) for s in lines]
    distributed = [s for s, name in zip(lines, scripts) if name in ("explore", "consolidate", "evaluate", "harvest")]
    assert len(distributed) == 4 + 3 + 3 + 10 and all(s.startswith(launch) for s in distributed), distributed[:2]
    single = {name for name in scripts if name in ("filter", "report")}
    assert single == ({"filter", "report"} if rank == "0" else set())
    if rank == "1":
        assert "-- iter1-filter: node 0 runs it" in text and "-- report: node 0 runs it" in text


def smoke_sizes() -> dict:
    text = (ROOT / RECIPE).read_text()
    return dict(kv.split("=", 1) for kv in re.search(r'SMOKE_SIZES="(.*?)"', text, re.S).group(1).split())


def test_the_smoke_run_sets_only_its_sizes_and_prints_the_whole_chain(tmp_path):
    """SMOKE=1: its table's values over the preset's (a variable from the environment still wins), every one a
    listed variable; its dry run is the whole chain at those sizes: one iteration, vanilla, four evaluations."""
    smoke, long = values(SMOKE="1"), values()
    sizes = smoke_sizes()
    changed = {"SMOKE": "1", "KEEP_CHECKPOINTS": sizes["RL_STEPS"], **{k: v for k, v in sizes.items() if long[k] != v}}
    assert {k: x for k, x in smoke.items() if long[k] != x} == changed  # (KEEP_CHECKPOINTS: = RL_STEPS)
    assert set(sizes) <= set(long) and sizes["ITERS"] == "1" and int(sizes["RL_STEPS"]) <= 2
    assert values(SMOKE="1", PRESET="dapo-32b-lengths")["MAX_NEW_TOKENS"] == sizes["MAX_NEW_TOKENS"]
    assert values(SMOKE="1", RL_STEPS="3")["RL_STEPS"] == "3"
    assert recipe("--vars", SMOKE="yes").returncode == 2
    text = dry_run(tmp_path, SMOKE="1")
    assert "(PRESET=dapo-7b, SMOKE=1: the smoke run)" in text and "(smoke)" in text
    lines = stages(text)
    assert [re.search(r" (\w+)\.py ", s).group(1) for s in lines] == [
        "explore", "harvest", "filter", "consolidate", "explore", "evaluate", "evaluate", "evaluate", "evaluate",
        "report"]
    for flag in ("--rl-steps 2", "--limit 64", "--prompts-per-step 16", "--n-samples 4", "--max-new-tokens 1024",
                 "--eval-limit 8", "--eval-n-samples 2"):
        assert flag in lines[0], flag
    assert "--threshold 1.0" in lines[2] and all({"--limit 8", "--n-samples 2"} <= set(re.findall(r"--\S+ \S+", s))
                                                    for s in lines[5:9])
    assert "ESTIMATE" in text


@pytest.mark.parametrize("nproc", ["8", "4"])
def test_gpu_mem_is_footprints_room_less_the_margin(nproc):
    """GPU_MEM's default: what scripts/footprint.py prints fits beside the resident trainer, less 0.1."""
    r = subprocess.run([sys.executable, "scripts/footprint.py"], cwd=ROOT, env={**CLEAN_ENV, "NPROC": nproc},
                       capture_output=True, text=True, timeout=120)
    room = float(re.search(r"GPU_MEM up to ([0-9.]+) fits beside the resident trainer", r.stdout).group(1))
    assert abs(float(values(NPROC=nproc)["GPU_MEM"]) - (room - 0.1)) < 0.006, r.stdout[-600:]
