"""lib/train/sft.py and consolidate.py: prompt masking, the token-mean objective, that SFT learns its data, the
finished folder loading in evaluate.py, resume equivalence, and bad input refused before anything is written.
Models are the toy architecture, untrained (plumbing), except where a test needs a run that really trains
or two models that really differ (the KL term)."""

import copy
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Killed, dying_train
from safetensors.torch import load_file

import consolidate
import evaluate
from lib.run.cli import EXIT_USER_ERROR, UserError
from lib.run.records import Trajectory, write_jsonl
from lib.train import sft
from lib.train.modeling import token_logprobs
from lib.worlds import toy

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest) tiny models, shared 2-core box


@pytest.fixture(scope="module")
def tok():
    return toy.make_tokenizer()


def trajectories(tok, n: int, seed: int = 0) -> list[Trajectory]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        prompt = tok.apply_chat_template([{"role": "user", "content": f"Compute {a}+{b}."}], tokenize=False,
                                         add_generation_prompt=True)
        out.append(Trajectory(f"p{i}", prompt, f"{a}+{b}={a + b}\nAnswer: {a + b}", 1.0, True,
                              ground_truth=str(a + b), step=1 + i % 3, source="rollout"))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, tok, tiny_model_dir):
    """An untrained toy policy folder (conftest), an rft.jsonl and a 3-problem benchmark file."""
    root = tmp_path_factory.mktemp("cons")
    (root / "policy").symlink_to(tiny_model_dir, target_is_directory=True)
    write_jsonl(root / "rft.jsonl", trajectories(tok, 16))
    bench = [{"id": f"b{i}", "problem": f"Compute {i}+1.", "answer": str(i + 1)} for i in range(3)]
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bench))
    return root


# ---------------------------------------------------------------------------------------------------------
# lib/train/sft.py


