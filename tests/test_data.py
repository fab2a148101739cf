"""Prompt-set loading: DAPO-Math-17k's schema, the plain schema, bad rows."""
import json

import pytest

from lib.run.cli import UserError
from lib.run.data import (
    DAPO_TEMPLATE,
    Problem,
    drop_long_prompts,
    load_problems,
    parse_benchmarks,
    parse_row,
    render_prompts,
)
from lib.run.records import Trajectory, read_trajectories, trajectory_from_dict, write_jsonl

DAPO_ROW = {
    "data_source": "math_dapo",
    "prompt": [{"role": "user", "content": "Solve ... What is $1+1$?"}],
    "ability": "MATH",
    "reward_model": {"ground_truth": "2", "style": "rule-lighteval/MATH_v2"},
    "extra_info": {"index": "a0b1-uuid"},
}


def test_dapo_schema():
    p = parse_row(DAPO_ROW, "f:1")
    assert (p.id, p.ground_truth, p.data_source) == ("a0b1-uuid", "2", "math_dapo")
    assert p.messages == [{"role": "user", "content": "Solve ... What is $1+1$?"}]


def test_plain_schema_gets_dapo_template_and_stable_id():
    p = parse_row({"problem": "What is 2+3?", "answer": 5}, "f:1")
    assert p.messages[0]["content"] == DAPO_TEMPLATE.format(problem="What is 2+3?")
    assert p.ground_truth == "5"
    assert p.id == parse_row({"problem": "What is 2+3?", "answer": 5}, "f:9").id  # hash of the text
    assert parse_row({"id": 7, "problem": "x", "answer": "1"}, "f:1").id == "7"


@pytest.mark.parametrize("row, msg", [
    ({"problem": "x"}, "f:3: missing field 'answer'"),
    ({"answer": "1"}, "f:3: missing field 'problem'"),
    ({"prompt": [{"role": "user", "content": "x"}], "reward_model": {}},
     "f:3: missing field 'reward_model.ground_truth'"),
    ({"prompt": 5, "reward_model": {"ground_truth": "1"}}, "f:3: field 'prompt' should be a list"),
    ([1, 2], "f:3: expected a JSON object"),
])
def test_bad_rows(row, msg):
    with pytest.raises(UserError) as e:
        parse_row(row, "f:3")
    assert str(e.value).startswith(msg)


def test_load_files_dedup_and_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    other = {"id": 1, "problem": "q", "answer": "a"}
    f.write_text(json.dumps(DAPO_ROW) + "\n" + json.dumps(DAPO_ROW) + "\n\n" + json.dumps(other) + "\n")
    probs = load_problems(str(f))
    assert [p.id for p in probs] == ["a0b1-uuid", "1"]  # DAPO-Math-17k repeats problems: kept once
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(DAPO_ROW) + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        load_problems(str(bad))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty file"):
        load_problems(str(tmp_path / "empty.jsonl"))
    with pytest.raises(UserError, match="no such file"):
        load_problems(str(tmp_path / "missing.jsonl"))
    (tmp_path / "latin.jsonl").write_bytes(b'{"problem": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(UserError, match="latin.jsonl:1: not valid UTF-8"):
        load_problems(str(tmp_path / "latin.jsonl"))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([DAPO_ROW]), tmp_path / "d.parquet")
    assert load_problems(str(tmp_path / "d.parquet"))[0].ground_truth == "2"


def test_hub_id_offline_fails_fast():
    with pytest.raises(UserError, match="could not be loaded as a dataset id"):
        load_problems("nobody/no-such-dataset-xyz")


def test_render_prompts_uses_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    p = render_prompts([parse_row(DAPO_ROW, "f:1")], tok)[0]
    assert p.prompt == "<|im_start|>user\nSolve ... What is $1+1$?<|im_end|>\n<|im_start|>assistant\n"


def test_parse_benchmarks():
    assert parse_benchmarks("a=x.jsonl,b=y.parquet") == {"a": "x.jsonl", "b": "y.parquet"}
    with pytest.raises(UserError, match="--benchmarks"):
        parse_benchmarks("a.jsonl")


def test_trajectory_record_contract(tmp_path):
    t = Trajectory("p1", "prompt", "resp", 1.0, True, pred="2", step=3)
    d = json.loads(t.to_json())
    assert {"problem_id", "prompt", "response", "reward", "acc", "step"} <= set(d)
    assert isinstance(d["reward"], float) and d["acc"] is True and d["step"] == 3
    assert "step" not in json.loads(Trajectory("p", "a", "b", -1.0, False).to_json())  # absent outside RL
    write_jsonl(tmp_path / "t.jsonl", [t])
    assert read_trajectories(tmp_path / "t.jsonl") == [t]


