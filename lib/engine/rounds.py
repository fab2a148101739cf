"""Data-parallel, resumable sample-and-score of a problem list, in rounds: what evaluate.py and
harvest.py --n-samples share.

A round is `part_size` problems per rank (world size x part_size problems, the last round shorter). Under
torchrun every rank samples its contiguous share of the round with the GLOBAL per-prompt seeds
(`prompt_seed(seed, i)` for problem i of the list), and rank 0 gathers the scored records in rank order and
writes the round as one part. A problem's samples depend on its own seed only, not on the rank or the batch that
drew it (the engines' contract, lib/engine/rollout.py), so the records are one process's. The HF engine's float
rounding also depends on which prompts share a batch: it decodes `max_batch // n` prompts at a time, so each
rank's share is made of whole such chunks counted from the list's first problem (`engine_chunk`), and every
chunk holds the prompts it holds in one process: the same logits, bit for bit.

Parts: a hidden folder beside the output. Round [lo, hi) of list NAME is NAME.LO.jsonl (its records, in order)
and NAME.LO.json ({"hi", "seconds"}), written after it: a round is finished once its .json exists. A killed run
resumes at the first round without one (rounds are contiguous ranges, so parts written with another world size
or part size still count). settings.json holds the settings the samples depend on: a folder made with other
settings is emptied first. Only rank 0 touches the folder.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from lib.engine.rollout import prompt_seed, sample_and_score, trajectories
from lib.run import cli
from lib.run.records import Trajectory, read_trajectories, write_jsonl
from lib.train import dist

VLLM_PART_SIZE = 64  # problems per rank per round with an engine that batches on its own (vLLM)


class Parts:
    """The finished rounds of one stage's problem lists (rank 0 only)."""

    def __init__(self, folder: str | Path, key: dict):
        self.folder, self.key = Path(folder), key

    def open(self) -> Parts:
        """Create the folder; empty it first when its samples were made with other settings."""
        if self.folder.is_dir() and cli.read_json(self.folder / "settings.json") != self.key:
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        cli.atomic_write_json(self.folder / "settings.json", self.key)
        return self

    def _file(self, name: str, lo: int, ext: str) -> Path:
        safe = re.sub(r"[^\w.-]", "_", name)  # (a benchmark name is the user's)
        return self.folder / f"{safe}.{lo:07d}.{ext}"

    def finished(self, name: str) -> list[tuple[int, int, float]]:
        """(lo, hi, seconds) of the finished rounds of `name`, contiguous from problem 0 (none when the folder holds
        samples made with other settings: open() discards them)."""
        if cli.read_json(self.folder / "settings.json") != self.key:
            return []
        rounds, lo = [], 0
        while isinstance(meta := cli.read_json(self._file(name, lo, "json")), dict) and meta.get("hi", 0) > lo:
            rounds.append((lo, meta["hi"], meta.get("seconds", 0.0)))
            lo = meta["hi"]
        return rounds

    def write(self, name: str, lo: int, hi: int, records: list[Trajectory], seconds: float) -> None:
        write_jsonl(self._file(name, lo, "jsonl"), records)  # (atomic)
        cli.atomic_write_json(self._file(name, lo, "json"), {"hi": hi, "seconds": seconds})

    def records(self, name: str) -> tuple[list[Trajectory], float]:
        """Every record of the finished rounds of `name`, in order, and their sampling seconds."""
        rounds = self.finished(name)
        recs = [t for lo, _, _ in rounds for t in read_trajectories(self._file(name, lo, "jsonl"), allow_empty=True)]
        return recs, round(sum(s for _, _, s in rounds), 1)

    def files(self, name: str) -> list[Path]:
        return [self._file(name, lo, "jsonl") for lo, _, _ in self.finished(name)]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def open_parts(parts: Parts) -> Parts:
    """The parts folder, opened on rank 0 (the other ranks never touch it)."""
    dist.main_decides(parts.open)
    return parts


def done_upto(parts: Parts, name: str) -> int:
    """Problems 0..k-1 of `name` are finished: k, the same on every rank (read only: the folder may be unopened)."""
    return dist.main_decides(lambda: (parts.finished(name) or [(0, 0, 0.0)])[-1][1])


def engine_chunk(engine, n: int) -> int:
    """Prompts the engine decodes together: the HF engine cuts a call into chunks of max_batch // n prompts
    (lib/engine/rollout.HFEngine.generate); an engine that batches on its own (vLLM) counts as 1."""
    max_batch = getattr(engine, "max_batch", None)
    return max(1, max_batch // n) if max_batch else 1


def sample_in_rounds(engine, problems, reward_fn, parts: Parts, name: str, *, n: int, seed: int, part_size: int = 0,
                     **sampling) -> None:
    """Sample and score every problem of `problems` not finished yet, round by round, into `parts` (under
    torchrun: every rank calls it, rank 0 writes). part_size: problems per rank per round, rounded up to whole
    engine chunks; 0 = one chunk (HF) or VLLM_PART_SIZE. `sampling` goes to sample_and_score (max_new_tokens,
    temperature, top_p, tokenizer, step, source, keep_ids)."""
    chunk = engine_chunk(engine, n)
    size = -(-(part_size or (chunk if chunk > 1 else VLLM_PART_SIZE)) // chunk) * chunk
    world, rank = dist.world_size(), dist.rank()
    lo = done_upto(parts, name)
    while lo < len(problems):
        hi = min(len(problems), lo + world * size)
        a, b = (lo + x for x in dist.split_chunks(hi - lo, chunk, world, rank))
        t0 = time.time()
        mine = []
        if b > a:  # (the problems' global seeds)
            seeds = [prompt_seed(seed, i) for i in range(a, b)]
            mine = trajectories(sample_and_score(engine, problems[a:b], reward_fn, n=n, seed=seeds, **sampling))
        shares = dist.gather_object(mine)  # rank 0: every rank's records, in rank order = problem order
        if dist.is_main():
            parts.write(name, lo, hi, [t for share in shares for t in share], round(time.time() - t0, 1))
        lo = hi
