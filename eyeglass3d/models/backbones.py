"""Hand-written ResNet and MobileNetV3 backbones with torchvision's parameter names.

torchvision cannot be installed here, yet torchvision-format state dicts (ImageNet weights,
published checkpoints) should load with a plain `load_state_dict`; so module names, channel
rounding, BatchNorm settings and initialisation follow torchvision exactly.

Both families share one small interface, timm-like:
  * `features(x)` -> last feature map (B, out_channels, h, w)
  * `pooled(x)`   -> global-average-pooled features (B, out_channels)
  * `forward(x)`  -> class logits, or the pooled features when `num_classes=0` (no head built).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# --------------------------------------------------------------------------------------------
# ResNet (v1.5: the stride sits on the 3x3 conv of the bottleneck, as in torchvision)
# --------------------------------------------------------------------------------------------


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = _conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int], num_classes: int = 1000):
        super().__init__()
        self._in_channels = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_channels = 512 * block.expansion
        self.num_classes = num_classes
        if num_classes > 0:
            self.fc = nn.Linear(self.out_channels, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, block, channels: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._in_channels != channels * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._in_channels, channels * block.expansion, stride),
                nn.BatchNorm2d(channels * block.expansion),
            )
        layers = [block(self._in_channels, channels, stride, downsample)]
        self._in_channels = channels * block.expansion
        layers += [block(self._in_channels, channels) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(x)
        return self.fc(pooled) if self.num_classes > 0 else pooled


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# --------------------------------------------------------------------------------------------
# MobileNetV3 (Howard et al. 2019), torchvision layout: features.N.block.M...
# --------------------------------------------------------------------------------------------


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor`, never dropping more than 10 % (the TF/torchvision rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormActivation(nn.Sequential):
    """conv (no bias) -> BatchNorm -> optional activation; children are named 0, 1, 2 like torchvision's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, dilation: int = 1, activation: type[nn.Module] | None = nn.ReLU):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gating from globally pooled features (ReLU squeeze, hard-sigmoid scale)."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU(inplace=True)
        self.scale_activation = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class BlockSpec(NamedTuple):
    """One inverted-residual block, in unscaled channels (width_mult is applied later)."""

    in_channels: int
    kernel_size: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hardswish: bool
    stride: int


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise kxk -> squeeze-excite -> 1x1 linear project, residual when shapes allow."""

    def __init__(self, in_channels: int, kernel_size: int, expanded_channels: int, out_channels: int,
                 use_se: bool, use_hardswish: bool, stride: int):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        activation = nn.Hardswish if use_hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(ConvNormActivation(in_channels, expanded_channels, 1, activation=activation))
        layers.append(ConvNormActivation(expanded_channels, expanded_channels, kernel_size, stride,
                                         groups=expanded_channels, activation=activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded_channels, make_divisible(expanded_channels // 4, 8)))
        layers.append(ConvNormActivation(expanded_channels, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# Table 1 and 2 of the MobileNetV3 paper (torchvision's `_mobilenet_v3_conf`).
_LARGE = (
    BlockSpec(16, 3, 16, 16, False, False, 1),
    BlockSpec(16, 3, 64, 24, False, False, 2),
    BlockSpec(24, 3, 72, 24, False, False, 1),
    BlockSpec(24, 5, 72, 40, True, False, 2),
    BlockSpec(40, 5, 120, 40, True, False, 1),
    BlockSpec(40, 5, 120, 40, True, False, 1),
    BlockSpec(40, 3, 240, 80, False, True, 2),
    BlockSpec(80, 3, 200, 80, False, True, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1),
    BlockSpec(80, 3, 480, 112, True, True, 1),
    BlockSpec(112, 3, 672, 112, True, True, 1),
    BlockSpec(112, 5, 672, 160, True, True, 2),
    BlockSpec(160, 5, 960, 160, True, True, 1),
    BlockSpec(160, 5, 960, 160, True, True, 1),
)
_SMALL = (
    BlockSpec(16, 3, 16, 16, True, False, 2),
    BlockSpec(16, 3, 72, 24, False, False, 2),
    BlockSpec(24, 3, 88, 24, False, False, 1),
    BlockSpec(24, 5, 96, 40, True, True, 2),
    BlockSpec(40, 5, 240, 40, True, True, 1),
    BlockSpec(40, 5, 240, 40, True, True, 1),
    BlockSpec(40, 5, 120, 48, True, True, 1),
    BlockSpec(48, 5, 144, 48, True, True, 1),
    BlockSpec(48, 5, 288, 96, True, True, 2),
    BlockSpec(96, 5, 576, 96, True, True, 1),
    BlockSpec(96, 5, 576, 96, True, True, 1),
)


class MobileNetV3(nn.Module):
    def __init__(self, specs: tuple[BlockSpec, ...], last_channel: int, num_classes: int = 1000,
                 width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()

        def scaled(channels: int) -> int:
            return make_divisible(channels * width_mult, 8)

        first_channels = scaled(specs[0].in_channels)
        layers: list[nn.Module] = [ConvNormActivation(3, first_channels, 3, stride=2, activation=nn.Hardswish)]
        for spec in specs:
            layers.append(InvertedResidual(scaled(spec.in_channels), spec.kernel_size, scaled(spec.expanded_channels),
                                           scaled(spec.out_channels), spec.use_se, spec.use_hardswish, spec.stride))
        last_block_channels = scaled(specs[-1].out_channels)
        self.out_channels = 6 * last_block_channels
        layers.append(ConvNormActivation(last_block_channels, self.out_channels, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_classes = num_classes
        if num_classes > 0:
            self.classifier = nn.Sequential(
                nn.Linear(self.out_channels, scaled(last_channel)),
                nn.Hardswish(inplace=True),
                nn.Dropout(p=dropout, inplace=True),
                nn.Linear(scaled(last_channel), num_classes),
            )

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(x)
        return self.classifier(pooled) if self.num_classes > 0 else pooled


def mobilenet_v3_large(width_mult: float = 1.0, num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(_LARGE, 1280, num_classes, width_mult)


def mobilenet_v3_small(width_mult: float = 1.0, num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(_SMALL, 1024, num_classes, width_mult)


BACKBONES = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetNormalize(nn.Module):
    """[0, 1] RGB -> ImageNet statistics, inside the model so callers never normalise by hand.

    The constants are non-persistent buffers: they follow `.to(device)` but stay out of saved weights.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


