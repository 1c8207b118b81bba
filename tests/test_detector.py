"""MTCNNDetector: tiny random detectors for robustness and plumbing; the shipped weights on the example photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from eyeglass3d.errors import ImageInputError
from eyeglass3d.models.detector import FaceDetection, MTCNNDetector, nms
from eyeglass3d.paths import REPO_ROOT

TINY = dict(pnet_channels=(4, 4, 4), rnet_channels=(4, 4, 4, 8), onet_channels=(4, 4, 4, 4, 8))
EXAMPLES = REPO_ROOT / "examples"
SHIPPED = REPO_ROOT / "weights_card" / "detector"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_detector")
    MTCNNDetector(**TINY).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def tiny(tiny_path):
    return MTCNNDetector.from_pretrained(tiny_path).eval()


def accept_every_window(detector: MTCNNDetector, box_offsets=(0.0, 0.0, 0.0, 0.0)) -> MTCNNDetector:
    """Makes all three nets call every crop a face (p = 0.9999) with fixed box offsets, to drive all stages."""
    with torch.no_grad():
        for scorer, regressor in [
            (detector.pnet.conv4_1, detector.pnet.conv4_2),
            (detector.rnet.dense5_1, detector.rnet.dense5_2),
            (detector.onet.dense6_1, detector.onet.dense6_2),
        ]:
            scorer.weight.zero_()
            scorer.bias.copy_(torch.tensor([-5.0, 5.0]))
            regressor.weight.zero_()
            regressor.bias.copy_(torch.tensor(box_offsets))
    return detector


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- unit: tiny random detector -------------------------------------------------------------------


def test_save_and_load_round_trip(tiny_path, tiny):
    torch.manual_seed(0)
    fresh = MTCNNDetector(**TINY)
    assert tuple(tiny.config.onet_channels) == TINY["onet_channels"]
    assert tiny.config.thresholds == [0.6, 0.7, 0.7]
    assert (tiny_path / "diffusion_pytorch_model.safetensors").exists()
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tiny.state_dict()[name], tensor), name


@pytest.mark.parametrize("shape", [(64, 64, 3), (8, 8, 3), (1, 1, 3), (30, 2000, 3), (960, 1280, 3)])
def test_blank_tiny_and_large_images_do_not_crash(tiny, shape):
    for image in (np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8), noise(*shape[:2])):
        detections = tiny.detect(image)
        assert isinstance(detections, list)
        assert all(isinstance(d, FaceDetection) for d in detections)


def test_pyramid_runs_from_min_face_size_to_whole_image(tiny):
    scales = tiny.pyramid_scales(100, 150)
    assert scales[0] == pytest.approx(12 / 20)
    assert np.allclose(np.diff(np.log(scales)), np.log(0.709))
    assert 100 * scales[-1] >= 12 > 100 * scales[-1] * 0.709
    assert tiny.pyramid_scales(8, 8) == []  # smaller than min_face_size: nothing to search
    assert tiny.detect(np.zeros((8, 8, 3), np.uint8)) == []
    assert tiny.pyramid_scales(1000, 1500)[0] == pytest.approx(12 / 80)  # 8 % of the short side beats 20 px


def test_all_stages_return_sorted_well_formed_detections(tiny):
    detections = accept_every_window(tiny).detect(noise(64, 80))
    assert len(detections) > 1
    areas = [float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])) for d in detections]
    assert areas == sorted(areas, reverse=True)
    for d in detections:
        assert d.box.shape == (4,) and d.box.dtype == np.float32
        assert d.points.shape == (5, 2) and d.points.dtype == np.float32
        assert 0.7 < d.score <= 1.0
        assert d.box[2] > d.box[0] and d.box[3] > d.box[1]


@pytest.mark.parametrize(
    "box_offsets",
    [(3.0, 3.0, -3.0, -3.0), (-50.0, -50.0, 50.0, 50.0), (1e9, 1e9, 1e9, 1e9), (-2.0, 0.0, -2.0, 0.0)],
    ids=["inverted", "huge", "overflowing", "off-image"],
)
def test_degenerate_box_regressions_do_not_crash(tiny, box_offsets):
    detections = accept_every_window(tiny, box_offsets).detect(noise(48, 64))
    for d in detections:
        assert np.isfinite(d.box).all() and np.isfinite(d.points).all()


def test_fp16_weights_are_computed_in_float32(tiny_path):
    detector = accept_every_window(MTCNNDetector.from_pretrained(tiny_path, torch_dtype=torch.float16))
    assert detector.dtype == torch.float16
    assert len(detector.detect(noise(40, 40))) > 0
    assert detector.dtype == torch.float32


@pytest.mark.parametrize(
    "image",
    [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8), np.zeros((32, 32, 3)),
     np.zeros((0, 9, 3), np.uint8)],
    ids=["gray", "rgba", "float", "empty"],
)
def test_rejects_arrays_that_are_not_rgb_uint8(tiny, image):
    with pytest.raises(ImageInputError):
        tiny.detect(image)


def test_crops_equal_area_resampling_of_the_zero_padded_box(tiny):
    image = noise(37, 53, seed=3)
    pixels = torch.from_numpy(image)
    integral = F.pad(pixels.double().cumsum(0).cumsum(1), (0, 0, 1, 0, 1, 0))
    boxes = torch.tensor(
        [[5.0, 6.0, 30.0, 31.0], [-10.7, -4.2, 20.5, 26.9], [40.0, 20.0, 70.0, 50.0], [3.0, 3.0, 9.0, 9.0],
         [60.0, 60.0, 90.0, 90.0], [-40.0, -40.0, -20.0, -20.0], [10.0, 10.0, 5.0, 30.0], [float("nan"), 0, 10, 10]]
    )
    crops, valid = tiny._crops(integral, boxes, 24)
    assert valid.tolist() == [True, True, True, True, False, False, False, False]
    canvas = F.pad(pixels.permute(2, 0, 1)[None].float(), (100, 100, 100, 100))  # zeros around the image
    for crop, (x0, y0, x1, y1) in zip(crops, boxes[valid].trunc().long().tolist()):
        box = canvas[:, :, y0 - 1 + 100 : y1 + 100, x0 - 1 + 100 : x1 + 100]
        expected = (F.interpolate(box, size=(24, 24), mode="area")[0] - 127.5) / 128
        assert torch.allclose(crop, expected, atol=1e-4)


def test_nms_union_and_min_overlap():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 1, 2]  # IoU(0,1) = 0.68 > 0.5; box 3 is small inside
    assert nms(boxes, scores, 0.7, overlap="min").tolist() == [3, 2]  # box 3 lies inside 0 and 1: min-overlap 1
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


# --- integration: shipped weights on the example photos ------------------------------------------

# Reference boxes and eye centres read off the photos by eye (pupils; face from cheek to cheek and
# brow/hat brim to chin). MTCNN's box conventions differ a little from any by-eye box, hence the IoU
# and edge tolerances.
FACE_PHOTOS = {
    "grace_hopper.jpg": ((160, 130, 370, 340), ((222, 190), (310, 187))),
    "astronaut.jpg": ((176, 60, 272, 185), ((205, 102), (246, 103))),
}


@pytest.fixture(scope="module")
def shipped():
    return MTCNNDetector.from_pretrained(SHIPPED).eval()


def load_example(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB"))


def iou(a, b) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.mark.integration
def test_shipped_weights_are_fp16_safetensors():
    with safe_open(SHIPPED / "diffusion_pytorch_model.safetensors", framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        assert "pnet.conv1.weight" in f.keys() and "onet.dense6_3.bias" in f.keys()


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(FACE_PHOTOS))
def test_finds_the_one_face_with_sensible_points(shipped, name):
    reference_box, reference_eyes = FACE_PHOTOS[name]
    detections = shipped.detect(load_example(name))
    assert len(detections) == 1
    face = detections[0]
    assert face.score > 0.99
    assert iou(face.box, reference_box) > 0.7
    width = reference_box[2] - reference_box[0]
    assert np.abs(face.box - np.array(reference_box)).max() < 0.15 * width

    left_eye, right_eye, nose, mouth_left, mouth_right = face.points
    eye_distance = np.linalg.norm(np.subtract(*reference_eyes))
    assert np.linalg.norm(face.points[:2] - np.array(reference_eyes), axis=1).max() < 0.15 * eye_distance
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    inside = (face.points >= face.box[:2]) & (face.points <= face.box[2:])
    assert inside.all()


@pytest.mark.integration
def test_no_face_in_the_coffee_photo(shipped):
    assert shipped.detect(load_example("coffee.png")) == []


@pytest.mark.integration
def test_face_cut_by_the_border_keeps_its_points(shipped):
    """Zero-padded crops (original MTCNN) keep the eyes where they are when the face touches the border."""
    image = load_example("grace_hopper.jpg")[150:, 200:]
    (face,) = shipped.detect(np.ascontiguousarray(image))
    eyes_in_crop = np.array(FACE_PHOTOS["grace_hopper.jpg"][1]) - (200, 150)
    assert np.linalg.norm(face.points[:2] - eyes_in_crop, axis=1).max() < 10


def test_retry_runs_only_when_the_first_pass_finds_nothing_and_maps_back_from_the_padded_photo(tiny_path, monkeypatch):
    detector = MTCNNDetector.from_pretrained(tiny_path, retry_thresholds=[0.5, 0.4, 0.4], retry_pad=0.25).eval()
    seen = []
    box, points = torch.tensor([[30.0, 30.0, 70.0, 70.0]]), torch.full((1, 5, 2), 50.0)

    def cascade(image, thresholds):
        seen.append((image.shape, thresholds))
        if len(seen) == 1:
            return box[:0], torch.zeros(0), points[:0]
        return box, torch.tensor([0.9]), points

    monkeypatch.setattr(detector, "_cascade", cascade)
    (face,) = detector.detect(np.zeros((80, 60, 3), np.uint8))
    assert seen == [((80, 60, 3), (0.6, 0.7, 0.7)), ((120, 100, 3), (0.5, 0.4, 0.4))]  # pad 20 = 0.25 x 80
    np.testing.assert_allclose(face.box, [10, 10, 50, 50])
    np.testing.assert_allclose(face.points, 30.0)
    seen.clear()
    assert detector.detect(np.zeros((80, 60, 3), np.uint8), thresholds=(0.6, 0.7, 0.7)) == []
    assert len(seen) == 1  # explicit cuts: one pass, no retry


@pytest.mark.integration
def test_shipped_retry_changes_nothing_where_the_first_pass_finds_the_face(shipped):
    for name in sorted(FACE_PHOTOS):
        image = load_example(name)
        (first,) = shipped.detect(image, thresholds=tuple(shipped.config.thresholds))
        (face,) = shipped.detect(image)
        np.testing.assert_array_equal(face.box, first.box)
@pytest.mark.integration
def test_a_tight_crop_behind_mirrored_sunglasses_is_found(shipped, example_records):
    from eyeglass3d.training.compositor import GlassesCompositor

    record = example_records[0]  # astronaut.jpg, glasses-free
    x0, y0 = record.landmarks68_px.min(0).astype(int)
    x1, y1 = record.landmarks68_px.max(0).astype(int)
    crop = np.ascontiguousarray(record.image[y0 - 15 : y1 + 5, x0 - 5 : x1 + 5])  # a cropped selfie: no margin
    landmarks = record.landmarks68_px - [x0 - 5, y0 - 15]
    found = 0
    for seed in range(4):
        sample = GlassesCompositor(seed=seed)(crop, landmarks, np.random.default_rng(seed), lens="mirrored")
        faces = shipped.detect(sample.image)
        eyes = np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0)])
        found += any(((eyes >= f.box[:2]) & (eyes <= f.box[2:])).all() for f in faces)
    assert found == 4
