"""Synthetic data of the real shapes, for measuring the stages at full size without downloading anything.

DAPO-Math-17k's parquet (write_dapo_parquet; scripts/make_dapo_parquet.py, bench.py --sections data): the real
file (BytedTsinghua-SIA/DAPO-Math-17k, data/dapo-math-17k.parquet) holds 1,791,700 rows, 17,917 distinct problems
each repeated 100 times, in this schema, column order and nested types:

  data_source  string                                  "math_dapo"
  prompt       list<struct<content: string, role: string>>   one user turn: DAPO's instruction around the problem
  ability      string                                  "MATH"
  reward_model struct<ground_truth: string, style: string>   an integer answer, "rule-lighteval/MATH_v2"
  extra_info   struct<index: string>                   a uuid per distinct problem

with realistic text lengths (lib.run.data.DAPO_TEMPLATE around a synthetic problem of 150-700 characters), so that a
loader meets the same bytes and rows as on the real file. Whether the real file holds a problem's copies
contiguously or interleaved could not be checked offline: `order` picks.

An explore.py rollouts file at full scale (write_rollouts; scripts/scale_bench.py): the shared trajectory record
plus explore's `step` and `kept`, a group of n responses per prompt per step, responses of ~2k tokens, token ids
on the correct ones, per-problem success rates drawn around a mean.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lib.run.cli import atomic_open
from lib.run.data import DAPO_TEMPLATE

SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
    ("extra_info", pa.struct([("index", pa.string())])),
])

_WORDS = ("let", "the", "sum", "of", "all", "positive", "integers", "such", "that", "a", "triangle", "with", "sides",
          "circle", "radius", "find", "number", "ways", "sequence", "defined", "by", "real", "roots", "polynomial",
          "remainder", "when", "is", "divided", "probability", "chosen", "at", "random", "from", "set", "each",
          "area", "region", "points", "on", "grid", "digits", "product", "greatest", "common", "divisor", "and")


def _problem(rng: random.Random) -> str:
    """A math-looking problem statement of 150-700 characters (words, numbers and inline LaTeX)."""
    target = rng.randint(150, 700)
    parts: list[str] = []
    n = 0
    while n < target:
        r = rng.random()
        if r < 0.12:
            tok = f"${rng.choice('abcnxyk')}_{{{rng.randint(1, 99)}}} = {rng.randint(2, 999)}$"
        elif r < 0.2:
            tok = str(rng.randint(2, 10 ** rng.randint(1, 6)))
        else:
            tok = rng.choice(_WORDS)
        parts.append(tok)
        n += len(tok) + 1
    text = " ".join(parts)
    return text[0].upper() + text[1:] + ". What is the answer?"


def distinct_table(prompts: int, seed: int = 0) -> pa.Table:
    """One row per distinct problem (ids are seeded uuids, answers integers), in DAPO-Math-17k's schema."""
    rng = random.Random(seed)
    content = [DAPO_TEMPLATE.format(problem=_problem(rng)) for _ in range(prompts)]
    answers = [str(rng.randint(0, 10 ** rng.randint(1, 4))) for _ in range(prompts)]
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(prompts)]
    return pa.Table.from_pydict({
        "data_source": ["math_dapo"] * prompts,
        "prompt": [[{"content": c, "role": "user"}] for c in content],
        "ability": ["MATH"] * prompts,
        "reward_model": [{"ground_truth": a, "style": "rule-lighteval/MATH_v2"} for a in answers],
        "extra_info": [{"index": i} for i in ids],
    }, schema=SCHEMA)


def row_order(prompts: int, repeats: int, order: str = "contiguous") -> np.ndarray:
    """Which distinct problem each output row is: [prompts * repeats] indices into the distinct table.
    contiguous: 0,0,..,0,1,1,..; interleaved: 0,1,..,P-1,0,1,.. (the file read as `repeats` passes over the set)."""
    if order == "contiguous":
        return np.repeat(np.arange(prompts), repeats)
    if order == "interleaved":
        return np.tile(np.arange(prompts), repeats)
    raise ValueError(f"order must be 'contiguous' or 'interleaved', got {order!r}")


