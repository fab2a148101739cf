"""The full-scale path's contracts, on tiny models: context length (--max-model-len), checkpoints on disk
(--keep-checkpoints, bf16 folders), RFT's stop token, memory hand-over to a sleeping engine, and evaluate.py
holding no HF weights beside vLLM.

Every test uses the tiny model (max_position_embeddings 1024) and a scripted engine or the strict fake vLLM, so
nothing decodes hundreds of tokens."""
import json
from pathlib import Path

import pytest
import torch
from fake_vllm import LLM, fake_vllm  # noqa: F401
from safetensors import safe_open

import consolidate
import evaluate
import explore
from lib.engine.rollout import Completion
from lib.run.cli import UserError
from lib.run.records import Trajectory, read_jsonl
from lib.train import checkpoint, modeling, sft
from lib.train.modeling import end_of_turn_id, plan_context
from lib.worlds import toy

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


def digit_reward(response: str, ground_truth: str) -> dict:
    ok = any(ch.isdigit() for ch in response)
    return {"score": 1.0 if ok else -1.0, "acc": ok, "pred": ""}


class ScriptedEngine:
    """Completions from a fixed pattern: response j of a prompt is "j" (a digit: correct under digit_reward)
    for even j, "x" for odd j, each ended by the stop token; records what explore hands it."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.stop = tok.convert_tokens_to_ids("<|im_end|>")
        self.events = []

    def close(self):
        """(nothing to free: explore closes its engine at the end)"""

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        out = []
        for _ in prompts:
            group = []
            for j in range(n):
                ids = self.tok(str(j) if j % 2 == 0 else "x", add_special_tokens=False)["input_ids"] + [self.stop]
                group.append(Completion(ids, [0.0] * len(ids), str(j) if j % 2 == 0 else "x", "stop"))
            out.append(group)
        return out

    def sleep(self):
        self.events.append("sleep")

    def wake_up(self):  # a waking vLLM engine needs the memory the update used: the gradients must be gone
        grads = [p.grad for p in self.model.parameters()]
        self.events.append("wake_up:" + ("no grads" if all(g is None for g in grads) else "grads held"))

    def sync_weights(self, model=None):
        self.events.append("sync")


def write_problems(path: Path, n: int = 4) -> Path:
    rows = [{"id": f"p{i}", "problem": f"Compute {i}+{i}.", "answer": str(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def explore_args(model, data, out, *extra):
    return ["--model", str(model), "--data", str(data), "--out", str(out), "--prompts-per-step", "2",
            "--n-samples", "4", "--mini-batch", "2", "--micro-batch", "8", "--max-new-tokens", "24",
            "--overlong-buffer", "4", "--lr", "1e-3", "--warmup-steps", "0", "--backend", "hf", "--device", "cpu",
            *[str(x) for x in extra]]


def run_explore(model, data, out, *extra):
    engines = []

    def engine_fn(m, tok, path):
        engines.append(ScriptedEngine(m, tok))
        return engines[-1]

    assert explore.main(explore_args(model, data, out, *extra), reward_fn=digit_reward, engine_fn=engine_fn) == 0
    return engines[0]


# ---------------------------------------------------------------------------------------------------------
# context length


def test_plan_context_literal_cases():
    class Cfg:
        max_position_embeddings = 4096

    # Qwen2.5-Math-7B at DAPO's lengths: refused without the flag, one line naming both numbers and the flag
    with pytest.raises(UserError, match=r"longest prompt \(2048 tokens\) \+ --max-new-tokens \(20480\) = 22528 "
                                        r"tokens exceed Qwen's context \(4096.*--max-model-len N with N >= 22528"):
        plan_context(Cfg(), 2048, 20480, 0, "Qwen")
    assert plan_context(Cfg(), 2048, 20480, 32768) == (32768, {"max_position_embeddings": 32768})
    assert plan_context(Cfg(), 100, 1000, 0) == (4096, None)  # fits: the model's own context, no override
    assert plan_context(Cfg(), 100, 1000, 2048) == (2048, None)  # a shorter context needs no config change
    with pytest.raises(UserError, match=r"= 1100 tokens exceed --max-model-len 1000"):
        plan_context(Cfg(), 100, 1000, 1000)

    class NoLen:  # a config without max_position_embeddings: whatever is asked
        pass

    assert plan_context(NoLen(), 10, 20, 0) == (30, None)


def test_plan_context_with_a_prompt_cap():
    class Cfg:
        max_position_embeddings = 4096

    # the cap, not the longest prompt present, is planned for: what the cap lets through must fit
    with pytest.raises(UserError, match=r"^--max-prompt-len \(2048\) \+ --max-new-tokens \(8192\) = 10240 tokens "
                                        r"exceed Qwen's context \(4096, .*--max-model-len N with N >= 10240"):
        plan_context(Cfg(), 300, 8192, 0, "Qwen", max_prompt_len=2048)
    assert plan_context(Cfg(), 300, 8192, 32768, max_prompt_len=2048) == (32768, {"max_position_embeddings": 32768})
    assert plan_context(Cfg(), 5000, 1000, 0, max_prompt_len=2048) == (4096, None)  # longer prompts are dropped
    with pytest.raises(UserError, match=r"--max-prompt-len \(2048\) \+ --max-new-tokens \(20480\) = 22528 tokens "
                                        r"exceed --max-model-len 16384"):
        plan_context(Cfg(), 10, 20480, 16384, max_prompt_len=2048)


def test_prompt_cap_in_explore_and_evaluate(tiny_model_dir, tmp_path, capsys):
    rows = [{"id": f"p{i}", "problem": "Compute " + "1+" * (40 * i) + "1.", "answer": "1"} for i in range(4)]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = modeling.load_tokenizer(str(tiny_model_dir))
    from lib.run import data as data_lib

    lengths = data_lib.prompt_lengths(tok, [p.prompt for p in data_lib.render_prompts(
        data_lib.load_problems(str(data)), tok)])
    cap = (lengths[1] + lengths[2]) // 2  # p0, p1 fit; p2, p3 do not
    run_explore(tiny_model_dir, data, tmp_path / "run", "--rl-steps", "1", "--save-every", "1", "--max-prompt-len", cap,
                "--eval-benchmarks", f"b={data}", "--eval-n-samples", "2", "--eval-before-train")
    out = capsys.readouterr().out
    assert f"{data}: dropped 2 of 4 prompts longer than {cap} tokens (--max-prompt-len)" in out
    assert f"validation set b: dropped 2 of 4 prompts longer than {cap} tokens (--max-prompt-len)" in out
    assert {r["problem_id"] for _, r in read_jsonl(tmp_path / "run" / "rollouts.jsonl")} == {"p0", "p1"}
    assert json.loads((tmp_path / "run" / "args.json").read_text())["max_prompt_len"] == cap
    # evaluate.py: the same line per benchmark; a benchmark the cap empties is one line, nothing written
    evaluate.main(["--model", str(tiny_model_dir), "--benchmarks", f"b={data}", "--n-samples", "1",
                   "--max-new-tokens", "4", "--max-prompt-len", str(cap), "--device", "cpu",
                   "--out", str(tmp_path / "eval")])
    assert f"b: dropped 2 of 4 prompts longer than {cap} tokens (--max-prompt-len)" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["benchmarks"]["b"]["problems"] == 2
    with pytest.raises(UserError, match=r"^b: every one of its 4 prompts is longer than --max-prompt-len 5 tokens"):
        evaluate.main(["--model", str(tiny_model_dir), "--benchmarks", f"b={data}", "--n-samples", "1",
                       "--max-prompt-len", "5", "--device", "cpu", "--out", str(tmp_path / "eval2")])
    assert not (tmp_path / "eval2").exists()


def test_explore_refuses_a_context_the_model_lacks_before_writing(tiny_model_dir, tmp_path):
    data, out = write_problems(tmp_path / "p.jsonl"), tmp_path / "run"
    with pytest.raises(UserError, match=r"--max-new-tokens \(900\) = \d+ tokens exceed .*context \(1024.*"
                                        r"--max-model-len"):
        run_explore(tiny_model_dir, data, out, "--rl-steps", "1", "--max-new-tokens", "900")
    assert not out.exists()  # nothing written


def test_max_model_len_reaches_checkpoints_and_later_stages(tiny_model_dir, tmp_path, fake_vllm):
    data, out = write_problems(tmp_path / "p.jsonl"), tmp_path / "run"
    run_explore(tiny_model_dir, data, out, "--rl-steps", "2", "--save-every", "1", "--max-new-tokens", "900",
                "--max-model-len", "1400")
    ckpt = out / "ckpt_000002"
    assert json.loads((ckpt / "config.json").read_text())["max_position_embeddings"] == 1400
    assert json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"] == 1024
    # evaluate.py on that checkpoint, no flag: the checkpoint's own context; vLLM gets it, and no HF weights load
    bench = write_problems(tmp_path / "b.jsonl", 2)
    loads = []
    real = evaluate.load_policy
    evaluate.load_policy = lambda *a, **k: loads.append(a) or real(*a, **k)
    try:
        evaluate.main(["--model", str(ckpt), "--benchmarks", f"b={bench}", "--n-samples", "2",
                       "--max-new-tokens", "900", "--backend", "vllm", "--out", str(tmp_path / "eval")])
    finally:
        evaluate.load_policy = real
    assert loads == []  # the tokenizer alone: vLLM loads the weights
    (llm,) = LLM.instances
    assert llm.kwargs["max_model_len"] == 1400 and not llm.kwargs["hf_overrides"]  # (vLLM: None -> {})
    # the model itself (1024) at the same length: vLLM is told to raise the config
    LLM.instances.clear()
    evaluate.main(["--model", str(tiny_model_dir), "--benchmarks", f"b={bench}", "--n-samples", "2", "--max-new-tokens",
                   "900", "--max-model-len", "1400", "--backend", "vllm", "--out", str(tmp_path / "eval2")])
    (llm,) = LLM.instances
    assert llm.kwargs["max_model_len"] == 1400 and llm.kwargs["hf_overrides"] == {"max_position_embeddings": 1400}
    with pytest.raises(UserError, match="--max-model-len"):
        evaluate.main(["--model", str(tiny_model_dir), "--benchmarks", f"b={bench}", "--n-samples", "2",
                       "--max-new-tokens", "900", "--backend", "vllm", "--out", str(tmp_path / "eval3")])
    assert not (tmp_path / "eval3").exists()


# ---------------------------------------------------------------------------------------------------------
# checkpoints on disk


def ckpt_steps(out: Path) -> list[int]:
    return [s for s, _ in checkpoint.list_checkpoints(out)]


def weight_dtypes(folder: Path) -> set:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.mark.parametrize("keep, left", [("all", [1, 2, 3, 4]), ("last", [4]), ("2", [2, 4])])
def test_keep_checkpoints(tiny_model_dir, tmp_path, keep, left):
    data, out = write_problems(tmp_path / "p.jsonl"), tmp_path / "run"
    run_explore(tiny_model_dir, data, out, "--rl-steps", "4", "--save-every", "1", "--keep-checkpoints", keep)
    assert ckpt_steps(out) == left
    assert [d.name for _, d in checkpoint.list_checkpoints(out) if (d / "resume").exists()] == ["ckpt_000004"]


def test_keep_checkpoints_bad_value(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="--keep-checkpoints: expected 'all', 'last' or a positive"):
        explore.get_args(explore_args(tiny_model_dir, "toy", tmp_path / "x", "--keep-checkpoints", "0"))


def test_bf16_training_keeps_older_checkpoints_in_bf16(tiny_model_dir, tmp_path):
    data, out = write_problems(tmp_path / "p.jsonl"), tmp_path / "run"
    run_explore(tiny_model_dir, data, out, "--rl-steps", "3", "--save-every", "1", "--bf16")
    old, newest = out / "ckpt_000001", out / "ckpt_000003"
    assert weight_dtypes(old) == weight_dtypes(out / "ckpt_000002") == {"BF16"}
    assert weight_dtypes(newest) == {"F32"} and (newest / "resume" / "state.pt").is_file()  # exact resume
    assert (old / "model.safetensors").stat().st_size < 0.6 * (newest / "model.safetensors").stat().st_size
    m, _ = modeling.load_policy(str(old))  # still a from_pretrained folder (upcast to fp32 on load)
    assert json.loads((old / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert m.model.embed_tokens.weight.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------
# RFT's stop token


@pytest.fixture(scope="module")
def qwen_like_dir(tmp_path_factory) -> Path:
    """A tiny model whose tokenizer says eos_token <|endoftext|> while its chat turns end with <|im_end|> and its
    generation config stops on both: Qwen2.5-Math-7B's layout."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("qwenlike")
    toy.save_tokenizer(toy.make_tokenizer(), d / "tok")
    tok = AutoTokenizer.from_pretrained(d / "tok")
    tok.eos_token = "<|endoftext|>"
    model = toy.make_model(tok, seed=0)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|endoftext|>"),
                                            tok.convert_tokens_to_ids("<|im_end|>")]
    modeling.save_policy(model, tok, d / "model")
    return d / "model"


