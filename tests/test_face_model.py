import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tiny_face_model import OCTAHEDRON_VERTICES, octahedron_face_model, tiny_face_model

from eyeglass3d.geometry.alignment import CANONICAL_FIVE_POINTS
from eyeglass3d.geometry.camera import (
    euler_angles,
    look_at,
    perspective_matrix,
    perspective_project,
    rotation_matrix,
    rotation_matrix_derivatives,
)
from eyeglass3d.geometry.lighting import LAMBERT_BAND_CONSTANTS, irradiance, sh_basis
from eyeglass3d.models.face_model import (
    COEFFICIENT_SIZES,
    FaceModel,
    contour_choice,
    join_coefficients,
    split_coefficients,
)
from eyeglass3d.paths import data_root, default_weights


def test_coefficient_layout_round_trip():
    assert list(COEFFICIENT_SIZES) == ["identity", "expression", "texture", "lighting", "pose"]
    assert sum(COEFFICIENT_SIZES.values()) == 246
    vector = torch.randn(3, 246)
    parts = split_coefficients(vector)
    assert {name: part.shape[-1] for name, part in parts.items()} == COEFFICIENT_SIZES
    assert torch.equal(parts["pose"], vector[:, -6:])
    assert torch.equal(join_coefficients(parts), vector)


def test_shape_matches_eq6_by_hand():
    model = tiny_face_model().double()
    identity = torch.tensor([[0.5, -1.0, 2.0, 0.25]], dtype=torch.float64)
    expression = torch.tensor([[0.3, 0.0, 0.9]], dtype=torch.float64)
    vertices = model.shape(identity, expression)[0].numpy()
    mean = model.mean_shape_m.numpy()
    id_basis, ex_basis = model.identity_basis_m.numpy(), model.expression_basis_m.numpy()
    for vertex in (0, 7, 70):
        expected = mean[vertex].copy()
        for k, alpha in enumerate([0.5, -1.0, 2.0, 0.25]):
            expected += alpha * id_basis[k, vertex]
        for k, beta in enumerate([0.3, 0.0, 0.9]):
            expected += beta * ex_basis[k, vertex]
        np.testing.assert_allclose(vertices[vertex], expected, atol=1e-12)


def test_projection_of_a_hand_placed_point():
    model = tiny_face_model()  # focal_ratio 2.0
    point = torch.tensor([[[0.1, 0.05, -0.5]]])
    projected = model.project(point, 200)[0, 0]
    # focal 400 px, centre 100: x = 100 + 400·0.1/0.5, y = 100 - 400·0.05/0.5 (rows go down)
    torch.testing.assert_close(projected, torch.tensor([180.0, 60.0, 0.5]))


def test_to_camera_places_and_turns_the_head():
    model = tiny_face_model()  # camera_distance_m 0.5, head_offset_y_m 0
    nose = torch.tensor([[[0.0, 0.0, 0.1]]])
    at_rest = model.to_camera(nose, torch.zeros(1, 6))
    torch.testing.assert_close(at_rest, torch.tensor([[[0.0, 0.0, -0.4]]]))
    turned = model.to_camera(nose, torch.tensor([[0.0, math.pi / 2, 0.0, 0.01, 0.0, 0.0]]))
    torch.testing.assert_close(turned, torch.tensor([[[0.11, 0.0, -0.5]]]), atol=1e-6, rtol=0)


def test_rotation_matrix_is_a_rotation_and_has_the_documented_axes():
    angles = torch.randn(16, 3, dtype=torch.float64)
    rotation = rotation_matrix(angles)
    identity = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), identity)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(16, dtype=torch.float64))
    quarter = math.pi / 2
    x, y, z = torch.eye(3, dtype=torch.float64)
    cases = [((quarter, 0, 0), y, z), ((0, quarter, 0), z, x), ((0, 0, quarter), x, y)]
    for pitch_yaw_roll, before, after in cases:
        turned = rotation_matrix(torch.tensor(pitch_yaw_roll, dtype=torch.float64)) @ before
        torch.testing.assert_close(turned, after, atol=1e-12, rtol=0)


