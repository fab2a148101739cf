"""One name per concept across the stages (docs/stages.md): each flag has one spelling, other spellings and
abbreviations are refused, and every name survives torchrun (its own parser reads an abbreviation of its options,
e.g. --n, anywhere in the command line)."""
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
from lib.run import cli

STAGES = {"explore": explore, "harvest": harvest, "filter": filter_stage, "consolidate": consolidate,
          "evaluate": evaluate}
# spellings that are no flag of these stages: argparse refuses each (exit code 2), abbreviations included
REFUSED = {
    "harvest": ["--run", "--steps", "--resample", "--n"],
    "filter": ["--in", "--thresh"],
    "consolidate": ["--data", "--steps", "--max-len", "--warmup", "--n"],
    "evaluate": ["--n", "--n-responses", "--eval", "--eval-n", "--steps"],
    "explore": ["--eval-n", "--eval-data", "--steps", "--n", "--n-responses", "--max-len", "--warmup"],
}
REQUIRED = {"harvest": ["--run-dir", "r", "--out", "o"], "filter": ["--trajectories", "t", "--out", "o"],
            "consolidate": ["--trajectories", "t", "--out", "o"]}


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
def test_every_flag_survives_torchrun(stage):
    tr = get_args_parser()
    every = [x for spellings in options(STAGES[stage]) for x in spellings
             if x == spellings[0] or x == "--no-" + spellings[0][2:]]
    claimed = [c for c in every if torchrun_claims(tr, c)]
    assert every and not claimed, f"{stage}: torchrun reads {claimed} as its own"
    assert torchrun_claims(tr, "--n") and torchrun_claims(tr, "--run")  # (the check can fail: these two are torchrun's)


@pytest.mark.parametrize("stage", ["consolidate", "evaluate", "filter", "harvest"])
def test_one_spelling_per_flag(stage):
    """A flag's one spelling, or a boolean's --x / --no-x pair: no alias in --help."""
    for spellings in options(STAGES[stage]):
        assert len(spellings) == 1 or spellings == [spellings[0], "--no-" + spellings[0][2:]], spellings


@pytest.mark.parametrize("stage, flag", [(s, f) for s, flags in REFUSED.items() for f in flags])
def test_other_spellings_are_refused(stage, flag, capsys):
    with pytest.raises(SystemExit) as e:
        STAGES[stage].get_args([*REQUIRED.get(stage, []), flag, "1"])
    assert e.value.code == 2 and f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_one_name_per_concept_across_stages():
    names = {stage: {s[0] for s in options(m)} for stage, m in STAGES.items()}
    for flag in ("--n-samples", "--max-model-len", "--max-new-tokens", "--out", "--seed"):
        assert all(flag in names[s] for s in ("explore", "harvest", "evaluate")), flag
    assert "--warmup-steps" in names["explore"] and "--warmup-steps" in names["consolidate"]
    assert "--max-model-len" in names["consolidate"] and "--trajectories" in names["filter"] | names["consolidate"]
    assert {"--rl-steps"} <= names["explore"] and {"--sft-steps"} <= names["consolidate"]
    assert {"--select-steps", "--run-dir"} <= names["harvest"]


def test_harvest_out_is_always_a_folder(tmp_path):
    (tmp_path / "h.jsonl").write_text("")
    with pytest.raises(cli.UserError, match="exists and is not a folder"):
        harvest.get_args(["--run-dir", "r", "--out", str(tmp_path / "h.jsonl")])
