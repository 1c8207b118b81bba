"""The 3D morphable face model (ICT-FaceKit light) as a diffusers component.

Every array is a registered buffer, so `save_pretrained` writes the whole model to one safetensors
file and the config keeps only sizes, names and camera constants. Frames: *model space* in metres
(ICT axes: +x the subject's left, +y up, +z out of the face, origin inside the head), *camera space*
(OpenGL, see `geometry.camera`) and *crop pixels* of the canonical crop (`geometry.alignment`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..geometry.camera import perspective_project, rotation_matrix
from ..geometry.lighting import shade as sh_shade

# The one coefficient vector of the project (regressor output, fitting result, training targets).
COEFFICIENT_SIZES = {"identity": 80, "expression": 53, "texture": 80, "lighting": 27, "pose": 6}
NUM_LANDMARKS = 68
NUM_CONTOUR_LANDMARKS = 17  # iBUG points 0..16: the jaw line, whose 3D position depends on the view


def split_coefficients(vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """(..., 246) → {"identity": (..., 80), "expression": (..., 53), "texture", "lighting", "pose"}."""
    return dict(zip(COEFFICIENT_SIZES, torch.split(vector, list(COEFFICIENT_SIZES.values()), dim=-1)))


def join_coefficients(coefficients: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of `split_coefficients`; every group must be present."""
    return torch.cat([coefficients[name] for name in COEFFICIENT_SIZES], dim=-1)


def contour_choice(candidates_cam: torch.Tensor) -> torch.Tensor:
    """(B, 17, K, 3) camera-space candidates of the jaw landmarks → (B, 17) chosen positions in K.

    A 2D annotator marks the jaw where the face's outline is. For each jaw landmark the candidates
    lie on a horizontal line of the face (see tools/build_face_model.py); the outline is the candidate
    furthest out in the image: the smallest x/depth on the subject's right (landmarks 0-7), the
    largest on the left (9-16). The chin (8) has a single candidate repeated.
    """
    side = torch.sign(torch.arange(NUM_CONTOUR_LANDMARKS, device=candidates_cam.device) - 8.0)
    image_x = candidates_cam[..., 0] / (-candidates_cam[..., 2]).clamp_min(1e-6)
    return (image_x * side[:, None]).argmax(-1)


