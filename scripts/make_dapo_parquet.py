"""make_dapo_parquet.py — a synthetic parquet of DAPO-Math-17k's exact shape, for timing the prompt-set loader.

The real file (BytedTsinghua-SIA/DAPO-Math-17k, data/dapo-math-17k.parquet) holds 1,791,700 rows: 17,917 distinct
problems, each repeated 100 times. This writes the same schema, column order, nested types and text lengths
(lib/worlds/synthetic.py says which). Nothing is downloaded. Whether the real file holds a problem's copies contiguously
or interleaved could not be checked offline: --order picks (default contiguous).

    python scripts/make_dapo_parquet.py --out runs/bench/dapo-math-17k-synthetic.parquet      # full size, a few seconds
    python scripts/make_dapo_parquet.py --out /tmp/small.parquet --prompts 50 --repeats 3 --order interleaved
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `lib` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.run import cli  # noqa: E402
from lib.worlds.synthetic import write_dapo_parquet  # noqa: E402,F401 (also this script's API)


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
