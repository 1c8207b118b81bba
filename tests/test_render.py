"""Rasteriser (coverage, barycentrics, z-buffer, gradients), UV unwrapping and overlays."""

import numpy as np
import pytest
import torch
import trimesh

from eyeglass3d.render.overlay import EYEGLASSES_RGB, colorize_parsing, draw_landmarks, render_shaded
from eyeglass3d.render.rasterizer import interpolate, rasterize, rasterize_uv
from eyeglass3d.render.texture import atlas_uv, mirror_vertex_index, unwrap_texture

# Front-facing in pixel coordinates (y down): clockwise on screen, negative signed area.
TRIANGLE_PX = [[1.0, 1.0, 2.0], [1.0, 7.0, 2.0], [7.0, 1.0, 2.0]]


def _single_triangle(depth=2.0, flip=False):
    vertices = torch.tensor([TRIANGLE_PX]) * torch.tensor([1.0, 1.0, depth / 2.0])
    triangles = torch.tensor([[0, 2, 1]] if flip else [[0, 1, 2]])
    return vertices, triangles


def test_single_triangle_coverage_and_barycentrics():
    vertices, triangles = _single_triangle()
    fragments = rasterize(vertices, triangles, 10, 10)
    rows, cols = np.mgrid[0:10, 0:10]
    # Pixel centres (c+.5, r+.5) inside x ≥ 1, y ≥ 1, x + y ≤ 8 (edges included).
    expected = (cols >= 1) & (rows >= 1) & (cols + rows <= 7)
    np.testing.assert_array_equal(fragments.triangle_index[0].numpy() == 0, expected)
    assert (fragments.triangle_index[0][~torch.from_numpy(expected)] == -1).all()
    assert torch.isinf(fragments.depth[0][~torch.from_numpy(expected)]).all()
    # Pixel (row 2, col 3): centre (3.5, 2.5) → weights of (1,1), (1,7), (7,1) = 1/3, 1.5/6, 2.5/6.
    np.testing.assert_allclose(fragments.barycentric[0, 2, 3].numpy(), [1 / 3, 0.25, 2.5 / 6], rtol=1e-5)
    assert fragments.depth[0, 2, 3].item() == pytest.approx(2.0)
    assert (fragments.barycentric[0][torch.from_numpy(~expected)] == 0).all()


def test_backface_culling():
    vertices, triangles = _single_triangle(flip=True)
    assert (rasterize(vertices, triangles, 10, 10).triangle_index == -1).all()
    kept = rasterize(vertices, triangles, 10, 10, cull_backfaces=False)
    assert (kept.triangle_index == 0).sum() == 21
    assert kept.barycentric.sum(-1)[kept.triangle_index >= 0].sub(1).abs().max() < 1e-5


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins(near_first):
    near, _ = _single_triangle(depth=1.0)
    far, _ = _single_triangle(depth=3.0)
    far = far + torch.tensor([1.0, 1.0, 0.0])  # shifted: pixels only the far one covers stay far
    vertices = torch.cat([near, far] if near_first else [far, near], 1)
    triangles = torch.tensor([[0, 1, 2], [3, 4, 5]])
    near_id = 0 if near_first else 1
    fragments = rasterize(vertices, triangles, 12, 12)
    assert fragments.triangle_index[0, 3, 3] == near_id  # both cover it
    assert fragments.depth[0, 3, 3] == pytest.approx(1.0)
    assert fragments.triangle_index[0, 2, 7] == 1 - near_id  # only the far one: x + y = 10.5 > 8
    assert fragments.depth[0, 2, 7] == pytest.approx(3.0)


def test_batch_and_big_triangles():
    vertices = torch.tensor([[[-50.0, -50.0, 1.0], [-50.0, 300.0, 1.0], [300.0, -50.0, 1.0]]])
    vertices = torch.cat([vertices, vertices + torch.tensor([400.0, 0.0, 0.0])])  # second one off-screen
    fragments = rasterize(vertices, torch.tensor([[0, 1, 2]]), 64, 80)
    assert (fragments.triangle_index[0] == 0).all()
    assert (fragments.triangle_index[1] == -1).all()


def test_barycentric_gradient_matches_finite_differences():
    corners = [[[0.7, 0.9, 2.0], [1.3, 8.1, 2.0], [8.2, 0.6, 2.0]]]
    vertices = torch.tensor(corners, dtype=torch.float64, requires_grad=True)
    triangles = torch.tensor([[0, 1, 2]])
    torch.autograd.gradcheck(lambda v: rasterize(v, triangles, 9, 9).barycentric[0, 3, 2], (vertices,))


