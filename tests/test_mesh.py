"""Textured mesh building and GLB/OBJ export: seams split, UVs and the image survive a round trip."""

import numpy as np
import pygltflib
import pytest
import trimesh

from eyeglass3d.mesh import build_mesh, export_mesh, split_uv_seams


@pytest.fixture()
def quad():
    """Two triangles sharing an edge, with a UV seam along it (vertices 0 and 2 get two UVs each)."""
    vertices_m = np.array([[0, 0, 0], [0.1, 0, 0], [0.1, 0.1, 0.01], [0, 0.1, 0]], np.float64)
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    uv_coords = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.6, 0.0], [0.6, 1.0], [1.0, 1.0]])
    uv_triangles = np.array([[0, 1, 2], [3, 4, 5]])
    texture = np.zeros((16, 32, 3), np.uint8)
    texture[:, :16] = (255, 0, 0)
    texture[:, 16:] = (0, 0, 255)
    return vertices_m, triangles, uv_coords, uv_triangles, texture


def test_split_uv_seams_duplicates_only_seam_vertices(quad):
    vertices_m, triangles, uv_coords, uv_triangles, _ = quad
    vertex_index, uv_index, faces = split_uv_seams(triangles, uv_triangles)
    assert len(vertex_index) == 6  # 4 vertices + 2 seam duplicates
    np.testing.assert_array_equal(vertex_index[faces], triangles)
    np.testing.assert_array_equal(uv_index[faces], uv_triangles)


def test_build_mesh_keeps_geometry_and_uv(quad):
    vertices_m, triangles, uv_coords, uv_triangles, texture = quad
    mesh = build_mesh(vertices_m, triangles, uv_coords, uv_triangles, texture)
    source = mesh.metadata["source_vertex_index"]
    np.testing.assert_allclose(mesh.vertices, vertices_m[source])
    np.testing.assert_allclose(mesh.vertices[mesh.faces], vertices_m[triangles])
    np.testing.assert_allclose(mesh.visual.uv[mesh.faces], uv_coords[uv_triangles])
    assert mesh.face_normals[0, 2] > 0  # winding kept: CCW seen from +z


def test_glb_round_trip(quad, tmp_path):
    vertices_m, triangles, uv_coords, uv_triangles, texture = quad
    mesh = build_mesh(vertices_m, triangles, uv_coords, uv_triangles, texture)
    written = export_mesh(mesh, tmp_path / "face.glb")
    assert written == [tmp_path / "face.glb"]

    gltf = pygltflib.GLTF2().load(str(written[0]))
    primitive = gltf.meshes[0].primitives[0]
    assert primitive.attributes.TEXCOORD_0 is not None
    assert gltf.accessors[primitive.attributes.POSITION].count == 6
    assert len(gltf.images) == 1
    material = gltf.materials[0]
    assert not material.doubleSided
    assert "KHR_materials_unlit" in material.extensions
    assert material.pbrMetallicRoughness.metallicFactor == 0.0
    # glTF stores v top-down: the raw TEXCOORD_0 is 1 - v of the OBJ-convention UVs.
    accessor = gltf.accessors[primitive.attributes.TEXCOORD_0]
    view = gltf.bufferViews[accessor.bufferView]
    start = view.byteOffset + (accessor.byteOffset or 0)
    raw_uv = np.frombuffer(gltf.binary_blob()[start : start + 8 * accessor.count], np.float32).reshape(-1, 2)
    np.testing.assert_allclose(np.sort(raw_uv[:, 1]), np.sort(1.0 - mesh.visual.uv[:, 1]), atol=1e-6)

    loaded = trimesh.load(written[0], force="mesh", process=False)
    assert len(loaded.vertices) == 6
    # trimesh flips v back on import, so the UVs per corner match what was built.
    corner_uv = {tuple(np.round(v, 5)): tuple(np.round(t, 5)) for v, t in zip(loaded.vertices, loaded.visual.uv)}
    assert corner_uv[(0.1, 0.0, 0.0)] == (0.5, 0.0)
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(image, texture)


def test_obj_round_trip(quad, tmp_path):
    vertices_m, triangles, uv_coords, uv_triangles, texture = quad
    mesh = build_mesh(vertices_m, triangles, uv_coords, uv_triangles, texture)
    written = export_mesh(mesh, tmp_path / "out" / "head.obj")
    assert [p.name for p in written] == ["head.obj", "head.mtl", "head.png"]
    assert all(p.is_file() for p in written)
    assert "map_Kd head.png" in written[1].read_text()

    loaded = trimesh.load(written[0], force="mesh", process=False, maintain_order=True)
    assert len(loaded.vertices) == 6
    np.testing.assert_allclose(loaded.vertices[loaded.faces], vertices_m[triangles], atol=1e-6)
    np.testing.assert_allclose(loaded.visual.uv[loaded.faces], uv_coords[uv_triangles], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(loaded.visual.material.image.convert("RGB")), texture)


def test_unknown_suffix_is_rejected(quad, tmp_path):
    mesh = build_mesh(*quad)
    with pytest.raises(ValueError, match="unsupported"):
        export_mesh(mesh, tmp_path / "face.ply")
