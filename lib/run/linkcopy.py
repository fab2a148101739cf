"""Copy an explore.py run folder without copying what never changes: vanilla RL starts as a copy of iteration 1's
RL run (loop.sh), and at full scale that folder holds a 30 GB checkpoint and its 61 GB resume state.

A run folder's files are of three kinds, and the copy treats each its own way:
  written once   checkpoint folders (weights, config, tokenizer, resume state), args.json, TensorBoard event files:
                 replaced whole by a rename (lib/run/cli.replace_dir, atomic writes,
                 lib/train/checkpoint.cast_weights) or deleted, never changed in place -> hard links: no byte is
                 copied, and a run working in the copy replaces or unlinks its own names, never the source's files
  appended       APPENDED (rollouts.jsonl, metrics.jsonl): a resumed run appends to them and cuts them back to its
                 checkpoint (lib/train/checkpoint.restore_logs) -> real copies (a copy-on-write clone where the
                 filesystem has one: XFS, btrfs)
  left out       LEFT_OUT (wandb/): the copy is another run; wandb's id file there would resume the source's run
A file that cannot be hard-linked (another filesystem) is copied. The copy is written under a temp name and
renamed into place: a kill leaves no half copy.

    python -m lib.run.linkcopy runs/loop/iter1/explore runs/loop/vanilla
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from lib.run.cli import UserError

APPENDED = ("rollouts.jsonl", "metrics.jsonl")  # names, at any depth, a resumed run appends to or truncates
LEFT_OUT = ("wandb",)  # top-level entries the copy does without
FICLONE = 0x40049409  # Linux ioctl: a copy-on-write clone of a whole file


def clone_or_copy(src: Path, dst: Path) -> None:
    """dst becomes an independent copy of src: a copy-on-write clone where the filesystem supports it (no bytes
    written until one side changes), else a byte copy."""
    try:
        import fcntl

        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    except (ImportError, OSError):
        shutil.copyfile(src, dst)
    shutil.copystat(src, dst)


def link_copy(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, int]:
    """Copy the run folder src to dst (which must not exist): hard links for the files written once, real copies
    for APPENDED, nothing of LEFT_OUT. Returns {"linked": files, "copied": files, "copied_bytes": bytes}."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise UserError(f"{src}: no such folder (expected an explore.py run folder)")
    if dst.exists():
        raise UserError(f"{dst}: exists already; the copy goes to a new folder")
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {"linked": 0, "copied": 0, "copied_bytes": 0}
    try:
        for root, dirs, files in os.walk(src):
            here = Path(root)
            rel = here.relative_to(src)
            if rel == Path("."):
                dirs[:] = [d for d in dirs if d not in LEFT_OUT]
                files = [f for f in files if f not in LEFT_OUT]
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            for d in dirs:  # (os.walk lists links to folders as folders and does not follow them)
                if (here / d).is_symlink():
                    os.symlink(os.readlink(here / d), tmp / rel / d)
            dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
            for name in files:
                s, d = here / name, tmp / rel / name
                if s.is_symlink():
                    os.symlink(os.readlink(s), d)
                    continue
                if name not in APPENDED:
                    try:
                        os.link(s, d)
                        counts["linked"] += 1
                        continue
                    except OSError:  # another filesystem, or one without hard links: a copy
                        pass
                clone_or_copy(s, d)
                counts["copied"] += 1
                counts["copied_bytes"] += s.stat().st_size
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.run.linkcopy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the run folder to copy (explore.py's --out)")
    p.add_argument("dst", help="the new folder (must not exist)")
    args = p.parse_args(argv)
    c = link_copy(args.src, args.dst)
    print(f"{args.dst}: a copy of {args.src}: {c['linked']} files hard-linked, {c['copied']} copied "
          f"({c['copied_bytes'] / 1e9:.3f} GB), {', '.join(LEFT_OUT)}/ left out")
    return 0


if __name__ == "__main__":
    from lib.run.cli import run_main

    run_main(main)
