"""A per-vertex albedo model (mean + 80 PCA modes) from glasses-free UTKFace training photos.

    python -m eyeglass3d.training.build_albedo --out cache/albedo_model.npz --faces 3000 --threads 1
    python tools/build_face_model.py --albedo cache/albedo_model.npz      # then: has_texture_basis = True

Per face (glasses-free TRAINING faces only; the UTKFace terms apply: non-commercial research only):

1. Canonical 224-px crop and dlib's 68 landmarks in it; `fit_landmarks`, then `fit_photometric` with the
   model's current albedo (a constant skin colour): identity, expression, pose and SH lighting.
2. Every vertex is sampled in the crop (bilinear, lightly blurred: the vertices are 2-4 px apart) and divided
   by the fitted shading *without its constant term*: the SH irradiance per channel over its DC part, so
   directional light leaves the albedo but skin tone and exposure stay in it (a constant albedo would
   otherwise hand the skin colour to the light).
3. Weight per vertex: unoccluded and facing the camera (`vertex_visibility`, grazing angles ramp to 0),
   inside the landmark-drawn skin, nose or lips (eyes, brows, mouth interior, hair and background are out),
   and not a luminance outlier of the face (fringes, shadows, highlights: > 3 MADs darker or > 4 brighter,
   or a clipped channel).
4. Missing vertices are filled from their mirror vertex, then from the population mean scaled by the face's
   own mean colour ratio (so that the head and neck take the face's tone, not a stranger's), with the weights
   as blending alphas.
5. PCA of the filled albedos (Gram matrix: faces ≪ 3 × vertices). The basis is scaled by each mode's
   standard deviation, so coefficients are N(0, 1) like the identity's.

Work is done per vertex, in the face model's own layout, rather than through a UV texture: `FaceModel`
stores per-vertex albedo, the vertices are as dense as the 224-px crop's pixels, and the PCA stays small
(33,744 values per face). Chunks of faces go to `<out>.chunks/` as they finish, so an interrupted run
resumes (with the same settings and face model; otherwise it stops and asks for the folder to be deleted);
the log is `<out>.log`. Held-out val faces, processed the same way, measure how much better the
basis reconstructs a new face than the mean alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from eyeglass3d.geometry.fitting import fit_landmarks
from eyeglass3d.geometry.lighting import LAMBERT_BAND_CONSTANTS, SH_COEFFICIENTS, _Y0, sh_basis
from eyeglass3d.geometry.photometric_fit import (
    fit_photometric,
    mask_at,
    sample_image,
    skin_mask,
    to_images,
    vertex_visibility,
)
from eyeglass3d.models.face_model import FaceModel
from eyeglass3d.paths import REPO_ROOT, default_weights
from eyeglass3d.training.datasets import FaceRecords, canonical_crop

LOG = logging.getLogger("eyeglass3d.build_albedo")
CROP_SIZE = 224
ALBEDO_LABELS = ("skin", "nose", "lips")
SAMPLE_BLUR_PX = 0.7
# Luminance outliers of a face's own albedo, in robust standard deviations (1.4826 MAD) below / above its median.
DARK_OUTLIER, BRIGHT_OUTLIER = 3.0, 4.0
CLIPPED = 0.98
MIN_SHADING = 0.25
TEXTURE_MODES = 80
PROVENANCE = (
    "Albedo PCA (mean + {modes} modes) from {faces} glasses-free UTKFace training photos, fitted and de-shaded by "
    "eyeglass3d.training.build_albedo. UTKFace terms: non-commercial research only; the photos are not "
    "redistributed, only these statistics."
)


# ---------------------------------------------------------------------------------------------- per face


def normalised_irradiance(normals: torch.Tensor, lighting: torch.Tensor, ambient: float) -> torch.Tensor:
    """(B, N, 3) SH irradiance per channel divided by its constant (DC) part: the shading's *shape*."""
    coefficients = lighting.reshape(len(lighting), 3, SH_COEFFICIENTS).clone()
    coefficients[..., 0] += ambient / (LAMBERT_BAND_CONSTANTS[0] * _Y0)
    dc = (LAMBERT_BAND_CONSTANTS[0] * _Y0 * coefficients[..., 0]).clamp_min(1e-3)  # (B, 3)
    return torch.einsum("bnk,bck->bnc", sh_basis(normals), coefficients) / dc[:, None]


