"""The full-scale recipe file, rehearsed on CPU (scripts/rehearse.sh, its fast variant: one process, a 2,048-entry
vocabulary of Qwen2.5's layout, PRESET=dapo-7b and the smoke run; the full rehearsal runs PRESET=dapo-32b-lengths
too). Every flag recipes/qwen2.5-math-7b-dapo.sh passes goes through the stages; the script's own checks (the prompt
cap's line, validation at step 0, the generation-batch cap's count, rerun skips, --max-model-len refusal, checkpoints
loadable with the raised context, bf16 older folders, RFT ending on <|im_end|>, peak memory, the smoke run's every
stage) must all PASS. ~75 s on 2 cores."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fast_rehearsal_of_the_recipe(tmp_path):
    env = {**os.environ, "FAST": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "scripts/rehearse.sh", str(tmp_path / "rehearse")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    passes = [line for line in out.splitlines() if line.startswith("PASS")]
    assert len(passes) == 6 and "FAIL" not in out, out
    assert "PASS  SMOKE=1: every stage at the smoke run's sizes" in out
    assert "every stopped one ends with <|im_end|>" in out  # the filter kept successes: RFT ran
    assert "rehearsal: 0 failed" in out
