"""A JSONL of trajectories read for a selection: one pass validates every line, counts each problem's successes and
trajectories, and keeps every success by reference to its line; a second pass copies only the chosen lines.

filter.py reads a harvest this way: at full scale an RL iteration's rollouts are 2-10 million records of ~20 KB,
far more than memory holds. A success costs 36 bytes of parallel arrays (its line's byte offset, its problem, its
step, a 16-byte digest of its response that tells duplicates apart), not a Python object; what counts as a
success is the caller's predicate, evaluated once per trajectory.
"""
from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from lib.run import cli
from lib.run.records import Trajectory, read_jsonl_at, read_line_at, trajectory_from_dict

NO_STEP = -(2 ** 63)  # the step array's value for a trajectory without a step
DIGEST_SIZE = 16


@dataclass(frozen=True, slots=True)
class Success:
    """A successful trajectory by reference: what a selection looks at (problem, step, response digest) and where
    its line starts in the scanned file (offset, in bytes)."""
    problem_id: str
    step: int | None
    digest: bytes
    offset: int


def digest(response: str) -> bytes:
    """Two responses are duplicates when their digests are equal (blake2b, 16 bytes)."""
    return hashlib.blake2b(response.encode(), digest_size=DIGEST_SIZE).digest()


class Scan:
    """Trajectories added one at a time (`add`): per problem [successes, total] (`counts`, first-seen order), and
    each success, in the order added, compactly (`successes()` gives them back)."""

    def __init__(self):
        self.counts: dict[str, list[int]] = {}
        self._index: dict[str, int] = {}  # problem_id -> its number, the position of its first trajectory
        self._ids: list[str] = []
        self._problem = array("l")  # per success: its problem's number
        self._step = array("q")  # its step (NO_STEP: none)
        self._offset = array("q")  # its line's byte offset
        self._digest = bytearray()  # its response's digest, DIGEST_SIZE bytes each

    def add(self, t: Trajectory, success: bool, offset: int) -> None:
        c = self.counts.get(t.problem_id)
        if c is None:
            c = self.counts[t.problem_id] = [0, 0]
            self._index[t.problem_id] = len(self._ids)
            self._ids.append(t.problem_id)
        c[1] += 1
        if success:
            c[0] += 1
            self._problem.append(self._index[t.problem_id])
            self._step.append(NO_STEP if t.step is None else t.step)
            self._offset.append(offset)
            self._digest += digest(t.response)

    def successes(self) -> Iterator[Success]:
        """Every success, in the order added (one object at a time: the caller holds what it keeps)."""
        d = DIGEST_SIZE
        for i, (p, s, o) in enumerate(zip(self._problem, self._step, self._offset)):
            yield Success(self._ids[p], None if s == NO_STEP else s, bytes(self._digest[i * d:(i + 1) * d]), o)


def scan(path: str | os.PathLike, is_success: Callable[[Trajectory], bool]) -> Scan:
    """One pass over a JSONL of trajectories: every line validated (errors name file:line:field), counted, and
    each success (is_success, once per trajectory) kept by its byte offset."""
    found = Scan()
    for ln, offset, d in read_jsonl_at(path):
        t = trajectory_from_dict(d, f"{path}:{ln}")
        found.add(t, bool(is_success(t)), offset)
    return found


def write_lines(path: str | os.PathLike, offsets: Iterable[int], out: str | os.PathLike) -> None:
    """The trajectories on the lines of `path` at these byte offsets, in the order given, written to `out` as the
    shared record, atomically (a reader never sees half of it)."""
    with open(path, "rb") as f, cli.atomic_open(out) as w:
        for offset in offsets:
            w.write(trajectory_from_dict(read_line_at(f, offset), f"{path}:byte {offset}").to_json() + "\n")
