"""explore.py: the DAPO update, dynamic sampling, resume, errors and the vLLM weight-sync glue.

Everything runs on an untrained toy-architecture model (conftest's tiny_model_dir) with a synthetic reward,
so no test needs the cached toy base. Whole file: well under a minute on 2 CPU cores.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_vllm import fake_vllm  # noqa: F401 (a fixture)
from safetensors.torch import load_file

import explore
from lib import explore_setup as setup
from lib.engine.rollout import Completion, HFEngine, VLLMEngine
from lib.run import data
from lib.run.records import read_jsonl
from lib.train import update as train
from lib.train.modeling import token_logprobs

ROOT = Path(__file__).resolve().parent.parent


# -----------------------------------------------------------------------------
# helpers


def digit_reward(response: str, ground_truth: str) -> dict:
    """Synthetic verifier an untrained byte-level model can learn fast: 'correct' iff the text holds a digit.
    Around half of the untrained model's 24-token responses do, so most groups have a reward spread."""
    ok = any(ch.isdigit() for ch in response)
    return {"score": 1.0 if ok else -1.0, "acc": ok, "pred": ""}


def write_problems(path: Path, n: int = 8) -> Path:
    rows = [{"id": f"p{i}", "problem": f"Compute {i}+{i}.", "answer": str(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_problems(tmp_path_factory.mktemp("data") / "train.jsonl")


def run_args(model, data, out, *extra):
    """Tiny settings: 4 prompts x 4 responses x 24 tokens, 2 updates of 2 prompts per step."""
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--prompts-per-step", "4",
            "--n-samples", "4",
            "--mini-batch", "2", "--micro-batch", "4", "--max-new-tokens", "24", "--overlong-buffer", "4",
            "--lr", "1e-3", "--warmup-steps", "0", "--max-gen-batches", "4", "--backend", "hf", "--device", "cpu",
            *[str(x) for x in extra]]


def load_model(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# -----------------------------------------------------------------------------
# the update: micro-batch invariance, ratio 1 on the first update


def random_seqs(vocab: int, count: int = 16, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for i in range(count):
        P = int(torch.randint(3, 8, (1,), generator=g))
        L = 2 + 5 * (i % 4) ** 2  # 2, 7, 22, 47 tokens: per-micro-batch normalisation would weigh them unequally
        ids = torch.randint(3, vocab, (P + L,), generator=g).tolist()
        adv = float(torch.randn((), generator=g))
        seqs.append(train.Seq(ids[:P], ids[P:], adv))
    return seqs


def grouped_seqs(vocab: int, groups: int = 4, n: int = 4, seed: int = 0) -> list:
    """groups prompts (3-9 tokens) x n responses each (1-30 tokens): what an RL step trains on."""
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(groups):
        prompt = torch.randint(3, vocab, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist()
        for _ in range(n):
            L = int(torch.randint(1, 31, (1,), generator=g))
            seqs.append(train.Seq(prompt, torch.randint(3, vocab, (L,), generator=g).tolist(),
                                    float(torch.randn((), generator=g))))
    return seqs


def dapo(agg="token-mean", rollout_is="none"):
    """explore's micro-batch loss: DAPO's defaults, no KL."""
    return explore.micro_batch_loss(setup.Loss("dapo", 0.2, 0.28, 10.0, agg, 0.0, rollout_is, 2.0))


def update_cfg(temperature=1.0, micro=4, share=False):
    return train.UpdateConfig(mini_batch=1, micro_batch=micro, share_prompt=share, grad_clip=1.0,
                              temperature=temperature)


def grads_of(model, seqs, micro, cfg, per_micro_mean=False, share_prompt=False):
    """cfg: (loss_fn, UpdateConfig)"""
    model.zero_grad(set_to_none=True)
    mbs = train.make_micro_batches(seqs, micro, pad_id=0, device="cpu", share_prompt=share_prompt)
    if per_micro_mean:  # the trl#5619 bug: each micro-batch normalised by its own token count, then averaged
        for mb in mbs:
            train.accumulate_gradients(model, [mb], *cfg, float(mb.mask.sum()), float(mb.ids.shape[0]))
        for p in model.parameters():
            p.grad /= len(mbs)
    else:
        tokens = float(sum(len(s.response_ids) for s in seqs))
        train.accumulate_gradients(model, mbs, *cfg, tokens, float(len(seqs)))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def with_old_logprobs(model, seqs, noise=0.3, seed=1):
    """Give each sequence 'old' log-probs = current ones + noise, so ratios leave 1 and every clip branch fires."""
    g = torch.Generator().manual_seed(seed)
    (mb,) = train.make_micro_batches(seqs, len(seqs), pad_id=0, device="cpu", balance=False)
    with torch.no_grad():
        logp = token_logprobs(model, mb.ids, mb.attn)
    order = sorted(seqs, key=lambda s: len(s.prompt_ids) + len(s.response_ids))  # make_micro_batches' order
    out = []
    for j, s in enumerate(order):
        cur = logp[j][mb.mask[j]]
        old = (cur + noise * torch.randn(cur.shape, generator=g)).tolist()
        out.append(train.Seq(s.prompt_ids, s.response_ids, s.advantage, old))
    return out


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("share", [False, True])
def test_micro_batch_invariance(tiny_model_dir, agg, share):
    model = load_model(tiny_model_dir)
    seqs = with_old_logprobs(model, grouped_seqs(model.config.vocab_size) if share
                             else random_seqs(model.config.vocab_size))
    cfg = dapo(agg), update_cfg()
    one = grads_of(model, seqs, 16, cfg, share_prompt=share)
    four = grads_of(model, seqs, 4, cfg, share_prompt=share)
    assert one.keys() == four.keys() and len(one) > 0
    for name in one:
        torch.testing.assert_close(four[name], one[name], rtol=1e-4, atol=1e-6)
    if agg == "token-mean":  # the check has teeth: per-micro-batch token means give another gradient
        naive = grads_of(model, seqs, 4, cfg, per_micro_mean=True)
        diff = max((naive[n] - one[n]).abs().max().item() / (one[n].abs().max().item() + 1e-12) for n in one)
        assert diff > 0.05


def test_shared_prompt_gives_the_full_rows_log_probs_and_gradients(tiny_model_dir):
    model = load_model(tiny_model_dir)
    seqs = grouped_seqs(model.config.vocab_size)  # 4 prompts of 3-9 tokens x 4 responses of 1-30 tokens

    def response_logprobs(share):
        """{id(seq): (its response tokens' log-probs, entropies)}"""
        (mb,) = train.make_micro_batches(seqs, len(seqs), pad_id=0, device="cpu", balance=False,
                                           share_prompt=share)
        with torch.no_grad():
            logp, ent = train.micro_batch_logprobs(model, mb, temperature=0.7, with_entropy=True)
        key = (lambda s: len(s.response_ids)) if share else (lambda s: len(s.prompt_ids) + len(s.response_ids))
        order = sorted(seqs, key=key)  # make_micro_batches' row order (a stable sort)
        return mb, {id(s): (logp[j][mb.mask[j]], ent[j][mb.mask[j]]) for j, s in enumerate(order)}

    (_, full), (mb, shared) = response_logprobs(False), response_logprobs(True)
    assert mb.prompts.ids.shape[0] == 4 and mb.ids.shape[1] == 30  # 4 distinct prompts; rows hold responses
    for s in seqs:
        (a, c), (b, d) = full[id(s)], shared[id(s)]
        assert a.numel() == b.numel() == len(s.response_ids)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
        torch.testing.assert_close(d, c, rtol=0, atol=1e-5)
    seqs = with_old_logprobs(model, seqs)  # ratios away from 1: every clip branch in the gradient
    cfg = dapo(), update_cfg(0.7)
    one, two = grads_of(model, seqs, 8, cfg), grads_of(model, seqs, 8, cfg, share_prompt=True)
    assert one.keys() == two.keys() and len(one) > 0
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)


def test_train_on_batch_scores_old_log_probs_once_per_mini_batch_after_the_first(tiny_model_dir, monkeypatch):
    """The first mini-batch reuses its update's own log-probs: same weights as a separate scoring pass of every
    mini-batch (verl's way), one forward pass fewer."""
    vocab = load_model(tiny_model_dir).config.vocab_size
    seqs = grouped_seqs(vocab, groups=6, n=3)
    groups = [explore.Group(None, seqs[i].prompt_ids, [Completion(s.response_ids, [], "", "stop")
                                                        for s in seqs[i:i + 3]],
                            [1.0, -1.0, 1.0 if i % 2 else -1.0], [], []) for i in range(0, 18, 3)]
    cfg = explore.get_args(["--prompts-per-step", "6", "--mini-batch", "2", "--micro-batch", "4", "--lr", "1e-3"])

    model = load_model(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    scored = []
    fill = train.fill_old_logprobs
    monkeypatch.setattr(train, "fill_old_logprobs", lambda m, mbs, *a: scored.append(len(mbs)) or fill(m, mbs, *a))
    st = explore.train_on_batch(model, opt, groups, cfg.update, cfg.loss, pad_id=0, device="cpu")
    assert st["updates"] == 3 and len(scored) == 2  # mini-batches 2 and 3 only

    ref = load_model(tiny_model_dir)  # the reference: score every mini-batch first, then update
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.1)
    per_group = [[train.Seq(g.prompt_ids, c.token_ids, a) for c, a in zip(g.completions, adv)]
                 for g, adv in zip(groups, explore.advantages(groups))]
    plans = [train.make_micro_batches([s for g in per_group[i:i + 2] for s in g], 4, 0, "cpu", share_prompt=True)
             for i in range(0, 6, 2)]
    for mbs in plans:
        fill(ref, mbs, cfg.update.temperature)
    for mbs in plans:
        train.optimizer_update(ref, ref_opt, mbs, explore.micro_batch_loss(cfg.loss), cfg.update)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        assert not torch.equal(a, load_model(tiny_model_dir).get_parameter(name))  # the weights moved
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss", sorted(explore.LOSSES))
def test_every_loss_trains(tiny_model_dir, loss):
    """--loss NAME runs the whole update: the weights move, the loss's stats reach the step's numbers."""
    vocab = load_model(tiny_model_dir).config.vocab_size
    seqs = grouped_seqs(vocab, groups=4, n=3)
    groups = [explore.Group(None, seqs[i].prompt_ids, [Completion(s.response_ids, [], "", "stop")
                                                        for s in seqs[i:i + 3]], [1.0, -1.0, 1.0], [], [])
              for i in range(0, 12, 3)]
    cfg = explore.get_args(["--loss", loss, "--prompts-per-step", "4", "--mini-batch", "2", "--micro-batch", "4"])
    model = load_model(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    st = explore.train_on_batch(model, opt, groups, cfg.update, cfg.loss, pad_id=0, device="cpu")
    assert st["updates"] == 2 and st["skipped_updates"] == 0 and st["grad_norm"] > 0
    assert {"clipfrac_high", "clipfrac_low", "approx_kl"} <= st.keys()
    assert st["approx_kl"] != 0  # the second update sees ratios != 1
    before = load_model(tiny_model_dir)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))


@pytest.mark.parametrize("share", [False, True])
def test_first_update_sees_ratio_one(tiny_model_dir, share):
    model = load_model(tiny_model_dir)
    seqs = grouped_seqs(model.config.vocab_size, groups=2) if share else random_seqs(model.config.vocab_size, 8)
    mbs = train.make_micro_batches(seqs, 3, pad_id=0, device="cpu", share_prompt=share)
    train.fill_old_logprobs(model, mbs, temperature=0.7)
    st = train.accumulate_gradients(model, mbs, dapo(), update_cfg(0.7), 100.0, 8.0)
    assert st["approx_kl"] == 0.0  # old == new bit for bit: log-ratio exactly 0 on every token
    assert st["clipfrac_high"] == st["clipfrac_low"] == st["clipfrac_dual"] == 0.0


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_rollout_correction_with_equal_log_probs_leaves_the_update_unchanged(tiny_model_dir, level):
    model = load_model(tiny_model_dir)
    seqs = with_old_logprobs(model, grouped_seqs(model.config.vocab_size))  # ratios != 1: every clip branch

    def grads(rollout_is, shift):
        model.zero_grad(set_to_none=True)
        mbs = train.make_micro_batches(seqs, 4, pad_id=0, device="cpu")
        for mb in mbs:  # the sampler's log-probs: the trainer's old ones, shifted
            mb.rollout_logp = torch.where(mb.mask, mb.old_logp - shift, torch.nan)
        st = train.accumulate_gradients(model, mbs, dapo(rollout_is=rollout_is), update_cfg(), 300.0, 16.0)
        return st, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (_, off), (st, on) = grads("none", 0.0), grads(level, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(off, on))  # bit for bit: every weight is exactly 1
    assert st["rollout_is_mean"] == st["tokens"] and st["rollout_is_truncated"] == 0  # (sums x tokens)
    _, moved = grads(level, 0.1)  # the sampler gave every token less probability: weights e^0.1 (token) > 1
    assert not all(torch.equal(a, b) for a, b in zip(off, moved))


def test_nonfinite_update_is_skipped(tiny_model_dir):
    model = load_model(tiny_model_dir)
    seqs = random_seqs(model.config.vocab_size, count=4)
    seqs[0].advantage = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mbs = train.make_micro_batches(seqs, 2, pad_id=0, device="cpu")
    st = train.optimizer_update(model, opt, mbs, dapo(), update_cfg())
    assert st["skipped"] is True
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not opt.state  # AdamW never stepped


# -----------------------------------------------------------------------------
# dynamic sampling: the filter, the refill loop and its cap


class ScriptedEngine:
    """Returns, for each prompt, responses given by script(problem_id) -> list of response texts."""

    def __init__(self, script):
        self.script, self.calls = script, 0

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        self.calls += 1
        out = []
        for p in prompts:
            texts = self.script(p)
            assert len(texts) == n
            out.append([Completion(list(range(len(t))), [0.0] * len(t), t, "stop") for t in texts])
        return out

    def sync_weights(self, model=None):
        pass


def collect(problem_ids, script, *extra, answers=None, store=None):
    from lib.algo.reward import score
    from lib.run.data import Problem
    from lib.worlds.toy import make_tokenizer

    problems = [Problem(pid, [], answers[pid] if answers else "5", prompt=pid) for pid in problem_ids]
    cfg = explore.get_args(["--n-samples", "4", "--max-new-tokens", "24", "--overlong-buffer", "8", *extra])
    logs = []
    batch = explore.collect_batch(ScriptedEngine(script), data.PromptStream(problems, seed=0), make_tokenizer(),
                                  score, cfg.sampling, step=1, log=logs.append, store=store)
    return batch, logs


RIGHT, WRONG = "Answer: 5", "Answer: 6"
MIXED = lambda p: [RIGHT, WRONG, WRONG, RIGHT]  # noqa: E731
SAME = lambda p: [RIGHT] * 4  # noqa: E731


def test_dynamic_sampling_refills_until_full():
    # half the prompts have a spread: two generation batches of 4 fill a train batch of 4
    script = lambda p: MIXED(p) if p in ("a", "b") else SAME(p)  # noqa: E731
    batch, logs = collect(["a", "b", "c", "d"], script, "--prompts-per-step", "4", "--mini-batch", "4")
    assert batch.gen_batches == 2 and batch.drawn_groups == 8 and batch.passed_filter == 4
    assert sorted(g.problem.id for g in batch.groups) == ["a", "a", "b", "b"]
    assert len(batch.groups) == 4 and not batch.capped and not logs
    assert len(batch.rows) == 8 * 4 and sum(r["kept"] for r in batch.rows) == 4 * 4
    assert all(r["step"] == 1 and r["source"] == "explore" for r in batch.rows)


def test_dynamic_sampling_surplus_not_trained():
    batch, _ = collect(["a", "b", "c", "d"], MIXED, "--prompts-per-step", "2", "--mini-batch", "2",
                       "--gen-batch-size", "4")
    assert batch.gen_batches == 1 and batch.passed_filter == 4 and len(batch.groups) == 2
    assert sum(r["kept"] for r in batch.rows) == 2 * 4  # the two surplus groups are logged, not kept


def test_dynamic_sampling_cap_trains_on_what_it_has():
    script = lambda p: MIXED(p) if p == "a" else SAME(p)  # noqa: E731
    batch, logs = collect(["a", "b", "c", "d"], script, "--prompts-per-step", "4", "--mini-batch", "4",
                          "--max-gen-batches", "3")
    assert batch.capped and batch.gen_batches == 3 and len(batch.groups) == 3  # 'a' once per batch
    assert len(logs) == 1 and "--max-gen-batches 3" in logs[0] and "3 of 4" in logs[0]


def test_dynamic_sampling_off_keeps_everything():
    batch, _ = collect(["a", "b", "c", "d"], SAME, "--prompts-per-step", "4", "--mini-batch", "4",
                       "--no-dynamic-sampling")
    assert batch.gen_batches == 1 and len(batch.groups) == 4 and all(r["kept"] for r in batch.rows)


def test_filter_metric_acc_ignores_the_overlong_penalty():
    # all four right, but one ends in the overlong buffer (24 - 8 = 16 tokens are free): the rewards differ,
    # the accuracies do not. verl's DAPO filters on acc -> dropped; on the reward -> kept.
    long_right = lambda p: [RIGHT, RIGHT, RIGHT, "x" * 12 + RIGHT]  # noqa: E731  21 tokens -> penalty -5/8
    by_acc, _ = collect(["a"], long_right, "--prompts-per-step", "1", "--mini-batch", "1", "--max-gen-batches", "1")
    by_rew, _ = collect(["a"], long_right, "--prompts-per-step", "1", "--mini-batch", "1", "--max-gen-batches", "1",
                        "--filter-metric", "reward")
    assert by_acc.groups == [] and len(by_rew.groups) == 1
    assert by_rew.groups[0].rewards == [1.0, 1.0, 1.0, 1.0 - 5 / 8]


def test_data_order_is_a_function_of_seed_and_position():
    from lib.run.data import Problem

    probs = [Problem(str(i), [], "0") for i in range(5)]
    a = data.PromptStream(probs, seed=3)
    first = [p.id for p in a.draw(12)]  # crosses two epoch boundaries
    assert sorted(first[:5]) == sorted(first[5:10]) == [str(i) for i in range(5)]
    b = data.PromptStream(probs, seed=3, position=7)
    assert [p.id for p in b.draw(5)] == first[7:12]


# -----------------------------------------------------------------------------
# whole runs


class RecordingEngine(HFEngine):
    """The HF engine, recording every sync_weights call with a fingerprint of the weights it was handed."""

    def __init__(self, model, tok):
        super().__init__(model, tok)
        self.synced = []

    def sync_weights(self, model=None):
        self.synced.append(sum(p.detach().double().sum().item() for p in model.parameters()))


def test_short_run_raises_the_reward(tiny_model_dir, data_file, tmp_path):
    engines = []

    def engine_fn(model, tok, path):
        engines.append(RecordingEngine(model, tok))
        return engines[-1]

    out = tmp_path / "run"
    explore.main(run_args(tiny_model_dir, data_file, out, "--rl-steps", "6", "--save-every", "6", "--lr", "3e-3"),
                 reward_fn=digit_reward, engine_fn=engine_fn)
    rows = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 7))
    early, late = sum(r["mean_acc"] for r in rows[:2]) / 2, sum(r["mean_acc"] for r in rows[-2:]) / 2
    assert late > early + 0.15, [r["mean_acc"] for r in rows]  # measured: 0.59 -> 0.88
    # every step pushed its weights to the engine, new ones after each step with updates; the last push is
    # the saved final weights
    synced = engines[0].synced
    assert len(synced) == 6
    changed = [a != b for a, b in zip([None] + synced[:-1], synced)]
    assert changed == [r["updates"] > 0 for r in rows]
    final = load_file(out / "ckpt_000006" / "model.safetensors")
    assert synced[-1] == pytest.approx(sum(t.double().sum().item() for t in final.values()), rel=1e-9)
    # rollouts: every drawn response, with its step, kept or not
    rolls = [r for _, r in read_jsonl(out / "rollouts.jsonl")]
    assert {r["step"] for r in rolls} == set(range(1, 7)) and any(r["kept"] for r in rolls)
    assert sum(r["kept"] for r in rolls) == sum(r["train_prompts"] for r in rows) * 4


def strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "gen_time", "step_time")} for r in rows]


