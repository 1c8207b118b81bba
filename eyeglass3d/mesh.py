"""Textured trimesh building and GLB/OBJ export.

Frame of every mesh here: metres, +y up, +z out of the face, which is glTF's own convention (a viewer shows the face
from the front without any transform). UVs follow OBJ (v up); trimesh flips them for glTF.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial, SimpleMaterial
from trimesh.visual.texture import TextureVisuals

_MATERIAL_NAME = "face"


def split_uv_seams(triangles: np.ndarray, uv_triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (vertex, uv) corner pair, since glTF/trimesh carry one UV per vertex.

    Returns (vertex_index (V',) into the original vertices, uv_index (V',) into the UV table, faces (F,3) into V'),
    read-only: they depend on the topology alone, so they are cached by its bytes (every face of one model shares them).
    """
    vertex = np.ascontiguousarray(triangles, np.int64)
    uv = np.ascontiguousarray(uv_triangles, np.int64)
    return _cached_seams(vertex.tobytes(), uv.tobytes())


@lru_cache(maxsize=4)
def _cached_seams(vertex_bytes: bytes, uv_bytes: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vertex, uv = np.frombuffer(vertex_bytes, np.int64), np.frombuffer(uv_bytes, np.int64)
    base = int(uv.max()) + 1 if uv.size else 1
    # One integer per pair, ordered like the pairs themselves: a 1-D unique is ~10x faster than unique(axis=0).
    unique_keys, faces = np.unique(vertex * base + uv, return_inverse=True)
    arrays = unique_keys // base, unique_keys % base, faces.reshape(-1, 3)
    for array in arrays:
        array.setflags(write=False)
    return arrays


def build_mesh(
    vertices_m: np.ndarray,
    triangles: np.ndarray,
    uv_coords: np.ndarray,
    uv_triangles: np.ndarray,
    texture: np.ndarray,
) -> trimesh.Trimesh:
    """Textured mesh with vertices split at UV seams; `metadata["source_vertex_index"]` maps back to `vertices_m`.

    vertices_m (N,3) in the module's frame, triangles (F,3), uv_coords (T,2) in [0,1] (OBJ v-up, e.g.
    `render.texture.atlas_uv`), uv_triangles (F,3) aligned with triangles, texture (H,W,3) uint8 RGB.
    """
    vertex_index, uv_index, faces = split_uv_seams(triangles, uv_triangles)
    vertices = np.asarray(vertices_m, np.float64)[vertex_index]
    uv = np.asarray(uv_coords, np.float64)[uv_index]
    material = PBRMaterial(
        name=_MATERIAL_NAME,
        baseColorTexture=Image.fromarray(np.ascontiguousarray(texture[..., :3], dtype=np.uint8)),
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,  # skin photographed with its lighting: no added specular sheen
        doubleSided=False,
    )
    mesh = trimesh.Trimesh(
        vertices=vertices, faces=faces, visual=TextureVisuals(uv=uv, material=material), process=False
    )
    mesh.metadata["source_vertex_index"] = vertex_index
    return mesh


def _unlit(tree: dict) -> None:
    """Mark the materials KHR_materials_unlit: the texture already holds the photo's shading."""
    for material in tree.get("materials", []):
        material.setdefault("extensions", {})["KHR_materials_unlit"] = {}
    used = tree.setdefault("extensionsUsed", [])
    if "KHR_materials_unlit" not in used:
        used.append("KHR_materials_unlit")


def export_mesh(mesh: trimesh.Trimesh, path: str | Path) -> list[Path]:
    """Write `.glb` (one file) or `.obj` (+ `.mtl` + `.png` beside it); returns the files written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".glb", ".obj"):
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .glb or .obj")
    path.parent.mkdir(parents=True, exist_ok=True)
    export = mesh.copy()
    export.metadata = {}  # the seam map is for the caller, not for the file
    if suffix == ".glb":
        data = trimesh.exchange.gltf.export_glb(
            trimesh.Scene(export), include_normals=True, tree_postprocessor=_unlit
        )
        path.write_bytes(data)
        return [path]

    mtl_path, png_path = path.with_suffix(".mtl"), path.with_suffix(".png")
    material = mesh.visual.material
    image = material.baseColorTexture if isinstance(material, PBRMaterial) else material.image
    export.visual.material = SimpleMaterial(
        image=image,
        diffuse=(255, 255, 255, 255),
        specular=(0, 0, 0, 255),
        name=png_path.stem,  # trimesh names the texture file after the material
    )
    text, files = trimesh.exchange.obj.export_obj(
        export, include_normals=True, return_texture=True, mtl_name=mtl_path.name
    )
    path.write_text(text)
    for name, data in files.items():
        (path.parent / name).write_bytes(data)
    return [path, mtl_path, png_path]
