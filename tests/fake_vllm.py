"""A stand-in for vLLM 0.33.0's offline API, strict about names (CI has no GPU and no vllm).

Installed as `sys.modules["vllm"]` by the `fake_vllm` fixture. It accepts exactly the names the project uses,
listed below; any other keyword is a TypeError, as it would be for a name vLLM does not know. Every listed
name is checked against the real vLLM 0.33.0 source by scripts/check_vllm_api.py, and tests/test_vllm_fake.py
scans the code for the names it passes, so a new name has to be added here and then passes that check.

What it models, as vLLM 0.33 does it (file:line of 0.33.0 in the constants' comments):
  * sampling: a request with n > 1 becomes n child requests, child j seeded with seed + j; a request without
    a seed draws from the engine's own generator (LLM(seed=...)). The fake's "model" draws token ids from a
    torch.Generator so seeded with (and from the prompt): deterministic, not a language model.
  * outputs: RequestOutput.outputs, CompletionOutput(index, text, token_ids, logprobs, finish_reason,
    stop_reason), one {token_id: Logprob} dict per sampled token when SamplingParams(logprobs=0)
  * max_model_len above the config's max_position_embeddings: ValueError unless hf_overrides raises it (or
    VLLM_ALLOW_LONG_MAX_MODEL_LEN=1); a prompt longer than max_model_len: ValueError; a response reaching
    it: finish "length"
  * weights: collective_rpc("reload_weights", kwargs={weights_iterator, is_checkpoint_format}) hands the
    iterator to a Qwen2-shaped module whose parameters are REAL tensors under vLLM's fused names (qkv_proj,
    gate_up_proj); its load_weights maps transformers names onto slices of them and skips lm_head.weight when
    embeddings are tied. A generator can only reach the worker with the engine core in process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0 when LLM(...) was built), as our glue assumes.
  * sleep(level) / wake_up(tags): only with enable_sleep_mode; nothing may run while asleep.
  * the platform: vllm.platforms.current_platform is a GPU (is_cpu() False, sleep mode available).
"""
from __future__ import annotations

import json
import math
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# ---- the names the project uses (each checked against vLLM 0.33.0 by scripts/check_vllm_api.py) ----------

# LLM.__init__ keywords (vllm/entrypoints/llm.py:177; names it does not list go through **kwargs to EngineArgs,
# vllm/engine/arg_utils.py:489)
LLM_KWARGS = ("model", "tensor_parallel_size", "gpu_memory_utilization", "dtype", "seed", "max_model_len",
              "hf_overrides", "enable_sleep_mode", "trust_remote_code", "distributed_executor_backend",
              "logprobs_mode", "enable_chunked_prefill", "enforce_eager")
# LLM methods called on the engine's `.llm`, with the parameter names the project passes (or relies on)
LLM_METHODS = {
    "generate": ("prompts", "sampling_params", "use_tqdm"),
    "collective_rpc": ("method", "kwargs"),
    "reset_prefix_cache": (),
    "sleep": ("level",),
    "wake_up": ("tags",),
}
# worker methods called through LLM.collective_rpc(method, kwargs=...), with the keywords passed
# (vllm/v1/worker/gpu_worker.py: Worker.reload_weights -> GPUModelRunner.reload_weights, gpu_model_runner.py)
WORKER_METHODS = {"reload_weights": ("weights_iterator", "is_checkpoint_format")}
# vllm.platforms.current_platform methods the project calls (vllm/platforms/interface.py: Platform)
PLATFORM_METHODS = ("is_cpu", "is_sleep_mode_available")
# SamplingParams fields (vllm/sampling_params.py:271)
SAMPLING_PARAMS_FIELDS = ("n", "temperature", "top_p", "max_tokens", "seed", "logprobs", "skip_special_tokens")
# vllm/outputs.py: RequestOutput attributes, CompletionOutput fields; vllm/logprobs.py: Logprob fields
REQUEST_OUTPUT_FIELDS = ("outputs",)
COMPLETION_OUTPUT_FIELDS = ("index", "text", "token_ids", "logprobs", "finish_reason", "stop_reason")
LOGPROB_FIELDS = ("logprob",)
# finish reasons the project accepts (vllm/v1/engine/__init__.py:37 FINISH_REASON_STRINGS)
FINISH_REASONS = ("stop", "length", "abort")
# prompt dict keys (vllm/inputs/llm.py:111 TokensPrompt)
PROMPT_FIELDS = ("prompt_token_ids",)
# environment variables the project sets or documents (vllm/envs.py)
ENV_VARS = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_ALLOW_LONG_MAX_MODEL_LEN")
# hf_overrides keys the stages pass; each must be a key vLLM derives the context limit from
# (vllm/transformers_utils/model_arch_config_convertor.py:374)
HF_OVERRIDE_KEYS = ("max_position_embeddings",)
# `from vllm... import name` statements in the project
IMPORTS = ("vllm.LLM", "vllm.SamplingParams", "vllm.distributed.parallel_state.destroy_model_parallel",
           "vllm.distributed.parallel_state.destroy_distributed_environment", "vllm.platforms.current_platform")
