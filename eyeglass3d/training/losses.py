"""Losses of the inpainting GAN (Zhao & Qi, MMM 2022): masked L1, style (Gram), total variation, hinge.

Images are (B, C, H, W); masks (B, 1, H, W) with 1 = hole (pixels to fill).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error inside the hole only, so small and large holes weigh the same per pixel.

    Exactly sum(|prediction - target| * mask) / (sum(mask) * C), with sum(mask) counted over the
    (B, 1, H, W) mask and clamped to at least 1 (an empty mask gives 0, not NaN).
    """
    channels = prediction.shape[1]
    error = ((prediction - target).abs() * mask).sum()
    return error / (mask.sum().clamp_min(1.0) * channels)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Channel co-activations (B, C, C) = F F^T / (C*H*W): texture statistics independent of layout."""
    batch, channels, height, width = features.shape
    flat = features.float().reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def style_loss(features_a: list[torch.Tensor], features_b: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean L1 between Gram matrices: the filled skin must share the face's texture."""
    return sum(F.l1_loss(gram_matrix(a), gram_matrix(b)) for a, b in zip(features_a, features_b, strict=True))


def total_variation(image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |neighbour difference| (right and down): penalises speckle and seams in the fill.

    With `mask`, only differences whose two pixels both lie in the hole grown by 1 px (so the seams at
    the hole border count) are averaged: sum(|d| * w) / (sum(w) * C) over both directions together.
    """
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs()
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs()
    if mask is None:
        return (dx.sum() + dy.sum()) / (dx.numel() + dy.numel())
    region = F.max_pool2d(mask.float(), 3, stride=1, padding=1)
    wx = region[..., :, 1:] * region[..., :, :-1]
    wy = region[..., 1:, :] * region[..., :-1, :]
    channels = image.shape[1]
    weight = (wx.sum() + wy.sum()).clamp_min(1.0) * channels
    return ((dx * wx).sum() + (dy * wy).sum()) / weight


def discriminator_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge critic loss mean(relu(1 - real)) + mean(relu(1 + fake)): bounded, stable with spectral norm."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def generator_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss -mean(fake): push the critic's score of the fills up."""
    return -fake_logits.mean()


class StyleFeatures(nn.Module):
    """φ for the style loss: intermediate maps of the frozen, shipped landmark network's MobileNetV3.

    The paper uses ImageNet VGG-16 features, but no VGG (or any third-party ImageNet) weights can be
    had here, so the project's own landmark backbone stands in: trained on these very faces, it
    responds to eyes, brows and skin. Frozen (eval mode, requires_grad False); gradients still flow
    to the input. `layers` index `encoder.features`; default: after blocks 1, 3 and 8 (strides 4, 8, 16).
    """

    def __init__(self, landmarker: nn.Module, layers: tuple[int, ...] = (1, 3, 8)):
        super().__init__()
        self.normalize = landmarker.normalize
        self.blocks = nn.ModuleList(landmarker.encoder.features[: max(layers) + 1])
        self.layers = tuple(layers)
        self.float().eval().requires_grad_(False)

    def train(self, mode: bool = True) -> StyleFeatures:
        return super().train(False)  # BatchNorm statistics stay frozen whatever the caller does

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> feature maps at `layers`."""
        x = self.normalize(images)
        out = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.layers:
                out.append(x)
        return out


__all__ = [
    "StyleFeatures",
    "discriminator_hinge",
    "generator_hinge",
    "gram_matrix",
    "masked_l1",
    "style_loss",
    "total_variation",
]
