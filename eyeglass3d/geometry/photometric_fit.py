"""Refine a landmark fit against the photo's colours: shape, pose, SH lighting and (with a basis) albedo.

`fit_landmarks` places the model from 68 points; this step makes the rendered face match the crop's pixels
over the visible skin, as analysis-by-synthesis 3DMM fitting does (Blanz & Vetter 1999; the loss follows
Deep3DFaceRecon, Deng et al. 2019: a robust per-point colour distance, a landmark term and Gaussian priors).
It gives the lighting and texture coefficients the pipeline needs for its albedo fill, and the shading that
`training/build_albedo.py` divides out of the photos.

The photometric term is evaluated at the model's vertices rather than at rendered pixels: each face-area
vertex is shaded (albedo × SH irradiance of its camera-space normal) and compared with the photo sampled
(bilinear, slightly blurred) where it projects. Its gradient reaches the pose and shape through the photo's
image gradient and through the normals. The ICT face's vertices are 2-4 px apart in a 224-px crop, so this
is a pixel loss at the mesh's own resolution, and it costs one shape evaluation instead of a rasterisation
per step. Visibility (z-buffer, facing, grazing angle) and the skin mask are looked up per vertex; the
z-buffer is rasterised only every `visibility_every` steps.

Frames: crop pixels of a square `image_size` crop (the canonical crop of `geometry.alignment`, whose camera
`FaceModel.project` describes), camera space (metres), colours as the photo's values / 255 (the space the
pipeline's textures and `FaceModel.texture_mean` live in; no gamma is undone).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..models.face_model import FaceModel, contour_choice
from ..render.rasterizer import rasterize
from .camera import rotation_matrix
from .face_regions import PARSING_LABELS, parsing_from_landmarks
from .lighting import LAMBERT_BAND_CONSTANTS, SH_COEFFICIENTS, _Y0, irradiance, sh_basis

# Parsing labels the photometric term trusts: the albedo model knows skin, not eyes, brows or teeth.
FIT_LABELS = ("skin", "nose")
# How far (in eye distances) the skin mask keeps away from the landmark-drawn eyes, brows and mouth.
EXCLUDE_GROW = 0.08
# Cosine between the vertex normal and the direction to the camera: no weight below the first, full above.
GRAZING_COSINE = (0.15, 0.45)
# Vertices whose normal is within acos(this) of the camera direction bound the fill's irradiance.
FACING_COSINE = 0.3
# A vertex is hidden when the z-buffer at its pixel is nearer than its own depth by more than this (metres).
DEPTH_TOLERANCE_M = 0.004

# Alternations of the linear lighting and texture solves before the descent.
LINEAR_ROUNDS = 4
# Adam step sizes per group at learning_rate 1: radians, metres, N(0, 1) units, blendshape weights, SH.
_STEPS = {
    "angles": 3e-3,
    "translation": 1e-3,
    "identity": 0.05,
    "expression": 0.02,
    "texture": 0.05,
    "lighting": 0.01,
}


def skin_mask(landmarks_px: np.ndarray, size: int, labels=FIT_LABELS, grow: float = EXCLUDE_GROW) -> np.ndarray:
    """(B, 68, 2) landmarks → (B, size, size) bool: the landmark-drawn face parts in `labels`, less the eyes
    and brows grown by `grow` eye distances (landmark-drawn brows are thinner than most brows)."""
    wanted = [PARSING_LABELS.index(name) for name in labels]
    excluded = [PARSING_LABELS.index(name) for name in ("brows", "eyes")]
    landmarks = np.asarray(landmarks_px, np.float64).reshape(-1, 68, 2)
    masks = []
    for points in landmarks:
        parsing = parsing_from_landmarks(points, size, size)
        radius = int(round(grow * np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0))))
        near_excluded = np.isin(parsing, excluded).astype(np.uint8)
        if radius > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            near_excluded = cv2.dilate(near_excluded, kernel)
        masks.append(np.isin(parsing, wanted) & (near_excluded == 0))
    return np.stack(masks)


def smoothstep(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """0 below `low`, 1 above `high`, a smooth cubic between (grazing-angle weights)."""
    t = ((value - low) / (high - low)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def to_images(images) -> torch.Tensor:
    """(B, S, S, 3) uint8 array/tensor or float in [0, 1] → (B, 3, S, S) float32 in [0, 1]."""
    tensor = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    tensor = tensor.reshape(-1, *tensor.shape[-3:])
    tensor = tensor.float() / 255.0 if not tensor.is_floating_point() else tensor.float()
    return tensor.permute(0, 3, 1, 2).contiguous()


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return images
    array = images.permute(0, 2, 3, 1).numpy()
    blurred = np.stack([cv2.GaussianBlur(image, (0, 0), sigmaX=sigma) for image in array])
    return torch.from_numpy(blurred.reshape(array.shape)).permute(0, 3, 1, 2).contiguous()


def sample_image(images: torch.Tensor, points_px: torch.Tensor) -> torch.Tensor:
    """Bilinear colours (B, N, 3) of images (B, 3, S, S) at pixel points (B, N, 2) (centres at +0.5)."""
    size = images.shape[-1]
    grid = (points_px * (2.0 / size) - 1.0)[:, :, None]  # align_corners=False: pixel centres at +0.5
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)[
        ..., 0
    ].transpose(1, 2)


class _FaceArea:
    """The model restricted to its face-area vertices and triangles (the caps included)."""

    def __init__(self, face_model: FaceModel):
        count = face_model.config.face_area_vertices
        self.model = face_model
        self.count = count
        self.triangles = face_model.triangles[: face_model.config.face_area_triangles]
        self.mean = face_model.mean_shape_m[:count]
        self.identity = face_model.identity_basis_m[:, :count]
        self.expression = face_model.expression_basis_m[:, :count]
        self.texture_mean = face_model.texture_mean[:count]
        self.texture = face_model.texture_basis[:, :count]

    def shape(self, identity, expression):
        return (
            self.mean
            + torch.einsum("bk,knc->bnc", identity, self.identity)
            + torch.einsum("bk,knc->bnc", expression, self.expression)
        )

    def normals(self, vertices):
        corners = vertices[:, self.triangles]
        face_normals = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
        normals = torch.zeros_like(vertices)
        for corner in range(3):
            normals = normals.index_add(1, self.triangles[:, corner], face_normals)
        return torch.nn.functional.normalize(normals, dim=-1)

    def albedo(self, texture):
        return self.texture_mean + torch.einsum("bk,knc->bnc", texture, self.texture)

    def geometry(self, identity, expression, pose, image_size):
        """Camera-space vertices and normals, pixel positions (x, y, depth)."""
        camera = self.model.to_camera(self.shape(identity, expression), pose)
        return camera, self.normals(camera), self.model.project(camera, image_size)


def vertex_visibility(
    camera: torch.Tensor, normals: torch.Tensor, projected: torch.Tensor, triangles: torch.Tensor, image_size: int
) -> torch.Tensor:
    """(B, N) weights in [0, 1]: unoccluded in the crop's z-buffer, a pixel away from the mesh's outline (so
    that a bilinear sample sees no background), and facing the camera.

    camera, normals (B, N, 3) camera space; projected (B, N, 3) pixels + depth; triangles index them.
    """
    with torch.no_grad():
        depth_buffer = rasterize(projected, triangles, image_size, image_size).depth  # (B, S, S), +inf empty
        col, row = projected[..., 0].floor().long(), projected[..., 1].floor().long()
        inside = (col >= 0) & (col < image_size) & (row >= 0) & (row < image_size)
        flat = (row.clamp(0, image_size - 1) * image_size + col.clamp(0, image_size - 1))
        nearest = depth_buffer.flatten(1).gather(1, flat)
        # The bilinear footprint must lie on the face: pixels within one of an empty pixel do not count.
        covered = torch.isfinite(depth_buffer).float()[:, None]
        covered = -torch.nn.functional.max_pool2d(-covered, 3, stride=1, padding=1)[:, 0]
        inside &= covered.flatten(1).gather(1, flat) > 0
        unoccluded = inside & (projected[..., 2] <= nearest + DEPTH_TOLERANCE_M)
        cosine = (normals * torch.nn.functional.normalize(-camera, dim=-1)).sum(-1)
        return unoccluded.to(camera.dtype) * smoothstep(cosine, *GRAZING_COSINE)


def mask_at(masks: torch.Tensor, points_px: torch.Tensor) -> torch.Tensor:
    """(B, S, S) masks looked up at the nearest pixel of (B, N, 2) points → (B, N) float."""
    size = masks.shape[-1]
    col = points_px[..., 0].floor().long().clamp(0, size - 1)
    row = points_px[..., 1].floor().long().clamp(0, size - 1)
    return masks.flatten(1).float().gather(1, row * size + col)


def irradiance_basis(normals: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) unit normals → (B, N, 9) SH irradiance basis (as `geometry.lighting.sh_basis`)."""
    return sh_basis(normals)


