"""UV texture from one photo: sample the visible surface, fill the rest from its mirror image or the albedo.

Frames: `vertices_px` are (x, y, depth) in the photo's pixel frame of `render.rasterizer` (pixel centres at +0.5,
y down, positive depth, smaller nearer; any depth unit). UVs follow the OBJ convention (v up) and the ICT model's
two UDIM-like tiles (u ∈ [0,1) face, u ∈ [1,2) head and neck), packed side by side into one atlas.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree

from .rasterizer import Fragments, interpolate, rasterize, rasterize_uv

UV_TILES = 2
# Cosine between surface normal and view axis: below the first the photo gets no weight, above the second full.
_GRAZING_COSINE = (0.05, 0.3)
# Feather width of the visibility masks, and blur of the fallback's gain map, as fractions of the atlas height.
_FEATHER_FRACTION = 1.0 / 128.0
_GAIN_SIGMA_FRACTION = 1.0 / 32.0
_ZBUFFER_MAX_SIDE = 256


def atlas_uv(uv_coords: np.ndarray) -> np.ndarray:
    """UDIM tiles (u ∈ [0, UV_TILES)) → atlas UVs in [0,1]², tiles side by side, OBJ v-up kept."""
    uv = np.asarray(uv_coords, np.float64)
    return np.stack([np.clip(uv[:, 0], 0.0, UV_TILES) / UV_TILES, np.clip(uv[:, 1], 0.0, 1.0)], -1).astype(np.float32)


def mirror_vertex_index(vertices: np.ndarray, axis: int = 0) -> np.ndarray:
    """For each vertex, the vertex nearest to its reflection across the plane `axis` = 0 (model space, symmetric)."""
    vertices = np.asarray(vertices, np.float64)
    reflected = vertices.copy()
    reflected[:, axis] *= -1.0
    return cKDTree(vertices).query(reflected)[1].astype(np.int64)


def uv_fragments(uv_coords: np.ndarray, uv_triangles: np.ndarray, size: int) -> Fragments:
    """The atlas rasterised by UV (which triangle each texel belongs to), the same for every face of a model:
    cached by the layout's bytes, as it costs about a third of an unwrap at 512 px."""
    uv = np.ascontiguousarray(atlas_uv(uv_coords))
    triangles = np.ascontiguousarray(uv_triangles, np.int64)
    return _cached_uv_fragments(uv.tobytes(), triangles.tobytes(), size)


@lru_cache(maxsize=4)
def _cached_uv_fragments(uv_bytes: bytes, triangle_bytes: bytes, size: int) -> Fragments:
    uv = torch.from_numpy(np.frombuffer(uv_bytes, np.float32).reshape(-1, 2).copy())
    triangles = torch.from_numpy(np.frombuffer(triangle_bytes, np.int64).reshape(-1, 3).copy())
    return rasterize_uv(uv, triangles, size, UV_TILES * size)


