"""Label every photo of a face set once with the teachers, for all training scripts.

    python -m eyeglass3d.training.label_faces --set utkface|lfw|celebamask [--out cache/<set>_labels.npz]
        [--limit N] [--detector weights_card/detector] [--workers 2]

Per file it stores dlib's box, 68 landmarks and 128-D descriptor, and our MTCNN detector's box,
score and five points (the crop every network is trained on is cut from these five points, as at
inference). Work is appended to `<out>.chunks/` as it goes, so an interrupted run resumes where it
stopped, and a run with `--detector` over a dlib-only cache adds just the MTCNN pass. Files are
named by their path below the set's image folder. The merged `<out>` is rewritten at the end with a
quality flag per file:

    2  dlib's detector found the face and MTCNN's five points agree with the 68 landmarks
    1  dlib's detector missed, MTCNN agrees (the 68 points were placed in a fallback box: the whole
       crop for UTKFace's tight crops, MTCNN's face for the uncropped sets)
    0  drop: no MTCNN face, or MTCNN and dlib disagree (`disagreement` > `--max-disagreement`)

Without an MTCNN pass the flag is provisional (2 or 1 from dlib alone, `mtcnn_ran` False).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from eyeglass3d.training.datasets import five_points_from_landmarks68
from eyeglass3d.training.face_sets import FACE_SETS, face_set
from eyeglass3d.training.splits import split_of_files

FIELDS = {  # name: (shape, dtype, fill when missing)
    "dlib_detected": ((), bool, False),
    "dlib_box": ((4,), np.float32, np.nan),
    "landmarks68": ((68, 2), np.float32, np.nan),
    "descriptor": ((128,), np.float32, np.nan),
    "mtcnn_ran": ((), bool, False),
    "mtcnn_faces": ((), np.int16, 0),
    "mtcnn_box": ((4,), np.float32, np.nan),
    "mtcnn_score": ((), np.float32, np.nan),
    "points5": ((5, 2), np.float32, np.nan),
}
# Mean distance between MTCNN's five points and the same points from dlib's 68, in inter-ocular
# distances, above which the two teachers are taken to see different things and the file is dropped.
MAX_DISAGREEMENT = 0.25
# UTKFace crops are so tight that faces often touch the border, where MTCNN's pyramid cannot place
# a window (it missed about 3 % of faces, mostly babies). Replicating a border of this fraction of
# the image side finds three quarters of those and moves the others' points by about 2 pixels.
MTCNN_PAD = 0.15
LOG = logging.getLogger("eyeglass3d.label_faces")

# Sets whose photos are tight face crops, where the whole image is the best box when dlib misses.
WHOLE_IMAGE_FALLBACK = frozenset({"utkface"})
# dlib's HOG box starts at the brows; MTCNN's at the hairline: drop this fraction of MTCNN's height.
MTCNN_TO_DLIB_TOP = 0.15
_teacher = None
_detector = None
_whole_image_fallback = True


def _init_worker(detector_path: str | None, whole_image_fallback: bool = True) -> None:
    """Per-process models; one thread each, since the team shares two cores."""
    global _teacher, _detector, _whole_image_fallback
    _whole_image_fallback = whole_image_fallback
    import torch

    from eyeglass3d.training.teacher import DlibTeacher

    torch.set_num_threads(1)
    _teacher = DlibTeacher()
    if detector_path is not None:
        from eyeglass3d.models.detector import MTCNNDetector

        _detector = MTCNNDetector.from_pretrained(detector_path).eval()


def _label_one(job: tuple[str, dict | None]) -> dict:
    """Fill in what is missing for one image: the dlib pass, then the MTCNN pass if a detector is loaded."""
    path, name, record = job
    image = np.asarray(Image.open(path).convert("RGB"))
    record = dict(record) if record is not None else {}
    detections = _detect_padded(_detector, image) if _detector is not None else None
    if "landmarks68" not in record:
        fallback = None if _whole_image_fallback or not detections else _dlib_like_box(_central(detections, image))
        label = _teacher(image, fallback)
        record.update(
            dlib_detected=label.detected, dlib_box=label.box_px, landmarks68=label.landmarks68_px,
            descriptor=label.descriptor,
        )
    if detections is not None and not record.get("mtcnn_ran", False):
        record.update(_mtcnn_fields(detections, record["dlib_box"]))
    record["file"] = name
    return record


def _central(detections: list, image: np.ndarray):
    """The detection nearest the photo's centre (the labelled person of a news photo)."""
    centre = np.array(image.shape[1::-1], np.float64) / 2
    return min(detections, key=lambda d: np.linalg.norm((np.asarray(d.box[:2]) + np.asarray(d.box[2:])) / 2 - centre))


