"""explore.py's policy losses on literal tensors: DAPO's clip-higher + dual clip, the aggregation modes, padding,
micro-batch invariance (TRL#5619); every entry of LOSSES equal to verl 0.9.1's own function."""

import math

import pytest
import torch
import verl_reference

import explore
from explore import policy_loss
from lib.algo.dapo import masked_mean

D = torch.float64


def one_token(ratio: float, adv: float, **kw):
    """policy_loss on a single valid token with the given ratio and advantage; returns (loss, grad, stats)."""
    lp = torch.tensor([[math.log(ratio)]], dtype=D, requires_grad=True)
    old = torch.zeros(1, 1, dtype=D)
    loss, stats = policy_loss(lp, old, torch.tensor([adv], dtype=D), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), lp.grad.item(), stats


# -----------------------------------------------------------------------------
# policy_loss: clipping


def test_upper_clip_positive_advantage():
    loss, grad, st = one_token(1.5, 1.0)  # ratio 1.5 > 1.28 with A > 0 -> clipped at 1.28
    assert loss == pytest.approx(-1.28)
    assert grad == 0.0  # clipped token gives no gradient
    assert st["clipfrac_high"] == 1.0 and st["clipfrac_low"] == 0.0 and st["clipfrac_dual"] == 0.0


def test_lower_clip_negative_advantage():
    loss, grad, st = one_token(0.5, -1.0)  # ratio 0.5 < 0.8 with A < 0 -> clipped at 0.8
    assert loss == pytest.approx(0.8)
    assert grad == 0.0
    assert st["clipfrac_low"] == 1.0 and st["clipfrac_high"] == 0.0 and st["clipfrac_dual"] == 0.0


def test_dual_clip_negative_advantage():
    loss, grad, st = one_token(20.0, -1.5)  # ratio 20 > c=10 with A < 0 -> -A * 10
    assert loss == pytest.approx(15.0)
    assert grad == 0.0
    assert st["clipfrac_dual"] == 1.0 and st["clipfrac_low"] == 0.0 and st["clipfrac_high"] == 0.0


def test_unclipped_cases_keep_gradient():
    # A < 0, ratio 5: above 1 + eps_high but below c -> unclipped loss -A*r, gradient -A*r
    loss, grad, st = one_token(5.0, -1.0)
    assert loss == pytest.approx(5.0) and grad == pytest.approx(5.0)
    assert st == {"clipfrac_high": 0.0, "clipfrac_low": 0.0, "clipfrac_dual": 0.0,
                  "approx_kl": pytest.approx(-math.log(5.0))}
    # A > 0, ratio 0.5: clip would raise the loss, max keeps the unclipped term -> gradient flows
    loss, grad, _ = one_token(0.5, 2.0)
    assert loss == pytest.approx(-1.0) and grad == pytest.approx(-1.0)
    # A > 0, ratio 20: only the upper clip applies, never the dual clip
    loss, grad, st = one_token(20.0, 2.0)
    assert loss == pytest.approx(-2.56) and grad == 0.0 and st["clipfrac_dual"] == 0.0


def test_clip_params_and_c_assert():
    loss, _, _ = one_token(1.5, 1.0, eps_high=0.2)
    assert loss == pytest.approx(-1.2)
    loss, _, _ = one_token(20.0, -1.0, clip_ratio_c=3.0)
    assert loss == pytest.approx(3.0)
    with pytest.raises(AssertionError):
        one_token(1.0, 1.0, clip_ratio_c=1.0)


def _reference_token_loss(a: float, r: float, lo=0.2, hi=0.28, c=10.0) -> float:
    pess = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
    return min(pess, -a * c) if a < 0 else pess


def test_matches_scalar_reference_on_random_tokens():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(6, 9, generator=g, dtype=D)
    old = lp + 0.6 * torch.randn(6, 9, generator=g, dtype=D)
    adv = torch.randn(6, 9, generator=g, dtype=D)
    mask = torch.ones(6, 9)
    loss, st = policy_loss(lp, old, adv, mask)
    ref = [_reference_token_loss(a, math.exp(n - o)) for a, n, o in zip(adv.flatten().tolist(),
                                                                         lp.flatten().tolist(),
                                                                         old.flatten().tolist())]
    assert loss.item() == pytest.approx(sum(ref) / len(ref), rel=1e-12)
    assert st["approx_kl"] == pytest.approx((old - lp).mean().item(), rel=1e-12)
    assert 0 < st["clipfrac_high"] < 1 and 0 < st["clipfrac_low"] < 1


