"""Prompt sets: load problems from local JSONL / JSON / parquet files or a Hugging Face dataset id.

Two row schemas are accepted as they are:
  DAPO-Math-17k   {"prompt": [{"role": "user", "content": ...}], "reward_model": {"ground_truth": ...},
                   "data_source": ..., "extra_info": {"index": ...}}
  plain           {"id": ..., "problem": ..., "answer": ...}   (raw problems get DAPO's prompt template)
Every problem gets a stable id (extra_info.index, else id, else a hash of its prompt) so that success rates
can be counted per problem across checkpoints, stages and iterations. Parquet files and hub datasets are read
in Arrow, and only the first row of each id becomes a Python object (DAPO-Math-17k: 17,917 of 1,791,700 rows).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from lib.run.cli import UserError
from lib.run.records import read_jsonl

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


# The only fields parse_row reads: a parquet file or a hub dataset is read with these columns and no others
# (DAPO-Math-17k's `ability`, for one, is never decoded).
_FIELDS = ("data_source", "prompt", "reward_model", "extra_info", "id", "problem", "question", "answer",
           "unique_id", "level")
_BATCH_ROWS = 65_536  # rows decoded at a time from a parquet file / hub dataset (~45 MB of DAPO prompt text)


def _keyable(t) -> bool:
    """Arrow types whose equal values give equal str() in Python (so grouping in Arrow = grouping by id)."""
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)


def _candidates(batch) -> tuple[list[int], list[tuple | None]]:
    """Which rows of an Arrow record batch parse_row must see, found in Arrow before any row is a Python object.

    DAPO-Math-17k's schema (prompt: list<struct<content: string, ...>>, reward_model: struct<ground_truth>) repeats
    every problem ~100 times. A row's id is decided by the key (extra_info.index, else id, else the last message's
    text): rows with equal keys get equal ids, so only the first row of each key can add a problem. Returns
    (positions, keys), ascending: the first row of each key in this batch (with its key as a Python tuple), plus
    every row parse_row would reject (key None: a null / empty prompt, a null message or content, a null
    reward_model or ground_truth), so bad rows raise exactly as when every row is parsed. Any other schema (the
    plain one, a string prompt, float ids): every row, key None."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    everything = (list(range(n)), [None] * n)
    schema = batch.schema
    if "prompt" not in schema.names or "reward_model" not in schema.names:
        return everything
    pt, rt = schema.field("prompt").type, schema.field("reward_model").type
    if not (pa.types.is_list(pt) or pa.types.is_large_list(pt)) or not pa.types.is_struct(pt.value_type) \
            or pt.value_type.get_field_index("content") < 0 \
            or not (pa.types.is_string(pt.value_type.field("content").type)
                    or pa.types.is_large_string(pt.value_type.field("content").type)) \
            or not pa.types.is_struct(rt) or rt.get_field_index("ground_truth") < 0:
        return everything
    index = ids = None  # key parts; None = the column is absent (every row's part is null)
    if "extra_info" in schema.names and pa.types.is_struct(et := schema.field("extra_info").type) \
            and et.get_field_index("index") >= 0:
        if not _keyable(et.field("index").type):
            return everything
        index = pc.struct_field(batch.column("extra_info"), "index")  # null where extra_info is null
    if "id" in schema.names:
        if not _keyable(schema.field("id").type):
            return everything
        ids = batch.column("id")

    prompt = batch.column("prompt")
    offsets = np.asarray(prompt.offsets)  # [n + 1], absolute positions in prompt.values
    messages = prompt.values  # every message of the batch's rows (and maybe more: a sliced batch)
    msg_bad = np.concatenate([[0], np.cumsum(
        pc.is_null(messages).to_numpy(zero_copy_only=False)
         | pc.is_null(messages.field("content")).to_numpy(zero_copy_only=False))])
    gt = pc.struct_field(batch.column("reward_model"), "ground_truth")  # null where reward_model is null
    bad = (pc.is_null(prompt).to_numpy(zero_copy_only=False)
           | (offsets[1:] == offsets[:-1])  # no messages
           | (msg_bad[offsets[1:]] > msg_bad[offsets[:-1]])  # a null message or content
           | pc.is_null(gt).to_numpy(zero_copy_only=False))  # [n]
    good = np.flatnonzero(~bad)
    cols: dict[str, Any] = {"pos": pa.array(good)}
    no_id = np.ones(len(good), dtype=bool)  # [G] rows whose id falls through to the text hash
    for name, col in (("index", index), ("id", ids)):
        if col is not None:
            col = col.take(pa.array(good))
            if name == "id" and index is not None:  # id only counts where index is null
                col = pc.if_else(pa.array(no_id), col, pa.nulls(len(good), col.type))
            cols[name] = col
            no_id &= pc.is_null(col).to_numpy(zero_copy_only=False)
    if no_id.any():  # the last message's text decides the id
        text = messages.field("content").take(pa.array(offsets[1:][good] - 1))
        cols["text"] = pc.if_else(pa.array(no_id), text, pa.nulls(len(good), text.type))
    pos = np.flatnonzero(bad)  # rows parse_row rejects: all of them parsed (and raising), no key
    found: list[tuple | None] = [None] * len(pos)
    if len(good):
        firsts = pa.table(cols).group_by([k for k in ("index", "id", "text") if k in cols],
                                         use_threads=False).aggregate([("pos", "min")])
        pos = np.concatenate([pos, firsts.column("pos_min").to_numpy()])
        found += zip(*(firsts.column(k).to_pylist() if k in cols else repeat(None, firsts.num_rows)
                       for k in ("index", "id", "text")))
    order = np.argsort(pos, kind="stable")
    return pos[order].tolist(), [found[i] for i in order]