def test_euler_angles_invert_and_derivatives_match_finite_differences():
    angles = torch.tensor([[0.3, -0.7, 1.2], [-1.0, 0.4, -0.2]], dtype=torch.float64)
    torch.testing.assert_close(euler_angles(rotation_matrix(angles)), angles)
    derivatives = rotation_matrix_derivatives(angles)
    step = 1e-6
    for axis in range(3):
        delta = torch.zeros(3, dtype=torch.float64)
        delta[axis] = step
        numeric = (rotation_matrix(angles + delta) - rotation_matrix(angles - delta)) / (2 * step)
        torch.testing.assert_close(derivatives[:, axis], numeric, atol=1e-8, rtol=0)


def test_perspective_matrix_draws_where_project_puts_points():
    size, focal_ratio, near, far = 256, 1.9, 0.1, 2.0
    points = torch.tensor([[0.03, -0.02, -0.45], [-0.1, 0.08, -0.7], [0.0, 0.0, -1.5]])
    pixels = perspective_project(points, focal_ratio * size, size)
    clip = torch.cat([points, torch.ones(3, 1)], 1) @ perspective_matrix(focal_ratio, near, far).T
    ndc = clip[:, :3] / clip[:, 3:]
    torch.testing.assert_close((ndc[:, 0] + 1) / 2 * size, pixels[:, 0])
    torch.testing.assert_close((1 - ndc[:, 1]) / 2 * size, pixels[:, 1])
    assert bool(((ndc[:, 2] > -1) & (ndc[:, 2] < 1)).all())
    torch.testing.assert_close(pixels[:, 2], -points[:, 2])


def test_look_at_puts_the_target_straight_ahead():
    eye, target, up = torch.tensor([0.0, 0.0, 2.0]), torch.zeros(3), torch.tensor([0.0, 1.0, 0.0])
    view = look_at(eye, target, up)
    torch.testing.assert_close(view @ torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, -2.0, 1.0]))
    side = look_at(torch.tensor([3.0, 0.0, 0.0]), target, up)
    torch.testing.assert_close(side @ torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, -2.0, 1.0]))


