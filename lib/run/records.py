"""The one record every stage exchanges — a trajectory — and the JSONL helpers that read and write it.

A trajectory is one sampled response to one prompt, with its verdict. explore.py writes them (rollouts.jsonl),
harvest.py pools them, filter.py selects them, consolidate.py trains on them, evaluate.py writes them
(samples.jsonl). In JSONL the field names are a contract: users' own tools read them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

from lib.run.cli import UserError, atomic_write_text


@dataclass
class Trajectory:
    problem_id: str  # stable id of the problem (lib/run/data.py)
    prompt: str  # the exact text the policy was conditioned on (chat template applied)
    response: str  # the sampled completion, special tokens removed
    reward: float  # verifier score (+1 / -1) plus any shaping (overlong penalty)
    acc: bool  # did the verifier accept the answer
    pred: str = ""  # the normalised extracted answer
    ground_truth: str = ""
    prompt_tokens: int = 0
    response_tokens: int = 0
    finish_reason: str = "stop"  # "stop" (a stop token), "length" (hit max_new_tokens) or "abort" (vLLM aborted it)
    step: int | None = None  # RL step / checkpoint step that produced it; absent (None) outside RL
    source: str = ""  # where it came from: "rollout", "ckpt_000050", "eval", "gold", ...
    # The sampled token ids, the stop token included, exactly as the policy produced them: set on correct
    # responses (the ones RFT can train on), absent elsewhere (disk: ids take ~2x the text's bytes). RFT trains on
    # these, not on a re-tokenisation of `response`, which drops the stop token (Qwen2.5's chat turns end with
    # <|im_end|>, its tokenizer's eos_token is <|endoftext|>) and need not give the sampled ids back.
    response_ids: list[int] | None = None

    def to_dict(self) -> dict:
        # (field by field, not dataclasses.asdict: asdict deep-copies the token ids one int at a time, most of the
        # time of writing a full-scale harvest)
        d = {name: getattr(self, name) for name in _FIELDS}
        for k in ("step", "response_ids"):
            if d[k] is None:
                del d[k]  # the contract: `step` is absent outside RL, `response_ids` where not recorded
        if "response_ids" in d:
            d["response_ids"] = list(d["response_ids"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


_FIELDS = tuple(f.name for f in fields(Trajectory))


def _token_ids(ids: Any) -> bool:
    """A list of non-negative ints (bools are not token ids), checked at C speed: ~2k per correct response."""
    return isinstance(ids, list) and set(map(type, ids)) <= {int} and (not ids or min(ids) >= 0)


# field -> accepted python types, checked on read so that a bad harvest fails at the line, not deep inside.
_REQUIRED = {"problem_id": (str, int), "prompt": (str,), "response": (str,), "reward": (int, float), "acc": (bool,)}
_OPTIONAL = {f.name for f in fields(Trajectory)} - set(_REQUIRED)


def trajectory_from_dict(d: Any, where: str) -> Trajectory:
    """Validate one decoded JSON object; `where` is 'file:line' for the error message."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(d).__name__}")
    for name, types in _REQUIRED.items():
        if name not in d:
            raise UserError(f"{where}: missing field '{name}'")
        v = d[name]
        # bool is a subclass of int: a reward of `true` is a wrong type, not 1.0
        if not isinstance(v, types) or (name == "reward" and isinstance(v, bool)):
            want = " or ".join(t.__name__ for t in types)
            raise UserError(f"{where}: field '{name}' should be {want}, got {type(v).__name__}")
    kw = {k: d[k] for k in _REQUIRED}
    kw["problem_id"] = str(kw["problem_id"])
    kw["reward"] = float(kw["reward"])
    for k in _OPTIONAL:
        if k in d:
            kw[k] = d[k]
    if kw.get("step") is not None and (not isinstance(kw["step"], int) or isinstance(kw["step"], bool)):
        raise UserError(f"{where}: field 'step' should be int, got {type(kw['step']).__name__}")
    ids = kw.get("response_ids")
    if ids is not None and not _token_ids(ids):
        raise UserError(f"{where}: field 'response_ids' should be a list of token ids (non-negative ints)")
    return Trajectory(**kw)


# ---------------------------------------------------------------------------------------------------------
# JSONL


def read_jsonl(path: str | os.PathLike, allow_empty: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, object) for each non-blank line. Errors name the file and line."""
    for lineno, _, obj in read_jsonl_at(path, allow_empty):
        yield lineno, obj


def read_jsonl_at(path: str | os.PathLike, allow_empty: bool = False) -> Iterator[tuple[int, int, Any]]:
    """read_jsonl with each line's byte offset: (line_number, offset, object); read_line_at reads it back."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a JSONL file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    n = offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            at, offset = offset, offset + len(raw)
            try:
                line = _decode(raw, at)
            except UnicodeDecodeError:
                raise UserError(f"{path}:{lineno}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            n += 1
            yield lineno, at, obj
    if n == 0 and not allow_empty:
        raise UserError(f"{path}: empty file (no JSON lines)")


def read_line_at(f: BinaryIO, offset: int) -> Any:
    """The JSON object on the line at byte `offset` of a file open in binary mode (an offset read_jsonl_at gave)."""
    f.seek(offset)
    return json.loads(_decode(f.readline(), offset))


def _decode(raw: bytes, offset: int) -> str:
    # utf-8-sig at the start of the file: editors on Windows start a file with a byte-order mark
    return raw.decode("utf-8-sig" if offset == 0 else "utf-8")


def read_trajectories(path: str | os.PathLike, allow_empty: bool = False) -> list[Trajectory]:
    return [trajectory_from_dict(d, f"{path}:{ln}") for ln, d in read_jsonl(path, allow_empty=allow_empty)]


def write_jsonl(path: str | os.PathLike, rows: Iterable[Trajectory | dict]) -> None:
    """Write a whole JSONL file atomically (temp + rename)."""
    lines = [r.to_json() if isinstance(r, Trajectory) else json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def append_jsonl(path: str | os.PathLike, rows: Iterable[Trajectory | dict]) -> int:
    """Append whole lines in one write + fsync; returns the file size afterwards (a resume point: a stage
    that records it with its checkpoint can truncate a torn or un-checkpointed tail on resume)."""
    data = "".join(
        (r.to_json() if isinstance(r, Trajectory) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows
    ).encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def truncate_to(path: str | os.PathLike, size: int) -> None:
    """Cut a JSONL file back to `size` bytes (the offset recorded at the last checkpoint)."""
    path = Path(path)
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)


def stage_file(path: str | os.PathLike, name: str) -> Path:
    """A stage's input given as a file or as the folder of the stage that wrote it: folder/name (harvest.py's
    --out holds harvest.jsonl, filter.py's rft.jsonl)."""
    p = Path(path)
    return p / name if p.is_dir() else p
