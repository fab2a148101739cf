"""The lab's arms and presets, as data: the runner (lab.py) and the lab report (lib/lab/report_lab.py) both read ARMS.

An arm is one `loop.sh` run per seed, under OUT/<arm>/seed<k>/, all from the same MODEL. Its entry holds:
  env        the loop.sh variables it sets over LOOP_DEFAULTS (VANILLA, RLOOP, THRESHOLD, EVAL_ITERS)
  scale      which of the lab's ITERS / RL_STEPS it multiplies by OVERFIT_X ('' = neither; see Arm.scale)
  explore    extra explore.py flags ('{kl_coef}' stands for the lab's KL_COEF)
  filter     extra filter.py flags
  reuses     finished work of other arms of the same seed that it starts from (copied: the same computation,
             never recomputed; see the parts below), in order of preference
  against    the arm it is measured against, paired by seed (the report's differences)
  claims     the paper's claims are judged on (this arm - against), at this arm's RL steps
  sweep      a member of the threshold sweep (its THRESHOLD); the sweep's reference is the member the others
             are measured against
  curve      the report draws its held-out accuracy and pass@k against RL steps (every evaluation it makes)
  diversity  the report measures the diversity of its successful rollouts
  stability  the report draws its per-step gradient norm and sampler/trainer gap (stability.png)

QUESTIONS, below the arms, are the open questions the report answers in words, each a pair of arms compared on a
few metrics, paired by seed.

Adding an arm is one entry in ARMS, e.g. a threshold of 0.3 beside the others:

    Arm("thr-0.3", "RLoop with THRESHOLD 0.3", env={"THRESHOLD": "0.3"},
        reuses=(Reuse("rloop", BASE_EVAL, ITERATION_1),), against="rloop", sweep=True),

then `python lab.py --arms rloop,thr-0.3`. Reuse is an optimisation only: an arm without `reuses` computes
everything itself, and so does one whose source failed or is missing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# What an arm may take from another arm's folder of the same seed. Every part is the same computation in both
# arms (same model, seed, data and flags): explore.py's data order, sampling seeds and constant-after-warm-up
# learning rate are functions of (seed, step), and a resumed run ends with the weights an uninterrupted one does.
BASE_EVAL = "base-eval"  # the base model's evaluation (every arm evaluates the same base, same seed)
RL_RUN = "rl-run"  # the source's first RL run (its iteration 1's, or its vanilla run): this arm's first RL run
#                    starts as a copy of it and resumes (explore.py --resume) to its own length; taken only when
#                    the source's run is not longer
ITERATION_1 = "iteration-1"  # the source's iteration 1 as finished stages: RL run, harvest, the RL policy's
#                              evaluation (the threshold acts after them); both arms iterate alike
VANILLA_EVALS = "vanilla-evals"  # the source's evaluations of its vanilla checkpoints: the same checkpoints of
#                                  this arm's longer vanilla run (which takes the source's RL_RUN)
PARTS = (BASE_EVAL, RL_RUN, ITERATION_1, VANILLA_EVALS)

# loop.sh settings every arm starts from: an RLoop run without the vanilla baseline (an arm of its own), the
# paper's threshold, and only the output policy evaluated (the lab reads the output policy of each run)
LOOP_DEFAULTS = {"VANILLA": "0", "RLOOP": "1", "THRESHOLD": "0.1", "EVAL_ITERS": "output"}
VANILLA_ONLY = {"VANILLA": "1", "RLOOP": "0"}


@dataclass(frozen=True)
class Reuse:
    source: str  # the arm whose folder (same seed) the parts come from
    parts: tuple[str, ...]

    def __init__(self, source: str, *parts: str):
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "parts", parts)


@dataclass(frozen=True)
class Arm:
    name: str
    about: str
    env: dict[str, str] = field(default_factory=dict)
    # '' : ITERS x RL_STEPS as the lab's; 'iters': OVERFIT_X times the iterations (one vanilla run OVERFIT_X
    # times longer); 'rl_steps': OVERFIT_X times the RL steps of each iteration
    scale: str = ""
    explore: str = ""
    filter: str = ""
    reuses: tuple[Reuse, ...] = ()
    against: str = ""
    claims: bool = False
    sweep: bool = False
    curve: bool = False
    diversity: bool = False
    stability: bool = False

    @property
    def settings(self) -> dict[str, str]:
        return {**LOOP_DEFAULTS, **self.env}

    @property
    def is_rloop(self) -> bool:
        """An RLoop run (iterations); else a vanilla-only run (RLOOP=0)."""
        return self.settings["RLOOP"] != "0"

    @property
    def threshold(self) -> float:
        return float(self.settings["THRESHOLD"])


# The open questions' settings. A sampler in bf16 against the fp32 trainer (the HF engine; vLLM would bring
# kernels of its own): the mismatch that published collapses of long RL runs are tied to.
BF16_SAMPLER = "--backend hf --rollout-dtype bfloat16 --no-bf16"
# A reward with partial credit (lib/worlds/toy_reward.py); dynamic sampling keeps a group whose rewards vary, so
# a group of wrong answers at different distances from the truth still trains
PARTIAL_REWARD = "--reward lib/worlds/toy_reward.py:partial_credit --filter-metric reward"
# Under it a success is a reward of at least TAU: only an exact answer (+1, less at most half of the overlong
# penalty); a near miss (off by one: 0) never is, so RFT imitates right answers only (docs/lab.md)
TAU = 0.5
PARTIAL_SUCCESS = f"--success-metric reward --success-threshold {TAU:g}"

ARMS: tuple[Arm, ...] = (  # the order is the runner's priority (the long chain first) and the report's
    Arm("rloop", "the default loop: ITERS x RL_STEPS RL steps, THRESHOLD 0.1",
        against="vanilla", claims=True, sweep=True, diversity=True),
    Arm("vanilla", "DAPO for the same ITERS x RL_STEPS steps, evaluated every RL_STEPS",
        env={**VANILLA_ONLY, "EVAL_ITERS": "all"}, reuses=(Reuse("rloop", BASE_EVAL, RL_RUN),), diversity=True),
    Arm("rloop-long", "RLoop at the overfitting horizon: ITERS iterations of OVERFIT_X x RL_STEPS steps, each "
        "iteration evaluated", env={"EVAL_ITERS": "all"}, scale="rl_steps",
        reuses=(Reuse("vanilla", BASE_EVAL, RL_RUN), Reuse("rloop", BASE_EVAL, RL_RUN)),
        against="overfit", claims=True, curve=True, stability=True),
    Arm("overfit", "vanilla run OVERFIT_X times longer, evaluated every RL_STEPS: the paper's RL overfitting",
        env={**VANILLA_ONLY, "EVAL_ITERS": "all"}, scale="iters",
        reuses=(Reuse("rloop-long", RL_RUN), Reuse("vanilla", BASE_EVAL, RL_RUN, VANILLA_EVALS)),
        against="vanilla", curve=True, stability=True),
    Arm("no-al-long", "rloop-long without active learning (THRESHOLD 1)", env={"THRESHOLD": "1"}, scale="rl_steps",
        reuses=(Reuse("rloop-long", BASE_EVAL, ITERATION_1),), against="overfit", claims=True),
    Arm("no-al", "RLoop without active learning (THRESHOLD 1: every problem with a success is kept)",
        env={"THRESHOLD": "1"}, reuses=(Reuse("rloop", BASE_EVAL, ITERATION_1),), against="rloop", sweep=True),
    Arm("thr-0.05", "RLoop with THRESHOLD 0.05", env={"THRESHOLD": "0.05"},
        reuses=(Reuse("rloop", BASE_EVAL, ITERATION_1),), against="rloop", sweep=True),
    Arm("thr-0.2", "RLoop with THRESHOLD 0.2", env={"THRESHOLD": "0.2"},
        reuses=(Reuse("rloop", BASE_EVAL, ITERATION_1),), against="rloop", sweep=True),
    Arm("thr-0.5", "RLoop with THRESHOLD 0.5", env={"THRESHOLD": "0.5"},
        reuses=(Reuse("rloop", BASE_EVAL, ITERATION_1),), against="rloop", sweep=True),
    Arm("kl", "vanilla with a KL penalty to the initial policy (explore.py --kl-coef KL_COEF)", env=VANILLA_ONLY,
        explore="--kl-coef {kl_coef}", reuses=(Reuse("rloop", BASE_EVAL),), against="vanilla"),
    # the open questions at the horizon (docs/lab.md): their RL runs differ from every fp32, binary-reward run, so
    # they share only the base's evaluation; they evaluate their output policy only (equal RL steps, 300)
    Arm("rloop-long-bf16", "rloop-long with a bf16 sampler against the fp32 trainer", scale="rl_steps",
        explore=BF16_SAMPLER, reuses=(Reuse("rloop-long", BASE_EVAL),), against="overfit-bf16", claims=True,
        stability=True),
    Arm("overfit-bf16", "overfit with a bf16 sampler against the fp32 trainer", env=VANILLA_ONLY, scale="iters",
        explore=BF16_SAMPLER, reuses=(Reuse("rloop-long-bf16", BASE_EVAL, RL_RUN),), against="overfit",
        stability=True),
    Arm("overfit-bf16-tis", "overfit-bf16 with the token-level mismatch correction (explore.py --rollout-is token)",
        env=VANILLA_ONLY, scale="iters", explore=f"{BF16_SAMPLER} --rollout-is token",
        reuses=(Reuse("rloop-long", BASE_EVAL),), against="overfit-bf16", stability=True),
    Arm("replay-long", "overfit with experience replay (explore.py --replay)", env=VANILLA_ONLY, scale="iters",
        explore="--replay", reuses=(Reuse("rloop-long", BASE_EVAL),), against="overfit"),
    Arm("rloop-long-partial", f"rloop-long on a partial-credit reward, a success a reward >= {TAU:g}",
        scale="rl_steps", explore=PARTIAL_REWARD, filter=PARTIAL_SUCCESS, reuses=(Reuse("rloop-long", BASE_EVAL),),
        against="overfit-partial", claims=True),
    Arm("overfit-partial", "overfit on the partial-credit reward", env=VANILLA_ONLY, scale="iters",
        explore=PARTIAL_REWARD, reuses=(Reuse("rloop-long-partial", BASE_EVAL, RL_RUN),), against="overfit"),
)
BY_NAME = {a.name: a for a in ARMS}


@dataclass(frozen=True)
class Question:
    """An open question the report answers: `arm` - `against`, paired by seed, on each of `metrics` (the largest
    pre-clip gradient norm 'grad_norm', average 'acc', average 'pass@k', 'probe' accuracy: forgetting)."""
    ask: str
    arm: str
    against: str
    metrics: tuple[str, ...]


QUESTIONS = (
    Question("Does vanilla RL's gradient norm grow under a bf16 sampler?", "overfit-bf16", "overfit", ("grad_norm",)),
    Question("Does RLoop prevent it?", "rloop-long-bf16", "overfit-bf16", ("grad_norm",)),
    Question("Does the token-level correction prevent it?", "overfit-bf16-tis", "overfit-bf16", ("grad_norm",)),
    Question("Is RLoop better than experience replay at equal RL steps?", "rloop-long", "replay-long",
             ("acc", "pass@k", "probe")),
    Question("Is experience replay better than vanilla RL?", "replay-long", "overfit", ("acc", "pass@k", "probe")),
    Question("Does RLoop's gain survive a non-binary reward?", "rloop-long-partial", "overfit-partial",
             ("acc", "pass@k", "probe")),
)
METRICS = ("grad_norm", "acc", "pass@k", "probe")


@dataclass(frozen=True)
class Preset:
    name: str
    about: str
    arms: tuple[str, ...]
    seeds: int  # seeds 0 .. seeds - 1
    out: str
    budget_s: int  # the wall-time target on the toy, 2 cores (bench.py --sections walltime)


PRESETS = {p.name: p for p in (
    Preset("quick", "the claims at 60 RL steps and the open questions (threshold, KL)",
           ("rloop", "vanilla", "overfit", "no-al", "thr-0.05", "thr-0.2", "thr-0.5", "kl"), 3, "runs/lab", 3600),
    Preset("horizon", "the claims at 60 and at 300 RL steps (the overfitting horizon)",
           ("rloop", "vanilla", "rloop-long", "overfit", "no-al-long"), 5, "runs/lab-horizon", 6000),
    # the open questions, in two presets of one folder (all of them would not fit one working session): the
    # second skips rloop-long and overfit when the first has run
    Preset("questions", "the open questions, 1 of 2: stability under a bf16 sampler (then questions-2)",
           ("rloop-long", "overfit", "rloop-long-bf16", "overfit-bf16", "overfit-bf16-tis"), 5, "runs/lab-questions",
           19800),
    Preset("questions-2", "the open questions, 2 of 2: replay, a partial-credit reward (after questions)",
           ("rloop-long", "overfit", "replay-long", "rloop-long-partial", "overfit-partial"), 5,
           "runs/lab-questions", 10800),
)}


@dataclass(frozen=True)
class Sizes:
    """The lab's sizes (the toy's defaults): each arm's ITERS and RL_STEPS derive from them."""
    iters: int = 3
    rl_steps: int = 20
    overfit_x: int = 5
    kl_coef: float = 0.1
    save_every: int = 0  # checkpoint interval of every RL run; 0 = loop.sh's default for rl_steps

    def checkpoint_every(self) -> int:
        """One interval for every arm (multiples of RL_STEPS must be checkpoints in every copied run): loop.sh's
        default, the largest of 5, 4, 3, 2, 1 dividing RL_STEPS."""
        return self.save_every or next(k for k in (5, 4, 3, 2, 1) if self.rl_steps % k == 0)


