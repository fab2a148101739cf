"""explore.py on a real vLLM engine, checked from inside: every push landed, and the engine ends on the trainer's
weights.

    python scripts/vllm_explore_check.py --backend vllm --rl-steps 4 --out runs/vllm_check/explore   # explore's flags
    python scripts/vllm_explore_check.py --no-push ...     # the control: the same run with sync_weights disabled

Runs explore.py in this process (its own make_engine, whose engine is kept), then checks, one PASS / FAIL line each:
  gap     every step's rollout_probs_diff_max <= --max-gap: the engine sampled each step with the weights the trainer
          scored them with. A missed push leaves the engine one update or more behind, a gap of the order of the
          update itself (the --no-push control shows how large); fp32 sampler vs fp32 trainer differ by rounding.
  greedy  (one process only) greedy continuations of held-out toy prompts: the in-memory engine == a fresh vLLM
          engine loaded from the newest checkpoint == the transformers model loaded from it (teacher-forced, exact).
Under torchrun every rank runs explore; rank 0 checks the gap (the metrics hold every rank's tokens).
--no-push inverts the verdict of `gap` (it must FAIL there) and skips `greedy`. Exit 1 if a check fails.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROBLEMS = 16  # held-out toy prompts for the greedy comparison
NEW_TOKENS = 60


def main(argv: list[str]) -> int:
    import explore
    from lib import explore_setup

    no_push = "--no-push" in argv
    argv = [a for a in argv if a != "--no-push"]
    max_gap = 1e-4
    if "--max-gap" in argv:
        i = argv.index("--max-gap")
        max_gap = float(argv[i + 1])
        del argv[i:i + 2]
    cfg = explore.get_args(argv)
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    live = []  # the engine's greedy decodes when explore closes it at the end of the run
    make = explore_setup.make_engine  # the engine explore's setup builds

    def keep(*a, **kw):  # explore's own engine, watched
        engine = make(*a, **kw)
        if no_push:
            engine.sync_weights = lambda model: None
        elif single:
            close = engine.close
            engine.close = lambda: (live.append((greedy(engine), context_of(engine))), close())
        return engine

    explore_setup.make_engine = keep
    rc = explore.main(argv)
    if rc or int(os.environ.get("RANK", "0")) != 0:
        return rc
    out = Path(cfg.flags["out"])
    fails = 0

    def line(ok: bool, name: str, text: str) -> None:
        nonlocal fails
        fails += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {text}", flush=True)

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    gaps = [r.get("rollout_probs_diff_max") for r in rows if "rollout_probs_diff_max" in r]
    worst = max((g for g in gaps if g is not None), default=None)
    ok = worst is not None and len(gaps) == len(rows) and worst <= max_gap
    line(ok != no_push, "gap" + (" (control: no pushes, must exceed)" if no_push else ""),
         f"rollout_probs_diff_max per step {gaps} (bound {max_gap})")
    if no_push or not single:
        return 1 if fails else 0
    line(*greedy_agree(*live[0], out))
    return 1 if fails else 0


def prompts_of(tok) -> list[str]:
    from lib.run import data
    from lib.worlds import toy

    return [p.prompt for p in data.render_prompts(data.load_problems(str(toy.data_path("test")))[:PROBLEMS], tok)]


def greedy(engine) -> list[list[int]]:
    prompts = prompts_of(engine.tok)
    return [g[0].token_ids for g in engine.generate(prompts, n=1, max_new_tokens=NEW_TOKENS, temperature=0.0)]


def context_of(engine) -> int:
    return engine.llm.llm_engine.vllm_config.model_config.max_model_len


def greedy_agree(live: list[list[int]], context: int, out: Path) -> tuple[bool, str, str]:
    """The engine's decodes at the end of the run, a fresh engine on the newest checkpoint and transformers on it:
    the same greedy tokens."""
    import torch

    from lib.engine.rollout import VLLMEngine
    from lib.train.checkpoint import list_checkpoints
    from lib.train.modeling import load_policy

    step, ckpt = list_checkpoints(out)[-1]
    model, tok = load_policy(str(ckpt))
    prompts = prompts_of(tok)
    fresh_engine = VLLMEngine(str(ckpt), tok, max_model_len=context, dtype="float32", in_process=True)
    fresh = greedy(fresh_engine)
    fresh_engine.close()
    forced = 0  # tokens of the live decode that are the checkpoint's transformers argmax
    total = 0
    with torch.no_grad():
        for prompt, toks in zip(prompts, live):
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            x = torch.tensor([p + toks])
            logits = model(input_ids=x).logits[0, len(p) - 1:len(p) - 1 + len(toks)]
            forced += int((logits.argmax(-1) == torch.tensor(toks)).sum())
            total += len(toks)
    ok = live == fresh and forced == total and total > 0
    return ok, "greedy", (f"{len(prompts)} prompts x <= {NEW_TOKENS} tokens at {ckpt.name}: in-memory engine == fresh "
                          f"engine on the checkpoint: {live == fresh}; transformers' argmax on {forced}/{total} tokens")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
