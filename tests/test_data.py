"""Prompt-set loading: DAPO-Math-17k's schema, the plain schema, bad rows."""
import json

import pytest

from lib.cli import UserError
from lib.data import DAPO_TEMPLATE, load_problems, parse_benchmarks, parse_row, render_prompts
from lib.records import Trajectory, read_trajectories, trajectory_from_dict, write_jsonl

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
    ({"prompt": [{"role": "user", "content": "x"}], "reward_model": {}}, "f:3: missing field 'reward_model.ground_truth'"),
    ({"prompt": 5, "reward_model": {"ground_truth": "1"}}, "f:3: field 'prompt' should be a list"),
    ([1, 2], "f:3: expected a JSON object"),
])
def test_bad_rows(row, msg):
    with pytest.raises(UserError) as e:
        parse_row(row, "f:3")
    assert str(e.value).startswith(msg)


def test_load_files_dedup_and_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(DAPO_ROW) + "\n" + json.dumps(DAPO_ROW) + "\n\n" + json.dumps({"id": 1, "problem": "q", "answer": "a"}) + "\n")
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
