"""Face verification on LFW with the reconstruction's identity coefficients (the paper's protocol).

    python -m eyeglass3d.evaluation.eval_lfw_verification --split val|test [--lfw-dir DIR] [--pairs FILE]
        [--weights weights_card] [--limit N] [--threads 2] [--also-left-in]
        [--json weights_card/eval/lfw_verification_<split>.json]

LFW is not shipped; by default the shared data folder's `lfw_dev/` (`images/<name>/<name>_<0001>.jpg` and
`pairs_dev.txt`, the standard `pairs.txt` format cut to folds 1-5: per fold 300 same-person lines `name i j`,
then 300 different-person lines `name1 i name2 j`). The project's LFW split is by person: fold 4 is `val`,
fold 5 `test`, and this command scores that fold's pairs. Each image is reconstructed by the pipeline's public
`reconstruct`; a pair's score is the cosine similarity of the two 80-D identity coefficient vectors. Figures:

  * accuracy at the threshold chosen on `val` (the val run picks and records it; a test run reads it from the
    val report, `--thresholds`), so no test pair decides anything;
  * 100% − EER: one minus the equal error rate of the ROC over the split's pairs;
  * nAUC: the area under the ROC curve normalised to [0, 1] (1: perfect separation, 0.5: chance).

A pair with a photo in which no face is found is a failure, not dropped: it is scored as the wrong answer at
every threshold (−inf for a same pair, +inf for a different one), and counted on its own.

Conditions: `clean`, and `glasses` with synthetic glasses (evaluation seed, drawn from the pipeline's own
landmarks of the clean photo) put on the *second* image of every pair and removed by the pipeline;
`--also-left-in` adds `glasses_left_in` (`remove_glasses=False`). Pairs with an image in which no face is
found are left out and counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from eyeglass3d.errors import FaceNotFoundError
from eyeglass3d.evaluation.report import SPLITS, default_json, public_path, write_report
from eyeglass3d.paths import data_root, default_weights

EVAL_SEED = 20221  # glasses drawn for evaluation only; training seeds are small integers
SPLIT_FOLDS = {"val": 3, "test": 4}  # 0-based folds of pairs_dev.txt: LFW folds 4 and 5


class Pair(NamedTuple):
    first: str  # image path relative to the LFW folder
    second: str
    same: bool
    fold: int


# ---------------------------------------------------------------------------------------------- protocol
def image_path(name: str, number: int | str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_pairs(path: str | Path, limit: int = 0) -> list[Pair]:
    """LFW `pairs.txt` → pairs in file order; `limit` keeps the first N same and N different pairs per fold."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    header = lines[0]
    if len(header) == 1:  # pairsDevTrain/Test style: one set of N same then N different pairs
        folds, per_fold = 1, int(header[0])
    elif len(header) == 2:
        folds, per_fold = int(header[0]), int(header[1])
    else:
        raise ValueError(f"{path}: expected a header 'folds<TAB>pairs per class', got {' '.join(header)!r}")
    body = lines[1:]
    if len(body) != folds * 2 * per_fold:
        raise ValueError(f"{path}: header says {folds} x 2 x {per_fold} pairs, found {len(body)} lines")
    pairs = []
    for fold in range(folds):
        block = body[fold * 2 * per_fold:(fold + 1) * 2 * per_fold]
        for offset, fields in enumerate(block):
            same = offset < per_fold
            if limit and offset % per_fold >= limit:
                continue
            if same:
                if len(fields) != 3:
                    raise ValueError(f"{path}: fold {fold} expected 'name i j', got {' '.join(fields)!r}")
                name, first, second = fields
                pairs.append(Pair(image_path(name, first), image_path(name, second), True, fold))
            else:
                if len(fields) != 4:
                    raise ValueError(f"{path}: fold {fold} expected 'name1 i name2 j', got {' '.join(fields)!r}")
                pairs.append(Pair(image_path(fields[0], fields[1]), image_path(fields[2], fields[3]), False, fold))
    return pairs


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


# ---------------------------------------------------------------------------------------------- metrics
def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold (score >= threshold means 'same') with the highest accuracy; midpoints between scores."""
    values = np.unique(scores[np.isfinite(scores)])  # failures are wrong at any threshold: not candidates
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    accuracy = [np.mean((scores >= threshold) == same) for threshold in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def roc(scores, same) -> tuple[np.ndarray, np.ndarray]:
    """False and true accept rates for every threshold, from accept-nothing to accept-everything."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    values = np.unique(scores)[::-1]
    far = [0.0] + [np.mean(scores[~same] >= v) for v in values]
    tar = [0.0] + [np.mean(scores[same] >= v) for v in values]
    return np.array(far), np.array(tar)


def equal_error_rate(scores, same) -> float:
    """Where the false accept rate equals the false reject rate, interpolated along the ROC."""
    far, tar = roc(scores, same)
    frr = 1.0 - tar
    difference = far - frr  # rises from -1 (accept nothing) to +1 (accept everything)
    index = int(np.argmax(difference >= 0))
    if index == 0:
        return float(far[0])
    d0, d1 = difference[index - 1], difference[index]
    t = d0 / (d0 - d1) if d1 != d0 else 0.0
    return float(far[index - 1] + t * (far[index] - far[index - 1]))


def normalised_auc(scores, same) -> float:
    """Area under the ROC curve, in [0, 1] (the chance that a same pair outscores a different one; ties half)."""
    far, tar = roc(scores, same)
    return float(np.sum((far[1:] - far[:-1]) * (tar[1:] + tar[:-1]) / 2))


