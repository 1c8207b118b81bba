"""Held-out figures of the 3D reconstruction (issue #5), measured through the pipeline's public `reconstruct`.

    python -m eyeglass3d.evaluation.eval_reconstruction --split val|test [--weights weights_card] [--limit N]
        [--threads 2] [--json weights_card/eval/reconstruction_<split>.json]

Settings are chosen on `val`; `test` only reports. Everything runs on the split's glasses-free faces, starting
from the photo like the product, with whatever the model repo ships: while no regressor is shipped the pipeline
fits the face model to its 68 landmarks (`output.stages["regressor"]` says which, and is copied into the report).
A face the detector misses is a failure, counted in every figure's headline and also reported on its own:
NME 0.5 (`metrics.MISSED_NME`), an unbounded shape change (so it lifts the median), no photometric figure.

  (a) landmark reprojection: the reconstructed mesh's 68 landmark vertices, placed with the output's pose
      in the canonical crop's camera, projected and mapped back to photo pixels, vs dlib's labels of the
      photo; NME = mean point error / outer-eye-corner distance (36, 45). The pipeline's own 2D landmarks
      (`output.landmarks`) are scored the same way for reference.
  (b) glasses invariance: the face-area shape (identity + expression, model space) of the clean photo vs
      the same photo wearing synthetic glasses (drawn with the evaluation seed), RMS vertex distance in mm
      after a rigid Procrustes alignment (rotation + translation, no scale); with glasses removed (the
      product) and with `remove_glasses=False` (glasses left in). The scale next to it: the median RMS
      between two different people's clean reconstructions (face i vs face i+1).
  (c) photometric error: albedo × SH shading (`FaceModel.shade`) of the face-area mesh rasterised into the
      canonical crop, vs the inpainted photo's crop, mean absolute RGB error (0..255) over the rendered pixels.
  (d) latency: median of the summed `output.timings_ms` of the clean reconstructions, next to one ResNet-50
      forward at 224² measured in the same process, folded and in both precisions (`benchmark`'s yardsticks).

The crop frame of every measure is the one `reconstruct` used: the output's five points.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eyeglass3d.errors import FaceNotFoundError
from eyeglass3d.evaluation.metrics import MISSED_NME, nme_or_miss
from eyeglass3d.evaluation.overrides import apply_overrides, parse_overrides
from eyeglass3d.evaluation.report import SPLITS, default_json, public_path, write_report
from eyeglass3d.geometry import alignment
from eyeglass3d.paths import default_weights

EVAL_SEED = 20221  # glasses drawn for evaluation only; training seeds are small integers
RENDER_SIZE = 224  # canonical crop side for the photometric figure (the landmark fit's crop size)
PROJECT_SIZE = 224  # any size gives the same photo pixels: projection and crop both scale with it


# ---------------------------------------------------------------------------------------------- geometry
def procrustes_rms_mm(source_m: np.ndarray, target_m: np.ndarray) -> float:
    """RMS distance (mm) between corresponding vertices (N, 3) in metres after the rigid (rotation +
    translation, no scale) alignment of `source` onto `target` that minimises it (Kabsch)."""
    source = np.asarray(source_m, np.float64)
    target = np.asarray(target_m, np.float64)
    source_centred = source - source.mean(0)
    target_centred = target - target.mean(0)
    u, _, vt = np.linalg.svd(source_centred.T @ target_centred)
    sign = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ np.diag([1.0, 1.0, sign]) @ vt  # row vectors: aligned = source_centred @ rotation
    residual = source_centred @ rotation - target_centred
    return float(np.sqrt((residual**2).sum(1).mean()) * 1e3)


def face_area_shape(face_model, coefficients: dict[str, np.ndarray]) -> np.ndarray:
    """(face_area_vertices, 3) model-space vertices (metres) of identity + expression."""
    identity = torch.as_tensor(coefficients["identity"], dtype=torch.float32)[None]
    expression = torch.as_tensor(coefficients["expression"], dtype=torch.float32)[None]
    with torch.inference_mode():
        vertices = face_model.shape(identity, expression)[0]
    return vertices[: face_model.config.face_area_vertices].numpy()


def camera_vertices(face_model, coefficients: dict[str, np.ndarray]) -> torch.Tensor:
    """(1, N, 3) camera-space vertices in the canonical crop's camera (as `_textured_mesh` places them)."""
    as_tensor = {name: torch.as_tensor(value, dtype=torch.float32)[None] for name, value in coefficients.items()}
    vertices = face_model.shape(as_tensor["identity"], as_tensor["expression"])
    return face_model.to_camera(vertices, as_tensor["pose"])


def projected_landmarks_px(face_model, coefficients: dict[str, np.ndarray], points5: np.ndarray) -> np.ndarray:
    """(68, 2) photo pixels of the mesh's landmark vertices (jaw on the visible outline)."""
    with torch.inference_mode():
        landmarks_cam = face_model.landmarks(camera_vertices(face_model, coefficients))
        crop_px = face_model.project(landmarks_cam, PROJECT_SIZE)[0, :, :2].double().numpy()
    back = alignment.invert_affine(alignment.crop_matrix(points5, PROJECT_SIZE))
    return alignment.transform_points(back, crop_px)


