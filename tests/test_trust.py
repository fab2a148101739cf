"""Trust: nothing a model writes, and nothing a downloaded folder holds, can run code here.

Static checks on the code base (its Python syntax trees, not a text grep, so comments and strings don't count):
  - no eval / exec / compile / __import__, no pickle-family modules, no sympy string parsing (it evals);
  - every torch.load passes weights_only=True;
  - trust_remote_code is never set to True in code: only passed through from --trust-remote-code (default off);
  - model weights are written with save_pretrained(safe_serialization=True); torch.save only writes resume
    state (lib/train/checkpoint.py), never weights.
And the folders the stages write: model.safetensors, no pytorch_model.bin, a resume state that loads with
weights_only=True.
"""
import ast
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CODE = sorted([*ROOT.glob("*.py"), *(ROOT / "lib").rglob("*.py")])  # the stages, bench/report and lib/
ALL = CODE + sorted((ROOT / "tests").glob("*.py"))


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            yield node


def name_of(func) -> str:
    """'eval' for eval(...), 'torch.load' for torch.load(...), '.save_pretrained' for x.y.save_pretrained(...)."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name):
            return f"{func.value.id}.{func.attr}"
        return f".{func.attr}"
    return ""


def kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def where(path: Path, node) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def test_the_scan_sees_the_code():
    names = {p.name for p in CODE}
    assert {"explore.py", "harvest.py", "filter.py", "consolidate.py", "evaluate.py", "reward.py", "modeling.py",
            "checkpoint.py"} <= names


def test_no_code_execution_on_text():
    bad = []
    for path in ALL:
        for c in calls(path):
            n = name_of(c.func)
            if n in ("eval", "exec", "compile", "__import__", "sympify", "parse_expr", "sympy.sympify",
                     "pickle.load", "pickle.loads", "marshal.loads", "yaml.load", "os.system"):
                bad.append(f"{where(path, c)}: {n}(...)")
            if n.startswith("subprocess.") and isinstance(kw(c, "shell"), ast.Constant) and kw(c, "shell").value:
                bad.append(f"{where(path, c)}: {n}(shell=True)")
    for path in CODE:  # the library and stages never deserialise with pickle & co. themselves
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{where(path, node)}: import {m}" for m in mods if m.split(".")[0] in
                    ("pickle", "cPickle", "dill", "marshal", "shelve", "joblib")]
    assert not bad, bad


def test_every_torch_load_is_weights_only():
    # (the code that reads what users hand it; a test reading back its own temp file is not in scope)
    found, bad = 0, []
    for path in CODE:
        for c in calls(path):
            if name_of(c.func) == "torch.load":
                found += 1
                v = kw(c, "weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(where(path, c))
    assert found >= 1 and not bad, bad  # (found: lib/train/checkpoint.py's resume state)


def test_trust_remote_code_only_from_the_flag():
    bad = []
    for path in ALL:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                v = kw(node, "trust_remote_code")
                # passed on: a parameter named trust_remote_code, or args.trust_remote_code, or a literal False
                ok = v is None or (isinstance(v, ast.Name) and v.id == "trust_remote_code") or \
                    (isinstance(v, ast.Attribute) and v.attr == "trust_remote_code") or \
                    (isinstance(v, ast.Constant) and v.value is False)
                if not ok:
                    bad.append(f"{where(path, node)}: trust_remote_code={ast.unparse(v)}")
                if node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--trust-remote-code":
                    action, default = kw(node, "action"), kw(node, "default")
                    if not (isinstance(action, ast.Constant) and action.value == "store_true") or default is not None:
                        bad.append(f"{where(path, node)}: --trust-remote-code must be a plain store_true flag")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # parameter defaults: False
                a = node.args
                pos = a.posonlyargs + a.args
                pairs = list(zip(pos[len(pos) - len(a.defaults):], a.defaults)) + \
                    [(x, d) for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
                for arg, d in pairs:
                    if arg.arg == "trust_remote_code" and not (isinstance(d, ast.Constant) and d.value is False):
                        bad.append(f"{where(path, node)}: {node.name}(trust_remote_code={ast.unparse(d)})")
    assert not bad, bad


REQUIRED = {"explore": [], "evaluate": [], "harvest": ["--run-dir", "r", "--out", "h"],
            "consolidate": ["--trajectories", "rft.jsonl", "--out", "c"]}  # each stage that loads a model


@pytest.mark.parametrize("stage", sorted(REQUIRED))
def test_trust_remote_code_flag_is_off_by_default(stage):
    import importlib

    mod = importlib.import_module(stage)
    flags = lambda argv: (lambda a: a.flags if stage == "explore" else vars(a))(mod.get_args(argv))  # noqa: E731
    assert flags(REQUIRED[stage])["trust_remote_code"] is False
    assert flags([*REQUIRED[stage], "--trust-remote-code"])["trust_remote_code"] is True


def test_weights_are_written_as_safetensors_and_state_is_not_pickled_code():
    bad = []
    for path in CODE:
        for c in calls(path):
            n = name_of(c.func)
            receiver = n.split(".")[0] if "." in n and not n.startswith(".") else ""
            if n.endswith(".save_pretrained") and "tok" not in receiver:  # a model, not a tokenizer
                v = kw(c, "safe_serialization")
                if not (isinstance(v, ast.Constant) and v.value is True):
                    bad.append(f"{where(path, c)}: {n} without safe_serialization=True")
            if n == "torch.save" and path.relative_to(ROOT).as_posix() != "lib/train/checkpoint.py":
                bad.append(f"{where(path, c)}: torch.save outside lib/train/checkpoint.py (weights go to safetensors)")
    assert not bad, bad


def test_written_folders_hold_safetensors_only(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.train import checkpoint
    from lib.train.modeling import save_policy

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
    opt.step()  # a real optimizer state: tensors and plain values only
    ck = checkpoint.save(tmp_path / "run", 3, model, tok, {"optimizer": opt.state_dict(), "data_position": 12})
    save_policy(model, tok, tmp_path / "policy")
    for folder in (ck, tmp_path / "policy"):
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert "model.safetensors" in files and "config.json" in files, files
        pickled = {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))}
        assert pickled == ({"resume/state.pt"} if folder == ck else set()), pickled
    state = torch.load(ck / "resume" / "state.pt", map_location="cpu", weights_only=True)  # no code inside
    assert state["step"] == 3 and state["data_position"] == 12 and state["optimizer"]["state"]
