"""The HF rollout engine: same tokens as transformers' own greedy decoding, log-probs that match the training
forward, finished rows dropped, seeded sampling."""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lib.engine.rollout import HFEngine, prompt_seed, row_keys, row_uniforms, sample_token
from lib.train.modeling import token_logprobs

PROMPTS = ["<|im_start|>user\nCompute 1+2.<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nCompute 7*8+5, then tell me more.<|im_end|>\n<|im_start|>assistant\n"]


def load(d):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def test_greedy_matches_transformers_generate(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    eng = HFEngine(model, tok)
    out = eng.generate(PROMPTS, n=2, max_new_tokens=12, temperature=0.0)
    for prompt, comps in zip(PROMPTS, out):
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             eos_token_id=eng.stop_ids, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        assert len(comps) == 2
        for c in comps:
            assert c.token_ids == ref[:len(c.token_ids)]
            assert c.finish_reason == ("stop" if c.token_ids[-1] in eng.stop_ids else "length")


def test_sampled_logprobs_match_training_forward(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    out = HFEngine(model, tok).generate(PROMPTS, n=3, max_new_tokens=10, temperature=0.7, seed=1)
    for prompt, comps in zip(PROMPTS, out):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        for c in comps:
            ids = torch.tensor([p + c.token_ids])
            lp = token_logprobs(model, ids, torch.ones_like(ids), temperature=0.7)[0, len(p):]
            assert torch.allclose(lp, torch.tensor(c.logprobs), atol=1e-4)
            assert len(c.logprobs) == len(c.token_ids) <= 10


def test_seeded_and_rows_stop_independently(tiny_model_dir):
    model, tok = load(tiny_model_dir)
    eng = HFEngine(model, tok)
    a = eng.generate(PROMPTS, n=4, max_new_tokens=16, seed=3)
    b = eng.generate(PROMPTS, n=4, max_new_tokens=16, seed=3)
    assert [[c.token_ids for c in x] for x in a] == [[c.token_ids for c in x] for x in b]
    # force early stops: make the stop token likely for some rows by sampling at high temperature
    c = eng.generate(PROMPTS * 8, n=4, max_new_tokens=16, temperature=3.0, seed=0)
    lens = {len(x.token_ids) for comps in c for x in comps}
    assert len(lens) > 1 and max(lens) <= 16
    for comps in c:
        for x in comps:  # a stopped row ends at its stop token and never continues past it
            stops = [i for i, t in enumerate(x.token_ids) if t in eng.stop_ids]
            assert stops == ([len(x.token_ids) - 1] if x.finish_reason == "stop" else [])


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    gen = torch.Generator().manual_seed(0)
    toks = {sample_token(logits, 1.0, 0.5, torch.rand(1, generator=gen))[0].item() for _ in range(50)}
    assert toks == {0}  # the top token alone already holds >= 0.5 of the mass
    toks = {sample_token(logits, 1.0, 0.8, torch.rand(1, generator=gen))[0].item() for _ in range(200)}
    assert toks == {0, 1}
    tok, lp = sample_token(logits, 1.0, 0.8, torch.rand(1, generator=gen))
    assert abs(lp.item() - torch.log(torch.tensor([0.6, 0.3]))[tok.item()].item()) < 1e-5  # before truncation


def test_top_p_samples_the_renormalised_nucleus():
    # [0.5, 0.3, 0.15, 0.05, 0] with top_p 0.9: the mass before token 2 is 0.8 <= 0.9, before token 3 0.95 > 0.9,
    # so the nucleus is tokens 0-2, sampled as [0.5, 0.3, 0.15] / 0.95; a token of probability 0 never comes out
    p = torch.tensor([0.3, 0.05, 0.5, 0.0, 0.15])  # (unsorted: the sampler sorts)
    logits = torch.log(p).expand(40000, -1)
    tok, _ = sample_token(logits, 1.0, 0.9, row_uniforms(torch.arange(40000), 0))
    freq = torch.bincount(tok, minlength=5).float() / tok.numel()
    want = torch.tensor([0.3, 0.0, 0.5, 0.0, 0.15]) / 0.95
    assert freq[1] == 0 and freq[3] == 0
    assert torch.allclose(freq, want, atol=0.01), freq


def test_in_place_kv_cache_decodes_as_the_models_forward(tiny_model_dir):
    """lib/engine/decode.py (the engine's default for Qwen2) against the model's own forward with transformers'
    DynamicCache: the same tokens from the same seed, across several cache growths (70 tokens, BLOCK 32) and rows
    finishing at different steps, and log-probs equal to float rounding."""
    from lib.engine import decode

    model, tok = load(tiny_model_dir)
    fast, plain = HFEngine(model, tok), HFEngine(model, tok, fast_decode=False)
    assert fast.decoder is not None and plain.decoder is None
    kw = dict(n=4, max_new_tokens=70, temperature=1.5, seed=5)
    a, b = fast.generate(PROMPTS * 3, **kw), plain.generate(PROMPTS * 3, **kw)
    rows = [(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys)]
    assert [x.token_ids for x, _ in rows] == [y.token_ids for _, y in rows]
    assert len({len(x.token_ids) for x, _ in rows}) > 1 and max(len(x.token_ids) for x, _ in rows) > decode.BLOCK
    for x, y in rows:
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)


def test_in_place_kv_cache_only_where_it_reproduces_the_model(tiny_model_dir):
    from lib.engine import decode

    model, _ = load(tiny_model_dir)
    assert decode.supports(model)
    model.config.use_sliding_window = True
    assert not decode.supports(model)
    model.config.use_sliding_window = False
    model.config.model_type = "llama"
    assert not decode.supports(model)


def test_row_uniforms_are_uniform_and_per_row():
    """The counter-based stream: uniform in [0, 1), a row's draw a function of its key and step only, distinct
    keys and steps independent-looking (no two of 20,000 draws equal, means and a lag-1 correlation as for iid)."""
    keys = torch.tensor(row_keys([prompt_seed(3, i) for i in range(2500)], 8))  # 20,000 rows
    u0, u1 = row_uniforms(keys, 0), row_uniforms(keys, 1)
    assert 0 <= float(u0.min()) and float(u0.max()) < 1 and u0.unique().numel() == u0.numel()
    assert abs(float(u0.mean()) - 0.5) < 0.01 and abs(float((u0 < 0.1).double().mean()) - 0.1) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([u0, u1]))[0, 1])) < 0.03
    assert torch.equal(row_uniforms(keys[5:9], 1), u1[5:9])  # the same draws, whatever the other rows


