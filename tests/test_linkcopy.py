"""lib/run/linkcopy: a run folder copied with hard links for what is written once (checkpoints, args, event files) and
real copies for the logs a resumed run appends to and truncates; a resumed explore in the copy leaves the source's
every byte as it was."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import explore
from lib.run import linkcopy
from lib.run.cli import UserError
from lib.run.records import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (inode, sha1)} of every file below folder."""
    return {str(f.relative_to(folder)): (f.stat().st_ino, hashlib.sha1(f.read_bytes()).hexdigest())
            for f in sorted(folder.rglob("*")) if f.is_file()}


def test_links_immutable_files_copies_logs_leaves_wandb_out(tmp_path):
    src = tmp_path / "run"
    for rel, text in {"ckpt_000002/model.safetensors": "w", "ckpt_000002/config.json": "{}",
                      "ckpt_000002/resume/state.pt": "s", "args.json": "{}", "tensorboard/events.out.1": "e",
                      "rollouts.jsonl": "r\n", "metrics.jsonl": "m\n", "wandb/rloop-run-id": "abc\n"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    counts = linkcopy.link_copy(src, tmp_path / "copy")
    s, c = snapshot(src), snapshot(tmp_path / "copy")
    assert set(c) == set(s) - {"wandb/rloop-run-id"}  # the copy is another run: its own wandb run
    for rel in c:
        assert c[rel][1] == s[rel][1], rel  # the same bytes
        assert (c[rel][0] == s[rel][0]) == (rel not in linkcopy.APPENDED), rel  # linked unless appended to
    assert counts == {"linked": 5, "copied": 2, "copied_bytes": 4}
    with pytest.raises(UserError, match="exists already"):
        linkcopy.link_copy(src, tmp_path / "copy")
    assert not list(tmp_path.glob(".copy*"))  # no temp folder left behind
    r = subprocess.run([sys.executable, "-m", "lib.run.linkcopy", str(src), str(tmp_path / "c2")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "5 files hard-linked, 2 copied" in r.stdout, r.stderr


def test_resumed_explore_in_a_linked_copy_leaves_the_source_untouched(tiny_model_dir, tmp_path):
    from test_explore import digit_reward, run_args, write_problems

    data = write_problems(tmp_path / "train.jsonl")
    src, dst = tmp_path / "iter1", tmp_path / "vanilla"
    explore.main(run_args(tiny_model_dir, data, src, "--rl-steps", "2", "--save-every", "1", "--bf16"),
                 reward_fn=digit_reward)
    before = snapshot(src)
    linkcopy.link_copy(src, dst)
    assert snapshot(dst)["ckpt_000002/model.safetensors"][0] == before["ckpt_000002/model.safetensors"][0]
    # vanilla goes on from the copy: it truncates and appends its logs, retires (casts to bf16, drops the resume
    # state of) ckpt_000002, writes ckpt_000003 and ckpt_000004
    explore.main(run_args(tiny_model_dir, data, dst, "--rl-steps", "4", "--save-every", "1", "--bf16", "--resume"),
                 reward_fn=digit_reward)
    assert snapshot(src) == before  # every file: same inode, same bytes
    assert [r["step"] for _, r in read_jsonl(dst / "metrics.jsonl")] == [1, 2, 3, 4]
    assert not (dst / "ckpt_000002" / "resume").exists() and (src / "ckpt_000002" / "resume").is_dir()
    assert json.loads((dst / "ckpt_000002" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert os.stat(dst / "ckpt_000001" / "model.safetensors").st_ino == before["ckpt_000001/model.safetensors"][0]
