"""harvest.py — pool the trajectories of an RL run across its steps: RLoop's inter-step diversity.

    python harvest.py --run-dir runs/loop/iter1/explore --out runs/loop/iter1/harvest
    python harvest.py --run-dir runs/loop/iter1/explore --out runs/h --select-steps 1-10,15,20
    python harvest.py --run-dir runs/loop/iter1/explore --out runs/h --n-samples 8 --select-steps 10-

RL policies at different steps solve problems in different ways (low inter-step similarity); standard RL
throws every step's samples away after its update. RLoop keeps them. Two sources:

  default          every rollout explore.py logged (RUN_DIR/rollouts.jsonl): free, already scored, each record
                   tagged with the RL step that sampled it. --select-steps picks a subset of steps.
  --n-samples K    instead, sample K fresh responses to every training problem from each saved intermediate
                   checkpoint RUN_DIR/ckpt_*/ (those within --select-steps): uniform coverage of every problem at
                   every checkpoint, at the cost of generation. Each record is tagged step = checkpoint step,
                   source = checkpoint folder name. Problems come from the explore run's args.json `data`
                   (or --data), sampling settings from its args.json unless given here.

Output: OUT/harvest.jsonl (the shared trajectory record), OUT/args.json and, last, OUT/done.json; a summary line
per step range (default) or per checkpoint (--n-samples): trajectories, accuracy, problems. Every logged rollout
counts, whether or not DAPO's dynamic sampling trained on it; the harvest is streamed, so it need not fit in memory.
When every step is taken (the default) harvest.jsonl is the rollouts file itself, hard-linked (explore.py's extra
`kept` field then stays; readers ignore it): at full scale that file is tens of GB per run. A subset of steps is
written out, without `kept`.
--select-steps: comma-separated steps and inclusive ranges ("1-200", "50,100,150", "1-50,100", "150-" = 150 on).
--n-samples keeps its finished rounds of problems (--part-size per rank, per checkpoint) in a hidden parts folder
next to harvest.jsonl, so a killed run resumes where it stopped; the folder is removed once the output is written.

--n-samples runs data-parallel under torchrun (lib/engine/rounds.py): every rank loads each checkpoint whole (the HF
model, or a vLLM engine in its own process), samples its contiguous share of the problems with their global
seeds, and rank 0 gathers the records and alone writes: the output equals one process's. The default mode is a
single-process file link: run it with python.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

from lib.algo import reward
from lib.engine import rounds
from lib.engine.rollout import add_engine_args, check_engine_args, make_engine, resolve_backend, rollout_dtype
from lib.run import cli, data
from lib.run.records import Trajectory, read_jsonl, trajectory_from_dict
from lib.train import dist
from lib.train.checkpoint import list_checkpoints
from lib.worlds import toy


def get_args(argv=None):
    p = cli.make_parser(__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--run-dir", required=True, help="explore.py output folder (rollouts.jsonl, ckpt_*/, args.json)")
    g.add_argument("--out", required=True, help="output folder: harvest.jsonl, args.json, done.json")
    g.add_argument("--select-steps", default="",
                   help="RL steps / ranges to take, e.g. '1-200' or '50,100,150' (default: all)")
    g.add_argument("--n-samples", type=int, default=0, metavar="K",
                   help="generate K samples per training problem from each saved checkpoint instead of "
                        "reading the logged rollouts (0 = read the rollouts)")
    g = p.add_argument_group("sampling, with --n-samples K (default: the explore run's args.json)")
    g.add_argument("--data", default=None, help="training problems (file / dataset id / 'toy')")
    g.add_argument("--split", default=None, help="dataset split, for --data given as a hub dataset id")
    g.add_argument("--limit", type=int, default=None, help="only the first N problems (0 = all)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="response length cap")
    g.add_argument("--max-prompt-len", type=int, default=None,
                   help="drop problems whose rendered prompt is longer than N tokens, with one line counting them "
                        "(explore.py's --max-prompt-len); 0 = no cap")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context (prompt + response) in tokens; 0 = the checkpoint's max_position_embeddings, which "
                        "carries the explore run's --max-model-len")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (checkpoint at step s uses seed + s)")
    g.add_argument("--reward", default=None,
                   help="verifier: dapo, math_verify or path/to/file.py:function (runs that file; signature of "
                        "lib/algo/reward.score)")
    g = p.add_argument_group("engine, with --n-samples K")
    add_engine_args(g, gpu_memory_utilization=0.85, tp=False)  # --backend, --gpu-memory-utilization
    g.add_argument("--part-size", type=int, default=0,
                   help="problems each rank samples per saved part (what a killed run keeps), rounded up to whole HF "
                        "engine batches; 0 = one HF engine batch (512 // K prompts) or "
                        f"{rounds.VLLM_PART_SIZE} with vLLM")
    g.add_argument("--device", default="auto",
                   help="cpu / cuda / auto (hf backend; under torchrun: each rank's own GPU)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off: safer)")
    args = p.parse_args(argv)
    cli.check_positive(args, "n_samples", "limit", "max_model_len", "max_prompt_len", "part_size", allow_zero=True)
    cli.check_positive(args, "max_new_tokens")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise cli.UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    check_engine_args(args)
    args.step_ranges = parse_steps(args.select_steps)
    cli.check_out_dir(args.out)
    return args


def parse_steps(spec: str) -> list[tuple[int, float]]:
    """'1-50,100,150-' -> [(1, 50), (100, 100), (150, inf)]; '' -> everything."""
    if not spec.strip():
        return [(0, math.inf)]
    ranges = []
    for item in spec.split(","):
        item = item.strip()
        lo, dash, hi = item.partition("-")
        try:
            a = int(lo)
            b = (int(hi) if hi.strip() else math.inf) if dash else a
        except ValueError:
            raise cli.UserError(f"--select-steps: expected steps or ranges like '1-200' or '50,100', "
                                f"got '{item}'") from None
        if a < 0 or b < a:
            raise cli.UserError(f"--select-steps: bad range '{item}'")
        ranges.append((a, b))
    return ranges


def in_steps(step: int | None, ranges: list[tuple[int, float]]) -> bool:
    return step is not None and any(a <= step <= b for a, b in ranges)


class Tally:
    """Running counts for one summary line: trajectories, correct ones, problems, problems solved."""

    def __init__(self):
        self.n, self.correct, self.problems, self.solved = 0, 0, set(), set()

    def add(self, t: Trajectory) -> None:
        self.n += 1
        self.correct += int(t.acc)
        self.problems.add(t.problem_id)
        if t.acc:
            self.solved.add(t.problem_id)

    def merge(self, other: Tally) -> Tally:
        self.n += other.n
        self.correct += other.correct
        self.problems |= other.problems
        self.solved |= other.solved
        return self

    def line(self, label: str) -> str:
        return (f"{label}: {self.n} trajectories, acc {self.correct / max(1, self.n):.3f}, {len(self.problems)} "
                f"problems ({len(self.solved)} solved at least once)")


def tally(trajs) -> Tally:
    t = Tally()
    for x in trajs:
        t.add(x)
    return t


def step_chunks(steps: list[int], max_lines: int = 10) -> list[list[int]]:
    """Sorted steps cut into at most `max_lines` consecutive chunks (one summary line each)."""
    size = max(1, math.ceil(len(steps) / max_lines))
    return [steps[i:i + size] for i in range(0, len(steps), size)]


# ---------------------------------------------------------------------------------------------------------
# default: the logged rollouts


def from_rollouts(run: Path, ranges, out: Path) -> dict[int, Tally]:
    """The selected steps' rollouts into `out`; returns a Tally per step. Every step selected and every record
    usable as logged (explore.py's always are): `out` is a hard link to the rollouts file, not a copy of it."""
    path = run / "rollouts.jsonl"
    if not path.is_file():
        raise cli.UserError(f"{path}: no such file (is --run-dir an explore.py output folder?)")
    if ranges == parse_steps(""):
        tallies, as_is = read_rollouts(path, ranges)  # validates every record
        if as_is and hard_link(path, out):
            return tallies
    with cli.atomic_open(out) as f:
        return read_rollouts(path, ranges, f)[0]


def read_rollouts(path: Path, ranges, f=None) -> tuple[dict[int, Tally], bool]:
    """Validate every logged rollout and tally the selected steps' (writing them to the open file f, if given).
    Returns (a Tally per step, whether every selected record stands as logged: it names its source)."""
    tallies: dict[int, Tally] = {}
    as_is = True
    lo, hi = math.inf, -math.inf  # the steps the run logged, for the error message
    for ln, d in read_jsonl(path):
        t = trajectory_from_dict(d, f"{path}:{ln}")
        if t.step is None:
            raise cli.UserError(f"{path}:{ln}: missing field 'step' (explore.py rollouts carry their RL step)")
        lo, hi = min(lo, t.step), max(hi, t.step)
        if in_steps(t.step, ranges):
            as_is = as_is and bool(t.source)
            t.source = t.source or "rollout"
            if f is not None:
                f.write(t.to_json() + "\n")
            tallies.setdefault(t.step, Tally()).add(t)
    if not tallies:
        raise cli.UserError(f"{path}: no rollouts at the requested --select-steps (the run logged steps {lo}-{hi})")
    return tallies, as_is


def hard_link(src: Path, out: Path) -> bool:
    """Make `out` a hard link to src (in one rename: a reader never sees a half file); False where the filesystem
    cannot (another device), and the caller writes a copy. explore.py only appends to its rollouts while its run
    goes on, and a finished run's file stays as it is; resuming that run with more --rl-steps grows this harvest
    too, so harvest again after."""
    tmp = out.with_name(f".{out.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, tmp)
    except OSError:
        return False
    os.replace(tmp, out)
    return True


# ---------------------------------------------------------------------------------------------------------
# --n-samples: fresh samples from every saved checkpoint


def resample_settings(args, run: Path) -> dict:
    """Sampling settings: this command's flags, else the explore run's args.json."""
    explore = {}
    if (run / "args.json").is_file():
        try:
            explore = json.loads((run / "args.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise cli.UserError(f"{run / 'args.json'}: not valid JSON ({e.msg})") from None
        except UnicodeDecodeError:
            raise cli.UserError(f"{run / 'args.json'}: not valid UTF-8") from None
    s = {}
    for key, default in (("data", None), ("split", "train"), ("limit", 0), ("max_new_tokens", None),
                         ("max_model_len", 0), ("max_prompt_len", 0), ("temperature", 1.0), ("top_p", 1.0),
                         ("seed", 0), ("reward", "dapo")):
        v = getattr(args, key)
        s[key] = v if v is not None else explore.get(key, default)
        if s[key] is None:
            raise cli.UserError(f"--{key.replace('_', '-')}: not given and not in {run / 'args.json'}")
    return s


def load_for_sampling(ckpt: Path, problems, s: dict, backend: str, device, gpu_mem: float,
                      trust_remote_code: bool = False, dtype: str = "auto"):
    """(engine, tokenizer) for one checkpoint, its prompts rendered and their context planned (the checkpoint's
    config carries the explore run's --max-model-len) before any weight loads. The vLLM path never loads the HF
    weights."""
    import torch

    from lib.train.modeling import load_config, load_policy, load_tokenizer, longest_prompt, plan_context

    tok = load_tokenizer(str(ckpt), trust_remote_code)
    data.render_prompts(problems, tok)
    context, overrides = plan_context(load_config(str(ckpt), trust_remote_code),
                                      longest_prompt(tok, [p.prompt for p in problems]), s["max_new_tokens"],
                                      s["max_model_len"], str(ckpt), s["max_prompt_len"])
    load = lambda: load_policy(str(ckpt), device=device, trust_remote_code=trust_remote_code)[0]  # noqa: E731
    return make_engine(backend, load, tok, str(ckpt), max_model_len=context, hf_overrides=overrides,
                       dtype=rollout_dtype(dtype, torch.device(device).type == "cuda"),
                       gpu_memory_utilization=gpu_mem, trust_remote_code=trust_remote_code,
                       in_process=dist.is_distributed()), tok


class StreamedCheckpoint:
    """A checkpoint folder's weights as VLLMEngine.sync_weights reads a model's (`state_dict().items()`), streamed
    from its safetensors files one tensor at a time: no second copy of the model in memory. A tied lm_head, which
    the file stores once as the embedding, is given under its own name too, as a model's state dict gives it (an
    engine may hold it as a separate, repacked weight: vLLM's CPU build does)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def state_dict(self) -> StreamedCheckpoint:
        return self

    def items(self):
        from safetensors import safe_open

        tied = (cli.read_json(self.folder / "config.json") or {}).get("tie_word_embeddings", False)
        for f in sorted(self.folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    yield name, st.get_tensor(name)
                    if tied and name == "model.embed_tokens.weight":
                        yield "lm_head.weight", st.get_tensor(name)


def resample(args, run: Path, out: Path) -> dict[int, Tally] | None:
    """Sample every checkpoint within --select-steps, round by round, into the parts folder, then join the parts into
    `out`. Under torchrun every rank calls it; rank 0 alone writes, and returns the tallies (None elsewhere)."""
    ckpts = [(s, d) for s, d in list_checkpoints(run) if in_steps(s, args.step_ranges)]
    if not ckpts:
        have = [d.name for _, d in list_checkpoints(run)]
        raise cli.UserError(f"{run}: no checkpoint at the requested --select-steps "
                            f"(found: {', '.join(have) or 'none'})")
    s = resample_settings(args, run)
    # fails before any model loads ('toy' writes its files once: rank 0 first)
    problems = dist.main_first(lambda: data.load_problems(toy.resolve(s["data"], "data"), split=s["split"],
                                                          limit=s["limit"]))
    if s["max_prompt_len"]:  # (one run's checkpoints share a tokenizer: the first one's decides)
        from lib.train.modeling import load_tokenizer

        tok = load_tokenizer(str(ckpts[0][1]), args.trust_remote_code)
        problems = data.drop_long_prompts(data.render_prompts(problems, tok), tok, s["max_prompt_len"], s["data"])
    verifier = reward.load_reward(s["reward"])  # (so does a bad --reward)
    backend = resolve_backend(args.backend)
    device = dist.device(args.device)
    print(f"resampling {len(problems)} problems x {args.n_samples} from {len(ckpts)} checkpoint(s) "
          f"({backend}; max_new_tokens {s['max_new_tokens']}, temperature {s['temperature']}, top_p {s['top_p']}"
          f"{f'; {dist.world_size()} ranks' if dist.is_distributed() else ''})")

    # the finished rounds of every checkpoint: a killed run resumes at the first one missing
    key = {**s, "k": args.n_samples, "run": str(run.resolve()), "backend": backend,
           "rollout_dtype": rollout_dtype(args.rollout_dtype, device.type == "cuda")}
    parts = rounds.open_parts(rounds.Parts(out.with_name(f".{out.name}.parts"), key))
    main_rank, engine, tok = dist.is_main(), None, None
    for step, ckpt in ckpts:
        if rounds.done_upto(parts, ckpt.name) >= len(problems):
            print(f"{ckpt.name} (step {step}): sampled by an earlier run")
            continue
        t0 = time.time()
        if getattr(engine, "in_process", False):
            # a vLLM engine in this process (under torchrun) takes the next checkpoint's weights in place: no engine
            # start per checkpoint, and no close() between them (it takes torch.distributed down with vLLM's groups)
            engine.sync_weights(StreamedCheckpoint(ckpt))
        else:
            if engine is not None:
                engine.close()
            engine, tok = load_for_sampling(ckpt, problems, s, backend, device, args.gpu_memory_utilization,
                                            args.trust_remote_code, args.rollout_dtype)
        rounds.sample_in_rounds(engine, problems, verifier, parts, ckpt.name, n=args.n_samples,
                                seed=s["seed"] + step, part_size=args.part_size, tokenizer=tok,
                                max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], top_p=s["top_p"],
                                step=step, source=ckpt.name)
        if main_rank:
            print(tally(parts.records(ckpt.name)[0]).line(f"{ckpt.name} (step {step})") + f", {time.time() - t0:.1f}s")
    if engine is not None:
        engine.close()  # (after the last collective)
    if not main_rank:
        return None

    tallies: dict[int, Tally] = {}
    with cli.atomic_open(out) as f:
        for step, ckpt in ckpts:
            tallies[step] = tally(parts.records(ckpt.name)[0])
            for path in parts.files(ckpt.name):
                with open(path, encoding="utf-8") as part:
                    shutil.copyfileobj(part, f)
    parts.remove()
    return tallies


def main(argv=None):
    args = get_args(argv)
    folder, run = Path(args.out), Path(args.run_dir)
    out = folder / "harvest.jsonl"
    if not run.is_dir():
        raise cli.UserError(f"{run}: no such folder (--run-dir takes an explore.py output folder)")
    if dist.is_main():
        cli.clear_done(folder)  # (the folder itself is made with the output: bad input leaves none)
    if args.n_samples:
        with dist.session():  # (without torchrun nothing below touches torch.distributed)
            tallies = resample(args, run, out)
        if tallies is None:  # (a rank other than 0: rank 0 wrote the output and prints the summary)
            return
        what = "checkpoint(s)"
    else:
        if dist.launched():
            raise cli.UserError("harvest.py without --n-samples copies logged rollouts in one process: run it with "
                                "python, not torchrun")
        tallies = from_rollouts(run, args.step_ranges, out)
        for chunk in step_chunks(sorted(tallies)):
            lo, hi = chunk[0], chunk[-1]
            part = Tally()
            for st in chunk:
                part.merge(tallies[st])
            print(part.line(f"step {lo}" if lo == hi else f"steps {lo}-{hi}"))
        what = "steps"
    total = Tally()
    for t in tallies.values():
        total.merge(t)
    print(total.line(f"total ({len(tallies)} {what})"))
    linked = not args.n_samples and os.path.samefile(out, run / "rollouts.jsonl")
    flags = {k: v for k, v in vars(args).items() if k != "step_ranges"}  # (the flags only: --config replays them)
    cli.save_args(argparse.Namespace(**flags), folder)
    cli.mark_done(folder, "harvest", trajectories=total.n, correct=total.correct, problems=len(total.problems))
    print(f"wrote {out}" + (" (a hard link to the run's rollouts.jsonl: every step, as logged; no copy)"
                            if linked else ""))


if __name__ == "__main__":
    cli.run_main(main)