def write_dapo_parquet(out: str | os.PathLike, prompts: int = 17917, repeats: int = 100, seed: int = 0,
                       order: str = "contiguous", chunk_rows: int = 200_000) -> Path:
    """Write the file (atomically: a temp file renamed over `out`); `chunk_rows` rows at a time, so the whole
    1.8M-row table never sits in memory. Returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    distinct = distinct_table(prompts, seed)
    rows = row_order(prompts, repeats, order)  # [prompts * repeats]
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, SCHEMA) as w:
            for start in range(0, len(rows), chunk_rows):
                w.write_table(distinct.take(rows[start:start + chunk_rows]))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# --- a rollouts file ------------------------------------------------------------------------------------------
def _response_text(rng: random.Random, tokens: int) -> str:
    """~`tokens` tokens of step-by-step math (about 4 characters a token)."""
    parts, n = [], 0
    while n < 4 * tokens:
        r = rng.random()
        if r < 0.15:
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            tok = f"${a} + {b} = {a + b}$"
        elif r < 0.25:
            tok = f"\\frac{{{rng.randint(1, 99)}}}{{{rng.randint(2, 99)}}}"
        elif r < 0.3:
            tok = ".\n"
        else:
            tok = rng.choice(_WORDS)
        parts.append(tok)
        n += len(tok) + 1
    return " ".join(parts)


def write_rollouts(out: str | os.PathLike, records: int, problems: int = 4000, n: int = 16, steps: int = 200,
                   response_tokens: int = 2000, correct: float = 0.1, seed: int = 0) -> dict:
    """An explore.py rollouts.jsonl of `records` records: `steps` RL steps of prompts x n responses (the prompts
    of a step: the next ones of a seeded shuffle of `problems` problems, reshuffled each pass), problem i solved
    with probability p_i ~ Beta(0.25, 0.25 (1 - correct) / correct) (mean `correct`: many never solved, a tail
    of hard ones, a few easy). Responses are ~`response_tokens` tokens, each a distinct text (a unique opening
    line before one of 256 bodies); correct ones carry ~`response_tokens` token ids. Written atomically, a line
    at a time. Returns {"records", "steps", "prompts_per_step", "bytes"}."""
    rng = random.Random(seed)
    per_step = max(1, math.ceil(records / (n * steps)))
    bodies = [json.dumps(_response_text(rng, response_tokens))[1:-1] for _ in range(256)]  # JSON-escaped, unquoted
    ids = [json.dumps([rng.randrange(151_000) for _ in range(response_tokens + rng.randint(-200, 200))])
           for _ in range(32)]
    pids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(problems)]
    prompts = [json.dumps(DAPO_TEMPLATE.format(problem=_problem(rng))) for _ in range(problems)]
    answers = [str(rng.randint(0, 999)) for _ in range(problems)]
    beta = 0.25 * (1 - correct) / correct
    rate = [rng.betavariate(0.25, beta) for _ in range(problems)]
    order: list[int] = []
    written, step = 0, 0
    with atomic_open(out) as f:
        while written < records:
            step += 1
            for _ in range(per_step):
                if not order:
                    order = list(range(problems))
                    rng.shuffle(order)
                i = order.pop()
                for j in range(min(n, records - written)):
                    ok = rng.random() < rate[i]
                    tail = f', "response_ids": {ids[rng.randrange(len(ids))]}' if ok else ""
                    f.write(f'{{"problem_id": "{pids[i]}", "prompt": {prompts[i]}, "response": "Attempt {step}.{j}: '
                            f'{bodies[rng.randrange(256)]}", "reward": {1.0 if ok else -1.0}, '
                            f'"acc": {"true" if ok else "false"}, '
                            f'"pred": "{answers[i] if ok else rng.randint(0, 999)}", '
                            f'"ground_truth": "{answers[i]}", "prompt_tokens": {len(prompts[i]) // 4}, '
                            f'"response_tokens": {response_tokens}, "finish_reason": "stop", "step": {step}, '
                            f'"source": "rollout", "kept": {"true" if ok else "false"}{tail}}}\n')
                    written += 1
                if written >= records:
                    break
    return {"records": written, "steps": step, "prompts_per_step": per_step, "bytes": Path(out).stat().st_size}