def test_rft_trains_on_the_stop_token_the_policy_sampled(qwen_like_dir, tmp_path, monkeypatch):
    model, tok = modeling.load_policy(str(qwen_like_dir))
    eot, eos = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token_id == eos != eot and end_of_turn_id(model, tok) == eot
    prompt = tok.apply_chat_template([{"role": "user", "content": "Compute 1+2."}], tokenize=False,
                                     add_generation_prompt=True)
    sampled = tok("1+2=3\nAnswer: 3", add_special_tokens=False)["input_ids"] + [eot]
    rows = [Trajectory("a", prompt, "1+2=3\nAnswer: 3", 1.0, True, response_ids=sampled),
            Trajectory("b", prompt, "Answer: 3", 1.0, True)]  # a record without ids (a user's own data)
    data = tmp_path / "rft.jsonl"
    data.write_text("".join(t.to_json() + "\n" for t in rows))
    assert json.loads(data.read_text().splitlines()[0])["response_ids"] == sampled  # JSONL: a plain int list
    seen = []
    real = sft.train
    monkeypatch.setattr(sft, "train", lambda m, examples, *a, **k: seen.append(examples) or real(m, examples, *a, **k))
    consolidate.main(["--model", str(qwen_like_dir), "--trajectories", str(data), "--out", str(tmp_path / "c"),
                      "--sft-steps", "1", "--batch-size", "2"])
    (examples,) = seen
    by_len = sorted(examples, key=lambda e: len(e.response_ids))
    assert by_len[1].response_ids == sampled  # the sampled ids exactly, <|im_end|> last
    assert by_len[0].response_ids == tok("Answer: 3", add_special_tokens=False)["input_ids"] + [eot]
    assert all(eos not in e.response_ids for e in examples)


def test_explore_records_the_sampled_ids_of_correct_responses(tiny_model_dir, tmp_path):
    data, out = write_problems(tmp_path / "p.jsonl"), tmp_path / "run"
    eng = run_explore(tiny_model_dir, data, out, "--rl-steps", "1", "--save-every", "1")
    rows = [r for _, r in read_jsonl(out / "rollouts.jsonl")]
    right, wrong = [r for r in rows if r["acc"]], [r for r in rows if not r["acc"]]
    assert right and wrong
    assert all(r["response_ids"][-1] == eng.stop and len(r["response_ids"]) == r["response_tokens"] for r in right)
    assert all("response_ids" not in r for r in wrong)


def test_gradients_are_freed_before_the_engine_wakes(tiny_model_dir, tmp_path):
    data, out = write_problems(tmp_path / "p.jsonl"), tmp_path / "run"
    eng = run_explore(tiny_model_dir, data, out, "--rl-steps", "2", "--save-every", "2")
    assert eng.events == ["sleep", "wake_up:no grads", "sync"] * 2
