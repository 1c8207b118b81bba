"""A face-recognition feature network for the regressor's face-feature loss, distilled from dlib.

The paper compares recognition features of the photo and of the rendered face (λ = 0.25). No pretrained
recognition network can be downloaded here, and dlib's own ResNet cannot take gradients, so this small
network learns to map our canonical crop to dlib's 128-D descriptor of the same photo (computed once by
`label_faces`). Targets are the descriptors centred on the training mean and scaled to unit length: dlib's
raw descriptors share a large common component (any two faces have cosine ~0.9), which would hide identity.

Used at training time only; it never ships.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eyeglass3d.models.backbones import ImageNetNormalize, mobilenet_v3_large

DESCRIPTOR_DIM = 128


class FaceFeatureNet(nn.Module):
    """(B, 3, S, S) canonical crops in [0, 1] → (B, 128) unit features in dlib's centred descriptor space."""

    def __init__(self):
        super().__init__()
        self.normalize = ImageNetNormalize()
        self.encoder = mobilenet_v3_large(num_classes=0)
        self.head = nn.Linear(self.encoder.out_channels, DESCRIPTOR_DIM)
        self.register_buffer("descriptor_mean", torch.zeros(DESCRIPTOR_DIM))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.encoder(self.normalize(images))).float(), dim=-1)

    def targets(self, descriptors: torch.Tensor) -> torch.Tensor:
        """dlib descriptors (B, 128) → the unit, centred vectors this network is trained to output."""
        return F.normalize(descriptors.float() - self.descriptor_mean, dim=-1)


def feature_loss(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between unit feature vectors (B, D)."""
    return (1.0 - (features * targets).sum(-1)).mean()
