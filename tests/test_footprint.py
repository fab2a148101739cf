"""scripts/footprint.py: the estimate's arithmetic on numbers worked out by hand, the recipe's values read from the
recipe itself (both presets), and docs/full-scale.md's pasted output equal to what the command prints."""
import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import footprint as fp  # noqa: E402

CLEAN_ENV = {"PATH": os.environ["PATH"]}  # no recipe variable from the caller's shell


def recipe(preset=None, **env):
    return fp.Recipe.from_vars(fp.recipe_vars(preset, {**CLEAN_ENV, **env}))


def test_parameters_of_qwen25_math_7b():
    # embeddings + head 2 x 152064 x 3584 = 1,089,994,752; a layer: q (H^2 + H) + k, v 2 x (512 H + 512) + o H^2
    # + MLP 3 x 3584 x 18944 + 2 norms = 233,057,792; 28 layers + final norm 3584
    assert fp.n_params(fp.QWEN25_MATH_7B) == 1_089_994_752 + 28 * 233_057_792 + 3584 == 7_615_616_512


def test_the_recipe_is_the_source_of_the_values():
    r = recipe()
    assert (r.preset, r.max_new, r.gen_batch, r.micro_batch, r.max_prompt, r.prompts, r.n) == \
        ("dapo-7b", 8192, 512, 4, 2048, 512, 16)
    assert (r.keep, r.save_every, r.eval_every, r.eval_before, r.eval_n) == ("200", 10, 10, True, 32)
    r = recipe("dapo-32b-lengths")
    assert (r.max_new, r.gen_batch, r.micro_batch) == (20480, 1536, 2)
    assert recipe(RL_STEPS="100", NPROC="4").keep == "100" and recipe(NPROC="4").nproc == 4  # as the recipe reads


def test_small_formulas_by_hand():
    r = recipe()
    assert fp.gen_batches(r, 0.5) == 2  # ceil(512 / (512 x 0.5))
    assert fp.gen_batches(recipe("dapo-32b-lengths"), 0.5) == 1  # ceil(512 / 768)
    assert fp.gen_batches(r, 0.01) == 10  # the cap
    assert fp.gen_batches(recipe(DYNAMIC_SAMPLING="0"), 0.01) == 1  # every group kept
    assert fp.record_bytes(251, 200, 2048, 3.5, 7, 0.5) == 251 + 2248 * 3.5 + 0.5 * 2048 * 7 == 15_287
    c = dict(num_hidden_layers=2, hidden_size=4)
    assert fp.forward_flops(10, c, 5) == 2 * 10 * 5 + 2 * 2 * 4 * 25 == 500
    # 2P(p + r) = 140, prefill 2LDp^2 = 144, decode 4LD(pr + r^2/2) = 32 x 20 = 640
    assert fp.decode_flops(10, c, 3, 4) == 140 + 144 + 640
    # K = 7 keeps the multiples of 70 (70 ... 560) and the newest (600)
    assert [fp.checkpoint_folders(600, 10, k) for k in ("200", "all", "last", "7")] == [3, 60, 1, 9]
    assert fp.bench_problems(r.benchmarks, 500) == 30 + 30 + 40 + 500 + 272
    assert fp.bench_problems("a=my/set@test,b=HuggingFaceH4/aime_2024", 100) == 130
    assert 200 < fp.record_overhead() < 300


def assumptions(**kw):
    a = dict(gpu_gb=80.0, peak_tflops=989.0, mfu=0.3, gen_mfu=0.1, response_frac=0.25, prompt_tokens=200.0,
             kept_share=0.5, acc=0.5, text_bytes=3.5, ids_bytes=7.0, problems=17917, hard_share=0.15,
             bench_problems=500, config="")
    return argparse.Namespace(**{**a, **kw})


