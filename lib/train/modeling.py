"""The policy: load / save a `from_pretrained` folder, and the forward pass that scores tokens.

Both training stages (explore.py's DAPO update, consolidate.py's SFT) and the rollout engine's HF backend go
through these functions, so "log-prob of a token" means the same thing everywhere.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from lib.run.cli import UserError, replace_dir
from lib.run.data import prompt_lengths


def _check_folder(path: str) -> None:
    """A local model folder must hold a config and a tokenizer: say which is missing before transformers does."""
    local = Path(path)
    if local.exists() or not _looks_like_hub_id(path):
        if not local.is_dir():
            raise UserError(f"{path}: model folder does not exist")
        if not (local / "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        if not any((local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise UserError(f"{path}: model folder has no tokenizer (tokenizer.json / tokenizer_config.json)")


def _load_error(path: str, e: Exception) -> UserError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    if "mismatched" in msg:
        msg = "weight shapes do not match config.json"
    return UserError(f"{path}: cannot load model/tokenizer ({msg})")


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """The tokenizer alone (a vLLM stage needs no HF weights), with a pad id for batching."""
    path = str(spec)
    _check_folder(path)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(path, e) from None
    if tok.pad_token_id is None:  # batching needs a pad id; it is always masked out
        tok.pad_token = tok.eos_token
    return tok


def load_config(spec: str, trust_remote_code: bool = False):
    """The model's config.json (its context length, for one): no weights are read."""
    path = str(spec)
    _check_folder(path)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(path, e) from None


def load_policy(spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                trust_remote_code: bool = False):
    """(model, tokenizer) from a local folder or a hub id. Errors name the path and what is missing.

    The model is loaded on the CPU, then moved to `device`, except where many ranks would each hold a whole copy on
    the host (lib/train/shardload reads the safetensors files instead):
      "meta"                  (a policy FSDP will shard) the model's skeleton, whose weights stay in their files until
                              dist.shard_model (update.prepare) shards it: each rank then reads only its shard
      a GPU, under torchrun   (an HF engine per rank) the weights read onto the GPU a chunk of rows at a time
    A folder whose files the skeleton cannot read (no safetensors, renamed keys) loads as from_pretrained loads it,
    on the CPU (for "meta": the whole model on every rank, as FSDP's input), and one line on stderr says so."""
    path = str(spec)
    _check_folder(path)  # a wrong path fails in a blink, not after two seconds of importing transformers
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from lib.train import dist, shardload

    dev = torch.device(device)
    direct = dev.type == "meta" or (dev.type == "cuda" and dist.is_distributed())
    hf_logging.disable_progress_bar()  # no "Loading weights" bars in every stage's log
    # transformers only *warns* (a multi-line report) when weights are missing and then initialises them at
    # random: a policy that silently is not the one on disk. We silence the report and fail on it instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = load_tokenizer(path, trust_remote_code)
        model, why = (shardload.skeleton(path, load_config(path, trust_remote_code), dtype, trust_remote_code)
                      if direct else (None, ""))
        if model is None:
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                               output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        # OSError: missing files / hub; ValueError: bad JSON; SafetensorError: truncated weights;
        # RuntimeError: weights whose shapes do not match config.json
        raise _load_error(path, e) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if shardload.is_skeleton(model):
        if dev.type != "meta":
            shardload.materialise(model, dev)
        return model, tok
    if why and dist.is_main():
        print(f"{path}: every rank loads the whole model on its CPU ({why})", file=sys.stderr)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(f"{path}: cannot load model ({len(missing)} weights missing from the checkpoint, "
                        f"e.g. {missing[0]})")
    if dev.type != "meta":
        model.to(dev)
    return model, tok


# ---------------------------------------------------------------------------------------------------------
# Context length: prompt + response tokens. Qwen2.5-Math-7B's config says 4096 (max_position_embeddings), DAPO
# samples 20,480-token responses: its recipe raises the config to 32768. vLLM caps every sequence at the model's
# length unless told otherwise, so a stage that does not plan the context trains on silently shortened responses.


