"""A small z-buffered triangle rasteriser in NumPy, for the mesh glasses.

Scanline spans instead of per-triangle bounding boxes: the jeeliz frame has thousands of long,
thin triangles, and a bounding-box test would visit millions of empty samples per face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Raster:
    """The nearest surface at each sample: triangle id (-1 where empty) and depth (inf where empty)."""

    triangle: np.ndarray  # (H, W) int32
    depth: np.ndarray  # (H, W) float32, larger = farther from the camera


def front_facing(points_px: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Triangles whose outward side faces the camera, for a closed mesh wound counter-clockwise
    when seen from outside (image y points down, so they turn clockwise on screen)."""
    a, b, c = (points_px[triangles[:, k]] for k in range(3))
    signed_area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return signed_area < 0


def rasterize(points_px: np.ndarray, depth: np.ndarray, triangles: np.ndarray, height: int, width: int) -> Raster:
    """Rasterise triangles given in sample coordinates (sample (i, j) has its centre at (j + 0.5, i + 0.5))."""
    nearest = np.full(height * width, np.inf, np.float32)
    triangle_id = np.full(height * width, -1, np.int32)

    # Sort each triangle's corners top to bottom: every row then crosses the long edge 0-2 and
    # one of the short edges 0-1 (upper half) or 1-2 (lower half).
    x = points_px[triangles, 0].astype(np.float32)
    y = points_px[triangles, 1].astype(np.float32)
    z = depth[triangles].astype(np.float32)
    order = np.argsort(y, axis=1)
    x, y, z = (np.take_along_axis(v, order, 1) for v in (x, y, z))
    row_first = np.maximum(np.ceil(y[:, 0] - 0.5), 0).astype(np.int32)
    row_last = np.minimum(np.floor(y[:, 2] - 0.5), height - 1).astype(np.int32)
    rows = np.maximum(row_last - row_first + 1, 0)
    span_triangle = np.repeat(np.arange(len(triangles), dtype=np.int32), rows)
    if span_triangle.size == 0:
        return Raster(triangle_id.reshape(height, width), nearest.reshape(height, width))
    first_span = np.cumsum(rows) - rows
    span_row = row_first[span_triangle] + np.arange(span_triangle.size, dtype=np.int32) - first_span[span_triangle]

    with np.errstate(divide="ignore", invalid="ignore"):
        inv_02 = 1 / (y[:, 2] - y[:, 0])
        inv_01 = 1 / (y[:, 1] - y[:, 0])
        inv_12 = 1 / (y[:, 2] - y[:, 1])
    x, y, z = x[span_triangle], y[span_triangle], z[span_triangle]
    row_y = span_row + np.float32(0.5)
    t_long = (row_y - y[:, 0]) * inv_02[span_triangle]
    x_long = x[:, 0] + t_long * (x[:, 2] - x[:, 0])
    z_long = z[:, 0] + t_long * (z[:, 2] - z[:, 0])
    upper = row_y < y[:, 1]
    start = np.where(upper, 0, 1)
    index = np.arange(len(span_row))
    t_short = (row_y - y[index, start]) * np.where(upper, inv_01[span_triangle], inv_12[span_triangle])
    x_start, z_start = x[index, start], z[index, start]
    x_short = x_start + t_short * (x[index, start + 1] - x_start)
    z_short = z_start + t_short * (z[index, start + 1] - z_start)
    swap = x_short < x_long
    x_left, x_right = np.where(swap, x_short, x_long), np.where(swap, x_long, x_short)
    z_left, z_right = np.where(swap, z_short, z_long), np.where(swap, z_long, z_short)
    valid = np.isfinite(x_left) & np.isfinite(x_right)
    col_first = np.maximum(np.ceil(np.where(valid, x_left, 0) - 0.5), 0).astype(np.int32)
    col_last = np.minimum(np.floor(np.where(valid, x_right, -1) - 0.5), width - 1).astype(np.int32)
    count = np.maximum(col_last - col_first + 1, 0)

    frag_span = np.repeat(index.astype(np.int32), count)
    first_frag = np.cumsum(count) - count
    col = col_first[frag_span] + np.arange(frag_span.size, dtype=np.int32) - first_frag[frag_span]
    slope = (z_right - z_left) / np.maximum(x_right - x_left, np.float32(1e-6))
    frag_depth = (z_left[frag_span] + (col + 0.5 - x_left[frag_span]) * slope[frag_span]).astype(np.float32)
    pixel = span_row[frag_span] * width + col

    np.minimum.at(nearest, pixel, frag_depth)
    winner = frag_depth <= nearest[pixel]
    # Ties (shared edges at equal depth) write the same sample twice; the later write stays.
    triangle_id[pixel[winner]] = span_triangle[frag_span[winner]]
    return Raster(triangle_id.reshape(height, width), nearest.reshape(height, width))
