"""Distributed plumbing for `torchrun`: the process group, rank helpers, collectives, FSDP2 sharding and
gathering what a checkpoint needs. One concern: how N processes agree; the stages decide what to do with it.

    torchrun --nproc_per_node 4 explore.py ...          # one node, 4 ranks
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 explore.py ...

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): NCCL when CUDA is present, gloo on CPU.
Without torchrun (or with a world of one process) nothing is initialised and every helper here is the
identity: all_reduce returns its input, shard returns the whole list, shard_model leaves a loaded model as it
is. So a plain `python explore.py` runs exactly the single-process code.

Gradient scaling. FSDP2's reduce-scatter AVERAGES gradients over ranks. The stages normalise each rank's loss
by the GLOBAL token count (all ranks' tokens), so the exact gradient is the SUM over ranks: they multiply the
per-rank loss by `world_size()` (`loss_scale()`) before backward. (The alternative, a divide factor of 1 via
`set_gradient_divide_factor`, needs a PREMUL_SUM reduce op that gloo lacks.)
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------
# process group


def launched() -> bool:
    """True under torchrun with more than one process in the world."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(timeout_s: int = 1800) -> bool:
    """Join the process group torchrun describes (idempotent). Returns True when distributed.
    The timeout bounds how long a rank waits in a collective: generation on other ranks (minutes at scale)
    happens between collectives, so it is generous."""
    if not launched():
        return False
    if not tdist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())  # before NCCL starts: one GPU per process
            backend = "nccl"
        else:
            backend = "gloo"
        tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def session() -> Iterator[bool]:
    """A stage's run under torchrun: join the process group (init), silence stdout off rank 0, tear the group down
    at the end. Yields whether it is distributed; without torchrun it is nothing at all."""
    distributed = init()
    try:
        with quiet_unless_main():
            yield distributed
    finally:
        if distributed:
            teardown()


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the only process that writes logs, JSONL files and checkpoint folders."""
    return rank() == 0


def device(requested: str = "auto") -> torch.device:
    """This rank's device: cuda:LOCAL_RANK under torchrun on GPU, else what `requested` names."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(requested)
    if dev.type == "cuda" and dev.index is None and is_distributed():
        dev = torch.device("cuda", local_rank())
    return dev


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """Run fn on rank 0, then on the other ranks: for work that caches files (building the toy base) which
    every rank needs but only one should write. If it fails on rank 0 (a bad data file), every rank raises
    rank 0's exception, so all stop with the same one-line error instead of waiting on each other."""
    if not is_distributed():
        return fn()
    out, err = None, None
    if is_main():
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            err = e
    err = broadcast_object(err)  # (also the barrier: rank 0 has finished writing)
    if err is not None:
        raise err
    return out if is_main() else fn()


def main_decides(fn: Callable[[], T]) -> T:
    """fn() runs on rank 0 only (it may inspect and clean the output folder); its result — or the exception
    it raised, e.g. a one-line user error — reaches every rank, so all ranks go on, or stop, together."""
    if not is_distributed():
        return fn()
    res: tuple = ("ok", None)
    if is_main():
        try:
            res = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            res = ("err", e)
    res = broadcast_object(res)
    if res[0] == "err":
        raise res[1]
    return res[1]


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Silence stdout on ranks > 0 (every log line would otherwise print N times); stderr stays, so errors
    and tracebacks of any rank are seen."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


# ---------------------------------------------------------------------------------------------------------
# collectives on Python numbers and objects (identity in one process)


def _reduce(values: Sequence[float], op) -> list[float]:
    if not is_distributed():
        return [float(v) for v in values]
    dev = torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    tdist.all_reduce(t, op=op)
    return t.tolist()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Elementwise sum over ranks of a list of numbers (one collective for the whole list)."""
    return _reduce(values, tdist.ReduceOp.SUM)


def all_reduce_max(values: Sequence[float]) -> list[float]:
    return _reduce(values, tdist.ReduceOp.MAX)


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled: for small metadata and token ids)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any) -> list[Any] | None:
    """[obj of every rank] on rank 0, None elsewhere."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size() if is_main() else None
    tdist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's obj, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def split_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of part `index` when n items are cut into `parts` contiguous parts whose sizes differ by at
    most one (the first n % parts parts get the extra item). Concatenating the parts in order gives 0..n-1."""
    q, r = divmod(n, parts)
    lo = index * q + min(index, r)
    return lo, lo + q + (index < r)


def split_chunks(n: int, chunk: int, parts: int, index: int) -> tuple[int, int]:
    """[lo, hi) of part `index` when n items are cut into `parts` contiguous parts made of whole chunks of
    `chunk` items (the last chunk may be short; chunk counts differ by at most one). A part's chunks are then
    the chunks one process would cut from 0..n-1. chunk = 1 is split_range."""
    lo, hi = split_range(-(-n // chunk), parts, index)
    return min(n, lo * chunk), min(n, hi * chunk)


def shard(items: Sequence[T], parts: int | None = None, index: int | None = None) -> list[T]:
    """This rank's contiguous share of items (all of them in one process)."""
    parts = world_size() if parts is None else parts
    index = rank() if index is None else index
    lo, hi = split_range(len(items), parts, index)
    return list(items[lo:hi])


