"""Architecture tests: tiny configs for shapes and save/load, full sizes only for parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eyeglass3d.geometry.alignment import (
    CANONICAL_FIVE_POINTS,
    EYE_BAND,
    crop_matrix,
    five_points_from_landmarks,
    warp_crop,
)
from eyeglass3d.models import backbones
from eyeglass3d.models.inpainter import InpaintGenerator
from eyeglass3d.models.landmarker import LandmarkRegressor
from eyeglass3d.models.parser import FaceParser
from eyeglass3d.models.regressor import CoefficientRegressor
from eyeglass3d.training.discriminator import PatchDiscriminator


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_same_model(loaded: torch.nn.Module, model: torch.nn.Module, actual: torch.Tensor, expected: torch.Tensor):
    """Weights must match bit for bit. Outputs may differ by an ulp: safetensors maps tensors at
    16-byte offsets, and oneDNN picks another vectorised path for unaligned weights."""
    reference = model.state_dict()
    assert reference.keys() == loaded.state_dict().keys()
    assert all(torch.equal(tensor, reference[name]) for name, tensor in loaded.state_dict().items())
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


def _randomise(model: torch.nn.Module) -> None:
    """Give zero-initialised heads and BatchNorm stats non-trivial values so round trips are meaningful."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not name.endswith("running_var"):
                tensor.add_(0.01 * torch.randn_like(tensor))


# ----------------------------------------------------------------------------- backbones


def test_resnet50_matches_torchvision_layout_and_size():
    model = backbones.resnet50()
    assert _count(model) == 25_557_032  # torchvision resnet50: 25.6 M
    keys = set(model.state_dict())
    for key in [
        "conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
        "layer1.0.conv1.weight", "layer1.0.conv3.weight", "layer1.0.bn3.bias",
        "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
        "layer2.3.conv2.weight", "layer3.5.bn2.weight", "layer4.2.conv3.weight",
        "layer4.0.downsample.0.weight", "fc.weight", "fc.bias",
    ]:
        assert key in keys, key
    assert "layer1.1.downsample.0.weight" not in keys
    assert model.state_dict()["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert model.state_dict()["fc.weight"].shape == (1000, 2048)


def test_resnet18_size_and_feature_map():
    model = backbones.resnet18().eval()
    assert _count(model) == 11_689_512
    assert "layer2.0.downsample.0.weight" in model.state_dict()
    feature_map = model.features(torch.rand(1, 3, 64, 64))
    assert feature_map.shape == (1, model.out_channels, 2, 2) and model.out_channels == 512


def test_mobilenet_v3_matches_torchvision_layout_and_size():
    large = backbones.mobilenet_v3_large()
    assert _count(large) == 5_483_032  # torchvision mobilenet_v3_large: 5.5 M
    assert _count(backbones.mobilenet_v3_small()) == 2_542_856
    state = large.state_dict()
    for key in [
        "features.0.0.weight", "features.0.1.running_mean",
        "features.1.block.0.0.weight",  # no expansion: depthwise first
        "features.2.block.0.0.weight", "features.2.block.1.0.weight", "features.2.block.2.1.bias",
        "features.4.block.2.fc1.weight", "features.4.block.2.fc2.bias", "features.4.block.3.0.weight",
        "features.16.0.weight", "classifier.0.weight", "classifier.3.bias",
    ]:
        assert key in state, key
    assert state["features.4.block.1.0.weight"].shape == (72, 1, 5, 5)  # depthwise 5x5
    assert state["features.4.block.2.fc1.weight"].shape == (24, 72, 1, 1)  # squeeze to 72 // 4
    assert state["features.16.0.weight"].shape == (960, 160, 1, 1)
    assert state["classifier.0.weight"].shape == (1280, 960)


def test_headless_backbones_return_pooled_features():
    for name, build in backbones.BACKBONES.items():
        kwargs = {"width_mult": 0.5} if name.startswith("mobilenet") else {}
        model = build(num_classes=0, **kwargs).eval()
        assert not any(k.startswith(("fc.", "classifier.")) for k in model.state_dict()), name
        pooled = model(torch.rand(2, 3, 64, 64))
        assert pooled.shape == (2, model.out_channels), name


def test_make_divisible_follows_the_ten_percent_rule():
    assert backbones.make_divisible(16 * 0.5) == 8
    assert backbones.make_divisible(72 * 0.75) == 56
    assert backbones.make_divisible(3.0) == 8
    assert backbones.make_divisible(19) == 24  # 16 would lose more than 10 %


def test_imagenet_normalize_is_not_saved():
    module = backbones.ImageNetNormalize()
    assert dict(module.state_dict()) == {}
    out = module(torch.tensor(backbones.IMAGENET_MEAN).view(1, 3, 1, 1))
    assert torch.allclose(out, torch.zeros_like(out))


# ----------------------------------------------------------------------------- landmarker


def test_landmarker_shape_and_mean_shape_at_init():
    model = LandmarkRegressor(input_size=64, variant="small", width_mult=0.5).eval()
    landmarks = model(torch.rand(2, 3, 64, 64))
    assert landmarks.shape == (2, 68, 2) and landmarks.dtype == torch.float32
    # Zero-initialised offsets: an untrained model returns the mean shape exactly.
    assert torch.equal(landmarks, model.mean_landmarks.expand(2, 68, 2))


def test_landmarker_returns_float32_under_bf16_autocast():
    model = LandmarkRegressor(input_size=64, variant="small", width_mult=0.5).eval()
    _randomise(model)
    images = torch.rand(1, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        landmarks = model(images)
    assert landmarks.dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(landmarks, model(images), atol=2e-3, rtol=0)


def test_landmarker_mean_shape_sits_on_the_canonical_five_points():
    mean = LandmarkRegressor(variant="small", width_mult=0.5).mean_landmarks.numpy()
    assert abs(five_points_from_landmarks(mean) - CANONICAL_FIVE_POINTS).max() < 0.02
    assert (mean[:, 0] < 0.5).sum() > 25 and (mean[:, 0] > 0.5).sum() > 25  # both halves of a face
    assert mean[8, 1] > mean[57, 1] > mean[33, 1] > mean[27, 1] > mean[19, 1]  # chin, lip, nose, bridge, brow


def test_folded_batchnorm_answers_the_same_and_is_remade_when_the_weights_may_change():
    model = LandmarkRegressor(input_size=64, variant="small", width_mult=0.5, head="spatial").eval()
    _randomise(model)
    folded = model.inference_network()
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), atol=1e-5, rtol=1e-4)
    assert model.inference_network() is folded
    assert set(model.state_dict()) == set(LandmarkRegressor(input_size=64, variant="small", width_mult=0.5,
                                                              head="spatial").state_dict())
    for change in (lambda: model.train(False), lambda: model.load_state_dict(model.state_dict()), model.float):
        change()
        assert model.inference_network() is not folded
        folded = model.inference_network()


