"""torchrun + FSDP2 on CPU (gloo): 2 ranks compute what 1 process computes, and whole runs under torchrun work.

  * the same batch, split over 2 ranks (FSDP2-sharded tiny model), gives the loss and updated weights of one
    process, for explore.py's update (train_on_batch: 3 mini-batches, one of them too small for both ranks) and
    consolidate.py's SFT step (sft.train: an odd batch over 2 ranks, several micro-batches, the KL term on)
  * the vLLM glue: full weights pushed from FSDP shards; sleep before the update, wake + sync after it
  * `torchrun --nproc_per_node 2 explore.py` runs, its checkpoint is one from_pretrained folder, --resume is
    exact with 2 ranks and refused with 1; `torchrun ... consolidate.py` ends with the 1-process weights
Every process runs one intra-op thread (a shared 2-core box). Whole file: ~60 s on an idle 2-core box.
"""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import fake_vllm as fv
import pytest
import torch
import torch.multiprocessing as mp
from conftest import MEMO_PROBLEMS
from fake_vllm import fake_vllm  # noqa: F401 (a fixture)
from safetensors.torch import load_file

import consolidate
import explore
from lib.engine.rollout import ColocatedVLLM, Completion
from lib.run.data import Problem
from lib.run.records import Trajectory, read_jsonl, write_jsonl
from lib.train import dist, sft
from lib.worlds import toy

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest) tiny models, shared 2-core box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------
# the same batch on 1 process and on 2 ranks


def rl_groups(vocab: int) -> list:
    """7 groups of 3 responses, lengths 2..40 tokens, mixed rewards: with --mini-batch 3 the mini-batches hold
    3, 3 and 1 groups (the last leaves rank 1 nothing to train on: padding passes must keep FSDP in step)."""
    g = torch.Generator().manual_seed(0)
    groups = []
    for i in range(7):
        prompt = torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        comps = [Completion(torch.randint(3, vocab, (2 + (5 * i + 7 * j) % 39,), generator=g).tolist(), [], "", "stop")
                 for j in range(3)]
        rewards = [1.0, -1.0, 1.0 if i % 2 else -1.0]
        groups.append(explore.Group(Problem(f"p{i}", [], "0"), prompt, comps, rewards, [r > 0 for r in rewards], []))
    return groups


# lr 1e-4: big enough to move the weights 30x the tolerance, small enough for AdamW's noise (see below)
RL_FLAGS = ["--prompts-per-step", "6", "--mini-batch", "3", "--micro-batch", "2", "--lr", "1e-4", "--n-samples", "3"]


def sft_examples(tok) -> list:
    exs = []
    for i in range(9):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"Compute {i}+{2 * i}."}], tokenize=False,
                                         add_generation_prompt=True)
        response = f"{i}+{2 * i}={3 * i}" + "0" * (i * 3) + f"\nAnswer: {3 * i}"  # 9 lengths
        exs.append(Trajectory(f"s{i}", prompt, response, 1.0, True))
    return sft.tokenize(tok, exs)


SFT_CFG = dict(steps=2, batch_size=5, micro_batch=2, lr=1e-3, warmup=0, kl_coef=0.1, seed=0)


