"""lib/train/shardload: a policy read from its safetensors files into FSDP2 shards is the policy from_pretrained loads,
bit for bit, and under torchrun the node holds it about once, not once per rank.

  * one process: load_policy(path, "meta") then shard_model (a world of one reads every row) equals load_policy(path):
    weights, tied head, rotary buffers, config, generation config, the context override; also from a bf16 checkpoint
    split over several files (the cast is from_pretrained's)
  * folders the skeleton cannot read load as before: no safetensors, missing weights (the same one-line error)
  * torchrun, 2 ranks on CPU (scripts/load_memory.py): the sharded weights equal a single-process load and the ranks'
    peak host memory adds up to at most 1.5 fp32 copies beyond their baselines (every rank loading the whole model
    needs 2: scripts/load_memory.py measures both)
"""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from lib.run.cli import UserError
from lib.train import dist, shardload
from lib.train.modeling import extend_context, load_policy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import load_memory  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest) tiny models, shared 2-core box


def assert_same_policy(got, ref) -> None:
    sd, want = got.state_dict(), ref.state_dict()
    assert sd.keys() == want.keys()
    for k, v in want.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    buffers = dict(got.named_buffers())
    assert buffers.keys() == dict(ref.named_buffers()).keys()
    for k, b in ref.named_buffers():
        assert torch.equal(buffers[k], b), k
    assert got.config.to_dict() == ref.config.to_dict()
    assert got.generation_config.to_dict() == ref.generation_config.to_dict()
    assert got.training == ref.training


def test_one_process_reads_what_from_pretrained_loads(tiny_model_dir):
    ref = load_policy(str(tiny_model_dir))[0]
    model = load_policy(str(tiny_model_dir), "meta")[0]
    assert shardload.is_skeleton(model) and all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())  # the rotary frequencies: computed, as from_pretrained's
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the toy ties its head
    dist.shard_model(model, torch.device("cpu"))  # (a single process: the whole of every tensor)
    assert not shardload.is_skeleton(model) and model.lm_head.weight is model.model.embed_tokens.weight
    assert_same_policy(model, ref)
    # a context override on the skeleton, as explore.py applies it before prepare: what the whole load gives
    a, b = load_policy(str(tiny_model_dir), "meta")[0], load_policy(str(tiny_model_dir))[0]
    for m in (a, b):
        extend_context(m, {"max_position_embeddings": 4096})
    dist.shard_model(a, torch.device("cpu"))
    assert a.config.max_position_embeddings == 4096
    assert_same_policy(a, b)


def test_a_bf16_checkpoint_in_several_files(tiny_model_dir, tmp_path):
    """Qwen2.5-Math-7B's files: bf16, four shards and an index. Read into fp32 as from_pretrained casts them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "bf16"
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    m.save_pretrained(folder, max_shard_size="300KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) > 2 and (folder / "model.safetensors.index.json").is_file()
    model = load_policy(str(folder), "meta")[0]
    assert shardload.is_skeleton(model)
    dist.shard_model(model, torch.device("cpu"))
    ref = load_policy(str(folder))[0]
    assert ref.model.embed_tokens.weight.dtype == torch.float32
    assert_same_policy(model, ref)


def test_folders_the_skeleton_cannot_read_load_as_before(tiny_model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    pickled = tmp_path / "bin"  # weights in pytorch_model.bin (from_pretrained reads it with weights_only)
    pickled.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(tiny_model_dir / "model.safetensors"), pickled / "pytorch_model.bin")
    model = load_policy(str(pickled), "meta")[0]
    assert not shardload.is_skeleton(model) and not any(p.is_meta for p in model.parameters())
    assert "every rank loads the whole model on its CPU (no safetensors weights)" in capsys.readouterr().err
    assert_same_policy(model, load_policy(str(pickled))[0])

    missing = tmp_path / "missing"  # a weight absent: the one-line refusal of the whole load
    missing.mkdir()
    for f in tiny_model_dir.iterdir():
        (missing / f.name).write_bytes(f.read_bytes())
    w = load_file(missing / "model.safetensors")
    del w["model.layers.0.mlp.up_proj.weight"]
    save_file(w, missing / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="1 weights missing from the checkpoint"):
        load_policy(str(missing), "meta")


def test_torchrun_two_ranks_hold_about_one_copy(tmp_path):
    """The toy's Qwen2 layout at a 152k vocabulary, head tied (the weights dominate the ranks' baselines): each rank
    reads its half of every tensor from the file. Measured: 1.1-1.2 copies beyond the baselines; whole loads 2.1."""
    model = load_memory.build_model(tmp_path / "model", hidden=512, layers=2, vocab=152_064, tied=True)
    assert json.loads((model / "config.json").read_text())["tie_word_embeddings"]
    try:
        r = load_memory.measure(model, "skeleton", nproc=2, timeout=240)
    finally:
        shutil.rmtree(model)  # (330 MB)
    assert r["ranks"] == 2 and r["identical"], r  # the sharded weights, buffers and configs: a single-process load's
    total, bound, within = load_memory.verdict(r)
    assert r["copy"] > 300e6 > sum(r["baseline"]) / 4  # (the copy is large beside a rank's fixed overhead)
    assert within, (total / 1e6, bound / 1e6, r)
