"""Figures shared by training (validation) and the evaluation commands."""

from __future__ import annotations

import numpy as np


def normalised_mean_error(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-face mean point error over the outer-eye-corner distance (points 36 and 45), the usual 300-W NME.

    Works on (68, 2) or batches (..., 68, 2).
    """
    scale = np.linalg.norm(target[..., 36, :] - target[..., 45, :], axis=-1)
    return np.linalg.norm(predicted - target, axis=-1).mean(-1) / scale
