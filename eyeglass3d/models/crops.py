"""Crops of a photo as a network's input batch, laid out the same for one face and for many."""

from __future__ import annotations

import numpy as np
import torch


def stack_crops(crops: list[np.ndarray]) -> torch.Tensor:
    """HxWx3 uint8 crops -> (B, 3, H, W) float in [0, 1], contiguous: a channels-last batch would take other
    kernels than a one-crop call and answer a few ulps apart, so one face and a batch of faces agree exactly."""
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255).contiguous()
