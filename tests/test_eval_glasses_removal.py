"""The glasses-removal evaluation: its metrics against hand-computed values, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fixtures.eval_faces import CLEAN_FACES, WEARERS, labels_for_tests

from eyeglass3d.evaluation.metrics import iou, psnr, ssim
from eyeglass3d.paths import REPO_ROOT, data_root

WEIGHTS = REPO_ROOT / "weights_card"


def test_iou_of_known_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[1:3, 1:3] = True  # 4 pixels, 1 shared
    assert iou(a, b) == pytest.approx(1 / 7)
    assert iou(a, a) == 1.0
    assert iou(a, ~a) == 0.0
    # Inside a region: only the left two columns count, a ∩ b = {(1,1)}, a ∪ b = {(0,0),(0,1),(1,0),(1,1),(2,1)}.
    region = np.zeros((4, 4), bool)
    region[:, :2] = True
    assert iou(a, b, region) == pytest.approx(1 / 5)
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0  # both empty: agreement


def test_psnr_of_a_known_error():
    target = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(target + 5, target) == pytest.approx(10 * np.log10(255**2 / 25))  # 34.15 dB
    half = target.copy()
    half[:4] += 10  # MSE = 100 / 2
    assert psnr(half, target) == pytest.approx(10 * np.log10(255**2 / 50))
    assert psnr(target, target) == float("inf")


def test_ssim_properties():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
    image = np.asarray(torch.nn.functional.avg_pool2d(  # smooth it a little: a photo-like signal
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), 3, 1, 1)[0].permute(1, 2, 0).round().byte())
    assert ssim(image, image) == pytest.approx(1.0)
    scores = []
    for sigma in (2, 8, 32):
        noisy = np.clip(image + rng.normal(0, sigma, image.shape), 0, 255)
        scores.append(ssim(noisy, image))
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0
    assert ssim(image[..., 0], image[..., 1]) == pytest.approx(ssim(image[..., 1], image[..., 0]))
    # Constant images: the structure term is c2/c2, so SSIM = (2ab + c1) / (a² + b² + c1) exactly.
    a, b, c1 = 100.0, 120.0, (0.01 * 255) ** 2
    assert ssim(np.full((20, 20), a), np.full((20, 20), b)) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    # RGB is the mean of the per-channel figures.
    noisy = np.clip(image + rng.normal(0, 8, image.shape), 0, 255)
    per_channel = [ssim(noisy[..., c], image[..., c]) for c in range(3)]
    assert ssim(noisy, image) == pytest.approx(np.mean(per_channel))
    with pytest.raises(ValueError):
        ssim(np.zeros((8, 40)), np.zeros((8, 40)))


def test_ssim_matches_a_scipy_reference():
    """The same formula with scipy's Gaussian filter (what scikit-image uses: truncate 3.5, reflect)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (40, 60))
    y = np.clip(x + rng.normal(0, 30, x.shape), 0, 255)

    def blur(a):
        return gaussian_filter(a, 1.5, truncate=3.5, mode="reflect")

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    reference = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    assert ssim(x, y) == pytest.approx(reference[5:-5, 5:-5].mean(), rel=1e-9)


@pytest.mark.skipif(not (data_root() / "glasses" / "glassesVTO").is_dir(), reason="no glassesVTO meshes")
def test_main_runs_with_tiny_random_components(tmp_path):
    from eyeglass3d.evaluation import eval_glasses_removal
    from eyeglass3d.models.inpainter import InpaintGenerator
    from eyeglass3d.models.parser import FaceParser

    labels = labels_for_tests(tmp_path)
    if labels is None:
        pytest.skip("the fixture's UTKFace photos are not in the shared data folder")
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    parser = FaceParser(base_channels=4, depth=2, input_size=(32, 64))
    with torch.no_grad():  # a parser that calls the whole band eyeglasses: every mask path gets pixels
        parser.classifier.bias[parser.eyeglasses_index] = 50.0
    parser.save_pretrained(tmp_path / "parser")
    InpaintGenerator(base_channels=4, input_size=(32, 64)).save_pretrained(tmp_path / "inpainter")
    common = ["--split", "test", "--weights", str(WEIGHTS), "--labels", str(labels), "--threads", "1"]
    try:
        report = eval_glasses_removal.main(common + [
            "--limit", "2", "--parser", str(tmp_path / "parser"), "--inpainter", str(tmp_path / "inpainter"),
            "--json", str(tmp_path / "report.json"), "--grid", str(tmp_path / "grid.png"),
        ])
        assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
        assert report["split"] == "test" and report["n"] == {"without_glasses": 2, "with_glasses": 2}
        assert str(tmp_path) not in json.dumps(report)  # machine paths never reach a report
        masks = report["synthetic_glasses_mask"]
        assert masks["n"] == 2 and masks["iou"]["n"] == 2  # misses stay in the count, as failures
        assert masks["iou"]["missed"] == masks["missed_faces"] < 2
        assert 0.0 < masks["iou"]["found"]["mean"] < 1.0  # the whole band vs the glasses inside it
        assert masks["glasses_found_share"] == (2 - masks["missed_faces"]) / 2
        positives = report["false_positives"]
        assert positives["flagged_share"] == (2 - positives["missed_faces"]) / 2
        wearers = report["real_wearers"]
        assert wearers["glasses_found"] == 2 - wearers["missed_faces"]
        assert wearers["glasses_found_share"] == wearers["glasses_found"] / 2
        quality = report["inpainting_given_exact_mask"]
        assert set(quality["psnr"]) == {"network", "telea", "ns"}
        assert {entry["n"] for entry in quality["psnr"].values()} == {quality["n"]}  # the same faces for all
        assert all(0.0 < value["mean"] <= 1.0 for value in quality["ssim"].values())
        latency = report["latency_ms_per_face"]
        assert latency["parser"] > 0 and latency["inpainter"] > 0 and latency["faces"]["parser"] >= 2
        assert report["grid"]["faces"] == 2 - wearers["missed_faces"]
        assert (tmp_path / "grid.png").is_file()

        # Components not trained yet: their sections are skipped; the classical peers still run.
        report = eval_glasses_removal.main(common + [
            "--limit", "1", "--parser", str(tmp_path / "none"), "--inpainter", str(tmp_path / "none"),
            "--json", str(tmp_path / "partial.json"), "--grid", str(tmp_path / "partial.png"),
        ])
        assert report["synthetic_glasses_mask"] == "skipped: no parser"
        assert set(report["inpainting_given_exact_mask"]["psnr"]) <= {"telea", "ns"}
        assert report["grid"]["faces"] == 0 and not (tmp_path / "partial.png").exists()
    finally:
        torch.set_num_threads(threads)


def test_fixture_holds_clean_faces_and_wearers_of_the_test_split(tmp_path):
    labels = labels_for_tests(tmp_path)
    if labels is None:
        pytest.skip("the fixture's UTKFace photos are not in the shared data folder")
    from eyeglass3d.training.datasets import FaceRecords

    assert len(FaceRecords("test", labels_path=labels, glasses="without")) == CLEAN_FACES
    assert len(FaceRecords("test", labels_path=labels, glasses="with")) == WEARERS
    assert len(FaceRecords("val", labels_path=labels)) == 0
