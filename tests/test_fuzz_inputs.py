"""Property-based fuzzing of the inputs strangers control: image bytes and images, share-link ids.

Every generated case must end in a usable result or in our typed error (`ImageInputError`,
`ResultNotFound`), within a per-case time limit: never another exception, a hang or memory that
grows with what a header claims. Runs are derandomized, so CI sees the same cases every time;
`pytest --hypothesis-show-statistics` prints how many each test ran.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from eyeglass3d.errors import ImageInputError
from eyeglass3d.image_io import load_image
from eyeglass3d.sharing import MANIFEST_NAME, ResultNotFound, ResultStore

# Pillow warns about the damaged metadata these tests feed it; what matters here is the outcome.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

CASE_SECONDS = 10.0  # a hang, not a slow case: those fail the deadline below
FUZZ = settings(
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL_LIMIT_MP = 0.05  # damaged headers may claim any size: keep what they can make us decode small


class CaseTimedOut(BaseException):
    """A BaseException, so that load_image's `except Exception` cannot turn a hang into its error."""


@contextmanager
def case_time_limit(seconds: float = CASE_SECONDS):
    """Hypothesis' deadline judges a case once it has ended; this alarm ends one that would not."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise CaseTimedOut(f"one case ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_or_refuse(source, *, max_megapixels: float = 40.0, min_side: int = 1) -> np.ndarray | None:
    """load_image's answer: a valid array, or None when it refused with a readable ImageInputError.

    Any other exception escapes and fails the test: that is a crash.
    """
    with case_time_limit():
        try:
            result = load_image(source, max_megapixels=max_megapixels, min_side=min_side)
        except ImageInputError as error:
            assert len(str(error)) > 10, f"unhelpful message: {error!r}"
            return None
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8
    assert result.ndim == 3 and result.shape[2] == 3
    assert result.flags.c_contiguous and result.flags.writeable
    height, width = result.shape[:2]
    assert min(height, width) >= min_side and height * width <= max_megapixels * 1e6
    return result


# ---- images made here ---------------------------------------------------------------------------

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I;16B", "I", "F"]
OTHER_MODES = ["LAB", "YCbCr", "HSV", "RGBX", "RGBa", "La"]
# Formats that store each mode without loss (checked by the round-trip test below).
LOSSLESS_FORMATS = {
    "1": ["PNG", "TIFF", "BMP"],
    "L": ["PNG", "TIFF", "BMP"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "TIFF", "BMP"],
    "PA": [],  # no format Pillow writes keeps it
    "RGB": ["PNG", "TIFF", "BMP", "WEBP"],
    "RGBA": ["PNG", "TIFF", "WEBP"],
    "CMYK": ["TIFF"],
    "I;16": ["PNG", "TIFF"],
    "I;16B": ["TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
}
SAVE_OPTIONS = {"WEBP": {"lossless": True, "exact": True}}


def over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    colour, alpha = colour.astype(np.int64), alpha.astype(np.int64)[..., None]
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2).astype(np.uint8)


def random_image(mode: str, width: int, height: int, seed: int) -> tuple[Image.Image, np.ndarray | None]:
    """An image in `mode` with random pixels, and the RGB that load_image must make of it (None: refused)."""
    rng = np.random.default_rng(seed)
    size = (width, height)
    u8 = lambda *shape: rng.integers(0, 256, (height, width, *shape), dtype=np.uint8)  # noqa: E731
    if mode == "1":
        bits = rng.integers(0, 2, (height, width)).astype(bool)
        return Image.fromarray(bits), grey(bits * 255)
    if mode in ("L", "RGB"):
        pixels = u8() if mode == "L" else u8(3)
        return Image.fromarray(pixels), grey(pixels) if mode == "L" else pixels
    if mode in ("LA", "RGBA"):
        channels = 2 if mode == "LA" else 4
        pixels = u8(channels)
        colour = grey(pixels[..., 0]) if mode == "LA" else pixels[..., :3]
        return Image.frombytes(mode, size, pixels.tobytes()), over_white(colour, pixels[..., -1])
    if mode in ("P", "PA"):
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        pixels = u8(2 if mode == "PA" else 1)
        image = Image.frombytes(mode, size, pixels.tobytes())
        image.putpalette(palette.tobytes())
        colour = palette[pixels[..., 0]]
        return image, over_white(colour, pixels[..., 1]) if mode == "PA" else colour
    if mode == "CMYK":
        ink = u8(4).astype(np.int64)
        expected = np.rint((255 - ink[..., :3]) * (255 - ink[..., 3:]) / 255).astype(np.uint8)
        return Image.frombytes(mode, size, ink.astype(np.uint8).tobytes()), expected
    if mode in ("I;16", "I;16B"):
        values = rng.integers(0, 65536, (height, width)).astype("<u2" if mode == "I;16" else ">u2")
        return Image.frombytes(mode, size, values.tobytes()), grey(np.rint(values / 257))
    if mode == "I":
        values = rng.integers(-(2**31), 2**31, (height, width), dtype=np.int64)
        values[rng.random(values.shape) < 0.7] %= 65536  # mostly in range, some far out of it
        values = values.astype(np.int32)
        return Image.fromarray(values), grey(np.rint(np.clip(values, 0, 65535) / 257))
    if mode == "F":
        values = rng.uniform(-0.5, 1.5, (height, width)).astype(np.float32)
        if rng.random() < 0.2:
            values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf, -np.inf])
        expected = grey(np.rint(np.clip(values, 0, 1) * 255)) if np.isfinite(values).all() else None
        return Image.fromarray(values), expected
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, u8(bands).tobytes()), None  # the other modes: any valid result


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **{**SAVE_OPTIONS.get(image_format, {}), **options})
    return buffer.getvalue()


sides = st.integers(1, 24)
seeds = st.integers(0, 2**32 - 1)


# ---- boundary 1: encoded bytes (random, damaged, truncated, header bombs) -------------------------

MAGIC_PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"BM", b"II*\x00", b"MM\x00*",
                  b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"RIFF\x00\x00\x00\x00WEBPVP8X"]


@settings(FUZZ, max_examples=500)
@given(prefix=st.sampled_from(MAGIC_PREFIXES), body=st.binary(max_size=400))
def test_random_bytes(prefix, body):
    assume(prefix or body)
    load_or_refuse(prefix + body, max_megapixels=SMALL_LIMIT_MP)


def _base_files() -> list[bytes]:
    """One small file per (mode, format) that Pillow writes, plus animated and EXIF-rotated ones."""
    files = []
    for index, (mode, formats) in enumerate(LOSSLESS_FORMATS.items()):
        image, _ = random_image(mode, 23, 17, seed=index)
        files += [encode(image, image_format) for image_format in formats]
        if mode in ("L", "RGB", "CMYK"):
            files.append(encode(image, "JPEG", quality=90))
    frames = [Image.new("RGB", (20, 18), colour) for colour in ("red", "lime", "blue")]
    for image_format in ("GIF", "WEBP", "PNG", "TIFF"):
        buffer = io.BytesIO()
        frames[0].save(buffer, format=image_format, save_all=True, append_images=frames[1:], duration=40)
        files.append(buffer.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.new("RGB", (21, 19), "red")
    files += [encode(sideways, image_format, exif=exif) for image_format in ("JPEG", "PNG", "WEBP", "TIFF")]
    return files


BASE_FILES = _base_files()


@st.composite
def damaged_files(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(BASE_FILES)))
    for _ in range(draw(st.integers(1, 4))):
        damage = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if damage == "truncate":
            del data[at:]
        elif damage == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif damage == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif damage == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@settings(FUZZ, max_examples=1000)
@given(data=damaged_files(), as_stream=st.booleans())
def test_damaged_and_truncated_files(data, as_stream):
    assume(data)
    load_or_refuse(io.BytesIO(data) if as_stream else data, max_megapixels=SMALL_LIMIT_MP)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def gif_header(width: int, height: int) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    return screen + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00\x3b"


def bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40, 0, 0, 14 + 40) + info


def jpeg_header(width: int, height: int) -> bytes:
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    scan = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + frame + scan + bytes(16) + b"\xff\xd9"


def tiff_header(width: int, height: int) -> bytes:
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
               (277, 3, 1), (278, 4, height), (279, 4, 16)]
    packed = b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in entries
    )
    ifd = struct.pack("<H", len(entries)) + packed + bytes(4)
    return b"II*\x00" + struct.pack("<I", 24) + bytes(16) + ifd


def webp_header(width: int, height: int) -> bytes:
    """An animated WebP whose canvas claims width x height around two 1x1 frames."""
    frames = [Image.new("RGB", (1, 1), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buffer.getvalue())
    at = data.index(b"VP8X") + 12
    data[at : at + 6] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


# The largest side each header can state.
HEADERS = {png_header: 2**31 - 1, gif_header: 2**16 - 1, bmp_header: 2**31 - 1, jpeg_header: 2**16 - 1,
           tiff_header: 2**32 - 1, webp_header: 2**24}


@st.composite
def bomb_headers(draw) -> tuple[bytes, int]:
    """A header claiming more than 40 MP, with (almost) no pixel data behind it."""
    header, largest = draw(st.sampled_from(sorted(HEADERS.items(), key=lambda item: item[0].__name__)))
    width = draw(st.integers(1, largest))
    height = draw(st.integers(min(-(-40_000_001 // width), largest), largest))
    assume(width * height > 40e6)
    return header(width, height), width * height


@settings(FUZZ, max_examples=500)
@given(bomb=bomb_headers())
def test_header_bombs_are_refused_before_decoding(bomb):
    data, pixels = bomb
    with case_time_limit(), pytest.raises(ImageInputError) as refusal:
        load_image(data)
    # The size message comes from the header check, which runs before a single pixel is decoded.
    # (WebP and BMP headers past their decoders' own limits are refused by those as unreadable.)
    assert "MP; the limit is 40 MP" in str(refusal.value) or "header" in str(refusal.value)


@settings(FUZZ, max_examples=200)
@given(header=st.sampled_from(sorted(HEADERS, key=lambda header: header.__name__)), width=st.integers(1, 300),
       height=st.integers(1, 300))
def test_small_headers_without_pixels(header, width, height):
    load_or_refuse(header(width, height), max_megapixels=SMALL_LIMIT_MP)


# ---- boundary 2: decoded images (every PIL mode, EXIF orientations, animations, arrays) -----------


@settings(FUZZ, max_examples=800)
@given(mode=st.sampled_from(MODES + OTHER_MODES), width=sides, height=sides, seed=seeds, data=st.data())
def test_every_pil_mode_gives_its_rgb(mode, width, height, seed, data):
    image, expected = random_image(mode, width, height, seed)
    result = load_or_refuse(image)
    if mode in OTHER_MODES:
        assert result is not None and result.shape == (height, width, 3)
        return
    if expected is None:  # a float image with NaN or infinity
        assert result is None
        return
    np.testing.assert_array_equal(result, expected)
    if LOSSLESS_FORMATS[mode]:  # the same pixels come back from a file
        image_format = data.draw(st.sampled_from(LOSSLESS_FORMATS[mode]), label="format")
        np.testing.assert_array_equal(load_or_refuse(encode(image, image_format)), expected)


def upright_reference(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF 2.3's eight orientations written out with numpy, independently of Pillow's table."""
    return {
        2: lambda: pixels[:, ::-1],
        3: lambda: pixels[::-1, ::-1],
        4: lambda: pixels[::-1],
        5: lambda: pixels.transpose(1, 0, 2),
        6: lambda: np.rot90(pixels, -1),
        7: lambda: np.rot90(pixels, 2).transpose(1, 0, 2),
        8: lambda: np.rot90(pixels, 1),
    }.get(orientation, lambda: pixels)()


