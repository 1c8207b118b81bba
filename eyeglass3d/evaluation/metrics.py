"""Figures shared by training (validation) and the evaluation commands."""

from __future__ import annotations

import cv2
import numpy as np

SSIM_WINDOW = 11  # Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03
SSIM_SIGMA = 1.5
MISSED_NME = 0.5  # a face the system did not find scores this, and no found face scores worse


def normalised_mean_error(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-face mean point error over the outer-eye-corner distance (points 36 and 45), the usual 300-W NME.

    Works on (68, 2) or batches (..., 68, 2).
    """
    scale = np.linalg.norm(target[..., 36, :] - target[..., 45, :], axis=-1)
    return np.linalg.norm(predicted - target, axis=-1).mean(-1) / scale


def nme_or_miss(predicted: np.ndarray | None, target: np.ndarray) -> float:
    """NME of one face with misses counted as failures: None (no face found) scores MISSED_NME, and a found face
    is capped there, so every system is scored on the same faces and a miss never beats a bad answer."""
    if predicted is None:
        return MISSED_NME
    return float(min(normalised_mean_error(np.asarray(predicted, np.float64), target), MISSED_NME))


def iou(predicted: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> float:
    """Intersection over union of two boolean masks, counting only pixels inside `region` when given.

    Both masks empty (in the region) is perfect agreement: 1.0.
    """
    predicted, target = np.asarray(predicted, bool), np.asarray(target, bool)
    if region is not None:
        region = np.asarray(region, bool)
        predicted, target = predicted & region, target & region
    union = np.count_nonzero(predicted | target)
    return 1.0 if union == 0 else np.count_nonzero(predicted & target) / union


def psnr(predicted: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over every pixel and channel given; inf for identical inputs."""
    error = np.mean((np.asarray(predicted, np.float64) - np.asarray(target, np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(data_range**2 / error))


def ssim(predicted: np.ndarray, target: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004) with the standard 11x11 Gaussian window, sigma 1.5.

    (H, W) images give the mean of the SSIM map; (H, W, C) images the mean over channels of each
    channel's SSIM (for RGB: per channel, not on luma). Local statistics are population moments;
    the map is averaged away from the border (5 pixels, where the window would leave the image),
    like scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`. Sides must be at least 11 pixels.
    """
    x, y = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if x.ndim == 3:
        return float(np.mean([ssim(x[..., c], y[..., c], data_range) for c in range(x.shape[2])]))
    if x.ndim != 2 or min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"expected (H, W) or (H, W, C) with sides >= {SSIM_WINDOW}, got {x.shape}")

    def local_mean(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    pad = SSIM_WINDOW // 2
    return float(ssim_map[pad:-pad, pad:-pad].mean())
