"""Builds the shipped `FaceModel` component from the ICT-FaceKit light archive (MIT licence).

    python tools/build_face_model.py --out weights_card/face_model

Reads `<data root>/ict_face_model/ict_face_model.npz` (centimetres, ICT axes) and writes
`config.json` + `diffusion_pytorch_model.safetensors` with the float buffers in fp16 (integer buffers
stay int64). What it decides, and why:

- Units: metres; identity: the first 80 of ICT's 100 PCA modes (already scaled to N(0, 1)
  coefficients); expression: ICT's 53 blendshapes (weights 0..1).
- Camera: the head origin sits `CAMERA_DISTANCE_M` in front of the camera (a typical
  arm's-length portrait; the perspective is mild but not orthographic). `focal_ratio` and the vertical
  head offset are then solved in closed form (linear least squares) so that the mean face at zero pose
  projects its eye centres, nose tip and mouth corners onto `alignment.CANONICAL_FIVE_POINTS`.
- Jaw contour: for each jaw landmark, `CONTOUR_CANDIDATES` vertices: ICT's substitute (a jaw line
  further back), the landmark, then points along the horizontal line of the face through it, inwards to
  `CONTOUR_INWARD` of its distance to the midline (HPEN-style "landmark marching", Zhu et al. CVPR
  2016). `FaceModel.landmark_vertex_indices` picks the one on the image outline. Measured on 2,019
  UTKFace faces with dlib's 68 points (fit without the jaw, then predict it): at |yaw| > 20° the jaw
  error falls from 8.5 px (fixed ICT vertices, 224-px crop) to 6.1-6.8 px; the substitutes alone fix only
  the side turned towards the camera and the horizontal lines alone only the side turned away.
- Albedo: without `--albedo`, no texture basis (`has_texture_basis=False`): one skin colour, the median
  cheek colour of 600 random UTKFace crops (only this average is kept), and an all-zero basis. With
  `--albedo <npz>` (from `python -m eyeglass3d.training.build_albedo`), its per-vertex mean and 80 N(0, 1)
  modes, and `texture_source` in the config says where they come from: statistics of UTKFace photos, whose
  terms (non-commercial research only) then apply to the component.
- `mirror_index`: nearest neighbour of (-x, y, z) on the mean shape, to fill occluded texture from the
  other side of the face.
- Landmarks: ICT's 68 vertices are replaced by those in `landmarks_dlib68.json` (`--landmarks`), where
  `tools/calibrate_landmarks.py` found dlib's points on adult UTKFace faces; the file records the identity
  bias of landmark fits before and after.
- Hole caps: ICT's eye and mouth openings are closed by ear-clipped caps on their boundary vertices (no new
  vertices, so the bases are unchanged), inserted after the face-area triangles so that
  `triangles[:face_area_triangles]` stays the face. Their UVs are new islands in free space of the head
  tile (ICT lays the holes out as slits), so the photo's eyes and mouth land in the texture (`cap_holes`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from eyeglass3d.geometry.alignment import CANONICAL_FIVE_POINTS  # noqa: E402
from eyeglass3d.models.face_model import COEFFICIENT_SIZES, NUM_CONTOUR_LANDMARKS, FaceModel  # noqa: E402
from eyeglass3d.paths import data_root  # noqa: E402
from eyeglass3d.render.texture import UV_TILES  # noqa: E402

CAMERA_DISTANCE_M = 0.6
CONTOUR_CANDIDATES = 12
CONTOUR_INWARD = 0.6
CONTOUR_BAND_CM = 0.3
SKIN_RGB = (0.74, 0.54, 0.45)
# Hole caps: their UV islands are packed at this many texels per UV tile, this many texels apart; the mouth
# is triangulated and laid out half open (jawOpen at this weight), so that its cap keeps a fair share of
# texels when the mouth opens.
CAP_TEXELS = 512
CAP_MARGIN_TEXELS = 4
CAP_JAW_OPEN = 0.5
LANDMARKS_JSON = Path(__file__).resolve().parent / "landmarks_dlib68.json"


def five_points(vertices: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The detector's five points on a mesh: eye centres (image-left first), nose tip, mouth corners."""
    points = vertices[landmarks]
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def calibrate_camera(mean_m: np.ndarray, landmarks: np.ndarray, distance_m: float) -> tuple[float, float, float]:
    """Focal ratio and vertical head offset mapping the mean face onto the canonical five points.

    With depth d = distance - z, the unit-crop coordinates are u = 0.5 + f·x/d and
    v = 0.5 - (f·y + f·h)/d: linear in (f, f·h). Returns (focal_ratio, head_offset_y_m, rms_unit).
    """
    points = five_points(mean_m, landmarks)
    depth = distance_m - points[:, 2]
    design = np.concatenate(
        [np.stack([points[:, 0] / depth, np.zeros(5)], 1), np.stack([-points[:, 1] / depth, -1.0 / depth], 1)]
    )
    target = np.concatenate([CANONICAL_FIVE_POINTS[:, 0] - 0.5, CANONICAL_FIVE_POINTS[:, 1] - 0.5])
    (focal, focal_offset), *_ = np.linalg.lstsq(design, target, rcond=None)
    rms = float(np.sqrt(np.mean((design @ [focal, focal_offset] - target) ** 2)))
    return float(focal), float(focal_offset / focal), rms


