"""Checkpoints that are also resume points.

OUT/ckpt_{step:06d}/            a folder `from_pretrained` and vLLM load as it is (safetensors + tokenizer)
OUT/ckpt_{step:06d}/resume/state.pt   optimizer, scheduler, RNG states, step, data position, world size, ...
OUT/ckpt_{step:06d}/resume/optim_rank{r}.pt   under torchrun (FSDP): rank r's optimizer shard and RNG states;
                                      state.pt then holds the rest. Resuming needs the same world size.

The run-folder protocol both trainers follow (explore.py, consolidate.py): `resume_point` decides between a
fresh start and a resume, `check_same_args` is the one policy for changed arguments (refused, naming them),
`restore_logs` cuts the logs back to the checkpoint, `start_fresh` clears a fresh start's leftovers, and
`retire_older` keeps one resume state (the newest).

The whole folder is written under a temp name and renamed into place, so a kill at any moment leaves only
complete checkpoints; `latest` ignores anything else. state.pt holds only tensors and plain Python values,
so it loads with torch.load(weights_only=True) — a checkpoint can never run code.
Under torchrun, `save` and `write_model` are collectives (every rank calls them): the full weights are
gathered from the FSDP shards onto rank 0, which alone writes the folder; --out must be on a filesystem every
node sees.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lib.run.cli import UserError, atomic_write_text, replace_dir
from lib.run.records import read_jsonl, truncate_to
from lib.train import dist

CKPT_RE = re.compile(r"^ckpt_(\d{6,})$")


def ckpt_dir(out: str | Path, step: int) -> Path:
    return Path(out) / f"ckpt_{step:06d}"


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a resume state) as (step, folder), oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for d in out.iterdir():
        m = CKPT_RE.match(d.name)
        if m and d.is_dir() and (d / "config.json").exists():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest(out: str | Path) -> Path | None:
    """The newest checkpoint that can be resumed from (has resume/state.pt)."""
    resumable = [d for _, d in list_checkpoints(out) if (d / "resume" / "state.pt").exists()]
    return resumable[-1] if resumable else None


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict) -> None:
    random.setstate(_tuplify(s["python"]))
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy(), *n[2:]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def write_model(model, tokenizer, folder: str | Path) -> None:
    """save_pretrained (safetensors) + the tokenizer into an existing folder. Under FSDP a collective: the
    full weights are gathered onto rank 0's CPU (the folder is one ordinary from_pretrained model) and only
    rank 0 writes."""
    if not dist.is_sharded(model):
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        return
    weights = dist.full_state_dict(model)  # every rank takes part; rank 0 gets the tensors
    if dist.is_main():
        # tied parameters (lm_head = embed_tokens) come back as separate copies: make them one tensor again,
        # so save_pretrained sees the tie and writes the weight once, as it does for an unsharded model
        first: dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in first and name in weights:
                weights[name] = weights[first[id(p)]]
            first.setdefault(id(p), name)
        # (transformers writes architectures without FSDP2's "FSDP" class-name prefix)
        model.save_pretrained(folder, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(folder)


def save(out: str | Path, step: int, model, tokenizer, state: dict, keep_resume: bool = True) -> Path:
    """Write ckpt_{step}/ atomically: weights + tokenizer, and (keep_resume) resume/state.pt with `state`
    plus the RNG states. `state` should hold optimizer / scheduler state_dicts and any data position.
    Under torchrun every rank calls it: state["optimizer"] is then that rank's shard, written with its RNG
    states to resume/optim_rank{r}.pt; the rest of rank 0's `state` goes to state.pt."""
    if dist.is_distributed():
        return _save_sharded(out, step, model, tokenizer, state, keep_resume)
    final = ckpt_dir(out, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if keep_resume:
            (tmp / "resume").mkdir()
            torch.save({**state, "step": step, "rng": rng_state(), "world_size": 1}, tmp / "resume" / "state.pt")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _save_sharded(out, step: int, model, tokenizer, state: dict, keep_resume: bool) -> Path:
    final = ckpt_dir(out, step)
    tmp = None
    if dist.is_main():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        (tmp / "resume").mkdir()
    tmp = Path(dist.broadcast_object(str(tmp) if tmp else None))
    try:
        if keep_resume:  # every rank its own shard, into rank 0's temp folder (a shared filesystem)
            torch.save({"optimizer": state["optimizer"], "rng": rng_state()},
                       tmp / "resume" / f"optim_rank{dist.rank()}.pt")
        write_model(model, tokenizer, tmp)  # gathers: also the point where every rank has written its shard
        dist.barrier()
        if dist.is_main():
            if keep_resume:
                rest = {k: v for k, v in state.items() if k != "optimizer"}
                torch.save({**rest, "step": step, "rng": rng_state(), "world_size": dist.world_size()},
                           tmp / "resume" / "state.pt")
            else:
                shutil.rmtree(tmp / "resume")
            replace_dir(tmp, final)
    except BaseException:
        if dist.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()  # nobody goes on (or looks for the checkpoint) before it is in place
    return final


def load_state(folder: str | Path) -> dict:
    """The resume state of a checkpoint folder (weights_only: tensors and plain values only). Written by N
    ranks, it resumes only with N ranks (the optimizer shards have N's shapes): this rank's optimizer shard
    and RNG states are merged in."""
    resume = Path(folder) / "resume"
    state = torch.load(resume / "state.pt", map_location="cpu", weights_only=True)
    saved, now = int(state.get("world_size", 1)), dist.world_size()
    if saved != now:
        raise UserError(f"{folder}: saved by a run of {saved} process(es), this run has {now}; resume with the "
                        f"same world size (torchrun --nnodes * --nproc_per_node = {saved})")
    if saved > 1:
        state.update(torch.load(resume / f"optim_rank{dist.rank()}.pt", map_location="cpu", weights_only=True))
    return state


def parse_keep(spec: str) -> str | int:
    """--keep-checkpoints: 'all' | 'last' | K (a positive step interval)."""
    spec = str(spec).strip()
    if spec in ("all", "last"):
        return spec
    try:
        k = int(spec)
    except ValueError:
        k = 0
    if k <= 0:
        raise UserError(f"--keep-checkpoints: expected 'all', 'last' or a positive step interval K, got '{spec}'")
    return k


def keeps(step: int, keep: str | int) -> bool:
    """Whether an older (not the newest) checkpoint at `step` stays on disk under --keep-checkpoints."""
    return keep == "all" or (isinstance(keep, int) and step % keep == 0)


def retire_older(out: str | Path, newest: Path, keep: str | int = "all", dtype: torch.dtype | None = None) -> None:
    """After `newest` is saved: every older checkpoint loses its resume state (one resume point is enough), is
    deleted unless --keep-checkpoints keeps it, and with `dtype` (bf16 training) has its weights rewritten in
    that dtype — half the disk of fp32 (7.6B: 15 GB instead of 30) — since only the newest must resume exactly."""
    for step, older in list_checkpoints(out):
        if older == newest:
            continue
        if not keeps(step, keep):
            shutil.rmtree(older, ignore_errors=True)
            continue
        drop_resume_state(older)
        if dtype is not None:
            cast_weights(older, dtype)


def cast_weights(folder: str | Path, dtype: torch.dtype) -> None:
    """Rewrite a saved model's floating-point weights in `dtype`, file by file (each atomically: a kill leaves
    every file whole, in one dtype or the other, and from_pretrained loads either), and say so in config.json."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    name = str(dtype).replace("torch.", "")
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("torch_dtype") == name and cfg.get("dtype", name) == name:
        return  # done before
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            meta = sf.metadata()
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
        tensors = {k: (t.to(dtype) if t.is_floating_point() else t) for k, t in tensors.items()}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        tmp = f.with_name(f".{f.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, f)
        del tensors
    if (folder / "model.safetensors.index.json").is_file():  # the index's total_size counts bytes
        idx_path = folder / "model.safetensors.index.json"
        idx = json.loads(idx_path.read_text(encoding="utf-8"))
        idx.setdefault("metadata", {})["total_size"] = total
        atomic_write_text(idx_path, json.dumps(idx, indent=2) + "\n")
    cfg["torch_dtype"] = name
    if "dtype" in cfg:
        cfg["dtype"] = name
    atomic_write_text(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def drop_resume_state(folder: str | Path) -> None:
    """Free the optimizer state of an older checkpoint once a newer one exists (it stays loadable)."""
    shutil.rmtree(Path(folder) / "resume", ignore_errors=True)


def clean_partial(out: str | Path) -> None:
    """Remove temp folders a killed run left behind (names starting with '.ckpt_')."""
    out = Path(out)
    if out.is_dir():
        for d in out.glob(".ckpt_*"):
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# The run-folder protocol


def trainer_state(optimizer, scheduler, **extra) -> dict:
    """The `state` a trainer saves: its optimizer (under FSDP: this rank's shard) and scheduler, plus extra."""
    return {"optimizer": dist.optimizer_state(optimizer), "scheduler": scheduler.state_dict(), **extra}


def restore_trainer(state: dict, optimizer, scheduler) -> None:
    """Load a trainer_state back into the optimizer (under FSDP: this rank's shard) and scheduler."""
    dist.load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


def resume_point(out: str | Path, resume: bool) -> Path | None:
    """Fresh start or resume: the checkpoint to resume from, or None. Temp folders a kill left behind go first.
    Without --resume a folder holding checkpoints is refused (never silently restarted over); --resume
    without a complete checkpoint starts from the beginning, and says so."""
    out = Path(out)
    clean_partial(out)
    ckpts = list_checkpoints(out)
    if not resume:
        if ckpts:
            raise UserError(f"{out} already holds checkpoints (newest {ckpts[-1][1].name}); pass --resume to "
                            f"continue that run, or choose another --out (or delete the folder to start over)")
        return None
    last = latest(out)
    if last is None:
        print(f"--resume: no complete checkpoint in {out}; starting from the beginning")
    return last


def check_same_args(old: dict, new: dict, free, where: str | Path) -> None:
    """A resumed run is the same run: every flag but the `free` ones (those that only place, watch or pace
    the run: --rl-steps, --out, logging, devices, ...) must keep its value; a change is refused in one line that
    names each flag. (To change one deliberately, e.g. a lower --lr after a blow-up, start a new --out from
    the checkpoint folder.)"""
    diff = [k for k, v in old.items() if k not in free and k in new and new[k] != v]
    if diff:
        what = ", ".join(f"--{k.replace('_', '-')} {old[k]} (now {new[k]})" for k in diff)
        raise UserError(f"{where}: cannot --resume with different settings: the run used {what}")


def restore_logs(state: dict, logs: dict[str, Path]) -> None:
    """Resume: cut each log (state key of its size in bytes -> path) back to its size at the checkpoint, so
    whatever a killed run wrote after it goes (no torn line, no step logged twice). A checkpoint from before
    the sizes were recorded: the log keeps its rows with step <= the checkpoint's."""
    for key, path in logs.items():
        if key in state:
            truncate_to(path, state[key])
        elif path.exists():
            rows = [r for _, r in read_jsonl(path, allow_empty=True) if r.get("step", 0) <= state["step"]]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def start_fresh(out: str | Path, logs, drop_checkpoints: bool = False) -> None:
    """A fresh start in `out`: the logs a run killed before its first checkpoint left go (and with
    drop_checkpoints, checkpoints that cannot be resumed from)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    for f in logs:
        Path(f).unlink(missing_ok=True)
    if drop_checkpoints:
        for _, d in list_checkpoints(out):
            shutil.rmtree(d)
