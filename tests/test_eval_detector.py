"""The detector evaluation's rules: what counts as found, where face-less patches come from, how misses add up."""

from __future__ import annotations

import numpy as np

from eyeglass3d.evaluation.eval_detector import evaluate_set, faceless_patches, found
from eyeglass3d.models.detector import FaceDetection


def detection(box) -> FaceDetection:
    return FaceDetection(box=np.array(box, np.float32), score=0.99, points=np.zeros((5, 2), np.float32))


def test_a_face_is_found_only_by_a_box_holding_both_eyes():
    eyes = np.array([[40.0, 50.0], [80.0, 50.0]])
    assert found([detection([30, 30, 90, 100])], eyes)
    assert not found([detection([30, 30, 60, 100])], eyes)  # one eye outside: another face, or half of this one
    assert found([detection([0, 0, 10, 10]), detection([35, 45, 85, 55])], eyes)
    assert not found([], eyes)


def test_faceless_patches_leave_out_the_labelled_face():
    image = np.zeros((250, 250, 3), np.uint8)
    landmarks = np.stack(np.meshgrid(np.linspace(90, 160, 17), np.linspace(110, 190, 4)), -1).reshape(-1, 2)[:68]
    patches = faceless_patches(image, landmarks)
    assert len(patches) == 2
    above, beside = patches
    assert above.shape[0] <= 110 and above.shape[1] == 250  # the strip above the brows
    assert beside.shape == (250, 90, 3)  # the wider of the two sides (here equal: the left one)


class StubDetector:
    """Finds the face only in images whose mean is above a cut; the retry candidate uses a lower cut."""

    class config:
        thresholds = (0.6, 0.7, 0.7)

    def __init__(self, cut: float):
        self.cut = cut

    def detect(self, image, thresholds=None):
        return [detection([0, 0, image.shape[1], image.shape[0]])] if image.mean() > self.cut else []


class DimmingCompositor:
    """'glasses' that darken the photo: more for the darker lens kind."""

    def __call__(self, image, landmarks, rng, lens):
        from types import SimpleNamespace

        return SimpleNamespace(image=(image * {"clear": 1.0, "mirrored": 0.3}[lens]).astype(np.uint8))


def test_misses_are_counted_per_lens_kind_for_the_first_pass_and_each_retry():
    from types import SimpleNamespace

    records = [SimpleNamespace(image=np.full((60, 60, 3), value, np.uint8),
                               landmarks68_px=np.full((68, 2), 30.0, np.float32)) for value in (200, 100)]
    report = evaluate_set(StubDetector(90), records, 2, ("clear", "mirrored"), DimmingCompositor(),
                          {"retry_low": StubDetector(20)})
    # Means: clean 200 / 100, clear 200 / 100, mirrored 60 / 30: the first pass (cut 90) misses both mirrored.
    assert report["missed"]["first_pass"] == {"clean": 0, "clear": 0, "mirrored": 2}
    assert report["missed"]["retry_low"] == {"clean": 0, "clear": 0, "mirrored": 0}
    assert report["miss_rate"]["first_pass"]["mirrored"] == 1.0 and report["n"] == 2
