"""The LFW verification protocol: pairs parsing, the metrics on hand-made scores, and the command on a tiny fake LFW."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from eyeglass3d.evaluation.eval_lfw_verification import (
    equal_error_rate,
    fold_accuracy,
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


def test_metrics_on_hand_made_scores():
    same = np.array([True] * 5 + [False] * 5 + [True] * 5 + [False] * 5)
    folds = np.repeat([0, 1], 10)
    perfect = np.where(same, 0.9, 0.1) + np.linspace(0, 0.05, 20)
    assert fold_accuracy(perfect, same, folds) == (1.0, 0.0)
    assert equal_error_rate(perfect, same) == 0.0
    assert normalised_auc(perfect, same) == 1.0
    figures = verification_figures(perfect, same, folds)
    assert figures == {"pairs": 20, "accuracy": 1.0, "accuracy_std": 0.0, "100_minus_eer": 1.0, "nauc": 1.0}

    reversed_scores = -perfect
    assert normalised_auc(reversed_scores, same) == 0.0
    assert equal_error_rate(reversed_scores, same) == 1.0
    assert fold_accuracy(reversed_scores, same, folds)[0] <= 0.5

    # One discordant pair out of 10 x 10: AUC = 1 - 1/100, EER = 10 %, 19 of 20 right at the best threshold.
    scores = np.concatenate([np.arange(10, 20), np.arange(0, 10)]).astype(float)  # 10 same, then 10 different
    labels = np.array([True] * 10 + [False] * 10)
    scores[0], scores[19] = 9.0, 10.0  # the weakest same pair and the strongest different pair swap places
    assert normalised_auc(scores, labels) == pytest.approx(0.99)
    assert equal_error_rate(scores, labels) == pytest.approx(0.1)
    assert fold_accuracy(scores, labels, np.zeros(20, int))[0] == pytest.approx(0.95)
    assert normalised_auc(np.zeros(20), labels) == pytest.approx(0.5)  # all tied: chance


def _fake_lfw(root):
    """Two people, two photos each (the example photo and a flipped / cropped copy); 2 folds of 1 + 1 pairs."""
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
    (root / "pairs.txt").write_text(
        "2\t1\n"
        "Grace_Hopper\t1\t2\nGrace_Hopper\t1\tEileen_Collins\t1\n"
        "Eileen_Collins\t1\t2\nEileen_Collins\t2\tGrace_Hopper\t2\n"
    )


@pytest.mark.skipif(not (data_root() / "glasses" / "glassesVTO").is_dir(), reason="no glassesVTO meshes")
def test_main_on_a_tiny_fake_lfw(tmp_path):
    from eyeglass3d.evaluation import eval_lfw_verification

    lfw = tmp_path / "lfw"
    _fake_lfw(lfw)
    threads = torch.get_num_threads()
    try:
        report = eval_lfw_verification.main(["--lfw-dir", str(lfw), "--weights", str(WEIGHTS), "--threads", "1",
                                             "--also-left-in", "--json", str(tmp_path / "report.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["pairs"] == 4 and report["folds"] == 2 and report["images_without_face"] == 0
    assert "regressor" in report["stages"]
    for name in ("clean", "glasses", "glasses_left_in"):
        figures = report[name]
        assert figures["pairs"] == 4 and figures["pairs_left_out"] == 0
        for key in ("accuracy", "100_minus_eer", "nauc"):
            assert 0.0 <= figures[key] <= 1.0
