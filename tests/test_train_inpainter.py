"""The inpainting GAN recipe: losses by hand, the generator keeps known pixels, a few steps learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eyeglass3d.geometry.alignment import EYE_BAND
from eyeglass3d.models.inpainter import InpaintGenerator
from eyeglass3d.models.landmarker import LandmarkRegressor
from eyeglass3d.training.discriminator import PatchDiscriminator
from eyeglass3d.training.eye_band import band_batch
from eyeglass3d.training.glasses_cache import GlassesCopies
from eyeglass3d.training.losses import (
    StyleFeatures,
    discriminator_hinge,
    generator_hinge,
    gram_matrix,
    masked_l1,
    style_loss,
    total_variation,
)
from eyeglass3d.training.train_inpainter import (
    LossWeights,
    generator_inputs,
    lr_factor,
    psnr_in_mask_box,
    train_step,
)


@pytest.fixture(scope="module")
def copies(example_records):
    """Fake 'glasses': a dark rectangle over both eyes, and exactly that rectangle as the mask."""
    images, masks = [], []
    for record in example_records:
        eyes = record.landmarks68_px[36:48]
        (x0, y0), (x1, y1) = eyes.min(0) - 6, eyes.max(0) + 6
        mask = np.zeros(record.image.shape[:2], bool)
        mask[int(y0):int(y1), int(x0):int(x1)] = True
        image = record.image.copy()
        image[mask] = 20
        images.append(image[None])
        masks.append(mask[None])
    # The two photos differ in size, so the copies are per-face lists indexed [face, copy] like the cache.
    return GlassesCopies(_Stack(images), _Stack(masks))


class _Stack:
    """Indexing [face, copy] and .shape[1] like the memmapped cache, for faces of different sizes."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.shape = (len(arrays), 1)

    def __getitem__(self, key):
        face, copy = key
        return self.arrays[face][copy]


def test_masked_l1_is_normalised_by_hole_size_and_channels():
    prediction = torch.zeros(1, 3, 2, 2)
    target = torch.zeros(1, 3, 2, 2)
    target[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])  # inside the hole
    target[0, :, 1, 1] = 5.0  # outside: ignored
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, :] = 1  # two hole pixels
    assert masked_l1(prediction, target, mask).item() == pytest.approx((1 + 2 + 3) / (2 * 3))
    assert masked_l1(prediction, target, torch.zeros_like(mask)).item() == 0.0


def test_gram_matrix_by_hand():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, C=2, H=1, W=2)
    expected = torch.tensor([[[5.0, 3.0], [3.0, 9.0]]]) / (2 * 1 * 2)
    assert torch.allclose(gram_matrix(features), expected)
    other = torch.zeros_like(features)
    # L1 between Gram matrices, mean over the 4 entries, summed over the (here two identical) layers.
    assert style_loss([features, features], [other, other]).item() == pytest.approx(2 * expected.abs().mean().item())


def test_total_variation_by_hand():
    image = torch.tensor([[[[0.0, 1.0, 1.0], [0.0, 0.0, 3.0]]]])  # (1, 1, 2, 3)
    # Horizontal |d|: 1, 0, 0, 3; vertical |d|: 0, 1, 2 -> 7 over 7 differences.
    assert total_variation(image).item() == pytest.approx(7 / 7)
    mask = torch.zeros(1, 1, 2, 3)
    mask[0, 0, 0, 0] = 1  # grown by 1 px: columns 0-1 of both rows
    # Pairs inside the region: horizontal (0,0)-(0,1) = 1, (1,0)-(1,1) = 0; vertical col 0 = 0, col 1 = 1.
    assert total_variation(image, mask).item() == pytest.approx(2 / 4)


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r): 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + f): 0, 1
    assert discriminator_hinge(real, fake).item() == pytest.approx(2.5 / 3 + 1 / 2)
    assert generator_hinge(fake).item() == pytest.approx(1.0)


def test_psnr_uses_the_mask_box():
    target = torch.zeros(1, 3, 4, 4)
    prediction = target.clone()
    prediction[0, :, 1, 1] = 0.1
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1:3, 1:3] = 1  # a 2x2 box: MSE = 0.01 / 4
    assert psnr_in_mask_box(prediction, target, mask)[0].item() == pytest.approx(10 * np.log10(400), rel=1e-4)


def test_lr_factor_is_constant_then_linear_to_zero():
    assert lr_factor(0, 100) == 1.0 and lr_factor(69, 100) == 1.0
    assert lr_factor(85, 100) == pytest.approx(0.5) and lr_factor(100, 100) == 0.0


def test_inpaint_keeps_pixels_outside_the_mask_exactly():
    torch.manual_seed(0)
    generator = InpaintGenerator(base_channels=8, channel_multipliers=(1, 2, 2), num_residual_blocks=1,
                                 guidance_channels=5, input_size=(16, 32)).eval()
    image = torch.rand(2, 3, 16, 32)
    mask = torch.zeros(2, 1, 16, 32)
    mask[:, :, 4:10, 6:20] = 1
    guidance = torch.rand(2, 5, 16, 32)
    with torch.no_grad():
        out = generator.inpaint(image, mask, guidance)
    outside = mask.expand_as(image) == 0
    assert torch.equal(out[outside], image[outside])
    assert not torch.equal(out[~outside], image[~outside])


def test_style_features_are_frozen_but_pass_gradients():
    phi = StyleFeatures(LandmarkRegressor(input_size=64, variant="small", width_mult=0.5))
    phi.train()
    assert not phi.training and not any(p.requires_grad for p in phi.parameters())
    image = torch.rand(1, 3, 32, 64, requires_grad=True)
    features = phi(image)
    assert len(features) == 3
    sum(f.sum() for f in features).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_a_few_training_steps_lower_the_loss(example_records, copies):
    torch.manual_seed(0)
    size_hw = (32, 64)
    generator = InpaintGenerator(base_channels=8, channel_multipliers=(2, 2, 2), num_residual_blocks=1,
                                 guidance_channels=5, input_size=size_hw)
    discriminator = PatchDiscriminator(4, 8, 2)
    phi = StyleFeatures(LandmarkRegressor(input_size=64, variant="small", width_mult=0.5))
    optimizer_g = torch.optim.Adam(generator.parameters(), 3e-3, betas=(0.5, 0.9))
    optimizer_d = torch.optim.Adam(discriminator.parameters(), 1e-3, betas=(0.5, 0.9))
    rng = np.random.default_rng(0)
    batch = band_batch(example_records, copies, [0, 1, 0, 1], EYE_BAND, size_hw, rng, train=False, glasses_probability=1.0)
    assert batch.mask.sum() > 0 and batch.worn.all()
    mask, guidance = generator_inputs(batch, rng, max_dilation=2, landmark_noise_px=0.5, sigma=1.0, channels=5)
    assert (mask >= batch.mask).all() and guidance.shape == (4, 5, *size_hw)
    weights = LossWeights()
    losses = [train_step(generator, discriminator, phi, optimizer_g, optimizer_d, batch.inputs, batch.clean,
                         mask, guidance, weights)["pixel"] for _ in range(30)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])
