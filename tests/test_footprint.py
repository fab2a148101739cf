"""scripts/footprint.py: the estimate's arithmetic on numbers worked out by hand, the recipe's values read from the
recipe itself (both presets), and docs/full-scale.md's pasted output equal to what the command prints."""
import argparse
import os
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
             bench_problems=500, eval_gpus=1, config="")
    return argparse.Namespace(**{**a, **kw})


def test_report_figures_by_hand():
    text = fp.report(recipe(), fp.QWEN25_MATH_7B, assumptions())
    assert text.startswith("ESTIMATE (arithmetic, not a measurement; nothing here has run on a GPU)")
    P = 7_615_616_512
    lines = {line.split("  ")[1].strip() if line.startswith("  ") else line: line for line in text.splitlines()}
    assert f"{4 * P / 8 / 1e9:.1f} GB" == "3.8 GB" and "3.8 GB   4 B x 7,615,616,512 / 8" in lines["fp32 master weights"]
    # KV cache per token: K and V x 28 layers x 4 heads x 128 x 2 B = 57,344 B
    assert "57.3 kB/token" in text
    # 1,200 explore steps (3 x 200 + vanilla 600) x 16,384 responses x 15,287 B (record_overhead() = 251 B)
    assert fp.record_overhead() == 251
    assert f"{1200 * 16384 * 15287 / 1e9:,.1f} GB" in lines["rollouts.jsonl of every explore run (vanilla's: a copy)"]
    # weights: each iteration's newest fp32 (4P) + vanilla's 200 and 400 in bf16 (2P each) and 600 in fp32
    assert f"{(3 * 4 * P + 2 * 2 * P + 4 * P) / 1e9:,.1f} GB" == "152.3 GB" and "152.3 GB" in lines["checkpoint weights"]
    assert f"{4 * 8 * P / 1e9:,.1f} GB" in lines["resume states: AdamW, the newest folder of a run"]
    assert "1,000 RL steps (3 x 200 + vanilla 400 beyond its copy)" in text


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
