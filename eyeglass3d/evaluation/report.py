"""Where every evaluation's figures go: a JSON file with its provenance (the card's only source) and the console.

A full run writes `weights_card/eval/<name>_<split>.json`, committed next to the card; a run cut short by
`--limit` (or a subset) writes under `runs/eval/` instead, so a development run can never stand in for a published figure.
Each report records the split, the command line that made it and the git commit it ran at.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from eyeglass3d.paths import REPO_ROOT, data_root

EVAL_DIR = REPO_ROOT / "weights_card" / "eval"
SPLITS = ("val", "test")


def default_json(name: str, split: str, full: bool) -> Path:
    """The committed report of a full run; a partial one (`--limit`, a subset) goes to the git-ignored `runs/eval/`."""
    if not full:
        return REPO_ROOT / "runs" / "eval" / f"{name}_{split}_partial.json"
    return EVAL_DIR / f"{name}_{split}.json"


def public_path(path: str | Path) -> str:
    """A path as it may be committed: relative to the repo or to the data folder, never this machine's."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    for root, prefix in ((REPO_ROOT, ""), (data_root(), "$EYEGLASS3D_DATA/")):
        try:
            return prefix + path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return "<outside the repo>/" + path.name


def public_arg(arg: str) -> str:
    """A command-line argument with its absolute path, if any (also in NAME=PATH), made public."""
    name, equals, value = arg.rpartition("=")
    if equals and value.startswith("/"):
        return f"{name}={public_path(value)}"
    return public_path(arg) if arg.startswith("/") else arg


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces the report, with machine paths made public."""
    argv = sys.argv[1:] if argv is None else argv
    public = [public_arg(arg) for arg in argv]
    return shlex.join(["python", "-m", module, *public])


def git_commit() -> dict[str, str | bool | None]:
    """HEAD, and whether the code (not the reports) had uncommitted changes when the figures were made."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--", "eyeglass3d", "weights_card", ":(exclude)weights_card/eval")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def write_report(report: dict, path: Path, *, module: str, argv: list[str] | None) -> dict:
    """Adds the provenance (command, git) to `report`, writes it as JSON to `path` and prints it."""
    report = {**report, "command": command_line(module, argv), "git": git_commit()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report