def solve_lighting(
    albedo: torch.Tensor,
    normals: torch.Tensor,
    colours: torch.Tensor,
    weights: torch.Tensor,
    ambient: float,
    prior: float = 1e-3,
) -> torch.Tensor:
    """Least-squares SH lighting (B, 27) with colour ≈ albedo · E(n), per channel, under a ridge towards zero.

    `prior` is relative to the weighted sum of squared colours, so it means the same for any number of points.
    """
    basis = irradiance_basis(normals)  # (B, N, 9)
    offset = torch.zeros(SH_COEFFICIENTS, dtype=basis.dtype)
    offset[0] = ambient / (LAMBERT_BAND_CONSTANTS[0] * _Y0)
    solutions = []
    for channel in range(3):
        design = albedo[..., channel : channel + 1] * basis  # (B, N, 9)
        target = colours[..., channel] - design @ offset  # what the coefficients beyond ambient must explain
        weighted = design * weights[..., None]
        normal = weighted.transpose(1, 2) @ design
        scale = (weighted * design).sum((1, 2)) / SH_COEFFICIENTS
        normal = normal + prior * scale[:, None, None] * torch.eye(SH_COEFFICIENTS, dtype=basis.dtype)
        rhs = (weighted.transpose(1, 2) @ target[..., None])[..., 0]
        solutions.append(torch.linalg.solve(normal, rhs))
    return torch.cat(solutions, -1)


