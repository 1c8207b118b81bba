"""The landmark training recipe: flips, batches, losses, and that a few steps learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eyeglass3d.models.landmarker import LandmarkRegressor
from eyeglass3d.training.augment import FLIP_68
from eyeglass3d.training.train_landmarker import (
    landmark_loss,
    make_batch,
    normalised_mean_error,
)


def test_flip_permutation_is_an_involution_that_swaps_eyes():
    assert sorted(FLIP_68) == list(range(68))
    assert (FLIP_68[FLIP_68] == np.arange(68)).all()
    assert FLIP_68[36] == 45 and FLIP_68[0] == 16 and FLIP_68[30] == 30 and FLIP_68[48] == 54


def test_flipped_batch_keeps_points_on_the_same_features(example_records):
    rng = np.random.default_rng(3)
    images, targets, _ = make_batch(example_records, None, [0, 1] * 8, 64, rng, train=True, glasses_probability=0)
    assert images.shape == (16, 3, 64, 64) and targets.shape == (16, 68, 2)
    # After any flip the image-left eye is still on the left: index 36 stays left of 45.
    assert (targets[:, 36, 0] < targets[:, 45, 0]).all()
    assert ((targets > -0.2) & (targets < 1.2)).all()


def test_nme_uses_the_outer_eye_corners():
    target = np.zeros((68, 2))
    target[45] = [10.0, 0.0]
    predicted = target + [1.0, 0.0]
    assert normalised_mean_error(predicted, target) == pytest.approx(0.1)


def test_wing_loss_matches_its_formula():
    predicted = torch.tensor([[[0.005, 0.0]], [[0.5, 0.0]]])
    target = torch.zeros_like(predicted)
    width, curvature = 0.01, 0.002
    small = width * np.log1p(0.005 / curvature)
    large = 0.5 - (width - width * np.log(1 + width / curvature))
    assert landmark_loss(predicted, target, "wing").item() == pytest.approx((small + large) / 4, rel=1e-5)
    assert landmark_loss(predicted, target, "l2").item() == pytest.approx((0.005**2 + 0.5**2) / 2, rel=1e-5)


def test_a_few_training_steps_lower_the_loss(example_records):
    torch.manual_seed(0)
    model = LandmarkRegressor(input_size=64, variant="small", width_mult=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, targets, _ = make_batch(example_records, None, [0, 1, 0, 1], 64, np.random.default_rng(0), train=False,
                                    glasses_probability=0)
    targets = targets + 0.03  # away from the initial mean shape, so there is something to learn
    losses = []
    for _ in range(8):
        loss = landmark_loss(model(images), targets, "l2")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_eval_latency_times_the_whole_predict_with_its_refinements():
    from eyeglass3d.evaluation.eval_landmarker import latency_ms
    from eyeglass3d.models.landmarker import LandmarkRegressor

    calls = []
    model = LandmarkRegressor(input_size=32, variant="small", width_mult=0.35, refinements=2).eval()
    model.register_forward_hook(lambda *args: calls.append(1))
    figures = latency_ms(model, repeats=3)
    assert set(figures) == {"fp32", "bf16"} and min(figures.values()) > 0
    assert len(calls) == 3 * (3 + 5) * 2  # three forwards a face, (repeats + warm-up) calls, fp32 and bf16


def test_face_mix_indexes_sets_of_different_photo_sizes_and_their_glasses(example_records):
    from eyeglass3d.training.train_landmarker import FaceMix

    first, second = [example_records[0]] * 2, [example_records[1]]  # two photo sizes
    glasses = [np.stack([[np.full_like(r.image, 10 * (k + 1)) for k in range(2)] for r in part]) for part in (first, second)]
    mix = FaceMix([(first, glasses[0]), (second, glasses[1][:, :1])])
    assert len(mix) == len(first) + 1 and mix.shape == (len(first) + 1, 1)  # the fewest copies of any set
    assert mix[len(first)].image is second[0].image
    assert mix[1].image is first[1].image and mix[2].image.shape != mix[0].image.shape
    assert mix[len(first), 0].max() == 10 and mix[0, 1].max() == 20
    images, targets, worn = make_batch(mix, mix, [0, len(first)], 64, np.random.default_rng(0), train=True,
                                       glasses_probability=1.0, downscale_probability=1.0)
    assert images.shape == (2, 3, 64, 64) and worn.all()


def test_downscale_keeps_the_size_and_removes_fine_detail():
    from eyeglass3d.training.augment import downscale

    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # a one-pixel pattern: gone after shrinking to 30-80 % and back
    soft = downscale(stripes, np.random.default_rng(1))
    assert soft.shape == stripes.shape and soft.dtype == np.uint8
    assert np.abs(np.diff(soft.astype(int), axis=1)).mean() < 0.5 * np.abs(np.diff(stripes.astype(int), axis=1)).mean()
