"""The vLLM glue (lib/engine/rollout.py) against tests/fake_vllm.py, a stand-in strict about vLLM 0.33.0's names.

  * sampling: the same prompt twice in one call gets two different groups; the same call twice, the same
    outputs (resume exactness); the engine passes max_model_len / hf_overrides to LLM(...)
  * weights: after sync_weights vLLM's fused parameters (qkv_proj, gate_up_proj slices) hold the trainer's
    values, and differ from before the update (plain engine and ColocatedVLLM)
  * _from_vllm on literal CompletionOutput-shaped objects: log-prob per sampled token, stop / length / abort,
    missing log-probs -> error
  * the code passes only names listed in the fake (which scripts/check_vllm_api.py checks against vLLM's source)
"""
import ast
from pathlib import Path

import pytest
import torch
from fake_vllm import (
    COMPLETION_OUTPUT_FIELDS,
    IMPORTS,
    LLM_KWARGS,
    LLM_METHODS,
    LOGPROB_FIELDS,
    PLATFORM_METHODS,
    PROMPT_FIELDS,
    REQUEST_OUTPUT_FIELDS,
    SAMPLING_PARAMS_FIELDS,
    WORKER_METHODS,
    CompletionOutput,
    Logprob,
    fake_vllm,  # noqa: F401 (a fixture)
)

from lib.engine import rollout
from lib.engine.rollout import ColocatedVLLM, VLLMEngine, _from_vllm, make_engine, prompt_seed, resolve_backend

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def load(d):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), AutoTokenizer.from_pretrained(d)


def toks(group):
    return [c.token_ids for c in group]


# ---------------------------------------------------------------------------------------------------------
# sampling


def test_each_prompt_has_its_own_stream_and_calls_repeat(fake_vllm, tiny_model_dir):
    _, tok = load(tiny_model_dir)
    eng = VLLMEngine(str(tiny_model_dir), tok, max_model_len=256)
    prompts = ["Compute 1+2.", "Compute 1+2.", "Compute 3+4."]
    out = eng.generate(prompts, n=4, max_new_tokens=12, seed=7)
    assert [len(g) for g in out] == [4, 4, 4]
    assert toks(out[0]) != toks(out[1])  # the same prompt drawn twice: two different groups
    assert len({tuple(t) for t in toks(out[0])}) == 4  # n responses of one prompt differ
    again = eng.generate(prompts, n=4, max_new_tokens=12, seed=7)
    assert [toks(g) for g in again] == [toks(g) for g in out]  # same call, same outputs: resume is exact
    assert toks(eng.generate(prompts, n=4, max_new_tokens=12, seed=8)[0]) != toks(out[0])
    for g in out:
        for c in g:
            assert len(c.logprobs) == len(c.token_ids) and c.finish_reason in ("stop", "length")
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)

    # the fake has teeth: one SamplingParams(seed) for the whole call (the old code) gives identical groups
    sp = fake_vllm.SamplingParams(n=4, seed=7, max_tokens=12, logprobs=0)
    ids = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts[:2]]
    a, b = eng.llm.generate(ids, sp, use_tqdm=False)
    assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
    assert prompt_seed(7, 0) != prompt_seed(7, 1) and prompt_seed(7, 0) == prompt_seed(7, 0) < 2 ** 31


def test_llm_gets_max_model_len_and_hf_overrides(fake_vllm, tiny_model_dir):
    _, tok = load(tiny_model_dir)  # the tiny model's config: max_position_embeddings 1024
    eng = VLLMEngine(str(tiny_model_dir), tok, max_model_len=2048, hf_overrides={"max_position_embeddings": 2048},
                     seed=3, in_process=True)
    kw = eng.llm.kwargs
    assert kw["max_model_len"] == 2048 and kw["hf_overrides"] == {"max_position_embeddings": 2048}
    assert kw["seed"] == 3 and kw["dtype"] == "bfloat16" and kw["distributed_executor_backend"] is None
    with pytest.raises(ValueError, match="max_model_len"):  # vLLM refuses more than the config allows
        VLLMEngine(str(tiny_model_dir), tok, max_model_len=2048)
    small = VLLMEngine(str(tiny_model_dir), tok, max_model_len=8)
    with pytest.raises(ValueError, match="longer than the maximum model length"):
        small.generate(["Compute 12345+67890, then explain."], n=1, max_new_tokens=4)
    with pytest.raises(TypeError):  # keyword-only after the tokenizer, max_model_len required
        VLLMEngine(str(tiny_model_dir), tok)