def test_fp32_sampler_matches_the_trainer(tiny_model_dir, data_file, tmp_path):
    """The sampler/trainer gap in fp32 is rounding: the engine's log-probs of its sampled tokens against the training
    forward's, every step, while the weights move (lr 1e-2). A decode path or a weight update that stops matching the
    trainer (a stale copy, a wrong cache) shows here. Measured here: at most 1.4e-8 over these steps (a bf16 sampler:
    3e-5, see below); the bound is 1e-6."""
    out = tmp_path / "fp32"
    explore.main(run_args(tiny_model_dir, data_file, out, "--rl-steps", "3", "--save-every", "3", "--lr", "1e-2",
                          "--rollout-dtype", "float32", "--no-bf16"), reward_fn=digit_reward)
    rows = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    assert len(rows) == 3 and sum(r["updates"] - r["skipped_updates"] for r in rows) == 6
    assert all(r["rollout_probs_diff_max"] < 1e-6 for r in rows), [r["rollout_probs_diff_max"] for r in rows]


def test_bf16_sampler_against_fp32_trainer_logs_the_correction(tiny_model_dir, data_file, tmp_path):
    """The HF engine in bf16 beside the fp32 trainer: a real mismatch, which --rollout-is token weighs and logs."""
    out = tmp_path / "bf16"
    explore.main(run_args(tiny_model_dir, data_file, out, "--rl-steps", "2", "--save-every", "2", "--rollout-is",
                          "token", "--rollout-dtype", "bfloat16", "--no-bf16"), reward_fn=digit_reward)
    rows = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    assert len(rows) == 2
    for r in rows:
        assert r["rollout_probs_diff_max"] > 1e-5  # bf16 rounding (measured 3e-5 here; fp32 gives < 1e-6)
        assert 0.5 < r["rollout_is_mean"] < 2 and r["rollout_is_mean"] != 1.0
        assert 0 <= r["rollout_is_truncated"] < 1