def solve_texture(
    area: _FaceArea, shading: torch.Tensor, colours: torch.Tensor, weights: torch.Tensor, prior: float
) -> torch.Tensor:
    """Least-squares texture coefficients (B, K) with colour ≈ (mean + basis·t) · E, under `prior`·|t|²
    relative to the per-point squared error."""
    basis = area.texture.permute(1, 2, 0)  # (N, 3, K)
    design = (shading[..., None] * basis).flatten(1, 2)  # (B, 3N, K)
    target = (colours - shading * area.texture_mean).flatten(1)
    point_weights = weights.repeat_interleave(3, 1)
    weighted = design * point_weights[..., None]
    total = point_weights.sum(1).clamp_min(1.0)
    normal = weighted.transpose(1, 2) @ design + prior * total[:, None, None] * torch.eye(basis.shape[-1])
    return torch.linalg.solve(normal, (weighted.transpose(1, 2) @ target[..., None])[..., 0])


def fit_photometric(
    face_model: FaceModel,
    images,
    landmarks_px: torch.Tensor,
    initial: dict[str, torch.Tensor],
    *,
    iterations: int = 40,
    masks: np.ndarray | torch.Tensor | None = None,
    fit_shape: bool = True,
    fit_texture: bool | None = None,
    photo_weight: float = 0.1,
    landmark_weight: float = 1.0,
    identity_prior: float = 3e-5,
    expression_prior: float = 3e-3,
    texture_prior: float = 3e-4,
    lighting_prior: float = 1e-3,
    learning_rate: float = 1.0,
    blur_px: float = 1.0,
    visibility_every: int = 20,
) -> dict[str, torch.Tensor]:
    """Coefficients refined by Adam on photometric error + landmark error + priors, for a batch of faces.

    images: (B, S, S, 3) crops (uint8, or float in [0, 1]); landmarks_px: (B, 68, 2) in their pixels.
    initial: `fit_landmarks` output (identity, expression, pose; texture and lighting are re-estimated).
    masks: (B, S, S) bool, where the photo shows skin; default the landmark-drawn skin and nose.
    fit_shape: False keeps identity, expression and pose (only lighting and texture are fitted).
    fit_texture: fit texture coefficients (default: when `face_model.config.has_texture_basis`); when
        False, `initial["texture"]` (or zeros) is kept.
    photo_weight: weight of the mean colour distance (Euclidean, in [0, 1] units, over the weighted
        vertices) against the landmark term, the squared landmark error summed over the 68 points in crop
        units (1.0 = crop width) as in `fit_landmarks`, whose identity/expression priors are reused;
        `landmark_weight` scales that term (0: colours alone).
    texture_prior, lighting_prior: ridge weights of the linear starts (relative to the per-point squared
        colour error) and, times `photo_weight`, the priors on |texture|² and |lighting|² during descent.
    learning_rate: multiplies each group's Adam step (radians, metres, N(0,1) units; see `_STEPS`).

    Returns the `fit_landmarks` keys plus "photometric_error" (B,) (mean colour distance over the final
    weights) and "landmark_rmse_px" (B,), in float32.
    """
    dtype = torch.float32
    area = _FaceArea(face_model)
    image_size = int(np.asarray(images).shape[-2]) if not isinstance(images, torch.Tensor) else images.shape[-2]
    photos = to_images(images)
    blurred = _blur(photos, blur_px)
    batch = photos.shape[0]
    target_px = torch.as_tensor(landmarks_px, dtype=dtype).reshape(batch, 68, 2)
    if masks is None:
        masks = skin_mask(target_px.numpy(), image_size)
    masks = torch.as_tensor(np.asarray(masks)).reshape(batch, image_size, image_size)
    if fit_texture is None:
        fit_texture = bool(face_model.config.has_texture_basis)
    ambient = face_model.config.ambient_light

    params = {name: initial[name].detach().to(dtype).reshape(batch, -1).clone() for name in ("identity", "expression")}
    params["angles"] = initial["pose"].detach().to(dtype)[:, :3].clone()
    params["translation"] = initial["pose"].detach().to(dtype)[:, 3:].clone()
    params["texture"] = torch.zeros(batch, face_model.config.texture_dim, dtype=dtype)
    if not fit_texture and "texture" in initial:
        params["texture"] = initial["texture"].detach().to(dtype).reshape(batch, -1).clone()

    def pose():
        return torch.cat([params["angles"], params["translation"]], 1)

    # Linear starts: lighting for the current albedo; with a texture basis, alternate texture and lighting.
    with torch.no_grad():
        camera, normals, projected = area.geometry(params["identity"], params["expression"], pose(), image_size)
        weights = vertex_visibility(camera, normals, projected, area.triangles, image_size)
        weights = weights * mask_at(masks, projected[..., :2])
        colours = sample_image(blurred, projected[..., :2])
        for _ in range(LINEAR_ROUNDS if fit_texture else 1):
            params["lighting"] = solve_lighting(
                area.albedo(params["texture"]), normals, colours, weights, ambient, lighting_prior
            )
            if fit_texture:
                shading = face_model.shade(torch.ones_like(colours), normals, params["lighting"])
                params["texture"] = solve_texture(area, shading, colours, weights, texture_prior)

    trainable = ["lighting"] + (["texture"] if fit_texture else [])
    if fit_shape:
        trainable += ["identity", "expression", "angles", "translation"]
    for name in trainable:
        params[name].requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": [params[name]], "lr": learning_rate * _STEPS[name]} for name in trainable])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(iterations, 1), eta_min=0.0)

    for step in range(iterations + 1):
        with torch.enable_grad():
            camera, normals, projected = area.geometry(params["identity"], params["expression"], pose(), image_size)
            rendered = face_model.shade(area.albedo(params["texture"]), normals, params["lighting"])
            distance = (rendered - sample_image(blurred, projected[..., :2])).pow(2).sum(-1).add(1e-8).sqrt()
            photometric = (weights * distance).sum(1) / weights.sum(1).clamp_min(1e-6)
            landmarks_now = face_model.project(_landmarks(face_model, params, pose()), image_size)[..., :2]
            landmark_term = ((landmarks_now - target_px) / image_size).pow(2).sum((1, 2))
            prior = identity_prior * params["identity"].pow(2).sum(1)
            prior = prior + expression_prior * params["expression"].pow(2).sum(1)
            prior = prior + photo_weight * texture_prior * params["texture"].pow(2).sum(1)
            prior = prior + photo_weight * lighting_prior * params["lighting"].pow(2).sum(1)
            if step == iterations:
                break
            optimizer.zero_grad(set_to_none=True)
            (photo_weight * photometric + landmark_weight * landmark_term + prior).sum().backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            params["expression"].clamp_(0.0, 1.0)
            if fit_shape and visibility_every and (step + 1) % visibility_every == 0 and step + 1 < iterations:
                camera, normals, projected = area.geometry(params["identity"], params["expression"], pose(), image_size)
                weights = vertex_visibility(camera, normals, projected, area.triangles, image_size)
                weights = weights * mask_at(masks, projected[..., :2])

    result = {
        "identity": params["identity"],
        "expression": params["expression"],
        "texture": params["texture"],
        "lighting": params["lighting"],
        "pose": pose(),
        "landmark_rmse_px": (landmarks_now - target_px).pow(2).sum(-1).mean(-1).sqrt(),
        "photometric_error": photometric,
    }
    return {name: value.detach().to(torch.float32) for name, value in result.items()}


