"""Training batches of the eye band, the region the deleter and the inpainter work on.

One sampler serves both networks, so they see the same band the pipeline cuts at inference
(`alignment.region_matrix` from five points, here jittered like a detector would place them):

    inputs     (B, 3, h, w) float [0, 1]  the band as the network sees it (wearing glasses where `worn`)
    clean      (B, 3, h, w) float [0, 1]  the same band without the glasses (same augmentation)
    mask       (B, 1, h, w) float {0, 1}  pixels the glasses changed (frames, temples, lenses, shadow)
    labels     (B, h, w) int64            ids into `PARSING_LABELS`: landmark-drawn parts, then eyeglasses
    landmarks  (B, 68, 2) float           the teacher's landmarks in unit band coordinates
    worn       (B,) bool
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from eyeglass3d.geometry.alignment import region_matrix, transform_points, warp_crop
from eyeglass3d.geometry.face_regions import PARSING_LABELS, parsing_from_landmarks
from eyeglass3d.paths import REPO_ROOT
from eyeglass3d.training.augment import flip_points, jitter_points, photometric
from eyeglass3d.training.datasets import FaceRecords
from eyeglass3d.training.glasses_cache import GlassesCopies, glasses_copies

EYEGLASSES = PARSING_LABELS.index("eyeglasses")


class BandBatch(NamedTuple):
    inputs: torch.Tensor
    clean: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    landmarks: torch.Tensor
    worn: np.ndarray


def band_sample(
    image: np.ndarray,
    clean: np.ndarray,
    mask: np.ndarray,
    landmarks68_px: np.ndarray,
    points5_px: np.ndarray,
    crop_box: tuple[float, float, float, float],
    size_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut one face's band: (image, clean, mask bool, label ids, landmarks in unit band coordinates)."""
    height, width = size_hw
    matrix = region_matrix(points5_px, crop_box, size_hw)
    band_mask = warp_crop(mask.astype(np.uint8) * 255, matrix, size_hw) > 127
    landmarks_band = transform_points(matrix, landmarks68_px)
    labels = parsing_from_landmarks(landmarks_band, height, width)
    labels[band_mask] = EYEGLASSES
    unit = landmarks_band / [width, height]
    return warp_crop(image, matrix, size_hw), warp_crop(clean, matrix, size_hw), band_mask, labels, unit


def band_batch(
    records: FaceRecords,
    copies: GlassesCopies | None,
    indices,
    crop_box: tuple[float, float, float, float],
    size_hw: tuple[int, int],
    rng: np.random.Generator,
    *,
    train: bool,
    glasses_probability: float,
    jitter: float = 0.5,
) -> BandBatch:
    """A batch of bands. Training flips, jitters the five points and applies one photometric draw to
    the glasses and the clean band alike, so the inpainting target matches its input.
    Evaluation uses the first copy and the records' own five points, so figures are comparable."""
    images, cleans, masks, labels, landmarks, worn = [], [], [], [], [], []
    for index in indices:
        record = records[index]
        wear = copies is not None and rng.random() < glasses_probability
        copy = int(rng.integers(copies.images.shape[1])) if wear and train else 0
        image = copies.images[index, copy] if wear else record.image
        mask = copies.masks[index, copy] if wear else np.zeros(record.image.shape[:2], bool)
        clean = record.image
        landmarks68, points5 = record.landmarks68_px.astype(np.float64), record.points5_px.astype(np.float64)
        if train:
            if rng.random() < 0.5:
                width = image.shape[1]
                image, clean, mask = image[:, ::-1], clean[:, ::-1], mask[:, ::-1]
                landmarks68, points5 = flip_points(landmarks68, width), flip_points(points5, width)
            points5 = jitter_points(points5, rng, jitter)
        image, clean, mask = (np.ascontiguousarray(a) for a in (image, clean, mask))
        band, band_clean, band_mask, band_labels, unit = band_sample(
            image, clean, mask, landmarks68, points5, crop_box, size_hw
        )
        if train:  # one photometric draw (colour, blur, noise, JPEG) for input and target alike
            seed = int(rng.integers(2**63))
            band, band_clean = (photometric(b, np.random.default_rng(seed)) for b in (band, band_clean))
        images.append(band)
        cleans.append(band_clean)
        masks.append(band_mask)
        labels.append(band_labels)
        landmarks.append(unit)
        worn.append(wear)

    def to_tensor(arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255).contiguous(
            memory_format=torch.channels_last
        )

    return BandBatch(
        to_tensor(images),
        to_tensor(cleans),
        torch.from_numpy(np.stack(masks))[:, None].float(),
        torch.from_numpy(np.stack(labels)).long(),
        torch.from_numpy(np.stack(landmarks)).float(),
        np.array(worn),
    )


def glasses_free_splits(
    labels_path: Path, train_copies: int, log: logging.Logger
) -> tuple[FaceRecords, FaceRecords, GlassesCopies, GlassesCopies]:
    """Train and val faces without real eyeglasses, with their synthetic composites (shared on disk by
    the parser and the inpainter). Real wearers are left out: their own glasses would be labelled "not
    glasses" for the parser and would be inpainting targets for the generator."""
    train = FaceRecords("train", labels_path=labels_path, glasses="without")
    val = FaceRecords("val", labels_path=labels_path, glasses="without")
    cache_dir = REPO_ROOT / "cache"
    cache_dir.mkdir(exist_ok=True)
    copies = glasses_copies(train, train_copies, 100, cache_dir, log), glasses_copies(val, 1, 101, cache_dir, log)
    log.info("train %d faces, val %d faces (glasses-free)", len(train), len(val))
    return train, val, *copies


def dilate_masks(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow (B, 1, h, w) {0,1} masks by `radius` pixels (square), as the pipeline grows predicted masks."""
    if radius <= 0:
        return mask
    return torch.nn.functional.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


__all__ = ["BandBatch", "EYEGLASSES", "band_batch", "band_sample", "dilate_masks"]
