"""The embedded toy world: deterministic data, a tokenizer that takes any text, a model folder that loads."""
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lib import toy
from lib.reward import score


def test_splits_deterministic_and_held_out():
    a, b = toy.make_split("test", 0), toy.make_split("test", 0)
    assert a == b
    assert toy.make_split("test", 1) != a
    train = {r["prompt"][0]["content"] for r in toy.make_split("train", 0)}
    gold = {r["prompt"][0]["content"] for r in toy.make_split("gold", 0)}
    for split in ("test", "ood", "probe"):
        held = [r["prompt"][0]["content"] for r in toy.make_split(split, 0)]
        assert len(held) == len(set(held)) == toy.SPLITS[split][0]
        assert not (set(held) & (train | gold)), split


def test_gold_solutions_are_correct_and_in_answer_format():
    for split in ("gold", "ood", "probe"):
        for r in toy.make_split(split, 0)[:300]:
            sol, gt = r["extra_info"]["solution"], r["reward_model"]["ground_truth"]
            assert sol.splitlines()[-1] == f"Answer: {gt}"
            assert score(sol, gt)["acc"] is True


def test_literal_problems():
    import random

    p, a, s = toy.chain_problem(random.Random(0), 3)
    assert p.startswith("Compute ") and p.endswith(".")
    assert s.count("\n") == toy.LEVELS[3]  # one line per operation, then the answer line
    p, a, s = toy.mul_problem(random.Random(0))
    x, rest = p[len("Compute "):-1].split("*")
    y, z = rest.split("+")
    assert int(a) == int(x) * int(y) + int(z)
    assert s == f"{x}*{y}={int(x) * int(y)}\n{int(x) * int(y)}+{z}={a}\nAnswer: {a}"


def test_tokenizer_takes_any_text_and_round_trips(tmp_path):
    toy.save_tokenizer(toy.make_tokenizer(), tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["Compute 12+7.\nAnswer: 19", "Let $x = \\frac{1}{2}$, ∫ é 中文 \x00 \t", "Answer: 😀"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # ASCII is one token per character (the toy's sequences stay short)
    assert len(tok("Compute 12+7.", add_special_tokens=False)["input_ids"]) == len("Compute 12+7.")
    chat = tok.apply_chat_template([{"role": "user", "content": "Compute 1+1."}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\nCompute 1+1.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|im_end|>"


def test_model_save_load_round_trip(tiny_model_dir):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    assert (tiny_model_dir / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n < 5e6
    ids = tok("Compute 1+2.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = model(ids).logits
    model2 = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert torch.equal(a, model2(ids).logits)