@settings(FUZZ, max_examples=400)
@given(
    orientation=st.one_of(st.integers(1, 8), st.sampled_from([0, 9, 255, 65535])),  # the last: no camera writes them
    image_format=st.sampled_from(["PNG", "WEBP", "TIFF", "JPEG"]),
    width=sides, height=sides, seed=seeds,
)
def test_every_exif_orientation_comes_out_upright(orientation, image_format, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if image_format == "JPEG":  # lossy: make the pixels flat 8x8 blocks that survive it
        pixels = np.kron(pixels[::8, ::8], np.ones((8, 8, 1), np.uint8))[:height, :width]
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 100, "subsampling": 0} if image_format == "JPEG" else {}
    data = encode(Image.fromarray(pixels), image_format, exif=exif, **options)

    result = load_or_refuse(data)

    expected = upright_reference(pixels, orientation)
    assert result.shape == expected.shape
    if image_format == "JPEG":
        assert np.abs(result.astype(int) - expected).mean() < 8
    else:
        np.testing.assert_array_equal(result, expected)


@settings(FUZZ, max_examples=300)
@given(
    image_format=st.sampled_from(["GIF", "WEBP", "PNG", "TIFF"]),
    colours=st.lists(st.sampled_from([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]),
                     min_size=2, max_size=5, unique=True),  # writers merge repeated frames
    width=sides, height=sides, frame=st.integers(0, 4),
)
def test_animations_give_their_first_frame_or_the_one_a_pil_image_is_on(image_format, colours, width, height, frame):
    frames = [Image.new("RGB", (width, height), colour) for colour in colours]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=image_format, save_all=True, append_images=frames[1:], duration=40,
                   **SAVE_OPTIONS.get(image_format, {}))

    np.testing.assert_array_equal(load_or_refuse(buffer.getvalue()), np.asarray(frames[0]))
    opened = Image.open(io.BytesIO(buffer.getvalue()))
    frame = min(frame, opened.n_frames - 1)
    opened.seek(frame)
    np.testing.assert_array_equal(load_or_refuse(opened), np.asarray(frames[frame]))