def failure_score(same: bool) -> float:
    """The score of a pair whose face was not found: the wrong answer at every threshold."""
    return -np.inf if same else np.inf


def accuracy_at(scores, same, threshold: float) -> float:
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    return float(np.mean((scores >= threshold) == same))


def verification_figures(scores, same, threshold: float | None = None) -> dict:
    """Accuracy at `threshold` (None: the best one on these pairs, which only a val run may pick), EER and AUC."""
    chosen = best_threshold(np.asarray(scores, np.float64), np.asarray(same, bool)) if threshold is None else threshold
    return {
        "pairs": len(scores),
        "threshold": round(chosen, 6),
        "accuracy": round(accuracy_at(scores, same, chosen), 4),
        "100_minus_eer": round(1.0 - equal_error_rate(scores, same), 4),
        "nauc": round(normalised_auc(scores, same), 4),
    }


# ---------------------------------------------------------------------------------------------- main
def read_thresholds(path: Path) -> dict[str, float]:
    """condition -> the threshold a val run chose and recorded."""
    report = json.loads(path.read_text())
    if report.get("split") != "val":
        raise SystemExit(f"{path}: thresholds must come from a val run, this report is split {report.get('split')!r}")
    return {name: entry["threshold"] for name, entry in report.items()
            if isinstance(entry, dict) and "threshold" in entry}


def main(argv: list[str] | None = None) -> dict:
    lfw = data_root() / "lfw_dev"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--lfw-dir", type=Path, default=lfw / "images", help="folder of <name>/<name>_<0001>.jpg")
    parser.add_argument("--pairs", type=Path, default=lfw / "pairs_dev.txt")
    parser.add_argument("--thresholds", type=Path, default=default_json("lfw_verification", "val", full=True),
                        help="the val report whose thresholds a test run applies")
    parser.add_argument("--weights", default=str(default_weights()), help="model repo folder or Hub id")
    parser.add_argument("--limit", type=int, default=0, help="first N same and N different pairs (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--also-left-in", action="store_true", help="also score glasses left in (no removal)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    conditions = ["clean", "glasses"] + (["glasses_left_in"] if args.also_left_in else [])
    thresholds = read_thresholds(args.thresholds) if args.split == "test" else {}
    if args.split == "test" and not set(conditions) <= set(thresholds):
        raise SystemExit(f"{args.thresholds} has no val threshold for {sorted(set(conditions) - set(thresholds))}: "
                         "run --split val with the same conditions first")

    from eyeglass3d import Eyeglass3DPipeline
    from eyeglass3d.image_io import load_image
    from eyeglass3d.training.compositor import GlassesCompositor

    pairs = [pair for pair in read_pairs(args.pairs, args.limit) if pair.fold == SPLIT_FOLDS[args.split]]
    pipe = Eyeglass3DPipeline.from_pretrained(args.weights)
    compositor = GlassesCompositor(seed=EVAL_SEED)
    clean_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | None] = {}
    stages: dict[str, str] = {}

    def clean(relative: str):
        """(image, identity, pipeline landmarks) of a clean photo, or None when no face is found."""
        if relative not in clean_cache:
            image = load_image(args.lfw_dir / relative)
            try:
                out = pipe.reconstruct(image)
                clean_cache[relative] = (image, out.coefficients["identity"], out.landmarks)
                stages.update(out.stages)
            except FaceNotFoundError:
                clean_cache[relative] = None
        return clean_cache[relative]

    scores: dict[str, list[float]] = {name: [] for name in conditions}
    failed = {name: 0 for name in conditions}

    def score(name: str, pair: Pair, first, second_identity) -> None:
        found = first is not None and second_identity is not None
        scores[name].append(cosine(first[1], second_identity) if found else failure_score(pair.same))
        failed[name] += not found

    for index, pair in enumerate(tqdm(pairs, desc=f"LFW {args.split} pairs", mininterval=10)):
        first, second = clean(pair.first), clean(pair.second)
        score("clean", pair, first, second[1] if second is not None else None)
        for name, remove in (("glasses", True), ("glasses_left_in", False)):
            if name not in conditions:
                continue
            worn = None
            if second is not None:  # glasses drawn from the pipeline's landmarks of the clean second photo
                sample = compositor(second[0], second[2], np.random.default_rng([EVAL_SEED, index]))
                try:
                    worn = pipe.reconstruct(sample.image, remove_glasses=remove).coefficients["identity"]
                except FaceNotFoundError:
                    worn = None
            score(name, pair, first, worn)

    same = [pair.same for pair in pairs]
    report: dict = {
        "split": args.split,
        "n": len(pairs),
        "pairs_file": public_path(args.pairs),
        "fold": SPLIT_FOLDS[args.split] + 1,
        "images_without_face": sum(value is None for value in clean_cache.values()),
        "score": "cosine similarity of the identity coefficients; a pair with a face not found: wrong at any threshold",
        "threshold_source": public_path(args.thresholds) if thresholds else "chosen on these (val) pairs",
        "stages": stages,  # how each stage was produced (network or fallback)
    }
    for name in conditions:
        if len(set(same)) < 2:
            report[name] = {"pairs": len(pairs), "note": "needs both same and different pairs"}
            continue
        report[name] = verification_figures(scores[name], same, thresholds.get(name))
        report[name]["pairs_with_a_face_not_found"] = failed[name]
    report["weights"] = public_path(args.weights) if Path(args.weights).exists() else args.weights
    report["threads"] = args.threads
    json_path = args.json or default_json("lfw_verification", args.split, full=not args.limit)
    return write_report(report, json_path, module="eyeglass3d.evaluation.eval_lfw_verification", argv=argv)


if __name__ == "__main__":
    main()
