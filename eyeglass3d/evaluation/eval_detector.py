"""How often the face detector misses a face, clean and behind each kind of synthetic lens.

    python -m eyeglass3d.evaluation.eval_detector [--sets utkface,lfw,celebamask] [--split val]
        [--limit N] [--json weights_card/eval/detector_<split>.json]

Every labelled face of the split is seen clean and wearing synthetic glasses of each lens kind
(drawn with the evaluation seed), through the pipeline's own detector on the photo as it is. A face
counts as found when a detection's box holds both of the teacher's eye centres. The detector can
retry with lower cuts where its first pass finds nothing (`retry_thresholds`); the report gives the
misses of the first pass alone and after each candidate retry (`--retry p,r,o`, chosen on val), and
the detections each makes on face-less patches (the strips of the photo above the brows and beside
the face), so that a retry which sees faces everywhere shows up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eyeglass3d.evaluation.eval_landmarker import EVAL_SEED, FACE_SET_NAMES
from eyeglass3d.evaluation.report import default_json, write_report
from eyeglass3d.paths import default_weights

FACELESS_PER_PHOTO = 2


def found(detections, eye_centres: np.ndarray) -> bool:
    """Whether any detection's box holds both eye centres (x, y) of the labelled face."""
    for detection in detections:
        x0, y0, x1, y1 = detection.box
        inside = (eye_centres[:, 0] >= x0) & (eye_centres[:, 0] <= x1) & (eye_centres[:, 1] >= y0) & (eye_centres[:, 1] <= y1)
        if inside.all():
            return True
    return False


def faceless_patches(image: np.ndarray, landmarks68_px: np.ndarray) -> list[np.ndarray]:
    """The strip above the labelled face's brows and the wider strip beside it, where no face of that person is."""
    top = int(max(0, landmarks68_px[17:27, 1].min() - 0.35 * (landmarks68_px[:, 1].max() - landmarks68_px[:, 1].min())))
    left, right = int(landmarks68_px[:, 0].min()), int(landmarks68_px[:, 0].max())
    side = image[:, right:] if image.shape[1] - right > left else image[:, :left]
    patches = [image[:top], side]
    return [np.ascontiguousarray(p) for p in patches if min(p.shape[:2]) >= 24][:FACELESS_PER_PHOTO]


def evaluate_set(detector, records, count: int, lens_kinds: tuple[str, ...], compositor, retries: dict) -> dict:
    """Misses per condition for the first pass alone and for each candidate retry after it (name ->
    detector configured with that retry), plus the detections each makes on face-less patches."""
    systems = {"first_pass": None, **retries}
    conditions = ("clean", *lens_kinds)
    misses = {name: {c: 0 for c in conditions} for name in systems}
    faceless = {"patches": 0, **{name: 0 for name in systems}}

    def run_all(image) -> dict[str, list]:
        first = detector.detect(image, thresholds=detector.config.thresholds)
        return {name: first if retrying is None or first else retrying.detect(image)
                for name, retrying in systems.items()}

    for index in tqdm(range(count), desc="detector", mininterval=10):
        record = records[index]
        eyes = np.stack([record.landmarks68_px[36:42].mean(0), record.landmarks68_px[42:48].mean(0)])
        for k, condition in enumerate(conditions):
            image = record.image if condition == "clean" else compositor(
                record.image, record.landmarks68_px, np.random.default_rng([EVAL_SEED, index, k]), lens=condition,
            ).image
            for name, detections in run_all(image).items():
                misses[name][condition] += not found(detections, eyes)
        for patch in faceless_patches(record.image, record.landmarks68_px):
            faceless["patches"] += 1
            for name, detections in run_all(patch).items():
                faceless[name] += bool(detections)
    rates = {name: {c: round(v / max(count, 1), 4) for c, v in counts.items()} for name, counts in misses.items()}
    return {"n": count, "missed": misses, "miss_rate": rates, "faceless_detections": faceless}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=default_weights())
    parser.add_argument("--sets", default=",".join(FACE_SET_NAMES))
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--limit", type=int, default=0, help="first N faces of each set (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retry", action="append", default=[],
                        help="candidate retry 'p,r,o@pad' (repeatable; default: the shipped config's retry)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from eyeglass3d.models.detector import MTCNNDetector
    from eyeglass3d.training.compositor import LENS_KINDS, GlassesCompositor
    from eyeglass3d.training.datasets import FaceRecords

    detector = MTCNNDetector.from_pretrained(args.weights / "detector").float().eval()
    compositor = GlassesCompositor(seed=EVAL_SEED)
    config = detector.config
    candidates = args.retry or ([f"{','.join(map(str, config.retry_thresholds))}@{config.retry_pad}"]
                                if config.retry_thresholds else [])
    retries = {}
    for text in candidates:
        cuts, _, pad = text.partition("@")
        retries[f"retry_{text}"] = MTCNNDetector.from_pretrained(
            args.weights / "detector", retry_thresholds=[float(v) for v in cuts.split(",")], retry_pad=float(pad or 0),
        ).float().eval()
    report = {"split": args.split, "thresholds": list(config.thresholds),
              "shipped_retry": [config.retry_thresholds, config.retry_pad]}
    for name in args.sets.split(","):
        records = FaceRecords(args.split, face_set=name, glasses_csv=None)
        count = min(len(records), args.limit) if args.limit else len(records)
        report[name] = evaluate_set(detector, records, count, LENS_KINDS, compositor, retries)
    full = not args.limit and set(args.sets.split(",")) == set(FACE_SET_NAMES)
    write_report(report, args.json or default_json("detector", args.split, full),
                 module="eyeglass3d.evaluation.eval_detector", argv=argv)


if __name__ == "__main__":
    main()
