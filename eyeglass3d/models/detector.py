"""MTCNN face detector (Zhang et al., 2016): P-Net proposes, R-Net refines, O-Net scores and finds 5 points.

The stage logic follows facenet-pytorch's `detect_face` step for step (same pyramid, `(x - 127.5) / 128`
input, area resampling, thresholds and NMS rules), so its converted weights give the same boxes (to
1e-4 px on the example photos), but it needs neither torchvision nor a GPU, and all resampling is read
from one integral image, which makes it several times faster on CPU. Layer names match facenet-pytorch's `PNet`/`RNet`/`ONet`, so their
state dicts load under the `pnet.`, `rnet.` and `onet.` prefixes unchanged (see `tools/convert_mtcnn.py`).

One deliberate difference: R/O-Net crops that reach past the image border are zero-padded, as in the
original MTCNN, where facenet-pytorch stretches the visible part (see `_crops`); faces inside the image
get the same result. Coordinates are *input pixels* in facenet-pytorch's convention; boxes are not
clipped to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from ..errors import ImageInputError

_PNET_CELL = 12  # P-Net's receptive field: the smallest face it sees at one pyramid level
_PNET_STRIDE = 2
_RNET_SIZE = 24
_ONET_SIZE = 48
_FAST_LAYOUT = torch.channels_last  # 2-5x faster than NCHW for these thin convolutions and pools on CPU
_MAX_COORDINATE = 1e6  # a box corner farther out than this (in pixels) is a numerical failure, not a face


@dataclass
class FaceDetection:
    """One face. `points`: image-left eye, image-right eye, nose tip, image-left and image-right mouth corner."""

    box: np.ndarray  # (4,) float32 x0, y0, x1, y1 in input pixels
    score: float
    points: np.ndarray  # (5, 2) float32 x, y in input pixels


def _flatten_caffe_order(features: torch.Tensor) -> torch.Tensor:
    """Flattens N,C,H,W as N,W,H,C: the dense layers were trained (in Caffe, then TF) on that order."""
    return features.permute(0, 3, 2, 1).reshape(features.shape[0], -1)


class PNet(nn.Module):
    """Fully convolutional proposal net: a face probability and a box offset per 12x12 window, stride 2."""

    def __init__(self, channels: tuple[int, int, int]):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(3, c1, kernel_size=3)
        self.prelu1 = nn.PReLU(c1)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3)
        self.prelu2 = nn.PReLU(c2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3)
        self.prelu3 = nn.PReLU(c3)
        self.conv4_1 = nn.Conv2d(c3, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(c3, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns box offsets (N,4,h,w) and the face probability (N,h,w)."""
        x = self.pool1(self.prelu1(self.conv1(x.contiguous(memory_format=_FAST_LAYOUT))))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement net on 24x24 crops: rejects most proposals and corrects the rest."""

    def __init__(self, channels: tuple[int, int, int, int]):
        super().__init__()
        c1, c2, c3, hidden = channels
        self.conv1 = nn.Conv2d(3, c1, kernel_size=3)
        self.prelu1 = nn.PReLU(c1)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3)
        self.prelu2 = nn.PReLU(c2)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=2)
        self.prelu3 = nn.PReLU(c3)
        self.dense4 = nn.Linear(c3 * 3 * 3, hidden)
        self.prelu4 = nn.PReLU(hidden)
        self.dense5_1 = nn.Linear(hidden, 2)
        self.dense5_2 = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns box offsets (N,4) and the face probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x.contiguous(memory_format=_FAST_LAYOUT))))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_caffe_order(x)))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops: final score, box offsets and the five points."""

    def __init__(self, channels: tuple[int, int, int, int, int]):
        super().__init__()
        c1, c2, c3, c4, hidden = channels
        self.conv1 = nn.Conv2d(3, c1, kernel_size=3)
        self.prelu1 = nn.PReLU(c1)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3)
        self.prelu2 = nn.PReLU(c2)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3)
        self.prelu3 = nn.PReLU(c3)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(c3, c4, kernel_size=2)
        self.prelu4 = nn.PReLU(c4)
        self.dense5 = nn.Linear(c4 * 3 * 3, hidden)
        self.prelu5 = nn.PReLU(hidden)
        self.dense6_1 = nn.Linear(hidden, 2)
        self.dense6_2 = nn.Linear(hidden, 4)
        self.dense6_3 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns box offsets (N,4), points (N,10: five x then five y, in crop units 0..1), probability (N,)."""
        x = self.pool1(self.prelu1(self.conv1(x.contiguous(memory_format=_FAST_LAYOUT))))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_caffe_order(x)))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)[:, 1]


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, overlap: str = "union") -> torch.Tensor:
    """Greedy non-maximum suppression; returns the kept indices, best score first.

    `overlap="union"` is IoU on continuous box areas (torchvision's rule, which facenet-pytorch uses in
    stages 1-2); `"min"` divides the intersection by the smaller box in inclusive pixel units (the
    original MTCNN rule for the last stage, which removes a small box nested in a bigger one).
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    box = boxes.detach().cpu().double().numpy()
    pad = 1.0 if overlap == "min" else 0.0
    area = (box[:, 2] - box[:, 0] + pad) * (box[:, 3] - box[:, 1] + pad)
    order = np.argsort(-scores.detach().cpu().double().numpy(), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.minimum(box[best, 2], box[rest, 2]) - np.maximum(box[best, 0], box[rest, 0]) + pad
        inter_h = np.minimum(box[best, 3], box[rest, 3]) - np.maximum(box[best, 1], box[rest, 1]) + pad
        inter = np.maximum(inter_w, 0.0) * np.maximum(inter_h, 0.0)
        if overlap == "min":
            ratio = inter / np.minimum(area[best], area[rest])
        else:
            ratio = inter / np.maximum(area[best] + area[rest] - inter, np.finfo(np.float64).tiny)
        order = rest[ratio <= threshold]
    return torch.as_tensor(np.asarray(keep, dtype=np.int64))


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grows each box to a square around its centre (the next net expects square crops)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x0 = boxes[:, 0] + w * 0.5 - side * 0.5
    y0 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Applies a net's box offsets, given in units of the (inclusive-pixel) box size."""
    size = (boxes[:, 2:4] - boxes[:, 0:2] + 1).repeat(1, 2)
    return boxes + offsets * size


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    """MTCNN's input scaling, (x - 127.5) / 128."""
    return (pixels - 127.5) * 0.0078125


def _pooling_bins(start: torch.Tensor, stop: torch.Tensor, count: int, limit: int):
    """Adaptive-average-pooling bins [floor(i*n/count), ceil((i+1)*n/count)) over each span start..stop.

    Returns the bin edges clipped to the image (0..limit) and each bin's unclipped length.
    """
    steps = torch.arange(count + 1, device=start.device)
    extent = (stop - start)[:, None]
    first = start[:, None] + steps[:-1] * extent // count
    last = start[:, None] - (-steps[1:] * extent // count)
    return first.clamp(0, limit), last.clamp(0, limit), last - first


def _area_resample(
    integral: torch.Tensor, left: torch.Tensor, top: torch.Tensor, right: torch.Tensor, bottom: torch.Tensor,
    out_height: int, out_width: int,
) -> torch.Tensor:
    """Resamples regions [top:bottom, left:right] (N each, may reach past the image) to out_height x out_width.

    Equals `F.interpolate(region, mode="area")` on the image zero-padded as far as needed (the same
    pixel bins), but reads sums from the integral image (H+1, W+1, 3), so the cost is per output pixel
    and a region far larger than the image costs no memory. Returns (N,3,out_height,out_width), 0..255.
    """
    height, width = integral.shape[0] - 1, integral.shape[1] - 1
    y0, y1, rows = _pooling_bins(top, bottom, out_height, height)
    x0, x1, cols = _pooling_bins(left, right, out_width, width)
    table = integral.view(-1, 3)

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return table.index_select(0, (y[:, :, None] * (width + 1) + x[:, None, :]).reshape(-1))

    sums = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    area = (rows[:, :, None] * cols[:, None, :]).reshape(-1, 1)
    return (sums / area).float().view(len(top), out_height, out_width, 3).permute(0, 3, 1, 2)


class MTCNNDetector(ModelMixin, ConfigMixin):
    """Three-stage cascaded face detector with five facial points.

    `thresholds` are the face-probability cuts of P/R/O-Net. Where they find no face at all, one more
    pass runs with `retry_thresholds` (if set) on the photo with a replicated border of `retry_pad` of
    its longer side: dark and mirrored lenses take the eyes out of a face, so R-/O-Net score it just
    under the usual cuts, and a tight crop (a cropped selfie, UTKFace) leaves no room around the face
    for the pyramid's windows. `nms_thresholds` the overlaps above which a
    lower-scored box is dropped after the pyramid, after R-Net and after O-Net ("min" overlap there);
    `pyramid_nms_threshold` is the first cut, inside each pyramid level. The smallest face searched is
    `min_face_size` pixels or `min_face_fraction` of the image's short side, whichever is larger: the finest
    pyramid levels cost most, and a face under ~8 % of a photo is too small to reconstruct anyway. The
    channel tuples exist so that tests can build a tiny detector; the shipped weights use the defaults.
    """

    @register_to_config
    def __init__(
        self,
        pnet_channels: tuple[int, ...] = (10, 16, 32),
        rnet_channels: tuple[int, ...] = (28, 48, 64, 128),
        onet_channels: tuple[int, ...] = (32, 64, 64, 128, 256),
        min_face_size: int = 20,
        min_face_fraction: float = 0.08,
        thresholds: tuple[float, ...] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        pyramid_nms_threshold: float = 0.5,
        nms_thresholds: tuple[float, ...] = (0.7, 0.7, 0.7),
        retry_thresholds: tuple[float, ...] | None = None,
        retry_pad: float = 0.0,
    ):
        super().__init__()
        self.pnet = PNet(tuple(pnet_channels))
        self.rnet = RNet(tuple(rnet_channels))
        self.onet = ONet(tuple(onet_channels))

    def pyramid_scales(self, height: int, width: int) -> list[float]:
        """Scales that map faces from the smallest searched size up to the whole image onto P-Net's 12-pixel window."""
        scale = _PNET_CELL / max(self.config.min_face_size, self.config.min_face_fraction * min(height, width))
        side = min(height, width) * scale
        scales = []
        while side >= _PNET_CELL:
            scales.append(scale)
            scale *= self.config.scale_factor
            side *= self.config.scale_factor
        return scales

    @torch.no_grad()
    def detect(self, image: np.ndarray, thresholds: tuple[float, ...] | None = None) -> list[FaceDetection]:
        """Finds faces in an HxWx3 uint8 RGB image; largest box first, [] when there is none.

        With `thresholds` given, one pass with those cuts and no retry (for evaluations). Always computes
        in float32: fp16 weights are upcast once, in place (CPU half convolutions are slow).
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.size == 0:
            raise ImageInputError(f"detect() needs an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}")
        if self.dtype != torch.float32:
            self.float()
        boxes, scores, points = self._cascade(image, tuple(thresholds or self.config.thresholds))
        if not len(boxes) and thresholds is None and self.config.retry_thresholds:
            pad = int(round(self.config.retry_pad * max(image.shape[:2])))
            padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
            boxes, scores, points = self._cascade(padded, tuple(self.config.retry_thresholds))
            boxes, points = boxes - pad, points - pad
        detections = [
            FaceDetection(box=b.numpy().astype(np.float32), score=float(s), points=p.numpy().astype(np.float32))
            for b, s, p in zip(boxes.cpu(), scores.cpu(), points.cpu())
        ]
        detections.sort(key=lambda d: -float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))
        return detections

    def _cascade(self, image: np.ndarray, thresholds: tuple[float, ...]):
        """P-, R- and O-Net with the given cuts: boxes (N,4), scores (N,), points (N,5,2)."""
        # (H+1, W+1, 3) running sums, exact in float64, from which every resampling below is read
        integral = torch.from_numpy(cv2.integral(np.ascontiguousarray(image), sdepth=cv2.CV_64F)).to(self.device)
        boxes = self._propose(integral, thresholds[0])
        boxes, scores = self._refine(integral, boxes, thresholds[1])
        return self._output(integral, boxes, thresholds[2])

    def _propose(self, integral: torch.Tensor, threshold: float) -> torch.Tensor:
        """Stage 1: P-Net over the image pyramid; returns square candidate boxes (N,4)."""
        height, width = integral.shape[0] - 1, integral.shape[1] - 1
        whole = [integral.new_tensor([edge], dtype=torch.long) for edge in (0, 0, width, height)]
        candidates = []
        for scale in self.pyramid_scales(height, width):
            level = _area_resample(integral, *whole, int(height * scale + 1), int(width * scale + 1))
            offsets, probability = self.pnet(_normalize(level))
            face = probability[0] >= threshold
            if not face.any():
                continue
            cells = face.nonzero().flip(1).float()  # (x, y) of each window on the level
            windows = torch.cat(
                [
                    ((_PNET_STRIDE * cells + 1) / scale).floor(),
                    ((_PNET_STRIDE * cells + _PNET_CELL) / scale).floor(),
                ],
                dim=1,
            )
            found = torch.cat([windows, probability[0][face][:, None], offsets[0][:, face].T], dim=1)
            candidates.append(found[nms(found[:, :4], found[:, 4], self.config.pyramid_nms_threshold)])
        if not candidates:
            return integral.new_zeros(0, 4, dtype=torch.float32)
        found = torch.cat(candidates)
        found = found[nms(found[:, :4], found[:, 4], self.config.nms_thresholds[0])]
        size = (found[:, 2:4] - found[:, 0:2]).repeat(1, 2)
        return _square(found[:, :4] + found[:, 5:9] * size)

    def _crops(self, integral: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cuts every box out of the image at size x size, zero outside the image, as one batch.

        Zero padding is the original MTCNN rule; facenet-pytorch instead stretches the visible part, which
        misplaces faces cut by the border. Returns the normalized crops (N',3,size,size) and the mask of
        the boxes kept: finite, non-empty and overlapping the image.
        """
        height, width = integral.shape[0] - 1, integral.shape[1] - 1
        valid = torch.isfinite(boxes).all(1) & (boxes.abs() < _MAX_COORDINATE).all(1)
        corners = torch.zeros_like(boxes, dtype=torch.long)
        corners[valid] = boxes[valid].trunc().long()
        left, top, right, bottom = corners[:, 0] - 1, corners[:, 1] - 1, corners[:, 2], corners[:, 3]
        valid &= (right > left) & (bottom > top) & (right > 0) & (bottom > 0) & (left < width) & (top < height)
        crops = _area_resample(integral, left[valid], top[valid], right[valid], bottom[valid], size, size)
        return _normalize(crops), valid

    def _refine(self, integral: torch.Tensor, boxes: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net on 24x24 crops; returns square boxes (N,4) and their scores."""
        crops, valid = self._crops(integral, boxes, _RNET_SIZE)
        boxes = boxes[valid]
        if len(boxes) == 0:
            return boxes, boxes.new_zeros(0)
        offsets, probability = self.rnet(crops)
        face = probability > threshold
        boxes, offsets, scores = boxes[face], offsets[face], probability[face]
        keep = nms(boxes, scores, self.config.nms_thresholds[1])
        return _square(_regress(boxes[keep], offsets[keep])), scores[keep]

    def _output(
        self, integral: torch.Tensor, boxes: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net on 48x48 crops; returns final boxes (N,4), scores (N,) and points (N,5,2)."""
        crops, valid = self._crops(integral, boxes, _ONET_SIZE)
        boxes = boxes[valid]
        if len(boxes) == 0:
            return boxes, boxes.new_zeros(0), boxes.new_zeros(0, 5, 2)
        offsets, points, probability = self.onet(crops)
        face = probability > threshold
        boxes, offsets, points, scores = boxes[face], offsets[face], points[face], probability[face]
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1
        points = torch.stack([points[:, :5], points[:, 5:]], dim=2) * size[:, None] + boxes[:, None, 0:2] - 1
        boxes = _regress(boxes, offsets)
        keep = nms(boxes, scores, self.config.nms_thresholds[2], overlap="min")
        return boxes[keep], scores[keep], points[keep]
