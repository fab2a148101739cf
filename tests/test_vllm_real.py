"""The vLLM glue (lib/engine/rollout.py) against the real engine: vLLM's CPU build (vllm-cpu 0.32.0, made by
scripts/vllm_cpu_env.sh) here, vLLM 0.33 on a GPU. Skipped where vllm does not import (CI, the main venv), where
tests/test_vllm_fake.py drives the same glue through a strict fake.

    .venv-vllm/bin/python -m pytest -q tests/test_vllm_real.py      # ~1-2 min on 2 cores

  * the weight push: after every sync_weights vLLM's greedy decode is the updated model's (scripts/vllm_sync_check.py),
    with and without --sleep-mode's sleep / wake around the update
  * per-prompt seeds: a prompt drawn twice in one call gets two different groups, the same call twice the same
    outputs, and a prompt's samples do not depend on the other prompts of the call
  * the log-probs vLLM returns are the training forward's (softmax(logits / T)) to float rounding
  * --max-model-len above the config's context: refused without the override, sampled past the config's length with it
"""
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU build (its default takes more)
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
vllm = pytest.importorskip("vllm", reason="vllm is not installed (scripts/vllm_cpu_env.sh makes a venv with its CPU "
                                          "build)")

from lib.engine.rollout import VLLMEngine, prompt_seed  # noqa: E402
from lib.train.modeling import load_policy, plan_context, token_logprobs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["<|im_start|>user\nCompute 1+2.<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nCompute 4+4.<|im_end|>\n<|im_start|>assistant\n"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine(memo_model_dir):
    """An in-process fp32 engine on the memo model (it samples varied responses), shared by the module's tests."""
    model, tok = load_policy(str(memo_model_dir))
    eng = VLLMEngine(str(memo_model_dir), tok, max_model_len=128, dtype="float32", seed=0, in_process=True)
    yield eng, model, tok
    eng.close()


def sync_check():
    spec = importlib.util.spec_from_file_location("vllm_sync_check", ROOT / "scripts" / "vllm_sync_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    return check


@pytest.mark.parametrize("sleep", [False, True], ids=["push", "sleep-wake-push"])
def test_every_push_decodes_as_the_updated_model(sleep, capsys):
    rc = sync_check().main(["--sleep"] if sleep else [])
    out = capsys.readouterr().out
    assert rc == 0 and "PASS vllm_sync_check: vLLM greedy" in out, out[-2000:]


def test_each_prompt_has_its_own_seeded_stream(engine):
    eng, _, _ = engine
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    ids = lambda out: [[c.token_ids for c in g] for g in out]  # noqa: E731
    a = ids(eng.generate(prompts, n=4, max_new_tokens=24, seed=3))
    assert a[0] != a[2]  # the same prompt twice in one call: two different groups
    assert ids(eng.generate(prompts, n=4, max_new_tokens=24, seed=3)) == a  # the same call: the same outputs
    assert ids(eng.generate(prompts, n=4, max_new_tokens=24, seed=4)) != a
    alone = ids(eng.generate(prompts[1:2], n=4, max_new_tokens=24, seed=[prompt_seed(3, 1)]))
    assert alone == a[1:2]  # a prompt's samples depend on its seed, not on the call's other prompts


def test_returned_logprobs_are_the_training_forwards(engine):
    eng, model, tok = engine
    for comps, prompt in zip(eng.generate(PROMPTS, n=3, max_new_tokens=24, temperature=0.7, seed=1), PROMPTS):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        for c in comps:
            x = torch.tensor([p + c.token_ids])
            lp = token_logprobs(model, x, torch.ones_like(x), temperature=0.7)[0, len(p):]
            assert torch.allclose(lp, torch.tensor(c.logprobs), atol=1e-4), (lp, c.logprobs)


def test_context_above_the_configs_needs_the_override(memo_model_dir, tmp_path):
    short = tmp_path / "short"
    shutil.copytree(memo_model_dir, short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 32
    (short / "config.json").write_text(json.dumps(cfg))
    model, tok = load_policy(str(short))
    n_prompt = len(tok(PROMPTS[0], add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match="max_model_len"):  # vLLM refuses a context above the config's
        VLLMEngine(str(short), tok, max_model_len=96, dtype="float32", in_process=True)
    context, overrides = plan_context(model.config, n_prompt, 48, max_model_len=96)
    assert (context, overrides) == (96, {"max_position_embeddings": 96})
    eng = VLLMEngine(str(short), tok, max_model_len=context, hf_overrides=overrides, dtype="float32", in_process=True)
    try:
        out = eng.generate(PROMPTS[:1], n=8, max_new_tokens=48, temperature=1.5, seed=0)
        assert max(n_prompt + len(c.token_ids) for c in out[0]) > 32  # sampled past the config's own context
    finally:
        eng.close()
