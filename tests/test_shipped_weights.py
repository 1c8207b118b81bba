"""Integration: the weights in weights_card/ on the real example photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from eyeglass3d import Eyeglass3DPipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipe():
    return Eyeglass3DPipeline.from_pretrained(REPO_ROOT / "weights_card")


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.jpg"])
def test_eye_landmarks_sit_on_the_detected_eyes(pipe, name):
    photo = np.asarray(PIL.Image.open(REPO_ROOT / "examples" / name).convert("RGB"))
    detection = pipe.detector.detect(photo)[0]
    out = pipe.reconstruct(photo)
    eye_distance = np.linalg.norm(detection.points[1] - detection.points[0])
    for points, eye in ((out.landmarks[36:42], detection.points[0]), (out.landmarks[42:48], detection.points[1])):
        assert np.linalg.norm(points.mean(0) - eye) < 0.2 * eye_distance
        # every contour point of the eye is near the eye, not spread over the face
        assert np.linalg.norm(points - eye, axis=1).max() < 0.45 * eye_distance
    # chin below the mouth below the nose below the eyes (upright photos)
    assert out.landmarks[8, 1] > out.landmarks[57, 1] > out.landmarks[33, 1] > out.landmarks[36:48, 1].mean()


def test_reconstruction_is_a_face_sized_textured_head(pipe, tmp_path):
    out = pipe.reconstruct(REPO_ROOT / "examples" / "astronaut.jpg")
    assert out.stages["landmarker"] == "network"
    width = out.mesh.extents[0]
    assert 0.12 < width < 0.3, f"head width {width:.3f} m"
    texture = np.asarray(out.mesh.visual.material.baseColorTexture)
    assert texture.std() > 5, "the texture carries the photo, not a flat colour"
    assert out.export(tmp_path / "astronaut.glb")[0].stat().st_size > 100_000


def test_deleter_finds_the_glasses_on_grace_hopper_and_none_on_the_astronaut(pipe):
    with_glasses = pipe.reconstruct(REPO_ROOT / "examples" / "grace_hopper.jpg")
    without = pipe.reconstruct(REPO_ROOT / "examples" / "astronaut.jpg")
    assert with_glasses.stages["parser"] == "network"

    def share(out) -> float:  # the evaluation's rule: eyeglasses pixels over the face box area
        x0, y0, x1, y1 = out.face_box
        return out.glasses_mask.sum() / ((x1 - x0) * (y1 - y0))

    assert share(with_glasses) > 0.03
    assert share(without) < 0.005
    # The mask lies on the eyes: both eye centres (from the landmarks) are inside it.
    for eye in (with_glasses.landmarks[36:42].mean(0), with_glasses.landmarks[42:48].mean(0)):
        x, y = np.round(eye).astype(int)
        assert with_glasses.glasses_mask[y, x]


def test_inpainter_changes_only_the_glasses_area(pipe):
    out = pipe.reconstruct(REPO_ROOT / "examples" / "grace_hopper.jpg")
    assert out.stages["inpainter"] == "network"
    photo = np.asarray(out.image)
    inpainted = np.asarray(out.inpainted)
    changed = (photo != inpainted).any(2)
    assert changed.any() and not (changed & ~out.glasses_mask).any()
    # The dark frames are gone: the filled area is brighter than the frames were.
    assert inpainted[out.glasses_mask].mean() > photo[out.glasses_mask].mean()


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.jpg"])
def test_regressed_mesh_projects_its_landmarks_onto_the_photo_landmarks(pipe, name):
    from eyeglass3d.evaluation.eval_reconstruction import projected_landmarks_px

    out = pipe.reconstruct(REPO_ROOT / "examples" / name)
    assert out.stages["regressor"] == "network"
    mesh_landmarks = projected_landmarks_px(pipe.face_model, out.coefficients, out.points5.astype(np.float64))
    corner_distance = np.linalg.norm(out.landmarks[36] - out.landmarks[45])
    error = np.linalg.norm(mesh_landmarks - out.landmarks, axis=1).mean() / corner_distance
    assert error < 0.08, f"mesh landmarks {error:.3f} eye-corner distances from the 2D landmarks"


def test_shape_hardly_follows_the_detectors_eye_points(pipe, monkeypatch):
    """Glasses move the detector's eye points by ~5 % of the eye distance; the regressor's crop cut from the
    landmarks (and its shift average) keeps the shape where it was: 0.10 mm on average over these four moves,
    0.23 mm with the previous release, which cut it from the detector's points."""
    import copy

    from eyeglass3d.evaluation.eval_reconstruction import face_area_shape, procrustes_rms_mm

    photo = np.asarray(PIL.Image.open(REPO_ROOT / "examples" / "grace_hopper.jpg").convert("RGB"))
    reference = face_area_shape(pipe.face_model, pipe.reconstruct(photo).coefficients)
    detection = pipe.detector.detect(photo)[0]
    eye_distance = np.linalg.norm(detection.points[1] - detection.points[0])
    changes = []
    for move in ((0.06, 0.0), (-0.06, 0.0), (0.0, 0.06), (0.0, -0.06)):
        moved = copy.deepcopy(detection)
        moved.points[:2] += np.float32(eye_distance) * np.array(move, np.float32)
        monkeypatch.setattr(pipe.detector, "detect", lambda image, moved=moved: [moved])
        changes.append(procrustes_rms_mm(face_area_shape(pipe.face_model, pipe.reconstruct(photo).coefficients), reference))
    assert np.mean(changes) < 0.15, changes
