"""Classical inpainting (OpenCV Telea / Navier-Stokes): the fallback while no network is shipped,
for mask parts outside the network's band, and the peers the inpainting evaluation measures against."""

from __future__ import annotations

import cv2
import numpy as np

METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


def classical_inpaint(rgb: np.ndarray, mask: np.ndarray, method: str = "telea", radius: int = 5) -> np.ndarray:
    """Fill `mask` (H, W bool) in `rgb` (HxWx3 uint8), working on the mask's bounding box only (cheap on
    large photos); pixels outside the mask are returned unchanged."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    mask = np.asarray(mask, bool)
    if not mask.any():
        return rgb.copy()
    ys, xs = np.nonzero(mask)
    pad = 8
    y0, y1 = max(0, ys.min() - pad), min(rgb.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(rgb.shape[1], xs.max() + pad + 1)
    out = rgb.copy()
    region_mask = mask[y0:y1, x0:x1].astype(np.uint8)
    out[y0:y1, x0:x1] = cv2.inpaint(np.ascontiguousarray(rgb[y0:y1, x0:x1]), region_mask, radius, METHODS[method])
    out[~mask] = rgb[~mask]
    return out