def plan_context(config, longest_prompt: int, max_new_tokens: int, max_model_len: int = 0,
                 model: str = "the model", max_prompt_len: int = 0) -> tuple[int, dict | None]:
    """(context, config overrides) for sampling up to max_new_tokens after the longest prompt.

    With max_prompt_len (--max-prompt-len: longer prompts are dropped at load time, lib/run/data.drop_long_prompts)
    the context is planned for a prompt of that length instead of the longest one present, so it holds whatever
    the cap lets through. Without max_model_len (--max-model-len 0) the model's own max_position_embeddings must
    hold the prompt + max_new_tokens, or one line says both numbers and the flag. With it, the context is
    max_model_len (it must hold them too), and when it exceeds the config the override
    {"max_position_embeddings": N} is returned: vLLM gets it as hf_overrides, the trained model's config is raised
    (extend_context), and every checkpoint saved from it carries N, so later stages load it at the same length
    without the flag."""
    native = int(getattr(config, "max_position_embeddings", 0) or 0)
    prompt = (f"--max-prompt-len ({max_prompt_len})" if max_prompt_len
              else f"the longest prompt ({longest_prompt} tokens)")
    need = (max_prompt_len or longest_prompt) + max_new_tokens
    if max_model_len:
        if need > max_model_len:
            raise UserError(f"{prompt} + --max-new-tokens ({max_new_tokens}) = {need} tokens exceed --max-model-len "
                            f"{max_model_len}")
        ctx = max_model_len
    elif native and need > native:
        raise UserError(f"{prompt} + --max-new-tokens ({max_new_tokens}) = {need} tokens exceed {model}'s context "
                        f"({native}, its max_position_embeddings); pass --max-model-len N with N >= {need} "
                        f"(DAPO's recipe: 32768)")
    else:
        ctx = native or need
    return ctx, ({"max_position_embeddings": ctx} if native and ctx > native else None)


def extend_context(model, overrides: dict | None) -> None:
    """Apply plan_context's overrides to a loaded model's config (saved with every checkpoint)."""
    for k, v in (overrides or {}).items():
        setattr(model.config, k, v)


def longest_prompt(tokenizer, prompts: list[str]) -> int:
    """Tokens of the longest prompt (as the engines tokenize them: no special tokens added)."""
    return max(prompt_lengths(tokenizer, prompts), default=0)


def _looks_like_hub_id(path: str) -> bool:
    """'Qwen/Qwen2.5-Math-7B' style: one slash, no leading '.' or '/'."""
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith(".")


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids a completion may end on: the tokenizer's and the generation config's (Qwen chat models stop
    on <|im_end|> as well as <|endoftext|>)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    return sorted(ids)


def end_of_turn_id(model, tokenizer) -> int | None:
    """The stop token a policy ends its answers with: the stop id (stop_token_ids) whose text the chat template
    writes at the end of a turn (Qwen's ChatML: <|im_end|>, while its eos_token is <|endoftext|>), else the
    tokenizer's eos. For RFT on records without sampled ids."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, str):
        for i in stop_token_ids(model, tokenizer):
            token = tokenizer.convert_ids_to_tokens(i)
            if token and token in template:
                return i
    return tokenizer.eos_token_id


def save_policy(model, tokenizer, out_dir: str | os.PathLike) -> None:
    """Write a folder that `from_pretrained` (and vLLM) load as it is: safetensors weights, config,
    generation config and tokenizer. Written to a temp folder, then renamed into place (atomic)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out_dir)


def pad_rows(rows: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [b, T], attention mask [b, T]), padded on the right (or the left) to the longest."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    for j, r in enumerate(rows):
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        ids[j, sl] = torch.tensor(r, dtype=torch.long)
        attn[j, sl] = 1
    return ids, attn


def cache_keyword(model) -> str:
    """The name the model's forward takes its KV cache under: `cache` (transformers >= 5.x) or
    `past_key_values` (4.x; 5.x still accepts it, with a deprecation warning on every call)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# Tokens per chunk of the LM head in the training forward. The full logits of a DAPO-length sequence do not fit:
# 20,480 tokens x 152,064 vocabulary x 4 bytes = 12.5 GB in fp32, several times over in backward. Each chunk's
# logits exist only inside its chunk ([LOGPROB_CHUNK, V], forward and again in backward), so the memory beyond the
# backbone's own activations is a few chunk x V tensors whatever the sequence length. 256 tokens x 152k x 4 bytes =
# 156 MB; the matmul per chunk (256 x hidden x V) is still large enough to run at full speed on a GPU.
LOGPROB_CHUNK = 256


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                         with_entropy: bool = False):
    """logits [..., V] predicting targets [...] -> log p(target) [...] under softmax(logits / temperature)
    (and the entropy [...] of that distribution). No full-vocabulary log-softmax is kept: logsumexp + gather."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)  # [...]
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse  # [...]
    if not with_entropy:
        return logp
    with torch.no_grad():  # entropy is logged, not optimised
        ent = lse - (torch.softmax(z, dim=-1) * z).sum(-1)  # H = logsumexp(z) - sum p z
    return logp, ent


