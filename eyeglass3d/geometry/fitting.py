"""Fit identity, expression and pose of the `FaceModel` to 68 landmarks (Levenberg-Marquardt).

This is the reconstruction path until the coefficient regressor ships, and it makes the regressor's
pseudo ground truth. Landmarks are pixels of a square `image_size` crop (the canonical crop of
`geometry.alignment`, whose camera `FaceModel.project` describes).

Only the few hundred vertices that can be landmarks are evaluated and the Jacobian is written out by
hand (no autograd), so a face takes about a millisecond per iteration and the code runs the same
under `torch.inference_mode`. The pose starts from a closed-form weak-perspective estimate; the jaw
landmarks slide along their candidate lines (`FaceModel.landmark_vertex_indices`) at every iteration
as the pose changes.
"""

from __future__ import annotations

import torch

from ..models.face_model import COEFFICIENT_SIZES, NUM_CONTOUR_LANDMARKS, NUM_LANDMARKS, FaceModel, contour_choice
from .camera import euler_angles, rotation_matrix, rotation_matrix_derivatives

POSE_SIZE = COEFFICIENT_SIZES["pose"]


class _LandmarkSubset:
    """The model restricted to the vertices that can be landmarks: M rows, bases as (M, 3, K)."""

    def __init__(self, face_model: FaceModel, identity_modes: int, dtype: torch.dtype):
        candidates = face_model.contour_candidate_indices
        vertex_ids = torch.cat([candidates.flatten(), face_model.landmark_indices[NUM_CONTOUR_LANDMARKS:]])
        self.candidates_per_landmark = candidates.shape[1]
        self.mean = face_model.mean_shape_m[vertex_ids].to(dtype)
        self.identity = face_model.identity_basis_m[:identity_modes, vertex_ids].permute(1, 2, 0).to(dtype)
        self.expression = face_model.expression_basis_m[:, vertex_ids].permute(1, 2, 0).to(dtype)
        contour_rows = NUM_CONTOUR_LANDMARKS * self.candidates_per_landmark
        self.fixed_rows = torch.arange(contour_rows, len(vertex_ids))
        self.rest_translation = face_model.rest_translation_m(self.mean)

    def points(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """(B, M, 3) model-space positions of every candidate vertex."""
        return (
            self.mean
            + torch.einsum("mck,bk->bmc", self.identity, identity)
            + torch.einsum("mck,bk->bmc", self.expression, expression)
        )

    def landmark_rows(self, points_cam: torch.Tensor) -> torch.Tensor:
        """(B, M, 3) camera-space candidates → (B, 68) rows: the jaw on the outline, the rest fixed."""
        batch, count = points_cam.shape[0], self.candidates_per_landmark
        contour = points_cam[:, : NUM_CONTOUR_LANDMARKS * count].reshape(batch, NUM_CONTOUR_LANDMARKS, count, 3)
        offsets = torch.arange(NUM_CONTOUR_LANDMARKS, device=points_cam.device) * count
        return torch.cat([contour_choice(contour) + offsets, self.fixed_rows.expand(batch, -1)], 1)


def _rigid_start(subset: _LandmarkSubset, target: torch.Tensor) -> torch.Tensor:
    """Closed-form pose (B, 6) from the non-jaw landmarks of the mean face (weak perspective).

    An affine camera q ≈ A·X + m is solved by least squares; its rows give the rotation (orthonormalised)
    and the scale, i.e. the inverse depth of the landmarks' centroid, which places the head.
    """
    model_points = subset.mean[subset.fixed_rows]  # (51, 3)
    image_points = target[:, NUM_CONTOUR_LANDMARKS:]  # (B, 51, 2) normalised camera coordinates
    design = torch.cat([model_points, torch.ones_like(model_points[:, :1])], 1)
    solution = torch.linalg.lstsq(design.expand(len(target), -1, -1), image_points).solution  # (B, 4, 2)
    rows = solution[:, :3].transpose(1, 2)  # (B, 2, 3)
    scale = rows.norm(dim=-1).mean(-1)
    first, second = torch.nn.functional.normalize(rows, dim=-1).unbind(1)
    stacked = torch.stack([first, second, torch.linalg.cross(first, second, dim=-1)], 1)
    left, _, right = torch.linalg.svd(stacked)
    rotation = left @ right
    model_centroid = model_points.mean(0)
    image_centroid = image_points.mean(1)
    depth = 1.0 / scale
    centroid_cam = torch.stack([image_centroid[:, 0] * depth, image_centroid[:, 1] * depth, -depth], -1)
    translation = centroid_cam - rotation @ model_centroid - subset.rest_translation
    return torch.cat([euler_angles(rotation), translation], -1)


def fit_landmarks(
    face_model: FaceModel,
    landmarks_px: torch.Tensor,
    image_size: int,
    *,
    iterations: int = 10,
    identity_modes: int = 80,
    identity_prior: float = 3e-5,
    expression_prior: float = 3e-3,
    depth_prior: float = 0.03,
    landmark_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Coefficients (MAP under Gaussian priors) that project the model onto 68 landmarks.

    landmarks_px: (68, 2) or (B, 68, 2) iBUG-68 points in pixels of a square crop of `image_size`;
        a single face is returned as a batch of one.
    identity_modes: the first K identity modes are fitted (fewer is faster; the rest come back as
        zeros, like texture and lighting).
    identity_prior, expression_prior: Tikhonov weights relative to the squared landmark error in
        crop units (1.0 = crop width), i.e. about the landmark noise variance (3e-5 ≈ (0.55 %)²). Chosen
        by 4-fold held-out-landmark validation on 200 UTKFace faces with dlib's points: held-out error
        1.98 px (224-px crop) with fitted identity coefficients of RMS 0.84, consistent with their
        N(0, 1) prior. Expression weights are also kept within 0..1, their blendshape range.
    depth_prior: Tikhonov weight on the depth translation (metres). Landmarks barely tell a small
        near head from a big far one, and identity mode 0 is 85 % a global scale, so without it the
        fit slides along that valley. 0.03 ≈ 3e-5 / (3 cm)²: heads vary about 5 % in size, i.e. 3 cm
        of depth at 0.6 m. (With ICT's own landmark vertices, UTKFace fits averaged identity[0] ≈ 2.4:
        dlib places its points differently. The vertices of tools/landmarks_dlib68.json bring it to 0.9 on
        adult val faces, 1.5 with UTKFace's many infants, whose proportions no adult model holds.)
    landmark_weights: (68,) optional per-landmark weights (default all 1).

    Returns {"identity": (B, 80), "expression": (B, 53), "texture": (B, 80) zeros, "lighting": (B, 27)
    zeros, "pose": (B, 6), "landmark_rmse_px": (B,)} in the dtype of `landmarks_px`.
    """
    out_dtype = landmarks_px.dtype if landmarks_px.is_floating_point() else torch.float32
    pixels = landmarks_px.reshape(-1, NUM_LANDMARKS, 2).to(torch.float64)
    batch = pixels.shape[0]
    subset = _LandmarkSubset(face_model, identity_modes, torch.float64)
    identity_modes = subset.identity.shape[-1]
    focal_ratio = face_model.config.focal_ratio
    focal_px = focal_ratio * image_size
    # Normalised camera coordinates: x_cam / depth and y_cam / depth (y up).
    target = torch.stack([pixels[..., 0] - image_size / 2, image_size / 2 - pixels[..., 1]], -1) / focal_px
    weights = torch.ones(NUM_LANDMARKS, dtype=torch.float64) if landmark_weights is None else landmark_weights
    residual_scale = (focal_ratio * weights.to(torch.float64).sqrt()).repeat_interleave(2)  # → crop units
    expression_dim = subset.expression.shape[-1]
    prior = torch.cat(
        [
            torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, depth_prior], dtype=torch.float64),
            torch.full((identity_modes,), identity_prior, dtype=torch.float64),
            torch.full((expression_dim,), expression_prior, dtype=torch.float64),
        ]
    )
    params = torch.cat(
        [_rigid_start(subset, target), torch.zeros(batch, identity_modes + expression_dim, dtype=torch.float64)], 1
    )

    def split(values):
        return values.split([3, 3, identity_modes, expression_dim], dim=1)

    def residuals(values, with_jacobian: bool):
        angles, translation, identity, expression = split(values)
        rotation = rotation_matrix(angles)
        model_points = subset.points(identity, expression)
        points_cam = model_points @ rotation.transpose(1, 2) + (translation + subset.rest_translation)[:, None]
        rows = subset.landmark_rows(points_cam)
        chosen = points_cam.gather(1, rows[..., None].expand(-1, -1, 3))  # (B, 68, 3)
        depth = -chosen[..., 2]
        projected = chosen[..., :2] / depth[..., None]
        residual = (projected - target).reshape(batch, -1) * residual_scale
        cost = (residual**2).sum(1) + (prior * values**2).sum(1)
        if not with_jacobian:
            return cost, projected, None, None
        x_model = model_points.gather(1, rows[..., None].expand(-1, -1, 3))
        d_angles = torch.einsum("bipq,blq->blpi", rotation_matrix_derivatives(angles), x_model)
        d_translation = torch.eye(3, dtype=values.dtype).expand(batch, NUM_LANDMARKS, 3, 3)
        d_identity = torch.einsum("bpq,blqk->blpk", rotation, subset.identity[rows])
        d_expression = torch.einsum("bpq,blqk->blpk", rotation, subset.expression[rows])
        d_points = torch.cat([d_angles, d_translation, d_identity, d_expression], -1)  # (B, 68, 3, P)
        inverse_depth = 1.0 / depth
        d_projection = torch.zeros(batch, NUM_LANDMARKS, 2, 3, dtype=values.dtype)
        d_projection[..., 0, 0] = inverse_depth
        d_projection[..., 1, 1] = inverse_depth
        d_projection[..., :, 2] = projected * inverse_depth[..., None]
        jacobian = (d_projection @ d_points).reshape(batch, 2 * NUM_LANDMARKS, -1) * residual_scale[:, None]
        return cost, projected, residual, jacobian

    damping = torch.full((batch,), 1e-3, dtype=torch.float64)
    for _ in range(iterations):
        cost, _, residual, jacobian = residuals(params, with_jacobian=True)
        hessian = jacobian.transpose(1, 2) @ jacobian + torch.diag(prior)
        gradient = (jacobian.transpose(1, 2) @ residual[..., None])[..., 0] + prior * params
        # Active set: an expression weight at 0 (or 1) that the gradient pushes further out stays put.
        expression = params[:, -expression_dim:]
        expression_gradient = gradient[:, -expression_dim:]
        at_bound = ((expression <= 0) & (expression_gradient > 0)) | ((expression >= 1) & (expression_gradient < 0))
        free = torch.cat([torch.ones_like(params[:, :-expression_dim], dtype=torch.bool), ~at_bound], 1).to(params)
        hessian = hessian * free[:, :, None] * free[:, None, :] + torch.diag_embed(1.0 - free)
        gradient = gradient * free
        diagonal = torch.diagonal(hessian, dim1=1, dim2=2)
        step = torch.linalg.solve(hessian + torch.diag_embed(damping[:, None] * diagonal), -gradient)
        trial = params + step
        trial[:, -expression_dim:] = trial[:, -expression_dim:].clamp(0.0, 1.0)
        trial_cost, *_ = residuals(trial, with_jacobian=False)
        better = trial_cost < cost
        params = torch.where(better[:, None], trial, params)
        damping = torch.where(better, damping * 0.3, damping * 10.0).clamp(1e-7, 1e4)

    angles, translation, fitted_identity, fitted_expression = split(params)
    _, projected, *_ = residuals(params, with_jacobian=False)
    rmse_px = ((projected - target) ** 2).sum(-1).mean(-1).sqrt() * focal_px
    identity_full = torch.zeros(batch, face_model.config.identity_dim, dtype=torch.float64)
    identity_full[:, : fitted_identity.shape[1]] = fitted_identity
    coefficients = {
        "identity": identity_full,
        "expression": fitted_expression,
        "texture": torch.zeros(batch, face_model.config.texture_dim, dtype=torch.float64),
        "lighting": torch.zeros(batch, COEFFICIENT_SIZES["lighting"], dtype=torch.float64),
        "pose": torch.cat([angles, translation], 1),
        "landmark_rmse_px": rmse_px,
    }
    return {name: value.to(out_dtype) for name, value in coefficients.items()}