ARRAY_DTYPES = ["u1", "<u2", ">u2", "?", "<f2", "<f4", ">f4", "<f8", "i1", "<i4", "<u4", "c8", "O"]


@st.composite
def arrays(draw) -> np.ndarray:
    """Any shape up to 3 axes (zero-size, 1xN, odd channel counts), in usable and unusable dtypes."""
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=0, max_size=3)))
    if len(shape) == 3 and draw(st.booleans()):
        shape = shape[:2] + (draw(st.sampled_from([1, 3, 4])),)
    dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
    rng = np.random.default_rng(draw(seeds))
    wide = dtype.kind in "fc" and draw(st.booleans())
    values = rng.uniform(-0.5, 70_000, shape) if wide else rng.uniform(-0.2, 1.2, shape)
    if dtype.kind == "f" and values.size and draw(st.booleans()):
        values.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if dtype.kind in "ui":
        array = np.clip(values, 0, np.iinfo(dtype).max).astype(dtype)
    else:
        array = (np.clip(values, -60_000, 60_000) if dtype.itemsize == 2 else values).astype(dtype)  # float16 < 65504
    if array.ndim >= 2 and draw(st.booleans()):
        array = array[::-1, ::2]  # non-contiguous views
    return array


def array_reference(array: np.ndarray) -> np.ndarray | None:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        return None
    kind, itemsize = array.dtype.kind, array.dtype.itemsize
    if kind == "u" and itemsize <= 2:
        pixels = array.astype(np.int64) if itemsize == 1 else (array.astype(np.int64) + 128) // 257
    elif kind == "b":
        pixels = array.astype(np.int64) * 255
    elif kind == "f" and np.isfinite(array).all():
        pixels = np.rint(np.clip(array.astype(np.float64), 0, 1) * 255).astype(np.int64)
    else:
        return None
    if pixels.ndim == 2:
        return grey(pixels)
    return over_white(pixels[..., :3], pixels[..., 3]) if pixels.shape[2] == 4 else pixels.astype(np.uint8)


