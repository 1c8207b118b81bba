"""Landmark-guided inpainting generator for the eye band (Zhao & Qi, MMM 2022).

Encoder of 3 down-sampling blocks, 7 residual blocks with dilated convolutions, an attention block
(long range: attention from every position to the *known* band; short range: a local conv), and a
decoder back to the input size. The eyeglasses area is zeroed before the network sees it; the
landmark heatmaps tell it where eyes and brows are behind the frames.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..geometry.alignment import EYE_BAND, invert_affine, region_matrix, transform_points, warp_crop
from .crops import stack_crops
from .precision import unet_autocast

# iBUG 68-point parts, one guidance channel each when guidance_channels == 5.
LANDMARK_GROUPS = (range(0, 17), range(17, 27), range(27, 36), range(36, 48), range(48, 68))


def _instance_norm(channels: int) -> nn.GroupNorm:
    """Instance normalisation with a per-channel affine, as GroupNorm: one group per channel.

    Same maths as InstanceNorm2d(affine=True), but PyTorch's CPU GroupNorm kernel is several times
    faster and keeps channels_last tensors as they are."""
    return nn.GroupNorm(channels, channels)


def _norm_act(channels: int) -> list[nn.Module]:
    return [_instance_norm(channels), nn.ReLU(inplace=True)]


class DilatedResidualBlock(nn.Module):
    """3x3 dilated conv -> IN -> ReLU -> 3x3 conv -> IN, plus identity: a wide receptive field at
    the bottleneck, so hole pixels see face structure beyond the frames."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation),
            *_norm_act(channels),
            nn.Conv2d(channels, channels, 3, padding=1),
            _instance_norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LongShortAttention(nn.Module):
    """Long range: single-head attention whose keys are restricted to known (unmasked) positions,
    so hole features are rebuilt from the visible face; short range: a 3x3 conv. Both are fused
    by a 1x1 conv and added to the input."""

    def __init__(self, channels: int):
        super().__init__()
        key_channels = max(channels // 8, 8)
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.local = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), *_norm_act(channels))
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        # A cell is "known" only if no pixel in it is to be filled.
        known = F.adaptive_max_pool2d(mask, (height, width)).flatten(1) < 0.5  # (B, L)
        known = known | ~known.any(dim=1, keepdim=True)  # all-hole sample: attend everywhere
        query = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, L, Ck)
        key = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)
        value = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, L, C)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=known[:, None, None, :])
        long_range = attended.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.fuse(torch.cat([long_range, self.local(x)], dim=1))


