"""One-token decode steps for HFEngine, over a transformers Qwen2 model's own modules, with a KV cache that grows
in blocks and is read in place.

Why: transformers' DynamicCache appends each new key / value with torch.cat, which copies the whole cache of every
layer at every decode step; on the toy (CPU, 512 rows) that copy was 29% of sampling time and the attention kernel
19%. Here each layer's cache is a buffer of BLOCK slots more than it needs, written in place, grown (one copy)
every BLOCK steps; attention reads the whole buffer, the slots not yet written masked out. Everything else is the
model's own modules (norms, projections, rotary embedding, MLP, head), called as transformers calls them, so the
weights are read, never copied, and an update to the policy is seen at once. The prompt is prefilled by the model's
own forward (HFEngine); a Qwen2Decoder takes over its cache.

Only where it reproduces the model's forward: model_type qwen2, default rope, no sliding window, plain (not
FSDP-sharded) parameters; HFEngine falls back to the model's forward otherwise (`supports`). The logits agree with
the model's forward to float rounding (tests/test_rollout.py), not bit for bit: the attention sums run in another order.
"""
from __future__ import annotations

import torch

BLOCK = 32  # cache slots added at a time: one copy per BLOCK decode steps, at most BLOCK - 1 masked slots read


def supports(model) -> bool:
    """Whether Qwen2Decoder reproduces `model`'s forward (else HFEngine uses the model's own)."""
    cfg = model.config
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    inner = getattr(model, "model", None)
    return (getattr(cfg, "model_type", None) == "qwen2" and not getattr(cfg, "use_sliding_window", False)
            and rope.get("rope_type", rope.get("type", "default")) == "default"
            and inner is not None and hasattr(inner, "rotary_emb") and hasattr(inner, "layers")
            and all(type(p) is torch.nn.Parameter or type(p) is torch.Tensor for p in model.parameters()))


def _cache_tensors(cache, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer i's (keys, values) [A, Hk, L, D] of a transformers DynamicCache (5.x: .layers; 4.x: .key_cache)."""
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]


class Qwen2Decoder:
    """Decode state of one batch (made per batch: the buffers go with it): per layer K / V buffers [A, Hk, C, D];
    slot s holds the token fed at column s of HFEngine's attention mask (left-padded prompt, then one column per
    step). Starts from the prefill's DynamicCache, each row repeated `repeat` times as HFEngine repeats prompts."""

    def __init__(self, model, cache, repeat: int):
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        self.model, self.rotate = model, apply_rotary_pos_emb
        self.inner = model.model
        attn = self.inner.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for i in range(len(self.inner.layers)):
            k, v = _cache_tensors(cache, i)
            self.keys.append(self._repeat_and_grow(k, repeat))
            self.values.append(self._repeat_and_grow(v, repeat))
        self.used = self.keys[0].shape[2] - BLOCK  # slots written (= columns of the mask fed so far)

    @staticmethod
    def _repeat_and_grow(x: torch.Tensor, repeat: int) -> torch.Tensor:
        """x [P, Hk, S, D] -> [P * repeat, Hk, S + BLOCK, D]: each row `repeat` times, BLOCK zero slots after
        (written once, no intermediate copy)."""
        P, H, S, D = x.shape
        out = x.new_zeros(P * repeat, H, S + BLOCK, D)
        out.view(P, repeat, H, S + BLOCK, D)[:, :, :, :S] = x[:, None]
        return out

    @staticmethod
    def _grow(x: torch.Tensor) -> torch.Tensor:
        """x [A, Hk, S, D] -> [A, Hk, S + BLOCK, D], the new slots zero."""
        return torch.cat([x, x.new_zeros(*x.shape[:2], BLOCK, x.shape[3])], dim=2)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (finished rows stop costing compute)."""
        self.keys = [k.index_select(0, keep) for k in self.keys]
        self.values = [v.index_select(0, keep) for v in self.values]

    def step(self, tok: torch.Tensor, pos: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Feed tok [A] at positions pos [A]; attn [A, >= used + 1] is HFEngine's 0/1 mask with this token's column
        already on. Returns the next-token logits [A, V]."""
        if self.used == self.keys[0].shape[2]:  # every slot written: one copy for the next BLOCK steps
            self.keys = [self._grow(k) for k in self.keys]
            self.values = [self._grow(v) for v in self.values]
        slot, cap = self.used, self.keys[0].shape[2]
        h = self.inner.embed_tokens(tok.unsqueeze(-1))  # [A, 1, H]
        cos, sin = self.inner.rotary_emb(h, pos.unsqueeze(-1))  # [A, 1, D] each
        cols = attn[:, :cap]
        if cols.shape[1] < cap:  # (the buffer may run past the mask's last column: those slots stay masked)
            cols = torch.nn.functional.pad(cols, (0, cap - cols.shape[1]))
        mask = torch.zeros(cols.shape, dtype=h.dtype, device=h.device).masked_fill_(cols == 0, float("-inf"))
        mask = mask[:, None, None, :]  # [A, 1, 1, C]
        A = tok.shape[0]
        for i, layer in enumerate(self.inner.layers):
            sa = layer.self_attn
            x = layer.input_layernorm(h)  # [A, 1, H]
            q = sa.q_proj(x).view(A, 1, -1, self.head_dim).transpose(1, 2)  # [A, Hq, 1, D]
            k = sa.k_proj(x).view(A, 1, -1, self.head_dim).transpose(1, 2)  # [A, Hk, 1, D]
            v = sa.v_proj(x).view(A, 1, -1, self.head_dim).transpose(1, 2)  # [A, Hk, 1, D]
            q, k = self.rotate(q, k, cos, sin)
            K, V = self.keys[i], self.values[i]  # [A, Hk, C, D]
            K[:, :, slot] = k[:, :, 0]
            V[:, :, slot] = v[:, :, 0]
            hk = K.shape[1]
            qg = q.reshape(A, hk, -1, self.head_dim)  # [A, Hk, G, D]: query head j * G + g reads kv head j
            s = torch.matmul(qg, K.transpose(-1, -2)) * self.scaling + mask  # [A, Hk, G, C]
            p = s.float().softmax(-1).to(V.dtype)
            o = torch.matmul(p, V).reshape(A, 1, -1)  # [A, 1, Hq * D]
            h = h + sa.o_proj(o)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        self.used += 1
        return self.model.lm_head(self.inner.norm(h))[:, -1]  # [A, V]
