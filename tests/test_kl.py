"""The KL penalty to the initial policy: lib/algo/dapo.kl_penalty (verl's low_var_kl) on literal tensors, and
explore.py --kl-coef end to end on the tiny model."""
import math

import pytest
import torch
from test_explore import data_file, digit_reward, run_args  # noqa: F401 (data_file: a fixture)

import explore
from lib.algo.dapo import kl_loss, kl_penalty
from lib.run.records import read_jsonl


def test_low_var_kl_literal_values():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, 2.0, -0.5]])
    # kl = ref - logp = [-0.5, 1.0, 5.0, 0.0]; kld = exp(kl) - kl - 1
    want = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 2.0, 10.0, 0.0]  # exp(5) - 6 = 142.4 -> clamped to 10
    got = kl_penalty(logp, ref)
    assert got.shape == (1, 4)
    assert got[0].tolist() == pytest.approx(want, abs=1e-6)
    assert got[0, 0].item() == pytest.approx(0.1065307, abs=1e-6)
    assert got[0, 1].item() == pytest.approx(0.7182818, abs=1e-6)


def test_zero_when_policy_equals_reference_with_zero_gradient():
    logp = torch.randn(3, 5).requires_grad_(True)
    kld = kl_penalty(logp, logp.detach().clone())
    assert torch.equal(kld, torch.zeros(3, 5))
    kld.sum().backward()  # d/dlogp (exp(ref - logp) - (ref - logp) - 1) = 1 - exp(ref - logp) = 0 here
    assert torch.equal(logp.grad, torch.zeros(3, 5))


def test_kl_loss_token_mean_ignores_padding():
    logp = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0], [-1.0, float("-inf")]])  # padding may hold -inf
    mask = torch.tensor([[1, 1], [1, 0]])
    loss = kl_loss(logp, ref, mask)
    assert loss.item() == pytest.approx((0.1065307 + 0.7182818 + 0.0) / 3, abs=1e-6)
    # global_tokens: this call's share of a larger mini-batch
    assert kl_loss(logp, ref, mask, global_tokens=6).item() == pytest.approx((0.1065307 + 0.7182818) / 6, abs=1e-6)


def test_explore_kl_coef_logs_kl_and_pulls_toward_the_reference(tiny_model_dir, data_file, tmp_path):
    torch.set_num_threads(1)
    runs = {}
    for coef in (0.0, 5.0):
        out = tmp_path / f"kl{coef}"
        explore.main(run_args(tiny_model_dir, data_file, out, "--rl-steps", "3", "--save-every", "3", "--lr", "3e-3",
                              "--kl-coef", coef), reward_fn=digit_reward)
        runs[coef] = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    off, on = runs[0.0], runs[5.0]
    assert all(r["kl"] == 0 for r in off)  # off by default: nothing computed, 0 logged
    assert all(r["kl"] >= 0 for r in on) and on[-1]["kl"] > 0  # the policy moved away from its start
    # the penalty pulls toward the reference: the weights end closer to the initial ones than without it
    from safetensors.torch import load_file

    init = load_file(tiny_model_dir / "model.safetensors")
    drift = {coef: sum(float((w - init[k]).pow(2).sum()) for k, w in
                       load_file(tmp_path / f"kl{coef}" / "ckpt_000003" / "model.safetensors").items())
             for coef in runs}
    assert drift[5.0] < drift[0.0], drift
    with pytest.raises(explore.cli.UserError, match="--kl-coef"):
        explore.get_args(["--kl-coef", "-1"])