def _dlib_like_box(detection) -> np.ndarray:
    """MTCNN's box cut to where dlib's HOG box would sit (brows to chin), for dlib's shape predictor."""
    x0, y0, x1, y1 = np.asarray(detection.box, np.float32)
    return np.array([x0, y0 + MTCNN_TO_DLIB_TOP * (y1 - y0), x1, y1], np.float32)


def _detect_padded(detector, image: np.ndarray) -> list:
    """MTCNN on the image with a replicated border; boxes and points come back in the image's own pixels."""
    pad = int(round(MTCNN_PAD * max(image.shape[:2])))
    detections = detector.detect(cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE))
    for detection in detections:
        detection.box = detection.box - pad
        detection.points = detection.points - pad
    return detections


def _mtcnn_fields(detections, reference_box: np.ndarray) -> dict:
    """The detection that overlaps dlib's box most (UTKFace crops can show a second face at the border)."""
    fields = {"mtcnn_ran": True, "mtcnn_faces": len(detections)}
    if detections:
        best = max(detections, key=lambda d: (box_iou(np.asarray(d.box), reference_box), float(d.score)))
        fields.update(
            mtcnn_box=np.asarray(best.box, np.float32), mtcnn_score=np.float32(best.score),
            points5=np.asarray(best.points, np.float32),
        )
    return fields


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def disagreement(landmarks68_px: np.ndarray, points5_px: np.ndarray) -> np.ndarray:
    """Mean five-point distance between dlib and MTCNN, in inter-ocular distances; (N,) with NaN where MTCNN is missing."""
    dlib5 = five_points_from_landmarks68(landmarks68_px)
    interocular = np.linalg.norm(points5_px[:, 1] - points5_px[:, 0], axis=1)
    return np.linalg.norm(dlib5 - points5_px, axis=2).mean(1) / np.maximum(interocular, 1e-6)


def quality_flags(arrays: dict, max_disagreement: float = MAX_DISAGREEMENT) -> tuple[np.ndarray, np.ndarray]:
    """(quality int8, disagreement float32) per file, from the stored raw fields (see module docstring)."""
    error = disagreement(arrays["landmarks68"], arrays["points5"]).astype(np.float32)
    quality = np.where(arrays["dlib_detected"], 2, 1).astype(np.int8)
    agrees = np.isfinite(error) & (error <= max_disagreement)
    quality[arrays["mtcnn_ran"] & ~agrees] = 0
    quality[~np.isfinite(arrays["landmarks68"]).all(axis=(1, 2))] = 0
    return quality, error


def stack_records(records: list[dict]) -> dict:
    arrays = {"files": np.array([r["file"] for r in records], dtype=str)}
    for name, (shape, dtype, fill) in FIELDS.items():
        column = np.full((len(records), *shape), fill, dtype=dtype)
        for i, record in enumerate(records):
            if name in record:
                column[i] = record[name]
        arrays[name] = column
    return arrays


def load_chunks(chunk_dir: Path) -> dict[str, dict]:
    """file -> record from every chunk written so far; later chunks win (they hold the newer passes)."""
    records: dict[str, dict] = {}
    for chunk in sorted(chunk_dir.glob("chunk_*.npz")):
        with np.load(chunk) as data:
            present = {name: data[name] for name in FIELDS if name in data.files}
            for i, file in enumerate(data["files"]):
                record = {name: column[i] for name, column in present.items()}
                if not record["mtcnn_ran"]:
                    record = {k: v for k, v in record.items() if not k.startswith("mtcnn") and k != "points5"}
                records[str(file)] = record
    return records