def test_stats_split_over_valid_tokens_only():
    ratios = torch.tensor([[1.5, 0.5, 20.0, 1.0, 1.5]], dtype=D)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # last token (would be high-clipped) is padding
    _, st = policy_loss(ratios.log(), torch.zeros_like(ratios), adv, mask)
    assert st["clipfrac_high"] == pytest.approx(0.25)
    assert st["clipfrac_low"] == pytest.approx(0.25)
    assert st["clipfrac_dual"] == pytest.approx(0.25)
    # approx_kl = mean(old - new) over the 4 valid tokens (verl's ppo_kl sign)
    assert st["approx_kl"] == pytest.approx(-(math.log(1.5) + math.log(0.5) + math.log(20.0)) / 4)
    assert all(isinstance(v, float) for v in st.values())


# -----------------------------------------------------------------------------
# policy_loss: aggregation and masking


def test_three_agg_modes_hand_computed_2x3():
    # ratio 1 everywhere -> per-token loss is exactly -A
    A = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    lp = torch.zeros(2, 3, dtype=D)
    tm, _ = policy_loss(lp, lp, A, mask, agg="token-mean")
    ts, _ = policy_loss(lp, lp, A, mask, agg="seq-mean-token-sum")
    tt, _ = policy_loss(lp, lp, A, mask, agg="seq-mean-token-mean")
    assert tm.item() == pytest.approx(-(1 + 2 + 4) / 3)  # -7/3: every token counts once
    assert ts.item() == pytest.approx(-((1 + 2) + 4) / 2)  # -3.5: per-seq sums, mean over seqs
    assert tt.item() == pytest.approx(-((1 + 2) / 2 + 4) / 2)  # -2.75: per-seq means, mean over seqs
    with pytest.raises(ValueError):
        policy_loss(lp, lp, A, mask, agg="token-sum")


def test_fully_masked_row_is_not_counted_as_a_sequence():
    # newer verl: seq-mean-* divides by the number of non-empty sequences; empty rows give 0, not nan
    A = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    lp = torch.zeros(3, 3, dtype=D)
    ts, _ = policy_loss(lp, lp, A, mask, agg="seq-mean-token-sum")
    tt, _ = policy_loss(lp, lp, A, mask, agg="seq-mean-token-mean")
    assert ts.item() == pytest.approx(-3.5) and tt.item() == pytest.approx(-2.75)
    empty, st = policy_loss(lp, lp, A, torch.zeros(3, 3))
    assert empty.item() == 0.0 and st["approx_kl"] == 0.0


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_padding_never_affects_loss_or_gradients(agg):
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(3, 5, generator=g, dtype=D)
    old = lp + 0.3 * torch.randn(3, 5, generator=g, dtype=D)
    adv = torch.randn(3, 5, generator=g, dtype=D)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    lens = mask.sum(-1).tolist()

    # garbage at padded positions: nan/inf log-probs, huge advantages
    pad = mask == 0
    lp_dirty = lp.masked_fill(pad, float("nan")).masked_fill(pad & (torch.arange(5) == 4), float("-inf"))
    old_dirty = old.masked_fill(pad, float("inf"))
    adv_dirty = adv.masked_fill(pad, 1e30)
    lp_dirty.requires_grad_(True)
    loss, _ = policy_loss(lp_dirty, old_dirty, adv_dirty, mask, agg=agg)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp_dirty.grad).all()
    assert (lp_dirty.grad[pad] == 0).all()

    # same numbers as a per-sequence computation on the unpadded tokens only
    lp_clean = lp.clone().requires_grad_(True)
    per_tok = [[_reference_token_loss(a, math.exp(n - o)) for a, n, o in
                zip(adv[i, :L].tolist(), lp[i, :L].tolist(), old[i, :L].tolist())] for i, L in enumerate(lens)]
    if agg == "token-mean":
        expect = sum(map(sum, per_tok)) / sum(lens)
    elif agg == "seq-mean-token-sum":
        expect = sum(map(sum, per_tok)) / 3
    else:
        expect = sum(sum(t) / len(t) for t in per_tok) / 3
    assert loss.item() == pytest.approx(expect, rel=1e-12)
    clean_loss, _ = policy_loss(lp_clean, old, adv, mask, agg=agg)
    clean_loss.backward()
    assert torch.allclose(lp_dirty.grad, lp_clean.grad, rtol=0, atol=1e-15)


