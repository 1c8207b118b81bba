"""Tiny random `FaceModel`s for unit tests (no shipped weights, no shared data)."""

from __future__ import annotations

import numpy as np

from eyeglass3d.models.face_model import NUM_CONTOUR_LANDMARKS, NUM_LANDMARKS, FaceModel

# A unit octahedron, counter-clockwise seen from outside: its outward normals are the vertices.
OCTAHEDRON_VERTICES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
OCTAHEDRON_TRIANGLES = np.array(
    [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]], np.int64
)


def tiny_face_model(
    num_vertices: int = 90, identity_dim: int = 4, expression_dim: int = 3, contour_candidates: int = 2, seed: int = 0
) -> FaceModel:
    """Vertices on a face-sized cap (about 16 cm wide, 3 cm deep) in front of the model origin.

    Landmark i is vertex i; jaw landmark j's other candidate is vertex 68 + j. Bases are random, a few
    mm per unit coefficient, like a real model's leading modes.
    """
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-0.08, 0.08, (num_vertices, 2))
    z = 0.10 - 3.0 * (xy**2).sum(1)
    mean = np.concatenate([xy, z[:, None]], 1)
    candidates = np.repeat(np.arange(NUM_CONTOUR_LANDMARKS)[:, None], contour_candidates, 1)
    candidates[:, 1:] = NUM_LANDMARKS + np.arange(NUM_CONTOUR_LANDMARKS)[:, None] % (num_vertices - NUM_LANDMARKS)
    arrays = {
        "mean_shape_m": mean,
        "identity_basis_m": rng.normal(0, 0.004, (identity_dim, num_vertices, 3)),
        "expression_basis_m": rng.normal(0, 0.006, (expression_dim, num_vertices, 3)),
        "texture_mean": np.full((num_vertices, 3), 0.6),
        "texture_basis": rng.normal(0, 0.05, (5, num_vertices, 3)),
        "triangles": rng.integers(0, num_vertices, (7, 3)),
        "uv_coords": rng.uniform(0, 2, (11, 2)),
        "uv_triangles": rng.integers(0, 11, (7, 3)),
        "landmark_indices": np.arange(NUM_LANDMARKS),
        "contour_candidate_indices": candidates,
        "mirror_index": rng.permutation(num_vertices),
    }
    return FaceModel.from_arrays(
        arrays, expression_names=[f"shape{i}" for i in range(expression_dim)], focal_ratio=2.0, camera_distance_m=0.5
    )


def octahedron_face_model() -> FaceModel:
    """Six vertices and eight outward-wound triangles, for normal and shading checks."""
    count = len(OCTAHEDRON_VERTICES)
    arrays = {
        "mean_shape_m": OCTAHEDRON_VERTICES,
        "identity_basis_m": np.zeros((1, count, 3)),
        "expression_basis_m": np.zeros((1, count, 3)),
        "texture_mean": np.full((count, 3), 0.5),
        "texture_basis": np.zeros((1, count, 3)),
        "triangles": OCTAHEDRON_TRIANGLES,
        "uv_coords": np.zeros((count, 2)),
        "uv_triangles": OCTAHEDRON_TRIANGLES,
        "landmark_indices": np.zeros(NUM_LANDMARKS, np.int64),
        "contour_candidate_indices": np.zeros((NUM_CONTOUR_LANDMARKS, 1), np.int64),
        "mirror_index": np.array([1, 0, 2, 3, 4, 5]),
    }
    return FaceModel.from_arrays(arrays)


def dome_face_model(count: int = 41) -> FaceModel:
    """A smooth face-sized dome (16 cm wide, 20 cm tall) meshed as a `count`² grid, with smooth bases and a
    patterned albedo, for fits that compare renders: every vertex is face area, landmark i is a distinct
    inner grid vertex, jaw landmarks have themselves as their only candidate."""
    v, u = np.mgrid[1 : -1 : count * 1j, -1 : 1 : count * 1j]  # row 0 at the top (v = +1)
    u, v = u.ravel(), v.ravel()
    mean = np.stack([0.08 * u, 0.10 * v, 0.10 - 0.04 * (u**2 + v**2)], -1)
    bump = np.exp(-(u**2 + (v + 0.1) ** 2) / 0.08)
    zeros = np.zeros_like(u)
    identity = np.stack(
        [
            np.stack([0.006 * u, zeros, zeros], -1),  # width
            np.stack([zeros, 0.006 * v, zeros], -1),  # height
            np.stack([zeros, zeros, 0.008 * bump], -1),  # a nose
            np.stack([zeros, zeros, 0.004 * u * v], -1),  # a twist
        ]
    )
    expression = np.stack([np.stack([zeros, -0.006 * np.clip(-v, 0, None) ** 2, zeros], -1)])  # a jaw drop
    pattern = [np.sin(3 * np.pi * u) * np.cos(2 * np.pi * v), np.cos(4 * np.pi * v + u), np.sin(2 * np.pi * (u + v))]
    texture_mean = np.stack([0.6 + 0.15 * pattern[0], 0.45 + 0.12 * pattern[1], 0.4 + 0.1 * pattern[2]], -1)
    # Texture modes of a finer pattern than any second-order SH shading of the dome can mimic.
    texture = np.stack([np.stack([0.05 * np.sin(5 * np.pi * u), 0.03 * np.sin(5 * np.pi * u), zeros], -1),
                        np.stack([0.04 * np.cos(5 * np.pi * v)] * 3, -1),
                        np.stack([zeros, 0.04 * np.sin(4 * np.pi * (u - v)), 0.04 * np.sin(4 * np.pi * (u - v))], -1)])
    grid = np.arange(count * count).reshape(count, count)
    a, b, c, d = grid[:-1, :-1].ravel(), grid[:-1, 1:].ravel(), grid[1:, 1:].ravel(), grid[1:, :-1].ravel()
    # Row index grows downwards (v decreasing): (a, d, c) and (a, c, b) are counter-clockwise seen from +z.
    triangles = np.concatenate([np.stack([a, d, c], 1), np.stack([a, c, b], 1)])
    inner = grid[4:-4:4, 4:-4:4].ravel()  # 8 × 8 = 64 vertices
    extra = grid[count // 2 + 1 : count // 2 + 5, 2]
    landmarks = np.concatenate([inner, extra])[:NUM_LANDMARKS]
    arrays = {
        "mean_shape_m": mean,
        "identity_basis_m": identity,
        "expression_basis_m": expression,
        "texture_mean": texture_mean,
        "texture_basis": texture,
        "triangles": triangles,
        "uv_coords": np.stack([(u + 1) / 2, (v + 1) / 2], -1),
        "uv_triangles": triangles,
        "landmark_indices": landmarks,
        "contour_candidate_indices": landmarks[:NUM_CONTOUR_LANDMARKS, None],
        "mirror_index": grid[:, ::-1].ravel(),
    }
    return FaceModel.from_arrays(
        arrays,
        expression_names=["jawDrop"],
        face_area_vertices=count * count,
        face_area_triangles=len(triangles),
        focal_ratio=2.0,
        camera_distance_m=0.6,
        has_texture_basis=True,
    )