def iters(arm: Arm, s: Sizes) -> int:
    return s.iters * (s.overfit_x if arm.scale == "iters" else 1)


def rl_steps(arm: Arm, s: Sizes) -> int:
    """RL steps per iteration."""
    return s.rl_steps * (s.overfit_x if arm.scale == "rl_steps" else 1)


def total_steps(arm: Arm, s: Sizes) -> int:
    return iters(arm, s) * rl_steps(arm, s)


def first_run_steps(arm: Arm, s: Sizes) -> int:
    """Length of the arm's first RL run: iteration 1's, or the whole vanilla run."""
    return rl_steps(arm, s) if arm.is_rloop else total_steps(arm, s)


def loop_env(arm: Arm, s: Sizes, explore_args: str = "", filter_args: str = "") -> dict[str, str]:
    """The loop.sh variables of one arm (besides OUT, SEED and the lab-wide ones): the lab-wide stage flags, then
    the arm's."""
    env = {**arm.settings, "ITERS": str(iters(arm, s)), "RL_STEPS": str(rl_steps(arm, s)),
           "SAVE_EVERY": str(s.checkpoint_every())}
    extra = arm.explore.format(kl_coef=s.kl_coef)
    env["EXPLORE_ARGS"] = " ".join(x for x in (explore_args, extra) if x)
    if filter_args or arm.filter:
        env["FILTER_ARGS"] = " ".join(x for x in (filter_args, arm.filter) if x)
    return env