def contour_candidates(
    vertices: np.ndarray,
    landmarks: np.ndarray,
    substitutes: np.ndarray,
    face_area_vertices: int,
    count: int,
    inward: float,
    band: float,
) -> np.ndarray:
    """(17, count) vertex ids per jaw landmark: ICT's substitute, the landmark, then its horizontal line.

    `substitutes` (17,) is ICT's "right/left jawline" list (landmark 8 for the chin): a jaw line further
    back, where annotators put the jaw on the side turned towards the camera. The remaining candidates
    run along the face at the landmark's height, inwards to `inward` of its distance to the midline,
    where the outline of the side turned away lies.
    """
    face = vertices[:face_area_vertices]
    rows = []
    for index in range(NUM_CONTOUR_LANDMARKS):
        landmark = int(landmarks[index])
        if index == 8:
            rows.append([landmark] * count)
            continue
        rows.append(contour_row(face, landmark, int(substitutes[index]), count, inward, band))
    return np.asarray(rows, np.int64)


def contour_row(face: np.ndarray, landmark: int, substitute: int, count: int, inward: float, band: float) -> list[int]:
    """One jaw landmark's candidates (see `contour_candidates`); `face` holds the face-area vertices."""
    x, y, _ = face[landmark]
    same_side = np.sign(face[:, 0]) == np.sign(x)
    in_band = np.nonzero(same_side & (np.abs(face[:, 1] - y) < band))[0]
    row = [substitute, landmark]
    for target_x in np.linspace(x, inward * x, count - 1)[1:]:
        near = in_band[np.abs(face[in_band, 0] - target_x) < band]
        row.append(int(near[np.argmax(face[near, 2])]))  # the front surface, not the under-jaw
    return row


def boundary_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """The mesh's holes as vertex loops, each ordered as a cap over it must run (outward counter-clockwise).

    A boundary edge a→b belongs to one triangle only; the cap triangle beside it must use b→a, so each loop
    follows the boundary edges backwards.
    """
    directed = {(int(t[i]), int(t[(i + 1) % 3])) for t in triangles for i in range(3)}
    following = {b: a for a, b in directed if (b, a) not in directed}  # reversed boundary edges
    loops, seen = [], set()
    for start in sorted(following):
        if start in seen:
            continue
        loop, vertex = [], start
        while vertex not in seen:
            seen.add(vertex)
            loop.append(vertex)
            vertex = following[vertex]
        loops.append(np.asarray(loop, np.int64))
    return loops