# Qwen2's transformers -> vLLM name mapping (vllm/model_executor/models/qwen2.py:325)
QWEN2_STACKED = {".q_proj": (".qkv_proj", "q"), ".k_proj": (".qkv_proj", "k"), ".v_proj": (".qkv_proj", "v"),
                 ".gate_proj": (".gate_up_proj", 0), ".up_proj": (".gate_up_proj", 1)}
# child j of an n > 1 request is seeded with seed + j (vllm/v1/engine/parallel_sampling.py:81)
CHILD_SEED = "seed + index"
# the logprobs_mode the engine asks for: log-softmax of the logits it samples from, after temperature / top-p; one
# of ModelConfig's LogprobsMode values (vllm/config/model.py)
LOGPROBS_MODE = "processed_logprobs"


def _only(names, allowed, what):
    bad = sorted(set(names) - set(allowed))
    if bad:
        raise TypeError(f"{what} got unexpected keyword argument(s) {bad}: not in tests/fake_vllm.py's list of "
                        f"names checked against vLLM 0.33.0")


# ---- outputs ------------------------------------------------------------------------------------------------


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class RequestOutput:
    def __init__(self, request_id, prompt, prompt_token_ids, outputs, finished=True):
        self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
        self.outputs, self.finished = outputs, finished


class SamplingParams:
    def __init__(self, **kw):
        _only(kw, SAMPLING_PARAMS_FIELDS, "SamplingParams")
        self.n, self.temperature, self.top_p = kw.get("n", 1), kw.get("temperature", 1.0), kw.get("top_p", 1.0)
        self.max_tokens, self.seed = kw.get("max_tokens", 16), kw.get("seed")
        self.logprobs, self.skip_special_tokens = kw.get("logprobs"), kw.get("skip_special_tokens", True)
        if self.seed == -1:
            self.seed = None
        if not 0 < self.top_p <= 1 or self.n < 1 or self.temperature < 0:
            raise ValueError(f"bad SamplingParams n={self.n} temperature={self.temperature} top_p={self.top_p}")


# ---- the model inside the engine: vLLM's fused Qwen2 parameter layout ------------------------------------------


