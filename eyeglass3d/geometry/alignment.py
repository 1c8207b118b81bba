"""Similarity-aligned face crops from the detector's five points.

Every network sees the face in one canonical frame, so the crop is defined once here and shared by
inference and training. Coordinates: *input pixels* (the photo) and *crop pixels* (0..size).
"""

from __future__ import annotations

import cv2
import numpy as np

# Five points (right eye, left eye as seen in the image: image-left first; nose tip; mouth corners)
# in a unit square. The layout is the common 112-pixel recognition template, shrunk around the
# centre so that the whole face (brows to chin, both jaw contours) fits with margin for pose.
_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
FACE_SCALE = 0.75
CANONICAL_FIVE_POINTS = (_TEMPLATE_112 / 112.0 - 0.5) * FACE_SCALE + np.array([0.5, 0.42])

# The eye band (x0, y0, x1, y1) of the unit crop: where eyeglasses can be, temples on the face
# included. The deleter and the inpainter only ever look at this band.
EYE_BAND = (0.08, 0.20, 0.92, 0.58)
# `warp_crop` area-averages first when the crop shrinks the image below this scale: under the 0.36-0.46 at which
# the ~200-px training faces are cut to 128 px, so the networks keep seeing crops made like their training ones.
ANTIALIAS_BELOW = 0.3


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping src (N,2) onto dst (N,2); returns a 2x3 matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def five_points_from_landmarks(landmarks68_px: np.ndarray) -> np.ndarray:
    """The detector's five points (eye centres, nose tip, mouth corners) read off 68 iBUG landmarks.

    Glasses make the detector's own eye points jump by ~5 % of the eye distance on half the faces; eye
    centres averaged over six contour points each move far less, so crops cut from these stay put.
    """
    landmarks = np.asarray(landmarks68_px, np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"five_points_from_landmarks needs (68, 2) iBUG landmarks, got {landmarks.shape}")
    return np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0), landmarks[30], landmarks[48], landmarks[54]])


def crop_matrix(five_points_px: np.ndarray, size: int) -> np.ndarray:
    """2x3 matrix taking input pixels to pixels of a `size`-square canonical crop."""
    return estimate_similarity(five_points_px, CANONICAL_FIVE_POINTS * size)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_crop(
    image: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int], *, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """Cut a crop of `size` (square side, or (height, width)); borders are replicated so that no black
    wedge reaches the networks.

    A crop that shrinks the image below `ANTIALIAS_BELOW` (a face of a big photo) is cut from an area-averaged
    smaller copy rather than sampled from the full image, which would alias.
    """
    height, width = (size, size) if isinstance(size, (int, np.integer)) else size
    matrix = matrix.astype(np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < ANTIALIAS_BELOW and interpolation != cv2.INTER_NEAREST:
        shrunk_size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        factor = np.array([shrunk_size[0] / image.shape[1], shrunk_size[1] / image.shape[0]])
        image = cv2.resize(image, shrunk_size, interpolation=cv2.INTER_AREA)
        # A pixel centre p of the original sits at (p + 0.5) · factor - 0.5 in the shrunk copy.
        linear = matrix[:, :2] / factor
        matrix = np.hstack([linear, (matrix[:, 2] - linear @ (0.5 * factor - 0.5))[:, None]])
    return cv2.warpAffine(
        image, matrix, (int(width), int(height)), flags=interpolation, borderMode=cv2.BORDER_REPLICATE
    )


def paste_back(
    image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, region: np.ndarray
) -> np.ndarray:
    """Write `crop` pixels into `image` where the crop-frame mask `region` (bool, crop size) is set.

    Used to put the inpainted band back: only pixels inside `region` change, so the photo stays
    bit-identical outside the glasses area.
    """
    height, width = image.shape[:2]
    inverse = invert_affine(matrix)
    back = cv2.warpAffine(crop, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(region.astype(np.uint8), inverse, (width, height), flags=cv2.INTER_NEAREST) > 0
    out = image.copy()
    out[mask] = back[mask]
    return out


def region_matrix(
    five_points_px: np.ndarray, crop_box: tuple[float, float, float, float], size_hw: tuple[int, int]
) -> np.ndarray:
    """2x3 matrix taking input pixels to a (height, width) image of `crop_box`, a region of the unit crop.

    Networks that only need part of the face (the eye band) get their own resolution over that part.
    """
    x0, y0, x1, y1 = crop_box
    height, width = size_hw
    unit = crop_matrix(five_points_px, 1)
    scale = np.diag([width / (x1 - x0), height / (y1 - y0)])
    return np.hstack([scale @ unit[:, :2], (scale @ (unit[:, 2] - np.array([x0, y0])))[:, None]])