class _ChunkedHead(torch.autograd.Function):
    """log p(y) (and entropy) through the LM head, a chunk of tokens at a time, in forward AND backward.

    Forward keeps only the inputs and each token's logsumexp ([N] floats); backward recomputes one chunk's
    logits at a time and writes its gradient straight into the head's gradient buffer (addmm_), so no [N, V]
    tensor, and no second [V, H] gradient, ever exists. Under autocast the head's matmul runs in the autocast
    dtype, as it would inside the model's own forward; softmax and logsumexp run in fp32.
    For one chunk of logits z = (h W^T + b) / T:  d log p(y) / dz = onehot(y) - softmax(z).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, y, temperature, chunk, with_entropy):
        # h [N, H], weight [V, H], bias [V] or None, y [N] -> logp [N], entropy [N] (zeros unless with_entropy)
        dev = h.device.type
        dt = torch.get_autocast_dtype(dev) if _autocast_on(dev) else weight.dtype
        N = h.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=h.device)
        lse = torch.empty(N, dtype=torch.float32, device=h.device)
        ent = torch.zeros(N, dtype=torch.float32, device=h.device)
        with _no_autocast(dev):
            w, b = weight.to(dt), (bias.to(dt) if bias is not None else None)
            for s in range(0, N, chunk):
                z = _chunk_logits(h[s:s + chunk].to(dt), w, b, temperature)  # [c, V] fp32
                lse[s:s + chunk] = torch.logsumexp(z, dim=-1)
                logp[s:s + chunk] = z.gather(-1, y[s:s + chunk, None]).squeeze(-1) - lse[s:s + chunk]
                if with_entropy:  # H = lse - sum p z; z becomes p in place, the dot product needs no [c, V] temp
                    p_ = (z - lse[s:s + chunk, None]).exp_()
                    ent[s:s + chunk] = lse[s:s + chunk] - torch.bmm(p_.unsqueeze(1), z.unsqueeze(2)).view(-1)
                    del p_
                del z
        ctx.save_for_backward(h, weight, bias, y, lse)
        ctx.temperature, ctx.chunk, ctx.dt = temperature, chunk, dt
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, _g_ent):
        h, weight, bias, y, lse = ctx.saved_tensors
        T, chunk, dt = ctx.temperature, ctx.chunk, ctx.dt
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_h = torch.empty_like(h) if need_h else None  # [N, H]
        g_w = torch.zeros_like(weight) if need_w else None  # [V, H]: the head's gradient, filled chunk by chunk
        g_b = torch.zeros_like(bias) if need_b and bias is not None else None
        with _no_autocast(h.device.type):
            w, b = weight.to(dt), (bias.to(dt) if bias is not None else None)
            for s in range(0, h.shape[0], chunk):
                hc, g = h[s:s + chunk].to(dt), g_logp[s:s + chunk].float()  # [c, H], [c]
                # dz = g * (onehot(y) - softmax(z)), built in place over the recomputed logits; d/dlogits = dz / T
                dz = _chunk_logits(hc, w, b, T).sub_(lse[s:s + chunk, None]).exp_().mul_(-g[:, None])  # [c, V]
                dz.scatter_add_(-1, y[s:s + chunk, None], g[:, None])
                dz = dz.div_(T).to(dt)
                if g_h is not None:
                    g_h[s:s + chunk] = (dz @ w).to(h.dtype)
                if g_w is not None:
                    g_w.addmm_(dz.t().to(g_w.dtype), hc.to(g_w.dtype))
                if g_b is not None:
                    g_b += dz.sum(0).to(g_b.dtype)
                del dz
        return g_h, g_w, g_b, None, None, None, None


def _autocast_on(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _no_autocast(device_type: str):
    """Autocast off inside (the casts are explicit); a no-op where the device has no autocast ("meta")."""
    import contextlib

    ok = torch.amp.is_autocast_available(device_type)
    return torch.autocast(device_type, enabled=False) if ok else contextlib.nullcontext()


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """[c, H] x [V, H] (+ [V]) -> logits / temperature [c, V] in fp32."""
    z = (F.linear(h, w, b)).float()
    return z.div_(temperature) if temperature != 1.0 else z


def head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  with_entropy: bool = False, chunk: int = 0):
    """The LM head over final hidden states, a chunk of tokens at a time (_ChunkedHead).

    hidden [B, T, H] (what the LM head reads), targets [B, T] -> logp [B, T] (and entropy [B, T]), the numbers
    logprobs_from_logits(lm_head(hidden), targets) gives, with the same gradients. Memory beyond the inputs: a
    few [chunk, V] tensors in forward and in backward, whatever T is.
    """
    head = model.get_output_embeddings()
    B, T, H = hidden.shape
    h, y = hidden.reshape(B * T, H), targets.reshape(B * T)  # [N, H], [N]: chunks may span rows
    logp, ent = _ChunkedHead.apply(h, head.weight, head.bias, y, float(temperature), chunk or LOGPROB_CHUNK,
                                   with_entropy)
    return (logp.reshape(B, T), ent.reshape(B, T)) if with_entropy else logp.reshape(B, T)


def final_hidden(model, **inputs) -> torch.Tensor:
    """One model call -> the decoder's final hidden states [B, T, H] (after the final norm: what the LM head
    reads), without the full-vocabulary logits. The call goes through the model's own forward (FSDP's hooks,
    gradient checkpointing, KV cache all as usual) with logits_to_keep=1; a forward hook on the decoder keeps
    its output."""
    kept = {}

    def keep(_module, _inputs, output):
        kept["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = model.get_decoder().register_forward_hook(keep)
    try:
        model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    return kept["h"]


def _unchunkable(model) -> bool:
    """Models whose forward post-processes the logits (Gemma's soft-capping) keep the full-logits path."""
    if not hasattr(model, "get_decoder") or not hasattr(model, "get_output_embeddings"):
        return True  # not a transformers causal LM (a test's wrapper, say): the plain forward
    return bool(getattr(model.config, "final_logit_softcapping", None))


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False):
    """Log-prob of every token given its prefix, under softmax(logits / temperature).

    input_ids, attention_mask: [B, T] (right padding or left padding both fine: positions come from the mask)
    returns logp [B, T] where logp[:, t] = log p(input_ids[:, t] | input_ids[:, :t]); logp[:, 0] = 0.
    With with_entropy, also the entropy [B, T] of the predictive distribution at each position.
    The LM head runs a chunk of positions at a time (head_logprobs): memory O(chunk x V), not O(T x V).
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if _unchunkable(model):
        out = logprobs_from_logits(model(**inputs).logits[:, :-1], input_ids[:, 1:], temperature, with_entropy)
    else:
        hidden = final_hidden(model, **inputs)[:, :-1]  # [B, T-1, H]: position t predicts token t+1
        out = head_logprobs(model, hidden, input_ids[:, 1:], temperature, with_entropy)
    if not with_entropy:
        return F.pad(out, (1, 0))
    return tuple(F.pad(x, (1, 0)) for x in out)


def shared_prompt_logprobs(model, prompt_ids: torch.Tensor, prompt_attn: torch.Tensor, index: torch.Tensor,
                           response_ids: torch.Tensor, response_attn: torch.Tensor, temperature: float = 1.0,
                           with_entropy: bool = False):
    """What token_logprobs gives the response part of prompt + response rows, when many responses continue
    the same few prompts (a GRPO / DAPO group: n responses per prompt). Each prompt goes through the model
    once and its keys / values are copied to its responses, instead of running it n times: on the toy, where
    prompts are half of every row, an RL update does 38% fewer matmul FLOPs. Gradients flow through the shared
    prompt activations into every response's loss (the copy's backward sums them), as in the unshared forward.

    prompt_ids, prompt_attn: [G, P] LEFT-padded (the last column is every prompt's last token)
    index: [B] the prompt row each response continues
    response_ids, response_attn: [B, R] right-padded
    returns logp [B, R] where logp[:, t] = log p(response[:, t] | prompt, response[:, :t]) (and entropy [B, R]).
    Needs a KV cache in training mode: not with gradient checkpointing (transformers drops the cache there).
    The responses' LM head runs in chunks, as in token_logprobs.
    """
    from transformers import DynamicCache

    cache, kw = DynamicCache(), cache_keyword(model)
    pos = (prompt_attn.long().cumsum(-1) - 1).clamp(min=0)  # [G, P]
    first = model(input_ids=prompt_ids, attention_mask=prompt_attn, position_ids=pos, use_cache=True,
                  logits_to_keep=1, **{kw: cache}).logits[:, -1]  # [G, V]: predicts each response's first token
    cache.reorder_cache(index)  # keys / values [G, ...] -> [B, ...] (index_select: differentiable)
    R = response_ids.shape[1]
    attn = torch.cat([prompt_attn[index], response_attn], dim=1)  # [B, P + R]
    rpos = pos[index, -1:] + 1 + torch.arange(R, device=pos.device)  # [B, R]: positions continue the prompt's
    # (the last response token goes in too although nothing scores its prediction: the call is never empty,
    # so every FSDP rank makes the same two calls per micro-batch whatever its lengths)
    inputs = dict(input_ids=response_ids, attention_mask=attn, position_ids=rpos, use_cache=True, **{kw: cache})
    head = logprobs_from_logits(first[index], response_ids[:, 0], temperature, with_entropy)  # [B] (x2)
    if _unchunkable(model):
        rest = logprobs_from_logits(model(**inputs).logits[:, :-1], response_ids[:, 1:], temperature, with_entropy)
    else:  # [B, R-1, H]: response position t predicts token t+1
        rest = head_logprobs(model, final_hidden(model, **inputs)[:, :-1], response_ids[:, 1:], temperature,
                             with_entropy)
    if not with_entropy:
        return torch.cat([head.unsqueeze(1), rest], dim=1)
    return tuple(torch.cat([a.unsqueeze(1), b], dim=1) for a, b in zip(head, rest))