def test_sh_basis_constants_at_known_normals():
    up = sh_basis(torch.tensor([0.0, 0.0, 1.0]))
    a0, a1, a2 = LAMBERT_BAND_CONSTANTS
    expected = torch.tensor([a0 * 0.282095, 0, a1 * 0.488603, 0, 0, 0, a2 * 0.315392 * 2, 0, 0])
    torch.testing.assert_close(up, expected, atol=1e-6, rtol=0)
    diagonal = sh_basis(torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    torch.testing.assert_close(diagonal[4], torch.tensor(a2 * 1.092548 * 0.5), atol=1e-6, rtol=0)
    torch.testing.assert_close(diagonal[8], torch.tensor(0.0), atol=1e-7, rtol=0)


def test_sh_irradiance_of_a_directional_light_is_the_clamped_cosine_approximation():
    """A unit light from direction l has L_k = Y_k(l); by the addition theorem the order-2 irradiance is
    1/4 + (1/2)·cos θ + (5/16)·P2(cos θ): 1.0625 facing the light, 0.0625 away from it, 0.09375 side-on."""
    light = torch.nn.functional.normalize(torch.tensor([0.3, 0.5, 0.8]), dim=0)
    coefficients = sh_basis(light) / torch.tensor([LAMBERT_BAND_CONSTANTS[band] for band in (0, 1, 1, 1, 2, 2, 2, 2, 2)])
    lighting = coefficients.repeat(3)[None]
    side = torch.nn.functional.normalize(torch.linalg.cross(light, torch.tensor([0.0, 0.0, 1.0]), dim=0), dim=0)
    normals = torch.stack([light, -light, side])[None]
    result = irradiance(normals, lighting, ambient=0.0)[0]
    torch.testing.assert_close(result[:, 0], torch.tensor([1.0625, 0.0625, 0.09375]), atol=1e-5, rtol=0)
    assert torch.equal(result[:, 0], result[:, 2])


def test_zero_lighting_gives_the_plain_albedo_and_normals_point_outward():
    model = octahedron_face_model()
    vertices = model.shape(torch.zeros(1, 1), torch.zeros(1, 1))
    normals = model.vertex_normals(vertices)
    torch.testing.assert_close(normals[0], torch.from_numpy(OCTAHEDRON_VERTICES).float())
    albedo = model.albedo(torch.zeros(1, 1))
    torch.testing.assert_close(model.shade(albedo, normals, torch.zeros(1, 27)), albedo)
    lit_from_front = torch.zeros(1, 27)
    lit_from_front[:, 2::9] = 0.5  # the z term of every channel
    shaded = model.shade(albedo, normals, lit_from_front)[0, :, 0]
    assert shaded[4] > shaded[2] > shaded[5]  # the +z vertex is brightest, the -z one darkest


def test_contour_choice_takes_the_outline_on_each_side():
    candidates = torch.zeros(1, 17, 3, 3)
    candidates[..., 2] = -0.5
    candidates[0, :, :, 0] = torch.tensor([-0.05, -0.07, -0.06])  # image-left side: most negative x wins
    candidates[0, 9:, :, 0] = torch.tensor([0.05, 0.07, 0.06])  # image-right side: most positive x wins
    candidates[0, 3, 2, 2] = -0.2  # nearer the camera, so further out in the image (-0.06/0.2)
    choice = contour_choice(candidates)[0]
    assert choice[:3].tolist() == [1, 1, 1] and choice[3].item() == 2
    assert choice[9:].tolist() == [1] * 8


def test_landmark_vertex_indices_follow_the_contour_choice():
    model = tiny_face_model()
    vertices_cam = model.to_camera(model.shape(torch.zeros(2, 4), torch.zeros(2, 3)), torch.zeros(2, 6))
    indices = model.landmark_vertex_indices(vertices_cam)
    assert indices.shape == (2, 68)
    assert torch.equal(indices[:, 17:], model.landmark_indices[17:].expand(2, -1))
    candidates = model.contour_candidate_indices
    expected = candidates.gather(1, contour_choice(vertices_cam[:, candidates])[0][:, None])[:, 0]
    assert torch.equal(indices[0, :17], expected)
    torch.testing.assert_close(model.landmarks(vertices_cam)[0], vertices_cam[0, indices[0]])


def test_fp16_save_and_load_round_trip(tmp_path):
    model = tiny_face_model()
    reference = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.half().save_pretrained(tmp_path, safe_serialization=True)
    with safe_open(str(tmp_path / "diffusion_pytorch_model.safetensors"), "pt") as stored:
        assert stored.get_tensor("mean_shape_m").dtype == torch.float16
        assert stored.get_tensor("triangles").dtype == torch.int64
    loaded = FaceModel.from_pretrained(tmp_path).float()
    assert loaded.config.expression_names == ["shape0", "shape1", "shape2"]
    assert loaded.config.focal_ratio == 2.0
    for name, buffer in loaded.named_buffers():
        if reference[name].is_floating_point():
            assert buffer.dtype == torch.float32
            torch.testing.assert_close(buffer, reference[name], atol=1e-3 * reference[name].abs().max(), rtol=1e-3)
        else:
            assert buffer.dtype == torch.long and torch.equal(buffer, reference[name]), name


# ---------------------------------------------------------------------- shipped component


@pytest.fixture(scope="module")
def shipped():
    folder = default_weights() / "face_model"
    if not (folder / "config.json").is_file():
        pytest.skip("weights_card/face_model not built (python tools/build_face_model.py)")
    return FaceModel.from_pretrained(folder).float().eval()


@pytest.mark.integration
def test_shipped_component_sizes(shipped):
    config = shipped.config
    assert (config.num_vertices, config.identity_dim, config.expression_dim) == (11248, 80, 53)
    # ICT's 22,288 triangles, plus the eye and mouth caps among the face-area ones once they are built.
    assert config.num_triangles - config.face_area_triangles == 22288 - 18460
    assert len(config.expression_names) == 53 and config.expression_names[26] == "jawOpen"
    assert config.has_texture_basis == bool(shipped.texture_basis.any())
    assert shipped.triangles.dtype == torch.long and int(shipped.triangles.max()) == 11247
    assert 0 < float(shipped.uv_coords.min()) and float(shipped.uv_coords.max()) < 2


@pytest.mark.integration
def test_mean_face_at_zero_pose_fills_the_canonical_crop(shipped):
    size = 224
    with torch.no_grad():
        camera = shipped.to_camera(shipped.shape(torch.zeros(1, 80), torch.zeros(1, 53)), torch.zeros(1, 6))
        points = shipped.project(camera, size)[0, shipped.landmark_indices, :2].numpy()
    five = np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
    error_unit = np.abs(five / size - CANONICAL_FIVE_POINTS).max()
    assert error_unit < 0.015, error_unit


@pytest.mark.integration
def test_nose_tip_normal_points_out_of_the_face(shipped):
    with torch.no_grad():
        normals = shipped.vertex_normals(shipped.mean_shape_m[None])
    nose_tip = normals[0, shipped.landmark_indices[30]]
    assert nose_tip[2] > 0.9, nose_tip


@pytest.mark.integration
def test_shipped_shape_matches_the_ict_archive():
    npz = data_root() / "ict_face_model" / "ict_face_model.npz"
    folder = default_weights() / "face_model"
    if not npz.is_file() or not (folder / "config.json").is_file():
        pytest.skip("needs the ICT archive and the built component")
    model = FaceModel.from_pretrained(folder).float()
    ict = np.load(npz)
    rng = np.random.default_rng(1)
    alpha, beta = rng.normal(size=80), rng.uniform(0, 1, 53)
    vertices = [0, 1225, 4942, 9000, 11247]
    expected_cm = (
        ict["vertices"][vertices]
        + np.tensordot(alpha, ict["identity_basis"][:80, vertices], 1)
        + np.tensordot(beta, ict["expression_basis"][:, vertices], 1)
    )
    with torch.no_grad():
        got = model.shape(torch.tensor(alpha[None]).float(), torch.tensor(beta[None]).float())[0, vertices]
    np.testing.assert_allclose(got.numpy() * 100, expected_cm, atol=0.02)  # 0.2 mm: the fp16 storage


@pytest.mark.integration
def test_turned_head_moves_the_jaw_landmarks_to_its_outline(shipped):
    """Yaw +30° turns the nose to image right: the subject's left jaw (9-16) turns away, so its points
    move inwards along their lines; the right jaw (0-7) faces the camera and keeps its back-most candidates
    (ICT's back jaw line or, where the calibrated landmark lies behind it, the landmark itself)."""
    with torch.no_grad():
        vertices = shipped.shape(torch.zeros(1, 80), torch.zeros(1, 53))
        turned = shipped.to_camera(vertices, torch.tensor([[0.0, math.radians(30), 0, 0, 0, 0]]))
        chosen = shipped.landmark_vertex_indices(turned)[0, :17]
    candidates = shipped.contour_candidate_indices
    position = (candidates == chosen[:, None]).float().argmax(1)
    assert (position[12:17] >= 2).all(), position
    assert (position[0:4] <= 1).all(), position


@pytest.mark.integration
def test_mirror_index_maps_each_vertex_across_the_midline(shipped):
    mean = shipped.mean_shape_m
    mirrored = mean[shipped.mirror_index] * torch.tensor([-1.0, 1.0, 1.0])
    assert float((mirrored - mean).norm(dim=-1).max()) < 1e-4  # 0.1 mm
    landmarks = shipped.landmark_indices
    assert int(shipped.mirror_index[landmarks[36]]) == int(landmarks[45])  # outer eye corners
