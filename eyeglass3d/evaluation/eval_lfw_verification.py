"""Face verification on LFW with the reconstruction's identity coefficients (the paper's protocol).

    python -m eyeglass3d.evaluation.eval_lfw_verification --lfw-dir LFW [--pairs LFW/pairs.txt]
        [--weights weights_card] [--limit N] [--threads 2] [--also-left-in]
        [--json runs/eval/lfw_verification.json]

LFW is not shipped: pass the folder holding `<name>/<name>_<0001>.jpg` images (and the standard `pairs.txt`,
header "10\\t300": per fold 300 same-person lines `name i j`, then 300 different-person lines
`name1 i name2 j`). Each image is reconstructed by the pipeline's public `reconstruct`; a pair's score is
the cosine similarity of the two 80-D identity coefficient vectors. Figures, as in the paper:

  * 10-fold accuracy: per fold, the threshold that maximises accuracy on the other folds, applied to it;
  * 100% − EER: one minus the equal error rate of the ROC over all pairs;
  * nAUC: the area under the ROC curve normalised to [0, 1] (1: perfect separation, 0.5: chance).

Conditions: `clean`, and `glasses` with synthetic glasses (evaluation seed, drawn from the pipeline's own
landmarks of the clean photo) put on the *second* image of every pair and removed by the pipeline;
`--also-left-in` adds `glasses_left_in` (`remove_glasses=False`). Pairs with an image in which no face is
found are left out and counted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from eyeglass3d.errors import FaceNotFoundError
from eyeglass3d.evaluation.report import write_report
from eyeglass3d.paths import REPO_ROOT, default_weights

EVAL_SEED = 20221  # glasses drawn for evaluation only; training seeds are small integers


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
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    accuracy = [np.mean((scores >= threshold) == same) for threshold in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def fold_accuracy(scores, same, folds) -> tuple[float, float]:
    """Mean and standard deviation over folds of the accuracy with a threshold chosen on the other folds."""
    scores, same, folds = np.asarray(scores, np.float64), np.asarray(same, bool), np.asarray(folds)
    results = []
    for fold in np.unique(folds):
        test = folds == fold
        train = ~test if (~test).any() else test  # a single fold: the threshold is chosen on itself
        threshold = best_threshold(scores[train], same[train])
        results.append(np.mean((scores[test] >= threshold) == same[test]))
    return float(np.mean(results)), float(np.std(results))


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


def verification_figures(scores, same, folds) -> dict:
    accuracy, spread = fold_accuracy(scores, same, folds)
    return {
        "pairs": len(scores),
        "accuracy": round(accuracy, 4),
        "accuracy_std": round(spread, 4),
        "100_minus_eer": round(1.0 - equal_error_rate(scores, same), 4),
        "nauc": round(normalised_auc(scores, same), 4),
    }


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw-dir", type=Path, required=True, help="folder of <name>/<name>_<0001>.jpg images")
    parser.add_argument("--pairs", type=Path, default=None, help="pairs file (default: LFW_DIR/pairs.txt)")
    parser.add_argument("--weights", default=str(default_weights()), help="model repo folder or Hub id")
    parser.add_argument("--limit", type=int, default=0, help="first N same and N different pairs per fold (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--also-left-in", action="store_true", help="also score glasses left in (no removal)")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "runs" / "eval" / "lfw_verification.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from eyeglass3d import Eyeglass3DPipeline
    from eyeglass3d.image_io import load_image
    from eyeglass3d.training.compositor import GlassesCompositor

    pairs = read_pairs(args.pairs or args.lfw_dir / "pairs.txt", args.limit)
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

    conditions = ["clean", "glasses"] + (["glasses_left_in"] if args.also_left_in else [])
    scores: dict[str, list[float]] = {name: [] for name in conditions}
    kept: dict[str, list[int]] = {name: [] for name in conditions}
    for index, pair in enumerate(tqdm(pairs, desc="LFW pairs", mininterval=10)):
        first, second = clean(pair.first), clean(pair.second)
        if first is None or second is None:
            continue
        scores["clean"].append(cosine(first[1], second[1]))
        kept["clean"].append(index)
        sample = compositor(second[0], second[2], np.random.default_rng([EVAL_SEED, index]))
        for name, remove in (("glasses", True), ("glasses_left_in", False)):
            if name not in conditions:
                continue
            try:
                worn = pipe.reconstruct(sample.image, remove_glasses=remove)
            except FaceNotFoundError:
                continue
            scores[name].append(cosine(first[1], worn.coefficients["identity"]))
            kept[name].append(index)

    report: dict = {
        "pairs_file": str(args.pairs or args.lfw_dir / "pairs.txt"),
        "pairs": len(pairs),
        "folds": len({pair.fold for pair in pairs}),
        "images_without_face": sum(value is None for value in clean_cache.values()),
        "score": "cosine similarity of the identity coefficients",
        "stages": stages,  # how each stage was produced (network or fallback)
    }
    for name in conditions:
        indices = kept[name]
        if not indices:
            report[name] = {"pairs": 0}
            continue
        same = [pairs[i].same for i in indices]
        folds = [pairs[i].fold for i in indices]
        if len(set(same)) < 2:
            report[name] = {"pairs": len(indices), "note": "needs both same and different pairs"}
            continue
        report[name] = verification_figures(scores[name], same, folds)
        report[name]["pairs_left_out"] = len(pairs) - len(indices)
    report["weights"] = str(args.weights)
    report["threads"] = args.threads
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
