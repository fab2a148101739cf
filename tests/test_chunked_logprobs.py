"""lib/train/modeling's chunked LM head: the same log-probs, entropies and gradients as the full [B, T, V] logits, and
memory that grows with the chunk, not with the sequence.

The reference in each test is computed here, from model(...).logits with plain torch ops, independently of
lib/train/modeling's code path."""
import pytest
import torch

from lib.train import modeling
from lib.worlds import toy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return toy.make_tokenizer()


def reference(model, ids, attn, temperature):
    """(logp [B, T], entropy [B, T]) from the full logits, logp[:, 0] = entropy[:, 0] = 0."""
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    z = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float() / temperature
    logp = torch.log_softmax(z, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ent = torch.distributions.Categorical(logits=z).entropy()
    pad = torch.zeros(ids.shape[0], 1)
    return torch.cat([pad, logp], 1), torch.cat([pad, ent.detach()], 1)


def batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 8:] = 0  # right padding
    attn[2, :3] = 0  # left padding
    return ids, attn


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 5, 7, 1000])  # 5 and 7 cut rows in the middle; 1000 > B * T
def test_token_logprobs_chunked_equal_full_logits(tok, chunk, monkeypatch):
    monkeypatch.setattr(modeling, "LOGPROB_CHUNK", chunk)
    model = toy.make_model(tok, seed=0)
    ids, attn = batch(model.config.vocab_size)
    w = torch.linspace(-1, 1, ids.numel()).reshape(ids.shape)  # a loss that weighs every position differently
    ref_lp, ref_ent = reference(model, ids, attn, 0.7)
    ref_g = grads(model, (ref_lp * w * attn).sum())
    lp, ent = modeling.token_logprobs(model, ids, attn, temperature=0.7, with_entropy=True)
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)
    got_g = grads(model, (lp * w * attn).sum())
    assert got_g.keys() == ref_g.keys() and len(got_g) > 0
    for name in ref_g:
        torch.testing.assert_close(got_g[name], ref_g[name], rtol=1e-4, atol=1e-5)  # (sums in another order)


def test_shared_prompt_chunked_equal_full_rows(tok, monkeypatch):
    monkeypatch.setattr(modeling, "LOGPROB_CHUNK", 3)
    model = toy.make_model(tok, seed=1)
    V = model.config.vocab_size
    prompts = [[5, 6, 7, 8], [9, 10]]
    responses = [([11, 12, 13], 0), ([14, 15], 0), ([16, 17, 18, 19], 1)]
    p_ids, p_attn = modeling.pad_rows(prompts, 0, left=True)
    r_ids, r_attn = modeling.pad_rows([r for r, _ in responses], 0)
    index = torch.tensor([g for _, g in responses])
    lp, ent = modeling.shared_prompt_logprobs(model, p_ids, p_attn, index, r_ids, r_attn, 1.0, with_entropy=True)
    for j, (r, g) in enumerate(responses):  # each row against the full prompt + response row
        row = torch.tensor([prompts[g] + r])
        ref_lp, ref_ent = reference(model, row, torch.ones_like(row), 1.0)
        P = len(prompts[g])
        torch.testing.assert_close(lp[j, :len(r)], ref_lp[0, P:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent[j, :len(r)], ref_ent[0, P:], rtol=1e-5, atol=1e-5)
    assert V > max(max(p) for p in prompts)


def test_no_grad_path_keeps_no_graph(tok):
    model = toy.make_model(tok, seed=0)
    ids, attn = batch(model.config.vocab_size)
    with torch.no_grad():
        lp = modeling.token_logprobs(model, ids, attn)
    assert not lp.requires_grad and lp.shape == ids.shape and torch.all(lp[:, 0] == 0)


def test_head_memory_grows_with_the_chunk_not_the_sequence():
    """Peak live tensor bytes of one forward + backward of the LM head at Qwen2.5's vocabulary (152,064) and
    T = 512, counted op by op (lib/train/memcount.py's LiveBytes, on the meta device: nothing is allocated). The
    full-logits way holds several fp32 [T, V] tensors; the chunked way a few [chunk, V] ones."""
    from lib.train.memcount import head_step_peak

    T, V, H, chunk = 512, 152_064, 64, 32
    full = head_step_peak(T, V, H, chunked=False, device="meta")
    part = head_step_peak(T, V, H, chunked=True, chunk=chunk, device="meta")
    tv = T * V * 4  # one fp32 [T, V] tensor
    assert full >= 2 * tv  # today's way: logits and their gradient at least
    assert part <= 6 * chunk * V * 4 < tv / 2  # a handful of [chunk, V] tensors


def test_live_bytes_on_meta_equal_a_real_cpu_run():
    """The meta-device count (what bench.py's memory section reports at full size) is the count of a real run."""
    from lib.train.memcount import head_step_peak

    for chunked in (False, True):
        real = head_step_peak(64, 1000, 16, chunked=chunked, chunk=16, device="cpu")
        meta = head_step_peak(64, 1000, 16, chunked=chunked, chunk=16, device="meta")
        assert real == meta > 0


def test_bf16_autocast_matches_the_models_own_bf16_head(tok, monkeypatch):
    """Under autocast the chunked head multiplies in bf16, as the model's lm_head does in its own forward."""
    monkeypatch.setattr(modeling, "LOGPROB_CHUNK", 4)
    model = toy.make_model(tok, seed=0)
    ids, attn = batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_lp, _ = reference(model, ids, attn, 1.0)
        lp = modeling.token_logprobs(model, ids, attn)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=2e-2)  # bf16 logits: ~3 significant digits
    assert (lp - ref_lp).abs().max() < (lp - reference(model, ids, attn, 1.0)[0]).abs().max() + 1e-3
