"""Moves the face model's 68 landmark vertices to where dlib's landmarks sit on UTKFace faces.

    python tools/calibrate_landmarks.py            # about 1 minute at 1 thread; writes tools/landmarks_dlib68.json

ICT-FaceKit's landmark vertices follow its own reading of the iBUG-68 scheme; our teacher labels are dlib's
68 points, placed differently: dlib's brows sit 3-8 mm lower, its inner lips and nostrils elsewhere, its jaw
wider and lower. A fit then bends the shape to bridge the gap, and the 80 N(0, 1) identity modes come out
biased on every face (on val, identity mode 0 averages +2.4 with ICT's vertices). This script searches, for
each landmark, the vertex that best explains the teacher's points:

1. Fit pose and expression (no identity: the population mean is the model's mean shape) to the landmarks
   of `--faces` adult glasses-free training faces.
2. For each landmark, over the face-area vertices within `--radius-mm` of ICT's vertex (`--jaw-radius-mm`
   for the jaw, whose candidate line is rebuilt from each tried vertex and follows the outline as at
   inference), take the one with the least mean squared reprojection error over those fits. Mirror-image
   landmarks are searched as a pair (a vertex and its mirror, costs added), midline landmarks among
   vertices on the midline, so the result stays left-right symmetric.
3. Rebuild the model with the new vertices and repeat (`--rounds`).

Adults only (age >= 18): ICT's identities are adult scans, and the face proportions of UTKFace's many
infants would move the landmark definitions. The bias before and after is measured on val faces with the
default `fit_landmarks` priors and written into the JSON with the vertex ids; `tools/build_face_model.py`
reads that file.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_face_model import (  # noqa: E402
    CONTOUR_BAND_CM,
    CONTOUR_CANDIDATES,
    CONTOUR_INWARD,
    LANDMARKS_JSON,
    build,
    contour_row,
)

from eyeglass3d.geometry.alignment import crop_matrix, transform_points  # noqa: E402
from eyeglass3d.geometry.fitting import fit_landmarks  # noqa: E402
from eyeglass3d.models.face_model import NUM_CONTOUR_LANDMARKS, FaceModel  # noqa: E402
from eyeglass3d.paths import data_root  # noqa: E402
from eyeglass3d.training.datasets import FaceRecords  # noqa: E402

FIT_SIZE = 224
MIDLINE_MM = 0.5
# iBUG-68 left-right pairs (image-left point first); every other point lies on the midline.
MIRROR_PAIRS = (
    [(i, 16 - i) for i in range(8)]
    + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
)


def crop_landmarks(split: str, count: int | None, seed: int, min_age: int) -> torch.Tensor:
    """(B, 68, 2) teacher landmarks in the canonical FIT_SIZE crop of glasses-free faces of `split`."""
    ages = {row["file"]: int(row["age"]) for row in csv.DictReader(open(data_root() / "faces/utkface/labels.csv"))}
    records = FaceRecords(split, glasses="without")
    pool = np.array([i for i, name in enumerate(records.files) if ages.get(name, 0) >= min_age])
    if count is not None and count < len(pool):
        pool = np.sort(np.random.default_rng(seed).choice(pool, count, replace=False))
    points = [transform_points(crop_matrix(records.points5_px[i], FIT_SIZE), records.landmarks68_px[i]) for i in pool]
    return torch.tensor(np.stack(points)).float()


def bias_report(model: FaceModel, landmarks: torch.Tensor) -> dict[str, float]:
    """What the default landmark fit makes of these faces: identity means (should be ~0) and the fit error."""
    fitted = fit_landmarks(model, landmarks, FIT_SIZE)
    mean = fitted["identity"].mean(0)
    return {
        "faces": len(landmarks),
        "identity0_mean": round(float(mean[0]), 3),
        "identity_mean_of_all": round(float(mean.mean()), 3),
        "identity_rms_of_means": round(float(mean.pow(2).mean().sqrt()), 3),
        "identity_rms": round(float(fitted["identity"].pow(2).mean().sqrt()), 3),
        "landmark_rmse_px": round(float(fitted["landmark_rmse_px"].mean()), 3),
    }


def _jaw_cost(model, cam, face_cm, landmark, start, substitute, target):
    """Mean squared error (px²) of a jaw landmark whose candidate line starts at vertex `start`."""
    try:
        row = contour_row(face_cm, int(start), int(substitute), CONTOUR_CANDIDATES, CONTOUR_INWARD, CONTOUR_BAND_CM)
    except ValueError:  # no vertex on part of the line
        return np.inf
    points = cam[:, row]
    side = float(np.sign(landmark - 8))
    chosen = (points[..., 0] / (-points[..., 2]) * side).argmax(-1)  # the outline, as FaceModel does
    chosen_points = points.gather(1, chosen[:, None, None].expand(-1, 1, 3))
    projected = model.project(chosen_points, FIT_SIZE)[:, 0, :2]
    return float((projected - target).pow(2).sum(-1).mean())


def search_round(model, npz_path, landmarks_v, targets, radius_m, jaw_radius_m):
    """One round of step 2: returns new landmark vertex ids."""
    ict = np.load(npz_path)
    mean_m = ict["vertices"].astype(np.float64) / 100.0
    face_area = int(ict["face_area_vertices"])
    face_m = mean_m[:face_area]
    original = ict["landmarks68"].astype(np.int64)
    substitutes = np.concatenate([ict["jaw_right_substitutes"], original[8:9], ict["jaw_left_substitutes"]])
    mirror = model.mirror_index[:face_area].numpy()
    fitted = fit_landmarks(model, targets, FIT_SIZE, identity_modes=0)
    with torch.no_grad():
        cam = model.to_camera(model.shape(fitted["identity"], fitted["expression"]), fitted["pose"])[:, :face_area]
        pixels = model.project(cam, FIT_SIZE)[..., :2]

    def near(landmark):
        radius = jaw_radius_m if landmark < NUM_CONTOUR_LANDMARKS else radius_m
        anchor = mean_m[original[landmark]]
        return np.nonzero((np.linalg.norm(face_m - anchor, axis=1) < radius) & (mirror < face_area))[0]

    def cost(landmark, vertices):
        if landmark < NUM_CONTOUR_LANDMARKS and landmark != 8:
            return np.array([_jaw_cost(model, cam, face_m * 100, landmark, v, substitutes[landmark],
                                       targets[:, landmark]) for v in vertices])
        errors = (pixels[:, torch.from_numpy(vertices)] - targets[:, landmark, None]).pow(2).sum(-1)
        return errors.mean(0).numpy()

    result = landmarks_v.copy()
    paired = {i for pair in MIRROR_PAIRS for i in pair}
    for left, right in MIRROR_PAIRS:
        candidates = near(left)
        total = cost(left, candidates) + cost(right, mirror[candidates])
        best = int(np.argmin(total))
        result[left], result[right] = candidates[best], mirror[candidates[best]]
    for landmark in sorted(set(range(68)) - paired):
        candidates = near(landmark)
        candidates = candidates[np.abs(face_m[candidates, 0]) < MIDLINE_MM / 1000]
        if len(candidates):
            result[landmark] = candidates[int(np.argmin(cost(landmark, candidates)))]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npz", type=Path, default=data_root() / "ict_face_model" / "ict_face_model.npz")
    parser.add_argument("--out", type=Path, default=LANDMARKS_JSON)
    parser.add_argument("--faces", type=int, default=800, help="adult training faces to calibrate on")
    parser.add_argument("--val-faces", type=int, default=None, help="val faces to measure on (default all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--radius-mm", type=float, default=12.0)
    parser.add_argument("--jaw-radius-mm", type=float, default=15.0)
    parser.add_argument("--min-age", type=int, default=18)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clock = time.time()
    train = crop_landmarks("train", args.faces, seed=1, min_age=args.min_age)
    val_adults = crop_landmarks("val", args.val_faces, seed=2, min_age=args.min_age)
    val_all = crop_landmarks("val", args.val_faces, seed=2, min_age=0)
    original = np.load(args.npz)["landmarks68"].astype(np.int64)
    model = build(args.npz, original)[0].float()
    before = {"val_adults": bias_report(model, val_adults), "val_all": bias_report(model, val_all)}
    print("before", json.dumps(before))
    landmarks_v = original.copy()
    for round_index in range(args.rounds):
        updated = search_round(model, args.npz, landmarks_v, train, args.radius_mm / 1000, args.jaw_radius_mm / 1000)
        changed = int((updated != landmarks_v).sum())
        landmarks_v = updated
        model = build(args.npz, landmarks_v)[0].float()
        report = json.dumps(bias_report(model, val_adults))
        print(f"round {round_index}: {changed} landmarks changed; val adults", report)
        if changed == 0:
            break
    after = {"val_adults": bias_report(model, val_adults), "val_all": bias_report(model, val_all)}
    print("after", json.dumps(after))
    mean_m = np.load(args.npz)["vertices"].astype(np.float64) / 100.0
    moved_mm = 1000 * np.linalg.norm(mean_m[landmarks_v] - mean_m[original], axis=1)
    record = {
        "landmarks68": [int(v) for v in landmarks_v],
        "ict_landmarks68": [int(v) for v in original],
        "moved_mm": [round(float(m), 1) for m in moved_mm],
        "how": (
            f"tools/calibrate_landmarks.py: {len(train)} adult glasses-free UTKFace training faces, dlib's 68 "
            f"points, {args.rounds} rounds, radius {args.radius_mm} mm ({args.jaw_radius_mm} mm jaw)"
        ),
        "bias_before": before,
        "bias_after": after,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} in {time.time() - clock:.0f}s")


if __name__ == "__main__":
    main()
