"""Face parsing U-Net over the eye band: the paper's "deleter", which finds the eyeglasses.

It only ever sees `crop_box`, the part of the unit canonical crop where glasses can be
(`alignment.EYE_BAND` by default), resampled to `input_size`; so a small U-Net is enough, and it
stays cheap on CPU.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..geometry.alignment import EYE_BAND, invert_affine, region_matrix, warp_crop
from .backbones import ImageNetNormalize
from .crops import stack_crops
from .precision import unet_autocast

DEFAULT_LABELS = ("background", "skin", "brows", "eyes", "nose", "lips", "mouth", "hair", "eyeglasses")


class DoubleConv(nn.Sequential):
    """Two 3x3 conv -> BatchNorm -> ReLU: the U-Net unit."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Bilinear x2 (no checkerboard), 1x1 to the skip's width, concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, skip_channels, 1, bias=False)
        self.conv = DoubleConv(2 * skip_channels, skip_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class FaceParser(ModelMixin, ConfigMixin):
    """U-Net: `depth` max-pool levels of width base_channels * 2**level; per-pixel logits over `labels`."""

    @register_to_config
    def __init__(
        self,
        labels: tuple[str, ...] = DEFAULT_LABELS,
        base_channels: int = 16,
        depth: int = 4,
        input_size: tuple[int, int] = (96, 224),
        crop_box: tuple[float, float, float, float] = EYE_BAND,
    ):
        super().__init__()
        if "eyeglasses" not in labels:
            raise ValueError("labels must contain 'eyeglasses': it is the class the deleter exists for")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.normalize = ImageNetNormalize()
        self.stem = DoubleConv(3, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[level], widths[level + 1]) for level in range(depth))
        self.up = nn.ModuleList(UpBlock(widths[level + 1], widths[level]) for level in reversed(range(depth)))
        self.classifier = nn.Conv2d(widths[0], len(labels), 1)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config.labels)

    @property
    def eyeglasses_index(self) -> int:
        return self.labels.index("eyeglasses")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, h, w) RGB in [0, 1] (the crop_box band at input_size) -> logits (B, len(labels), h, w)."""
        x = self.stem(self.normalize(images))
        skips = [x]
        for block in self.down:
            x = block(F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        return self.classifier(x)

    @torch.no_grad()
    def predict(self, image: np.ndarray, points5_px: np.ndarray) -> np.ndarray:
        """Label ids into `labels` (H, W) uint8 for `image` (HxWx3 uint8 RGB); 255 outside the band.

        The one place that cuts this model's band and maps its answer back, shared by the pipeline
        and the evaluation so that both measure the same thing.
        """
        return self.predict_batch([image], [points5_px])[0]

    def predict_batch(self, images: list[np.ndarray], points5_px: list[np.ndarray]) -> list[np.ndarray]:
        """`predict` for several faces in one forward."""
        size_hw = tuple(self.config.input_size)
        matrices = [region_matrix(np.asarray(p, np.float64), tuple(self.config.crop_box), size_hw) for p in points5_px]
        bands = stack_crops([warp_crop(image, matrix, size_hw) for image, matrix in zip(images, matrices)])
        with unet_autocast(self.device):
            band_labels = self(bands.to(self.dtype)).argmax(1).to(torch.uint8).numpy()
        return [
            cv2.warpAffine(labels, invert_affine(matrix), image.shape[1::-1], flags=cv2.INTER_NEAREST, borderValue=255)
            for image, matrix, labels in zip(images, matrices, band_labels)
        ]