def ear_clip(points: np.ndarray) -> np.ndarray:
    """Triangulate a simple counter-clockwise polygon (n, 2) → (n - 2, 3) indices, counter-clockwise."""

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    remaining = list(range(len(points)))
    result = []
    while len(remaining) > 3:
        count = len(remaining)
        best, best_quality = None, -np.inf
        for position in range(count):
            i, j, k = remaining[position - 1], remaining[position], remaining[(position + 1) % count]
            a, b, c = points[i], points[j], points[k]
            area = cross(a, b, c)
            if area <= 0:
                continue  # reflex corner
            others = [m for m in remaining if m not in (i, j, k)]
            inside = [cross(a, b, points[m]) >= 0 and cross(b, c, points[m]) >= 0 and cross(c, a, points[m]) >= 0
                      for m in others]
            if any(inside):
                continue
            # Prefer well-shaped ears: area over the squared longest side.
            quality = area / max(np.sum((a - b) ** 2), np.sum((b - c) ** 2), np.sum((c - a) ** 2))
            if quality > best_quality:
                best, best_quality = position, quality
        if best is None:
            raise ValueError("polygon is not simple or not counter-clockwise")
        result.append((remaining[best - 1], remaining[best], remaining[(best + 1) % len(remaining)]))
        remaining.pop(best)
    result.append(tuple(remaining))
    return np.asarray(result, np.int64)


def uv_occupancy(uv_coords: np.ndarray, uv_triangles: np.ndarray, texels: int) -> np.ndarray:
    """(texels, UV_TILES·texels) bool: which texels of the atlas (row 0 = v 1) the UV islands cover."""
    occupied = np.zeros((texels, UV_TILES * texels), np.uint8)
    corners = np.stack([uv_coords[..., 0], 1.0 - uv_coords[..., 1]], -1)[uv_triangles] * texels
    for triangle in corners:
        cv2.fillPoly(occupied, [np.round(triangle * 4).astype(np.int32)], 1, shift=2)
    return occupied.astype(bool)