@settings(FUZZ, max_examples=500)
@given(array=arrays())
def test_arrays_of_any_shape_and_dtype(array):
    expected = array_reference(array)
    result = load_or_refuse(array)
    if expected is None:
        assert result is None
    else:
        np.testing.assert_array_equal(result, expected)


# ---- boundary 3: share-link ids ------------------------------------------------------------------

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# What a forger reaches for: separators, encodings, NUL, whitespace, and look-alikes that
# case-fold or normalise to ASCII (fullwidth A, Kelvin sign, long s, dotless i, Arabic-Indic 3).
FORGER_CHARACTERS = "./\\%:~ \t\n\r\x00" + "\uff21\u212a\u017f\u0131\u0663" + "\u202e\u200b"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two stores with three results each: an id must open its own result, in its own store only."""
    root = tmp_path_factory.mktemp("share")
    made = {}
    for name in ("mine", "other"):
        store = ResultStore(root / name)
        made[name] = (store, [store.save(images={"a.png": np.full((4, 4), index, np.uint8)}, metadata={"index": index})
                              for index in range(3)])
    return made


def _constant(value):
    return lambda real: value


# Each forgery is a function of a real id (this store's or the other's), so that the strategy is built once.
FORGERIES = st.one_of(
    st.text(max_size=64).map(_constant),
    st.text(alphabet=ID_ALPHABET + FORGER_CHARACTERS, min_size=20, max_size=24).map(_constant),
    st.builds(lambda length, start: _constant((ID_ALPHABET * 2000)[start : start + length]),  # over-long
              st.integers(23, 100_000), st.integers(0, 63)),
    st.builds(lambda prefix, suffix: lambda real: prefix + real + suffix,
              st.sampled_from(["", "../", "..\\", "/", "./", "%2e%2e%2f", "../../", " ", "\u202e"]),
              st.sampled_from(["", "/", "/manifest.json", "/a.png", "/..", "\n", "\x00", " ", "#", "?x=1"])),
    st.builds(lambda at, char: lambda real: real[:at] + char + real[at + 1 :],
              st.integers(0, 21), st.sampled_from(ID_ALPHABET)),
    st.sampled_from([str.swapcase, str.upper, lambda real: real * 2, str.encode, lambda real: [real], Path]),
    st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=30)).map(_constant),
)


@settings(FUZZ, max_examples=2000)
@given(forge=FORGERIES, which=st.integers(0, 5))
def test_forged_ids_are_not_found(stores, forge, which):
    store, real_ids = stores["mine"]
    forged = forge((real_ids + stores["other"][1])[which])
    with case_time_limit():
        if isinstance(forged, str) and forged in real_ids:  # a changed character can land on a real id
            assert store.load(forged).metadata["index"] == real_ids.index(forged)
            return
        with pytest.raises(ResultNotFound):
            store.load(forged)


def test_an_id_opens_exactly_its_own_result(stores):
    for owner, other in (("mine", "other"), ("other", "mine")):
        store, ids = stores[owner]
        for index, result_id in enumerate(ids):
            result = store.load(result_id)
            assert result.result_id == result_id and result.metadata == {"index": index}
            assert all(path.parent == store.root / result_id for path in result.files.values())
            with pytest.raises(ResultNotFound):
                stores[other][0].load(result_id)


@st.composite
def garbled_manifests(draw, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        damage = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        if damage == "truncate":
            del data[at:]
        elif damage == "overwrite":
            data[at : at + 3] = draw(st.binary(min_size=1, max_size=3))
        else:
            data[at:at] = draw(st.sampled_from([b"NaN", b"-1", b"1e999", b"null", b'"../x.png"', b"[", b"}", b"\xff"]))
    return bytes(data)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_garbled_manifests_read_as_not_found_or_as_a_sound_result(stores, data):
    store, ids = stores["mine"]
    original = (store.root / ids[0] / MANIFEST_NAME).read_bytes()
    copy_id = "G" * 22  # a well-formed id of its own
    copy = store.root / copy_id
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(store.root / ids[0], copy)
    (copy / MANIFEST_NAME).write_bytes(data.draw(garbled_manifests(original), label="manifest"))
    try:
        result = store.load(copy_id)
    except ResultNotFound:
        return
    for path in result.files.values():  # whatever survived the garbling names sound files in the folder
        assert path.parent == copy and path.is_file() and not path.is_symlink()


PEAK_RSS_SCRIPT = """
import io, json, os, sys
from PIL import Image
from eyeglass3d.errors import ImageInputError
from eyeglass3d.image_io import load_image

