"""The published figures, written from the evaluation reports in `weights_card/eval/` and checked against them.

    python -m eyeglass3d.evaluation.card_figures [--check]

In README.md and weights_card/README.md a figure is a value followed by an invisible annotation naming its source:

    **0.0364**<!-- eval landmarker_test.json face_sets.utkface.glasses.ours .4f -->

(report file, dotted key path, Python format spec). This command rewrites every annotated value as
`format(report[key], spec)`, or as `(to be re-measured)` while the report does not exist, and regenerates the
card's `model-index` metadata from `MODEL_INDEX` (a result only where its report exists). `--check` changes
nothing and exits non-zero when a file differs from what the reports say; the test suite runs the same check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from eyeglass3d.evaluation.report import EVAL_DIR
from eyeglass3d.paths import REPO_ROOT

DOCUMENTS = (REPO_ROOT / "README.md", REPO_ROOT / "weights_card" / "README.md")
PENDING = "(to be re-measured)"
ANNOTATION = re.compile(
    r"(?P<value>\(to be re-measured\)|[^\s*|(<>]+)(?P<bold>\*\*)?"
    r"<!-- eval (?P<file>[\w.-]+\.json) (?P<key>\S+) (?P<spec>\S+) -->"
)
REPORT_NAME = re.compile(r"^(?P<name>\w+?)_(?P<split>val|test|examples)\.json$")

# The card's model-index: (task type, task name, report, dataset name with {n}, key of n, metrics).
MODEL_INDEX = (
    ("keypoint-detection", "68 face landmarks (landmarker)", "landmarker_test.json",
     "UTKFace, eyeglass3d test split ({n} faces), clean and with synthetic glasses; a missed face scores 0.5",
     "face_sets.utkface.n",
     (("nme", "NME clean", "face_sets.utkface.conditions.clean.ours.nme_mean", ".4f"),
      ("nme", "NME with synthetic glasses (lens mix)", "face_sets.utkface.glasses.ours", ".4f"))),
    ("image-segmentation", "eyeglasses mask (parser)", "glasses_removal_test.json",
     "UTKFace, eyeglass3d test split ({n} faces with synthetic glasses; a missed face scores 0)",
     "synthetic_glasses_mask.n",
     (("iou", "eyeglasses IoU", "synthetic_glasses_mask.iou.mean", ".3f"),)),
    ("image-to-image", "glasses removal given the exact mask (inpainter)", "glasses_removal_test.json",
     "UTKFace, eyeglass3d test split ({n} faces with synthetic glasses)",
     "inpainting_given_exact_mask.n",
     (("psnr", "PSNR over the mask's box (dB)", "inpainting_given_exact_mask.psnr.network.mean", ".2f"),
      ("ssim", "SSIM over the mask's box", "inpainting_given_exact_mask.ssim.network.mean", ".3f"))),
    ("image-to-3d", "3D face reconstruction (reconstruct)", "reconstruction_test.json",
     "UTKFace, eyeglass3d test split ({n} glasses-free faces, synthetic glasses added)",
     "n",
     (("nme", "mesh landmark reprojection NME", "landmark_reprojection_nme.mesh.mean", ".4f"),
      ("rms_mm", "median shape change with synthetic glasses removed (mm)",
       "glasses_invariance_rms_mm.glasses_removed.median", ".3f"))),
)


def report(file: str, eval_dir: Path = EVAL_DIR) -> dict | None:
    """A report, or None while it has not been made; its `split` must be the one its name says."""
    path = eval_dir / file
    data = json.loads(path.read_text()) if path.is_file() else None
    match = REPORT_NAME.match(file)
    if match is None:
        raise ValueError(f"{file}: report names are <name>_<val|test|examples>.json")
    if data is not None and data.get("split") != match["split"]:
        raise ValueError(f"{file} says split {data.get('split')!r}, its name says {match['split']!r}")
    return data


def lookup(data: dict, key: str):
    """`a.b.0.c` into nested dicts and lists."""
    value = data
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def figure(file: str, key: str, spec: str, eval_dir: Path = EVAL_DIR) -> str:
    data = report(file, eval_dir)
    if data is None:
        return PENDING
    value = lookup(data, key)
    if value is None:
        raise ValueError(f"{file} {key} is null")
    return format(value, spec)


def fill_annotations(text: str, eval_dir: Path = EVAL_DIR) -> str:
    def replace(match: re.Match) -> str:
        value = figure(match["file"], match["key"], match["spec"], eval_dir)
        return match[0].replace(match["value"], value, 1)

    return ANNOTATION.sub(replace, text)


def model_index(eval_dir: Path = EVAL_DIR) -> str:
    """The card's `model-index` YAML: one result per MODEL_INDEX entry whose report exists."""
    lines = ["model-index:", "  - name: eyeglass3d", "    results:"]
    for task_type, task_name, file, dataset, n_key, metrics in MODEL_INDEX:
        data = report(file, eval_dir)
        if data is None:
            continue
        lines += [
            "      - task:", f"          type: {task_type}", f"          name: {task_name}",
            "        dataset:", "          type: utkface",
            f"          name: {json.dumps(dataset.format(n=lookup(data, n_key)))}",
            f"          split: {data['split']}", "        metrics:",
        ]
        for metric_type, metric_name, key, spec in metrics:
            lines += [f"          - type: {metric_type}", f"            name: {json.dumps(metric_name)}",
                      f"            value: {format(lookup(data, key), spec)}"]
    if lines[-1] == "    results:":
        return ""
    return "\n".join(lines) + "\n"


def fill_model_index(text: str, eval_dir: Path = EVAL_DIR) -> str:
    """Replace the front matter's `model-index:` block, its last key, by a fresh one."""
    end = text.index("\n---\n", 3) + 1  # the closing line of the front matter
    front, rest = text[:end], text[end:]
    start = front.find("model-index:")
    return (front if start < 0 else front[:start]) + model_index(eval_dir) + rest


def filled(path: Path, eval_dir: Path = EVAL_DIR) -> str:
    text = fill_annotations(path.read_text(), eval_dir)
    return fill_model_index(text, eval_dir) if path.parent.name == "weights_card" else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a figure is stale")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCUMENTS:
        text = filled(path)
        if text != path.read_text():
            stale.append(path.relative_to(REPO_ROOT).as_posix())
            if not args.check:
                path.write_text(text)
    verb = "differ from" if args.check else "rewritten from"
    print(f"{', '.join(stale) or 'nothing'} {verb} weights_card/eval/")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