def _smoothstep(value: np.ndarray, low: float, high: float) -> np.ndarray:
    t = np.clip((value - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _push_pull(colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Fill where `weight` is 0 with smoothly spread colours of the weighted texels (pyramid push-pull)."""
    levels = []
    weighted, coverage = colour * weight[..., None], weight.astype(np.float32)
    while max(coverage.shape) > 1:  # down to one texel, so every level has an estimate to pull from
        levels.append((weighted, coverage))
        size = (max(1, coverage.shape[1] // 2), max(1, coverage.shape[0] // 2))
        weighted = cv2.resize(weighted, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
        coverage = cv2.resize(coverage, size, interpolation=cv2.INTER_AREA)
    estimate = weighted / np.maximum(coverage, 1e-8)[..., None]
    for weighted, coverage in reversed(levels):
        upsampled = cv2.resize(estimate, coverage.shape[::-1], interpolation=cv2.INTER_LINEAR)
        upsampled = upsampled.reshape(*coverage.shape, -1)
        alpha = np.clip(coverage, 0.0, 1.0)[..., None]
        estimate = alpha * weighted / np.maximum(coverage, 1e-8)[..., None] + (1.0 - alpha) * upsampled
    return estimate


def _feather(alpha: np.ndarray, covered: np.ndarray, radius: int) -> np.ndarray:
    """Ramp `alpha` down to 0 over `radius` texels inside its support, so layer borders leave no hard edge.

    Texels outside every UV island are first given their neighbours' values, so island borders themselves are not
    treated as mask borders.
    """
    extended = _push_pull(alpha[..., None].astype(np.float32), covered.astype(np.float32))[..., 0]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    shrunk = cv2.erode(extended.astype(np.float32), kernel)
    smooth = cv2.GaussianBlur(shrunk, (0, 0), sigmaX=radius / 2.0)
    return np.minimum(alpha, smooth)


def _wide_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a large sigma, done at reduced resolution (the result is smooth anyway)."""
    factor = max(1, int(sigma // 4))
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, width // factor), max(1, height // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / factor)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).reshape(image.shape)


def _local_gain(
    photo: np.ndarray, fallback: np.ndarray, alpha: np.ndarray, covered: np.ndarray, sigma: float
) -> np.ndarray:
    """Smooth per-channel photo/fallback ratio (H,W,3), spread from the visible texels to the rest.

    The fallback (model albedo, its own lighting) rarely matches the photo's exposure and light, so only its
    detail is kept: the low frequencies come from the photo around it, as in a Laplacian-pyramid blend.
    """
    trusted = (alpha > 0.9).astype(np.float32)
    if trusted.sum() < 16:
        return np.ones_like(photo)
    weight = _wide_blur(trusted, sigma)
    photo_mean = _wide_blur(photo * trusted[..., None], sigma)
    ratio = photo_mean / np.maximum(_wide_blur(fallback * trusted[..., None], sigma), 1.0)
    reliable = (weight > 0.2) & covered
    return np.clip(_push_pull(ratio.astype(np.float32), reliable.astype(np.float32)), 0.25, 4.0)


def _surface_terms(
    vertices_px: torch.Tensor, triangles: torch.Tensor, normals: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Per triangle: front-facing flag, depth plane z = a·x + b·y + c; per vertex: view cosine, steepest slope.

    Facing and slope depend only on the pixel positions and on depth order/units, so they hold for any depth unit.
    The cosine's magnitude needs isotropic units: it comes from `normals` (any frame whose z is the view axis) when
    given, else from `vertices_px` read as (px, px, px).
    """
    corners = vertices_px[triangles]  # (F,3,3)
    face_normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    front = face_normals[:, 2] < 0  # (x, y-down, depth-away) is right-handed: front faces point to -depth
    normal_z = face_normals[:, 2]
    safe_z = torch.where(normal_z.abs() > 1e-12, normal_z, torch.full_like(normal_z, 1e-12))
    gradient = -face_normals[:, :2] / safe_z[:, None]  # (dz/dx, dz/dy) of each triangle's plane
    offset = corners[:, 0, 2] - (gradient * corners[:, 0, :2]).sum(-1)
    slope = gradient.norm(dim=-1)
    corner_index = triangles.reshape(-1)
    vertex_normals = torch.zeros_like(vertices_px).index_add_(0, corner_index, face_normals.repeat_interleave(3, 0))
    facing_sign = torch.where(vertex_normals[:, 2] < 0, 1.0, -1.0)  # the image-area sum: unit-free
    if normals is None:
        normals = vertex_normals
    vertex_cosine = facing_sign * normals[:, 2].abs() / normals.norm(dim=-1).clamp(min=1e-12)
    vertex_slope = torch.zeros(len(vertices_px), dtype=vertices_px.dtype).scatter_reduce(
        0, corner_index, torch.where(front, slope, 0.0).repeat_interleave(3), reduce="amax"
    )
    return {
        "front": front,
        "plane": torch.cat([gradient, offset[:, None]], -1),
        "vertex_cosine": vertex_cosine,
        "vertex_slope": vertex_slope,
    }


def _sample(image: np.ndarray, points_px: np.ndarray) -> np.ndarray:
    """Bilinear colours of `image` at pixel-frame points (..., 2), pixel centres at +0.5."""
    map_xy = (points_px - 0.5).astype(np.float32)
    return cv2.remap(image, map_xy, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)


def unwrap_texture(
    image: np.ndarray,
    vertices_px: np.ndarray,
    triangles: np.ndarray,
    uv_coords: np.ndarray,
    uv_triangles: np.ndarray,
    *,
    size: int = 1024,
    fallback_rgb: np.ndarray | None = None,
    mirror_index: np.ndarray | None = None,
    normals: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bake the photo onto the UV atlas: (texture (size, 2·size, 3) uint8, visible (size, 2·size) bool).

    A texel is *visible* when the photo shows its surface point: that point passes the photo's z-buffer and its
    triangle faces the camera. Grazing texels are down-weighted; the rest takes the mirrored surface point's colour
    where that one is visible (`mirror_index`, vertex → mirror vertex), else the per-vertex `fallback_rgb` in [0,1]
    (gain-matched to the photo around it), else the spread of the nearest visible colours. Layers meet through
    feathered masks; texels outside the UV islands get their neighbours' colours so seams do not bleed black.

    `normals` (N,3), in any frame whose z axis is the viewing axis (e.g. camera space), give the grazing weights
    when the depth of `vertices_px` is not pixel-scaled (metres, say); without them depth is read as pixels.
    """
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    vertices_px = np.asarray(vertices_px, np.float64)
    triangles = np.asarray(triangles, np.int64)
    height, width = image.shape[:2]

    triangles_t = torch.from_numpy(triangles)
    atlas = uv_fragments(uv_coords, uv_triangles, size)
    covered_t = atlas.triangle_index[0] >= 0
    covered = covered_t.numpy()

    vertices_t = torch.from_numpy(vertices_px).float()
    # Which surface is in front, on a grid of at most _ZBUFFER_MAX_SIDE: occlusion edges need no finer grid than
    # the feathering that follows, and the rasteriser's cost grows with the pixels each triangle covers.
    zbuffer_scale = min(1.0, _ZBUFFER_MAX_SIDE / max(height, width))
    zbuffer_height, zbuffer_width = max(1, round(height * zbuffer_scale)), max(1, round(width * zbuffer_scale))
    zbuffer_vertices = vertices_t * torch.tensor([zbuffer_scale, zbuffer_scale, 1.0])
    zbuffer_triangle = rasterize(zbuffer_vertices[None], triangles_t, zbuffer_height, zbuffer_width).triangle_index
    zbuffer_triangle = zbuffer_triangle[0].reshape(-1)
    normals_t = None if normals is None else torch.from_numpy(np.asarray(normals, np.float32))
    terms = _surface_terms(vertices_t, triangles_t, normals_t)
    depth = vertices_t[:, 2]
    # Relative float32 noise of interpolated depths, plus a little of the depth range for the facets' curvature.
    depth_tolerance = 1e-3 * float(depth.max() - depth.min()) + 1e-5 * float(depth.abs().max())

    def surface_points(vertex_order: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image points of the texels on the surface re-indexed by `vertex_order`: (xy, unoccluded, view cosine)."""
        attributes = torch.cat(
            [vertices_t, terms["vertex_cosine"][:, None], terms["vertex_slope"][:, None]], -1
        )[vertex_order]
        x, y, point_depth, cosine, own_slope = interpolate(attributes[None], triangles_t, atlas)[0].unbind(-1)
        col, row = torch.floor(x * zbuffer_scale).long(), torch.floor(y * zbuffer_scale).long()
        inside = covered_t & (col >= 0) & (col < zbuffer_width) & (row >= 0) & (row < zbuffer_height)
        pixel = (row * zbuffer_width + col).clamp(0, zbuffer_height * zbuffer_width - 1)
        winner = torch.where(inside, zbuffer_triangle[pixel], -1)
        safe_winner = winner.clamp(min=0)
        # The winner's depth plane, evaluated at the point itself rather than at its pixel centre.
        plane = terms["plane"][safe_winner]
        winner_depth = plane[..., 0] * x + plane[..., 1] * y + plane[..., 2]
        # A point's own depth slope (depth per pixel) bounds how far the neighbouring facets of its own surface can
        # deviate within a z-buffer pixel; another surface in front is further away than that.
        tolerance = 1.5 * own_slope / zbuffer_scale + depth_tolerance
        unoccluded = (winner >= 0) & (point_depth <= winner_depth + tolerance)
        return torch.stack([x, y], -1).numpy(), unoccluded.numpy(), cosine.numpy()

    points, unoccluded, cosine = surface_points(torch.arange(len(vertices_t)))
    visible = unoccluded & terms["front"][atlas.triangle_index[0].clamp(min=0)].numpy() & covered
    photo = _sample(image, points)
    radius = max(1, round(size * _FEATHER_FRACTION))
    photo_alpha = _feather(visible * _smoothstep(cosine, *_GRAZING_COSINE), covered, radius)

    layers = []
    if mirror_index is not None:
        mirror_points, mirror_unoccluded, mirror_cosine = surface_points(torch.from_numpy(np.asarray(mirror_index)))
        mirror_alpha = mirror_unoccluded * _smoothstep(mirror_cosine, *_GRAZING_COSINE)
        layers.append((_sample(image, mirror_points), _feather(mirror_alpha, covered, radius)))
    layers.append((photo, photo_alpha))

    if fallback_rgb is not None:
        fallback = torch.from_numpy(255.0 * np.asarray(fallback_rgb, np.float32))
        base = interpolate(fallback[None], triangles_t, atlas)[0].numpy()
        base *= _local_gain(photo, base, photo_alpha, covered, sigma=size * _GAIN_SIGMA_FRACTION)
    else:
        total = sum(alpha[..., None] * colour for colour, alpha in layers)
        weight = sum(alpha for _, alpha in layers)
        base = _push_pull(total / np.maximum(weight, 1e-8)[..., None], np.minimum(weight, 1.0))

    texture = base
    for colour, alpha in layers:
        texture = alpha[..., None] * colour + (1.0 - alpha[..., None]) * texture
    texture = _push_pull(texture.astype(np.float32), covered.astype(np.float32))  # keeps covered texels as they are
    return np.clip(np.rint(texture), 0, 255).astype(np.uint8), visible
