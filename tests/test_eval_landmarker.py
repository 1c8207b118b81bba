"""The landmark evaluation: NME and its miss rule on known answers, and the command on fixture faces with a stand-in
dlib whose answers are known (exact on the clean photos it labelled, a miss on everything else)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from fixtures.eval_faces import labels_for_tests

from eyeglass3d.evaluation import eval_landmarker
from eyeglass3d.evaluation.metrics import MISSED_NME, nme_or_miss
from eyeglass3d.paths import REPO_ROOT, data_root

WEIGHTS = REPO_ROOT / "weights_card"


def _face(eye_distance: float = 100.0) -> np.ndarray:
    points = np.random.default_rng(0).uniform(0, 200, (68, 2))
    points[36], points[45] = (50.0, 80.0), (50.0 + eye_distance, 80.0)
    return points


def test_nme_of_a_known_displacement_and_the_miss_rule():
    target = _face(100.0)
    assert nme_or_miss(target + np.array([3.0, 4.0]), target) == pytest.approx(0.05)  # 5 px over 100 px
    moved = target.copy()
    moved[:34] += np.array([0.0, 10.0])  # half the points 10 px off: mean error 5 px
    assert nme_or_miss(moved, target) == pytest.approx(0.05)
    assert nme_or_miss(None, target) == MISSED_NME == 0.5
    assert nme_or_miss(target + 1000.0, target) == MISSED_NME  # a wild answer is no worse than a miss


def test_summary_counts_misses_in_the_mean_and_apart():
    summary = eval_landmarker.scores_summary([0.1, MISSED_NME, 0.3, MISSED_NME])
    assert summary == {"nme_mean": 0.35, "nme_median": 0.4, "missed": 2, "nme_mean_found": 0.2, "n": 4}


def test_glasses_figure_weights_lens_kinds_as_the_compositor_draws_them():
    from eyeglass3d.training.compositor import LENS_WEIGHTS

    conditions = {kind: {"ours": {"nme_mean": value}} for kind, value in
                  zip(LENS_WEIGHTS, (0.02, 0.04, 0.04, 0.10, 0.20))}
    expected = sum(LENS_WEIGHTS[kind] * conditions[kind]["ours"]["nme_mean"] for kind in LENS_WEIGHTS)
    assert eval_landmarker.weighted_glasses(conditions, "ours") == pytest.approx(expected, abs=1e-4)
    assert expected == pytest.approx(0.5 * 0.02 + 0.1 * 0.04 + 0.1 * 0.04 + 0.2 * 0.10 + 0.1 * 0.20)


def test_read_pts_turns_one_based_points_to_zero_based(tmp_path):
    lines = [f"{x + 1}.5 {x + 11}" for x in range(68)]
    (tmp_path / "face.pts").write_text("version: 1\nn_points:  68\n{\n" + "\n".join(lines) + "\n}\n")
    points = eval_landmarker.read_pts(tmp_path / "face.pts")
    assert points.shape == (68, 2)
    np.testing.assert_allclose(points[:, 0], np.arange(68) + 0.5)
    np.testing.assert_allclose(points[:, 1], np.arange(68) + 10.0)


def test_set_changes_a_config_value_predict_reads_and_rejects_unknown_keys():
    from eyeglass3d.evaluation.overrides import apply_overrides, parse_overrides
    from eyeglass3d.models.landmarker import LandmarkRegressor

    overrides = parse_overrides(["landmarker.refinements=1", "regressor.test_time_shift=0.0", "x.name=text"])
    assert overrides == {"landmarker": {"refinements": 1}, "regressor": {"test_time_shift": 0.0},
                         "x": {"name": "text"}}
    model = LandmarkRegressor(input_size=32, variant="small", width_mult=0.35).eval()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    apply_overrides({"landmarker": model}, parse_overrides(["landmarker.refinements=1"]))
    assert model.config.refinements == 1
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    from eyeglass3d.geometry.alignment import CANONICAL_FIVE_POINTS

    model.predict(image, CANONICAL_FIVE_POINTS * 64)
    assert len(calls) == 2  # the first crop and one refinement
    with pytest.raises(SystemExit, match="no config key"):
        apply_overrides({"landmarker": model}, parse_overrides(["landmarker.nonsense=1"]))
    with pytest.raises(SystemExit, match="component.key=value"):
        parse_overrides(["refinements=1"])


class _KnownTeacher:
    """dlib's stand-in: the exact label of each clean photo it was given, and a miss on any other image."""

    answers: dict[bytes, np.ndarray] = {}

    def __init__(self, **kwargs):
        pass

    def detect(self, image):
        return np.zeros(4) if np.ascontiguousarray(image).tobytes() in self.answers else None

    def landmarks(self, image, box):
        return self.answers[np.ascontiguousarray(image).tobytes()]