def photometric_error(face_model, coefficients: dict[str, np.ndarray], photo: np.ndarray, points5: np.ndarray,
                      size: int = RENDER_SIZE) -> tuple[float, int]:
    """Mean absolute RGB error (0..255) of albedo × SH shading rendered into the canonical crop vs the photo's
    crop, over the pixels the face-area mesh covers; also how many pixels that is."""
    from eyeglass3d.render.rasterizer import interpolate, rasterize

    as_tensor = {name: torch.as_tensor(value, dtype=torch.float32)[None] for name, value in coefficients.items()}
    with torch.inference_mode():
        camera = camera_vertices(face_model, coefficients)
        normals = face_model.vertex_normals(camera)
        colours = face_model.shade(face_model.albedo(as_tensor["texture"]), normals, as_tensor["lighting"])
        projected = face_model.project(camera, size)
        # project() uses the crop's pixel coordinates (pixel centres on integers, as cv2 warps the crop);
        # the rasteriser puts pixel centres at +0.5.
        vertices_px = torch.cat([projected[..., :2] + 0.5, projected[..., 2:]], -1)
        triangles = face_model.triangles[: face_model.config.face_area_triangles]
        fragments = rasterize(vertices_px, triangles, size, size)
        rendered = interpolate(colours.clamp(0, 1), triangles, fragments)[0].numpy() * 255.0
    covered = fragments.triangle_index[0].numpy() >= 0
    crop = alignment.warp_crop(photo, alignment.crop_matrix(points5, size), size).astype(np.float64)
    pixels = int(covered.sum())
    if pixels == 0:
        return float("nan"), 0
    return float(np.abs(rendered[covered] - crop[covered]).mean()), pixels


# ---------------------------------------------------------------------------------------------- report
def summary(values: list[float], digits: int = 4) -> dict[str, float | int | None]:
    values = [value for value in values if np.isfinite(value)]
    if not values:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": round(float(np.mean(values)), digits), "median": round(float(np.median(values)), digits),
            "n": len(values)}


def with_misses(values: list[float], digits: int = 4) -> dict:
    """Headline over every face (a miss is already in `values` as its failure score: MISSED_NME or inf), the miss
    count, and the summary over the faces found."""
    finite = [value for value in values if np.isfinite(value)]
    return {"median": round(float(np.median(values)), digits) if values else None, "n": len(values),
            "missed": len(values) - len(finite), "found": summary(finite, digits)}


def nme_with_misses(values: list[float]) -> dict:
    """NME over every face (misses at MISSED_NME), the miss count, and the mean over the faces found."""
    found = [value for value in values if value < MISSED_NME]
    return {**summary(values), "missed": len(values) - len(found), "found": summary(found)}


def invariance(glasses_rms: list[float], between_median: float | None) -> dict:
    """Shape change with misses as infinite changes: the median counts them, the mean is over the found faces."""
    entry = with_misses(glasses_rms, 3)
    entry["median_over_between_people_median"] = (
        round(entry["median"] / between_median, 4) if entry["median"] is not None and np.isfinite(entry["median"])
        and between_median else None
    )
    return entry


