"""PatchGAN discriminator for the inpainting GAN (training only, never shipped).

Each output logit judges one receptive-field patch (70x70 with the default 3 stride-2 layers), which
is what matters for filled skin: local texture, not global layout. Spectral norm keeps the
critic Lipschitz, so no BatchNorm is needed and small batches train stably.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm


class PatchDiscriminator(nn.Module):
    """C64-C128-C256-C512 (4x4 convs, LeakyReLU 0.2) -> 1-channel logit map; widths double per layer up to 8x.

    `in_channels` can include conditioning (e.g. RGB + mask = 4). The output has no sigmoid:
    the loss (hinge, LSGAN or BCE-with-logits) decides.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, spectral_norm: bool = True):
        super().__init__()

        def conv(in_ch: int, out_ch: int, stride: int) -> nn.Module:
            layer = nn.Conv2d(in_ch, out_ch, 4, stride=stride, padding=1)
            return _spectral_norm(layer) if spectral_norm else layer

        layers: list[nn.Module] = [conv(in_channels, base_channels, 2), nn.LeakyReLU(0.2, inplace=True)]
        width = base_channels
        for index in range(1, num_layers + 1):
            next_width = base_channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [conv(width, next_width, stride), nn.LeakyReLU(0.2, inplace=True)]
            width = next_width
        layers.append(conv(width, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, in_channels, H, W) -> patch logits (B, 1, h, w)."""
        return self.layers(images)
