"""The deleter's data and recipe: eye-band samples agree with the compositor, the loss is what it
says, and a few training steps learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eyeglass3d.geometry.alignment import EYE_BAND
from eyeglass3d.models.parser import FaceParser
from eyeglass3d.training.compositor import GlassesCompositor
from eyeglass3d.training.eye_band import EYEGLASSES, band_batch, dilate_masks
from eyeglass3d.training.glasses_cache import GlassesCopies
from eyeglass3d.training.train_parser import parsing_loss

SIZE_HW = (32, 72)


@pytest.fixture(scope="module")
def copies(example_records):
    """One synthetic pair of glasses per example photo, in the cache's layout (N, copies, ...)."""
    compositor = GlassesCompositor(seed=5)
    samples = [compositor(r.image, r.landmarks68_px, np.random.default_rng(i)) for i, r in enumerate(example_records)]
    # The two photos differ in size; the cache stores one size, so each test indexes its own face.
    return [GlassesCopies(s.image[None, None], s.mask[None, None]) for s in samples]


class OneFace:
    """FaceRecords-like view of a single record, so band_batch can index it with 0."""

    def __init__(self, record):
        self.record = record

    def __getitem__(self, index):
        return self.record


@pytest.mark.parametrize("face", [0, 1])
def test_band_labels_mark_the_composited_glasses_and_clean_matches_outside(example_records, copies, face):
    batch = band_batch(OneFace(example_records[face]), copies[face], [0], EYE_BAND, SIZE_HW,
                       np.random.default_rng(0), train=False, glasses_probability=1.0)
    glasses = batch.labels[0] == EYEGLASSES
    assert batch.worn[0] and glasses.any()
    assert torch.equal(glasses, batch.mask[0, 0] > 0)
    # Away from the mask (interpolation blends one pixel across its edge) the input is the clean face.
    outside = dilate_masks(batch.mask, 2)[0, 0] == 0
    assert (batch.inputs[0][:, outside] - batch.clean[0][:, outside]).abs().max() < 1e-6
    assert ((batch.landmarks > -1) & (batch.landmarks < 2)).all()


def test_training_bands_share_flip_and_colour_between_input_and_target(example_records, copies):
    rng = np.random.default_rng(1)
    for _ in range(6):
        batch = band_batch(OneFace(example_records[1]), copies[1], [0], EYE_BAND, SIZE_HW, rng,
                           train=True, glasses_probability=1.0)
        outside = dilate_masks(batch.mask, 3)[0, 0] == 0
        difference = (batch.inputs[0][:, outside] - batch.clean[0][:, outside]).abs().mean()
        assert difference < 3 / 255  # same photometric draw (JPEG/blur may bleed a little across the mask)
        # After any flip the image-left eye stays on the left of the band.
        assert batch.landmarks[0, 36, 0] < batch.landmarks[0, 45, 0]


def test_parsing_loss_of_uniform_logits_matches_hand_computation():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2] = EYEGLASSES  # 8 of 16 pixels are glasses
    logits = torch.zeros(1, 9, 4, 4)
    probability = 1 / 9
    dice = 1 - (2 * probability * 8 + 1) / (probability * 16 + 8 + 1)
    assert parsing_loss(logits, labels).item() == pytest.approx(math.log(9) + dice, rel=1e-5)
    perfect = torch.nn.functional.one_hot(labels, 9).permute(0, 3, 1, 2).float() * 50
    assert parsing_loss(perfect, labels).item() < 1e-3


def test_a_few_parser_steps_lower_the_loss(example_records, copies):
    torch.manual_seed(0)
    batch = band_batch(OneFace(example_records[1]), copies[1], [0, 0], EYE_BAND, SIZE_HW,
                       np.random.default_rng(0), train=False, glasses_probability=1.0)
    model = FaceParser(base_channels=4, depth=2, input_size=SIZE_HW)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = parsing_loss(model(batch.inputs), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
