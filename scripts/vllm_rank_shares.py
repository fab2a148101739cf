"""evaluate.py / harvest.py --n-samples run in this process, with a record of what this rank sampled.

    torchrun --nproc_per_node 2 scripts/vllm_rank_shares.py SHARES evaluate.py --backend vllm --n-samples 4 ...
    torchrun --nproc_per_node 2 scripts/vllm_rank_shares.py SHARES harvest.py --run-dir RUN --n-samples 2 ...

The stage runs as it does on its own (its flags follow its file name), with lib/engine/rounds.sample_and_score
watched: every call, i.e. this rank's share of one round, appends one line to SHARES/rank<RANK>.jsonl: {"rank",
"world", "pid", "source", "records"} (the scored records this process sampled, in order). scripts/vllm_cpu_check.sh
holds the lines of every rank against the output of a one-process run: each rank sampled its own contiguous share.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str]) -> None:
    from lib.engine import rounds
    from lib.run import cli
    from lib.train import dist

    shares, stage, argv = Path(argv[0]), Path(argv[1]).stem, argv[2:]
    shares.mkdir(parents=True, exist_ok=True)
    sample = rounds.sample_and_score

    def watched(engine, problems, *a, **kw):
        scored = sample(engine, problems, *a, **kw)
        line = {"rank": dist.rank(), "world": dist.world_size(), "pid": os.getpid(), "source": kw.get("source", ""),
                "records": [t.to_dict() for t in rounds.trajectories(scored)]}
        with open(shares / f"rank{dist.rank()}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
        return scored

    rounds.sample_and_score = watched
    cli.run_main(lambda: importlib.import_module(stage).main(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
