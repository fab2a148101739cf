"""make_dapo_parquet.py — a synthetic parquet of DAPO-Math-17k's exact shape, for timing the prompt-set loader.

The real file (BytedTsinghua-SIA/DAPO-Math-17k, data/dapo-math-17k.parquet) holds 1,791,700 rows: 17,917 distinct
problems, each repeated 100 times. This writes the same schema with the same column order and nested types

  data_source  string                                  "math_dapo"
  prompt       list<struct<content: string, role: string>>   one user turn: DAPO's instruction around the problem
  ability      string                                  "MATH"
  reward_model struct<ground_truth: string, style: string>   an integer answer, "rule-lighteval/MATH_v2"
  extra_info   struct<index: string>                   a uuid per distinct problem

and realistic text lengths (lib.data.DAPO_TEMPLATE around a synthetic problem of 150-700 characters), so that a
loader meets the same bytes and rows as on the real file. Nothing is downloaded. Whether the real file holds a
problem's copies contiguously or interleaved could not be checked offline: --order picks (default contiguous).

    python scripts/make_dapo_parquet.py --out runs/bench/dapo-math-17k-synthetic.parquet      # full size, a few seconds
    python scripts/make_dapo_parquet.py --out /tmp/small.parquet --prompts 50 --repeats 3 --order interleaved
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if __package__ in (None, ""):  # run as a script: make `lib` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib import cli  # noqa: E402
from lib.data import DAPO_TEMPLATE  # noqa: E402

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


def main(argv=None) -> int:
    p = cli.make_parser(__doc__)
    p.add_argument("--out", required=True, help="parquet file to write")
    p.add_argument("--prompts", type=int, default=17917, help="distinct problems (DAPO-Math-17k: 17,917)")
    p.add_argument("--repeats", type=int, default=100, help="copies of each problem (DAPO-Math-17k: 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problems' text, answers and ids")
    p.add_argument("--order", choices=("contiguous", "interleaved"), default="contiguous",
                   help="a problem's copies next to each other, or one pass over all problems per copy")
    args = p.parse_args(argv)
    cli.check_positive(args, "prompts", "repeats")
    out = write_dapo_parquet(args.out, args.prompts, args.repeats, args.seed, args.order)
    print(f"wrote {out} ({args.prompts * args.repeats:,} rows, {args.prompts:,} distinct, {args.order}; "
          f"{out.stat().st_size / 1e6:,.1f} MB)")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