_SPHERE = trimesh.creation.icosphere(subdivisions=3)
_SPHERE_POINTS = torch.tensor(_SPHERE.vertices, dtype=torch.float32)
_SPHERE_TRIANGLES = torch.tensor(_SPHERE.faces)
_SPHERE_COLOURS = 0.5 + 0.5 * torch.stack(
    [
        torch.sin(4 * _SPHERE_POINTS[:, 0] + 1),
        torch.sin(5 * _SPHERE_POINTS[:, 1]),
        torch.cos(3 * _SPHERE_POINTS[:, 0] * _SPHERE_POINTS[:, 1] + 4 * _SPHERE_POINTS[:, 2]),
    ],
    -1,
)


def _sphere_scene(angle, size=32):
    """A colour-patterned unit sphere turned by `angle` about y, seen by an orthographic camera on +z."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rotation = torch.stack(
        [torch.stack([cos, zero, sin]), torch.stack([zero, one, zero]), torch.stack([-sin, zero, cos])]
    )
    rotated = _SPHERE_POINTS @ rotation.T
    # Pixel frame: x right, y down, depth grows away from the viewer.
    vertices_px = torch.stack(
        [(rotated[:, 0] * 0.9 + 1) * size / 2, (1 - rotated[:, 1] * 0.9) * size / 2, 3 - rotated[:, 2]], -1
    )
    fragments = rasterize(vertices_px[None], _SPHERE_TRIANGLES, size, size)
    return interpolate(_SPHERE_COLOURS[None], _SPHERE_TRIANGLES, fragments)


def test_gradients_recover_a_small_rotation():
    """The sphere's outline does not move when it spins, so only the barycentric gradients can find the angle."""
    target = _sphere_scene(torch.tensor(np.deg2rad(5.0), dtype=torch.float32))
    angle = torch.zeros((), requires_grad=True)
    losses = []
    for _ in range(20):  # plain gradient descent on the photometric loss
        loss = (_sphere_scene(angle) - target).square().mean()
        (gradient,) = torch.autograd.grad(loss, angle)
        with torch.no_grad():
            angle -= 1.0 * gradient
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0]
    assert abs(np.rad2deg(angle.item()) - 5.0) < 0.1


def test_rasterize_uv_marks_texels_of_each_triangle():
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    fragments = rasterize_uv(uv, torch.tensor([[0, 1, 2], [0, 2, 3]]), 8, 8)
    index = fragments.triangle_index[0]
    assert (index >= 0).all()
    assert index[7, 7] == 0 and index[0, 0] == 1  # row 0 is v = 1 (top of the image)


def test_atlas_uv_packs_tiles_side_by_side():
    np.testing.assert_allclose(atlas_uv(np.array([[0.25, 0.5], [1.75, 0.1]])), [[0.125, 0.5], [0.875, 0.1]])


# ---------------------------------------------------------------- unwrapping


def _grid_mesh(count=9, half_width=40.0, centre=(50.0, 50.0), depth=10.0, bump=0.0):
    """A square grid facing the camera (pixel frame), its UVs in the face tile, and the UV of each vertex."""
    u, v = np.meshgrid(np.linspace(0, 1, count), np.linspace(0, 1, count))
    u, v = u.ravel(), v.ravel()
    x = centre[0] + (u * 2 - 1) * half_width
    y = centre[1] + (1 - v * 2) * half_width  # v up ↔ rows down
    radius2 = (u - 0.5) ** 2 + (v - 0.5) ** 2
    vertices_px = np.stack([x, y, depth - bump * np.exp(-radius2 / 0.02)], -1)
    corner = np.arange(count * count).reshape(count, count)[:-1, :-1].ravel()
    quads = [(a, a + 1, a + count + 1, a + count) for a in corner]
    # (a, b, c): a → b runs +x, b → c runs +v (up on screen): clockwise in y-down pixels, i.e. front-facing.
    triangles = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    uv = np.stack([u * 0.98 + 0.01, v * 0.98 + 0.01], -1)
    return vertices_px, triangles, uv


def _painted_image(size=100):
    rows, cols = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = np.where(cols < size / 2, 220, 40)
    image[..., 1] = np.where(rows < size / 2, 200, 60)
    image[..., 2] = 120
    return image


def test_unwrap_recovers_painted_colours():
    vertices_px, triangles, uv = _grid_mesh()
    image = _painted_image()
    texture, visible = unwrap_texture(image, vertices_px, triangles, uv, triangles, size=64)
    assert texture.shape == (64, 128, 3) and visible.shape == (64, 128)
    assert visible[:, :64].mean() > 0.9 and not visible[:, 64:].any()
    # Texel (row, col) of the face tile ↔ uv ((col+.5)/64, 1-(row+.5)/64) ↔ pixel x = 10 + 80 u', y = 90 - 80 v'.
    top_left, bottom_right = texture[12, 12], texture[52, 52]
    np.testing.assert_allclose(top_left, [220, 200, 120], atol=3)
    np.testing.assert_allclose(bottom_right, [40, 60, 120], atol=3)
    # The empty head tile is filled from its neighbours, not left black.
    assert texture[:, 100].min() > 30