def test_fake_rejects_names_outside_its_lists(fake_vllm, tiny_model_dir):
    with pytest.raises(TypeError, match="swap_space"):
        fake_vllm.LLM(model=str(tiny_model_dir), swap_space=True)
    with pytest.raises(TypeError, match="top_k"):
        fake_vllm.SamplingParams(n=2, top_k=5)


def test_resolve_backend_and_make_engine(fake_vllm, tiny_model_dir):
    model, tok = load(tiny_model_dir)
    assert resolve_backend("hf") == "hf" and resolve_backend("vllm") == "vllm"
    assert resolve_backend("auto") == ("vllm" if torch.cuda.is_available() else "hf")  # vllm imports (the fake)
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("sglang")
    eng = make_engine("vllm", model, tok, str(tiny_model_dir), max_model_len=128, gpu_memory_utilization=0.3)
    assert isinstance(eng, VLLMEngine) and eng.llm.kwargs["gpu_memory_utilization"] == 0.3
    assert isinstance(make_engine("hf", model, tok, str(tiny_model_dir)), rollout.HFEngine)


# ---------------------------------------------------------------------------------------------------------
# weights


def perturb(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_sync_weights_lands_in_vllm_fused_parameters(fake_vllm, tiny_model_dir):
    model, tok = load(tiny_model_dir)
    eng = VLLMEngine(str(tiny_model_dir), tok, max_model_len=256, in_process=True)
    vm = eng.llm.model
    sd = model.state_dict()
    assert "model.layers.0.self_attn.qkv_proj.weight" in vm.params and "lm_head.weight" not in vm.params  # tied
    before = {n: vm.hf_view(n).clone() for n in sd}
    for n, t in sd.items():  # the engine loaded the checkpoint: bf16 copies of the trainer's weights
        assert torch.equal(before[n], t.to(torch.bfloat16)), n
    perturb(model)
    eng.sync_weights(model)
    assert eng.llm.calls[-2:] == ["reload_weights", "reset_prefix_cache"]  # stale prefix KV dropped after the load
    assert [n for n, _ in vm.received] == list(sd.keys())  # every state-dict entry, in order, once
    for n, t in model.state_dict().items():
        after = vm.hf_view(n)
        assert after.dtype == torch.bfloat16 and torch.equal(after, t.to(torch.bfloat16)), n
        assert not torch.equal(after, before[n]), n
    # q, k and v land in their own rows of qkv_proj (a wrong slice would overwrite a neighbour)
    attn = model.model.layers[0].self_attn
    qkv = vm.params["model.layers.0.self_attn.qkv_proj.weight"]
    assert torch.equal(qkv, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).to(torch.bfloat16))

    with torch.no_grad():  # the next sync carries the new values, not a cached copy
        model.model.embed_tokens.weight.add_(1.0)
    eng.sync_weights(model)
    assert torch.equal(vm.params["model.embed_tokens.weight"], model.model.embed_tokens.weight.to(torch.bfloat16))

    out_of_process = VLLMEngine(str(tiny_model_dir), tok, max_model_len=256)
    with pytest.raises(RuntimeError, match="in_process"):
        out_of_process.sync_weights(model)


