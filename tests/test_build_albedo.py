"""Albedo model building: de-shading, filling missing vertices, PCA; a small end-to-end run on renders."""

import numpy as np
import pytest
import torch
from tiny_face_model import dome_face_model

from eyeglass3d.training.build_albedo import (
    albedo_pca,
    face_albedo,
    fill_albedo,
    heldout_errors,
    normalised_irradiance,
    population_mean,
    project,
)


def synthetic_albedos(count, vertices=300, modes=4, seed=0, noise=0.005):
    """Albedos (count, vertices, 3) = mean + a few smooth modes with decreasing strength + noise."""
    rng = np.random.default_rng(seed)
    position = np.linspace(0, 1, vertices)
    mean = np.stack([0.6 + 0.1 * np.sin(6 * position), 0.45 + 0.05 * position, 0.4 - 0.05 * position], -1)
    shapes = np.stack([np.stack([np.cos((k + 1) * np.pi * position + c) for c in range(3)], -1) for k in range(modes)])
    coefficients = rng.normal(size=(count, modes)) * (0.08 / (1 + np.arange(modes)))
    return mean + np.einsum("bk,knc->bnc", coefficients, shapes) + noise * rng.normal(size=(count, vertices, 3))


def test_pca_basis_is_orthonormal_and_scaled_by_its_spread():
    samples = synthetic_albedos(60).reshape(60, -1)
    mean, basis, std = albedo_pca(samples, modes=8)
    np.testing.assert_allclose(basis @ basis.T, np.eye(8), atol=1e-8)
    np.testing.assert_allclose(mean, samples.mean(0), atol=1e-12)
    assert (np.diff(std) <= 0).all() and std[0] > 5 * std[-1]
    # The scaled basis gives N(0, 1) coefficients on the training set.
    coefficients = (samples - mean) @ (basis / std[:, None]).T
    np.testing.assert_allclose(coefficients.std(0, ddof=1), np.ones(8), rtol=1e-6)


def test_heldout_albedo_is_reconstructed_better_than_by_the_mean():
    train = synthetic_albedos(60, seed=1).reshape(60, -1)
    held = synthetic_albedos(10, seed=2)
    mean, basis, _ = albedo_pca(train, modes=4)
    errors = heldout_errors(held, np.ones(held.shape[:2]), mean, basis)
    assert errors["basis"] < 0.25 * errors["mean_only"]
    assert np.abs(project(held.reshape(10, -1), mean, basis) - held.reshape(10, -1)).mean() < 0.01


def test_fill_takes_the_mirror_then_the_face_toned_mean():
    population = np.full((4, 3), 0.5, np.float32)
    albedo = np.array([[[0.2, 0.3, 0.4], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.4, 0.2, 0.2]]], np.float32)
    weight = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
    mirror = np.array([1, 0, 2, 3])  # vertex 1 mirrors vertex 0; vertex 2 is its own mirror and unseen
    filled = fill_albedo(albedo, weight, mirror, population)[0]
    np.testing.assert_allclose(filled[0], albedo[0, 0])
    np.testing.assert_allclose(filled[1], albedo[0, 0])  # from the mirror
    # Unseen: the population mean times the face's colour ratio over what it shows (0.3, 0.25, 0.3) / 0.5.
    np.testing.assert_allclose(filled[2], [0.3, 0.25, 0.3], rtol=1e-6)
    mean = population_mean(np.concatenate([albedo, albedo]), np.concatenate([weight, weight]), np.full(3, 0.7))
    np.testing.assert_allclose(mean[1], [0.7, 0.7, 0.7])


def test_normalised_irradiance_keeps_tone_but_removes_directional_light():
    normals = torch.nn.functional.normalize(torch.randn(1, 50, 3), dim=-1)
    lighting = torch.zeros(1, 27)
    lighting[0, 0] = -0.5  # a dimmer red channel: exposure, not shading
    np.testing.assert_allclose(normalised_irradiance(normals, lighting, 1.0).numpy(), 1.0, atol=1e-6)
    lighting[0, 3] = 0.3  # light from the +x side in red
    shading = normalised_irradiance(normals, lighting, 1.0)[0, :, 0]
    assert float(torch.corrcoef(torch.stack([shading, normals[0, :, 0]]))[0, 1]) > 0.99


def test_face_albedo_recovers_the_albedo_of_a_render():
    """Render the dome with a known albedo under coloured light; de-shading gives the albedo back up to the
    light's constant part (which stays in the albedo, as skin tone and exposure do)."""
    from test_photometric_fit import SIZE, render, truth

    model = dome_face_model()
    true = truth(batch=1)
    true["lighting"][0, [0, 9, 18]] = torch.tensor([-0.1, -0.2, -0.3])  # a warm, dim DC: kept in the albedo
    image, landmarks = render(model, true)
    crops = (image.numpy() * 255).round().astype(np.uint8)
    with pytest.MonkeyPatch.context() as patch:  # the dome has no landmark-drawn face: trust every pixel
        patch.setattr("eyeglass3d.training.build_albedo.skin_mask",
                      lambda lm, size, labels: np.ones((len(lm), size, size), bool))
        albedo, weight = face_albedo(model, crops, landmarks.numpy(), true)
    with torch.no_grad():
        expected = model.albedo(true["texture"])
        dc = 1.0 + torch.tensor([-0.1, -0.2, -0.3]) * 0.886227  # irradiance DC per channel (π·Y0 = 0.886)
        expected = expected * dc
    seen = weight[0] > 0.9
    assert int(seen.sum()) > 500
    error = (albedo[0, seen] - expected[0, seen]).abs()
    assert float(error.mean()) < 0.02, float(error.mean())