def test_landmarker_round_trip(tmp_path):
    model = LandmarkRegressor(input_size=64, variant="large", width_mult=0.35).eval()
    _randomise(model)
    images = torch.rand(1, 3, 64, 64)
    expected = model(images)
    model.save_pretrained(tmp_path)
    loaded = LandmarkRegressor.from_pretrained(tmp_path).eval()
    assert loaded.config.variant == "large" and loaded.config.width_mult == 0.35
    _assert_same_model(loaded, model, loaded(images), expected)


def test_landmarker_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        LandmarkRegressor(variant="medium")
    with pytest.raises(ValueError, match="68"):
        LandmarkRegressor(num_points=5, refinements=1)


def test_landmarker_refinement_predicts_again_from_its_own_five_points(tmp_path):
    model = LandmarkRegressor(input_size=64, variant="small", width_mult=0.5, refinements=1).eval()
    _randomise(model)
    model.save_pretrained(tmp_path)
    loaded = LandmarkRegressor.from_pretrained(tmp_path).eval()
    assert loaded.config.refinements == 1
    image = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    points5 = CANONICAL_FIVE_POINTS * 70 + np.array([4.0, 12.0])
    with torch.no_grad():
        first = loaded._predict_once(image, points5)
        refined = loaded.predict(image, points5)
        np.testing.assert_allclose(refined, loaded._predict_once(image, five_points_from_landmarks(first)), atol=1e-5)
    assert np.abs(refined - first).max() > 1e-3  # a randomised network answers differently on the new crop


# ----------------------------------------------------------------------------- parser


def test_parser_shapes_labels_and_round_trip(tmp_path):
    model = FaceParser(base_channels=4, depth=3, input_size=(32, 64)).eval()
    _randomise(model)
    assert model.labels[model.eyeglasses_index] == "eyeglasses"
    assert tuple(model.config.crop_box) == EYE_BAND
    images = torch.rand(2, 3, 32, 64)
    logits = model(images)
    assert logits.shape == (2, len(model.labels), 32, 64)
    model.save_pretrained(tmp_path)
    loaded = FaceParser.from_pretrained(tmp_path).eval()
    assert loaded.labels == model.labels and loaded.eyeglasses_index == 8
    _assert_same_model(loaded, model, loaded(images), logits)


def test_parser_handles_sizes_not_divisible_by_the_depth():
    model = FaceParser(labels=("background", "eyeglasses"), base_channels=4, depth=2).eval()
    assert model(torch.rand(1, 3, 30, 50)).shape == (1, 2, 30, 50)
    assert model.eyeglasses_index == 1


