"""The LFW verification protocol: pairs parsing, the metrics on scores with known answers, and the command on a tiny
fake LFW (val chooses the threshold, test applies it)."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from eyeglass3d.evaluation.eval_lfw_verification import (
    accuracy_at,
    best_threshold,
    equal_error_rate,
    failure_score,
    normalised_auc,
    read_pairs,
    verification_figures,
)
from eyeglass3d.paths import REPO_ROOT, data_root

WEIGHTS = REPO_ROOT / "weights_card"
EXAMPLES = REPO_ROOT / "examples"


def test_read_pairs_parses_the_standard_format(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("2\t2\nA\t1\t2\nB\t1\t3\nA\t1\tB\t2\nC\t4\tA\t12\n"
                    "C\t1\t2\nB\t2\t3\nB\t1\tC\t1\nA\t2\tC\t3\n")
    pairs = read_pairs(path)
    assert len(pairs) == 8
    assert pairs[0].first == "A/A_0001.jpg" and pairs[0].second == "A/A_0002.jpg" and pairs[0].same
    assert pairs[3].first == "C/C_0004.jpg" and pairs[3].second == "A/A_0012.jpg" and not pairs[3].same
    assert [pair.fold for pair in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [pair.same for pair in pairs] == [True, True, False, False] * 2
    limited = read_pairs(path, limit=1)  # first same and first different pair of each fold
    assert [(p.first, p.same, p.fold) for p in limited] == [
        ("A/A_0001.jpg", True, 0), ("A/A_0001.jpg", False, 0), ("C/C_0001.jpg", True, 1), ("B/B_0001.jpg", False, 1)]
    path.write_text("2\t2\nA\t1\t2\n")
    with pytest.raises(ValueError, match="header"):
        read_pairs(path)
    path.write_text("1\t1\nA\t1\tB\t2\nA\t1\t2\n")  # a different pair where a same pair belongs
    with pytest.raises(ValueError, match="name i j"):
        read_pairs(path)


def test_metrics_on_scores_with_known_answers():
    same = np.array([True] * 10 + [False] * 10)
    perfect = np.where(same, 0.9, 0.1) + np.linspace(0, 0.05, 20)
    assert equal_error_rate(perfect, same) == 0.0
    assert normalised_auc(perfect, same) == 1.0
    figures = verification_figures(perfect, same)
    assert figures["accuracy"] == 1.0 and figures["100_minus_eer"] == 1.0 and figures["nauc"] == 1.0
    assert 0.15 < figures["threshold"] < 0.9  # between the two groups

    reversed_scores = -perfect
    assert normalised_auc(reversed_scores, same) == 0.0
    assert equal_error_rate(reversed_scores, same) == 1.0

    # One discordant pair out of 10 x 10: AUC = 1 - 1/100, EER = 10 %, 19 of 20 right at the best threshold.
    scores = np.concatenate([np.arange(10, 20), np.arange(0, 10)]).astype(float)  # 10 same, then 10 different
    scores[0], scores[19] = 9.0, 10.0  # the weakest same pair and the strongest different pair swap places
    assert normalised_auc(scores, same) == pytest.approx(0.99)
    assert equal_error_rate(scores, same) == pytest.approx(0.1)
    assert accuracy_at(scores, same, best_threshold(scores, same)) == pytest.approx(0.95)
    assert normalised_auc(np.zeros(20), same) == pytest.approx(0.5)  # all tied: chance


def test_a_threshold_from_elsewhere_is_applied_not_rechosen():
    """Scores 0..19 with 'same' above 9.5: at 9.5 every pair is right; at 14.5 (a threshold chosen on other pairs)
    the five same pairs 10..14 are rejected, 15 of 20 right, and EER / AUC do not depend on it."""
    scores = np.arange(20, dtype=float)
    same = scores > 9.5
    assert verification_figures(scores, same)["accuracy"] == 1.0
    applied = verification_figures(scores, same, threshold=14.5)
    assert applied["threshold"] == 14.5 and applied["accuracy"] == 0.75
    assert applied["nauc"] == 1.0 and applied["100_minus_eer"] == 1.0


def test_a_pair_with_a_face_not_found_is_wrong_at_every_threshold():
    scores = np.array([0.9, 0.8, failure_score(True), 0.1, 0.2, failure_score(False)])
    same = np.array([True, True, True, False, False, False])
    figures = verification_figures(scores, same)
    assert figures["accuracy"] == pytest.approx(4 / 6, abs=1e-4)  # the two failures are wrong, the rest separable
    assert np.isfinite(figures["threshold"])
    assert normalised_auc(scores, same) == pytest.approx(1 - 5 / 9)  # the failures lose 3 + 3 - 1 of 9 orderings
    for threshold in (-1e9, 0.5, 1e9):
        assert accuracy_at(scores[[2, 5]], same[[2, 5]], threshold) == 0.0


def _fake_lfw(root):
    """Two people, two photos each (the example photo and a flipped / cropped copy); 5 folds of 1 + 1 pairs, as in
    pairs_dev.txt (fold 4: val, fold 5: test)."""
    people = {"Grace_Hopper": EXAMPLES / "grace_hopper.jpg", "Eileen_Collins": EXAMPLES / "astronaut.jpg"}
    for name, source in people.items():
        (root / name).mkdir(parents=True)
        with PIL.Image.open(source) as image:
            image = image.convert("RGB")
            image.save(root / name / f"{name}_0001.jpg")
            width, height = image.size
            changed = image.transpose(PIL.Image.FLIP_LEFT_RIGHT) if name == "Grace_Hopper" else image.crop(
                (width // 20, height // 20, width, height))
            changed.save(root / name / f"{name}_0002.jpg")
    fold = "Grace_Hopper\t1\t2\nGrace_Hopper\t1\tEileen_Collins\t1\n"
    (root / "pairs.txt").write_text("5\t1\n" + fold * 3 + "Eileen_Collins\t1\t2\nEileen_Collins\t2\tGrace_Hopper\t2\n"
                                    + fold)


@pytest.mark.skipif(not (data_root() / "glasses" / "glassesVTO").is_dir(), reason="no glassesVTO meshes")
def test_main_val_chooses_and_test_applies_the_threshold(tmp_path):
    from eyeglass3d.evaluation import eval_lfw_verification

    lfw = tmp_path / "lfw"
    _fake_lfw(lfw)
    common = ["--lfw-dir", str(lfw), "--pairs", str(lfw / "pairs.txt"), "--weights", str(WEIGHTS), "--threads", "1",
              "--also-left-in"]
    threads = torch.get_num_threads()
    try:
        val = eval_lfw_verification.main(common + ["--split", "val", "--json", str(tmp_path / "val.json")])
        test = eval_lfw_verification.main(common + ["--split", "test", "--json", str(tmp_path / "test.json"),
                                                    "--thresholds", str(tmp_path / "val.json")])
        with pytest.raises(SystemExit, match="val run"):  # a test report cannot supply thresholds
            eval_lfw_verification.main(common + ["--split", "test", "--thresholds", str(tmp_path / "test.json"),
                                                 "--json", str(tmp_path / "again.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "test.json").read_text()) == json.loads(json.dumps(test))
    assert val["split"] == "val" and val["fold"] == 4 and test["split"] == "test" and test["fold"] == 5
    assert val["n"] == test["n"] == 2 and test["images_without_face"] == 0
    assert test["command"].startswith("python -m eyeglass3d.evaluation.eval_lfw_verification --lfw-dir ")
    assert "regressor" in test["stages"]
    for name in ("clean", "glasses", "glasses_left_in"):
        assert test[name]["threshold"] == val[name]["threshold"]
        assert test[name]["pairs"] == 2 and test[name]["pairs_with_a_face_not_found"] == 0
        assert val[name]["accuracy"] == 1.0  # two pairs: the val threshold separates them by construction
        scores_right = test[name]["accuracy"] * 2
        assert scores_right == round(scores_right)  # 0, 1 or 2 of the 2 test pairs