def cap_holes(
    reference_cm: np.ndarray,
    triangles: np.ndarray,
    uv_coords: np.ndarray,
    uv_triangles: np.ndarray,
    face_area_vertices: int,
    texels: int = CAP_TEXELS,
    margin: int = CAP_MARGIN_TEXELS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Close the eye and mouth holes: (cap triangles (C, 3), their uv_triangles (C, 3), new uv_coords (U, 2)).

    The holes are the boundary loops within the face area (the neck's open end is left open). Each is
    triangulated by ear clipping seen from the front (x, y of `reference_cm`, a pose where the hole is open),
    reusing its boundary vertices, so no basis needs new rows. In ICT's UV layout the holes are slits (the eyes
    0.004 high), so each cap gets its own UV island: the same front view at the face's texel density, packed
    into free atlas space (tile 1 first, `margin` texels apart at `texels` per tile); the new UVs are appended
    after `uv_coords`, so the cap vertices sit on a UV seam.
    """
    face_triangles = np.all(triangles < face_area_vertices, axis=1)
    corners_cm = reference_cm[triangles[face_triangles]]
    corners_uv = uv_coords[uv_triangles[face_triangles]]
    area_cm = np.linalg.norm(np.cross(corners_cm[:, 1] - corners_cm[:, 0], corners_cm[:, 2] - corners_cm[:, 0]), axis=1)
    edges_uv = corners_uv[:, 1:] - corners_uv[:, :1]
    area_uv = np.abs(edges_uv[:, 0, 0] * edges_uv[:, 1, 1] - edges_uv[:, 0, 1] * edges_uv[:, 1, 0])
    uv_per_cm = float(np.sqrt(area_uv.sum() / area_cm.sum()))

    occupied = uv_occupancy(uv_coords, uv_triangles, texels)
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    occupied = cv2.dilate(occupied.astype(np.uint8), kernel).astype(bool)
    loops = [loop for loop in boundary_loops(triangles) if loop.max() < face_area_vertices]
    loops.sort(key=lambda loop: -np.ptp(reference_cm[loop, 0]) * np.ptp(reference_cm[loop, 1]))  # biggest first
    cap_triangles, cap_uv_triangles, new_uv = [], [], []
    for loop in loops:
        front = reference_cm[loop, :2]
        local = ear_clip(front)
        island = (front - front.min(0)) * uv_per_cm  # UDIM units: one texel is 1/texels on both axes
        height, width = np.ceil(island.max(0)[::-1] * texels).astype(int) + 1 + 2 * margin
        spot = _free_spot(occupied, height, width)
        if spot is None:
            raise ValueError("no free atlas space for a hole cap")
        row, col = spot
        occupied[row : row + height, col : col + width] = True
        origin = np.array([(col + margin) / texels, 1.0 - (row + height - margin) / texels])
        first = len(uv_coords) + sum(len(block) for block in new_uv)
        new_uv.append(origin + island)
        cap_triangles.append(loop[local])
        cap_uv_triangles.append(first + local)
    return np.concatenate(cap_triangles), np.concatenate(cap_uv_triangles), np.concatenate(new_uv)


def _free_spot(occupied: np.ndarray, height: int, width: int) -> tuple[int, int] | None:
    """Top-left (row, col) of a free height×width block, scanning tile 1 (the head) before tile 0."""
    texels = occupied.shape[0]
    integral = np.pad(occupied.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    used = integral[height:, width:] - integral[:-height, width:]
    used = used - integral[height:, :-width] + integral[:-height, :-width]
    for tile in (1, 0):
        columns = np.arange(used.shape[1])
        in_tile = (columns >= tile * texels) & (columns + width <= (tile + 1) * texels)
        rows, cols = np.nonzero((used == 0) & in_tile[None])
        if len(rows):
            return int(rows[0]), int(cols[0])
    return None


def mirror_index(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distance, index = cKDTree(vertices).query(vertices * np.array([-1.0, 1.0, 1.0]))
    return index.astype(np.int64), distance


def build(
    npz_path: Path, landmarks: np.ndarray | None = None, albedo_path: Path | None = None
) -> tuple[FaceModel, dict]:
    """The component and a report of its calibration; `landmarks` (68,) overrides the landmark vertices,
    `albedo_path` (from `eyeglass3d.training.build_albedo`) gives the texture mean and basis."""
    ict = np.load(npz_path)
    identity_dim = COEFFICIENT_SIZES["identity"]
    mean_m = ict["vertices"].astype(np.float64) / 100.0
    landmarks = (ict["landmarks68"] if landmarks is None else np.asarray(landmarks)).astype(np.int64)
    face_area_vertices = int(ict["face_area_vertices"])
    focal_ratio, head_offset_y_m, calibration_rms = calibrate_camera(mean_m, landmarks, CAMERA_DISTANCE_M)
    mirror, mirror_distance_m = mirror_index(mean_m)
    substitutes = np.concatenate([ict["jaw_right_substitutes"], landmarks[8:9], ict["jaw_left_substitutes"]])
    candidates = contour_candidates(
        mean_m * 100.0, landmarks, substitutes, face_area_vertices, CONTOUR_CANDIDATES, CONTOUR_INWARD, CONTOUR_BAND_CM
    )
    num_vertices = len(mean_m)
    expression_names = [str(name) for name in ict["expression_names"]]
    reference_cm = ict["vertices"] + CAP_JAW_OPEN * ict["expression_basis"][expression_names.index("jawOpen")]
    face_area_triangles = int(ict["face_area_triangles"])
    cap_triangles, cap_uv_triangles, cap_uv = cap_holes(
        reference_cm.astype(np.float64), ict["faces"], ict["uv_coords"], ict["uv_faces"], face_area_vertices
    )
    # The caps join the face-area triangles, so triangles[:face_area_triangles] stays "the face".
    triangles = np.concatenate([ict["faces"][:face_area_triangles], cap_triangles, ict["faces"][face_area_triangles:]])
    uv_triangles = np.concatenate(
        [ict["uv_faces"][:face_area_triangles], cap_uv_triangles, ict["uv_faces"][face_area_triangles:]]
    )
    arrays = {
        "mean_shape_m": mean_m,
        "identity_basis_m": ict["identity_basis"][:identity_dim].astype(np.float64) / 100.0,
        "expression_basis_m": ict["expression_basis"].astype(np.float64) / 100.0,
        "texture_mean": np.tile(np.asarray(SKIN_RGB), (num_vertices, 1)),
        "texture_basis": np.zeros((COEFFICIENT_SIZES["texture"], num_vertices, 3)),
        **(albedo_arrays(albedo_path, num_vertices) if albedo_path is not None else {}),
        "triangles": triangles.astype(np.int64),
        "uv_coords": np.concatenate([ict["uv_coords"], cap_uv]),
        "uv_triangles": uv_triangles.astype(np.int64),
        "landmark_indices": landmarks,
        "contour_candidate_indices": candidates,
        "mirror_index": mirror,
    }
    model = FaceModel.from_arrays(
        arrays,
        expression_names=expression_names,
        face_area_vertices=face_area_vertices,
        face_area_triangles=face_area_triangles + len(cap_triangles),
        focal_ratio=focal_ratio,
        camera_distance_m=CAMERA_DISTANCE_M,
        head_offset_y_m=head_offset_y_m,
        has_texture_basis=albedo_path is not None,
        texture_source=albedo_source(albedo_path) if albedo_path is not None else "",
    )
    report = {
        "focal_ratio": focal_ratio,
        "head_offset_y_m": head_offset_y_m,
        "five_point_rms_unit": calibration_rms,
        "mirror_max_mm": 1000 * mirror_distance_m.max(),
        "cap_triangles": len(cap_triangles),
        "mirror_median_mm": 1000 * np.median(mirror_distance_m),
    }
    return model, report


def albedo_arrays(albedo_path: Path, num_vertices: int) -> dict[str, np.ndarray]:
    """texture_mean (N, 3) and texture_basis (80, N, 3) from a build_albedo npz (fewer modes are zero-padded)."""
    with np.load(albedo_path) as albedo:
        mean, basis = albedo["texture_mean"].astype(np.float64), albedo["texture_basis"].astype(np.float64)
    modes = COEFFICIENT_SIZES["texture"]
    if mean.shape != (num_vertices, 3) or basis.shape[1:] != (num_vertices, 3) or len(basis) > modes:
        raise ValueError(f"{albedo_path}: texture arrays {mean.shape}, {basis.shape} do not fit {num_vertices} "
                         "vertices")
    padded = np.zeros((modes, num_vertices, 3))
    padded[: len(basis)] = basis
    return {"texture_mean": mean, "texture_basis": padded}


def albedo_source(albedo_path: Path) -> str:
    with np.load(albedo_path) as albedo:
        return str(albedo["provenance"])


def fp16_errors_mm(model: FaceModel) -> dict[str, float]:
    """Largest absolute change (mm) that storing each metric buffer in fp16 causes."""
    return {
        name: 1000 * float((buffer - buffer.half().double()).abs().max())
        for name, buffer in model.named_buffers()
        if name.endswith("_m")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--npz", type=Path, default=data_root() / "ict_face_model" / "ict_face_model.npz")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "weights_card" / "face_model")
    parser.add_argument(
        "--landmarks", type=Path, default=LANDMARKS_JSON, help="landmark vertices from calibrate_landmarks.py; "
        "ICT's own when the file is missing"
    )
    parser.add_argument(
        "--albedo", type=Path, default=None, help="texture mean and basis from eyeglass3d.training.build_albedo "
        "(sets has_texture_basis; UTKFace-derived: non-commercial research only)"
    )
    args = parser.parse_args()

    landmarks = None
    if args.landmarks.is_file():
        landmarks = np.asarray(json.loads(args.landmarks.read_text())["landmarks68"], np.int64)
        print(f"landmark vertices from {args.landmarks.name}")
    model, report = build(args.npz, landmarks, args.albedo)
    if args.albedo is not None:
        print(f"texture basis from {args.albedo}: {model.config.texture_source}")
    for name, value in report.items():
        print(f"{name}: {value:.6g}")
    reference = {name: buffer.clone() for name, buffer in model.double().named_buffers()}
    for name, error in fp16_errors_mm(model).items():
        print(f"fp16 max error {name}: {error:.4f} mm")
    model.half().save_pretrained(args.out, safe_serialization=True)  # .half() leaves integer buffers alone

    loaded = FaceModel.from_pretrained(args.out).float()
    for name, buffer in loaded.named_buffers():
        if buffer.is_floating_point():
            error = float((buffer.double() - reference[name]).abs().max())
            shown = f"{1000 * error:.4f} mm" if name.endswith("_m") else f"{error:.2g}"
            print(f"reloaded {name}: {buffer.dtype}, max error {shown}")
        else:
            assert buffer.dtype == torch.long and torch.equal(buffer, reference[name]), name
    print(f"wrote {args.out}; integer buffers reload as int64, unchanged")


if __name__ == "__main__":
    main()