def test_first_update_ratio_one_loss_is_minus_masked_mean_advantage():
    g = torch.Generator().manual_seed(2)
    lp = torch.randn(4, 6, generator=g, dtype=D).requires_grad_(True)
    adv = torch.tensor([1.5, -0.5, 0.25, -2.0], dtype=D)  # [B] sequence-level advantages
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0], [1] + [0] * 5])
    loss, st = policy_loss(lp, lp.detach(), adv, mask)
    A_tok = adv[:, None].expand(4, 6)
    assert loss.item() == -masked_mean(A_tok, mask).item()  # exact: ratio is exactly 1
    assert loss.item() == pytest.approx(-(1.5 * 6 - 0.5 * 2 + 0.25 * 5 - 2.0 * 1) / 14)
    assert st == {"clipfrac_high": 0.0, "clipfrac_low": 0.0, "clipfrac_dual": 0.0, "approx_kl": 0.0}
    loss.backward()  # plain policy gradient: d loss / d logp = -A / N_tokens on valid tokens
    assert torch.allclose(lp.grad, -A_tok * mask / 14)


# -----------------------------------------------------------------------------
# policy_loss: micro-batch invariance (the TRL#5619 bug)


def _micro_setup():
    g = torch.Generator().manual_seed(3)
    B, T = 16, 10
    lens = torch.tensor([1, 10, 3, 7, 2, 9, 5, 10, 1, 1, 8, 4, 6, 2, 10, 3])
    mask = (torch.arange(T)[None, :] < lens[:, None]).long()  # [B, T] right padding
    lp = (torch.randn(B, T, generator=g, dtype=D) * 0.5 - 1.0).requires_grad_(True)
    old = lp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=D)  # some tokens get clipped
    adv = torch.randn(B, generator=g, dtype=D)
    return lp, old, adv, mask


@pytest.mark.parametrize("agg,key", [("token-mean", "global_tokens"),
                                     ("seq-mean-token-sum", "global_seqs"),
                                     ("seq-mean-token-mean", "global_seqs")])
def test_micro_batches_with_global_divisor_equal_full_batch(agg, key):
    lp, old, adv, mask = _micro_setup()
    full, _ = policy_loss(lp, old, adv, mask, agg=agg)
    full.backward()
    g_full = lp.grad.clone()

    lp.grad = None
    total = {"global_tokens": torch.tensor(int(mask.sum())), "global_seqs": 16}[key]  # tensor and int both accepted
    summed = 0.0
    for s in range(0, 16, 4):  # four micro-batches of 4; their losses are shares, so just sum
        part, _ = policy_loss(lp[s:s + 4], old[s:s + 4], adv[s:s + 4], mask[s:s + 4], agg=agg, **{key: total})
        part.backward()
        summed += part.item()
    assert summed == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(lp.grad, g_full, rtol=1e-12, atol=1e-15)


def test_micro_batches_without_global_tokens_differ_documenting_bug():
    # Each micro-batch normalised by its *own* token count, then averaged over the 4 accumulation
    # steps (what TRL shipped): tokens in short micro-batches get more weight than in the full batch.
    lp, old, adv, mask = _micro_setup()
    full, _ = policy_loss(lp, old, adv, mask)
    full.backward()
    g_full = lp.grad.clone()
    lp.grad = None
    for s in range(0, 16, 4):
        part, _ = policy_loss(lp[s:s + 4], old[s:s + 4], adv[s:s + 4], mask[s:s + 4])
        (part / 4).backward()
    assert (lp.grad - g_full).abs().max() > 1e-3
    # concretely, a valid token's weight is 1/(4 * n_tokens_of_its_micro_batch) instead of 1/N
    n_micro = mask.view(4, 4, -1).sum(dim=(1, 2)).tolist()  # [21, 26, 14, 21], N = 82
    assert n_micro == [21, 26, 14, 21]




# -----------------------------------------------------------------------------
# every loss equals verl 0.9.1's own function, in value and gradient (tests/verl_reference.py)

VERL_NAMES = {"dapo": "compute_policy_loss_vanilla", "gspo": "compute_policy_loss_gspo",
              "cispo": "compute_policy_loss_cispo"}  # --loss NAME -> verl's function


@pytest.fixture(scope="module")
def verl(tmp_path_factory):
    return verl_reference.load(tmp_path_factory.mktemp("verl"))


