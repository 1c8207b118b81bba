"""Augmentations shared by every crop network: mirror flips, detector-like jitter, photo artefacts."""

from __future__ import annotations

import math

import cv2
import numpy as np

# iBUG-68 index of each point's mirror image (for horizontal flips).
FLIP_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40] + [54, 53, 52, 51, 50, 49, 48]
    + [59, 58, 57, 56, 55] + [64, 63, 62, 61, 60] + [67, 66, 65]
)
FLIP_5 = np.array([1, 0, 2, 4, 3])


def flip_points(points: np.ndarray, width: int) -> np.ndarray:
    """Mirror 68 or 5 points for an image of `width` pixels flipped left-right (re-indexed, so the
    image-left eye stays first)."""
    order = FLIP_68 if len(points) == 68 else FLIP_5
    return points[order] * [-1, 1] + [width - 1, 0]


def jitter_points(points5: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Perturb the five points by a random similarity (detector noise, head roll), plus per-point noise."""
    centre = points5.mean(0)
    eye_distance = np.linalg.norm(points5[1] - points5[0])
    angle = rng.normal(0, 0.12 * strength)
    scale = math.exp(rng.normal(0, 0.06 * strength))
    shift = rng.normal(0, 0.05 * strength, 2) * eye_distance
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = (points5 - centre) @ rotation.T * scale + centre + shift
    return moved + rng.normal(0, 0.02 * strength, moved.shape) * eye_distance


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour, blur, noise and JPEG artefacts: what phone photos do that UTKFace crops do not."""
    out = image.astype(np.float32)
    if rng.random() < 0.1:
        out = out.mean(2, keepdims=True).repeat(3, 2)
    gain = rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, 3)
    out = (out - 128) * rng.uniform(0.7, 1.3) + 128 + rng.uniform(-25, 25)
    out = np.clip(out * gain, 0, 255)
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.2:
        out = out + rng.normal(0, rng.uniform(2, 8), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
        out = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return out


def downscale(image: np.ndarray, rng: np.random.Generator, smallest: float = 0.3) -> np.ndarray:
    """Shrink and re-enlarge: the soft look of a small face (LFW's are ~100 px) at the crop's size."""
    height, width = image.shape[:2]
    factor = rng.uniform(smallest, 0.8)
    small = cv2.resize(image, (max(8, round(width * factor)), max(8, round(height * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