def one_process_reference(model_dir):
    """The single-process results (no process group): explore's update stats and weights, SFT rows and weights."""
    torch.manual_seed(0)
    model = load_model(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    cfg = explore.get_args(RL_FLAGS)
    st = explore.train_on_batch(model, opt, rl_groups(model.config.vocab_size), cfg.update, cfg.loss, pad_id=0,
                                device="cpu")
    rl = {k: v.clone() for k, v in model.state_dict().items()}
    model = load_model(model_dir)
    ref = load_model(model_dir).eval().requires_grad_(False)
    tok = toy.make_tokenizer()
    rows = sft.train(model, sft_examples(tok), sft.SFTConfig(**SFT_CFG), tok.pad_token_id, sft.nll_loss,
                     ref_model=ref, progress=False)
    return st, rl, rows, {k: v.clone() for k, v in model.state_dict().items()}


def install_fake_vllm():
    """tests/fake_vllm.py as `vllm`, for a spawned rank (no pytest fixture there): the process exits after."""
    sys.modules["vllm"] = m = fv.module()
    sys.modules["vllm.platforms"] = m.platforms


def _rank_worker(rank: int, world: int, port: int, model_dir: str, out_file: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert dist.init() and dist.world_size() == world
    try:
        torch.manual_seed(0)
        model = dist.shard_model(load_model(model_dir), torch.device("cpu"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
        cfg = explore.get_args(RL_FLAGS)
        st = explore.train_on_batch(model, opt, rl_groups(model.config.vocab_size), cfg.update, cfg.loss, pad_id=0,
                                    device="cpu")
        rl = dist.full_state_dict(model)
        # vLLM glue: the engine (in this rank: external_launcher) receives whole tensors gathered from the
        # shards, in bf16, into its fused parameters
        install_fake_vllm()
        eng = ColocatedVLLM(model_dir, toy.make_tokenizer(), max_model_len=None, sleep_mode=True)
        assert eng.llm.kwargs["distributed_executor_backend"] == "external_launcher"
        before = {k: eng.llm.model.hf_view(k).float() for k in rl}
        eng.sync_weights(model)
        pushed = {k: eng.llm.model.hf_view(k).float() for k in rl}
        changed = sum(not torch.equal(pushed[k], before[k]) for k in rl)

        model = dist.shard_model(load_model(model_dir), torch.device("cpu"))
        ref = dist.shard_model(load_model(model_dir).eval().requires_grad_(False), torch.device("cpu"))
        tok = toy.make_tokenizer()
        rows = sft.train(model, sft_examples(tok), sft.SFTConfig(**SFT_CFG), tok.pad_token_id, sft.nll_loss,
                         ref_model=ref, progress=False)
        sft_w = dist.full_state_dict(model)
        if dist.is_main():
            torch.save({"st": st, "rl": rl, "rows": rows, "sft": sft_w, "pushed": pushed, "log": eng.llm.calls,
                        "changed": changed},
                       out_file)
    finally:
        dist.teardown()


def run_two_ranks(model_dir, out_file) -> None:
    ctx = mp.spawn(_rank_worker, args=(2, free_port(), str(model_dir), str(out_file)), nprocs=2, join=False)
    deadline = time.time() + 240  # a collective that never matches would hang: fail instead
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-rank worker did not finish in 240 s (a hang in a collective?)")


# What a rank's traceback says when the rendezvous could not start: free_port() picks a port, closes it, and
# another process may take it before rank 0 listens on it (EADDRINUSE), or a rank cannot reach the store.
# torch raises DistNetworkError for both ("The server socket has failed to listen on any local network
# address. port: ..., code: -98, name: EADDRINUSE, message: address already in use"; "The client socket has
# timed out after ...ms while trying to connect to ...").
START_UP_ERRORS = ("DistNetworkError", "EADDRINUSE", "address already in use")


def is_start_up_flake(e: BaseException) -> bool:
    """A 2-rank failure worth one retry: only the rendezvous failing (a port race). Anything else — an
    assertion in a worker, a crash, a rank killed by a signal — is a result, and is raised."""
    return isinstance(e, mp.ProcessRaisedException) and any(m in str(e) for m in START_UP_ERRORS)


def test_retry_only_on_start_up_errors():
    def raised(tb: str):
        return mp.ProcessRaisedException(f"\n\n-- Process 0 terminated with the following error:\n{tb}", 0, 123)

    in_use = raised("Traceback (most recent call last):\n  ...\ntorch.distributed.DistNetworkError: The server socket "
                    "has failed to listen on any local network address. port: 42135, useIpv6: false, code: -98, "
                    "name: EADDRINUSE, message: address already in use\n")
    timed_out = raised("Traceback (most recent call last):\n  ...\ntorch.distributed.DistNetworkError: The client "
                       "socket has timed out after 2000ms while trying to connect to (127.0.0.1, 29500).\n")
    assertion = raised("Traceback (most recent call last):\n  File \"tests/test_dist.py\", line 136, in "
                       "_rank_worker\n    assert dist.init() and dist.world_size() == world\nAssertionError\n")
    shape = raised("Traceback (most recent call last):\n  ...\nRuntimeError: The size of tensor a (4) must match "
                   "the size of tensor b (8) at non-singleton dimension 0\n")
    assert is_start_up_flake(in_use) and is_start_up_flake(timed_out)
    assert not is_start_up_flake(assertion) and not is_start_up_flake(shape)
    assert not is_start_up_flake(mp.ProcessExitedException("process 1 terminated with signal SIGSEGV", 1, 123,
                                                           -11, "SIGSEGV"))
    assert not is_start_up_flake(AssertionError("EADDRINUSE"))  # only a worker's start-up, not the test's own


def test_two_ranks_match_one_process(tiny_model_dir, tmp_path):
    out_file = tmp_path / "rank0.pt"
    try:
        run_two_ranks(tiny_model_dir, out_file)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        if not is_start_up_flake(e):  # a worker's assertion or crash is the test's result
            raise
        print(f"2-rank rendezvous failed (a port race), trying once more on a new port: {str(e)[-500:]}")
        run_two_ranks(tiny_model_dir, out_file)
    got = torch.load(out_file, weights_only=True)
    st, rl, rows, sft_w = one_process_reference(tiny_model_dir)

    # explore.py's update: 3 optimiser updates, the same numbers
    assert st["updates"] == got["st"]["updates"] == 3 and got["st"]["skipped_updates"] == 0
    assert got["st"]["train_tokens"] == st["train_tokens"]
    for k in ("pg_loss", "entropy", "grad_norm", "grad_norm_max", "clipfrac_high", "clipfrac_low", "approx_kl"):
        assert got["st"][k] == pytest.approx(st[k], rel=TOL, abs=TOL), k
    assert st["approx_kl"] != 0 and st["grad_norm"] > 0  # later updates see a ratio != 1: the check has teeth
    assert got["rl"].keys() == rl.keys()
    base = load_model(tiny_model_dir).state_dict()
    moved = max((rl[k] - base[k]).abs().max().item() for k in rl)
    diff = max((got["rl"][k] - rl[k]).abs().max().item() for k in rl)
    # measured: moved 3.3e-4, diff 7.7e-7. The diff is AdamW's per-element normalisation of a few near-zero
    # embedding gradients (float-sum order differs between 1 and 2 ranks): it scales with lr (7.7e-6 at 1e-3)
    assert moved > 1e-4 and diff < TOL, (moved, diff)

    # consolidate.py's SFT steps: the same losses and weights
    assert [r["step"] for r in got["rows"]] == [1, 2]
    for a, b in zip(got["rows"], rows):
        for k in ("loss", "kl", "grad_norm", "tokens"):
            assert a[k] == pytest.approx(b[k], rel=TOL, abs=TOL), k
    diff = max((got["sft"][k] - sft_w[k]).abs().max().item() for k in sft_w)
    assert diff < TOL, diff

    # the vLLM weight push under FSDP: every state-dict entry, whole, in bf16, then the prefix cache reset
    assert got["log"] == ["reload_weights", "reset_prefix_cache"]
    assert got["pushed"].keys() == rl.keys() and got["changed"] > 0  # the engine's weights moved with the update
    for k, v in got["pushed"].items():
        torch.testing.assert_close(v, got["rl"][k].to(torch.bfloat16).float(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# the vLLM glue's order inside a step (no GPU: a recording engine)


def test_sleep_before_the_update_wake_and_sync_after(fake_vllm, tiny_model_dir, tmp_path):
    from lib.engine.rollout import HFEngine

    events = []

    class Recording(HFEngine):
        def generate(self, *a, **kw):
            events.append("generate")
            return super().generate(*a, **kw)

        def sleep(self):
            events.append(("sleep", fingerprint(self.model)))

        def wake_up(self):
            events.append(("wake_up", fingerprint(self.model)))

        def sync_weights(self, model=None):
            events.append("sync")

    def fingerprint(model):
        return sum(p.detach().double().sum().item() for p in model.parameters())

    digits = lambda response, gt: {"score": 1.0 if any(c.isdigit() for c in response) else -1.0,  # noqa: E731
                                   "acc": any(c.isdigit() for c in response), "pred": ""}
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"{i}+{i}", "answer": "0"}) + "\n" for i in range(4)))
    explore.main(["--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "o"), "--rl-steps", "2",
                  "--prompts-per-step", "2", "--mini-batch", "2", "--n-samples", "4", "--max-new-tokens", "16",
                  "--overlong-buffer", "4", "--lr", "1e-2", "--warmup-steps", "0", "--device", "cpu"],
                 reward_fn=digits, engine_fn=lambda m, t, p: Recording(m, t))
    kinds = [e if isinstance(e, str) else e[0] for e in events]
    for _ in range(2):  # per step: generation batch(es), then sleep, (the update), wake_up, sync
        i = kinds.index("sleep")
        assert i > 0 and set(kinds[:i]) == {"generate"} and kinds[i:i + 3] == ["sleep", "wake_up", "sync"]
        kinds = kinds[i + 3:]
    assert kinds == []
    slept = [e[1] for e in events if e[0] == "sleep"]
    woke = [e[1] for e in events if e[0] == "wake_up"]
    assert woke[0] != slept[0] or woke[1] != slept[1]  # the weights changed while the engine slept

    # ColocatedVLLM: level-1 sleep only with --sleep-mode
    tok = toy.make_tokenizer()
    on, off = (ColocatedVLLM(str(tiny_model_dir), tok, max_model_len=None, sleep_mode=m) for m in (True, False))
    for eng in (on, off):
        eng.sleep()
        eng.wake_up()
    assert on.llm.calls == ["sleep1", "wake_up"] and off.llm.calls == []


# ---------------------------------------------------------------------------------------------------------
# whole runs under torchrun


def torchrun(script: str, *args, nproc: int = 2, timeout: int = 240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master-port",
           str(free_port()), script, *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def memo_prompts(tmp_path_factory) -> Path:
    """The eight memo problems as bare chat prompts (DAPO schema: no template), the format memo_model_dir
    was fine-tuned on, so the real verifier sees right and wrong answers."""
    f = tmp_path_factory.mktemp("memo_prompts") / "train.jsonl"
    rows = [{"prompt": [{"role": "user", "content": p}], "reward_model": {"ground_truth": str(a)},
             "extra_info": {"index": f"m{i}"}} for i, (p, a) in enumerate(MEMO_PROBLEMS)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def explore_args(model, data, out, *extra):
    return ["--model", model, "--data", data, "--out", out, "--prompts-per-step", "4", "--n-samples", "4",
            "--mini-batch", "2", "--micro-batch", "4", "--max-new-tokens", "24", "--overlong-buffer", "4",
            "--lr", "1e-4", "--warmup-steps", "0", "--max-gen-batches", "4", "--backend", "hf", "--device", "cpu",
            "--save-every", "2", *extra]


def test_torchrun_explore_runs_saves_and_resumes(memo_model_dir, memo_prompts, tmp_path):
    from transformers import AutoModelForCausalLM

    full, part = tmp_path / "full", tmp_path / "part"
    r = torchrun("explore.py", *explore_args(memo_model_dir, memo_prompts, full, "--rl-steps", "3"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = [row for _, row in read_jsonl(full / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [1, 2, 3]  # rank 0 alone writes: one row per step
    assert r.stdout.count("explore step 1 |") == 1 and "2 ranks (FSDP)" in r.stdout
    assert sum(row["updates"] for row in rows) > 0
    rolls = [row for _, row in read_jsonl(full / "rollouts.jsonl")]
    assert len(rolls) == sum(row["gen_batches"] for row in rows) * 4 * 4  # every rank's rollouts, once
    assert sum(x["kept"] for x in rolls) == sum(row["train_prompts"] for row in rows) * 4
    # the checkpoint: one ordinary from_pretrained folder, gathered from the shards, + per-rank optimizer shards
    ck = full / "ckpt_000003"
    assert json.loads((ck / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert {p.name for p in (ck / "resume").iterdir()} == {"state.pt", "optim_rank0.pt", "optim_rank1.pt"}
    assert load_file(ck / "model.safetensors").keys() == load_file(memo_model_dir / "model.safetensors").keys()
    model = AutoModelForCausalLM.from_pretrained(ck)
    base = load_model(memo_model_dir).state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in model.state_dict().items())  # it trained

    # kill after step 2's checkpoint, resume with 2 ranks: the uninterrupted run's weights and rollouts
    r = torchrun("explore.py", *explore_args(memo_model_dir, memo_prompts, part, "--rl-steps", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun("explore.py", *explore_args(memo_model_dir, memo_prompts, part, "--rl-steps", "3", "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(ck / "model.safetensors"), load_file(part / "ckpt_000003" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "rollouts.jsonl").read_bytes() == (part / "rollouts.jsonl").read_bytes()

    # one process cannot resume a 2-rank run: one line, exit 2
    r = subprocess.run([sys.executable, "explore.py", *explore_args(memo_model_dir, memo_prompts, part,
                                                                      "--rl-steps", "4", "--resume")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {part / 'ckpt_000003'}: saved by a run of 2 process(es), this run has 1; resume with the same "
        f"world size (torchrun --nnodes * --nproc_per_node = 2)"]


def test_torchrun_consolidate_matches_one_process(tiny_model_dir, tmp_path):
    tok = toy.make_tokenizer()
    trajs = []
    for i in range(10):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"Compute {i}+7."}], tokenize=False,
                                         add_generation_prompt=True)
        trajs.append(Trajectory(f"c{i}", prompt, f"{i}+7={i + 7}" + "1" * i + f"\nAnswer: {i + 7}", 1.0, True))
    write_jsonl(tmp_path / "rft.jsonl", trajs)
    common = ["--model", tiny_model_dir, "--trajectories", tmp_path / "rft.jsonl", "--batch-size", "5",
              "--micro-batch", "2", "--sft-steps", "3", "--lr", "1e-3", "--warmup-steps", "0", "--device", "cpu"]
    r = torchrun("consolidate.py", *common, "--out", tmp_path / "two")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    consolidate.main([str(x) for x in common] + ["--out", str(tmp_path / "one")])
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOL
    la = [row["loss"] for _, row in read_jsonl(tmp_path / "one" / "metrics.jsonl")]
    lb = [row["loss"] for _, row in read_jsonl(tmp_path / "two" / "metrics.jsonl")]
    assert lb == pytest.approx(la, rel=TOL) and len(la) == 3


# ---------------------------------------------------------------------------------------------------------
# data-parallel sampling: evaluate.py and harvest.py --n-samples under torchrun write one process's outputs


def sums_bench(folder: Path) -> Path:
    """The memo problems five times over (40 problems; DAPO schema: the bare prompts memo_model_dir knows): with
    32 samples the HF engine decodes 16 prompts at a time, so they are 3 engine batches (16, 16, 8)."""
    f = folder / "sums.jsonl"
    f.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": MEMO_PROBLEMS[i % 8][0]}],
                                     "reward_model": {"ground_truth": str(MEMO_PROBLEMS[i % 8][1])},
                                     "extra_info": {"index": f"s{i}"}}) + "\n" for i in range(40)))
    return f


def test_torchrun_evaluate_and_harvest_resample_equal_one_process(memo_model_dir, tmp_path):
    """2 ranks vs 1 process, the same records byte for byte. evaluate: --part-size 16 makes rounds of 32 problems
    on 2 ranks (16 each) and of 16 in one process; the last round (8 problems, one engine batch) leaves rank 1
    nothing. harvest --n-samples: two checkpoints, 32 + 8 problems per rank."""
    import evaluate
    import harvest
    from lib.train import checkpoint
    from lib.train.modeling import load_policy

    bench = sums_bench(tmp_path)
    common = ["--model", memo_model_dir, "--benchmarks", f"a={bench},b={bench}", "--n-samples", "32", "--part-size",
              "16", "--max-new-tokens", "16", "--backend", "hf", "--device", "cpu"]
    r = torchrun("evaluate.py", *common, "--out", tmp_path / "two")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "2 ranks, data-parallel" in r.stdout and r.stdout.count("wrote ") == 1  # rank 0 alone reports
    evaluate.main([str(a) for a in common] + ["--out", str(tmp_path / "one")])
    one, two = (tmp_path / d for d in ("one", "two"))
    assert (one / "samples.jsonl").read_bytes() == (two / "samples.jsonl").read_bytes()
    strip = lambda m: {**m, "benchmarks": {k: {**b, "seconds": 0} for k, b in m["benchmarks"].items()}}  # noqa: E731
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert strip(m1) == strip(m2) and 0 < m1["average"]["mean_acc"] < 1  # (right and wrong answers: teeth)
    assert not (two / ".parts").exists()

    run = tmp_path / "run"
    model, tok = load_policy(str(memo_model_dir))
    for step in (1, 2):
        checkpoint.drop_resume_state(checkpoint.save(run, step, model, tok, {}))
    (run / "args.json").write_text(json.dumps({"data": str(bench), "max_new_tokens": 16, "seed": 3}))
    flags = ["--n-samples", "16", "--backend", "hf", "--device", "cpu"]
    r = torchrun("harvest.py", "--run-dir", run, "--out", tmp_path / "h2", *flags)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("total (2 checkpoint(s)): 1280 trajectories") == 1
    harvest.main(["--run-dir", str(run), "--out", str(tmp_path / "h1"), *flags])
    assert (tmp_path / "h1/harvest.jsonl").read_bytes() == (tmp_path / "h2/harvest.jsonl").read_bytes()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm: run with .venv-vllm's python "
                    "(scripts/vllm_cpu_env.sh)")
def test_torchrun_vllm_evaluate_and_harvest_equal_one_process(memo_model_dir, tmp_path):
    """vLLM's CPU build: under torchrun every rank holds its own engine (external_launcher); harvest pushes each
    next checkpoint's weights into it (the second checkpoint differs from the first: the push must land, tied
    lm_head included). The records equal one process's, which builds a fresh engine per checkpoint."""
    from lib.train import checkpoint
    from lib.train.modeling import load_policy

    env = {**ENV, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    one = lambda script, *a: subprocess.run([sys.executable, script, *map(str, a)], cwd=ROOT, env=env,  # noqa: E731
                                            capture_output=True, text=True, timeout=300)
    vllm = ["--backend", "vllm", "--rollout-dtype", "float32"]
    bench = sums_bench(tmp_path)
    common = ["--model", memo_model_dir, "--benchmarks", f"a={bench}", "--n-samples", "4", "--max-new-tokens", "16",
              *vllm]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(free_port())]
    r = subprocess.run([*cmd, "evaluate.py", *map(str, common), "--out", tmp_path / "two"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "2 ranks, data-parallel: one vllm engine per rank" in r.stdout, r.stderr[-3000:]
    r = one("evaluate.py", *common, "--out", tmp_path / "one")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "one" / "samples.jsonl").read_bytes() == (tmp_path / "two" / "samples.jsonl").read_bytes()

    run = tmp_path / "run"
    model, tok = load_policy(str(memo_model_dir))
    checkpoint.drop_resume_state(checkpoint.save(run, 1, model, tok, {}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    checkpoint.drop_resume_state(checkpoint.save(run, 2, model, tok, {}))
    (run / "args.json").write_text(json.dumps({"data": str(bench), "max_new_tokens": 16, "seed": 3}))
    r = subprocess.run([*cmd[:-1], str(free_port()), "harvest.py", "--run-dir", run, "--out", tmp_path / "h2",
                        "--n-samples", "4", *vllm], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = one("harvest.py", "--run-dir", run, "--out", tmp_path / "h1", "--n-samples", "4", *vllm)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "h1/harvest.jsonl").read_bytes() == (tmp_path / "h2/harvest.jsonl").read_bytes()
