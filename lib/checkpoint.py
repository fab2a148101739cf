"""Checkpoints that are also resume points.

OUT/ckpt_{step:06d}/            a folder `from_pretrained` and vLLM load as it is (safetensors + tokenizer)
OUT/ckpt_{step:06d}/resume/state.pt   optimizer, scheduler, RNG states, step, data position, ...

The whole folder is written under a temp name and renamed into place, so a kill at any moment leaves only
complete checkpoints; `latest` ignores anything else. state.pt holds only tensors and plain Python values,
so it loads with torch.load(weights_only=True) — a checkpoint can never run code.
"""
from __future__ import annotations

import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lib.cli import replace_dir

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


def save(out: str | Path, step: int, model, tokenizer, state: dict, keep_resume: bool = True) -> Path:
    """Write ckpt_{step}/ atomically: weights + tokenizer, and (keep_resume) resume/state.pt with `state`
    plus the RNG states. `state` should hold optimizer / scheduler state_dicts and any data position."""
    final = ckpt_dir(out, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if keep_resume:
            (tmp / "resume").mkdir()
            torch.save({**state, "step": step, "rng": rng_state()}, tmp / "resume" / "state.pt")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_state(folder: str | Path) -> dict:
    """The resume state of a checkpoint folder (weights_only: tensors and plain values only)."""
    return torch.load(Path(folder) / "resume" / "state.pt", map_location="cpu", weights_only=True)


def drop_resume_state(folder: str | Path) -> None:
    """Free the optimizer state of an older checkpoint once a newer one exists (it stays loadable)."""
    shutil.rmtree(Path(folder) / "resume", ignore_errors=True)


def clean_partial(out: str | Path) -> None:
    """Remove temp folders a killed run left behind (names starting with '.ckpt_')."""
    out = Path(out)
    if out.is_dir():
        for d in out.glob(".ckpt_*"):
            shutil.rmtree(d, ignore_errors=True)
