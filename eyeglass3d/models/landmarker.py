"""68-point landmark regressor: MobileNetV3 features -> offsets from a mean face shape.

Works on the canonical aligned crop (`geometry.alignment`), so the mean shape is already close and
the network only has to learn the residual for pose, expression and identity.
Coordinates in and out are *unit crop coordinates*: 0..1 over the crop, x right, y down.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..geometry.alignment import crop_matrix, five_points_from_landmarks, invert_affine, transform_points, warp_crop
from .backbones import FoldedInference, ImageNetNormalize, mobilenet_v3_large, mobilenet_v3_small

# Frontal mean face in the unit canonical crop (iBUG 68-point order). Derived, not learnt: the
# ICT Face Model's neutral 68 landmarks (MIT), projected orthographically, mirror-averaged and
# similarity-fitted onto `alignment.CANONICAL_FIVE_POINTS` (eye centres, nose tip, mouth corners).
FRONTAL_MEAN_LANDMARKS = (
    (0.2179, 0.3894), (0.2217, 0.4729), (0.2351, 0.5475), (0.2500, 0.6199), (0.2823, 0.7011),
    (0.3370, 0.7666), (0.3850, 0.7933), (0.4430, 0.8062), (0.5018, 0.8177), (0.5605, 0.8055),
    (0.6183, 0.7920), (0.6660, 0.7648), (0.7200, 0.6987), (0.7513, 0.6171), (0.7655, 0.5446),
    (0.7780, 0.4698), (0.7809, 0.3863), (0.2768, 0.3309), (0.3103, 0.3009), (0.3538, 0.2901),
    (0.4066, 0.2922), (0.4541, 0.3028), (0.5437, 0.3023), (0.5912, 0.2912), (0.6439, 0.2885),
    (0.6875, 0.2989), (0.7214, 0.3284), (0.4994, 0.3854), (0.4996, 0.4277), (0.4998, 0.4668),
    (0.5001, 0.5129), (0.4525, 0.5724), (0.4774, 0.5720), (0.5004, 0.5744), (0.5235, 0.5718),
    (0.5483, 0.5719), (0.3290, 0.3981), (0.3514, 0.3811), (0.3930, 0.3785), (0.4290, 0.4045),
    (0.3952, 0.4110), (0.3521, 0.4118), (0.5700, 0.4037), (0.6057, 0.3773), (0.6473, 0.3794),
    (0.6699, 0.3962), (0.6470, 0.4101), (0.6039, 0.4099), (0.4040, 0.6635), (0.4357, 0.6349),
    (0.4729, 0.6212), (0.5007, 0.6233), (0.5285, 0.6208), (0.5658, 0.6342), (0.5978, 0.6624),
    (0.5699, 0.6831), (0.5406, 0.6927), (0.5011, 0.6957), (0.4616, 0.6931), (0.4322, 0.6839),
    (0.4165, 0.6623), (0.4628, 0.6546), (0.5009, 0.6555), (0.5390, 0.6542), (0.5854, 0.6614),
    (0.5418, 0.6574), (0.5009, 0.6584), (0.4600, 0.6578),
)

_BACKBONES = {"large": mobilenet_v3_large, "small": mobilenet_v3_small}


class LandmarkRegressor(FoldedInference, ModelMixin, ConfigMixin):
    """MobileNetV3 (large or small) + one linear layer predicting offsets from `mean_landmarks`.

    The offset layer starts at zero, so an untrained model returns the mean shape; training may
    overwrite the `mean_landmarks` buffer with the data set's mean (it is saved with the weights).
    `refinements` (68 points only) is how many times `predict` cuts a new crop from its own answer.
    """

    @register_to_config
    def __init__(
        self,
        input_size: int = 128,
        variant: str = "large",
        width_mult: float = 1.0,
        num_points: int = 68,
        head: str = "pooled",
        spatial_channels: int = 64,
        refinements: int = 0,
    ):
        super().__init__()
        if refinements and num_points != 68:
            raise ValueError("refinements re-crop from iBUG 68-point landmarks; num_points must be 68")
        if variant not in _BACKBONES:
            raise ValueError(f"variant must be one of {sorted(_BACKBONES)}, got {variant!r}")
        if head not in ("pooled", "spatial"):
            raise ValueError(f"head must be 'pooled' or 'spatial', got {head!r}")
        self.normalize = ImageNetNormalize()
        self.encoder = _BACKBONES[variant](width_mult=width_mult, num_classes=0)
        head_inputs = self.encoder.out_channels
        if head == "spatial":
            # Global pooling throws away *where* features are; a squeezed copy of the last (stride-32)
            # map keeps the layout, which is what coordinates are made of.
            grid = math.ceil(input_size / 32)
            self.squeeze = nn.Sequential(
                nn.Conv2d(self.encoder.out_channels, spatial_channels, 1, bias=False),
                nn.BatchNorm2d(spatial_channels),
                nn.Hardswish(),
            )
            head_inputs += spatial_channels * grid * grid
        self.offsets = nn.Linear(head_inputs, num_points * 2)
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.offsets.bias)
        if num_points == len(FRONTAL_MEAN_LANDMARKS):
            mean = torch.tensor(FRONTAL_MEAN_LANDMARKS, dtype=torch.float32)
        else:
            mean = torch.full((num_points, 2), 0.5)
        self.register_buffer("mean_landmarks", mean)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) RGB in [0, 1], S = config.input_size -> landmarks (B, P, 2) in unit crop coordinates."""
        features = self.encoder.features(self.normalize(images))
        head_inputs = features.mean((2, 3))
        if self.config.head == "spatial":
            head_inputs = torch.cat([head_inputs, self.squeeze(features).flatten(1)], 1)
        offsets = self.offsets(head_inputs).view(-1, self.config.num_points, 2)
        # Sum in float32 even under bf16 autocast: bf16 would round the mean shape by up to 1/256 of the crop.
        return self.mean_landmarks + offsets.float()

    @torch.no_grad()
    def predict(self, image: np.ndarray, points5_px: np.ndarray) -> np.ndarray:
        """68 landmarks (68, 2) in pixels of `image` (HxWx3 uint8 RGB), from the detector's five points.

        The one place that cuts this model's crop and maps its answer back, shared by the pipeline and
        the evaluation so that both measure the same thing. Each refinement predicts again on the crop cut
        from the five points the landmarks give: glasses throw the detector's eye points off, and a network
        trained on jittered crops answers best near the crop it was trained on.
        """
        landmarks = self._predict_once(image, points5_px)
        for _ in range(self.config.refinements):
            landmarks = self._predict_once(image, five_points_from_landmarks(landmarks))
        return landmarks

    def _predict_once(self, image: np.ndarray, points5_px: np.ndarray) -> np.ndarray:
        size = self.config.input_size
        matrix = crop_matrix(np.asarray(points5_px, np.float64), size)
        crop = torch.from_numpy(warp_crop(image, matrix, size)).permute(2, 0, 1)[None].float().div(255)
        landmarks_unit = self.folded_forward(crop)[0].float().numpy()
        return transform_points(invert_affine(matrix), landmarks_unit * size)