def test_parser_requires_an_eyeglasses_label():
    with pytest.raises(ValueError, match="eyeglasses"):
        FaceParser(labels=("background", "skin"))


# ----------------------------------------------------------------------------- inpainter


def _tiny_inpainter(**kwargs) -> InpaintGenerator:
    return InpaintGenerator(base_channels=4, channel_multipliers=(2, 2, 4), num_residual_blocks=2, **kwargs).eval()


def _inpaint_inputs(height=32, width=48, channels=1):
    image = torch.rand(2, 3, height, width)
    mask = torch.zeros(2, 1, height, width)
    mask[0, :, 8:20, 10:30] = 1
    mask[1, :, 4:12, 30:44] = 1
    return image, mask, torch.rand(2, channels, height, width)


def test_inpainter_architecture_follows_the_paper():
    model = InpaintGenerator()
    strided = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 3
    assert len(model.residual_blocks) == 7
    assert model.residual_blocks[0].body[0].dilation == (2, 2)
    assert model.stem[0].in_channels == 3 + 1 + 1


def test_inpainter_keeps_pixels_outside_the_mask_exactly():
    model = _tiny_inpainter()
    image, mask, guidance = _inpaint_inputs()
    raw = model(image, mask, guidance)
    assert raw.shape == image.shape and raw.min() >= 0 and raw.max() <= 1
    result = model.inpaint(image, mask, guidance)
    outside = mask.expand_as(image) == 0
    assert torch.equal(result[outside], image[outside])
    assert torch.equal(result[~outside], raw[~outside])


def test_inpainter_keeps_outside_pixels_under_bf16_autocast():
    model = _tiny_inpainter().to(memory_format=torch.channels_last)
    image, mask, guidance = _inpaint_inputs()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = model.inpaint(image, mask, guidance)
    outside = mask.expand_as(image) == 0
    assert result.dtype == torch.float32
    assert torch.equal(result[outside], image[outside])


def test_inpainter_ignores_what_is_under_the_mask():
    model = _tiny_inpainter()
    image, mask, guidance = _inpaint_inputs()
    scribbled = torch.where(mask.bool(), torch.rand_like(image), image)
    assert torch.allclose(model(scribbled, mask, guidance), model(image, mask, guidance), atol=1e-6)


def test_inpainter_round_trip_with_part_guidance(tmp_path):
    model = _tiny_inpainter(guidance_channels=5)
    _randomise(model)
    image, mask, guidance = _inpaint_inputs(channels=5)
    expected = model(image, mask, guidance)
    model.save_pretrained(tmp_path)
    loaded = InpaintGenerator.from_pretrained(tmp_path).eval()
    assert loaded.config.guidance_channels == 5
    _assert_same_model(loaded, model, loaded(image, mask, guidance), expected)


def test_inpainter_rejects_sizes_that_are_not_multiples_of_8():
    model = _tiny_inpainter()
    image, mask, guidance = _inpaint_inputs(height=30)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(image, mask, guidance)


def test_landmark_heatmaps_peak_at_the_points():
    landmarks = torch.tensor([[[0.25, 0.5], [0.75, 0.25]]])
    heatmaps = InpaintGenerator.landmark_heatmaps(landmarks, height=20, width=40, sigma=1.5)
    assert heatmaps.shape == (1, 1, 20, 40)
    # (0.25, 0.5) of a 40x20 band is the pixel corner at x=10, y=10: its four neighbours share the peak.
    assert torch.allclose(heatmaps[0, 0, 9:11, 9:11], torch.full((2, 2), heatmaps.max()))
    assert heatmaps[0, 0, 5, 30] > 0.8 and heatmaps[0, 0, 19, 0] < 1e-6


def test_landmark_heatmaps_by_part():
    landmarks = LandmarkRegressor(variant="small", width_mult=0.35).mean_landmarks[None]
    heatmaps = InpaintGenerator.landmark_heatmaps(landmarks, height=64, width=64, sigma=2.0, channels=5)
    assert heatmaps.shape == (1, 5, 64, 64)
    peaks = heatmaps.flatten(2).argmax(-1)[0]
    rows = peaks // 64
    assert rows[1] < rows[3] < rows[2] < rows[4]  # brows above eyes above nose above mouth
    with pytest.raises(ValueError):
        InpaintGenerator.landmark_heatmaps(landmarks, 8, 8, 1.0, channels=3)