def test_report_figures_by_hand():
    text = fp.report(recipe(), fp.QWEN25_MATH_7B, assumptions())
    assert text.startswith("ESTIMATE (arithmetic, not a measurement; nothing here has run on a GPU)")
    P = 7_615_616_512
    lines = {line.split("  ")[1].strip() if line.startswith("  ") else line: line for line in text.splitlines()}
    assert f"{4 * P / 8 / 1e9:.1f} GB" == "3.8 GB"
    assert "3.8 GB   4 B x 7,615,616,512 / 8" in lines["fp32 master weights"]
    # KV cache per token: K and V x 28 layers x 4 heads x 128 x 2 B = 57,344 B
    assert "57.3 kB/token" in text
    # 1,200 explore steps (3 x 200 + vanilla 600) x 16,384 responses x 15,287 B (record_overhead() = 251 B)
    assert fp.record_overhead() == 251
    assert f"{1200 * 16384 * 15287 / 1e9:,.1f} GB" in lines["rollouts.jsonl of every explore run (vanilla's: a copy)"]
    # weights: each iteration's newest fp32 (4P) + vanilla's 200 and 400 in bf16 (2P each) and 600 in fp32
    assert f"{(3 * 4 * P + 2 * 2 * P + 4 * P) / 1e9:,.1f} GB" == "152.3 GB"
    assert "152.3 GB" in lines["checkpoint weights"]
    assert f"{4 * 8 * P / 1e9:,.1f} GB" in lines["resume states: AdamW, the newest folder of a run"]
    assert "1,000 RL steps (3 x 200 + vanilla 400 beyond its copy)" in text
    # evaluate runs under torchrun on every GPU of the node, as explore and consolidate do: all GPU-hours over 8
    assert f"3,011 GPU-h; wall-clock on one node of 8 GPUs: {3011 / 8:,.0f} h" in text
    assert "(explore, consolidate and evaluate under torchrun on all 8)" in text


def test_host_memory_per_node_by_hand():
    P = 7_615_616_512
    text = fp.report(recipe(), fp.QWEN25_MATH_7B, assumptions())
    host = text.split("host memory per node (8 ranks", 1)[1].split("\n\n", 1)[0]
    lines = {re.split(r"\s{2,}", line.strip())[0]: line for line in host.splitlines()[1:]}
    # each of 8 ranks holds at most a 32 MiB chunk of the file's rows and its cast in flight; the fallback: 8 copies
    assert "0.5 GB" in lines["load for FSDP: each rank reads its shard onto its GPU"] and 8 * 2 * 2**25 / 1e9 < 0.55
    assert f"{8 * 4 * P / 1e9:,.1f} GB" == "243.7 GB" in lines["a folder without safetensors: every rank, all of it"]
    assert "0.0 GB" in lines["trainer, resident: master weights, gradients, AdamW"]
    # vLLM level-1 sleep: every engine's bf16 weights in host memory (TP 1: 8 engines of 2 B x P)
    assert f"{8 * 2 * P / 1e9:,.1f} GB" == "121.8 GB" in lines["vLLM asleep in the update (level 1): bf16 weights"]
    assert f"{4 * P / 1e9:,.1f} GB" == "30.5 GB" in lines["checkpoint save: the full fp32 weights on rank 0"]
    assert "121.8 GB   152.3 GB if" in lines["peak"]
    tp2 = fp.report(recipe(TP="2"), fp.QWEN25_MATH_7B, assumptions())
    assert "60.9 GB   8 ranks / TP 2 = 4 engines" in tp2
    for env in ({"SLEEP_MODE": "0"}, {"BACKEND": "hf"}):  # nothing offloaded: the checkpoint gather is the peak
        other = fp.report(recipe(**env), fp.QWEN25_MATH_7B, assumptions())
        assert "vLLM asleep in the update (level 1)" not in other
        assert [line for line in other.splitlines() if line.strip().startswith("peak ")][-1].strip().endswith("30.5 GB")


def test_the_page_shows_what_the_command_prints():
    """docs/full-scale.md pastes footprint's output under the command that prints it: they must agree."""
    page = (ROOT / "docs" / "full-scale.md").read_text()
    blocks = page.split("```")
    found = 0
    for block in blocks[1::2]:  # (inside the fences; the first line is the info string)
        cmd = block.split("\n", 1)[-1].strip().splitlines()
        if not cmd or not cmd[0].startswith("$ ") or "footprint.py" not in cmd[0]:
            continue
        argv = shlex.split(cmd[0][2:])
        assert argv[0] == "python", cmd[0]
        r = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env=CLEAN_ENV)  # (the page's python is this venv's)
        assert r.returncode == 0, r.stderr
        assert "\n".join(cmd[1:]).strip() == r.stdout.strip(), cmd[0]
        found += 1
    assert found == 2  # both presets