class UpBlock(nn.Sequential):
    """Bilinear x2 then 3x3 conv: no transposed-conv checkerboard in the filled skin."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            *_norm_act(out_channels),
        )


class InpaintGenerator(ModelMixin, ConfigMixin):
    """Eye-band inpainter. Widths: stem base_channels, then base_channels * channel_multipliers[i]
    after each of the 3 stride-2 blocks (input sides must be multiples of 8)."""

    @register_to_config
    def __init__(
        self,
        base_channels: int = 32,
        channel_multipliers: tuple[int, int, int] = (2, 4, 4),
        num_residual_blocks: int = 7,
        dilation: int = 2,
        guidance_channels: int = 1,
        guidance_sigma: float = 2.0,
        input_size: tuple[int, int] = (96, 224),
        crop_box: tuple[float, float, float, float] = EYE_BAND,
    ):
        super().__init__()
        if guidance_channels not in (1, len(LANDMARK_GROUPS)):
            raise ValueError(f"guidance_channels must be 1 or {len(LANDMARK_GROUPS)}, got {guidance_channels}")
        if len(channel_multipliers) != 3:
            raise ValueError("the encoder has exactly 3 down-sampling blocks: give 3 channel multipliers")
        widths = [base_channels] + [base_channels * m for m in channel_multipliers]
        self.stem = nn.Sequential(
            nn.Conv2d(3 + 1 + guidance_channels, widths[0], 7, padding=3), *_norm_act(widths[0])
        )
        self.encoder = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), *_norm_act(widths[i + 1]))
            for i in range(3)
        ))
        self.residual_blocks = nn.Sequential(*(DilatedResidualBlock(widths[3], dilation) for _ in range(num_residual_blocks)))
        self.attention = LongShortAttention(widths[3])
        self.decoder = nn.Sequential(*(UpBlock(widths[i + 1], widths[i]) for i in reversed(range(3))))
        self.to_rgb = nn.Conv2d(widths[0], 3, 7, padding=3)

    def forward(self, image: torch.Tensor, mask: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) in [0,1], mask (B,1,H,W) 1 = fill, guidance (B,G,H,W) -> raw prediction (B,3,H,W) in [0,1].

        The masked pixels are zeroed (at mid-grey after centring) so nothing of the glasses leaks through.
        """
        if image.shape[-2] % 8 or image.shape[-1] % 8:
            raise ValueError(f"image height and width must be multiples of 8, got {tuple(image.shape[-2:])}")
        centred = (image - 0.5) * (1.0 - mask)
        x = self.stem(torch.cat([centred, mask, guidance], dim=1))
        x = self.residual_blocks(self.encoder(x))
        x = self.attention(x, mask)
        return torch.sigmoid(self.to_rgb(self.decoder(x)))

    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Fill the masked area and keep every pixel outside it bit-identical to `image`."""
        raw = self(image, mask, guidance).to(image.dtype)
        return raw * mask + image * (1.0 - mask)

    @torch.no_grad()
    def predict(
        self, image: np.ndarray, points5_px: np.ndarray, landmarks_px: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fill `mask` (H, W bool) in `image` (HxWx3 uint8 RGB) where it lies inside this model's band.

        Returns (filled image, the part of `mask` that was filled); every other pixel is unchanged.
        Shared by the pipeline and the evaluation, like `LandmarkRegressor.predict`.
        """
        return self.predict_batch([image], [points5_px], [landmarks_px], [mask])[0]

    def predict_batch(
        self, images: list[np.ndarray], points5_px: list[np.ndarray], landmarks_px: list[np.ndarray],
        masks: list[np.ndarray],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`predict` for several faces in one forward."""
        size_hw = tuple(self.config.input_size)
        matrices = [region_matrix(np.asarray(p, np.float64), tuple(self.config.crop_box), size_hw) for p in points5_px]
        bands = stack_crops([warp_crop(image, matrix, size_hw) for image, matrix in zip(images, matrices)])
        band_masks = np.stack([warp_crop(m.astype(np.uint8) * 255, matrix, size_hw) > 0 for m, matrix in zip(masks, matrices)])
        landmarks_band = np.stack([
            transform_points(matrix, points) / np.array(size_hw[::-1]) for matrix, points in zip(matrices, landmarks_px)
        ])
        guidance = self.landmark_heatmaps(
            torch.from_numpy(landmarks_band).float(), size_hw[0], size_hw[1],
            self.config.guidance_sigma, self.config.guidance_channels,
        )
        mask_tensor = torch.from_numpy(band_masks)[:, None].float()
        with unet_autocast(self.device):
            filled = self.inpaint(bands.to(self.dtype), mask_tensor.to(self.dtype), guidance.to(self.dtype))
        filled = (filled.float().clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        out = []
        for image, mask, matrix, band in zip(images, masks, matrices, filled):
            height, width = image.shape[:2]
            inverse = invert_affine(matrix)
            back = cv2.warpAffine(band, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            region = cv2.warpAffine(np.ones(size_hw, np.uint8), inverse, (width, height), flags=cv2.INTER_NEAREST) > 0
            handled = mask & region
            result = image.copy()
            result[handled] = back[handled]
            out.append((result, handled))
        return out

    def guidance_from_crop_landmarks(self, landmarks_unit: torch.Tensor) -> torch.Tensor:
        """Landmarks (B,68,2) in unit *canonical-crop* coordinates -> this model's guidance at input_size.

        Maps them into the unit coordinates of `crop_box` and draws the heatmaps with the config's
        sigma and channel count, so training and inference cannot disagree on either.
        """
        x0, y0, x1, y1 = self.config.crop_box
        origin = landmarks_unit.new_tensor([x0, y0])
        extent = landmarks_unit.new_tensor([x1 - x0, y1 - y0])
        height, width = self.config.input_size
        return self.landmark_heatmaps(
            (landmarks_unit - origin) / extent, height, width, self.config.guidance_sigma, self.config.guidance_channels
        )

    @staticmethod
    def landmark_heatmaps(
        landmarks_unit: torch.Tensor, height: int, width: int, sigma: float, channels: int = 1
    ) -> torch.Tensor:
        """Gaussian landmark heatmaps (B, channels, height, width) with peak 1, sigma in output pixels.

        `landmarks_unit` (B,68,2) are in the unit coordinates of the band (0..1 spans the pixel edges;
        x right, y down). channels=1: max over all points; channels=5: one channel per face part
        (jaw, brows, nose, eyes, mouth). Points outside the band still light up its border.
        """
        if channels not in (1, len(LANDMARK_GROUPS)):
            raise ValueError(f"channels must be 1 or {len(LANDMARK_GROUPS)}, got {channels}")
        landmarks_px = landmarks_unit.float() * landmarks_unit.new_tensor([width, height]).float()
        xs = torch.arange(width, device=landmarks_unit.device, dtype=torch.float32) + 0.5
        ys = torch.arange(height, device=landmarks_unit.device, dtype=torch.float32) + 0.5
        # An isotropic Gaussian factors into x and y parts: two small exp() calls, one broadcast product.
        gx = torch.exp(-((xs - landmarks_px[..., :1]) ** 2) / (2 * sigma**2))
        gy = torch.exp(-((ys - landmarks_px[..., 1:]) ** 2) / (2 * sigma**2))
        per_point = gy[..., :, None] * gx[..., None, :]  # (B, P, H, W)
        if channels == 1:
            return per_point.amax(dim=1, keepdim=True)
        return torch.stack([per_point[:, list(group)].amax(dim=1) for group in LANDMARK_GROUPS], dim=1)