def test_guidance_from_crop_landmarks_maps_into_the_band():
    model = _tiny_inpainter(input_size=(24, 56))
    x0, y0, x1, y1 = model.config.crop_box
    centre = torch.tensor([[[(x0 + x1) / 2, (y0 + y1) / 2]]])
    guidance = model.guidance_from_crop_landmarks(centre)
    assert guidance.shape == (1, 1, 24, 56)
    assert torch.allclose(guidance[0, 0, 11:13, 27:29], torch.full((2, 2), guidance.max()))


# ----------------------------------------------------------------------------- regressor


def test_regressor_predicts_the_mean_face_untrained_and_splits():
    model = CoefficientRegressor(backbone="mobilenet_v3_large").eval()
    coefficients = model(torch.rand(2, 3, 64, 64))
    assert coefficients.shape == (2, 246) and model.num_coefficients == 246
    assert torch.count_nonzero(coefficients) == 0
    parts = model.split(coefficients)
    assert list(parts) == ["identity", "expression", "texture", "lighting", "pose"]
    assert [p.shape[-1] for p in parts.values()] == [80, 53, 80, 27, 6]


def test_regressor_round_trip_with_custom_sizes(tmp_path):
    sizes = {"identity": 10, "expression": 5, "pose": 6}
    model = CoefficientRegressor(backbone="resnet18", input_size=64, coefficient_sizes=sizes).eval()
    _randomise(model)
    images = torch.rand(1, 3, 64, 64)
    expected = model(images)
    assert expected.shape == (1, 21) and torch.count_nonzero(expected) > 0
    model.save_pretrained(tmp_path)
    loaded = CoefficientRegressor.from_pretrained(tmp_path).eval()
    assert list(loaded.split(expected)) == ["identity", "expression", "pose"]
    _assert_same_model(loaded, model, loaded(images), expected)


@pytest.mark.parametrize("shift", [0.0, 0.1])
def test_regressor_predict_averages_shifted_crops_and_keeps_the_centre_pose(tmp_path, shift):
    model = CoefficientRegressor(backbone="resnet18", input_size=32, test_time_shift=shift).eval()
    _randomise(model)
    model.save_pretrained(tmp_path)
    loaded = CoefficientRegressor.from_pretrained(tmp_path).eval()
    image = np.random.default_rng(1).integers(0, 256, (60, 50, 3), dtype=np.uint8)
    points5 = CANONICAL_FIVE_POINTS * 40 + np.array([5.0, 9.0])
    matrix = crop_matrix(points5, 32)
    moves = [(0, 0)] + ([(3.2, 0), (-3.2, 0), (0, 3.2), (0, -3.2)] if shift else [])
    crops = [warp_crop(image, matrix + np.array([[0, 0, dx], [0, 0, dy]]), 32) for dx, dy in moves]
    with torch.no_grad():
        outputs = loaded(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255)
        predicted = loaded.predict(image, points5)
    expected = loaded.split(outputs.mean(0, keepdim=True))
    for name in ("identity", "expression", "texture", "lighting"):
        torch.testing.assert_close(predicted[name], expected[name])
    torch.testing.assert_close(predicted["pose"], loaded.split(outputs[:1])["pose"])
    assert predicted["identity"].shape == (1, 80)


def test_regressor_encoder_keeps_torchvision_names():
    model = CoefficientRegressor(backbone="resnet50")
    assert _count(model.encoder) == 25_557_032 - (2048 * 1000 + 1000)  # torchvision resnet50 minus fc
    assert "encoder.layer4.2.bn3.weight" in model.state_dict()
    assert model.head.weight.shape == (246, 2048)


# ----------------------------------------------------------------------------- discriminator


def test_patch_discriminator_outputs_a_patch_map():
    model = PatchDiscriminator(in_channels=4, base_channels=8)
    logits = model(torch.rand(2, 4, 96, 224))
    assert logits.shape == (2, 1, 10, 26)  # 3 stride-2 layers, then two 4x4 stride-1 layers
    assert any("parametrizations.weight.original" in k for k in model.state_dict())


def test_patch_discriminator_receptive_field_is_70():
    model = PatchDiscriminator(base_channels=4, spectral_norm=False).eval()
    image = torch.zeros(1, 3, 140, 140, requires_grad=True)
    model(image)[0, 0, 5, 5].backward()
    rows, cols = torch.nonzero(image.grad[0].abs().sum(0), as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


@pytest.mark.parametrize("native", [True, False])
def test_unets_use_bf16_only_on_cpus_that_compute_it_natively(monkeypatch, native):
    from eyeglass3d.models import precision

    assert isinstance(precision.native_bf16(), bool)
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    with precision.unet_autocast(torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") == native
        assert torch.nn.Conv2d(3, 4, 1)(torch.rand(1, 3, 4, 4)).dtype == (torch.bfloat16 if native else torch.float32)
