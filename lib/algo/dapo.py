"""Pure functions of DAPO (arXiv 2503.14476) that every loss variant shares, matched against verl's DAPO recipe.
The policy losses themselves (DAPO's clip-higher + dual clip, and the variants) are explore.py's.

  * GRPO's group-normalised advantage .......................... group_advantages
  * dynamic sampling (drop groups with no reward spread) ....... keep_groups / kept_group_ids
  * overlong reward shaping (soft length penalty) .............. overlong_penalty
  * a per-token loss reduced to a scalar (token-mean, ...) ..... aggregate
  * the KL penalty to a reference policy (off in DAPO) ......... kl_penalty
plus masked_mean. The entropy explore.py logs is not here: lib/train/modeling.token_logprobs computes it in the
same pass as the log-probs.

Shapes: B = sequences in the call, T = padded response length, G = groups.
Masks are 0/1 (bool, int or float); 1 marks a real response token.

Where these differ from verl (details at each function):
  * group_advantages: a group of one gets advantage 0 (verl: r / (1 + eps)).
  * group_advantages / keep_groups: a group of identical rewards is *exactly* zero-spread
    (verl's float mean/std can leave ~1e-8 residue for non-dyadic rewards such as 0.1).
  * aggregate: optional global_tokens / global_seqs divisors so per-micro-batch losses sum to the
    full-batch loss (newer verl does the same via batch_num_tokens / global_batch_size; verl's
    legacy actor and TRL#5619 normalised each micro-batch by its own token count).
  * overlong_penalty: buffer_len == 0 returns zeros (verl would divide by zero).
"""

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

Ids = Tensor | Sequence[Hashable]


