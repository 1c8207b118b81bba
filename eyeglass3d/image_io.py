"""Turn whatever the user hands us into one trusted RGB array, or a clear `ImageInputError`.

Every entry point (pipeline, CLI, Gradio app) goes through `load_image`, so the networks only ever
see `(H, W, 3)` uint8 RGB, upright (EXIF applied), opaque, and of a size we agreed to process.
Size limits are checked from the header, before any pixel is decoded, so a hostile or huge file
costs nothing; the encoded bytes are capped too, so no input makes memory grow past what the pixel
limit allows.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import os
import stat
import threading
from contextlib import contextmanager

import cv2
import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from .errors import ImageInputError

MAX_MEGAPIXELS = 40.0
MIN_SIDE_PX = 32
# Only the decoders a photo needs (what the CLI and the app accept). Pillow can open many more
# formats, some through little-used decoders and EPS through Ghostscript: none of them for strangers.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO, PNG includes APNG
# An encoded image may be as large as 16-bit RGBA without compression, plus room for its metadata.
MAX_ENCODED_BYTES_PER_PIXEL = 8
METADATA_ALLOWANCE_BYTES = 16 * 1024**2

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# Integer greyscale modes; a 16-bit PNG opens as "I;16" (or "I" in older Pillow) with 0..65535 values.
_WIDE_INTEGER_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
# EXIF orientation → the transpose that makes the photo upright (EXIF 2.3, tag 0x0112).
_UPRIGHT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_READ_CHUNK_BYTES = 1024**2

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
    Files and bytes must be JPEG, PNG, WebP, GIF, BMP or TIFF.

    - The EXIF orientation is applied: phones store portraits sideways and a sideways face is
      not found by the detector.
    - Transparency is composited over white: transparent PNG backgrounds otherwise come out black
      (the colour stored under alpha 0), and a face on black confuses the detector and skews the
      texture.
    - 16-bit images are scaled to 8 bits (not clipped), CMYK / Lab / palette / greyscale are
      converted to RGB, float images are read as [0, 1].
    - Animated files give their first frame; a PIL image is used at the frame it is on.
    - Images over `max_megapixels` or with a side under `min_side` are refused from the header,
      and so are files larger than such an image can be (`MAX_ENCODED_BYTES_PER_PIXEL`).

    Raises `ImageInputError` (a `ValueError`) for any input it cannot use, and `ValueError` for
    limits that are not a positive number of megapixels and a whole number of pixels >= 1.
    """
    _check_limits(max_megapixels, min_side)
    max_bytes = _max_encoded_bytes(max_megapixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_megapixels, min_side)
    if isinstance(source, Image.Image):
        return _from_pil(source, max_megapixels, min_side)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(os.fspath(source), max_bytes, max_megapixels, min_side)
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_encoded_size(memoryview(source).nbytes, max_bytes, max_megapixels)
        data = bytes(source)
    elif hasattr(source, "read"):
        data = _read_at_most(source, max_bytes, max_megapixels)
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


def _check_limits(max_megapixels, min_side) -> None:
    """A NaN or negative limit would let every image through: refuse the call instead."""
    if isinstance(max_megapixels, bool) or not isinstance(max_megapixels, numbers.Real):
        raise ValueError(f"max_megapixels must be a number, got {max_megapixels!r}")
    if not (math.isfinite(max_megapixels) and max_megapixels > 0):
        raise ValueError(f"max_megapixels must be positive and finite, got {max_megapixels!r}")
    if isinstance(min_side, bool) or not isinstance(min_side, numbers.Integral) or min_side < 1:
        raise ValueError(f"min_side must be a whole number of pixels >= 1, got {min_side!r}")


def _max_encoded_bytes(max_megapixels: float) -> int:
    return int(max_megapixels * 1e6 * MAX_ENCODED_BYTES_PER_PIXEL) + METADATA_ALLOWANCE_BYTES


def _check_encoded_size(size: int, max_bytes: int, max_megapixels: float) -> None:
    if size > max_bytes:
        raise ImageInputError(
            f"the file is {size / 1e6:.1f} MB; no image within the {max_megapixels:g} MP limit "
            f"needs more than {max_bytes / 1e6:.1f} MB"
        )


