"""A policy's weights read from its safetensors files straight into the tensors that hold them: under FSDP2 each rank
reads only its shard's rows, so a node holds the weights once, not once per rank.

    skeleton(path, config, dtype)   (model, None): the model with its parameters on the meta device (shapes, no
                                    storage) and its buffers real (the rotary frequencies its constructor computes);
                                    (None, why) when the folder's files do not map one to one onto its state dict
    materialise(model, device)      each parameter allocated on `device` and filled from the files: this rank's rows
                                    of a tensor FSDP2 has sharded (dist.shard_model calls it after fully_shard), the
                                    whole of any other

`modeling.load_policy(path, "meta")` returns the skeleton and `dist.shard_model` (update.prepare) shards and fills it.
A safetensors slice is a view of the memory-mapped file: reading it touches only the pages of those rows, and they
leave the process's memory when the file closes. The file is opened for each chunk of CHUNK_BYTES of rows, so at any
moment a rank holds its shards plus one chunk in flight; on a GPU node the shards are on the GPUs and the host holds
a chunk per rank. The values are the file's bits, cast to the model's dtype by `copy_` as from_pretrained casts them.
Tied weights (lm_head = embed_tokens) stay one parameter, read once under whichever of their names the file has.
"""
from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Iterator

import torch

# skeleton -> {state-dict name: (safetensors file, key in that file)}: what materialise reads, once
_sources: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
CHUNK_BYTES = 32 * 2**20  # rows read (and file pages mapped) at a time, per rank: the host's memory in flight


def is_skeleton(model) -> bool:
    """A model whose weights are still in its files (materialise reads them)."""
    return model in _sources


def skeleton(path: str, config, dtype: torch.dtype, trust_remote_code: bool = False):
    """(the skeleton, None), or (None, why) when from_pretrained must load the folder instead: no safetensors files,
    a weight under a name the model does not have, another shape."""
    from transformers import AutoModelForCausalLM

    files = _weight_files(path)
    if files is None:
        return None, "no safetensors weights"
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()  # (as from_pretrained returns it)
    _load_generation_config(model, path)
    plan = _plan(model, files)
    if isinstance(plan, str):
        return None, plan
    _sources[model] = plan
    return model, None


def materialise(model, device: torch.device | str) -> None:
    """Allocate a skeleton's tensors on `device` (FSDP2-sharded ones: this rank's shard) and read them from the
    files. The buffers keep the values the constructor computed; persistent ones are then read like parameters."""
    plan = _sources.pop(model)
    computed = dict(model.named_buffers())
    places: dict[int, list[tuple[torch.nn.Module, str]]] = {}  # one parameter -> every (module, name) holding it
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                places.setdefault(id(p), []).append((module, name))
    model.to_empty(device=device)  # (a new tensor per module and name: tied parameters come apart)
    for (first, first_name), *others in places.values():
        for module, name in others:  # tie them again, to the one FSDP2 manages (the first met, as fully_shard meets it)
            module._parameters[name] = first._parameters[first_name]
    entries = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(computed[name])
        for name, (file, key) in plan.items():
            _read(file, key, *_local_part(entries[name]))


def _local_part(t: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """(the tensor this rank holds, its place in the whole: a slice per dimension). A DTensor's local shard and its
    rows; a plain tensor and all of it."""
    from torch.distributed.tensor import DTensor

    if not isinstance(t, DTensor):
        return t, tuple(slice(0, n) for n in t.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset  # (DCP's own loader's)

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), tuple(slice(o, o + n) for n, o in zip(shape, offset))


def _read(file: str, key: str, local: torch.Tensor, where: tuple[slice, ...]) -> None:
    """local <- the file's tensor `key` at `where`, CHUNK_BYTES of rows at a time (cast by copy_ to local's dtype).
    The file is opened for each chunk: the pages a chunk mapped leave the process with it."""
    from safetensors import safe_open

    if local.numel() == 0:  # (a rank past the last row of a short tensor)
        return
    if local.dim() == 0:
        with safe_open(file, framework="pt") as f:
            local.copy_(f.get_tensor(key))
        return
    step = max(1, CHUNK_BYTES // (local[0].numel() * local.element_size()))
    first = where[0].start
    for lo in range(0, local.shape[0], step):
        hi = min(lo + step, local.shape[0])
        with safe_open(file, framework="pt") as f:
            local[lo:hi].copy_(f.get_slice(key)[(slice(first + lo, first + hi), *where[1:])])


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Every parameter a module registers inside goes to the meta device (a parameter already there, e.g. a tied
    one, is kept as it is); buffers are made as usual."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _load_generation_config(model, path: str) -> None:
    """The generation config from_pretrained gives a model: the folder's generation_config.json, else one derived
    from config.json."""
    from transformers import GenerationConfig

    if not model.can_generate():
        return
    try:
        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        model.generation_config = GenerationConfig.from_pretrained(path, config_file_name="config.json",
                                                                   _from_model_config=True)


def _weight_files(path: str) -> list[str] | None:
    """The local safetensors files of a folder or hub id, found as from_pretrained finds them (one model.safetensors
    first, else the shards its index names); None without safetensors weights."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    def find(name: str) -> str | None:
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)

    if single := find(SAFE_WEIGHTS_NAME):
        return [single]
    if index := find(SAFE_WEIGHTS_INDEX_NAME):
        with open(index, encoding="utf-8") as f:
            files = [find(name) for name in sorted(set(json.load(f)["weight_map"].values()))]
        if all(files):
            return files
    return None


def _plan(model, files: list[str]) -> dict[str, tuple[str, str]] | str:
    """{state-dict name: (file, key)} with one entry per distinct tensor (tied names share one, read under the name
    the files have), or why the files do not cover the state dict."""
    from safetensors import SafetensorError, safe_open

    found: dict[str, tuple[str, list[int]]] = {}  # key -> (file, shape), from the headers: no tensor data is read
    try:
        for file in files:
            with safe_open(file, framework="pt") as f:
                found.update((k, (file, f.get_slice(k).get_shape())) for k in f.keys())
    except (OSError, SafetensorError) as e:
        return f"unreadable safetensors file ({e})"
    entries = model.state_dict(keep_vars=True)
    names: dict[int, list[str]] = {}  # one tensor -> its names, in state-dict order
    for name, t in entries.items():
        names.setdefault(id(t), []).append(name)
    plan = {}
    for aliases in names.values():
        key = next((n for n in aliases if n in found), None)
        if key is None:
            return f"{aliases[0]} is not in the files"
        file, shape = found[key]
        if list(shape) != list(entries[aliases[0]].shape):
            return f"{key}: shape {list(shape)} in the file, {list(entries[aliases[0]].shape)} in the model"
        plan[aliases[0]] = (file, key)
    return plan
