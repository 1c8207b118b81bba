"""Turn whatever the user hands us into one trusted RGB array, or a clear `ImageInputError`.

Every entry point (pipeline, CLI, Gradio app) goes through `load_image`, so the networks only ever
see `(H, W, 3)` uint8 RGB, upright (EXIF applied), opaque, and of a size we agreed to process.
Size limits are checked from the header, before any pixel is decoded, so a hostile or huge file
costs nothing.
"""

from __future__ import annotations

import io
import math
import os
import threading
from contextlib import contextmanager

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import ImageInputError

MAX_MEGAPIXELS = 40.0
MIN_SIDE_PX = 32

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# Integer greyscale modes; a 16-bit PNG opens as "I;16" (or "I" in older Pillow) with 0..65535 values.
_WIDE_INTEGER_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}

_PIL_LIMIT_LOCK = threading.Lock()


def load_image(
    source,
    *,
    max_megapixels: float = MAX_MEGAPIXELS,
    min_side: int = MIN_SIDE_PX,
) -> np.ndarray:
    """Read `source` into a contiguous, writable `(H, W, 3)` uint8 RGB array.

    `source` may be a path (`str` / `os.PathLike`), `bytes` / `bytearray` / `memoryview`, a binary
    file object, a `PIL.Image.Image`, or a numpy array shaped (H, W), (H, W, 1), (H, W, 3) or
    (H, W, 4) with dtype uint8, uint16 (divided by 257), bool, or float in [0, 1] (clipped).

    - The EXIF orientation is applied: phones store portraits sideways and a sideways face is
      not found by the detector.
    - Transparency is composited over white: transparent PNG backgrounds otherwise come out black
      (the colour stored under alpha 0), and a face on black confuses the detector and skews the
      texture.
    - 16-bit images are scaled to 8 bits (not clipped), CMYK / Lab / palette / greyscale are
      converted to RGB, float images are read as [0, 1].
    - Animated files give their first frame; a PIL image is used at the frame it is on.
    - Images over `max_megapixels` or with a side under `min_side` are refused from the header.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, max_megapixels, min_side)
    if isinstance(source, Image.Image):
        return _from_pil(source, max_megapixels, min_side)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise ImageInputError(f"{os.fsdecode(path)} is a folder, not an image file")
        if not os.path.exists(path):
            raise ImageInputError(f"no such file: {os.fsdecode(path)}")
        if os.path.getsize(path) == 0:
            raise ImageInputError(f"{os.fsdecode(path)} is empty (0 bytes)")
        try:
            stream = open(path, "rb")
        except OSError as exc:
            raise ImageInputError(f"cannot open {os.fsdecode(path)}: {exc.strerror or exc}") from exc
        with stream:
            return _from_stream(stream, max_megapixels, min_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        # Read it all: the compressed bytes are small next to the pixels, and PIL needs to seek,
        # which pipes and HTTP bodies cannot.
        data = source.read()
        if isinstance(data, str):
            raise ImageInputError("the file object is in text mode; open it with 'rb'")
        data = bytes(data)
    else:
        raise ImageInputError(
            f"cannot read an image from a {type(source).__name__}; "
            "pass a path, bytes, a binary file object, a PIL image or a numpy array"
        )
    if not data:
        raise ImageInputError("the image data is empty (0 bytes)")
    return _from_stream(io.BytesIO(data), max_megapixels, min_side)


def fit_within(image: np.ndarray, max_side: int = 1280) -> tuple[np.ndarray, float]:
    """Shrink `image` so that its longer side is at most `max_side`; returns `(working, scale)`.

    Large photos are processed at this working size and results mapped back with
    `input_px = working_px * scale`, exactly, in the pixel-centre convention the rest of the code
    uses (OpenCV's: pixel `i` has its centre at coordinate `i`). To make that hold, working pixel
    `j` is sampled at input position `j * scale` after a Gaussian anti-alias blur, rather than
    by `cv2.resize`, whose grid is offset by `(scale - 1) / 2`. An image that already fits is
    returned as it is, with scale 1.0.
    """
    if max_side < 2:
        raise ValueError(f"max_side must be at least 2, got {max_side}")
    height, width = image.shape[:2]
    longer = max(height, width)
    if longer <= max_side:
        return image, 1.0
    scale = (longer - 1) / (max_side - 1)
    # The small epsilon stops (n - 1) * scale / scale landing a hair under n - 1 after rounding.
    out_width = int(math.floor((width - 1) / scale + 1e-9)) + 1
    out_height = int(math.floor((height - 1) / scale + 1e-9)) + 1
    # sigma = (scale - 1) / 2 is skimage's anti-aliasing default for downscaling.
    sigma = (scale - 1.0) / 2.0
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    working_to_input = np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])
    working = cv2.warpAffine(
        blurred,
        working_to_input,
        (out_width, out_height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return working, float(scale)


def _check_size(width: int, height: int, max_megapixels: float, min_side: int) -> None:
    if width * height > max_megapixels * 1e6:
        # Round up so that a refused image never reads as exactly the limit.
        megapixels = math.ceil(width * height / 1e5) / 10
        raise ImageInputError(f"image is {megapixels:.1f} MP; the limit is {max_megapixels:g} MP")
    if min(width, height) < min_side:
        raise ImageInputError(
            f"image is {width}x{height} px; its shorter side must be at least {min_side} px"
        )


@contextmanager
def _size_checked_by_us():
    """Switch off Pillow's decompression-bomb check while a header is read.

    Our limit is far below Pillow's, and Pillow would otherwise warn (over 89 MP) or raise its
    own error without the size (over 179 MP) before we can say ours. The lock serialises our
    callers; only the header is parsed inside it (`Image.open` is lazy), so the window is short.
    """
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _from_stream(stream, max_megapixels: float, min_side: int) -> np.ndarray:
    try:
        with _size_checked_by_us():
            image = Image.open(stream)
    except UnidentifiedImageError as exc:
        raise ImageInputError("not an image, or in a format Pillow cannot read") from exc
    except MemoryError:
        raise
    except Exception as exc:  # hostile headers raise OSError, SyntaxError, struct.error, ...
        raise ImageInputError(f"cannot read the image header: {exc}") from exc
    with image:
        return _from_pil(image, max_megapixels, min_side)


def _from_pil(image: Image.Image, max_megapixels: float, min_side: int) -> np.ndarray:
    _check_size(image.width, image.height, max_megapixels, min_side)
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's decoders and EXIF parser raise many types on bad data
        raise ImageInputError(f"the image data is damaged or truncated: {exc}") from exc
    try:
        rgb = _to_rgb(upright)
    except (ValueError, OSError, ImageCms.PyCMSError) as exc:
        raise ImageInputError(f"cannot convert an image in mode {image.mode!r} to RGB: {exc}") from exc
    return np.ascontiguousarray(rgb)


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image).astype(np.int64)
        return _grey_to_rgb(_uint16_to_uint8(np.clip(values, 0, 65535)))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(image)))
    if mode == "La":
        image = image.convert("LA")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _over_white(np.array(image.convert("RGBA")))
    if mode == "LAB":
        to_srgb = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return np.array(ImageCms.applyTransform(image, to_srgb))
    return np.array(image.convert("RGB"))


def _from_array(array: np.ndarray, max_megapixels: float, min_side: int) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageInputError(
            f"unsupported array shape {array.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    height, width = array.shape[:2]
    _check_size(width, height, max_megapixels, min_side)
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = _uint16_to_uint8(array)
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _float_to_uint8(array)
    else:
        raise ImageInputError(
            f"unsupported array dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]"
        )
    if pixels.ndim == 2:
        return _grey_to_rgb(pixels)
    if pixels.shape[2] == 4:
        return _over_white(pixels)
    return np.array(pixels, dtype=np.uint8, order="C")


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ImageInputError("the float image contains NaN or infinite values")
    return np.rint(np.clip(values.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGBA over a white background, rounding to nearest."""
    colour = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