def test_colocated_sleep_wake_sync(fake_vllm, tiny_model_dir):
    model, tok = load(tiny_model_dir)
    eng = ColocatedVLLM(str(tiny_model_dir), tok, max_model_len=256, sleep_mode=True, seed=1)
    assert eng.llm.kwargs["enable_sleep_mode"] is True and eng.llm.in_process
    assert eng.generate([], n=2, max_new_tokens=4) == []  # a rank without prompts makes no call
    eng.generate(["Compute 1+1."], n=2, max_new_tokens=4)
    eng.sleep()
    with pytest.raises(RuntimeError, match="sleeps"):
        eng.generate(["Compute 1+1."], n=2, max_new_tokens=4)
    perturb(model)
    eng.wake_up()
    eng.sync_weights(model)
    assert eng.llm.calls == ["generate", "sleep1", "wake_up", "reload_weights", "reset_prefix_cache"]
    for n, t in model.state_dict().items():
        assert torch.equal(eng.llm.model.hf_view(n), t.to(torch.bfloat16)), n
    off = ColocatedVLLM(str(tiny_model_dir), tok, max_model_len=256)
    off.sleep()
    off.wake_up()
    assert off.llm.calls == []  # level-1 sleep only with --sleep-mode


# ---------------------------------------------------------------------------------------------------------
# _from_vllm on literal outputs


def out(token_ids, logprobs, finish="stop", text="x"):
    return CompletionOutput(0, text, token_ids, None, logprobs, finish)


def test_from_vllm_reads_the_sampled_tokens_logprob():
    c = _from_vllm(out([5, 7, 2], [{5: Logprob(-0.5), 9: Logprob(-0.1)}, {7: Logprob(-2.25)}, {2: Logprob(-0.0)}],
                       text="ab"))
    assert (c.token_ids, c.logprobs, c.text, c.finish_reason) == ([5, 7, 2], [-0.5, -2.25, 0.0], "ab", "stop")
    assert _from_vllm(out([4], [{4: Logprob(-1.5)}], "length")).finish_reason == "length"
    assert _from_vllm(out([4], [{4: Logprob(-1.5)}], "abort")).finish_reason == "abort"  # not "stop"
    assert _from_vllm(out([], [], "abort")).token_ids == []


def test_from_vllm_fails_on_missing_logprobs_or_unknown_finish():
    with pytest.raises(RuntimeError, match="no log-probs"):
        _from_vllm(out([5, 7], None))
    with pytest.raises(RuntimeError, match="2 log-prob entries for 3"):
        _from_vllm(out([5, 7, 8], [{5: Logprob(-1.0)}, {7: Logprob(-1.0)}]))
    with pytest.raises(RuntimeError, match="sampled token 7 at position 1"):
        _from_vllm(out([5, 7], [{5: Logprob(-1.0)}, {8: Logprob(-1.0)}]))
    with pytest.raises(RuntimeError, match="'error'"):
        _from_vllm(out([5], [{5: Logprob(-1.0)}], "error"))


# ---------------------------------------------------------------------------------------------------------
# the names the code passes are the fake's (checked against vLLM 0.33.0 by scripts/check_vllm_api.py)


def project_files():
    files = sorted(ROOT.glob("lib/**/*.py")) + sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("scripts/*.py"))
    return [f for f in files if f.name != "check_vllm_api.py"]  # it reads vLLM's source, calls nothing


def call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def vllm_uses():
    """(file:line, kind, name) for every vLLM name the code passes or reads."""
    uses = []
    for f in project_files():
        tree = ast.parse(f.read_text(), str(f))
        where = lambda n, f=f: f"{f.relative_to(ROOT)}:{n.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
                uses += [(where(node), "import", f"{node.module}.{a.name}") for a in node.names]
            if isinstance(node, ast.Import):
                uses += [(where(node), "import", a.name) for a in node.names if a.name.split(".")[0] == "vllm"
                         and a.name != "vllm"]
            if not isinstance(node, ast.Call):
                continue
            name = call_name(node)
            if name in ("LLM", "SamplingParams"):
                for k in node.keywords:
                    uses.append((where(node), name, k.arg))  # k.arg None: a **dict nobody can check
            f_ = node.func
            if isinstance(f_, ast.Attribute) and isinstance(f_.value, ast.Attribute) and f_.value.attr == "llm":
                uses.append((where(node), "llm", f_.attr))
                uses += [(where(node), f"llm.{f_.attr}", k.arg) for k in node.keywords]
                if f_.attr == "collective_rpc":  # the worker method by name, its keywords as a dict literal
                    method = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
                    uses.append((where(node), "worker", method))
                    for k in node.keywords:
                        if k.arg == "kwargs" and isinstance(k.value, ast.Dict):
                            uses += [(where(node), f"worker.{method}", d.value) for d in k.value.keys]
            if isinstance(f_, ast.Attribute) and isinstance(f_.value, ast.Name) and f_.value.id == "current_platform":
                uses.append((where(node), "platform", f_.attr))
        for fn in ast.walk(tree):  # prompt dicts built in a function that calls .llm.generate
            if isinstance(fn, ast.FunctionDef) and any(
                    isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "generate"
                    and isinstance(c.func.value, ast.Attribute) and c.func.value.attr == "llm" for c in ast.walk(fn)):
                for d in ast.walk(fn):
                    if isinstance(d, ast.Dict):
                        uses += [(where(d), "prompt", k.value) for k in d.keys if isinstance(k, ast.Constant)]
    return uses


