"""Held-out figures of the landmark network, with dlib measured in the same run as the peer.

    python -m eyeglass3d.evaluation.eval_landmarker [--weights weights_card] [--json runs/eval/landmarker.json]

On the fixed test split (never trained on), every face is seen twice: clean, and wearing synthetic
glasses drawn with a seed the training never used. Both systems start from the photo alone — our
MTCNN detector + landmark network, dlib's HOG detector + 68-point predictor — and are scored against
dlib's labels of the *clean* photo: NME = mean point error / outer-eye-corner distance (36, 45).
So dlib's clean score is 0 by construction and its glasses score says how much glasses move it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eyeglass3d.evaluation.metrics import normalised_mean_error
from eyeglass3d.evaluation.report import write_report
from eyeglass3d.evaluation.timing import forward_ms
from eyeglass3d.geometry.alignment import CANONICAL_FIVE_POINTS
from eyeglass3d.paths import REPO_ROOT, default_weights

EVAL_SEED = 20221  # glasses drawn for evaluation only; training seeds are small integers


def nme(predicted: np.ndarray, target: np.ndarray) -> float:
    return float(normalised_mean_error(predicted, target))


def predict(detector, landmarker, image: np.ndarray) -> np.ndarray | None:
    """The pipeline's own path: largest detection → canonical crop → landmarks in image pixels."""
    faces = detector.detect(image)
    return landmarker.predict(image, faces[0].points) if faces else None


def latency_ms(landmarker, repeats: int = 50) -> dict[str, float]:
    """Per face as the pipeline pays it: every crop and forward of `predict`, refinements included."""
    image = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    points5 = CANONICAL_FIVE_POINTS * 200
    return forward_ms(lambda: landmarker.predict(image, points5), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=default_weights())
    parser.add_argument("--labels", type=Path, default=REPO_ROOT / "cache" / "utkface_labels.npz")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "runs" / "eval" / "landmarker.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from eyeglass3d.models.detector import MTCNNDetector
    from eyeglass3d.models.landmarker import LandmarkRegressor
    from eyeglass3d.training.compositor import GlassesCompositor
    from eyeglass3d.training.datasets import FaceRecords
    from eyeglass3d.training.teacher import DlibTeacher

    detector = MTCNNDetector.from_pretrained(args.weights / "detector").float().eval()
    landmarker = LandmarkRegressor.from_pretrained(args.weights / "landmarker").float().eval()
    records = FaceRecords(args.split, labels_path=args.labels, glasses_csv=None)
    count = min(len(records), args.limit) if args.limit else len(records)
    teacher = DlibTeacher(with_descriptor=False)
    compositor = GlassesCompositor(seed=EVAL_SEED)

    scores: dict[str, list[float]] = {"ours_clean": [], "ours_glasses": [], "dlib_glasses": []}
    by_lens: dict[str, list[float]] = {}
    misses = {"ours_clean": 0, "ours_glasses": 0, "dlib_glasses": 0}
    for index in tqdm(range(count), desc=f"eval {args.split}", mininterval=10):
        record = records[index]
        target = record.landmarks68_px
        sample = compositor(record.image, target, np.random.default_rng([EVAL_SEED, index]))
        for key, image in (("ours_clean", record.image), ("ours_glasses", sample.image)):
            predicted = predict(detector, landmarker, image)
            if predicted is None:
                misses[key] += 1
                continue
            scores[key].append(nme(predicted, target))
            if key == "ours_glasses":
                by_lens.setdefault(sample.params.get("lens", "?"), []).append(scores[key][-1])
        # dlib gets the same whole-crop fallback box its clean labels were made with when its detector misses.
        label = teacher(sample.image)
        misses["dlib_glasses"] += not label.detected
        scores["dlib_glasses"].append(nme(label.landmarks68_px, target))

    report = {
        "split": args.split,
        "faces": count,
        "nme": {key: round(float(np.mean(values)), 4) for key, values in scores.items()},
        "nme_median": {key: round(float(np.median(values)), 4) for key, values in scores.items()},
        "missed_faces": misses,  # ours: no detection (face skipped); dlib: detector missed, fallback box used
        "ours_glasses_nme_by_lens": {kind: round(float(np.mean(v)), 4) for kind, v in sorted(by_lens.items())},
        "latency_ms_per_face": latency_ms(landmarker),
        "threads": args.threads,
        "landmarker": {key: landmarker.config[key] for key in ("input_size", "variant", "width_mult", "refinements")},
    }
    report["glasses_gap"] = round(report["nme"]["ours_glasses"] - report["nme"]["ours_clean"], 4)
    write_report(report, args.json)


if __name__ == "__main__":
    main()