@pytest.mark.parametrize("d, msg", [
    ({"problem_id": "p", "prompt": "a", "response": "b", "reward": 1.0}, "x:4: missing field 'acc'"),
    ({"problem_id": "p", "prompt": "a", "response": "b", "reward": "1", "acc": True}, "x:4: field 'reward' should be"),
    ({"problem_id": "p", "prompt": "a", "response": "b", "reward": 1.0, "acc": 1}, "x:4: field 'acc' should be bool"),
    ({"problem_id": "p", "prompt": "a", "response": "b", "reward": 1.0, "acc": True, "step": "3"}, "x:4: field 'step'"),
])
def test_trajectory_validation(d, msg):
    with pytest.raises(UserError) as e:
        trajectory_from_dict(d, "x:4")
    assert str(e.value).startswith(msg)


# ---------------------------------------------------------------------------------------------------------
# Parquet / hub sets at DAPO-Math-17k's scale: the Arrow path must give what parsing every row gives.


def every_row(path, limit=0):
    """The straightforward loader: every row a dict, every row parsed, the first of each id kept."""
    import pyarrow.parquet as pq

    seen = {}
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        p = parse_row(row, f"{path}:row {i}")
        seen.setdefault(p.id, p)
        if limit and len(seen) >= limit:
            break
    return list(seen.values())


def dapo(i, gt=None, index="keep", id_=None, content=None, source="math_dapo"):
    """A DAPO-schema row for problem i (its index "u<i>"; index=None drops it, id_ sets an `id` column)."""
    return {"data_source": source,
            "prompt": [{"content": content or DAPO_TEMPLATE.format(problem=f"What is {i} + {i}?"), "role": "user"}],
            "ability": "MATH", "reward_model": {"ground_truth": gt or str(2 * i), "style": "rule-lighteval/MATH_v2"},
            "extra_info": {"index": f"u{i}" if index == "keep" else index}, "id": id_}


def write(tmp_path, name, rows, schema=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


@pytest.fixture
def small_batches(monkeypatch):
    """4-row Arrow batches: repeats then fall in other batches than their first row (the cross-batch case)."""
    from lib.run import data

    monkeypatch.setattr(data, "_BATCH_ROWS", 4)


MIXED = [  # contiguous and interleaved repeats, ids from index / id / text hash, a repeat differing in its answer
    dapo(0), dapo(0), dapo(0), dapo(1), dapo(2), dapo(1), dapo(2, gt="99"),
    dapo(3, index=None, id_="7"), dapo(3, index=None, id_="7"),  # id column when index is null
    dapo(4, index=None), dapo(4, index=None, source="other"),  # neither: the last message's hash
    dapo(5, index="7"),  # index "7" = the id "7" above: same problem, kept once (the first)
    dapo(1, content="a different text, same index"), dapo(6), dapo(0), dapo(6), dapo(4, index=None),
]


@pytest.mark.parametrize("limit", [0, 1, 3, 5, 7, 100])
def test_parquet_dedup_equals_every_row(tmp_path, small_batches, limit):
    path = write(tmp_path, "mixed.parquet", MIXED)
    got = load_problems(path, limit=limit)
    assert got == every_row(path, limit)  # same Problems (id, messages, ground_truth, data_source, extra), order
    if not limit:
        assert [p.id for p in got][:4] == ["u0", "u1", "u2", "7"] and len(got) == 6
        assert got[2].ground_truth == "4" and got[3].ground_truth == "6"  # the first row of an id wins


def test_parquet_without_extra_info_int_ids_and_null_structs(tmp_path, small_batches):
    import pyarrow as pa

    rows = [{"prompt": r["prompt"], "reward_model": r["reward_model"], "id": i % 3} for i, r in
            enumerate([dapo(i) for i in range(8)])]
    path = write(tmp_path, "intid.parquet", rows)
    assert [p.id for p in load_problems(path)] == ["0", "1", "2"] and load_problems(path) == every_row(path)
    schema = pa.schema([("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
                        ("reward_model", pa.struct([("ground_truth", pa.string())])),
                        ("extra_info", pa.struct([("index", pa.int64())]))])
    rows = [{"prompt": dapo(i)["prompt"], "reward_model": {"ground_truth": "1"},
             "extra_info": None if i % 4 == 0 else {"index": i % 3}} for i in range(9)]  # null struct: hash id
    path = write(tmp_path, "nullextra.parquet", rows, schema)
    assert load_problems(path) == every_row(path) and len(load_problems(path)) == 6  # 3 indices + 3 hashes


@pytest.mark.parametrize("bad, msg", [
    ({"reward_model": {"ground_truth": None, "style": "x"}}, "missing field 'reward_model.ground_truth'"),
    ({"reward_model": None}, "missing field 'reward_model.ground_truth'"),
    ({"prompt": []}, "field 'prompt' should be a list"),
    ({"prompt": None}, "field 'prompt' should be a list"),
    ({"prompt": [{"content": None, "role": "user"}]}, "field 'prompt' should be a list"),
])
def test_parquet_bad_repeat_still_raises_at_its_row(tmp_path, small_batches, bad, msg):
    rows = [dapo(0), dapo(1), dapo(0), dapo(1), dapo(0), dapo(2), {**dapo(1), **bad}, dapo(3)]  # row 6: a repeat
    path = write(tmp_path, "bad.parquet", rows)
    for p in (lambda: load_problems(path), lambda: every_row(path)):
        with pytest.raises(UserError) as e:
            p()
        assert str(e.value).startswith(f"{path}:row 6: {msg}")
    assert load_problems(path, limit=3) == every_row(path, limit=3)  # the limit is met first: no error


def test_plain_schema_parquet_equals_every_row(tmp_path, small_batches):
    rows = [{"id": i % 4, "problem": f"q{i % 4}", "answer": str(i), "level": "L1"} for i in range(10)]
    path = write(tmp_path, "plain.parquet", rows)
    assert load_problems(path) == every_row(path) and len(load_problems(path)) == 4


def test_hub_dataset_goes_through_arrow(tmp_path, monkeypatch, small_batches):
    datasets = pytest.importorskip("datasets")
    path = write(tmp_path, "mixed.parquet", MIXED)
    ds = datasets.Dataset.from_list(MIXED)  # in memory: nothing written to a cache
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: ds)
    got = load_problems("someone/dapo-like", limit=0)
    assert [p.id for p in got] == [p.id for p in every_row(path)] and len(got) == 6
    assert [p.messages for p in got] == [p.messages for p in every_row(path)]
    bad = datasets.Dataset.from_list([{**r, "reward_model": {"ground_truth": None, "style": "x"}} if i == 5 else r
                                      for i, r in enumerate(MIXED)])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: bad)
    with pytest.raises(UserError, match=r"^someone/dapo-like:row 5: missing field 'reward_model.ground_truth'"):
        load_problems("someone/dapo-like")


