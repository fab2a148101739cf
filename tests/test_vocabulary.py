"""One name per concept across the stages (docs/outputs.md), old spellings kept as aliases, and canonical names that
survive torchrun (its own parser reads an abbreviation of its options, e.g. --n, anywhere in the command line)."""
import contextlib
import io
import re

import pytest
from torch.distributed.run import get_args_parser

import consolidate
import evaluate
import explore
import filter as filter_stage
import harvest

STAGES = {"explore": explore, "harvest": harvest, "filter": filter_stage, "consolidate": consolidate,
          "evaluate": evaluate}
# earlier spellings: each still works, none is a stage's canonical name
OLD = {"--n", "--n-responses", "--resample", "--steps", "--in", "--max-len", "--warmup", "--eval-n", "--eval-data",
       "--run"}


def options(module) -> list[list[str]]:
    """Each flag of a stage's --help as its spellings, canonical first."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        module.get_args(["--help"])
    flags = []
    for line in buf.getvalue().splitlines():
        if re.match(r"^  -", line):
            flags.append([word.split()[0] for word in line.strip().split(", ") if word.startswith("--")])
    return [f for f in flags if f and f[0] != "--help"]


def torchrun_claims(parser, option: str) -> bool:
    """Whether torchrun's parser takes `option` as (an abbreviation of) one of its own flags."""
    try:
        got = parser._parse_optional(option)
    except SystemExit:  # ambiguous: torchrun stops
        return True
    tuples = got if isinstance(got, list) else [got]  # (a list of tuples from Python 3.12)
    return any(t is not None and t[0] is not None for t in tuples)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_canonical_names_survive_torchrun_and_are_not_old_spellings(stage):
    tr = get_args_parser()
    canonical = [spellings[0] for spellings in options(STAGES[stage])]
    assert canonical and not OLD & set(canonical), OLD & set(canonical)
    every = [x for spellings in options(STAGES[stage]) for x in spellings if x not in OLD]  # (--no-bf16 too)
    claimed = [c for c in every if torchrun_claims(tr, c)]
    assert not claimed, f"{stage}: torchrun reads {claimed} as its own"
    assert torchrun_claims(tr, "--n") and torchrun_claims(tr, "--run")  # (the check can fail: these two are torchrun's)


def test_one_name_per_concept_across_stages():
    names = {stage: {s[0] for s in options(m)} for stage, m in STAGES.items()}
    for flag in ("--n-samples", "--max-model-len", "--max-new-tokens", "--out", "--seed"):
        assert all(flag in names[s] for s in ("explore", "harvest", "evaluate")), flag
    assert "--warmup-steps" in names["explore"] and "--warmup-steps" in names["consolidate"]
    assert "--max-model-len" in names["consolidate"] and "--trajectories" in names["filter"] | names["consolidate"]
    assert {"--rl-steps"} <= names["explore"] and {"--sft-steps"} <= names["consolidate"]
    assert {"--select-steps", "--run-dir"} <= names["harvest"]


def test_old_spellings_still_work(tmp_path):
    rft = tmp_path / "rft.jsonl"
    rft.write_text("")
    old = consolidate.get_args(["--data", str(rft), "--out", str(tmp_path / "c"), "--steps", "7", "--max-len", "64",
                                "--warmup", "2"])
    new = consolidate.get_args(["--trajectories", str(tmp_path), "--out", str(tmp_path / "c"), "--sft-steps", "7",
                                "--max-model-len", "64", "--warmup-steps", "2"])
    assert vars(old) == vars(new) and new.trajectories == str(rft)  # (a folder: its rft.jsonl)
    h_old = harvest.get_args(["--run", "r", "--out", str(tmp_path / "h"), "--steps", "2-3", "--resample", "4"])
    h_new = harvest.get_args(["--run-dir", "r", "--out", str(tmp_path / "h"), "--select-steps", "2-3",
                              "--n-samples", "4"])
    assert vars(h_old) == vars(h_new)
    assert filter_stage.get_args(["--in", str(rft), "--out", str(tmp_path / "f")]).trajectories == str(rft)
    assert evaluate.get_args(["--n", "3"]).n_samples == evaluate.get_args(["--n-samples", "3"]).n_samples == 3
    e_old = explore.get_args(["--steps", "3", "--n-responses", "2", "--eval-n", "2", "--eval-data", "toy"])
    e_new = explore.get_args(["--rl-steps", "3", "--n-samples", "2", "--eval-n-samples", "2", "--eval-benchmarks", "toy"])
    assert (e_old.rl_steps, e_old.n_samples, e_old.eval_n_samples) == (e_new.rl_steps, e_new.n_samples, 2)