class FakeQwen2:
    """Parameters under vLLM's names, loaded the way vLLM's Qwen2ForCausalLM.load_weights maps them."""

    def __init__(self, cfg: dict, hf_weights: dict, dtype: torch.dtype):
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        q, kv, inter = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["intermediate_size"]
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        # shard id -> (start, length) along dim 0 of the fused parameter
        self.shards = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv), 0: (0, inter), 1: (inter, inter)}
        self.params: dict[str, torch.Tensor] = {}
        for name, t in hf_weights.items():
            target, shard = self._map(name)
            if target is None:
                continue
            if shard is None:
                self.params[target] = t.to(dtype).clone()
                continue
            start, length = self.shards[shard]
            fused = self.params.setdefault(target, torch.zeros((2 * inter if shard in (0, 1) else q + 2 * kv,)
                                                               + tuple(t.shape[1:]), dtype=dtype))
            fused[start:start + length] = t.to(dtype)
        self.loads, self.received = 0, []

    def _map(self, name: str):
        if "rotary_emb.inv_freq" in name:
            return None, None
        if name == "lm_head.weight" and self.tied:  # an alias of model.embed_tokens.weight: skipped
            return None, None
        for old, (new, shard) in QWEN2_STACKED.items():
            if old in name:
                return name.replace(old, new, 1), shard
        return name, None

    def load_weights(self, weights) -> set[str]:
        loaded, skipped_alias = set(), False
        self.received = []  # (transformers name, tensor as handed over) of this call, for tests
        for name, t in weights:
            self.received.append((name, t.clone()))
            if self.tied and name == "lm_head.weight":
                skipped_alias = True
            target, shard = self._map(name)
            if target is None:
                continue
            if target not in self.params:
                if name.endswith(".bias"):  # vLLM ignores unexpected biases
                    continue
                raise ValueError(f"There is no module or parameter named {target!r} in Qwen2ForCausalLM")
            p = self.params[target]
            if shard is not None:
                start, length = self.shards[shard]
                p = p[start:start + length]
            if tuple(p.shape) != tuple(t.shape):
                raise AssertionError(f"{name}: loaded weight {tuple(t.shape)} != parameter slice {tuple(p.shape)}")
            p.copy_(t)
            loaded.add(target)
        if skipped_alias and "model.embed_tokens.weight" not in loaded:
            raise ValueError("'lm_head.weight' was skipped because it is tied to 'model.embed_tokens.weight', "
                             "but 'model.embed_tokens.weight' was not found in the checkpoint")
        self.loads += 1
        return loaded

    def hf_view(self, name: str) -> torch.Tensor:
        """The slice of a fused parameter that holds transformers' tensor `name`."""
        if self.tied and name == "lm_head.weight":
            name = "model.embed_tokens.weight"
        target, shard = self._map(name)
        p = self.params[target]
        if shard is None:
            return p
        start, length = self.shards[shard]
        return p[start:start + length]