def test_occluded_texels_take_the_mirror_colour():
    """A small square right in front of the grid's right half hides it; the mirror (left) half fills in."""
    grid, grid_triangles, grid_uv = _grid_mesh(count=9)
    occluder, occluder_triangles, _ = _grid_mesh(count=2, half_width=16.0, centre=(70.0, 50.0), depth=5.0)
    vertices_px = np.concatenate([grid, occluder])
    triangles = np.concatenate([grid_triangles, occluder_triangles + len(grid)])
    uv_coords = np.concatenate([grid_uv, np.array([[1.1, 0.1], [1.9, 0.1], [1.1, 0.9], [1.9, 0.9]])])
    image = _painted_image()
    image[34:66, 54:86] = (0, 0, 255)  # the occluder is blue in the photo
    rows = np.arange(len(grid)) // 9
    cols = np.arange(len(grid)) % 9
    mirror_index = np.concatenate([rows * 9 + (8 - cols), np.arange(len(grid), len(vertices_px))])
    fallback = np.tile([[0.1, 0.9, 0.1]], (len(vertices_px), 1))

    common = dict(size=64, fallback_rgb=fallback)
    texture, visible = unwrap_texture(image, vertices_px, triangles, uv_coords, triangles, **common)
    mirrored, _ = unwrap_texture(
        image, vertices_px, triangles, uv_coords, triangles, mirror_index=mirror_index, **common
    )
    # Hidden texel: atlas (row 28, col 48) ↔ uv ≈ (0.75, 0.56) ↔ pixel (70, 45), behind the occluder. Its mirror
    # point, pixel (30, 45), is visible and painted (220, 200, 120).
    assert not visible[28, 48] and visible[28, 16]
    np.testing.assert_allclose(mirrored[28, 48], image[45, 30], atol=12)
    assert texture[28, 48, 0] < 150 and texture[28, 48, 2] < 200  # without a mirror: the (gain-matched) fallback
    far_from_occluder = visible.copy()
    far_from_occluder[:, 24:] = False
    np.testing.assert_array_equal(mirrored[far_from_occluder], texture[far_from_occluder])  # photo kept as is


def test_grazing_texels_give_way_to_the_fallback():
    """Normals almost perpendicular to the view axis: still visible, but the photo gets no weight there."""
    vertices_px, triangles, uv = _grid_mesh()
    fallback = np.tile([[0.2, 0.4, 0.6]], (len(vertices_px), 1))
    grazing = np.tile([[1.0, 0.0, 0.02]], (len(vertices_px), 1))
    args = (_painted_image(), vertices_px, triangles, uv, triangles)
    texture, visible = unwrap_texture(*args, size=32, fallback_rgb=fallback, normals=grazing)
    frontal, _ = unwrap_texture(*args, size=32, fallback_rgb=fallback, normals=grazing * [0, 0, 1])
    assert visible[8:24, 4:28].all()
    np.testing.assert_allclose(texture[8:24, 4:28], np.broadcast_to([51, 102, 153], (16, 24, 3)), atol=1)
    np.testing.assert_allclose(frontal[6, 6], [220, 200, 120], atol=3)


def test_mirror_vertex_index_pairs_symmetric_vertices():
    vertices = np.array([[-1.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0], [-0.5, 2, 1], [0.5, 2, 1]])
    np.testing.assert_array_equal(mirror_vertex_index(vertices), [1, 0, 2, 4, 3])


# ---------------------------------------------------------------- overlays


def test_colorize_parsing_palette():
    labels = ["background", "skin", "eyes", "eyeglasses", "something"]
    parsing = np.array([[0, 1], [3, 4]], np.uint8)
    colours = colorize_parsing(parsing, labels)
    assert colours.shape == (2, 2, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(colours[1, 0], EYEGLASSES_RGB)
    assert len({tuple(c) for c in colours.reshape(-1, 3)}) == 4


def test_draw_landmarks_marks_points_without_touching_input():
    image = np.zeros((40, 60, 3), np.uint8)
    drawn = draw_landmarks(image, np.array([[10.5, 20.5], [50.0, 5.0]]))
    assert image.max() == 0
    assert drawn[20, 10, 1] == 255 and drawn[30, 30].max() == 0


def test_render_shaded_draws_lit_mesh_over_background():
    vertices_px, triangles, _ = _grid_mesh(count=21, depth=30.0, bump=15.0)
    background = np.full((100, 100, 3), 50, np.uint8)
    shaded = render_shaded(vertices_px, triangles, None, 100, 100, background)
    assert shaded.shape == (100, 100, 3)
    assert (shaded[2, 2] == 50).all()  # outside the mesh
    centre, flank = shaded[50, 50, 0], shaded[50, 43, 0]
    assert centre > flank > 50  # the bump faces the light at its top, less on its slope
