"""verl 0.9.1's own loss functions, for the tests that hold explore.py's losses equal to them.

The wheel comes from PyPI (`pip download --no-deps verl==0.9.1`, cached under ~/.cache/rloop-tests/; or the
file named by $VERL_WHEEL). Its top-level functions are taken from the wheel's sources by name (the `ast` of
core_algos.py and rollout_corr_helper.py) and imported as one small module beside stand-ins for what they reach
for in the rest of verl (its config class, the loss registry, masked mean / sum): verl itself, with its
dependencies (ray, hydra, ...), is never installed. Nothing of verl is kept in this repository.
A test that needs it is skipped, with the reason, when the wheel can be neither found nor downloaded."""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

VERSION = "0.9.1"
WHEEL = f"verl-{VERSION}-py3-none-any.whl"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rloop-tests"
SOURCES = {  # file in the wheel -> the functions taken from it
    "verl/trainer/ppo/core_algos.py": ["agg_loss", "compute_policy_loss_vanilla", "compute_policy_loss_gspo",
                                       "compute_policy_loss_cispo"],
    "verl/trainer/ppo/rollout_corr_helper.py": ["_parse_rollout_is_threshold", "compute_rollout_correction_weights"],
}

STAND_INS = '''
from typing import Any, Optional
import torch

SAFETY_BOUND = {safety_bound}


class DictConfig(dict):
    pass


class AlgoConfig:
    pass


class ActorConfig:  # the fields the losses read
    def __init__(self, clip_ratio_low, clip_ratio_high, clip_ratio_c=3.0, global_batch_info=None):
        self.clip_ratio = clip_ratio_low
        self.clip_ratio_low, self.clip_ratio_high, self.clip_ratio_c = clip_ratio_low, clip_ratio_high, clip_ratio_c
        self.global_batch_info = global_batch_info or {{}}

    def get(self, key, default=None):
        return getattr(self, key, default)


class verl_F:  # verl.utils.torch_functional
    @staticmethod
    def masked_sum(values, mask, axis=None):
        return (values * mask).sum() if axis is None else (values * mask).sum(axis)

    @staticmethod
    def masked_mean(values, mask, axis=None):
        s = verl_F.masked_sum(values, mask, axis)
        return s / (mask.sum() if axis is None else mask.sum(axis)).clamp(min=1e-8)


def compute_is_metrics(**kw):  # verl's weight diagnostics: not compared here
    return {{}}
'''


def wheel() -> Path:
    if os.environ.get("VERL_WHEEL"):
        return Path(os.environ["VERL_WHEEL"])
    path = CACHE / WHEEL
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", str(CACHE), f"verl=={VERSION}"], check=True, capture_output=True, timeout=180)
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"verl {VERSION} from PyPI is not reachable here ({type(e).__name__}); set VERL_WHEEL")
    return path


def safety_bound(source: str) -> str:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SAFETY_BOUND" for t in node.targets):
            return ast.unparse(node.value)
    raise LookupError("SAFETY_BOUND not in rollout_corr_helper.py")


def load(tmp_dir: Path):
    """verl's functions named in SOURCES, as attributes of one module."""
    parts, bound = [], None
    with zipfile.ZipFile(wheel()) as z:
        for name, wanted in SOURCES.items():
            source = z.read(name).decode()
            if name.endswith("rollout_corr_helper.py"):
                bound = safety_bound(source)
            found = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
            for fn in wanted:
                node = found[fn]
                node.decorator_list = []  # the registry / deprecation decorators
                parts.append(ast.unparse(node))
    path = tmp_dir / "verl_losses.py"
    path.write_text(STAND_INS.format(safety_bound=bound) + "\n\n" + "\n\n\n".join(parts) + "\n")
    spec = importlib.util.spec_from_file_location("verl_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