class KeepLogits(torch.nn.Module):
    """Wraps a causal LM so the test can read d loss / d logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **kw):
        out = self.model(**kw)
        out.logits.retain_grad()
        self.logits = out.logits  # [B, T, V]
        return out


def test_prompt_tokens_get_no_gradient(tok):
    model = KeepLogits(toy.make_model(tok, seed=0))
    long = sft.Example(prompt_ids=[5, 6, 7, 8, 9], response_ids=[10, 11, 12])
    short = sft.Example(prompt_ids=[5, 6], response_ids=[13])
    cfg = sft.SFTConfig(batch_size=2)
    # the step sorts by length: row 0 = short (T=3, padded to 8), row 1 = long (T=8)
    sft.step_loss(model, [long, short], cfg, tok.pad_token_id, 4.0, consolidate.rft_loss)
    g = model.logits.grad.abs().sum(-1)  # [2, 8]: position t's logits predict token t + 1
    assert g.shape == (2, 8)
    # long: prompt 0..4, response 5..7 -> only positions 4, 5, 6 (predicting 5, 6, 7) carry gradient
    assert torch.all(g[1, :4] == 0) and torch.all(g[1, 4:7] > 0) and g[1, 7] == 0
    # short: prompt 0..1, response 2 -> only position 1; the padding 3..7 gets none
    assert g[0, 0] == 0 and g[0, 1] > 0 and torch.all(g[0, 2:] == 0)


def test_loss_is_token_mean_over_the_step_whatever_the_micro_batch(tok):
    exs = [sft.Example([5, 6, 7], [10, 11, 12, 13]), sft.Example([5], [14]), sft.Example([5, 6], [15, 16])]
    n_tokens = 7.0
    m = toy.make_model(tok, seed=1)
    grads, losses = [], []
    for mb in (0, 1, 2):
        model = copy.deepcopy(m)
        nll, _ = sft.step_loss(model, exs, sft.SFTConfig(micro_batch=mb), tok.pad_token_id, n_tokens,
                               consolidate.rft_loss)
        losses.append(nll)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # by hand: one row at a time, summed NLL of the response tokens / all response tokens of the step
    with torch.no_grad():
        total = 0.0
        for e in exs:
            ids = torch.tensor([e.prompt_ids + e.response_ids])
            total -= token_logprobs(m, ids, torch.ones_like(ids))[0, len(e.prompt_ids):].sum().item()
    assert losses[0] == pytest.approx(total / n_tokens, rel=1e-5)
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and torch.allclose(grads[0], grads[2], atol=1e-6)


def mean_nll(model, examples, pad_id) -> float:
    with torch.no_grad():
        ids, attn, mask = sft.collate(examples, pad_id, "cpu")
        return (-(token_logprobs(model, ids, attn) * mask).sum() / mask.sum()).item()


def test_sft_lowers_the_nll_of_its_data(tok):
    model = toy.make_model(tok, seed=0)
    examples = sft.tokenize(tok, trajectories(tok, 8))
    assert all(e.response_ids[-1] == tok.eos_token_id for e in examples)  # the model learns to stop
    before = mean_nll(model, examples, tok.pad_token_id)
    rows = sft.train(model, examples, sft.SFTConfig(steps=30, batch_size=8, lr=1e-3, warmup=3), tok.pad_token_id,
                     consolidate.rft_loss, progress=False)
    after = mean_nll(model, examples, tok.pad_token_id)
    assert len(rows) == 30 and [r["step"] for r in rows[:2]] == [1, 2]
    assert after < before - 1.0, (before, after)  # untrained ~5.5 nats/token; 30 steps on 8 examples: far lower


def test_kl_is_zero_against_itself_and_finite_with_padding(tok):
    model = toy.make_model(tok, seed=0)
    ref = copy.deepcopy(model).eval()
    exs = [sft.Example([5, 6, 7, 8], [10, 11]), sft.Example([5], [12])]
    _, kl = sft.step_loss(model, exs, sft.SFTConfig(kl_coef=0.5), tok.pad_token_id, 3.0, sft.nll_loss, ref_model=ref)
    assert kl == pytest.approx(0.0, abs=1e-6)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def sharpened(tok, seed: int, scale: float = 3.0):
    """A toy-architecture model with its weights scaled up: peaked, position-dependent predictions (an
    untrained model is near-uniform, and two of them would be near-equal distributions)."""
    m = toy.make_model(tok, seed=seed)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m


@pytest.mark.parametrize("micro_batch", [0, 1])
def test_kl_term_equals_a_hand_computed_k3_between_two_different_models(tok, micro_batch):
    """KL(pi || ref) on response tokens, k3 estimator with verl's clamp (low_var_kl, the same as explore.py's):
    sum over response tokens of min(e^d - d - 1, 10) with d = log ref(token) - log pi(token), divided by the step's
    response tokens. Computed here from the two models' logits with plain torch; and the gradient is that of
    (nll + kl_coef * kl) / tokens (0 through a clamped token)."""
    policy, ref = sharpened(tok, seed=0), sharpened(tok, seed=1).eval()
    exs = [sft.Example([5, 6, 7, 8], [10, 11, 12]), sft.Example([5], [13, 14]), sft.Example([9, 9], [15])]
    n_tokens, coef = 6.0, 0.3
    model = copy.deepcopy(policy)
    nll, kl = sft.step_loss(model, exs, sft.SFTConfig(kl_coef=coef, micro_batch=micro_batch), tok.pad_token_id,
                            n_tokens, sft.nll_loss, ref_model=ref)
    got_grad = torch.cat([p.grad.flatten() for p in model.parameters()])

    by_hand = copy.deepcopy(policy)
    nll_sum, kl_sum = 0.0, 0.0
    for e in exs:  # one unpadded row at a time
        ids = torch.tensor([e.prompt_ids + e.response_ids])  # [1, T]
        P = len(e.prompt_ids)
        tgt = ids[0, P:]  # the response tokens, predicted by positions P-1 .. T-2
        lp = torch.log_softmax(by_hand(input_ids=ids).logits[0, P - 1:-1].double(), -1)  # [R, V]
        with torch.no_grad():
            lr = torch.log_softmax(ref(input_ids=ids).logits[0, P - 1:-1].double(), -1)  # [R, V]
        pi_tok = lp.gather(-1, tgt[:, None])[:, 0]  # [R]
        ref_tok = lr.gather(-1, tgt[:, None])[:, 0]
        d = ref_tok - pi_tok
        nll_sum = nll_sum - pi_tok.sum()
        kl_sum = kl_sum + (torch.exp(d) - d - 1).clamp(max=10.0).sum()
    ((nll_sum + coef * kl_sum) / n_tokens).backward()
    want_grad = torch.cat([p.grad.flatten() for p in by_hand.parameters()]).float()

    assert kl_sum.item() / n_tokens > 0.05  # the two models disagree: a KL of 0 (or a dropped term) fails
    assert kl == pytest.approx(kl_sum.item() / n_tokens, rel=1e-4)
    assert nll == pytest.approx(nll_sum.item() / n_tokens, rel=1e-4)
    err = (got_grad - want_grad).abs().max().item()
    assert err < 1e-4 * want_grad.abs().max().item(), (err, want_grad.abs().max().item())


def test_plan_refuses_no_examples():
    with pytest.raises(ValueError):
        sft.plan(0, sft.SFTConfig())


# ---------------------------------------------------------------------------------------------------------
# consolidate.py


def cons_args(world, out, *extra):
    return ["--model", str(world / "policy"), "--trajectories", str(world / "rft.jsonl"), "--out", str(out),
            "--batch-size", "4", "--sft-steps", "6", "--save-every", "2", "--device", "cpu", *extra]


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def test_consolidate_writes_a_folder_evaluate_loads(world, tmp_path, capsys):
    out = tmp_path / "consolidated"
    consolidate.main(cons_args(world, out))
    names = {p.name for p in out.iterdir()}
    # (the tokenizer's extra files vary across transformers versions)
    assert names >= {"args.json", "config.json", "consolidate.json", "generation_config.json", "metrics.jsonl",
                     "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert not [n for n in names if n.startswith(("ckpt_", "."))]  # the resume points are gone
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "consolidate.json").read_text())["sft_steps"] == 6
    assert not list(tmp_path.glob(".consolidated*"))  # no temp folders left behind
    capsys.readouterr()

    evaluate.main(["--model", str(out), "--benchmarks", f"t={world / 'bench.jsonl'}", "--limit", "2",
                   "--n-samples", "2", "--max-new-tokens", "8", "--backend", "hf", "--device", "cpu",
                   "--out", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["benchmarks"]["t"]["problems"] == 2

    before = weights(out)
    consolidate.main(cons_args(world, out))  # a rerun on a finished folder does nothing and says so
    assert "nothing to do" in capsys.readouterr().out
    assert all(torch.equal(before[k], v) for k, v in weights(out).items())


def test_consolidate_really_trains(world, tok, tmp_path):
    """The output is not the starting policy: its weights moved, the logged loss fell over the run, and the
    NLL of the RFT data, measured here with both models, dropped."""
    out = tmp_path / "trained"
    consolidate.main(cons_args(world, out, "--sft-steps", "16", "--lr", "3e-3", "--warmup-steps", "0",
                               "--save-every", "0"))
    start, end = weights(world / "policy"), weights(out)
    assert start.keys() == end.keys()
    moved = max((end[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3, moved
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 16
    # each step is a different batch of 4: compare the first and last 4 steps (one pass over the data each)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 1.0, losses
    summary = json.loads((out / "consolidate.json").read_text())
    assert summary["loss_first"] == losses[0] and summary["loss_last"] == losses[-1]

    examples = sft.tokenize(tok, trajectories(tok, 16))
    from transformers import AutoModelForCausalLM

    before = mean_nll(AutoModelForCausalLM.from_pretrained(world / "policy", dtype=torch.float32), examples,
                      tok.pad_token_id)
    after = mean_nll(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), examples, tok.pad_token_id)
    assert after < before - 1.0, (before, after)


def test_consolidate_kl_is_zero_at_the_start_and_grows(world, tmp_path):
    """--kl-coef: the reference is the starting policy, so step 1 (before any update) has KL exactly 0 and
    later steps a positive KL."""
    out = tmp_path / "kl"
    consolidate.main(cons_args(world, out, "--sft-steps", "4", "--lr", "3e-3", "--warmup-steps", "0",
                               "--save-every", "0", "--kl-coef", "0.1"))
    kls = [json.loads(line)["kl"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and all(k > 1e-4 for k in kls[1:]), kls


def test_resume_reaches_the_same_weights(world, tmp_path, monkeypatch):
    consolidate.main(cons_args(world, tmp_path / "straight"))

    real_train = sft.train
    out = tmp_path / "resumed"
    monkeypatch.setattr(sft, "train", dying_train(real_train, after_step=3))
    with pytest.raises(Killed):
        consolidate.main(cons_args(world, out))
    monkeypatch.setattr(sft, "train", real_train)
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "ckpt_000002", "metrics.jsonl"]

    with pytest.raises(UserError, match="--resume"):  # never silently restart over a resumable run
        consolidate.main(cons_args(world, out))
    with pytest.raises(UserError, match="--lr"):  # nor resume it with other settings
        consolidate.main(cons_args(world, out, "--resume", "--lr", "1e-3"))
    consolidate.main(cons_args(world, out, "--resume"))

    a, b = weights(tmp_path / "straight"), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]  # step 3, logged after the checkpoint, redone once
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def run_consolidate(*argv):
    return subprocess.run([sys.executable, str(ROOT / "consolidate.py"), *map(str, argv)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)


GOOD = json.dumps({"problem_id": "a", "prompt": "p", "response": "r", "reward": 1.0, "acc": True})


@pytest.mark.parametrize("text,where", [
    (GOOD + "\n{not json\n", ":2: not valid JSON"),
    (GOOD + "\n" + json.dumps({"problem_id": "a", "prompt": "p", "response": "r", "reward": 1.0}) + "\n",
     ":2: missing field 'acc'"),
    ("", ": empty file"),
], ids=["not_json", "missing_acc", "empty"])
def test_bad_data_one_line_no_output(world, tmp_path, text, where):
    data = tmp_path / "rft.jsonl"
    data.write_text(text)
    out = tmp_path / "out"
    r = run_consolidate("--model", world / "policy", "--trajectories", data, "--out", out)
    assert r.returncode == EXIT_USER_ERROR
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}{where}"), r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_bad_model_one_line_no_output(world, tmp_path):
    out = tmp_path / "out"
    r = run_consolidate("--model", tmp_path / "nope", "--trajectories", world / "rft.jsonl", "--out", out)
    assert r.returncode == EXIT_USER_ERROR and len(r.stderr.strip().splitlines()) == 1
    assert "nope" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
