"""Face-part label maps drawn from the 68 landmarks.

This is the label source for the parser's non-glasses classes during training, and what
`out.parsing` shows outside the parser's eye band (and everywhere while no parser is shipped).
"""

from __future__ import annotations

import cv2
import numpy as np

PARSING_LABELS = ("background", "skin", "brows", "eyes", "nose", "lips", "mouth", "hair", "eyeglasses")


def _polygon(label_map: np.ndarray, points: np.ndarray, value: int) -> None:
    cv2.fillPoly(label_map, [np.round(points * 4).astype(np.int32)], int(value), lineType=cv2.LINE_8, shift=2)


def _thick_curve(points: np.ndarray, half_width: float) -> np.ndarray:
    """A band around a polyline (eyebrows are drawn as landmark lines)."""
    direction = np.gradient(points, axis=0)
    normal = np.stack([-direction[:, 1], direction[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    return np.concatenate([points + normal * half_width, (points - normal * half_width)[::-1]])


def parsing_from_landmarks(landmarks_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 ids into PARSING_LABELS; later parts overwrite earlier ones (eyes over skin)."""
    lm = np.asarray(landmarks_px, np.float64)
    ids = {name: i for i, name in enumerate(PARSING_LABELS)}
    label_map = np.zeros((height, width), np.uint8)
    eye_distance = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    # Forehead: lift the brow line by most of an eye distance, along the face's up direction.
    up = lm[27] - lm[8]
    up /= np.linalg.norm(up) + 1e-9
    forehead = lm[26:16:-1] + up * 0.75 * eye_distance
    _polygon(label_map, np.concatenate([lm[0:17], forehead]), ids["skin"])
    brow_half_width = 0.06 * eye_distance
    _polygon(label_map, _thick_curve(lm[17:22], brow_half_width), ids["brows"])
    _polygon(label_map, _thick_curve(lm[22:27], brow_half_width), ids["brows"])
    nose = np.concatenate([lm[[27]] - [0.08 * eye_distance, 0], lm[31:36], lm[[27]] + [0.08 * eye_distance, 0]])
    _polygon(label_map, cv2.convexHull(nose.astype(np.float32))[:, 0], ids["nose"])
    _polygon(label_map, lm[36:42], ids["eyes"])
    _polygon(label_map, lm[42:48], ids["eyes"])
    _polygon(label_map, lm[48:60], ids["lips"])
    _polygon(label_map, lm[60:68], ids["mouth"])
    return label_map


def grow_glasses_mask(mask: np.ndarray, landmarks_px: np.ndarray, fraction: float = 0.03) -> np.ndarray:
    """Grow a glasses mask by `fraction` of the eye distance, so no frame edge survives inpainting."""
    eye_distance = np.linalg.norm(landmarks_px[42:48].mean(0) - landmarks_px[36:42].mean(0))
    radius = max(1, int(round(fraction * eye_distance)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0
