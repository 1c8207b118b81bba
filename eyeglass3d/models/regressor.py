"""3DMM coefficient regressor: a ResNet-50 (or a lighter backbone) on the de-glassed aligned crop.

The output is one flat vector, cut into named groups by `split` in `coefficient_sizes` order
(identity, expression, texture, lighting, pose by default). The last layer starts at zero so an
untrained regressor predicts all-zero coefficients: the mean face, neutral, frontal, ambient light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..geometry.alignment import crop_matrix, warp_crop
from .backbones import FoldedInference, ImageNetNormalize, mobilenet_v3_large, resnet18, resnet50
from .crops import stack_crops

DEFAULT_COEFFICIENT_SIZES = MappingProxyType(
    {"identity": 80, "expression": 53, "texture": 80, "lighting": 27, "pose": 6}
)
_BACKBONES = {"resnet50": resnet50, "resnet18": resnet18, "mobilenet_v3_large": mobilenet_v3_large}


class CoefficientRegressor(FoldedInference, ModelMixin, ConfigMixin):
    """`test_time_shift` > 0: `predict` averages all but the pose over the crop and four copies moved by that
    fraction of the crop (left, right, up, down)."""

    @register_to_config
    def __init__(
        self,
        backbone: str = "resnet50",
        input_size: int = 224,
        coefficient_sizes: Mapping[str, int] | Sequence[tuple[str, int]] = DEFAULT_COEFFICIENT_SIZES,
        test_time_shift: float = 0.0,
    ):
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(_BACKBONES)}, got {backbone!r}")
        # config.json is written with sorted keys, which would reorder a dict: keep ordered pairs instead.
        self.register_to_config(coefficient_sizes=[[name, int(size)] for name, size in dict(coefficient_sizes).items()])
        self.normalize = ImageNetNormalize()
        self.encoder = _BACKBONES[backbone](num_classes=0)
        self.head = nn.Linear(self.encoder.out_channels, self.num_coefficients)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # The unit of each output (training sets it to the targets' RMS per group): the last layer then works in
        # numbers of one size for metres, radians and N(0, 1) weights alike, and one learning rate suits all.
        self.register_buffer("output_scale", torch.ones(self.num_coefficients))

    @property
    def coefficient_sizes(self) -> dict[str, int]:
        """{name: size} in output order."""
        return {name: size for name, size in self.config.coefficient_sizes}

    @property
    def num_coefficients(self) -> int:
        return sum(self.coefficient_sizes.values())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) RGB in [0, 1], the aligned crop at input_size -> coefficients (B, num_coefficients)."""
        return self.head(self.encoder(self.normalize(images))) * self.output_scale

    def split(self, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, num_coefficients) -> {name: (B, size)} in `coefficient_sizes` order."""
        sizes = self.coefficient_sizes
        return dict(zip(sizes, torch.split(coefficients, list(sizes.values()), dim=-1)))

    @torch.no_grad()
    def predict(self, image: np.ndarray, points5_px: np.ndarray) -> dict[str, torch.Tensor]:
        """{name: (1, size)} for the face at `points5_px` in `image` (HxWx3 uint8 RGB), in the canonical crop's camera.

        Five points wobble by a few per cent of the crop between two photos of one face (more with glasses on),
        and one crop's answer follows them; the shift average follows them less. The pose is the centre crop's:
        it is defined in that crop's camera.
        """
        return self.predict_batch([image], [points5_px])[0]

    def predict_batch(self, images: list[np.ndarray], points5_px: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        """`predict` for several faces: every face's crop and its shifted copies in one forward."""
        size, shift = self.config.input_size, self.config.test_time_shift * self.config.input_size
        moves = [(0.0, 0.0)] + ([(shift, 0.0), (-shift, 0.0), (0.0, shift), (0.0, -shift)] if shift > 0 else [])
        crops = []
        for image, points in zip(images, points5_px):
            matrix = crop_matrix(np.asarray(points, np.float64), size)
            crops += [warp_crop(image, matrix + np.array([[0.0, 0.0, dx], [0.0, 0.0, dy]]), size) for dx, dy in moves]
        outputs = self.folded_forward(stack_crops(crops)).float().view(len(images), len(moves), -1)
        coefficients = []
        for per_face in outputs:
            named = self.split(per_face.mean(0, keepdim=True))
            if "pose" in named:
                named["pose"] = self.split(per_face[:1])["pose"]
            coefficients.append(named)
        return coefficients
