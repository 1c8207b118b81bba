"""The synthetic eyeglasses compositor: exact masks, determinism, every kind drawable, odd placements."""

import json

import numpy as np
import pytest

from eyeglass3d.paths import REPO_ROOT, data_root
from eyeglass3d.training.compositor import FRAME_SHAPES, LENS_KINDS, GlassesCompositor
from eyeglass3d.training.glasses.placement import HeadOccluder, estimate_head_pose
from eyeglass3d.training.glasses.raster import rasterize

# The 68 iBUG landmarks of the ICT Face Model (MIT) seen from the front, in interocular units
# around the midpoint of the eye centres, image y down.
FACE_TEMPLATE = np.array([
    [-1.131, -0.036], [-1.117, 0.3], [-1.065, 0.599], [-1.007, 0.89], [-0.879, 1.217], [-0.661, 1.482],
    [-0.468, 1.59], [-0.236, 1.643], [-0.0, 1.69], [0.236, 1.643], [0.468, 1.59], [0.661, 1.482],
    [0.879, 1.217], [1.007, 0.89], [1.065, 0.599], [1.117, 0.3], [1.131, -0.036], [-0.893, -0.27],
    [-0.757, -0.389], [-0.582, -0.432], [-0.371, -0.422], [-0.18, -0.379], [0.18, -0.379], [0.371, -0.422],
    [0.582, -0.432], [0.757, -0.389], [0.893, -0.27], [-0.0, -0.046], [-0.0, 0.124], [-0.0, 0.281],
    [-0.0, 0.466], [-0.192, 0.704], [-0.093, 0.703], [-0.0, 0.713], [0.092, 0.703], [0.192, 0.704],
    [-0.685, 0.002], [-0.594, -0.066], [-0.427, -0.076], [-0.283, 0.029], [-0.419, 0.055], [-0.592, 0.057],
    [0.283, 0.029], [0.427, -0.076], [0.594, -0.066], [0.685, 0.002], [0.592, 0.057], [0.419, 0.055],
    [-0.389, 1.069], [-0.261, 0.955], [-0.112, 0.9], [-0.0, 0.91], [0.112, 0.9], [0.261, 0.955],
    [0.389, 1.069], [0.277, 1.151], [0.159, 1.189], [-0.0, 1.201], [-0.159, 1.189], [-0.277, 1.151],
    [-0.339, 1.064], [-0.153, 1.035], [-0.0, 1.039], [0.153, 1.035], [0.339, 1.064], [0.164, 1.047],
    [-0.0, 1.05], [-0.164, 1.047],
])
GLASSES_DIR = data_root() / "glasses" / "glassesVTO"
needs_mesh = pytest.mark.skipif(
    not (GLASSES_DIR / "glassesFramesBranchesBent.json").exists(), reason="no glassesVTO meshes in the data folder"
)


