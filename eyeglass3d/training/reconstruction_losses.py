"""The regressor's self-supervised terms: what the predicted coefficients look like in the crop.

One `FaceTerms` call turns coefficients into (a) the 68 landmarks projected into the crop, (b) the
photometric error of the shaded albedo against the photo over visible skin, evaluated at the face-area
vertices like `geometry.photometric_fit` (the vertices are ~2 px apart at 128 px), and (c) the rendered face
composited over the photo (rasteriser: hard z-buffer, differentiable barycentrics), which the face-feature
loss compares with the photo itself. Frames: crop pixels of a square `image_size` crop, camera space in
metres, colours in [0, 1]. Runs on any device; call it outside autocast (geometry wants fp32).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from eyeglass3d.geometry.photometric_fit import GRAZING_COSINE, mask_at, sample_image, smoothstep
from eyeglass3d.models.face_model import FaceModel, split_coefficients
from eyeglass3d.render.rasterizer import interpolate, rasterize


class Terms(NamedTuple):
    landmarks_px: torch.Tensor  # (B, 68, 2)
    photometric: torch.Tensor  # (B,) mean colour distance over visible skin vertices
    rendered: torch.Tensor | None  # (B, 3, S, S) render over the photo, when asked for
    face_vertices_m: torch.Tensor  # (B, V, 3) model-space face-area vertices (identity + expression)


class FaceTerms:
    def __init__(self, face_model: FaceModel, image_size: int):
        self.model = face_model
        self.size = image_size
        self.area = face_model.config.face_area_vertices
        self.triangles = face_model.triangles[: face_model.config.face_area_triangles]

    def __call__(
        self, coefficients: torch.Tensor, photos: torch.Tensor, skin: torch.Tensor, render: bool = False
    ) -> Terms:
        """coefficients (B, 246) in `COEFFICIENT_SIZES` order; photos (B, 3, S, S) the clean crops the
        colours are compared with; skin (B, S, S) bool, where the photo shows skin."""
        model, groups = self.model, split_coefficients(coefficients.float())
        vertices = model.shape(groups["identity"], groups["expression"])
        camera = model.to_camera(vertices, groups["pose"])
        landmarks = model.project(model.landmarks(camera), self.size)[..., :2]
        camera_area = camera[:, : self.area]
        normals = model.vertex_normals(camera)[:, : self.area]
        projected = model.project(camera_area, self.size)
        # project() puts pixel centres on integers (cv2's crop convention); sampling and the rasteriser at +0.5.
        projected = torch.cat([projected[..., :2] + 0.5, projected[..., 2:]], -1)
        colours = sample_image(photos, projected[..., :2])
        facing = (normals * F.normalize(-camera_area, dim=-1)).sum(-1)
        inside = ((projected[..., :2] >= 0) & (projected[..., :2] < self.size)).all(-1)
        weights = (smoothstep(facing, *GRAZING_COSINE) * inside * mask_at(skin, projected[..., :2])).detach()
        shaded = model.shade(model.albedo(groups["texture"])[:, : self.area], normals, groups["lighting"])
        distance = (shaded - colours).pow(2).sum(-1).add(1e-8).sqrt()
        photometric = (weights * distance).sum(1) / weights.sum(1).clamp_min(1.0)
        rendered = None
        if render:
            fragments = rasterize(projected, self.triangles, self.size, self.size)
            image = interpolate(shaded.clamp(0, 1), self.triangles, fragments).permute(0, 3, 1, 2)
            covered = (fragments.triangle_index >= 0)[:, None]
            rendered = torch.where(covered, image, photos)
        return Terms(landmarks, photometric, rendered, vertices[:, : self.area])


def landmark_nme(landmarks_px: torch.Tensor, target_px: torch.Tensor) -> torch.Tensor:
    """(B,) mean point error over the outer-eye-corner distance (iBUG points 36 and 45), as the issue's NME."""
    scale = (target_px[:, 36] - target_px[:, 45]).norm(dim=-1).clamp_min(1e-6)
    return (landmarks_px - target_px).norm(dim=-1).mean(-1) / scale


def coefficient_groups(coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 246) → identity, expression, texture, lighting, and the pose as angles and translation."""
    groups = split_coefficients(coefficients.float())
    pose = groups.pop("pose")
    return {**groups, "angles": pose[:, :3], "translation": pose[:, 3:]}


def group_scales(targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean square of each group over the training targets: the unit `coefficient_loss` measures in."""
    return {name: value.pow(2).mean().clamp_min(1e-8) for name, value in coefficient_groups(targets).items()}


def coefficient_units(scales: dict[str, torch.Tensor]) -> torch.Tensor:
    """(246,) RMS of each coefficient's group, in coefficient order: the regressor's `output_scale`."""
    sizes = {name: value.shape[-1] for name, value in coefficient_groups(torch.zeros(1, 246)).items()}
    return torch.cat([scales[name].sqrt().expand(size) for name, size in sizes.items()])


def coefficient_loss(predicted: torch.Tensor, target: torch.Tensor, scales: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) mean over coefficient groups of the squared error relative to the group's mean square in the
    training targets (`scales`), so that metres, radians and N(0, 1) units weigh alike."""
    predicted, target = coefficient_groups(predicted), coefficient_groups(target)
    terms = [(predicted[name] - target[name]).pow(2).mean(-1) / scale for name, scale in scales.items()]
    return torch.stack(terms, 0).mean(0)