def _from_path(path, max_bytes: int, max_megapixels: float, min_side: int) -> np.ndarray:
    name = os.fsdecode(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageInputError(f"no such file: {name}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ImageInputError(f"cannot open {name}: {getattr(exc, 'strerror', None) or exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageInputError(f"{name} is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or a device would block or never end.
        raise ImageInputError(f"{name} is not a regular file")
    if info.st_size == 0:
        raise ImageInputError(f"{name} is empty (0 bytes)")
    _check_encoded_size(info.st_size, max_bytes, max_megapixels)
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise ImageInputError(f"cannot open {name}: {exc.strerror or exc}") from exc
    with stream:
        return _from_stream(stream, max_megapixels, min_side)


def _read_at_most(source, max_bytes: int, max_megapixels: float) -> bytes:
    """Read a file object to its end, but never more than `max_bytes` (a stream may never end).

    Read it all: the compressed bytes are small next to the pixels, and PIL needs to seek, which
    pipes and HTTP bodies cannot. Chunked, because a raw stream's read(n) may return less than n.
    """
    buffer = bytearray()
    while len(buffer) <= max_bytes:
        try:
            chunk = source.read(min(_READ_CHUNK_BYTES, max_bytes + 1 - len(buffer)))
        except OSError as exc:
            raise ImageInputError(f"cannot read the file object: {exc}") from exc
        if isinstance(chunk, str):
            raise ImageInputError("the file object is in text mode; open it with 'rb'")
        if not chunk:  # b"" at the end; None from a non-blocking stream with nothing to give
            return bytes(buffer)
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise ImageInputError(f"the file object's read() returned a {type(chunk).__name__}, not bytes")
        buffer += chunk
    raise ImageInputError(
        f"the file object holds more than {max_bytes / 1e6:.1f} MB; "
        f"no image within the {max_megapixels:g} MP limit needs that much"
    )


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
            image = Image.open(stream, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageInputError("not an image, or not a JPEG, PNG, WebP, GIF, BMP or TIFF") from exc
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
        upright = _upright(image)
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's decoders and EXIF parser raise many types on bad data
        raise ImageInputError(f"the image data is damaged or truncated: {exc}") from exc
    try:
        rgb = _to_rgb(upright)
    except (ValueError, OSError, ImageCms.PyCMSError) as exc:
        raise ImageInputError(f"cannot convert an image in mode {image.mode!r} to RGB: {exc}") from exc
    return np.ascontiguousarray(rgb)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (Pillow reads an XMP one into the same tag).

    Not `ImageOps.exif_transpose`: that copies every upright image and re-encodes its EXIF, which
    is a full extra frame of memory and one more parser for damaged metadata to trip.
    """
    orientation = image.getexif().get(_EXIF_ORIENTATION)
    if not isinstance(orientation, int) or orientation not in _UPRIGHT_TRANSPOSE:
        return image  # absent, 1, or a value no camera writes
    return image.transpose(_UPRIGHT_TRANSPOSE[orientation])


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image)
        if values.dtype.itemsize > 2:  # 32-bit "I": out-of-range values clip
            values = np.clip(values, 0, 65535)
        return _grey_to_rgb(_uint16_to_uint8(values))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(image)))
    if mode == "La":
        image = image.convert("LA")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        return _premultiplied_over_white(np.asarray(rgba.convert("RGBa")))
    if mode == "LAB":
        return np.array(ImageCms.applyTransform(image, _lab_to_srgb()))
    return np.array(image if mode == "RGB" else image.convert("RGB"))


@functools.cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    """Built once: building the profiles and the transform costs ~40 ms, applying it next to nothing."""
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")


def _from_array(array: np.ndarray, max_megapixels: float, min_side: int) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageInputError(
            f"unsupported array shape {array.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    height, width = array.shape[:2]
    _check_size(width, height, max_megapixels, min_side)
    kind, itemsize = array.dtype.kind, array.dtype.itemsize  # any byte order
    if kind == "u" and itemsize == 1:
        pixels = array
    elif kind == "u" and itemsize == 2:
        pixels = _uint16_to_uint8(array)
    elif kind == "b":
        pixels = array.astype(np.uint8) * 255
    elif kind == "f":
        pixels = _float_to_uint8(array)
    else:
        raise ImageInputError(
            f"unsupported array dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]"
        )
    if pixels.ndim == 2:
        return _grey_to_rgb(pixels)
    if pixels.shape[2] == 4:
        rgba = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))  # (H, W, 4) uint8 opens as RGBA
        return _premultiplied_over_white(np.asarray(rgba.convert("RGBa")))
    return np.array(pixels, dtype=np.uint8, order="C")


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """Round `values / 257` (65535 → 255), in place on one 32-bit copy."""
    wide = values.astype(np.uint32)
    wide += 128
    wide //= 257
    return wide.astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ImageInputError("the float image contains NaN or infinite values")
    scaled = np.clip(values, 0.0, 1.0, dtype=np.float32)
    scaled *= 255.0
    return np.rint(scaled, out=scaled).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _premultiplied_over_white(rgba_premultiplied: np.ndarray) -> np.ndarray:
    """Composite over white from Pillow's premultiplied "RGBa": `round(c * a / 255) + 255 - a`.

    That equals rounding `(c * a + 255 * (255 - a)) / 255`, the straight-alpha composite, and stays
    within uint8 (`round(c * a / 255) <= a`), so it costs one byte per channel, not four.
    """
    return rgba_premultiplied[:, :, :3] + (255 - rgba_premultiplied[:, :, 3:4])