def synthetic_face(size=200, eye_distance=80.0, centre=(100.0, 85.0), roll_deg=0.0, squeeze_left=1.0):
    """A drawn face (skin ellipse, dark eyes, brows, mouth on a textured background) and its landmarks.

    `squeeze_left` < 1 narrows the image-left half, as when the face turns to the image left.
    """
    import cv2

    points = FACE_TEMPLATE.copy()
    points[:, 0] = np.where(points[:, 0] < 0, points[:, 0] * squeeze_left, points[:, 0])
    angle = np.radians(roll_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = points @ rotation.T * eye_distance + np.asarray(centre)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([60 + 80 * xx / size, 90 + 40 * yy / size, 120 + 0 * xx], -1) + rng.normal(0, 6, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    jaw = landmarks[0:17]
    forehead = landmarks[[26, 24, 19, 17]] + (landmarks[[26, 24, 19, 17]] - landmarks[[16, 12, 4, 0]].mean(0)) * 0.3
    face = np.concatenate([jaw, forehead])
    cv2.fillPoly(image, [np.round(face).astype(np.int32)], (205, 160, 135), cv2.LINE_AA)
    for eye in (landmarks[36:42], landmarks[42:48]):
        cv2.fillPoly(image, [np.round(eye).astype(np.int32)], (245, 245, 240), cv2.LINE_AA)
        pupil = tuple(int(v) for v in np.round(eye.mean(0)))
        cv2.circle(image, pupil, max(int(eye_distance * 0.07), 1), (50, 35, 25), -1, cv2.LINE_AA)
    for brow in (landmarks[17:22], landmarks[22:27]):
        thickness = max(int(eye_distance * 0.05), 1)
        cv2.polylines(image, [np.round(brow).astype(np.int32)], False, (80, 55, 40), thickness, cv2.LINE_AA)
    cv2.fillPoly(image, [np.round(landmarks[48:60]).astype(np.int32)], (170, 80, 80), cv2.LINE_AA)
    return image, landmarks


def assert_exact(sample, image):
    """The output differs from the input only inside the mask, and `clean` is the input."""
    assert sample.image.dtype == np.uint8 and sample.image.shape == image.shape
    assert sample.mask.dtype == bool and sample.mask.shape == image.shape[:2]
    assert np.array_equal(sample.clean, image)
    assert np.array_equal(sample.image[~sample.mask], image[~sample.mask])


@pytest.mark.parametrize("source", ["procedural", pytest.param("mesh", marks=needs_mesh)])
def test_mask_is_exactly_where_the_image_changed(source):
    image, landmarks = synthetic_face()
    compositor = GlassesCompositor(seed=3)
    for _ in range(6):
        sample = compositor(image, landmarks, source=source)
        assert_exact(sample, image)
        changed = (sample.image != image).any(-1)
        assert sample.mask.any()
        # The mask is not padded far beyond what was drawn: most masked pixels really changed.
        assert changed[sample.mask].mean() > 0.5, sample.params


def test_same_seed_same_sample_and_params_are_json():
    image, landmarks = synthetic_face()
    first = GlassesCompositor(seed=11)(image, landmarks)
    second = GlassesCompositor(seed=11)(image, landmarks)
    assert np.array_equal(first.image, second.image) and np.array_equal(first.mask, second.mask)
    assert json.dumps(first.params) == json.dumps(second.params)
    by_rng = GlassesCompositor(seed=0)(image, landmarks, rng=np.random.default_rng(5))
    again = GlassesCompositor(seed=99)(image, landmarks, rng=np.random.default_rng(5))
    assert np.array_equal(by_rng.image, again.image)
    other = GlassesCompositor(seed=12)(image, landmarks)
    assert not np.array_equal(first.image, other.image)


@pytest.mark.parametrize("shape", FRAME_SHAPES)
def test_every_frame_shape_is_drawn_on_the_face(shape):
    image, landmarks = synthetic_face()
    sample = GlassesCompositor(seed=1)(image, landmarks, shape=shape, source="procedural", lens="clear")
    assert sample.params["shape"] == shape and sample.params["source"] == "procedural"
    assert_exact(sample, image)
    rows, cols = np.nonzero(sample.mask)
    # Inside the face box (jaw width, brows to nose tip), and covering both eye centres (the lens area).
    assert cols.min() >= landmarks[0, 0] - 15 and cols.max() <= landmarks[16, 0] + 15
    assert rows.min() >= landmarks[17:27, 1].min() - 25 and rows.max() <= landmarks[33, 1]
    for eye in (landmarks[36:42].mean(0), landmarks[42:48].mean(0)):
        assert sample.mask[int(round(eye[1])), int(round(eye[0]))]


@pytest.mark.parametrize("lens", LENS_KINDS)
def test_every_lens_kind(lens):
    image, landmarks = synthetic_face()
    sample = GlassesCompositor(seed=2)(image, landmarks, lens=lens, shape="rectangular", source="procedural")
    assert sample.params["lens"] == lens
    assert_exact(sample, image)
    eye = np.round(landmarks[36:42].mean(0)).astype(int)
    assert sample.mask[eye[1], eye[0]]
    lens_mean = sample.image[eye[1] - 3 : eye[1] + 4, eye[0] + 8 : eye[0] + 15].astype(float).mean()
    skin_mean = image[eye[1] - 3 : eye[1] + 4, eye[0] + 8 : eye[0] + 15].astype(float).mean()
    if lens == "sunglasses":
        assert lens_mean < 0.6 * skin_mean


def test_weights_restrict_the_draw():
    image, landmarks = synthetic_face()
    compositor = GlassesCompositor(
        seed=4, mesh_probability=0.0, shape_weights={"rimless": 1.0}, lens_weights={"gradient": 1.0}
    )
    for _ in range(3):
        params = compositor(image, landmarks).params
        assert (params["source"], params["shape"], params["lens"]) == ("procedural", "rimless", "gradient")
    with pytest.raises(ValueError):
        GlassesCompositor(shape_weights={"monocle": 1.0})


@needs_mesh
def test_mesh_glasses_cover_the_eyes():
    image, landmarks = synthetic_face(roll_deg=8)
    sample = GlassesCompositor(seed=5)(image, landmarks, source="mesh", lens="sunglasses")
    assert sample.params["source"] == "mesh" and sample.params["shape"] == "mesh"
    assert_exact(sample, image)
    for eye in (landmarks[36:42].mean(0), landmarks[42:48].mean(0)):
        assert sample.mask[int(round(eye[1])), int(round(eye[0]))]
    json.dumps(sample.params)


@pytest.mark.parametrize(
    "face",
    [
        {"eye_distance": 6.0, "centre": (100.0, 100.0)},  # tiny face
        {"eye_distance": 80.0, "centre": (10.0, 12.0)},  # mostly outside the image
        {"eye_distance": 80.0, "centre": (100.0, 85.0), "roll_deg": 30.0},
        {"eye_distance": 80.0, "centre": (100.0, 85.0), "squeeze_left": 0.3},  # strongly turned
        {"eye_distance": 70.0, "centre": (-300.0, 90.0)},  # entirely outside
        {"size": 600, "eye_distance": 250.0, "centre": (300.0, 260.0)},  # large face, fewer subsamples
    ],
)
@pytest.mark.parametrize("source", ["procedural", pytest.param("mesh", marks=needs_mesh)])
def test_extreme_placements_do_not_break(face, source):
    image, landmarks = synthetic_face(**face)
    compositor = GlassesCompositor(seed=6)
    for shape in ("aviator", "rimless", "wayfarer"):
        assert_exact(compositor(image, landmarks, shape=shape, source=source), image)


def test_missing_meshes_fail_early_unless_procedural_only(tmp_path):
    with pytest.raises(FileNotFoundError):
        GlassesCompositor(glasses_dir=tmp_path)
    image, landmarks = synthetic_face()
    # Without the data folder the room reflection falls back to a synthetic one.
    assert_exact(GlassesCompositor(mesh_probability=0.0, glasses_dir=tmp_path)(image, landmarks), image)


def test_bad_inputs_are_rejected():
    image, landmarks = synthetic_face()
    compositor = GlassesCompositor()
    with pytest.raises(ValueError):
        compositor(image, landmarks[:5])
    with pytest.raises(ValueError):
        compositor(image[..., 0], landmarks)
    with pytest.raises(ValueError):
        compositor(image, landmarks, lens="monocle")


def test_pose_reads_roll_and_yaw_from_landmarks():
    _, rolled = synthetic_face(roll_deg=20)
    pose = estimate_head_pose(rolled)
    assert np.degrees(pose.roll) == pytest.approx(20, abs=0.5)
    assert abs(pose.yaw) < np.radians(2)
    _, turned = synthetic_face(squeeze_left=0.6)
    # The image-left half looks narrow: it turned away, so yaw is negative (image-right turns away when positive).
    assert estimate_head_pose(turned).yaw < -np.radians(5)


def test_far_temple_hides_behind_the_head():
    _, turned = synthetic_face(squeeze_left=0.5)
    pose = estimate_head_pose(turned)
    occluder = HeadOccluder.for_face(pose, turned)
    behind_ear = np.array([[-1.2, 0.1, -1.0], [1.2, 0.1, -1.0]])  # image-left side faces away
    hidden = occluder.hides(behind_ear, pose, behind_z=0.0)
    assert hidden[0] and not hidden[1]
    hinges = np.array([[-1.05, 0.15, 0.3], [1.05, 0.15, 0.3]])
    assert not occluder.hides(hinges, pose, behind_z=0.0).any()


def test_rasterizer_keeps_the_nearest_of_overlapping_triangles():
    points = np.array([[1.0, 1.0], [30.0, 2.0], [5.0, 28.0], [31.0, 30.0], [2.0, 31.0], [28.0, 0.5]])
    depth = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    triangles = np.array([[0, 1, 2], [3, 4, 5]])
    both = rasterize(points, depth, triangles, 32, 32)
    near = rasterize(points, depth, triangles[:1], 32, 32)
    far = rasterize(points, depth, triangles[1:], 32, 32)
    assert np.array_equal(both.triangle >= 0, (near.triangle >= 0) | (far.triangle >= 0))
    overlap = (near.triangle >= 0) & (far.triangle >= 0)
    assert overlap.sum() > 30 and (both.triangle[overlap] == 0).all()
    # Sample centres inside the first triangle are covered; a far corner is not.
    assert near.triangle[10, 10] == 0 and near.triangle[30, 30] == -1


ASTRONAUT = REPO_ROOT / "examples" / "astronaut.jpg"


@pytest.mark.slow  # loading dlib's 68-point model takes seconds
@pytest.mark.skipif(not ASTRONAUT.exists(), reason="examples/astronaut.jpg not in the repo")
def test_real_photo_with_dlib_landmarks():
    teacher_module = pytest.importorskip("eyeglass3d.training.teacher")
    from PIL import Image

    image = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    label = teacher_module.DlibTeacher(with_descriptor=False)(image)
    assert label.detected
    compositor = GlassesCompositor(seed=8)
    for source in ("procedural", "mesh") if (GLASSES_DIR / "glassesLenses.json").exists() else ("procedural",):
        sample = compositor(image, label.landmarks68_px, source=source)
        assert_exact(sample, image)
        eye = np.round(label.landmarks68_px[36:42].mean(0)).astype(int)
        assert sample.mask[eye[1], eye[0]]