def test_code_passes_only_listed_vllm_names():
    allowed = {"LLM": LLM_KWARGS, "SamplingParams": SAMPLING_PARAMS_FIELDS, "llm": tuple(LLM_METHODS),
               "import": IMPORTS, "prompt": PROMPT_FIELDS, "worker": tuple(WORKER_METHODS),
               "platform": PLATFORM_METHODS, **{f"llm.{m}": args for m, args in LLM_METHODS.items()},
               **{f"worker.{m}": args for m, args in WORKER_METHODS.items()}}
    uses = vllm_uses()
    kinds = {k for _, k, _ in uses}
    assert {"LLM", "SamplingParams", "llm", "import", "worker", "platform"} <= kinds  # the scan sees the glue
    bad = [u for u in uses if u[2] not in allowed[u[1]]]
    assert bad == [], f"names not in tests/fake_vllm.py's lists (add them, then run scripts/check_vllm_api.py): {bad}"
    # the prompts the engine builds: {"prompt_token_ids": ...}
    assert ("prompt", "prompt_token_ids") in {(k, n) for _, k, n in uses}


def test_from_vllm_reads_only_listed_output_fields():
    src = (ROOT / "lib" / "engine" / "rollout.py").read_text()
    tree = ast.parse(src)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_from_vllm")
    arg = fn.args.args[0].arg
    read = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == arg}
    assert read and read <= set(COMPLETION_OUTPUT_FIELDS), read
    lp = {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Subscript)}
    assert lp == set(LOGPROB_FIELDS)  # d[t].logprob
    gen = next(n for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "VLLMEngine" for n in c.body
               if isinstance(n, ast.FunctionDef) and n.name == "generate")
    on_outputs = {n.attr for n in ast.walk(gen) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                  and n.value.id in ("o",)}
    assert on_outputs <= set(REQUEST_OUTPUT_FIELDS) and on_outputs
    on_comp = {n.attr for n in ast.walk(gen) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
               and n.value.id == "c"}
    assert on_comp <= set(COMPLETION_OUTPUT_FIELDS)


def test_sync_check_script_runs_without_a_gpu(fake_vllm, capsys):
    """scripts/vllm_sync_check.py (the GPU check): its --dry-run passes on CPU and fails with --noise 0 (old and
    new weights indistinguishable); its vLLM path runs end to end on the fake (which is not a language model,
    so its verdict is FAIL)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vllm_sync_check", ROOT / "scripts" / "vllm_sync_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.main(["--dry-run", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("PASS vllm_sync_check: HF (dry run")
    assert check.main(["--dry-run", "--max-new-tokens", "8", "--noise", "0"]) == 1
    assert "cannot tell old from new" in capsys.readouterr().out
    assert check.main(["--max-new-tokens", "8"]) == 1
    assert capsys.readouterr().out.startswith("FAIL vllm_sync_check: vLLM greedy")
    assert fake_vllm.LLM.instances[-1].calls == ["generate"] + ["reload_weights", "reset_prefix_cache", "generate"] * 2