# --------------------------------------------------------------------------------------------
# Inference: BatchNorm folded into the convolution before it
# --------------------------------------------------------------------------------------------


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` where each BatchNorm right after a convolution in an `nn.Sequential` is
    folded into that convolution: the same function up to float rounding, ~20 % less CPU time for a
    MobileNetV3, whose many thin layers make every separate normalisation pass count."""
    folded = copy.deepcopy(module).eval()
    for sequence in [child for child in folded.modules() if isinstance(child, nn.Sequential)]:
        for index in range(len(sequence) - 1):
            convolution, norm = sequence[index], sequence[index + 1]
            if isinstance(convolution, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                sequence[index] = fuse_conv_bn_eval(convolution, norm)
                sequence[index + 1] = nn.Identity()
    return folded


class FoldedInference:
    """Mixin for a component whose `predict` runs `fold_batchnorm(self)`: made on first use, dropped whenever the
    weights may change through the module API (`train()`, `load_state_dict()`, `.to()`/`.half()`)."""

    def inference_network(self) -> nn.Module:
        folded = self.__dict__.get("_folded")
        if folded is None:
            folded = self.__dict__["_folded"] = fold_batchnorm(self)
        return folded

    def folded_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The folded network on `images`, cast to its dtype (read off its parameters: `ModelMixin.dtype` walks
        every module, ~0.5 ms a call)."""
        network = self.inference_network()
        return network(images.to(next(network.parameters()).dtype))

    def train(self, mode: bool = True):
        self.__dict__.pop("_folded", None)
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_folded", None)
        return super().load_state_dict(*args, **kwargs)

    def _apply(self, *args, **kwargs):
        self.__dict__.pop("_folded", None)
        return super()._apply(*args, **kwargs)