# --- what a reuse copies --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Copy:
    stage: str  # the source's stage that wrote it (its OUT/.done/<stage> marker); may hold one '*'
    path: str  # under the source's folder ('*' = what the stage's '*' matched)
    dest: str = ""  # under this arm's folder ('' = path)
    done: bool = True  # mark the stage finished in this arm (False: its loop.sh resumes from the copy)

    def resolve(self, marker: str) -> tuple[str, str] | None:
        """(path, dest) for one of the source's stage markers, or None if it is not this copy's stage."""
        m = re.fullmatch(re.escape(self.stage).replace(r"\*", "(.*)"), marker)
        if m is None:
            return None
        star = m.group(1) if m.groups() else ""
        return self.path.replace("*", star), (self.dest or self.path).replace("*", star)


def first_run(arm: Arm) -> tuple[str, str]:
    """(stage, folder) of an arm's first RL run in its loop.sh folder."""
    return ("iter1-explore", "iter1/explore") if arm.is_rloop else ("vanilla-explore", "vanilla")


def copies(arm: Arm, reuse: Reuse, s: Sizes) -> list[Copy]:
    """What `arm` copies from `reuse.source`'s folder of the same seed (an empty list: nothing applies)."""
    src = BY_NAME[reuse.source]
    out: list[Copy] = []
    for part in reuse.parts:
        if part == BASE_EVAL:
            out.append(Copy("eval-base", "eval/base"))
        elif part == RL_RUN and first_run_steps(src, s) <= first_run_steps(arm, s):
            stage, path = first_run(src)
            out.append(Copy(stage, path, first_run(arm)[1], done=False))
        elif part == ITERATION_1:
            out += [Copy("iter1-explore", "iter1/explore"), Copy("iter1-harvest", "iter1/harvest"),
                    Copy("eval-iter1-rl", "eval/iter1-rl")]
        elif part == VANILLA_EVALS and total_steps(src, s) <= total_steps(arm, s):
            out.append(Copy("eval-vanilla-*", "eval/vanilla-*"))
    return out


