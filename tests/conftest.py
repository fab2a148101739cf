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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained toy-architecture model folder (from_pretrained-loadable): for plumbing tests."""
    from lib import toy
    from lib.modeling import save_policy

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
    from lib import toy

    os.environ["RLOOP_TOY_DIR"] = str(tmp_path_factory.mktemp("toycache"))
    return toy.data_path("train").parent
