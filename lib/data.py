"""Prompt sets: load problems from local JSONL / JSON / parquet files or a Hugging Face dataset id.

Two row schemas are accepted as they are:
  DAPO-Math-17k   {"prompt": [{"role": "user", "content": ...}], "reward_model": {"ground_truth": ...},
                   "data_source": ..., "extra_info": {"index": ...}}
  plain           {"id": ..., "problem": ..., "answer": ...}   (raw problems get DAPO's prompt template)
Every problem gets a stable id (extra_info.index, else id, else a hash of its prompt) so that success rates
can be counted per problem across checkpoints, stages and iterations.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.cli import UserError
from lib.records import read_jsonl

# The instruction DAPO-Math-17k wraps every problem in; we wrap raw problems the same way so one reward
# (the last `Answer:` line) scores both worlds.
DAPO_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


@dataclass
class Problem:
    id: str  # stable problem id
    messages: list[dict]  # chat messages (the user turn holds the full instruction)
    ground_truth: str
    data_source: str = ""
    prompt: str = ""  # rendered text the policy sees (chat template applied); filled by render_prompts
    extra: dict = field(default_factory=dict)


def _stable_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def parse_row(row: Any, where: str, template: str = DAPO_TEMPLATE) -> Problem:
    """One dataset row -> Problem. `where` names the file:line (or dataset:row) in errors."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "prompt" in row and "reward_model" in row:  # DAPO / verl schema
        msgs = row["prompt"]
        if isinstance(msgs, str):
            msgs = [{"role": "user", "content": msgs}]
        if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs
        ):
            raise UserError(f"{where}: field 'prompt' should be a list of chat messages with 'content'")
        rm = row["reward_model"]
        gt = rm.get("ground_truth") if isinstance(rm, dict) else None
        if gt is None:
            raise UserError(f"{where}: missing field 'reward_model.ground_truth'")
        extra = row.get("extra_info") or {}
        pid = extra.get("index") if isinstance(extra, dict) else None
        if pid is None:
            pid = row.get("id")
        if pid is None:
            pid = _stable_id(msgs[-1]["content"])
        msgs = [{"role": m.get("role", "user"), "content": m["content"]} for m in msgs]
        return Problem(str(pid), msgs, str(gt), str(row.get("data_source", "")),
                       extra=extra if isinstance(extra, dict) else {})
    # plain schema (common benchmark files use "question" for "problem")
    problem = row.get("problem", row.get("question"))
    if problem is None:
        raise UserError(f"{where}: missing field 'problem' (or a DAPO-style 'prompt' + 'reward_model')")
    if "answer" not in row or row["answer"] is None:
        raise UserError(f"{where}: missing field 'answer'")
    if not isinstance(problem, str):
        raise UserError(f"{where}: field 'problem' should be str, got {type(problem).__name__}")
    pid = row.get("id", row.get("unique_id"))
    pid = str(pid) if pid is not None else _stable_id(problem)
    content = template.format(problem=problem) if template else problem
    return Problem(pid, [{"role": "user", "content": content}], str(row["answer"]),
                   str(row.get("data_source", "")), extra={k: v for k, v in row.items() if k == "level"})


def _rows(spec: str, split: str) -> list[tuple[str, Any]]:
    """(where, row) pairs from a local file or a hub dataset id."""
    path = Path(spec)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.exists():
            raise UserError(f"{spec}: no such file")
        if path.is_dir():
            raise UserError(f"{spec}: is a folder, expected a .jsonl / .json / .parquet file")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq  # comes with `datasets`

            try:
                table = pq.read_table(path)
            except Exception as e:  # noqa: BLE001 - any unreadable parquet is bad input
                raise UserError(f"{spec}: cannot read parquet ({e.__class__.__name__}: {e})") from None
            return [(f"{spec}:row {i}", r) for i, r in enumerate(table.to_pylist())]
        if path.suffix == ".json":
            import json

            try:
                data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark is fine
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{spec}: not a valid JSON file ({e})") from None
            if not isinstance(data, list):
                raise UserError(f"{spec}: expected a JSON list of rows")
            return [(f"{spec}:row {i}", r) for i, r in enumerate(data)]
        return [(f"{spec}:{ln}", r) for ln, r in read_jsonl(path)]
    # Not a local file: a Hugging Face dataset id ("name" or "name:config"). Offline mode fails fast.
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - network / missing dataset / offline: all bad input here
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UserError(f"{spec}: not a local file and could not be loaded as a dataset id ({msg})") from None
    return [(f"{spec}:row {i}", r) for i, r in enumerate(ds)]


def load_problems(spec: str, split: str = "train", template: str = DAPO_TEMPLATE, limit: int = 0) -> list[Problem]:
    """Load a prompt set; duplicate ids are kept once (DAPO-Math-17k repeats each problem many times)."""
    if spec == "toy":
        from lib import toy

        spec = str(toy.data_path("train"))
    seen: dict[str, Problem] = {}
    for where, row in _rows(spec, split):
        p = parse_row(row, where, template)
        seen.setdefault(p.id, p)
        if limit and len(seen) >= limit:
            break
    if not seen:
        raise UserError(f"{spec}: no problems found")
    return list(seen.values())


def render_prompts(problems: list[Problem], tokenizer) -> list[Problem]:
    """Fill `prompt`: the chat template when the tokenizer has one, else the user turn's text as is."""
    for p in problems:
        if getattr(tokenizer, "chat_template", None):
            p.prompt = tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
        else:
            p.prompt = "\n\n".join(m["content"] for m in p.messages)
    return problems


def parse_benchmarks(spec: str) -> dict[str, str]:
    """'NAME=PATH[,NAME=PATH...]' -> {name: path}; 'toy' -> the toy's held-out splits."""
    if spec == "toy":
        from lib import toy

        return {s: str(toy.data_path(s)) for s in ("test", "ood", "probe")}
    out = {}
    for item in spec.split(","):
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise UserError(f"--benchmarks: expected NAME=PATH[,NAME=PATH...], got '{item}'")
        if name.strip() in out:  # the second would silently replace the first in metrics.json
            raise UserError(f"--benchmarks: the name '{name.strip()}' is given twice")
        out[name.strip()] = path.strip()
    return out


# A split suffix: a word, optionally with the hub's slicing syntax ("train", "test[:100]", "train[10%:]").
_SPLIT_RE = re.compile(r"^(?P<path>.*[^/@])@(?P<split>[A-Za-z_][\w.\-]*(\[[\w%:.\-]*\])?)$")


def split_spec(spec: str, default: str) -> tuple[str, str]:
    """'PATH@SPLIT' -> (PATH, SPLIT); anything else -> (spec, default). Hub sets ship different splits
    (AIME 2024 only 'train', MATH-500 only 'test'), so each benchmark may name its own. Only a trailing
    '@word' after the last '/' counts, and never on an existing local file, so '@' elsewhere in a path is
    safe ('runs/v@2/test.jsonl', 'data/set@home.jsonl' when that file exists)."""
    if Path(spec).exists():
        return spec, default
    m = _SPLIT_RE.match(spec)
    if not m or "/" in m["split"]:
        return spec, default
    return m["path"], m["split"]


def benchmark_splits(spec: str, default_split: str) -> dict[str, tuple[str, str]]:
    """--benchmarks 'NAME=PATH[@SPLIT],...' -> {name: (path, split)}; a name without @SPLIT gets
    `default_split` (the stage's --split). 'toy' -> the toy's held-out files."""
    return {name: split_spec(path, default_split) for name, path in parse_benchmarks(spec).items()}