def write_npz(path: Path, arrays: dict) -> None:
    """Write via a temporary file, so a reader never sees half a cache."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def merge(chunk_dir: Path, out: Path, max_disagreement: float = MAX_DISAGREEMENT) -> dict:
    records = load_chunks(chunk_dir)
    arrays = stack_records([dict(records[f], file=f) for f in sorted(records)])
    arrays["quality"], arrays["disagreement"] = quality_flags(arrays, max_disagreement)
    arrays["max_disagreement"] = np.float32(max_disagreement)
    write_npz(out, arrays)
    return arrays


def run(
    images: Path, files: list[str], out: Path, *, limit: int | None = None, detector: str | None = None,
    workers: int = 1, chunk_size: int = 256, max_disagreement: float = MAX_DISAGREEMENT,
    whole_image_fallback: bool = True,
) -> dict:
    """Label `files` (paths relative to `images`) into `out`, resuming from its chunks."""
    from tqdm import tqdm

    chunk_dir = out.with_name(out.stem + ".chunks")
    chunk_dir.mkdir(parents=True, exist_ok=True)
    files = files[:limit]
    done = load_chunks(chunk_dir)
    todo = [f for f in files if f not in done or (detector is not None and not done[f].get("mtcnn_ran", False))]
    LOG.info("%d files, %d already labelled, %d to do (detector=%s, workers=%d)",
             len(files), len(files) - len(todo), len(todo), detector, workers)
    jobs = [(str(images / f), f, done.get(f)) for f in todo]
    next_chunk = len(list(chunk_dir.glob("chunk_*.npz")))
    start = time.perf_counter()
    pending: list[dict] = []

    def flush() -> None:
        nonlocal next_chunk, pending
        if pending:
            write_npz(chunk_dir / f"chunk_{next_chunk:05d}.npz", stack_records(pending))
            next_chunk, pending = next_chunk + 1, []

    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (detector, whole_image_fallback))
        results = pool.imap(_label_one, jobs, chunksize=8)
    else:
        pool = None
        _init_worker(detector, whole_image_fallback)
        results = map(_label_one, jobs)
    try:
        for count, record in enumerate(tqdm(results, total=len(jobs), desc="label_faces", mininterval=5), 1):
            pending.append(record)
            if len(pending) >= chunk_size:
                flush()
                LOG.info("%d / %d images, %.3f s/image", count, len(jobs), (time.perf_counter() - start) / count)
    finally:
        flush()
        if pool is not None:
            pool.terminate()
    elapsed = time.perf_counter() - start
    arrays = merge(chunk_dir, out, max_disagreement)
    keep = np.isin(arrays["files"], files)
    counts = np.bincount(arrays["quality"][keep], minlength=3)
    LOG.info(
        "labelled %d images in %.1f s (%.3f s/image); cache holds %d; of the %d requested: quality 2: %d, "
        "1: %d, 0 (drop): %d; dlib detector missed %d; MTCNN ran on %d, found no face on %d",
        len(jobs), elapsed, elapsed / max(1, len(jobs)), len(arrays["files"]), keep.sum(), counts[2], counts[1],
        counts[0], (~arrays["dlib_detected"][keep]).sum(), arrays["mtcnn_ran"][keep].sum(),
        (arrays["mtcnn_ran"][keep] & (arrays["mtcnn_faces"][keep] == 0)).sum(),
    )
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="utkface", choices=sorted(FACE_SETS), help="which face set to label")
    parser.add_argument("--out", type=Path, default=None, help="label cache (default: cache/<set>_labels.npz)")
    parser.add_argument("--limit", type=int, default=None, help="label only the first N files (sorted by name)")
    parser.add_argument("--splits", default="train,val,test",
                        help="label only the files of these splits (the held-out ones first, when time is short)")
    parser.add_argument("--detector", default=None, help="our MTCNN weights folder, e.g. weights_card/detector")
    parser.add_argument("--workers", type=int, default=1, choices=(1, 2))
    parser.add_argument("--max-disagreement", type=float, default=MAX_DISAGREEMENT)
    parser.add_argument("--merge-only", action="store_true", help="recompute quality flags without labelling")
    args = parser.parse_args(argv)
    faces = face_set(args.set)
    args.out = args.out or faces.default_labels
    args.out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(args.out.with_suffix(".log")), logging.StreamHandler()],
    )
    # `kill` (SIGTERM) ends the run through the normal exit path, so the last partial chunk is kept.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.merge_only:
        arrays = merge(args.out.with_name(args.out.stem + ".chunks"), args.out, args.max_disagreement)
        LOG.info("merged %d files; quality counts %s", len(arrays["files"]), np.bincount(arrays["quality"], minlength=3))
        return
    wanted = set(args.splits.split(","))
    files = [f for f, split in zip(faces.files(), split_of_files(faces.files(), faces.split_csv)) if split in wanted]
    run(faces.images_dir, files, args.out, limit=args.limit, detector=args.detector, workers=args.workers,
        max_disagreement=args.max_disagreement, whole_image_fallback=args.set in WHOLE_IMAGE_FALLBACK)


if __name__ == "__main__":
    main()