def test_a_prompts_samples_do_not_depend_on_the_call(tiny_model_dir):
    """Per-prompt seeds: the samples of a prompt are the same alone, in a larger call, or in another chunking (what
    data-parallel evaluation and exact resume rely on), and two copies of one prompt in a call get different samples."""
    model, tok = load(tiny_model_dir)
    prompts = PROMPTS * 3  # prompt 0 and prompt 2 are the same text
    full = HFEngine(model, tok).generate(prompts, n=4, max_new_tokens=16, seed=11)
    seeds = [prompt_seed(11, i) for i in range(len(prompts))]
    part = HFEngine(model, tok, max_batch=4).generate(prompts[2:5], n=4, max_new_tokens=16, seed=seeds[2:5])
    ids = lambda out: [[c.token_ids for c in comps] for comps in out]  # noqa: E731
    assert ids(part) == ids(full[2:5])
    assert ids(full)[0] != ids(full)[2]


def test_records_carry_token_ids_where_the_filter_may_keep_them():
    """Correct responses and responses with partial credit keep their token ids (filter.py --success-metric reward
    may keep them); a plain wrong one (the verifier's -1) does not."""
    from lib.engine.rollout import Completion, to_trajectories
    from lib.run.data import Problem

    verdicts = {"right": (1.0, True), "half": (0.5, False), "wrong": (-1.0, False)}
    reward_fn = lambda text, gt: {"score": verdicts[text][0], "acc": verdicts[text][1], "pred": ""}  # noqa: E731
    comps = [Completion([i, 9], [0.0, 0.0], text, "stop") for i, text in enumerate(verdicts)]
    trajs = to_trajectories([Problem("p", [], "1", prompt="q")], [comps], reward_fn)
    assert [t.response_ids for t in trajs] == [[0, 9], [1, 9], None]