@pytest.mark.skipif(not (data_root() / "glasses" / "glassesVTO").is_dir(), reason="no glassesVTO meshes")
@pytest.mark.skipif(not (data_root() / "landmarks68").is_dir(), reason="no annotated photos")
def test_main_scores_both_systems_on_the_same_faces(tmp_path, monkeypatch):
    labels = labels_for_tests(tmp_path)
    if labels is None:
        pytest.skip("the fixture's UTKFace photos are not in the shared data folder")
    from eyeglass3d.training.datasets import FaceRecords

    records = FaceRecords("test", face_set="utkface", labels_path=labels, glasses_csv=None)
    _KnownTeacher.answers = {np.ascontiguousarray(records[i].image).tobytes(): records[i].landmarks68_px
                             for i in range(2)}
    monkeypatch.setitem(sys.modules, "eyeglass3d.training.teacher",
                        types.SimpleNamespace(DlibTeacher=_KnownTeacher))
    threads = torch.get_num_threads()
    try:
        report = eval_landmarker.main([
            "--split", "test", "--face-sets", "utkface", "--labels", f"utkface={labels}", "--limit", "2",
            "--lens-kinds", "clear", "sunglasses", "--threads", "1", "--latency-repeats", "2",
            "--json", str(tmp_path / "report.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["split"] == "test" and report["n"] == 2 and report["lens_kinds"] == ["clear", "sunglasses"]
    assert "--limit 2" in report["command"] and report["git"]["commit"]
    assert str(tmp_path) not in report["command"]  # machine paths never reach a report
    utkface = report["face_sets"]["utkface"]
    assert set(utkface["conditions"]) == {"clean", "clear", "sunglasses"}
    for condition in utkface["conditions"].values():  # the same faces for both systems
        assert condition["ours"]["n"] == condition["dlib"]["n"] == 2
    dlib_clean = utkface["conditions"]["clean"]["dlib"]
    assert dlib_clean["nme_mean"] == 0.0 and dlib_clean["missed"] == 0  # its own labels, found
    for kind in ("clear", "sunglasses"):  # different pixels: the stand-in misses, scored 0.5 and counted
        assert utkface["conditions"][kind]["dlib"] == {"nme_mean": 0.5, "nme_median": 0.5, "missed": 2,
                                                       "nme_mean_found": None, "n": 2}
    ours = utkface["conditions"]["clean"]["ours"]
    assert ours["missed"] == 0 and 0.0 < ours["nme_mean"] < 0.1  # the shipped landmarker on clear faces
    assert utkface["glasses"]["dlib"] == 0.5
    annotated = report["annotated_photos"]
    assert annotated["n"] == 4 and annotated["dlib"]["missed"] == 4  # none of them was given to the stand-in
    assert 0.0 < annotated["per_photo"]["eos_300w/image_0010"]["ours"] < 0.1  # a one-face 300-W photo
    latency = report["latency_ms_per_face"]
    assert latency["faces"] == 2 and latency["fp32"] > 0
