"""What a glasses source hands to the compositor: premultiplied frame colour, lens coverage, shadow caster.

Everything lives in a crop box of the image (only the glasses region is touched, which keeps a
sample cheap); coverage is drawn at `supersample`x resolution and box-filtered down, which is the
anti-aliasing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHIFT_BITS = 4  # fixed-point fraction bits for cv2 polygon vertices


@dataclass
class CropBox:
    x0: int
    y0: int
    x1: int
    y1: int

    @classmethod
    def around(cls, points_px: np.ndarray, margin: float, image_shape: tuple[int, int]) -> "CropBox":
        height, width = image_shape
        points = np.asarray(points_px, np.float64).reshape(-1, 2)
        points = points[np.isfinite(points).all(1)]
        if len(points) == 0:
            return cls(0, 0, 0, 0)
        low = np.floor(points.min(0) - margin).astype(int)
        high = np.ceil(points.max(0) + margin).astype(int) + 1
        return cls(
            int(np.clip(low[0], 0, width)),
            int(np.clip(low[1], 0, height)),
            int(np.clip(high[0], 0, width)),
            int(np.clip(high[1], 0, height)),
        )

    @property
    def width(self) -> int:
        return max(self.x1 - self.x0, 0)

    @property
    def height(self) -> int:
        return max(self.y1 - self.y0, 0)

    @property
    def empty(self) -> bool:
        return self.width == 0 or self.height == 0

    def to_crop(self, points_px: np.ndarray) -> np.ndarray:
        return np.asarray(points_px, np.float64) - (self.x0, self.y0)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Crop pixel-centre coordinates (x, y), each (h, w) float32."""
        ys, xs = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        return xs, ys


class Canvas:
    """A supersampled coverage mask over a crop box; `alpha()` is the anti-aliased result at 1x."""

    def __init__(self, box: CropBox, supersample: int):
        self.box, self.supersample = box, supersample
        self.mask = np.zeros((box.height * supersample, box.width * supersample), np.uint8)

    def _fixed(self, points_px: np.ndarray) -> np.ndarray:
        # Image pixel centres are integers; cv2 puts sample centres at integers too.
        samples = (self.box.to_crop(points_px) + 0.5) * self.supersample - 0.5
        samples = np.clip(samples, -(2**20), 2**20)
        return np.round(samples * (1 << SHIFT_BITS)).astype(np.int32)

    def fill(self, polygons_px: list[np.ndarray], value: int = 255) -> None:
        polygons = [self._fixed(p) for p in polygons_px if len(p) >= 3]
        if polygons:
            cv2.fillPoly(self.mask, polygons, value, cv2.LINE_8, SHIFT_BITS)

    def polyline(self, points_px: np.ndarray, thickness_px: float, value: int = 255, closed: bool = False) -> None:
        thickness = max(int(round(thickness_px * self.supersample)), 1)
        cv2.polylines(self.mask, [self._fixed(points_px)], closed, value, thickness, cv2.LINE_8, SHIFT_BITS)

    def ellipse(self, centre_px: np.ndarray, axes_px: tuple[float, float], angle_deg: float, value: int = 255) -> None:
        centre = tuple(int(v) for v in self._fixed(np.asarray(centre_px)[None])[0])
        axes = tuple(max(int(round(a * self.supersample * (1 << SHIFT_BITS))), 1) for a in axes_px)
        cv2.ellipse(self.mask, centre, axes, angle_deg, 0, 360, value, -1, cv2.LINE_8, SHIFT_BITS)

    def alpha(self) -> np.ndarray:
        """(h, w) float32 coverage in [0, 1]."""
        return box_filter(self.mask, self.supersample) * np.float32(1 / 255)


def box_filter(samples: np.ndarray, supersample: int) -> np.ndarray:
    """Average supersample x supersample blocks (float32 result)."""
    if supersample == 1:
        return samples.astype(np.float32)
    height, width = samples.shape[0] // supersample, samples.shape[1] // supersample
    return cv2.resize(samples.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)


@dataclass
class GlassesLayers:
    """One pair of glasses rendered over a crop box, before any interaction with the photo."""

    box: CropBox
    frame_alpha: np.ndarray  # (h, w) float32: opacity of frames, temples, pads, lens edges
    frame_premultiplied: np.ndarray  # (h, w, 3) float32: colour * alpha, 0..255
    shadow_caster: np.ndarray  # (h, w) float32: what throws a shadow on the skin (the opaque frame parts)
    lens_alpha: np.ndarray  # (2, h, w) float32: coverage of each lens (image-left lens first)
    lens_centres: np.ndarray  # (2, 2) crop pixels
    lens_size_px: np.ndarray  # (2, 2) lens width and height in pixels (for gradients and refraction)

    @classmethod
    def blank(cls, box: CropBox, lens_centres_px: np.ndarray, lens_size_px: np.ndarray) -> "GlassesLayers":
        """Empty layers over `box`; lens centres come in image pixels, sizes are shared by both lenses."""
        shape = (box.height, box.width)
        return cls(
            box=box,
            frame_alpha=np.zeros(shape, np.float32),
            frame_premultiplied=np.zeros(shape + (3,), np.float32),
            shadow_caster=np.zeros(shape, np.float32),
            lens_alpha=np.zeros((2,) + shape, np.float32),
            lens_centres=box.to_crop(lens_centres_px),
            lens_size_px=np.stack([lens_size_px, lens_size_px]),
        )

    def over(self, alpha: np.ndarray, colour: np.ndarray, window: tuple[slice, slice] = (slice(None),) * 2) -> None:
        """Put a layer of straight `colour` (h, w, 3) and `alpha` (h, w) on top of the frame layer,
        within `window` of the crop (the layer's arrays have the window's size)."""
        keep = 1 - alpha
        premultiplied = self.frame_premultiplied[window]
        premultiplied *= keep[..., None]
        premultiplied += colour * alpha[..., None]
        frame_alpha = self.frame_alpha[window]
        frame_alpha *= keep
        frame_alpha += alpha
