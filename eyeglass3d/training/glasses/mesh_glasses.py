"""The jeeliz glassesVTO 3D model (Apache-2.0) placed on a face, rasterised in perspective.

Model units are arbitrary (the front is about 200 wide, lens centres at x = ±52); the model is
scaled so its lens centres are about one interocular distance apart. As in the jeeliz demo, the
temples fade out towards their far ends (there they would go behind the ears; the demo fades
around z = -90), and a head occluder hides what is behind the head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .layers import Canvas, CropBox, GlassesLayers, box_filter
from .materials import choose_frame_colour, frame_colour, weighted_choice
from .placement import HeadOccluder, HeadPose
from .raster import front_facing, rasterize

FRAME_FILE = "glassesFramesBranchesBent.json"
LENSES_FILE = "glassesLenses.json"
MESH_MATERIALS = {"black": 0.35, "tortoise": 0.2, "colour": 0.2, "transparent": 0.15, "gunmetal": 0.1}
TEMPLE_FADE = (-130.0, -90.0)  # model z where the temples are gone / fully there
HINGE_Z = 0.0  # model z behind which the frame is temple
_LIGHT = np.array([-0.35, 0.55, 0.76]) / np.linalg.norm([-0.35, 0.55, 0.76])  # camera space, upper left front


def load_buffer_geometry(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N, 3) and triangles (T, 3) of a three.js BufferGeometry JSON file."""
    data = json.loads(Path(path).read_text())["data"]
    position = data["attributes"]["position"]
    vertices = np.asarray(position["array"], np.float64).reshape(-1, position["itemSize"])
    return vertices, np.asarray(data["index"]["array"], np.int64).reshape(-1, 3)


@dataclass
class GlassesMesh:
    """Frame (front and temples, one closed surface) and lens geometry of the glassesVTO model."""

    frame_vertices: np.ndarray  # (N, 3) model units, +y up, +z forward
    frame_triangles: np.ndarray  # (T, 3), closed surface wound counter-clockwise seen from outside
    frame_vertex_normals: np.ndarray  # (N, 3)
    lens_vertices: np.ndarray  # (M, 3)
    lens_centre: np.ndarray  # (3,) centre of the image-right lens (x > 0)
    lens_size: np.ndarray  # (2,) width and height of one lens

    @classmethod
    def load(cls, folder: str | Path) -> "GlassesMesh":
        folder = Path(folder)
        frame, triangles = load_buffer_geometry(folder / FRAME_FILE)
        lenses, _ = load_buffer_geometry(folder / LENSES_FILE)
        corners = frame[triangles]
        face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        vertex_normals = np.zeros_like(frame)
        for k in range(3):
            np.add.at(vertex_normals, triangles[:, k], face_normals)
        vertex_normals /= np.maximum(np.linalg.norm(vertex_normals, axis=1, keepdims=True), 1e-9)
        right = lenses[lenses[:, 0] > 0]
        return cls(
            frame_vertices=frame,
            frame_triangles=triangles,
            frame_vertex_normals=vertex_normals,
            lens_vertices=lenses,
            lens_centre=(right.max(0) + right.min(0)) / 2,
            lens_size=(right.max(0) - right.min(0))[:2],
        )


