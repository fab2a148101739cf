"""The policy: load / save a `from_pretrained` folder, and the forward pass that scores tokens.

Both training stages (explore.py's DAPO update, consolidate.py's SFT) and the rollout engine's HF backend go
through these functions, so "log-prob of a token" means the same thing everywhere.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from lib.cli import UserError, replace_dir


def resolve_model(spec: str) -> str:
    """'toy' -> the embedded toy base model (built once, cached); anything else is returned unchanged."""
    if spec == "toy":
        from lib import toy

        return str(toy.ensure_base())
    return spec


def load_policy(spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                trust_remote_code: bool = False):
    """(model, tokenizer) from a local folder or a hub id. Errors name the path and what is missing."""
    path = resolve_model(spec)
    local = Path(path)
    if local.exists() or not _looks_like_hub_id(path):
        if not local.is_dir():
            raise UserError(f"{path}: model folder does not exist")
        if not (local / "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        if not any((local / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise UserError(f"{path}: model folder has no tokenizer (tokenizer.json / tokenizer_config.json)")
    # (imported only now: a wrong path fails in a blink, not after two seconds of importing transformers)
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in every stage's log
    # transformers only *warns* (a multi-line report) when weights are missing and then initialises them at
    # random: a policy that silently is not the one on disk. We silence the report and fail on it instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                           output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        # OSError: missing files / hub; ValueError: bad JSON; SafetensorError: truncated weights;
        # RuntimeError: weights whose shapes do not match config.json
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        if "mismatched" in msg:
            msg = "weight shapes do not match config.json"
        raise UserError(f"{path}: cannot load model/tokenizer ({msg})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(f"{path}: cannot load model ({len(missing)} weights missing from the checkpoint, "
                        f"e.g. {missing[0]})")
    if tok.pad_token_id is None:  # batching needs a pad id; it is always masked out
        tok.pad_token = tok.eos_token
    model.to(device)
    return model, tok


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


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                         with_entropy: bool = False):
    """logits [B, T, V] predicting targets [B, T] -> log p(target) [B, T] under softmax(logits / temperature)
    (and the entropy [B, T] of that distribution). No full-vocabulary log-softmax is materialised in float32:
    logsumexp + gather suffice."""
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits.float(), dim=-1)  # [B, T]
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float() - lse  # [B, T]
    if not with_entropy:
        return logp
    with torch.no_grad():  # entropy is logged, not optimised
        p = torch.softmax(logits.float(), dim=-1)
        ent = lse - (p * logits.float()).sum(-1)  # H = logsumexp(z) - sum p z
    return logp, ent


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False):
    """Log-prob of every token given its prefix, under softmax(logits / temperature).

    input_ids, attention_mask: [B, T] (right padding or left padding both fine: positions come from the mask)
    returns logp [B, T] where logp[:, t] = log p(input_ids[:, t] | input_ids[:, :t]); logp[:, 0] = 0.
    With with_entropy, also the entropy [B, T] of the predictive distribution at each position.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits[:, :-1]  # [B, T-1, V]: position t predicts token t+1
    out = logprobs_from_logits(logits, input_ids[:, 1:], temperature, with_entropy)
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
    rest = model(input_ids=response_ids, attention_mask=attn, position_ids=rpos, use_cache=True,
                 **{kw: cache}).logits[:, :-1]  # [B, R-1, V]: response position t predicts token t+1
    logits = torch.cat([first[index].unsqueeze(1), rest], dim=1)  # [B, R, V]
    return logprobs_from_logits(logits, response_ids, temperature, with_entropy)