# -----------------------------------------------------------------------------
# small helpers


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over positions where mask is 1; 0 where there are none."""
    # torch.where rather than x * mask: padding may hold inf/nan (e.g. -inf log-probs) and
    # inf * 0 = nan would leak into the result.
    m = mask.to(torch.bool)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=dim)
    count = m.sum(dim=dim).clamp(min=1)  # 0/1 mask -> counts are 0 or >= 1, so clamp(1) is exact
    return total / count


def _group_index(group_ids: Ids, device: torch.device) -> tuple[Tensor, int]:
    """Map arbitrary group ids to a dense index. Returns (inverse [B] long, number of groups G)."""
    if isinstance(group_ids, Tensor):
        uniq, inverse = torch.unique(group_ids, return_inverse=True)  # vectorised, sorted order
        return inverse.to(device), uniq.numel()
    # python ids (e.g. uuid strings, like verl's "uid"): a dict is the only way to hash them
    dense: dict = {}
    inverse = [dense.setdefault(g, len(dense)) for g in group_ids]
    return torch.tensor(inverse, dtype=torch.long, device=device), len(dense)


def _as_float(values: Tensor | Sequence[float]) -> Tensor:
    t = torch.as_tensor(values)
    return t if t.is_floating_point() else t.to(torch.float32)


# -----------------------------------------------------------------------------
# GRPO advantage


@torch.no_grad()
def group_advantages(rewards: Tensor, group_ids: Ids, eps: float = 1e-6) -> Tensor:
    """Per-sequence (r - mean_g) / (std_g + eps), std unbiased (n-1) as torch.std. [B] -> [B].

    Same formula and eps as verl's GRPO outcome advantage (norm by std on). Differences:
      * group of one: 0 here. verl sets mean=0, std=1 and so returns r / (1 + eps), i.e. a lone
        sample is pushed up or down by its raw reward. With DAPO's filter a group of one is kept,
        so this does change the gradient when groups of one occur (they do not with rollout.n > 1).
      * we shift each group by its minimum before averaging, so a group of identical rewards gives
        exactly 0 (verl's float32 mean of e.g. seven 0.1's is off by 1 ulp, std ~1e-8, and the
        advantage then is ~1e-8/(1e-8+1e-6) ~ 0.01 instead of 0).
    """
    r = _as_float(rewards)
    out_dtype = r.dtype
    r = r.to(torch.float64)  # B is small; float64 keeps the two-pass variance clean
    B = r.shape[0]
    idx, G = _group_index(group_ids, r.device)  # [B], G
    zeros_g = torch.zeros(G, dtype=r.dtype, device=r.device)

    count = zeros_g.index_add(0, idx, torch.ones_like(r))  # [G]
    lo = zeros_g.scatter_reduce(0, idx, r, reduce="amin", include_self=False)  # [G] group minimum
    x = r - lo[idx]  # [B] shifted: identical rewards -> exact zeros
    mean = zeros_g.index_add(0, idx, x) / count  # [G]
    dev = x - mean[idx]  # [B]
    var = zeros_g.index_add(0, idx, dev * dev) / (count - 1).clamp(min=1)  # [G] unbiased
    std = var.sqrt()  # [G]

    adv = dev / (std[idx] + eps)  # [B]
    adv = torch.where(count[idx] > 1, adv, torch.zeros_like(adv))  # lone samples carry no signal
    assert adv.shape == (B,)
    return adv.to(out_dtype)


# -----------------------------------------------------------------------------
# DAPO dynamic sampling


@torch.no_grad()
def keep_groups(values: Tensor | Sequence[float], group_ids: Ids) -> Tensor:
    """Bool mask [B]: True for samples whose group DAPO keeps (metric spread > 0, or group of one).

    verl keeps a prompt group iff np.std(metric) > 0 or it has a single sample. The metric is
    `algorithm.filter_groups.metric`; the DAPO scripts use "acc" (the 0/1 correctness from the
    scorer, *before* the overlong penalty), alternatives are "seq_final_reward" (reward incl.
    overlong penalty and any KL-in-reward) and "seq_reward". Pass "acc"-like values to match the
    recipe: with "acc" a group that is all-correct but has different overlong penalties is dropped,
    with "seq_final_reward" it is kept. We test "max > min", the exact meaning of std > 0; numpy's
    float std can be ~1e-17 for identical non-dyadic values (e.g. seven 0.1's), which verl would keep.
    """
    v = _as_float(values).to(torch.float64)  # [B]
    idx, G = _group_index(group_ids, v.device)  # [B], G
    zeros_g = torch.zeros(G, dtype=v.dtype, device=v.device)
    count = zeros_g.index_add(0, idx, torch.ones_like(v))  # [G]
    hi = zeros_g.scatter_reduce(0, idx, v, reduce="amax", include_self=False)  # [G]
    lo = zeros_g.scatter_reduce(0, idx, v, reduce="amin", include_self=False)  # [G]
    keep_g = (hi > lo) | (count == 1)  # [G]
    return keep_g[idx]  # [B]


def kept_group_ids(values: Tensor | Sequence[float], group_ids: Ids) -> list:
    """Group ids DAPO keeps, in order of first appearance (see keep_groups for the rule)."""
    keep = keep_groups(values, group_ids).tolist()  # [B]
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    seen: dict = {}
    for g, k in zip(ids, keep):
        if k:
            seen.setdefault(g, None)  # dicts keep insertion order
    return list(seen)


# -----------------------------------------------------------------------------
# DAPO overlong reward shaping


def overlong_penalty(
    lengths: Tensor | Sequence[int], max_len: int, buffer_len: int, factor: float = 1.0
) -> Tensor:
    """Soft length penalty [B], added to the reward: 0 up to max_len - buffer_len, then linear to -factor.

    Same as verl's DAPO reward manager: min(-(L - (max_len - buffer_len)) / buffer_len * factor, 0),
    L = number of valid response tokens. Like verl we do not clamp below -factor: L > max_len cannot
    happen when generation is capped at max_len. buffer_len == 0 -> zeros (verl would divide by 0).
    """
    L = _as_float(lengths)  # [B]
    if buffer_len <= 0:
        return torch.zeros_like(L)
    expected = max_len - buffer_len  # longest length that is never penalised
    pen = -(L - expected) / buffer_len * factor  # [B]
    return pen.clamp(max=0.0)


# -----------------------------------------------------------------------------
# aggregating a per-token loss (the policy losses live in explore.py)


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    agg: str,
    global_tokens: float | int | Tensor | None,
    global_seqs: float | int | Tensor | None,
) -> Tensor:
    """Reduce a [B, T] per-token loss to a scalar: token-mean (DAPO), seq-mean-token-mean (GRPO's original) or
    seq-mean-token-sum, as verl's agg_loss. global_tokens (token-mean) / global_seqs (seq-mean-*): the divisor of
    the *whole* optimiser update, i.e. valid tokens / non-empty sequences summed over all micro-batches and ranks,
    so each micro-batch's call returns its share and the shares (and their gradients) sum to the full-batch loss.
    None: this call's own counts, which is right only for a single micro-batch (averaging per-micro-batch means
    over-weights the tokens of short micro-batches, TRL#5619)."""
    m = mask.to(torch.bool)
    zero = torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device)
    token_loss = torch.where(m, loss_mat, zero)  # [B, T] padding exactly 0
    if agg == "token-mean":
        # every valid token weighs the same, whatever sequence it sits in (DAPO's choice)
        denom = m.sum().clamp(min=1) if global_tokens is None else global_tokens
        return token_loss.sum() / torch.as_tensor(denom, dtype=loss_mat.dtype, device=loss_mat.device)

    n_tok = m.sum(dim=-1)  # [B]
    seq_valid = n_tok > 0  # [B] newer verl drops fully masked rows from the sequence count
    if agg == "seq-mean-token-sum":
        seq_loss = token_loss.sum(dim=-1)  # [B]
    elif agg == "seq-mean-token-mean":
        seq_loss = token_loss.sum(dim=-1) / n_tok.clamp(min=1)  # [B] empty rows -> 0, not nan
    else:
        raise ValueError(f"unknown agg mode {agg!r}")
    denom = seq_valid.sum().clamp(min=1) if global_seqs is None else global_seqs
    return seq_loss.sum() / torch.as_tensor(denom, dtype=loss_mat.dtype, device=loss_mat.device)


# -----------------------------------------------------------------------------
# KL penalty to a reference policy (off in DAPO; explore.py --kl-coef turns it on)


def kl_penalty(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate, verl's "low_var_kl" (Schulman's k3), with verl's clamp.

    log_probs: [B, T] current policy (gradient flows through it); ref_log_probs: [B, T] reference (detached).
    Returns [B, T]: ratio - log(ratio) - 1 with log(ratio) = ref - logp, i.e. exp(ref - logp) - (ref - logp) - 1.
    It is >= 0 everywhere, exactly 0 where the policy equals the reference, and unbiased for KL(pi || pi_ref)
    on tokens sampled from pi with lower variance than ref - logp (k1). The clamp to [-10, 10] (as verl) bounds
    one token's pull when the policy has drifted far. Padding is the caller's to mask (explore.py aggregates
    it with the policy loss's own token mean).
    """
    assert log_probs.shape == ref_log_probs.shape, "log_probs and ref_log_probs must both be [B, T]"
    dt = torch.promote_types(log_probs.dtype, torch.float32)
    kl = ref_log_probs.detach().to(dt) - log_probs.to(dt)  # [B, T] log(pi_ref / pi)
    # padding may hold -inf: keep exp() finite there (the clamp below would not catch nan from inf - inf)
    kl = torch.nan_to_num(kl, nan=0.0, posinf=20.0, neginf=-20.0).clamp(-20.0, 20.0)
    kld = torch.exp(kl) - kl - 1.0  # [B, T]
    return kld.clamp(min=-10.0, max=10.0)