def status_bytes(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def peak_growth(name, max_megapixels):
    open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from the current RSS
    before = status_bytes("VmRSS")
    try:
        load_image(name, max_megapixels=max_megapixels)
        outcome = "loaded"
    except ImageInputError as error:
        outcome = str(error)
    return status_bytes("VmHWM") - before, outcome

def in_child(name, max_megapixels):
    # A forked child per file: memory one load leaves cached cannot hide the next load's growth.
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.write(write_end, json.dumps(peak_growth(name, max_megapixels)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = json.loads(pipe.read())
    os.wait()
    return result

warm_up = io.BytesIO()
Image.new("RGBA", (40, 40)).save(warm_up, format="TIFF")
load_image(warm_up.getvalue())  # Pillow's plugins and numpy's lazy imports, not counted
limit = float(sys.argv[1])
print(json.dumps({name: in_child(name, limit) for name in sys.argv[2:]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resets the peak RSS through /proc")
def test_peak_memory_is_bounded_by_the_pixel_limit(tmp_path):
    """Peak RSS growth of each load, in a fresh process: header bombs add next to nothing, and a
    full-size image in the costliest modes at most `bytes_per_pixel` per pixel of the limit."""
    limit_mp, bytes_per_pixel, bomb_allowance = 4.0, 20, 1024**2
    side = 2000  # 4 MP

    def tiled(dtype, *channels):  # random content that is cheap to encode: a 250-px tile repeated
        tile = np.random.default_rng(0).integers(0, 256, (250, 250, *channels)).astype(dtype)
        return np.tile(tile, (8, 8) + (1,) * len(channels))

    full_size = {
        "rgba.png": Image.fromarray(tiled(np.uint8, 4)),
        "grey16.png": Image.fromarray(tiled(np.uint16) * 257),
        "int32.tif": Image.fromarray((tiled(np.int32) - 128) * 2**23),
        "float.tif": Image.fromarray(tiled(np.float32) / 255),
        "cmyk.jpg": Image.fromarray(tiled(np.uint8, 4)).convert("CMYK"),
        "palette.gif": Image.fromarray(tiled(np.uint8)).convert("P"),
    }
    for name, image in full_size.items():
        image.save(tmp_path / name)
    exif = Image.Exif()
    exif[0x0112] = 6
    full_size["rotated.jpg"] = None
    Image.fromarray(tiled(np.uint8, 3)).save(tmp_path / "rotated.jpg", exif=exif)
    bombs = [f"{header.__name__}.bin" for header in HEADERS]
    for header, largest in HEADERS.items():
        (tmp_path / f"{header.__name__}.bin").write_bytes(header(min(largest, 60_000), 60_000))

    completed = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(limit_mp), *bombs, *full_size],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    growth = json.loads(completed.stdout)
    for name in bombs:
        peak, outcome = growth[name]
        assert "MP; the limit is 4 MP" in outcome or "header" in outcome, (name, outcome)
        assert peak < bomb_allowance, f"{name}: a header bomb grew the peak RSS by {peak} bytes"
    for name in full_size:
        peak, outcome = growth[name]
        assert outcome == "loaded", (name, outcome)
        assert 3 * side * side <= peak <= bytes_per_pixel * limit_mp * 1e6, (name, peak / side**2)