def render_mesh(
    mesh: GlassesMesh,
    pose: HeadPose,
    occluder: HeadOccluder,
    image_shape: tuple[int, int],
    rng: np.random.Generator,
    supersample: int = 3,
    margin_px: float = 6.0,
) -> tuple[GlassesLayers, dict]:
    """Rasterise the model frame (z-tested against itself and the head) and its lens outlines."""
    material = weighted_choice(MESH_MATERIALS, rng)
    colour_name, colour = choose_frame_colour(material, rng)
    scale = rng.uniform(1.0, 1.14) / (2 * mesh.lens_centre[0])
    vertical = rng.uniform(0.85, 1.15)
    centre_y = rng.uniform(-0.1, 0.0)
    lens_height = mesh.lens_size[1] * scale * vertical
    centre_y = float(min(centre_y, pose.brow_height - lens_height / 2 + 0.04))
    front_z = rng.uniform(0.25, 0.35)
    style = {
        "shape": "mesh",
        "material": material,
        "colour_name": colour_name,
        "colour": [float(v) for v in colour],
        "lens_centre_distance": float(2 * mesh.lens_centre[0] * scale),
        "vertical_scale": float(vertical),
        "lens_centre_y": centre_y,
        "front_z": float(front_z),
        "opacity": float(rng.uniform(0.35, 0.65) if material == "transparent" else 1.0),
    }
    axis_scale = np.array([scale, scale * vertical, scale])
    offset = np.array([0.0, centre_y, front_z]) - mesh.lens_centre * np.array([0, 1, 1]) * axis_scale

    def to_head(model: np.ndarray) -> np.ndarray:
        return model * axis_scale + offset

    vertices_px, vertices_depth = pose.project(to_head(mesh.frame_vertices))
    present = mesh.frame_vertices[:, 2] > TEMPLE_FADE[0]
    triangles = mesh.frame_triangles[present[mesh.frame_triangles].any(1)]

    lens_px = []
    for side in (-1, 1):
        ring, _ = pose.project(to_head(mesh.lens_vertices[np.sign(mesh.lens_vertices[:, 0]) == side]))
        lens_px.append(ring)
    box = CropBox.around(np.concatenate([vertices_px[present]] + lens_px), margin_px, image_shape)
    lens_centres = np.stack([pose.project(to_head(mesh.lens_centre * np.array([side, 1, 1])))[0] for side in (-1, 1)])
    lens_size = np.array([mesh.lens_size[0] * scale, lens_height]) * pose.scale_px
    layers = GlassesLayers.blank(box, lens_centres, lens_size)
    if box.empty:
        return layers, style

    samples = (box.to_crop(vertices_px) + 0.5) * supersample
    triangles = triangles[front_facing(samples, triangles)]
    raster = rasterize(samples, vertices_depth, triangles, box.height * supersample, box.width * supersample)
    covered = raster.triangle >= 0
    rows, cols = np.nonzero(covered)
    hit = raster.triangle[rows, cols]
    sample_px = np.stack([(cols + 0.5) / supersample - 0.5 + box.x0, (rows + 0.5) / supersample - 0.5 + box.y0], 1)
    points = pose.unproject(sample_px, raster.depth[rows, cols].astype(np.float64))
    model_z = (points[:, 2] - offset[2]) / scale
    # Only the temples (behind the front) can pass behind the head.
    behind_z = front_z + (HINGE_Z - 20 - mesh.lens_centre[2]) * scale
    visible = np.ones(len(points), bool)
    temple = np.flatnonzero(model_z < HINGE_Z)
    visible[temple] = ~occluder.hides(points[temple], pose, behind_z)
    fade = np.clip((model_z - TEMPLE_FADE[0]) / (TEMPLE_FADE[1] - TEMPLE_FADE[0]), 0, 1)
    weight = np.zeros(covered.shape, np.float32)
    weight[rows, cols] = visible * fade * fade * (3 - 2 * fade)

    # Smooth normals per triangle (the mean of its vertex normals), lit in camera space.
    normals = mesh.frame_vertex_normals[triangles].mean(1) / axis_scale
    normals = normals @ pose.rotation().T
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-9)
    diffuse = np.clip(normals @ _LIGHT, 0, 1)
    half = (_LIGHT + np.array([0, 0, 1])) / np.linalg.norm(_LIGHT + np.array([0, 0, 1]))
    specular = np.clip(normals @ half, 0, 1) ** 40
    shade_samples = np.zeros(covered.shape, np.float32)
    gloss_samples = np.zeros(covered.shape, np.float32)
    shade_samples[rows, cols] = 0.3 + 0.9 * diffuse[hit]
    gloss_samples[rows, cols] = specular[hit]

    coverage = box_filter(weight, supersample)
    norm = np.maximum(coverage, 1e-6)
    shade = box_filter(shade_samples * weight, supersample) / norm
    gloss = box_filter(gloss_samples * weight, supersample) / norm
    colour_field = frame_colour(material, colour, shade, gloss * rng.uniform(0.5, 0.9), rng)
    alpha = coverage * style["opacity"]
    if material == "transparent":
        alpha = np.clip(alpha + 1.6 * coverage * (1 - coverage) + 0.4 * gloss * coverage, 0, 1)
    layers.over(alpha, colour_field)
    layers.shadow_caster = alpha.copy()

    for index, ring in enumerate(lens_px):
        canvas = Canvas(box, supersample)
        canvas.fill([cv2.convexHull(ring.astype(np.float32)).reshape(-1, 2)])
        layers.lens_alpha[index] = canvas.alpha()
    return layers, style