class FaceModel(ModelMixin, ConfigMixin):
    """Linear 3DMM: shape (Eq. 6), albedo, SH shading, rigid pose and perspective projection (Eq. 7).

    The camera constants are chosen (tools/build_face_model.py) so that the mean face at zero pose
    projects its eye centres, nose tip and mouth corners onto `alignment.CANONICAL_FIVE_POINTS`:
    pose coefficients are then small for a well-aligned crop, at any crop size.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        num_vertices: int = 11248,
        num_triangles: int = 22288,
        num_uv_coords: int = 11657,
        identity_dim: int = 80,
        expression_dim: int = 53,
        texture_dim: int = 80,
        contour_candidates: int = 12,
        expression_names: list[str] | None = None,
        face_area_vertices: int = 9409,
        face_area_triangles: int = 18460,
        focal_ratio: float = 2.0,
        camera_distance_m: float = 0.6,
        head_offset_y_m: float = 0.0,
        ambient_light: float = 1.0,
        has_texture_basis: bool = False,
        texture_source: str = "",
    ):
        super().__init__()
        buffers = {
            "mean_shape_m": torch.zeros(num_vertices, 3),
            "identity_basis_m": torch.zeros(identity_dim, num_vertices, 3),
            "expression_basis_m": torch.zeros(expression_dim, num_vertices, 3),
            "texture_mean": torch.zeros(num_vertices, 3),
            "texture_basis": torch.zeros(texture_dim, num_vertices, 3),
            "triangles": torch.zeros(num_triangles, 3, dtype=torch.long),
            "uv_coords": torch.zeros(num_uv_coords, 2),
            "uv_triangles": torch.zeros(num_triangles, 3, dtype=torch.long),
            "landmark_indices": torch.zeros(NUM_LANDMARKS, dtype=torch.long),
            "contour_candidate_indices": torch.zeros(NUM_CONTOUR_LANDMARKS, contour_candidates, dtype=torch.long),
            "mirror_index": torch.zeros(num_vertices, dtype=torch.long),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray | torch.Tensor], **config) -> FaceModel:
        """Build from arrays named like the buffers; sizes come from the arrays, the rest from `config`."""
        sizes = {
            "num_vertices": len(arrays["mean_shape_m"]),
            "num_triangles": len(arrays["triangles"]),
            "num_uv_coords": len(arrays["uv_coords"]),
            "identity_dim": len(arrays["identity_basis_m"]),
            "expression_dim": len(arrays["expression_basis_m"]),
            "texture_dim": len(arrays["texture_basis"]),
            "contour_candidates": np.shape(arrays["contour_candidate_indices"])[1],
        }
        model = cls(**sizes, **config)
        state = {name: torch.as_tensor(np.asarray(value)) for name, value in arrays.items()}
        state = {name: value.to(getattr(model, name).dtype) for name, value in state.items()}
        model.load_state_dict(state, strict=True)
        return model

    # ------------------------------------------------------------------ geometry
    def shape(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Eq. 6: (B, identity_dim), (B, expression_dim) → (B, N, 3) vertices in metres.

        Identity coefficients are N(0, 1) per mode; expression weights are blendshape weights in 0..1.
        """
        return (
            self.mean_shape_m
            + torch.einsum("bk,knc->bnc", identity, self.identity_basis_m)
            + torch.einsum("bk,knc->bnc", expression, self.expression_basis_m)
        )

    def albedo(self, texture: torch.Tensor) -> torch.Tensor:
        """(B, texture_dim) → (B, N, 3) albedo in [0, 1], in the photo's own values / 255 (a constant skin
        colour while `config.has_texture_basis` is False: the basis is then all zeros). Coefficients are
        N(0, 1) per mode; `config.texture_source` says where the basis comes from."""
        return self.texture_mean + torch.einsum("bk,knc->bnc", texture, self.texture_basis)

    def vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) → (B, N, 3) unit outward normals (area-weighted triangle normals; CCW winding)."""
        corners = vertices[:, self.triangles]  # (B, F, 3 corners, 3)
        face_normals = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
        normals = torch.zeros_like(vertices)
        for corner in range(3):
            normals = normals.index_add(1, self.triangles[:, corner], face_normals)
        return torch.nn.functional.normalize(normals, dim=-1)

    # ------------------------------------------------------------------ camera
    def rest_translation_m(self, reference: torch.Tensor) -> torch.Tensor:
        """Where the model origin sits in camera space at zero pose: (0, head_offset_y_m, -camera_distance_m)."""
        values = [0.0, self.config.head_offset_y_m, -self.config.camera_distance_m]
        return torch.tensor(values, dtype=reference.dtype, device=reference.device)

    def to_camera(self, vertices_m: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) model space, pose (B, 6) = pitch, yaw, roll (radians) + translation (metres)
        → (B, N, 3) camera space: R·v + rest translation + pose translation."""
        rotation = rotation_matrix(pose[:, :3])
        translation = pose[:, 3:] + self.rest_translation_m(pose)
        return vertices_m @ rotation.transpose(1, 2) + translation[:, None]

    def project(self, points_cam: torch.Tensor, image_size: int) -> torch.Tensor:
        """Eq. 7: (B, N, 3) camera space → (B, N, 3) x_px, y_px (rows, down) and depth (metres, > 0)
        in a square image of `image_size` pixels; focal length = focal_ratio · image_size."""
        return perspective_project(points_cam, self.config.focal_ratio * image_size, image_size)

    # ------------------------------------------------------------------ landmarks
    def landmark_vertex_indices(self, vertices_cam: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) camera space → (B, 68) vertex ids; jaw points (0-16) follow the visible outline."""
        batch = vertices_cam.shape[0]
        candidates = self.contour_candidate_indices  # (17, K)
        chosen = contour_choice(vertices_cam[:, candidates])  # (B, 17)
        contour = candidates.expand(batch, -1, -1).gather(2, chosen[..., None])[..., 0]
        return torch.cat([contour, self.landmark_indices[NUM_CONTOUR_LANDMARKS:].expand(batch, -1)], 1)

    def landmarks(self, vertices_cam: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) camera space → (B, 68, 3) camera-space landmark points (project them for pixels)."""
        indices = self.landmark_vertex_indices(vertices_cam)
        return vertices_cam.gather(1, indices[..., None].expand(-1, -1, 3))

    # ------------------------------------------------------------------ appearance
    def shade(self, albedo: torch.Tensor, normals_cam: torch.Tensor, lighting: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) albedo, camera-space normals, (B, 27) SH lighting → (B, N, 3) colours.

        Zero lighting gives irradiance `config.ambient_light` (1.0: colour = albedo); see geometry.lighting.
        """
        return sh_shade(albedo, normals_cam, lighting, ambient=self.config.ambient_light)
