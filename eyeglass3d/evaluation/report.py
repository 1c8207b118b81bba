"""Where every evaluation's figures go: a JSON file (the model card's source) and the console."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, path: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report