def check(arms: tuple[Arm, ...] = ARMS, presets: tuple[Preset, ...] = tuple(PRESETS.values()),
          questions: tuple[Question, ...] = QUESTIONS) -> None:
    """The table's own consistency (a test runs it): unique names, sources listed before the arms that reuse
    them (so the runner's order is a valid schedule), and reuses that really are the same computation."""
    seen: dict[str, Arm] = {}
    for a in arms:
        if a.name in seen:
            raise ValueError(f"arm {a.name}: listed twice")
        if a.scale not in ("", "iters", "rl_steps"):
            raise ValueError(f"arm {a.name}: scale must be '', 'iters' or 'rl_steps', not {a.scale!r}")
        for r in a.reuses:
            src = seen.get(r.source)
            if src is None:
                raise ValueError(f"arm {a.name}: reuses '{r.source}', which is not an arm listed before it")
            for part in r.parts:
                if part not in PARTS:
                    raise ValueError(f"arm {a.name}: unknown part '{part}' (known: {', '.join(PARTS)})")
                if part in (RL_RUN, ITERATION_1) and src.explore != a.explore:
                    raise ValueError(f"arm {a.name}: {part} of '{src.name}', whose explore.py flags differ")
                if part == ITERATION_1 and not (src.is_rloop and a.is_rloop and src.scale == a.scale):
                    raise ValueError(f"arm {a.name}: {part} of '{src.name}' needs two RLoop arms iterating alike")
                if part == VANILLA_EVALS and (src.is_rloop or a.is_rloop):
                    raise ValueError(f"arm {a.name}: {part} of '{src.name}' needs two vanilla-only arms")
        seen[a.name] = a
    for a in arms:
        if a.against and a.against not in seen:
            raise ValueError(f"arm {a.name}: measured against '{a.against}', which is not an arm")
    for p in presets:
        for name in p.arms:
            if name not in seen:
                raise ValueError(f"preset {p.name}: unknown arm '{name}'")
    for q in questions:
        for name in (q.arm, q.against):
            if name not in seen:
                raise ValueError(f"question '{q.ask}': unknown arm '{name}'")
        for m in q.metrics:
            if m not in METRICS:
                raise ValueError(f"question '{q.ask}': unknown metric '{m}' (known: {', '.join(METRICS)})")
