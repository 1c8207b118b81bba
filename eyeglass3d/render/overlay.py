"""Pictures for the app and for debugging: landmarks, parsing maps and the fitted mesh drawn over a photo.

All inputs and outputs are numpy RGB uint8 images in input-pixel coordinates (pixel centres at +0.5).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .rasterizer import interpolate, rasterize

# Eyeglasses are what the whole method is about, so they get a colour no face part has.
EYEGLASSES_RGB = (255, 0, 255)
_NAMED_RGB = {
    "background": (0, 0, 0),
    "skin": (204, 153, 119),
    "face": (204, 153, 119),
    "nose": (255, 170, 60),
    "eye": (40, 120, 255),
    "brow": (120, 70, 20),
    "ear": (230, 200, 80),
    "mouth": (255, 90, 90),
    "lip": (200, 30, 60),
    "hair": (90, 50, 140),
    "neck": (150, 110, 90),
    "hat": (0, 160, 160),
    "cloth": (90, 90, 90),
}
# For labels without a named colour: well-separated hues, indexed by label position.
_SPARE_RGB = [(0, 200, 0), (0, 200, 200), (255, 255, 0), (255, 128, 0), (128, 128, 255), (0, 128, 64), (200, 200, 200)]


def _label_rgb(label: str, index: int) -> tuple[int, int, int]:
    name = label.lower()
    if "glass" in name or name == "eye_g":
        return EYEGLASSES_RGB
    for key, rgb in _NAMED_RGB.items():
        if key in name:
            return rgb
    return _SPARE_RGB[index % len(_SPARE_RGB)]


def colorize_parsing(parsing: np.ndarray, labels: list[str]) -> np.ndarray:
    """Class map (H,W) of indices into `labels` → RGB (H,W,3) with a fixed palette, eyeglasses in magenta."""
    palette = np.array([_label_rgb(label, index) for index, label in enumerate(labels)], np.uint8)
    return palette[np.clip(np.asarray(parsing, np.int64), 0, len(labels) - 1)]


def draw_landmarks(
    image: np.ndarray, landmarks_px: np.ndarray, color: tuple[int, int, int] = (0, 255, 0)
) -> np.ndarray:
    """Copy of `image` with one dot per landmark (N,2), sized to the face so the dots stay apart at any scale."""
    canvas = np.ascontiguousarray(image[..., :3], dtype=np.uint8).copy()
    points = np.asarray(landmarks_px, np.float64)[:, :2]
    finite = points[np.isfinite(points).all(1)]
    face_size = np.linalg.norm(np.ptp(finite, axis=0)) if len(finite) > 1 else max(canvas.shape[:2])
    radius = max(1, round(min(0.01 * face_size, max(canvas.shape[:2]) / 200)))
    shift = 4  # sub-pixel positions
    for x, y in finite:
        centre = (round((x - 0.5) * (1 << shift)), round((y - 0.5) * (1 << shift)))
        cv2.circle(canvas, centre, radius << shift, color, -1, cv2.LINE_AA, shift)
    return canvas


def render_shaded(
    vertices_px: np.ndarray,
    triangles: np.ndarray,
    normals: np.ndarray | None,
    height: int,
    width: int,
    background: np.ndarray | None = None,
    opacity: float = 0.85,
) -> np.ndarray:
    """Grey Lambert-shaded mesh over `background` (or black), lit from the camera: RGB (height, width, 3) uint8.

    `vertices_px` (N,3) are in the rasteriser's pixel frame. `normals` (N,3) may be in any frame whose z axis is the
    viewing axis (the light sits on it, so the sign of z does not matter); None derives them from `vertices_px`.
    """
    vertices = torch.as_tensor(np.asarray(vertices_px, np.float32))
    faces = torch.as_tensor(np.asarray(triangles, np.int64))
    if normals is None:
        corners = vertices[faces]
        face_normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normals_t = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), face_normals.repeat_interleave(3, 0))
    else:
        normals_t = torch.as_tensor(np.asarray(normals, np.float32))
    fragments = rasterize(vertices[None], faces, height, width)
    pixel_normals = interpolate(normals_t[None], faces, fragments)[0]
    cosine = pixel_normals[..., 2].abs() / pixel_normals.norm(dim=-1).clamp(min=1e-12)
    shade = (0.2 + 0.8 * cosine) * 230.0
    coverage = (fragments.triangle_index[0] >= 0).numpy()[..., None] * float(opacity)

    if background is None:
        canvas = np.zeros((height, width, 3), np.float32)
    else:
        canvas = np.asarray(background[..., :3], np.float32)
        if canvas.shape[:2] != (height, width):
            raise ValueError(f"background is {canvas.shape[:2]}, expected {(height, width)}")
    shaded = coverage * shade.numpy()[..., None] + (1.0 - coverage) * canvas
    return np.clip(np.rint(shaded), 0, 255).astype(np.uint8)