def _arrow_rows(spec: str, batches: Iterator) -> Iterator[tuple[str, Any]]:
    """(where, row) for the rows of Arrow record batches that can add a problem or raise (see _candidates),
    in file order; a key already met in an earlier batch is skipped. Only these rows become Python dicts."""
    seen: set[tuple] = set()
    start = 0
    for batch in batches:
        keep = []
        for pos, key in zip(*_candidates(batch)):
            if key is None or key not in seen:
                keep.append(pos)
                if key is not None:
                    seen.add(key)
        for pos, row in zip(keep, batch.take(keep).to_pylist() if keep else []):
            yield f"{spec}:row {start + pos}", row
        start += batch.num_rows


def _parquet_batches(spec: str, path: Path) -> Iterator:
    import pyarrow.parquet as pq  # comes with `datasets`

    def bad(e: Exception) -> UserError:
        return UserError(f"{spec}: cannot read parquet ({e.__class__.__name__}: {e})")

    try:
        f = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds whole column chunks: +250 MB
        it = f.iter_batches(batch_size=_BATCH_ROWS, columns=[c for c in f.schema_arrow.names if c in _FIELDS])
    except Exception as e:  # noqa: BLE001 - any unreadable parquet is bad input
        raise bad(e) from None
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - a corrupt page further in
            raise bad(e) from None
        yield batch