@pytest.mark.parametrize("order", ["contiguous", "interleaved"])
def test_generator_writes_dapo_schema(tmp_path, order):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scripts.make_dapo_parquet import write_dapo_parquet

    path = write_dapo_parquet(tmp_path / "d.parquet", prompts=4, repeats=3, seed=1, order=order, chunk_rows=5)
    t = pq.read_table(path)
    assert t.schema == pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("index", pa.string())]))])
    rows = t.to_pylist()
    ids = [r["extra_info"]["index"] for r in rows]
    assert len(rows) == 12 and len(set(ids)) == 4
    assert ids == ([i for i in ids[::3] for _ in range(3)] if order == "contiguous" else ids[:4] * 3)
    r = rows[0]
    assert (r["data_source"], r["ability"]) == ("math_dapo", "MATH")
    assert r["reward_model"]["style"] == "rule-lighteval/MATH_v2" and r["reward_model"]["ground_truth"].isdigit()
    assert r["prompt"][0]["role"] == "user" and r["prompt"][0]["content"].startswith(DAPO_TEMPLATE[:40])
    assert 150 < len(r["prompt"][0]["content"]) - len(DAPO_TEMPLATE) < 800  # a few hundred characters of problem
    probs = load_problems(str(path))
    assert [p.id for p in probs] == list(dict.fromkeys(ids)) and probs == every_row(str(path))


class WordTokenizer:
    """One token per word: prompt lengths a test can count by eye."""

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False  # as the engines tokenize prompts
        return {"input_ids": [t.split() for t in texts]}


def test_drop_long_prompts_counts_them_in_one_line():
    problems = [Problem(f"p{k}", [], "1", prompt=" ".join(["w"] * k)) for k in (1, 2, 3, 4, 5)]
    lines = []
    kept = drop_long_prompts(problems, WordTokenizer(), 3, "train.parquet", log=lines.append)
    assert [p.id for p in kept] == ["p1", "p2", "p3"]  # at most 3 tokens stay, whole: nothing is cut
    assert kept[2].prompt == "w w w"
    assert lines == ["train.parquet: dropped 2 of 5 prompts longer than 3 tokens (--max-prompt-len)"]
    assert drop_long_prompts(problems, WordTokenizer(), 0, "x", log=lines.append) is problems and len(lines) == 1
    many = [Problem(str(i), [], "1", prompt="a b") for i in range(1200)]
    drop_long_prompts(many, WordTokenizer(), 2, "big", log=lines.append)
    assert lines[-1] == "big: dropped 0 of 1,200 prompts longer than 2 tokens (--max-prompt-len)"


def test_drop_long_prompts_leaving_nothing_is_one_line():
    problems = [Problem(f"p{k}", [], "1", prompt=" ".join(["w"] * k)) for k in (4, 6)]
    with pytest.raises(UserError, match=r"^aime24: every one of its 2 prompts is longer than --max-prompt-len 3 "
                                        r"tokens \(the shortest has 4\)$"):
        drop_long_prompts(problems, WordTokenizer(), 3, "aime24", log=print)
