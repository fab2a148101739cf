"""The docs cannot rot: every command in README.md and docs/*.md is checked against the code it names.

  * every `python <script>.py ...` / `torchrun ... <script>.py ...` line: the script exists and each --flag is one of
    its `--help`'s;
  * every `VAR=... bash loop.sh | lab.sh | recipes/...` line: each VAR is in that script's `--help` (other scripts:
    named in the script);
  * every repository path a command or a link names exists, and every run folder a command reads (runs/...) is
    written by an earlier command of the same page (its --out or OUT), or is a stage's default output folder;
  * the blocks marked `<!-- toy -->` run, in order, at a tiny size (flags appended: the last one wins) in a temporary
    folder, on a toy cache whose base model and data are the tests' memo world.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
PYTHONS = {"python", "python3", ".venv/bin/python", ".venv-vllm/bin/python", "$PY", "$PYTHON"}
SEPARATORS = {"&&", "&", ";", "||", "|"}
# variables any command may set (the platform's, not a script's)
COMMON_VARS = {"PATH", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "CUDA_VISIBLE_DEVICES", "WANDB_PROJECT", "WANDB_MODE", "VLLM_CPU_KVCACHE_SPACE", "RLOOP_TOY_DIR"}
HELP_SCRIPTS = ("loop.sh", "lab.sh", "recipes/qwen2.5-math-7b-dapo.sh")
# the folders a stage writes when not told otherwise (a command may read them without an earlier --out)
DEFAULT_OUTS = ("runs/loop", "runs/lab", "runs/lab-horizon", "runs/bench", "runs/toy", "runs/explore", "runs/eval",
                "runs/rehearse", "runs/vllm_check", "runs/rollout_gap", "runs/qwen2.5-math-7b-dapo")
READS = ("--model", "--run-dir", "--trajectories", "--config", "--data")


def blocks(path: Path):
    """(runnable on the toy, [command lines]) of each ```bash block; continuation lines joined."""
    lines, out, i = path.read_text(encoding="utf-8").splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            before = [x for x in lines[:i] if x.strip()]
            toy = bool(before) and before[-1].strip() == "<!-- toy -->"
            body, i = [], i + 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            joined, cur = [], ""
            for line in body:
                cur += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
                if not line.rstrip().endswith("\\"):
                    joined.append(cur)
                    cur = ""
            out.append((toy, [j for j in joined if j.strip()]))
        i += 1
    return out


def commands(line: str) -> list[list[str]]:
    toks = shlex.split(line, comments=True)
    cmds, cur = [], []
    for t in toks:
        if t in SEPARATORS:
            cmds.append(cur)
            cur = []
        else:
            cur.append(t)
    return [c for c in cmds + [cur] if c]


def parse(cmd: list[str]) -> dict | None:
    """{'vars': {...}, 'script': path, 'args': [...]} of a command that runs a repo script; None for others."""
    cmd = list(cmd)
    if cmd and cmd[0] == "env":
        cmd = cmd[1:]
    env = {}
    while cmd and re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]):
        k, _, v = cmd.pop(0).partition("=")
        env[k] = v
    if not cmd:
        return None
    prog = cmd[0]
    if prog == "bash" and len(cmd) > 1:
        return {"vars": env, "script": cmd[1], "args": cmd[2:], "kind": "bash"}
    if prog in PYTHONS or prog == "torchrun":
        rest = cmd[1:]
        if prog in PYTHONS and rest[:2] == ["-m", "pytest"]:
            return {"vars": env, "script": None, "args": rest[2:], "kind": "pytest"}
        if prog in PYTHONS and rest[:1] == ["-m"] and rest[1:2] != ["torch.distributed.run"]:
            if not rest[1].startswith("lib."):
                return None  # (python -m venv, pip, ...)
            return {"vars": env, "script": rest[1].replace(".", "/") + ".py", "args": rest[2:], "kind": "module"}
        script = next((t for t in rest if t.endswith(".py")), None)
        if script is None:
            return None
        return {"vars": env, "script": script, "args": rest[rest.index(script) + 1:], "kind": "python"}
    return None


def all_commands():
    for doc in DOCS:
        for toy, lines in blocks(doc):
            for line in lines:
                for cmd in commands(line):
                    yield doc, toy, line, cmd


@cache
def help_text(script: str) -> str:
    argv = ["bash", script, "--help"] if script.endswith(".sh") else [sys.executable, script, "--help"]
    r = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(argv)}: exit {r.returncode}\n{r.stderr[-2000:]}"
    return r.stdout


def test_the_pages_have_commands():
    found = [c for c in all_commands()]
    assert len(found) > 40 and any(toy for _, toy, _, _ in found)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_flag_variable_and_path_exists(doc):
    problems = []
    produced = set(DEFAULT_OUTS)
    for _, lines in blocks(doc):
        for line in lines:
            for cmd in commands(line):
                p = parse(cmd)
                if p is None:
                    continue
                where = f"{doc.name}: {line.strip()[:100]}"
                for k, v in p["vars"].items():
                    if k == "OUT":
                        produced.add(v.rstrip("/"))
                script = p["script"]
                if p["kind"] == "pytest":
                    problems += [f"{where}: {a} missing" for a in p["args"]
                                 if a.startswith("tests/") and not (ROOT / a.split("::")[0]).exists()]
                    continue
                if not (ROOT / script).exists():
                    problems.append(f"{where}: no such script {script}")
                    continue
                args = p["args"]
                if p["kind"] == "python":
                    have = set(re.findall(r"--[A-Za-z0-9][-A-Za-z0-9_]*", help_text(script)))
                    for a in args:
                        flag = a.split("=", 1)[0]
                        if flag.startswith("--") and flag not in have:
                            problems.append(f"{where}: {script} has no {flag}")
                if p["kind"] == "bash":
                    text = help_text(script) if script in HELP_SCRIPTS else (ROOT / script).read_text()
                    for k in p["vars"]:
                        if k not in COMMON_VARS and not re.search(rf"\b{k}\b", text):
                            problems.append(f"{where}: {script} does not read {k}")
                # the run folders it reads exist by then; its --out is written
                for i, a in enumerate(args):
                    prev = args[i - 1] if i else ""
                    if prev == "--out":
                        produced.add(a.rstrip("/"))
                    elif a.startswith("runs/") and (prev in READS or not prev.startswith("-")):
                        v = a.rstrip("/")
                        if not any(v == q or v.startswith(q + "/") for q in produced):
                            problems.append(f"{where}: reads {a}, which no earlier command writes")
                    elif re.match(r"^(scripts|recipes|docs|lib|tests)/", a) and not (ROOT / a.split(":")[0]).exists():
                        problems.append(f"{where}: no such path {a}")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
        if not re.match(r"^[a-z]+://", target) and not (doc.parent / target).exists():
            problems.append(f"{doc.name}: the link {target} leads nowhere")
    assert not problems, "\n".join(problems)


# --- the toy blocks, run at a tiny size ---------------------------------------------------------------------
TINY = {
    "explore.py": "--prompts-per-step 4 --n-samples 4 --mini-batch 2 --micro-batch 16 --max-new-tokens 24 "
                  "--overlong-buffer 4 --max-gen-batches 2 --lr 1e-3 --warmup-steps 0 --backend hf",
    "harvest.py": "",
    "harvest.py --n-samples": "--limit 4 --max-new-tokens 24 --backend hf",
    "filter.py": "--threshold 1.0",
    "consolidate.py": "--batch-size 8 --epochs 1",
    "evaluate.py": "--n-samples 2 --limit 4 --max-new-tokens 24 --backend hf",
}


@pytest.fixture(scope="module")
def memo_toy_cache(memo_model_dir, tmp_path_factory) -> Path:
    """A toy cache (RLOOP_TOY_DIR) whose base is the memo model and whose every split is the memo problems, in the
    toy's own schema (DAPO-Math-17k's: the prompt as the model was trained on it, no instruction added)."""
    from conftest import MEMO_PROBLEMS

    from lib.worlds import toy

    root = tmp_path_factory.mktemp("doc_toy")
    d = root / f"v{toy.TOY_VERSION}-seed0"
    (d / "data").mkdir(parents=True)
    rows = "".join(json.dumps({"prompt": [{"role": "user", "content": q}], "reward_model": {"ground_truth": str(a)},
                               "extra_info": {"index": f"m{i}"}}) + "\n" for i, (q, a) in enumerate(MEMO_PROBLEMS))
    for split in toy.SPLITS:
        (d / "data" / f"{split}.jsonl").write_text(rows)
    (d / "data" / "DONE").write_text("ok\n")
    shutil.copytree(memo_model_dir, d / "base")
    return root


TOY_BLOCKS = [(doc, i) for doc in DOCS for i, (toy, _) in enumerate(blocks(doc)) if toy]


@pytest.mark.parametrize("doc, index", TOY_BLOCKS, ids=lambda x: x.name if isinstance(x, Path) else str(x))
def test_toy_blocks_run(doc, index, memo_toy_cache, tmp_path):
    env = {**ENV, "RLOOP_TOY_DIR": str(memo_toy_cache)}
    for line in blocks(doc)[index][1]:
        for cmd in commands(line):
            p = parse(cmd)
            assert p is not None and p["kind"] == "python", f"a toy block runs stage scripts only: {line}"
            key = p["script"] + (" --n-samples" if p["script"] == "harvest.py" and "--n-samples" in p["args"] else "")
            argv = [sys.executable, str(ROOT / p["script"]), *p["args"], *TINY.get(key, "").split()]
            r = subprocess.run(argv, cwd=tmp_path, env={**env, **p["vars"]}, capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 0, f"{doc.name}: {line}\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    # what the block wrote is what docs/outputs.md says a finished stage leaves
    done = sorted(tmp_path.rglob("done.json"))
    assert done and all(json.loads(d.read_text())["stage"] for d in done)


def test_the_readmes_headline_figures_name_the_command_that_measures_them():
    """The README's Measured rows that scripts/headline.py prints: each present, with headline.py's command for it
    (re-run `python scripts/headline.py` and paste its rows to update them)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from headline import HEADLINES

    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4:
            rows[cells[0]] = cells
    for what, (command, _) in HEADLINES.items():
        assert what in rows, f"README's Measured table has no row {what!r}"
        assert rows[what][2] == f"`{command}`", (what, rows[what][2])
        assert re.fullmatch(r"[0-9a-f]{7,}", rows[what][3]), (what, rows[what][3])
