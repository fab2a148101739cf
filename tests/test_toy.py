"""The embedded toy world: deterministic data, a tokenizer that takes any text, a model folder that loads."""
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lib.algo.reward import score
from lib.worlds import toy


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


def test_strategy_labels_literal_responses():
    assert toy.strategy("7+5=12\n12-3=9\n9+8=17\nAnswer: 17") == "left"
    assert toy.strategy("7+5+8-3\n7+5=12\n12+8=20\n20-3=17\nAnswer: 17") == "group"
    assert toy.strategy("  7+5+8\n7+5=12\n12+8=20\nAnswer: 20") == "group"  # no subtraction: still regrouped
    assert toy.strategy("3*4=12\n12+5=17\nAnswer: 17") is None  # the probe family
    assert toy.strategy("") is None and toy.strategy("Answer: 17") is None and toy.strategy("7+5=1=2") is None
    assert toy.strategy("7\n7+5=12") is None  # a lone number opens neither form
    # a wrong solution still has a strategy (the label is the form, the verifier judges the answer)
    assert toy.strategy("7+5=13\nAnswer: 13") == "left"


def test_both_strategies_solve_the_same_problem_and_gold_mixes_them():
    import random

    p1, a1, left = toy.chain_problem(random.Random(3), 3, "left")
    p2, a2, group = toy.chain_problem(random.Random(3), 3, "group")
    assert (p1, a1) == (p2, a2) == ("Compute 3+9-3+8+2.", "19")
    assert left == "3+9=12\n12-3=9\n9+8=17\n17+2=19\nAnswer: 19"
    assert group == "3+9+8+2-3\n3+9=12\n12+8=20\n20+2=22\n22-3=19\nAnswer: 19"
    gold = toy.make_split("gold", 0)
    labels = [toy.strategy(r["extra_info"]["solution"]) for r in gold if r["data_source"] == "toy-chain"]
    share = labels.count("group") / len(labels)
    assert None not in labels and 0.45 < share < 0.55
    for r in gold[:300]:  # every gold solution is correct and its running totals never go below 0
        sol = r["extra_info"]["solution"]
        assert score(sol, r["reward_model"]["ground_truth"])["acc"] is True
        assert "=-" not in sol