def test_resume_matches_an_uninterrupted_run(tiny_model_dir, data_file, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    explore.main(run_args(tiny_model_dir, data_file, full, "--rl-steps", "4", "--save-every", "2"),
                 reward_fn=digit_reward)
    explore.main(run_args(tiny_model_dir, data_file, part, "--rl-steps", "2", "--save-every", "2"),
                 reward_fn=digit_reward)
    # a kill after step 2's checkpoint, mid-write of step 3: torn lines that the resume must drop
    with open(part / "rollouts.jsonl", "a") as f:
        f.write('{"problem_id": "torn')
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward": 0.1}\n')
    # one policy for changed arguments (lib/train/checkpoint.check_same_args, as consolidate.py): a flag that shapes the
    # weights is refused, in one line naming it, before anything is written; --rl-steps / --save-every are free
    before = (part / "metrics.jsonl").read_bytes()
    refused = r"cannot --resume with different settings: the run used --lr 0.001 \(now 0.002\)$"
    with pytest.raises(explore.cli.UserError, match=refused):
        explore.main(run_args(tiny_model_dir, data_file, part, "--rl-steps", "4", "--resume", "--lr", "2e-3"),
                     reward_fn=digit_reward)
    assert (part / "metrics.jsonl").read_bytes() == before  # the torn line is still there: nothing was touched
    explore.main(run_args(tiny_model_dir, data_file, part, "--rl-steps", "4", "--save-every", "2", "--resume"),
                 reward_fn=digit_reward)

    a = load_file(full / "ckpt_000004" / "model.safetensors")
    b = load_file(part / "ckpt_000004" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it did train
    assert (full / "rollouts.jsonl").read_bytes() == (part / "rollouts.jsonl").read_bytes()
    ma = [r for _, r in read_jsonl(full / "metrics.jsonl")]
    mb = [r for _, r in read_jsonl(part / "metrics.jsonl")]
    assert strip_times(ma) == strip_times(mb) and [r["step"] for r in mb] == [1, 2, 3, 4]
    # only the newest checkpoint keeps the (large) resume state; the older one stays a loadable model
    assert (part / "ckpt_000004" / "resume" / "state.pt").exists()
    assert not (part / "ckpt_000002" / "resume").exists() and (part / "ckpt_000002" / "config.json").exists()

    # a finished run: --resume does nothing and says so
    capsys.readouterr()
    assert explore.main(run_args(tiny_model_dir, data_file, part, "--rl-steps", "4", "--resume"),
                        reward_fn=digit_reward) == 0
    assert "nothing to do" in capsys.readouterr().out
    # without --resume, a folder with checkpoints is never overwritten
    with pytest.raises(explore.cli.UserError, match="already holds checkpoints"):
        explore.main(run_args(tiny_model_dir, data_file, part, "--rl-steps", "4"), reward_fn=digit_reward)


def test_cap_hit_every_step_never_crashes(tiny_model_dir, data_file, tmp_path, capsys):
    never = lambda response, gt: {"score": -1.0, "acc": False, "pred": ""}  # noqa: E731  no spread, ever
    out = tmp_path / "flat"
    explore.main(run_args(tiny_model_dir, data_file, out, "--rl-steps", "2", "--save-every", "2", "--max-gen-batches",
                          "2"), reward_fn=never)
    rows = [r for _, r in read_jsonl(out / "metrics.jsonl")]
    assert [(r["capped"], r["gen_batches"], r["train_prompts"], r["updates"]) for r in rows] == [(1, 2, 0, 0)] * 2
    assert (out / "ckpt_000002" / "config.json").exists()
    log = capsys.readouterr().out.splitlines()
    assert "step 2: --max-gen-batches 2 reached with 0 of 4 prompts kept; this step trains on 0 prompts " \
           "(capped 1 in metrics.jsonl)" in log
    assert log[-1] == ("the generation-batch cap was hit on 2 of 2 steps (--max-gen-batches 2): those steps trained "
                       "on fewer than --prompts-per-step prompts")


# -----------------------------------------------------------------------------
def test_replay_puts_a_stored_success_in_a_group_without_one():
    store = {"a": ([5, 6, 7], 0.75)}
    batch, _ = collect(["a", "b"], lambda p: [WRONG] * 4, "--prompts-per-step", "2", "--mini-batch", "2",
                       "--max-gen-batches", "1", store=store)
    # 'a' had no success: the stored one replaces its last response and gives the group a spread (dynamic sampling
    # keeps it); 'b' has nothing stored: still all wrong, dropped
    assert [g.problem.id for g in batch.groups] == ["a"]
    (g,) = batch.groups
    assert g.replayed == 1 and g.accs == [False, False, False, True] and g.rewards[-1] == 0.75
    assert g.completions[-1].token_ids == [5, 6, 7] and g.completions[-1].logprobs is None
    assert not any(r["acc"] for r in batch.rows)  # rollouts.jsonl keeps what was sampled
    assert explore.advantages(batch.groups)[0][-1] > 0  # advantages over the mixed group


def test_replay_store_keeps_each_prompts_newest_success():
    store = {"a": ([1], 1.0)}
    collect(["a", "b"], lambda p: [WRONG, RIGHT, WRONG, WRONG], "--prompts-per-step", "2", "--mini-batch", "2",
            store=store)
    assert set(store) == {"a", "b"} and store["a"][0] == list(range(len(RIGHT))) and store["a"][1] == 1.0
    batch, _ = collect(["a"], MIXED, "--prompts-per-step", "1", "--mini-batch", "1", store=store)
    assert batch.groups[0].replayed == 0  # a group with a success of its own replays nothing
    assert explore.remember({}, batch.rows) == {"a": (list(range(len(RIGHT))), 1.0)}  # what --resume rebuilds


# bad input: one line, non-zero exit


def run_cli(*args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "explore.py"), *args, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_bad_data_is_one_clear_line(tmp_path, case):
    path = tmp_path / "prompts.jsonl"
    if case == "empty":
        path.write_text("\n")
    r = run_cli("--data", str(path), tmp_path=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], r.stderr
    assert ("no such file" if case == "missing" else "empty") in lines[0]
    assert not (tmp_path / "o").exists()


def test_bad_flag_combination_is_one_clear_line(tmp_path):
    r = run_cli("--prompts-per-step", "10", "--mini-batch", "4", tmp_path=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --prompts-per-step (10) must be a multiple of --mini-batch (4)"]


def test_share_prompt_is_on_unless_activations_are_recomputed():
    assert explore.get_args([]).update.share_prompt is True
    assert explore.get_args(["--no-share-prompt"]).update.share_prompt is False
    assert explore.get_args(["--grad-checkpointing"]).update.share_prompt is False  # no KV cache under checkpointing
    with pytest.raises(explore.cli.UserError, match="--share-prompt needs a KV cache"):
        explore.get_args(["--grad-checkpointing", "--share-prompt"])


# -----------------------------------------------------------------------------
# vLLM glue, against tests/fake_vllm.py (CI has no GPU and no vllm; more in tests/test_vllm_fake.py)


def test_vllm_sync_weights_pushes_current_weights_in_memory(fake_vllm, tiny_model_dir):
    model = load_model(tiny_model_dir)
    from transformers import AutoTokenizer

    eng = VLLMEngine(str(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir), max_model_len=256,
                     in_process=True)
    eng.sync_weights(model)
    assert eng.llm.calls == ["reload_weights", "reset_prefix_cache"]  # stale prefix KV dropped after load
    sent = eng.llm.model.received
    assert [n for n, _ in sent] == list(model.state_dict().keys())
    sd = model.state_dict()
    for n, t in sent:
        assert t.dtype == torch.bfloat16 and torch.equal(t, sd[n].to(torch.bfloat16))

    with torch.no_grad():  # the next sync carries the new values, not a cached copy
        model.model.embed_tokens.weight.add_(1.0)
    eng.sync_weights(model)
    sent2 = dict(eng.llm.model.received)
    assert torch.equal(sent2["model.embed_tokens.weight"], model.model.embed_tokens.weight.to(torch.bfloat16))
    assert torch.equal(eng.llm.model.params["model.embed_tokens.weight"], sent2["model.embed_tokens.weight"])

    with pytest.raises(RuntimeError, match="in_process"):
        VLLMEngine(str(tiny_model_dir), eng.tok, max_model_len=256, in_process=False).sync_weights(model)