def mismatched_batch(seed: int, B: int = 6, T: int = 9, spread: float = 0.4):
    """Ragged rows, ratios spread around 1 (every clip branch), a per-token advantage (verl's shape)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lens[:, None]).to(D)
    lp = torch.randn(B, T, generator=g, dtype=D) * 0.5 - 1.5
    old = lp + spread * torch.randn(B, T, generator=g, dtype=D)
    adv = torch.randn(B, generator=g, dtype=D)[:, None].expand(B, T).contiguous()
    return lp, old, adv, mask


def test_every_loss_has_its_verl_reference():
    assert set(VERL_NAMES) == set(explore.LOSSES)


@pytest.mark.parametrize("name", sorted(VERL_NAMES))
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_equals_verl(verl, name, agg, seed):
    lp, old, adv, mask = mismatched_batch(seed)
    weights = torch.rand(lp.shape, generator=torch.Generator().manual_seed(seed), dtype=D) * 2 if seed == 2 else None
    ours_lp, verl_lp = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    totals = {"global_tokens": float(mask.sum()) * 2, "global_seqs": 12.0}  # a share of a larger mini-batch
    ours, _ = explore.LOSSES[name](ours_lp, old, adv, mask, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0, agg=agg,
                                   rollout_is_weights=weights, **totals)
    config = verl.ActorConfig(0.2, 0.28, 3.0, {"batch_num_tokens": totals["global_tokens"],
                                               "global_batch_size": totals["global_seqs"]})
    ref, _ = getattr(verl, VERL_NAMES[name])(old, verl_lp, adv, mask, loss_agg_mode=agg, config=config,
                                             rollout_is_weights=weights)
    ours.backward()
    ref.backward()
    rtol = 1e-7 if agg == "seq-mean-token-mean" else 1e-12  # (verl divides by a row's token count + 1e-8)
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=0.0)
    torch.testing.assert_close(ours_lp.grad, verl_lp.grad, rtol=rtol, atol=1e-15)
    assert ours_lp.grad.abs().sum() > 0


def test_gspo_clips_whole_sequences():
    # row 0: every token's ratio e^0.5, so s = e^0.5 > 1.28 with A > 0: the whole sequence is clipped, no gradient;
    # row 1: token ratios e^0.1 and e^-0.1 (its third token is padding), s = 1: unclipped, gradient -A s / N
    lp = torch.zeros(2, 3, dtype=D, requires_grad=True)
    old = -torch.tensor([[0.5, 0.5, 0.5], [0.1, -0.1, 7.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, st = explore.LOSSES["gspo"](lp, old, torch.tensor([1.0, 1.0], dtype=D), mask)
    loss.backward()
    assert lp.grad[0].abs().sum() == 0 and lp.grad[1].tolist() == pytest.approx([-1 / 5, -1 / 5, 0.0])
    assert loss.item() == pytest.approx(-(3 * 1.28 + 2 * 1.0) / 5)
    assert st["clipfrac_high"] == pytest.approx(3 / 5) and st["clipfrac_low"] == 0.0


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    # ratio e^0.5 > 1.28 with A > 0: PPO's clip silences the token, CISPO weighs its log-prob gradient by 1.28
    lp = torch.zeros(1, 2, dtype=D, requires_grad=True)
    old = torch.tensor([[-0.5, 0.0]], dtype=D)  # token ratios e^0.5 (clipped to 1.28) and 1
    loss, st = explore.LOSSES["cispo"](lp, old, torch.tensor([2.0], dtype=D), torch.ones(1, 2))
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-2.0 * 1.28 / 2, -2.0 / 2])
    assert loss.item() == 0.0  # -w A log pi with log pi = 0
    assert st["clipfrac_high"] == 0.5 and st["clipfrac_low"] == 0.0


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("threshold", [2.0, 1.05])
def test_rollout_correction_equals_verl(verl, level, threshold):
    old, rollout, _, mask = mismatched_batch(4, spread=0.3)
    rollout[0] = torch.nan  # a response the engine gave no log-probs for: weight 1
    weights, st = explore.rollout_correction(old, rollout, mask, level, threshold)
    known = mask.clone()
    known[0] = 0
    ref, _ = verl.compute_rollout_correction_weights(torch.where(known.bool(), old - rollout, 0.0), mask,
                                                     rollout_is=level, rollout_is_threshold=threshold)
    torch.testing.assert_close(weights, ref, rtol=1e-12, atol=0.0)
    assert (weights[0][mask[0].bool()] == 1.0).all() and (weights[mask == 0] == 0).all()
    raw_over = (torch.exp(torch.where(known.bool(), old - rollout, 0.0)) > threshold) if level == "token" else None
    assert st["rollout_is_mean"] == pytest.approx(float((weights * mask).sum() / mask.sum()))
    if raw_over is not None:
        assert st["rollout_is_truncated"] == pytest.approx(float((raw_over * mask).sum() / mask.sum()))
    if threshold < 2:  # the check has teeth: some weights are truncated
        assert 0 < st["rollout_is_truncated"] < 1
