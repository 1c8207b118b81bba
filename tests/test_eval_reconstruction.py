"""The reconstruction evaluation: its geometry against hand-computed values, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures.eval_faces import labels_for_tests
from tiny_face_model import tiny_face_model

from eyeglass3d.evaluation.eval_reconstruction import (
    photometric_error,
    procrustes_rms_mm,
    projected_landmarks_px,
)
from eyeglass3d.evaluation.metrics import normalised_mean_error
from eyeglass3d.geometry import alignment
from eyeglass3d.geometry.camera import rotation_matrix
from eyeglass3d.paths import REPO_ROOT, data_root

WEIGHTS = REPO_ROOT / "weights_card"


def _rotation(angles) -> np.ndarray:
    return rotation_matrix(torch.tensor([angles], dtype=torch.float64))[0].numpy()


def test_procrustes_rms_of_a_rigid_copy_is_zero():
    rng = np.random.default_rng(0)
    points = rng.normal(0, 0.05, (500, 3))
    moved = points @ _rotation([0.3, -0.5, 0.2]).T + np.array([0.01, -0.2, 0.4])
    assert procrustes_rms_mm(moved, points) == pytest.approx(0.0, abs=1e-9)
    assert procrustes_rms_mm(points, moved) == pytest.approx(0.0, abs=1e-9)


def test_procrustes_rms_of_a_known_offset():
    """Points on a 10 cm sphere vs the same directions on a 10.2 cm sphere: no rigid motion (and no scale
    allowed) brings them closer than the 2 mm radial offset, whatever pose the copy is in."""
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(1000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions = np.concatenate([directions, -directions])  # centroid exactly at the centre
    inner, outer = 0.100 * directions, 0.102 * directions
    assert procrustes_rms_mm(inner, outer) == pytest.approx(2.0, rel=1e-6)
    moved = outer @ _rotation([-0.2, 0.7, 0.1]).T + np.array([0.05, 0.0, -0.3])
    assert procrustes_rms_mm(inner, moved) == pytest.approx(2.0, rel=1e-6)
    # Half the vertices 3 mm off along x, half not: the best translation is 1.5 mm, leaving 1.5 mm each.
    shifted = inner.copy()
    shifted[::2, 0] += 0.003
    assert procrustes_rms_mm(inner, shifted) == pytest.approx(1.5, rel=1e-3)


def _coefficients(face_model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {
        "identity": rng.normal(0, 1, face_model.config.identity_dim).astype(np.float32),
        "expression": rng.uniform(0, 0.3, face_model.config.expression_dim).astype(np.float32),
        "texture": np.zeros(face_model.config.texture_dim, np.float32),
        "lighting": np.zeros(27, np.float32),
        "pose": np.array([0.05, -0.1, 0.03, 0.002, -0.004, 0.01], np.float32),
    }


def test_projected_landmarks_follow_the_crop_frame():
    """The mesh's landmarks land where the crop camera puts them, at any crop size, and a perfect
    projection scores NME 0."""
    face_model = tiny_face_model()
    coefficients = _coefficients(face_model)
    points5 = np.array([[70, 90], [130, 88], [100, 120], [78, 150], [124, 149]], np.float64)
    photo = projected_landmarks_px(face_model, coefficients, points5)
    assert photo.shape == (68, 2) and np.isfinite(photo).all()
    assert normalised_mean_error(photo, photo) == 0.0
    tensors = {name: torch.as_tensor(value)[None] for name, value in coefficients.items()}
    camera = face_model.to_camera(face_model.shape(tensors["identity"], tensors["expression"]), tensors["pose"])
    in_crop = face_model.project(face_model.landmarks(camera), 512)[0, :, :2].double().numpy()
    expected = alignment.transform_points(alignment.invert_affine(alignment.crop_matrix(points5, 512)), in_crop)
    np.testing.assert_allclose(photo, expected, atol=1e-3)
    shifted = photo + np.array([3.0, 4.0])  # 5 px everywhere
    scale = np.linalg.norm(photo[36] - photo[45])
    assert normalised_mean_error(shifted, photo) == pytest.approx(5.0 / scale)


def test_photometric_error_of_a_flat_render():
    """Albedo = mean texture and zero light give colour = albedo; a photo of that colour scores 0."""
    face_model = tiny_face_model()
    coefficients = _coefficients(face_model)
    colour = face_model.texture_mean[0].numpy()
    face_model.texture_mean[:] = torch.from_numpy(colour)
    photo = np.empty((200, 200, 3), np.uint8)
    photo[:] = np.round(colour * 255).astype(np.uint8)
    points5 = np.array([[70, 90], [130, 88], [100, 120], [78, 150], [124, 149]], np.float64)
    error, pixels = photometric_error(face_model, coefficients, photo, points5, size=64)
    assert pixels > 0
    assert error < 0.51  # rounding only
    darker = np.clip(photo.astype(int) - 20, 0, 255).astype(np.uint8)
    error, _ = photometric_error(face_model, coefficients, darker, points5, size=64)
    assert error == pytest.approx(20.0, abs=0.51)


@pytest.mark.skipif(not (data_root() / "glasses" / "glassesVTO").is_dir(), reason="no glassesVTO meshes")
def test_main_on_two_faces(tmp_path):
    from eyeglass3d.evaluation import eval_reconstruction

    labels = labels_for_tests(tmp_path)
    if labels is None:
        pytest.skip("the fixture's UTKFace photos are not in the shared data folder")
    threads = torch.get_num_threads()
    try:
        report = eval_reconstruction.main(["--split", "test", "--weights", str(WEIGHTS), "--labels", str(labels),
                                           "--limit", "2", "--threads", "1", "--resnet-repeats", "2",
                                           "--json", str(tmp_path / "report.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["split"] == "test" and report["n"] == 2
    nme = report["landmark_reprojection_nme"]["mesh"]
    assert nme["n"] == 2 and nme["missed"] == report["missed_faces"]["clean"] < 2  # misses count, at 0.5
    assert 0.0 < nme["found"]["mean"] < 0.2
    invariance = report["glasses_invariance_rms_mm"]
    for key in ("glasses_removed", "glasses_left_in"):
        assert invariance[key]["n"] == 2  # the same faces for both conditions
        assert invariance[key]["missed"] == report["missed_faces"]["clean"] + report["missed_faces"][key]
        if invariance[key]["found"]["n"]:
            assert 0.0 <= invariance[key]["found"]["mean"] < 20.0
    assert 0.0 < report["photometric_error"]["mae_rgb"]["mean"] < 128.0
    latency = report["latency_ms"]
    for precision in ("fp32", "policy"):
        assert latency["ratio"][precision] == pytest.approx(
            latency["reconstruct_median"] / latency["resnet50_224_forward_median"][precision], abs=0.01)


def test_a_missed_face_lifts_the_median_shape_change():
    from eyeglass3d.evaluation.eval_reconstruction import invariance

    entry = invariance([0.1, 0.2, float("inf"), float("inf")], between_median=2.0)
    assert entry["median"] == float("inf") and entry["missed"] == 2 and entry["found"]["median"] == 0.15
    assert entry["median_over_between_people_median"] is None
    entry = invariance([0.1, 0.2, 0.3, float("inf")], between_median=2.0)
    assert entry["median"] == 0.25 and entry["median_over_between_people_median"] == 0.125
