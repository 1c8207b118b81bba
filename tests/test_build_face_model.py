"""tools/build_face_model.py: hole caps (loops, ear clipping, UV islands) and the landmark calibration file."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from build_face_model import LANDMARKS_JSON, boundary_loops, cap_holes, ear_clip, uv_occupancy  # noqa: E402

from eyeglass3d.paths import data_root  # noqa: E402


def _grid_with_hole(count=8):
    """A (count × count)-vertex grid in the x-y plane facing +z (CCW from +z), with the middle 2×2 cells removed."""
    y, x = np.mgrid[0:count, 0:count].astype(float)
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(count * count)], -1)
    triangles, uv_triangles = [], []
    for row in range(count - 1):
        for col in range(count - 1):
            if row in (3, 4) and col in (3, 4):
                continue
            a = row * count + col
            triangles += [(a, a + 1, a + count + 1), (a, a + count + 1, a + count)]
    triangles = np.array(triangles)
    uv = vertices[:, :2] / (count - 1) * 0.5  # the lower-left quarter of tile 0
    return vertices, triangles, uv, triangles.copy()


def _cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def test_ear_clip_triangulates_a_concave_polygon_counter_clockwise():
    polygon = np.array([[0, 0], [4, 0], [4, 4], [2, 1], [0, 4]], float)  # an arrow with a reflex corner
    triangles = ear_clip(polygon)
    assert triangles.shape == (3, 3)
    corners = polygon[triangles]
    area = _cross2(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert (area > 0).all()
    assert area.sum() / 2 == pytest.approx(16 - 0.5 * 4 * 3)  # square minus the notch
    with pytest.raises(ValueError):
        ear_clip(polygon[::-1])  # clockwise


def test_boundary_loops_run_against_the_mesh_edges():
    vertices, triangles, *_ = _grid_with_hole()
    loops = boundary_loops(triangles)
    assert sorted(len(loop) for loop in loops) == [8, 28]  # the hole and the outer rim
    directed = {(int(t[i]), int(t[(i + 1) % 3])) for t in triangles for i in range(3)}
    for loop in loops:
        for a, b in zip(loop, np.roll(loop, -1)):
            assert (b, a) in directed and (a, b) not in directed


def test_cap_closes_the_hole_facing_out_with_its_own_uv_island():
    vertices, triangles, uv, uv_triangles = _grid_with_hole()
    # face_area_vertices excludes the rim row 0, so only the inner hole is capped.
    rim = {v for loop in boundary_loops(triangles) if len(loop) == 28 for v in loop}
    order = np.array(sorted(set(range(len(vertices))) - rim) + sorted(rim))
    remap = np.argsort(order)
    vertices, uv = vertices[order], uv[order]
    triangles, uv_triangles = remap[triangles], remap[uv_triangles]
    caps, cap_uv_triangles, cap_uv = cap_holes(vertices, triangles, uv, uv_triangles, len(vertices) - len(rim),
                                               texels=64, margin=1)
    assert len(caps) == 6  # an 8-vertex loop
    corners = vertices[caps]
    normal_z = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])[:, 2]
    assert (normal_z > 0).all() and normal_z.sum() / 2 == pytest.approx(4.0)  # the 2×2 hole, facing +z
    closed = np.concatenate([triangles, caps])
    assert sorted(len(loop) for loop in boundary_loops(closed)) == [28]
    all_uv = np.concatenate([uv, cap_uv])
    old = uv_occupancy(uv, uv_triangles, 64)
    new = uv_occupancy(all_uv, cap_uv_triangles, 64)
    assert new.any() and not (old & new).any()
    assert cap_uv_triangles.min() >= len(uv)
    # The island keeps the surface's texel density: same UV area per unit of 3D area as the grid.
    island = all_uv[cap_uv_triangles]
    uv_area = np.abs(_cross2(island[:, 1] - island[:, 0], island[:, 2] - island[:, 0])).sum() / 2
    assert uv_area == pytest.approx(4.0 * (0.5 / 7) ** 2, rel=1e-6)


# ---------------------------------------------------------------------- the real archive


@pytest.fixture(scope="module")
def built():
    npz = data_root() / "ict_face_model" / "ict_face_model.npz"
    if not npz.is_file():
        pytest.skip("needs the ICT archive in the shared data")
    from build_face_model import build

    return build(npz)[0]


@pytest.mark.integration
def test_ict_caps_close_eyes_and_mouth_only(built):
    config = built.config
    triangles = built.triangles.numpy()
    caps = slice(18460, config.face_area_triangles)
    assert config.face_area_triangles - 18460 == 152 and config.num_triangles == 22288 + 152
    loops = boundary_loops(triangles)
    assert len(loops) == 1 and loops[0].min() >= config.face_area_vertices  # only the neck stays open
    corners = built.mean_shape_m.numpy()[triangles[caps]]
    assert (np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])[:, 2] > 0).all()
    uv, uv_triangles = built.uv_coords.numpy(), built.uv_triangles.numpy()
    cap_texels = uv_occupancy(uv, uv_triangles[caps], 512)
    others = np.concatenate([uv_triangles[: caps.start], uv_triangles[caps.stop :]])
    assert not (cap_texels & uv_occupancy(uv, others, 512)).any()


def test_landmark_calibration_file_is_symmetric_and_near_ict():
    if not LANDMARKS_JSON.is_file():
        pytest.skip("no calibrated landmarks (python tools/calibrate_landmarks.py)")
    record = json.loads(LANDMARKS_JSON.read_text())
    assert len(record["landmarks68"]) == 68 and max(record["moved_mm"]) < 16
    assert record["bias_after"]["val_adults"]["identity_rms_of_means"] < record["bias_before"]["val_adults"][
        "identity_rms_of_means"
    ]


@pytest.mark.integration
def test_albedo_file_sets_the_texture_basis(tmp_path):
    npz = data_root() / "ict_face_model" / "ict_face_model.npz"
    if not npz.is_file():
        pytest.skip("needs the ICT archive in the shared data")
    from build_face_model import build

    rng = np.random.default_rng(0)
    albedo = tmp_path / "albedo.npz"
    np.savez(albedo, texture_mean=rng.uniform(0.3, 0.7, (11248, 3)), texture_basis=rng.normal(0, 0.01, (5, 11248, 3)),
             provenance="test statistics")
    model = build(npz, albedo_path=albedo)[0]
    assert model.config.has_texture_basis and model.config.texture_source == "test statistics"
    assert model.texture_basis.shape == (80, 11248, 3) and not model.texture_basis[5:].any()
    np.testing.assert_allclose(model.texture_basis[:5].numpy(), np.load(albedo)["texture_basis"], rtol=1e-6)