def loss_scale() -> float:
    """Multiply each rank's loss by this before backward: FSDP averages gradients over ranks, and a loss
    normalised by the global token count needs their sum."""
    return float(world_size())


# ---------------------------------------------------------------------------------------------------------
# FSDP2


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks: transformers lists their class in `_no_split_modules` (Qwen2DecoderLayer...)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:  # fall back on the usual layout
        layers = list(getattr(getattr(model, "model", model), "layers", []))
    return layers


def shard_model(model, dev: torch.device, bf16: bool = False):
    """FSDP2: `fully_shard` each decoder layer, then the root (embeddings, final norm, lm_head). Each rank then
    holds 1/N of every parameter (a DTensor sharded on dim 0) and of its optimizer state; a layer's full
    weights exist only during its forward / backward. bf16: all-gather and compute in bf16, reduce gradients
    and keep the master weights (and AdamW states) in fp32 — an lr of 1e-6 is below bf16's resolution.
    A skeleton (modeling.load_policy(path, "meta"), lib/train/shardload) is sharded empty, then each rank reads its
    shard from the files onto `dev`; a loaded model is moved to `dev` shard by shard (only 1/N lands on each GPU).
    In a single process only a skeleton changes: its weights are read, whole, onto `dev`."""
    from lib.train import shardload

    if not is_distributed():
        if shardload.is_skeleton(model):
            shardload.materialise(model, dev)
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dev.type, (world_size(),))
    kw: dict = {"mesh": mesh}
    if bf16:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    if shardload.is_skeleton(model):
        shardload.materialise(model, dev)
    return model


def enable_grad_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (memory for long responses; call before
    shard_model). Non-reentrant checkpointing: the variant that composes with FSDP2's hooks. transformers 5
    renamed gradient_checkpointing_enable to activation_checkpointing_enable; either works."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model) -> Iterator[None]:
    """Full weights on every rank for the duration (FSDP2 `unshard` on every sharded module, `reshard` after).

    For generation with the HF engine: ranks decode different prompts for different numbers of steps, so the
    per-layer all-gathers FSDP does inside forward could never line up across ranks (a hang). Here all the
    all-gathers happen once, up front, on every rank; the layers are told not to free their weights after
    each forward, so decoding makes no collective call at all. Costs one full copy of the weights per rank
    while it lasts. Every rank must enter it (unshard is a collective). No-op when not sharded."""
    mods = _fsdp_modules(model)
    if not mods:
        yield
        return
    inner = [m for m in mods if m is not model]  # the root never reshards after forward (FSDP2's default)
    for m in inner:
        m.set_reshard_after_forward(False, recurse=False)
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
        for m in inner:
            m.set_reshard_after_forward(True, recurse=False)


def clip_grad_norm(params, max_norm: float) -> float:
    """torch's clip_grad_norm_ (norm BEFORE clipping) as a float; with FSDP the norm is a DTensor over the
    shards, made whole (the same number on every rank)."""
    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.item()


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU, on rank 0 ({} elsewhere). A collective: every rank calls it."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every state-dict entry, one at a time, on every rank: for pushing weights into
    a rollout engine (the peak extra memory is one tensor). Every rank must consume it to the end, in step."""
    for name, t in model.state_dict().items():
        yield name, (t.full_tensor() if hasattr(t, "full_tensor") else t)


def optimizer_state(optimizer) -> dict:
    """optimizer.state_dict() with each DTensor replaced by this rank's local shard (plain tensors: the file
    loads with torch.load(weights_only=True)). Identity without FSDP."""
    sd = optimizer.state_dict()
    return {**sd, "state": {k: {n: (v.to_local() if hasattr(v, "to_local") else v) for n, v in s.items()}
                            for k, s in sd["state"].items()}}


def load_optimizer_state(optimizer, sd: dict) -> None:
    """Inverse of optimizer_state: load, then wrap each local shard back into a DTensor laid out like its
    parameter. Needs the same world size as the run that saved it (the shards must have the same shapes)."""
    optimizer.load_state_dict(sd)
    from torch.distributed.tensor import DTensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            st = optimizer.state.get(p, {})
            for name, v in st.items():
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.dim() > 0:
                    local = p.to_local()
                    if v.shape != local.shape:
                        raise ValueError(f"optimizer state {name!r}: shard {tuple(v.shape)} != parameter shard "
                                         f"{tuple(local.shape)} (saved with another world size?)")
                    st[name] = DTensor.from_local(v.to(local.device), p.device_mesh, p.placements,
                                                  shape=p.shape, stride=p.stride(), run_check=False)
