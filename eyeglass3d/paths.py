"""Where the project's files live: the shared data folder, the repo root, the shipped weights."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """The read-only training data (UTKFace, ICT face model, glasses meshes); `EYEGLASS3D_DATA` overrides."""
    return Path(os.environ.get("EYEGLASS3D_DATA", REPO_ROOT.parent / "shared" / "data"))


def default_weights() -> Path:
    """The model repo shipped beside the code (`weights_card/`), used when no repo id is given."""
    return Path(os.environ.get("EYEGLASS3D_WEIGHTS", REPO_ROOT / "weights_card"))