def shape_source(stages: dict | None) -> str:
    """Says when removal cannot change the shape: the landmark fit uses landmarks predicted before removal."""
    if stages is None or stages.get("regressor") == "network":
        return "regressor network: the shape is regressed from the (inpainted) photo"
    return ("landmark fit (no regressor): the shape follows the 68 landmarks, which the pipeline predicts on the "
            "photo before removing glasses, so removal changes texture and light but not the shape")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(default_weights()), help="model repo folder or Hub id")
    parser.add_argument("--labels", type=Path, default=None, help="teacher labels (default: the UTKFace cache)")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--limit", type=int, default=0, help="first N glasses-free faces (0: all; writes to runs/)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resnet-repeats", type=int, default=20)
    parser.add_argument("--set", nargs="*", default=[], metavar="COMPONENT.KEY=VALUE",
                        help="a config value changed for an A/B on val, e.g. regressor.test_time_shift=0 "
                             "(the report goes to runs/ unless --json)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from eyeglass3d import Eyeglass3DPipeline
    from eyeglass3d.evaluation.benchmark import resnet50_forward_ms, resnet50_yardstick
    from eyeglass3d.training.compositor import GlassesCompositor
    from eyeglass3d.training.datasets import FaceRecords

    pipe = Eyeglass3DPipeline.from_pretrained(args.weights)
    face_model = pipe.face_model
    apply_overrides({name: getattr(pipe, name) for name in ("landmarker", "regressor", "parser", "inpainter")
                     if getattr(pipe, name, None) is not None}, parse_overrides(args.set))
    records = FaceRecords(args.split, face_set="utkface", labels_path=args.labels, glasses="without")
    count = min(len(records), args.limit) if args.limit else len(records)
    compositor = GlassesCompositor(seed=EVAL_SEED)

    nme_mesh, nme_landmarker, photometric, photometric_pixels, totals_ms = [], [], [], [], []
    clean_shapes: list[np.ndarray | None] = []
    rms = {"glasses_removed": [], "glasses_left_in": []}
    missed = {"clean": 0, "glasses_removed": 0, "glasses_left_in": 0}
    lost = float("inf")  # the shape change of a face not found: a failure that any median counts
    glasses_found = 0  # glasses photos in which the pipeline's mask is not empty
    stages: dict[str, dict | None] = {"clean": None, "glasses_removed": None}
    for index in tqdm(range(count), desc=f"reconstruct {args.split}", mininterval=10):
        record = records[index]
        target = record.landmarks68_px
        try:
            out = pipe.reconstruct(record.image)
        except FaceNotFoundError:
            missed["clean"] += 1
            clean_shapes.append(None)
            nme_mesh.append(nme_or_miss(None, target))
            nme_landmarker.append(nme_or_miss(None, target))
            for key in rms:
                rms[key].append(lost)
            continue
        stages["clean"] = out.stages
        totals_ms.append(float(sum(out.timings_ms.values())))
        points5 = out.points5.astype(np.float64)
        nme_mesh.append(nme_or_miss(projected_landmarks_px(face_model, out.coefficients, points5), target))
        nme_landmarker.append(nme_or_miss(out.landmarks, target))
        error, pixels = photometric_error(face_model, out.coefficients, np.asarray(out.inpainted), points5)
        photometric.append(error)
        photometric_pixels.append(pixels)
        clean = face_area_shape(face_model, out.coefficients)
        clean_shapes.append(clean)

        sample = compositor(record.image, target, np.random.default_rng([EVAL_SEED, index]))
        for key, remove in (("glasses_removed", True), ("glasses_left_in", False)):
            try:
                worn = pipe.reconstruct(sample.image, remove_glasses=remove)
            except FaceNotFoundError:
                missed[key] += 1
                rms[key].append(lost)
                continue
            if remove:
                glasses_found += bool(worn.glasses_mask.any())
                stages["glasses_removed"] = worn.stages
            rms[key].append(procrustes_rms_mm(face_area_shape(face_model, worn.coefficients), clean))

    between = [procrustes_rms_mm(a, b) for a, b in zip(clean_shapes, clean_shapes[1:])
               if a is not None and b is not None]
    between_median = float(np.median(between)) if between else None
    resnet_ms = {precision: resnet50_forward_ms(args.resnet_repeats, resnet50_yardstick(bf16=precision == "policy"))
                 for precision in ("fp32", "policy")}
    total_median = statistics.median(totals_ms) if totals_ms else None

    report: dict = {
        "split": args.split,
        "n": count,
        "missed_faces": missed,  # no detection: a failure in that condition (see the module doc)
        "weights": public_path(args.weights),
        "stages": stages,  # how each stage was produced (network or fallback), last face of each kind
        "landmark_reprojection_nme": {
            "note": "vs dlib's labels of the photo, / outer-eye-corner distance (36, 45); misses score 0.5",
            "mesh": nme_with_misses(nme_mesh),
            "pipeline_2d_landmarks": nme_with_misses(nme_landmarker),
        },
        "glasses_invariance_rms_mm": {
            "note": "face-area identity+expression shape, clean vs synthetic glasses (eval seed), RMS mm after "
                    "rigid Procrustes (no scale); scale: median RMS between face i and face i+1 (clean)",
            "face_area_vertices": face_model.config.face_area_vertices,
            "shape_source": shape_source(stages["clean"]),
            "glasses_removed": invariance(rms["glasses_removed"], between_median),
            "glasses_left_in": invariance(rms["glasses_left_in"], between_median),
            "between_people": summary(between, 3),  # consecutive clean faces both found
            "glasses_mask_found_share": round(glasses_found / len(rms["glasses_removed"]), 4)
            if rms["glasses_removed"] else None,
        },
        "photometric_error": {
            "note": f"mean |albedo x SH shading - inpainted photo| in 0..255 RGB over the rendered face-area pixels "
                    f"of the {RENDER_SIZE}-px canonical crop",
            "mae_rgb": summary(photometric, 3),
            "rendered_pixels": summary([float(p) for p in photometric_pixels], 1),
        },
        "latency_ms": {
            "reconstruct_median": round(total_median, 1) if total_median is not None else None,
            "resnet50_224_forward_median": {key: round(value, 1) for key, value in resnet_ms.items()},
            "ratio": {key: round(total_median / value, 2) for key, value in resnet_ms.items()}
            if total_median is not None else None,
            "note": "sum of output.timings_ms of the clean reconstructions found; ResNet-50 folded, fp32 and under "
                    "the pipeline's bf16 rule ('policy'), in the same process",
        },
        "threads": args.threads,
        "overrides": parse_overrides(args.set),
    }
    json_path = args.json or default_json("reconstruction", args.split, full=not (args.limit or args.set))
    return write_report(report, json_path, module="eyeglass3d.evaluation.eval_reconstruction", argv=argv)


if __name__ == "__main__":
    main()