def _rows(spec: str, split: str) -> Iterator[tuple[str, Any]]:
    """(where, row) pairs from a local file or a hub dataset id. Parquet files and hub datasets are read in
    Arrow, in batches, with only the columns parse_row reads, and yield only the rows that can add a problem or
    raise (_candidates): at DAPO-Math-17k's size, 17,917 of 1,791,700 rows become Python objects."""
    path = Path(spec)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.exists():
            raise UserError(f"{spec}: no such file")
        if path.is_dir():
            raise UserError(f"{spec}: is a folder, expected a .jsonl / .json / .parquet file")
        if path.suffix == ".parquet":
            yield from _arrow_rows(spec, _parquet_batches(spec, path))
            return
        if path.suffix == ".json":
            import json

            try:
                data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark is fine
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{spec}: not a valid JSON file ({e})") from None
            if not isinstance(data, list):
                raise UserError(f"{spec}: expected a JSON list of rows")
            yield from ((f"{spec}:row {i}", r) for i, r in enumerate(data))
            return
        yield from ((f"{spec}:{ln}", r) for ln, r in read_jsonl(path))
        return
    # Not a local file: a Hugging Face dataset id ("name" or "name:config"). Offline mode fails fast.
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - network / missing dataset / offline: all bad input here
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UserError(f"{spec}: not a local file and could not be loaded as a dataset id ({msg})") from None
    # a Dataset is Arrow underneath (memory-mapped): the same path as a parquet file, no per-row dicts
    ds = ds.select_columns([c for c in ds.column_names if c in _FIELDS]).with_format("arrow")
    yield from _arrow_rows(spec, (b for t in ds.iter(batch_size=_BATCH_ROWS) for b in t.to_batches()))


def load_problems(spec: str, split: str = "train", template: str = DAPO_TEMPLATE, limit: int = 0) -> list[Problem]:
    """Load a prompt set; duplicate ids are kept once (DAPO-Math-17k repeats each problem many times), the first
    row of each id wins, in file order; `limit` stops after that many distinct problems.

    The result, and the first bad row's error, are those of parsing every row in order; parquet files and hub
    datasets get there without parsing repeats (see _rows): DAPO-Math-17k's 1.8M rows load in seconds, under a
    gigabyte. A bad row is still reported as `file:row i` even where it repeats an earlier problem."""
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


def prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    """Tokens of each rendered prompt, as the engines tokenize them (no special tokens added)."""
    return [len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []


def drop_long_prompts(problems: list[Problem], tokenizer, max_prompt_len: int, name: str,
                      log=print) -> list[Problem]:
    """The problems whose rendered prompt (render_prompts first) holds at most max_prompt_len tokens; 0 = all.

    As verl's filter_overlong_prompts: a longer prompt is dropped at load time, never cut (a truncated problem
    statement is another problem, with the same ground truth). One line counts what went; a set left empty is a
    one-line error."""
    if not max_prompt_len:
        return problems
    lengths = prompt_lengths(tokenizer, [p.prompt for p in problems])
    kept = [p for p, n in zip(problems, lengths) if n <= max_prompt_len]
    if not kept:
        raise UserError(f"{name}: every one of its {len(problems):,} prompts is longer than --max-prompt-len "
                        f"{max_prompt_len} tokens (the shortest has {min(lengths, default=0):,})")
    log(f"{name}: dropped {len(problems) - len(kept):,} of {len(problems):,} prompts longer than {max_prompt_len} "
        f"tokens (--max-prompt-len)")
    return kept


def parse_benchmarks(spec: str) -> dict[str, str]:
    """'NAME=PATH[,NAME=PATH...]' -> {name: path} (a stage turns 'toy' into this form: lib/worlds/toy.resolve)."""
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
    `default_split` (the stage's --split)."""
    return {name: split_spec(path, default_split) for name, path in parse_benchmarks(spec).items()}


class PromptStream:
    """The RL prompt order: epoch e is a permutation of the problems seeded by (seed, e); the position is one
    integer (saved in checkpoints), so a resumed run draws what an uninterrupted one would have."""

    def __init__(self, problems: list[Problem], seed: int, position: int = 0):
        self.problems, self.seed, self.position = problems, seed, position
        self._epoch, self._order = -1, []

    def draw(self, k: int) -> list[Problem]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, len(self.problems))
            if epoch != self._epoch:
                self._order = list(range(len(self.problems)))
                random.Random(f"{self.seed}-epoch-{epoch}").shuffle(self._order)
                self._epoch = epoch
            out.append(self.problems[self._order[i]])
            self.position += 1
        return out
