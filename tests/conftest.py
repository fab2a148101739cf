"""Shared fixtures. Tests never download anything: the hub is switched off before transformers loads."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    models on a shared 2-core box, where a second thread only contends (20x slower under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Killed(Exception):
    """Stands in for a kill: raised by dying_train."""


def dying_train(real_train, after_step: int):
    """lib/train/sft.train that raises Killed right after optimiser step `after_step` (its metrics row written)."""

    def train(*a, on_step=None, **kw):
        def hook(step, row, opt, sched):
            on_step(step, row, opt, sched)
            if step == after_step:
                raise Killed

        return real_train(*a, on_step=hook, **kw)

    return train


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained toy-architecture model folder (from_pretrained-loadable): for plumbing tests."""
    from lib.train.modeling import save_policy
    from lib.worlds import toy

    out = tmp_path_factory.mktemp("tiny") / "model"
    tok_dir = out.parent / "tok"
    toy.save_tokenizer(toy.make_tokenizer(), tok_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    save_policy(toy.make_model(tok, seed=0), tok, out)
    return out


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> Path:
    """The toy's data files, generated into a temp toy cache (fast: no model is built)."""
    from lib.worlds import toy

    os.environ["RLOOP_TOY_DIR"] = str(tmp_path_factory.mktemp("toycache"))
    return toy.data_path("train").parent


MEMO_PROBLEMS = [(f"Compute {a}+{b}.", a + b)
                 for a, b in ((1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (7, 2), (5, 3), (8, 1))]


@pytest.fixture(scope="session")
def memo_data(tmp_path_factory) -> Path:
    """Eight one-step problems in the plain schema (no template: short prompts keep the tests fast)."""
    import json

    f = tmp_path_factory.mktemp("memo") / "train.jsonl"
    f.write_text("".join(json.dumps({"id": f"m{i}", "problem": p, "answer": str(a)}) + "\n"
                         for i, (p, a) in enumerate(MEMO_PROBLEMS)))
    return f


@pytest.fixture(scope="session")
def memo_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model after a few seconds of SFT on the eight problems' gold solutions: it solves them
    sometimes but not always at temperature 1 — enough signal for the real reward in end-to-end tests."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.run.records import Trajectory
    from lib.train import sft
    from lib.train.modeling import save_policy

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gold = []
    for i, (p, a) in enumerate(MEMO_PROBLEMS):
        prompt = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        expr = p[len("Compute "):-1]
        gold.append(Trajectory(f"m{i}", prompt, f"{expr}={a}\nAnswer: {a}", 1.0, True))
    cfg = sft.SFTConfig(steps=60, batch_size=8, lr=3e-3, warmup=5, seed=0)
    sft.train(model, sft.tokenize(tok, gold), cfg, tok.pad_token_id, sft.nll_loss, progress=False)
    out = tmp_path_factory.mktemp("memo_model") / "model"
    save_policy(model, tok, out)
    return out