def _landmarks(face_model: FaceModel, params: dict[str, torch.Tensor], pose: torch.Tensor) -> torch.Tensor:
    """(B, 68, 3) camera-space landmarks of the current coefficients; only the few hundred candidate vertices
    are evaluated, and the jaw follows the outline as in `FaceModel.landmarks`."""
    candidates = face_model.contour_candidate_indices
    ids = torch.cat([candidates.flatten(), face_model.landmark_indices[candidates.shape[0] :]])
    subset = (
        face_model.mean_shape_m[ids]
        + torch.einsum("bk,knc->bnc", params["identity"], face_model.identity_basis_m[:, ids])
        + torch.einsum("bk,knc->bnc", params["expression"], face_model.expression_basis_m[:, ids])
    )
    camera = subset @ rotation_matrix(pose[:, :3]).transpose(1, 2)
    camera = camera + (pose[:, 3:] + face_model.rest_translation_m(pose))[:, None]
    jaw = camera[:, : candidates.numel()].reshape(len(camera), *candidates.shape, 3)
    chosen = contour_choice(jaw)
    jaw_points = jaw.gather(2, chosen[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
    return torch.cat([jaw_points, camera[:, candidates.numel() :]], 1)


def bounded_shading(
    face_model: FaceModel, albedo: torch.Tensor, camera: torch.Tensor, normals: torch.Tensor, lighting: torch.Tensor
) -> torch.Tensor:
    """Albedo × SH irradiance (B, N, 3), the irradiance held per channel within the range it takes on the
    vertices that face the camera.

    A fit sees light only on the visible side; second-order SH extrapolated to the back of the head swings
    to odd colours. This is the colour the pipeline fills unseen texture with. Zero lighting is unchanged.
    """
    light = irradiance(normals, lighting, face_model.config.ambient_light)
    facing = (normals * torch.nn.functional.normalize(-camera, dim=-1)).sum(-1) > FACING_COSINE  # (B, N)
    huge = torch.finfo(light.dtype).max
    low = torch.where(facing[..., None], light, huge).amin(1, keepdim=True)
    high = torch.where(facing[..., None], light, -huge).amax(1, keepdim=True)
    bounded = torch.where(facing.any(1)[:, None, None], torch.minimum(torch.maximum(light, low), high), light)
    return albedo * bounded