def face_albedo(
    face_model: FaceModel, crops: np.ndarray, landmarks_px: np.ndarray, coefficients: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3 for a batch of crops: (albedo (B, N, 3) in [0, 1]-ish, weight (B, N) in [0, 1])."""
    size = crops.shape[1]
    with torch.no_grad():
        vertices = face_model.shape(coefficients["identity"], coefficients["expression"])
        camera = face_model.to_camera(vertices, coefficients["pose"])
        normals = face_model.vertex_normals(camera)
        projected = face_model.project(camera, size)
        weight = vertex_visibility(camera, normals, projected, face_model.triangles, size)
        masks = torch.from_numpy(skin_mask(landmarks_px, size, ALBEDO_LABELS))
        weight = weight * mask_at(masks, projected[..., :2])
        images = to_images(np.stack([cv2.GaussianBlur(crop, (0, 0), SAMPLE_BLUR_PX) for crop in crops]))
        colours = sample_image(images, projected[..., :2])
        shading = normalised_irradiance(normals, coefficients["lighting"], face_model.config.ambient_light)
        albedo = colours / shading.clamp_min(MIN_SHADING)
        weight = weight * (shading.amin(-1) > MIN_SHADING) * (colours.amax(-1) < CLIPPED)
        luminance = albedo @ torch.tensor([0.299, 0.587, 0.114])
        for face in range(len(albedo)):
            trusted = weight[face] > 0.5
            if int(trusted.sum()) < 50:
                weight[face] = 0.0
                continue
            median = luminance[face, trusted].median()
            spread = 1.4826 * (luminance[face, trusted] - median).abs().median().clamp_min(1e-3)
            low, high = median - DARK_OUTLIER * spread, median + BRIGHT_OUTLIER * spread
            inlier = (luminance[face] > low) & (luminance[face] < high)
            weight[face] = weight[face] * inlier
    return albedo.clamp(0.0, 1.5), weight


def fill_albedo(
    albedo: np.ndarray, weight: np.ndarray, mirror_index: np.ndarray, population_mean: np.ndarray
) -> np.ndarray:
    """Step 4: (B, N, 3) albedos with missing vertices (weight < 1) blended towards mirror, then scaled mean."""
    albedo = np.asarray(albedo, np.float32)
    weight = np.clip(np.asarray(weight, np.float32), 0.0, 1.0)[..., None]
    mirrored, mirror_weight = albedo[:, mirror_index], weight[:, mirror_index]
    observed = (weight + mirror_weight) > 0
    own = np.where(observed, (weight * albedo + mirror_weight * mirrored) / np.maximum(weight + mirror_weight, 1e-6), 0)
    # The face's colour relative to the population, over what it shows: fills the rest in its tone.
    ratio = (weight * albedo).sum(1) / np.maximum((weight * population_mean[None]).sum(1), 1e-6)  # (B, 3)
    fallback = population_mean[None] * ratio[:, None]
    alpha = np.clip(weight + mirror_weight * (1.0 - weight), 0.0, 1.0)
    return (alpha * own + (1.0 - alpha) * fallback).astype(np.float32)


def population_mean(albedo: np.ndarray, weight: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Weighted mean albedo per vertex (N, 3) over faces; `default` (3,) where no face shows a vertex."""
    total = weight.sum(0)[..., None]
    mean = (albedo * weight[..., None]).sum(0) / np.maximum(total, 1e-6)
    return np.where(total > 1.0, mean, default).astype(np.float32)


# ---------------------------------------------------------------------------------------------- PCA


def albedo_pca(samples: np.ndarray, modes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, D) samples → mean (D,), orthonormal basis (K, D) and standard deviations (K,), K ≤ min(modes, M - 1).

    Through the M × M Gram matrix (M faces ≪ D values), in float64.
    """
    samples = np.asarray(samples, np.float64)
    mean = samples.mean(0)
    centred = samples - mean
    gram = centred @ centred.T
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    order = np.argsort(eigenvalues)[::-1][: min(modes, len(samples) - 1)]
    eigenvalues = np.clip(eigenvalues[order], 1e-12, None)
    basis = (centred.T @ eigenvectors[:, order]) / np.sqrt(eigenvalues)  # (D, K), unit columns
    std = np.sqrt(eigenvalues / (len(samples) - 1))
    return mean, basis.T, std


def project(samples: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Reconstruction of (M, D) samples from an orthonormal basis (K, D)."""
    return mean + ((samples - mean) @ basis.T) @ basis


# ---------------------------------------------------------------------------------------------- driver


def process(face_model: FaceModel, records: FaceRecords, indices: np.ndarray, iterations: int) -> dict:
    """Steps 1-3 for some records: albedo (B, N, 3) float16, weight (B, N) uint8 (0..255) and fit figures."""
    crops, landmarks = zip(
        *[canonical_crop(records.image(i), records.points5_px[i], records.landmarks68_px[i], CROP_SIZE)[:2]
          for i in indices]
    )
    crops, landmarks = np.stack(crops), np.stack(landmarks)
    fitted = fit_landmarks(face_model, torch.from_numpy(landmarks), CROP_SIZE)
    refined = fit_photometric(face_model, crops, torch.from_numpy(landmarks), fitted, iterations=iterations)
    albedo, weight = face_albedo(face_model, crops, landmarks, refined)
    return {
        "files": np.array([records.files[i] for i in indices]),
        "albedo": albedo.numpy().astype(np.float16),
        "weight": np.rint(weight.numpy() * 255).astype(np.uint8),
        "landmark_rmse_px": refined["landmark_rmse_px"].numpy(),
        "photometric_error": refined["photometric_error"].numpy(),
        "identity": refined["identity"].numpy(),
        "lighting": refined["lighting"].numpy(),
    }


def run_chunks(face_model, records, order, chunk_dir: Path, chunk_size: int, iterations: int, label: str) -> dict:
    """Process `order` in chunks saved under `chunk_dir` (existing ones are kept); returns them concatenated."""
    from tqdm import tqdm

    chunk_dir.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(order), chunk_size))
    clock = time.time()
    done = 0
    for start in tqdm(starts, desc=label, mininterval=10):
        path = chunk_dir / f"{label}_{start:06d}_{len(order)}.npz"
        if path.is_file():
            continue
        indices = order[start : start + chunk_size]
        result = process(face_model, records, indices, iterations)
        np.savez(path.with_suffix(".tmp.npz"), **result)
        path.with_suffix(".tmp.npz").rename(path)
        done += len(indices)
        LOG.info("%s chunk %d: %d faces, landmark RMSE %.2f px, photometric %.3f, %.0f ms/face", label, start,
                 len(indices), result["landmark_rmse_px"].mean(), result["photometric_error"].mean(),
                 1000 * (time.time() - clock) / done)
    parts = [dict(np.load(chunk_dir / f"{label}_{start:06d}_{len(order)}.npz")) for start in starts]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def heldout_errors(filled: np.ndarray, weight: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> dict:
    """Mean absolute albedo error over the observed vertices of held-out faces: mean only vs the basis."""
    observed = weight[..., None].repeat(3, -1).reshape(len(filled), -1) > 0.5
    flat = filled.reshape(len(filled), -1)
    reconstructed = project(flat, mean, basis)

    def error(estimate):
        return float(np.abs(estimate - flat)[observed].mean())

    return {"mean_only": error(np.broadcast_to(mean, flat.shape)), "basis": error(reconstructed)}


def fingerprint(face_model: FaceModel) -> str:
    """What the per-face results depend on: the face model's config, landmarks, triangles and albedo."""
    digest = hashlib.sha1(json.dumps(dict(face_model.config), sort_keys=True, default=str).encode())
    for name in ("landmark_indices", "contour_candidate_indices", "triangles", "texture_mean"):
        digest.update(getattr(face_model, name).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_settings(chunk_dir: Path, settings: dict) -> None:
    """Chunks are only reused by a run with the same settings; otherwise stop before mixing them."""
    chunk_dir.mkdir(parents=True, exist_ok=True)
    path = chunk_dir / "settings.json"
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise SystemExit(f"{chunk_dir} holds chunks of other settings ({path.read_text().strip()}); "
                         "delete it to start over")
    path.write_text(json.dumps(settings) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "cache" / "albedo_model.npz")
    parser.add_argument("--face-model", type=Path, default=default_weights() / "face_model")
    parser.add_argument("--faces", type=int, default=3000, help="glasses-free training faces (random, seed 0)")
    parser.add_argument("--val-faces", type=int, default=100, help="held-out val faces for the report")
    parser.add_argument("--modes", type=int, default=TEXTURE_MODES)
    parser.add_argument("--iterations", type=int, default=30, help="photometric refinement steps per face")
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(args.out.with_suffix(".log")), logging.StreamHandler()],
    )
    torch.set_num_threads(args.threads)
    face_model = FaceModel.from_pretrained(args.face_model).float().eval()
    if face_model.config.has_texture_basis:
        LOG.warning("%s already has a texture basis; its albedo is used only for the lighting fit", args.face_model)
    LOG.info("build_albedo %s", vars(args))
    chunk_dir = args.out.with_suffix(".chunks")
    check_settings(chunk_dir, {"face_model": fingerprint(face_model), "iterations": args.iterations,
                               "faces": args.faces, "val_faces": args.val_faces, "chunk": args.chunk})
    train = FaceRecords("train", glasses="without")
    order = np.random.default_rng(0).permutation(len(train))[: args.faces]
    data = run_chunks(face_model, train, order, chunk_dir, args.chunk, args.iterations, "train")
    val = FaceRecords("val", glasses="without")
    val_order = np.random.default_rng(1).permutation(len(val))[: args.val_faces]
    held = run_chunks(face_model, val, val_order, chunk_dir, args.chunk, args.iterations, "val")

    mirror = face_model.mirror_index.numpy()
    albedo, weight = data["albedo"].astype(np.float32), data["weight"].astype(np.float32) / 255
    default = np.median(albedo[weight > 0.9], axis=0)
    mean_albedo = population_mean(albedo, weight, default)
    filled = fill_albedo(albedo, weight, mirror, mean_albedo)
    LOG.info("%d faces, observed vertices per face %.0f (weight > 0.5), PCA ...", len(filled),
             (weight > 0.5).sum(1).mean())
    mean, basis, std = albedo_pca(filled.reshape(len(filled), -1), args.modes)
    total_variance = float(((filled.reshape(len(filled), -1) - mean) ** 2).sum() / (len(filled) - 1))
    explained = float((std**2).sum() / total_variance)
    held_weight = held["weight"].astype(np.float32) / 255
    held_filled = fill_albedo(held["albedo"].astype(np.float32), held_weight, mirror, mean_albedo)
    errors = heldout_errors(held_filled, held_weight, mean, basis)
    LOG.info("explained variance %.3f with %d modes; held-out mean abs error: mean only %.4f, basis %.4f",
             explained, len(std), errors["mean_only"], errors["basis"])

    num_vertices = face_model.config.num_vertices
    texture_basis = np.zeros((args.modes, num_vertices, 3), np.float32)
    texture_basis[: len(std)] = (basis * std[:, None]).reshape(len(std), num_vertices, 3)
    np.savez(
        args.out,
        texture_mean=mean.reshape(num_vertices, 3).astype(np.float32),
        texture_basis=texture_basis,
        std=std.astype(np.float32),
        explained_variance=explained,
        heldout_mean_only=errors["mean_only"],
        heldout_basis=errors["basis"],
        faces=len(filled),
        provenance=PROVENANCE.format(modes=len(std), faces=len(filled)),
    )
    LOG.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
