"""The regressor's data format, loss terms and training command, on tiny synthetic faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eyeglass3d.models.face_model import COEFFICIENT_SIZES, FaceModel, join_coefficients
from eyeglass3d.training.reconstruction_losses import (
    FaceTerms,
    coefficient_groups,
    coefficient_loss,
    coefficient_units,
    group_scales,
    landmark_nme,
)
from eyeglass3d.training.regressor_data import BAND_ROWS, encode_image, load_crops, merge, pack_images

WEIGHTS = Path(__file__).resolve().parent.parent / "weights_card"
SIZE = 128


@pytest.fixture(scope="module")
def face_model():
    return FaceModel.from_pretrained(WEIGHTS / "face_model").float()


def random_coefficients(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    groups = {name: torch.zeros(batch, size) for name, size in COEFFICIENT_SIZES.items()}
    groups["identity"] = torch.randn(batch, 80, generator=generator) * 0.5
    groups["expression"] = torch.rand(batch, 53, generator=generator) * 0.1
    groups["texture"] = torch.randn(batch, 80, generator=generator) * 0.5
    groups["lighting"] = torch.randn(batch, 27, generator=generator) * 0.05
    groups["pose"] = torch.cat([torch.randn(batch, 3, generator=generator) * 0.05,
                                torch.randn(batch, 3, generator=generator) * 0.01], 1)
    return join_coefficients(groups)


def synthetic_faces(face_model, batch: int, seed: int):
    """Photos rendered from known coefficients over grey, with their landmarks and a whole-face skin mask."""
    coefficients = random_coefficients(batch, seed)
    terms = FaceTerms(face_model, SIZE)
    grey = torch.full((batch, 3, SIZE, SIZE), 0.5)
    rendered = terms(coefficients, grey, torch.ones(batch, SIZE, SIZE, dtype=torch.bool), render=True)
    return coefficients, rendered.rendered, rendered.landmarks_px


def test_terms_of_the_true_coefficients_fit_their_own_render(face_model):
    coefficients, photos, landmarks = synthetic_faces(face_model, 2, 0)
    terms = FaceTerms(face_model, SIZE)
    skin = torch.ones(2, SIZE, SIZE, dtype=torch.bool)
    exact = terms(coefficients, photos, skin)
    assert landmark_nme(exact.landmarks_px, landmarks).max() < 1e-5
    other = terms(random_coefficients(2, 1), photos, skin)
    assert exact.photometric.max() < 0.5 * other.photometric.min()
    assert landmark_nme(other.landmarks_px, landmarks).min() > 0.01


def test_coefficient_loss_is_zero_at_the_target_and_scaled_per_group():
    targets = random_coefficients(8, 2)
    scales = group_scales(targets)
    assert set(scales) == set(coefficient_groups(targets)) == {
        "identity", "expression", "texture", "lighting", "angles", "translation"}
    assert coefficient_loss(targets, targets, scales).abs().max() == 0
    assert (coefficient_loss(torch.zeros_like(targets), targets, scales) > 0).all()


def test_regressor_data_round_trip_and_merge(tmp_path):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (3, SIZE, SIZE, 3), dtype=np.uint8)
    crops[:] = crops[:, :1, :1]  # flat colours survive lossy WebP almost exactly
    twins = crops.copy()
    twins[:, slice(*BAND_ROWS)] = 17
    parts = []
    for half in (slice(0, 2), slice(2, 3)):
        clean, clean_offsets = pack_images([encode_image(c) for c in crops[half]])
        bands, band_offsets = pack_images([encode_image(t[slice(*BAND_ROWS)]) for t in twins[half]])
        path = tmp_path / f"part{half.start}.npz"
        np.savez(path, clean_webp=clean, clean_offsets=clean_offsets, deglassed_webp=bands,
                 deglassed_offsets=band_offsets, files=np.array(["a"] * (half.stop - half.start)),
                 crop_size=np.int64(SIZE))
        parts.append(path)
    loaded_clean, loaded_twins = load_crops(merge(parts))
    assert np.abs(loaded_clean.astype(int) - crops).max() <= 3
    assert np.abs(loaded_twins.astype(int) - twins).max() <= 3


def write_split(face_model, path: Path, count: int, seed: int) -> None:
    coefficients, photos, landmarks = synthetic_faces(face_model, count, seed)
    crops = (photos.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    clean, clean_offsets = pack_images([encode_image(c) for c in crops])
    bands, band_offsets = pack_images([encode_image(c[slice(*BAND_ROWS)]) for c in crops])
    np.savez(path, files=np.array([f"{seed}_{i}.jpg" for i in range(count)]), clean_webp=clean,
             clean_offsets=clean_offsets, deglassed_webp=bands, deglassed_offsets=band_offsets,
             landmarks_px=landmarks.numpy().astype(np.float16), coefficients=coefficients.numpy().astype(np.float16),
             descriptor=np.random.default_rng(seed).normal(size=(count, 128)).astype(np.float16),
             crop_size=np.int64(SIZE))


def test_training_command_trains_resumes_and_exports(face_model, tmp_path):
    from eyeglass3d.models.regressor import CoefficientRegressor
    from eyeglass3d.training import train_regressor

    data = tmp_path / "data"
    data.mkdir()
    write_split(face_model, data / "regressor_data_train.npz", 6, 3)
    write_split(face_model, data / "regressor_data_val.npz", 4, 4)
    out = tmp_path / "run"
    common = ["--out", str(out), "--data", str(data), "--weights", str(WEIGHTS), "--batch", "4", "--threads", "1",
              "--device", "cpu"]
    train_regressor.main(common + ["--steps", "3", "--feature-steps", "2", "--log-every", "1"])
    figures = json.loads((out / "metrics.json").read_text())[0]
    assert figures["steps"] == 3 and figures["backbone"] == "mobilenet_v3_large"
    assert 0 < figures["val_nme_clean_mean"] < 10 and np.isfinite(figures["val_between_rms_mm_median"])
    regressor = CoefficientRegressor.from_pretrained(out / "mobilenet_v3_large" / "best")
    assert regressor.config.input_size == SIZE
    train_regressor.main(common + ["--steps", "3", "--feature-steps", "2"])  # finished: nothing retrained
    assert "finished earlier (3 steps)" in (out / "train.log").read_text()
    export = tmp_path / "exported"
    train_regressor.main(common + ["--export", "mobilenet_v3_large", "--export-to", str(export)])
    from safetensors.torch import load_file

    stored = load_file(export / "diffusion_pytorch_model.safetensors")
    assert {value.dtype for value in stored.values() if value.is_floating_point()} == {torch.float16}
    assert CoefficientRegressor.from_pretrained(export).config.backbone == "mobilenet_v3_large"


def test_a_few_steps_lower_the_regressor_loss(face_model):
    from argparse import Namespace

    from eyeglass3d.models.regressor import CoefficientRegressor
    from eyeglass3d.training.train_regressor import regressor_loss

    torch.manual_seed(0)
    coefficients, photos, landmarks = synthetic_faces(face_model, 4, 5)

    skin = torch.ones(4, SIZE, SIZE, dtype=torch.bool)
    terms, scales = FaceTerms(face_model, SIZE), group_scales(coefficients)
    model = CoefficientRegressor(backbone="mobilenet_v3_large", input_size=SIZE)
    model.output_scale.copy_(coefficient_units(scales))
    args = Namespace(feature_weight=0.0, landmark_weight=200.0, consistency_weight=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss, _ = regressor_loss(model, terms, None, photos, photos, skin, landmarks, coefficients, scales, args)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_paired_batches_measure_the_shape_change_between_twins(face_model):
    from argparse import Namespace

    from eyeglass3d.models.regressor import CoefficientRegressor
    from eyeglass3d.training.train_regressor import regressor_loss

    coefficients, photos, landmarks = synthetic_faces(face_model, 2, 6)

    skin = torch.ones(2, SIZE, SIZE, dtype=torch.bool)
    terms, scales = FaceTerms(face_model, SIZE), group_scales(coefficients)
    model = CoefficientRegressor(backbone="mobilenet_v3_large", input_size=SIZE)  # train mode: batch statistics
    torch.nn.init.normal_(model.head.weight, std=0.05)
    args = Namespace(feature_weight=0.0, landmark_weight=200.0, consistency_weight=1.0)
    pairs = [photos.repeat(2, 1, 1, 1), skin.repeat(2, 1, 1), landmarks.repeat(2, 1, 1), coefficients.repeat(2, 1)]
    twins = torch.cat([photos, photos.flip(-1)])
    _, parts = regressor_loss(model, terms, None, twins, *pairs, scales, args)
    _, parts_same = regressor_loss(model, terms, None, pairs[0], *pairs, scales, args)
    assert parts_same["consistency"] < 1e-6 < parts["consistency"]


def test_crop_jitter_moves_images_and_landmarks_alike():
    from eyeglass3d.training.train_regressor import apply_jitter, crop_jitter

    matrices = crop_jitter(4, 1.0, torch.Generator().manual_seed(0), "cpu")
    images = torch.zeros(4, 1, SIZE, SIZE)
    images[:, 0, 70, 40] = 1.0
    images = torch.nn.functional.avg_pool2d(images, 5, 1, 2) * 25  # a small blob around pixel (40, 70)
    moved, landmarks = apply_jitter(matrices, images, torch.tensor([[[40.0, 70.0]]]).repeat(4, 1, 1))
    for blob, point in zip(moved[:, 0], landmarks[:, 0]):
        rows, cols = torch.nonzero(blob > 0.01, as_tuple=True)
        weights = blob[rows, cols]
        centre = torch.stack([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()
        assert torch.allclose(centre, point, atol=0.1)
    assert (landmarks[:, 0] - torch.tensor([40.0, 70.0])).norm(dim=-1).max() > 0.5  # it did move them