# ---- LLM ----------------------------------------------------------------------------------------------------


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class LLM:
    instances: list[LLM] = []

    def __init__(self, model: str, **kw):
        _only(kw, LLM_KWARGS, "LLM")
        self.kwargs = {"model": model, **kw}
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"
        if kw.get("distributed_executor_backend") == "external_launcher":
            if not self.in_process:  # vllm/v1/executor/uniproc_executor.py:180
                raise AssertionError("To get deterministic execution, please set VLLM_ENABLE_V1_MULTIPROCESSING=0")
            if "RANK" not in os.environ:
                raise KeyError("RANK: the external_launcher executor runs under torchrun")
        folder = Path(model)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(kw.get("hf_overrides") or {})
        derived = cfg.get("max_position_embeddings", 2048)
        self.max_model_len = kw.get("max_model_len") or derived
        if self.max_model_len > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0") not in ("1", "true"):
            raise ValueError(f"User-specified max_model_len ({self.max_model_len}) is greater than the derived "
                             f"max_model_len (max_position_embeddings={derived} or model_max_length=None in "
                             f"model's config.json).")
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        hf = {}
        for f in sorted(folder.glob("*.safetensors")):
            hf.update(load_file(f))
        dtype = kw.get("dtype", "auto")
        dtype = DTYPES[dtype] if dtype != "auto" else DTYPES.get(cfg.get("torch_dtype") or cfg.get("dtype"),
                                                                torch.float32)
        self.model = FakeQwen2(cfg, hf, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.eos = cfg.get("eos_token_id")
        self.eos = self.eos[0] if isinstance(self.eos, list) else self.eos
        self.vocab = cfg["vocab_size"]
        self.rng = torch.Generator().manual_seed(kw.get("seed", 0))  # for requests without a seed of their own
        self.asleep, self.calls = False, []
        LLM.instances.append(self)

    def _awake(self, what):
        if self.asleep:
            raise RuntimeError(f"LLM.{what} while the engine sleeps (wake_up first)")

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True):
        self._awake("generate")
        self.calls.append("generate")
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        params = sampling_params if sampling_params is not None else SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):  # vllm/entrypoints/common/offline.py:259
            raise ValueError(f"The lengths of prompts ({len(prompts)}) and params ({len(params)}) must be the same.")
        outs = []
        for r, (p, sp) in enumerate(zip(prompts, params)):
            if isinstance(p, dict):
                _only(p, PROMPT_FIELDS, "prompt dict")
            ids = list(p["prompt_token_ids"]) if isinstance(p, dict) else self.tokenizer(p)["input_ids"]
            if len(ids) > self.max_model_len:
                raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length "
                                 f"of {self.max_model_len}.")
            comps = [self._sample(ids, sp, j) for j in range(sp.n)]
            outs.append(RequestOutput(str(r), p if isinstance(p, str) else None, ids, comps))
        return outs

    def _sample(self, ids, sp: SamplingParams, j: int) -> CompletionOutput:
        gen = torch.Generator().manual_seed(sp.seed + j) if sp.seed is not None else self.rng
        cap = min(sp.max_tokens, self.max_model_len - len(ids))
        offset = sum(ids) * 7919  # the "distribution" depends on the prompt as well as on the random stream
        toks, stopped = [], False
        for _ in range(cap):
            u = torch.rand((), generator=gen).item()
            if sp.temperature == 0:
                u = ((offset % 101) / 101 + len(toks) * 0.37) % 1.0  # greedy: no randomness
            t = (int(u * self.vocab) + offset) % self.vocab
            toks.append(t)
            if t == self.eos or u < 0.05:  # the fake ends ~1 in 20 positions
                toks[-1] = self.eos
                stopped = True
                break
        lps = [{t: Logprob(-math.log(self.vocab), rank=1)} for t in toks] if sp.logprobs is not None else None
        text = self.tokenizer.decode(toks, skip_special_tokens=sp.skip_special_tokens)
        return CompletionOutput(j, text, toks, None, lps, "stop" if stopped else "length")

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self._awake("collective_rpc")
        kwargs = dict(kwargs or {})
        if method not in WORKER_METHODS:
            raise AttributeError(f"the fake worker has no method {method!r} (listed: {sorted(WORKER_METHODS)})")
        _only(kwargs, WORKER_METHODS[method], f"Worker.{method}")
        if not self.in_process:
            raise RuntimeError("collective_rpc with the engine core in another process pickles its arguments: a "
                               "generator cannot travel (set VLLM_ENABLE_V1_MULTIPROCESSING=0 before LLM(...))")
        if not kwargs.get("is_checkpoint_format", True):
            raise ValueError("the fake reloads checkpoint-format weights only")
        self.calls.append(method)
        self.model.load_weights(kwargs["weights_iterator"])
        return [None]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append("reset_prefix_cache")
        return True

    def sleep(self, level: int = 1, mode: str = "abort"):
        if not self.kwargs.get("enable_sleep_mode"):
            raise ValueError("sleep() needs LLM(enable_sleep_mode=True)")
        self.asleep = True
        self.calls.append(f"sleep{level}")

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.asleep = False
        self.calls.append("wake_up")
        return True


class Platform:
    """vllm.platforms.current_platform of a CUDA machine."""

    def is_cpu(self) -> bool:
        return False

    def is_sleep_mode_available(self) -> bool:
        return True


def module() -> types.ModuleType:
    m = types.ModuleType("vllm")
    m.LLM, m.SamplingParams, m.RequestOutput, m.CompletionOutput = LLM, SamplingParams, RequestOutput, CompletionOutput
    m.__file__ = __file__
    m.platforms = types.ModuleType("vllm.platforms")
    m.platforms.current_platform = Platform()
    return m


@pytest.fixture
def fake_vllm(monkeypatch):
    """`import vllm` gives this fake for one test; the environment variables the glue sets are restored."""
    LLM.instances.clear()
    m = module()
    monkeypatch.setitem(sys.modules, "vllm", m)
    monkeypatch.setitem(sys.modules, "vllm.platforms", m.platforms)
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    yield sys.modules["vllm"]
    LLM.instances.clear()
