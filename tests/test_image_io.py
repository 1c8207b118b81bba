"""load_image / fit_within: every input kind, every refusal, with images made here."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from eyeglass3d.errors import ImageInputError
from eyeglass3d.image_io import fit_within, load_image


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` RGB pixels but carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _halves(width: int = 64, height: int = 48) -> np.ndarray:
    """Left half red, right half blue: easy to follow through rotations."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return pixels


def _assert_rgb(array: np.ndarray, shape: tuple[int, int]) -> None:
    assert array.shape == (*shape, 3)
    assert array.dtype == np.uint8
    assert array.flags.c_contiguous and array.flags.writeable


# ---- every kind of source gives the same pixels -------------------------------------------------


def test_path_bytes_stream_and_pil_agree(tmp_path):
    pixels = _halves()
    path = tmp_path / "halves.png"
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()

    class PipeLike:  # read() only, no seek, short reads: what an HTTP body or stdin looks like
        def __init__(self):
            self.offset = 0

        def read(self, size=-1):
            chunk = data[self.offset : self.offset + min(size, 100)]
            self.offset += len(chunk)
            return chunk

    for source in (str(path), path, data, bytearray(data), io.BytesIO(data), PipeLike(), Image.open(path), pixels):
        result = load_image(source)
        _assert_rgb(result, (48, 64))
        np.testing.assert_array_equal(result, pixels)


def test_array_input_is_copied_not_aliased():
    pixels = _halves()
    result = load_image(pixels)
    result[:] = 0
    assert pixels.max() == 255


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(_halves(64, 48)).save(path, exif=exif, quality=95)

    result = load_image(path)

    _assert_rgb(result, (64, 48))  # width and height swap
    top, bottom = result[:24].reshape(-1, 3).mean(0), result[40:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # the left (red) half turned to the top
    assert bottom[2] > 200 and bottom[0] < 50


def test_rgba_composites_over_white():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)  # colour under transparent pixels: would show as near-black
    rgba[:20, :, 3] = 255
    rgba[20:, :, 3] = 0
    rgba[20:, :1, 3] = 128

    for source in (rgba, Image.fromarray(rgba, "RGBA"), _png_bytes(Image.fromarray(rgba, "RGBA"))):
        result = load_image(source)
        np.testing.assert_array_equal(result[0, 0], (10, 20, 30))
        np.testing.assert_array_equal(result[30, 30], (255, 255, 255))
        np.testing.assert_array_equal(result[30, 0], (132, 137, 142))  # (c * 128 + 255 * 127) / 255, rounded


def test_la_and_premultiplied_modes_composite_over_white():
    la = Image.new("LA", (40, 40), (0, 0))
    assert load_image(_png_bytes(la)).min() == 255
    la_premultiplied = Image.new("La", (40, 40), (100, 255))
    np.testing.assert_array_equal(load_image(la_premultiplied)[0, 0], (100, 100, 100))


def test_palette_with_transparency_composites_over_white():
    palette_image = Image.new("P", (40, 40), 0)
    palette_image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette_image.paste(1, (0, 0, 40, 20))
    palette_image.info["transparency"] = 0
    data = _png_bytes(palette_image)

    result = load_image(data)

    np.testing.assert_array_equal(result[0, 0], (200, 10, 10))
    np.testing.assert_array_equal(result[30, 0], (255, 255, 255))


def test_palette_without_transparency_keeps_its_colours():
    palette_image = Image.new("P", (40, 40), 1)
    palette_image.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    np.testing.assert_array_equal(load_image(_png_bytes(palette_image))[5, 5], (12, 34, 56))


def test_greyscale_and_bilevel():
    grey = np.tile(np.arange(64, dtype=np.uint8)[None] * 4, (40, 1))
    result = load_image(_png_bytes(Image.fromarray(grey)))
    _assert_rgb(result, (40, 64))
    for channel in range(3):
        np.testing.assert_array_equal(result[..., channel], grey)
    bilevel = Image.new("1", (40, 40), 1)
    assert load_image(bilevel).min() == 255


def test_16bit_greyscale_png_keeps_its_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16)[None], (40, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored and read as 16 bits

    result = load_image(path)

    np.testing.assert_array_equal(result[..., 0], np.rint(ramp / 257).astype(np.uint8))
    assert result.min() == 0 and result.max() == 255


def test_16bit_rgb_png_keeps_its_range(tmp_path):
    rgb16 = np.zeros((40, 40, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 32896  # 128 * 257
    rgb16[..., 2] = 257 * 7
    path = tmp_path / "deep_rgb.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR, 16 bits deep

    np.testing.assert_array_equal(load_image(path)[0, 0], (255, 128, 7))


def test_32bit_integer_and_float_modes():
    assert load_image(Image.fromarray(np.full((40, 40), 65535, np.int32))).min() == 255
    np.testing.assert_array_equal(load_image(Image.fromarray(np.full((40, 40), 0.5, np.float32)))[0, 0], 128)


def test_cmyk_and_lab_convert_to_rgb(tmp_path):
    cmyk_red = Image.new("CMYK", (40, 40), (0, 255, 255, 0))
    np.testing.assert_array_equal(load_image(cmyk_red)[0, 0], (255, 0, 0))
    path = tmp_path / "cmyk.jpg"
    cmyk_red.save(path, quality=95)
    red = load_image(path)[20, 20].astype(int)
    assert red[0] > 230 and red[1] < 25 and red[2] < 25
    lab_white = Image.new("LAB", (40, 40), (255, 128, 128))
    assert load_image(lab_white).min() >= 250


def test_array_dtypes_and_shapes():
    ramp = np.linspace(0, 1, 64, dtype=np.float64)[None].repeat(40, 0)
    np.testing.assert_array_equal(load_image(ramp)[0, :, 0], np.rint(ramp[0] * 255).astype(np.uint8))
    np.testing.assert_array_equal(load_image(np.full((40, 40, 3), 2.0, np.float32))[0, 0], 255)  # clipped
    np.testing.assert_array_equal(load_image(np.full((40, 40, 3), -1.0, np.float16))[0, 0], 0)
    np.testing.assert_array_equal(load_image(np.full((40, 40, 1), 65535, np.uint16))[0, 0], 255)
    np.testing.assert_array_equal(load_image(np.ones((40, 40), bool))[0, 0], 255)
    strided = _halves()[::-1, ::-1]  # negative strides must come out contiguous
    _assert_rgb(load_image(strided), (48, 64))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((40, 40, 2), np.uint8), "shape"),
        (np.zeros((40,), np.uint8), "shape"),
        (np.zeros((40, 40, 3), np.int64), "dtype"),
        (np.zeros((40, 40, 3), np.complex64), "dtype"),
        (np.full((40, 40), np.nan, np.float32), "NaN"),
    ],
)
def test_unsupported_arrays_are_refused(array, message):
    with pytest.raises(ImageInputError, match=message):
        load_image(array)


def test_animated_gif_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3

    np.testing.assert_array_equal(load_image(path)[0, 0], (255, 0, 0))


# ---- limits, checked from the header ------------------------------------------------------------


def test_41_megapixel_header_is_refused_fast_without_decoding():
    data = _png_header_only(8200, 5000)  # 41 MP declared, ~60 bytes on disk
    start = time.perf_counter()
    with pytest.raises(ImageInputError, match=r"image is 41\.0 MP; the limit is 40 MP"):
        load_image(data)
    assert time.perf_counter() - start < 1.0


def test_huge_header_gets_our_message_not_pillows_bomb_error():
    with pytest.raises(ImageInputError, match=r"image is 400\.0 MP; the limit is 40 MP"):
        load_image(_png_header_only(20000, 20000))
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own guard is back on afterwards


def test_limits_apply_to_lazy_pil_images_and_arrays():
    with pytest.raises(ImageInputError, match="41.0 MP"):
        load_image(Image.open(io.BytesIO(_png_header_only(8200, 5000))))
    # A broadcast view has the shape but no memory behind it: refused before any copy.
    with pytest.raises(ImageInputError, match="41.0 MP"):
        load_image(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (5000, 8200, 3)))
    assert load_image(np.zeros((40, 40, 3), np.uint8), max_megapixels=0.002).shape == (40, 40, 3)


def test_small_images_are_refused():
    with pytest.raises(ImageInputError, match="31x100 px; its shorter side must be at least 32 px"):
        load_image(np.zeros((100, 31, 3), np.uint8))
    with pytest.raises(ImageInputError, match="shorter side"):
        load_image(_png_bytes(Image.new("RGB", (100, 20))))
    assert load_image(np.zeros((32, 32, 3), np.uint8)).shape == (32, 32, 3)


def test_limits_that_would_let_everything_through_are_refused():
    pixels = np.zeros((40, 40, 3), np.uint8)
    for bad_megapixels in (float("nan"), float("inf"), 0, -1.0, "40", True):
        with pytest.raises(ValueError, match="max_megapixels"):
            load_image(pixels, max_megapixels=bad_megapixels)
    for bad_side in (0, -3, 1.5, None):
        with pytest.raises(ValueError, match="min_side"):
            load_image(pixels, min_side=bad_side)


def test_zero_size_is_refused_and_one_pixel_wide_is_allowed_when_asked():
    for empty in (np.zeros((0, 5, 3), np.uint8), Image.new("RGB", (0, 0)), Image.new("L", (7, 0))):
        with pytest.raises(ImageInputError, match="shorter side must be at least 1 px"):
            load_image(empty, min_side=1)
    _assert_rgb(load_image(np.full((1, 9), 7, np.uint8), min_side=1), (1, 9))
    _assert_rgb(load_image(_png_bytes(Image.new("RGB", (1, 40))), min_side=1), (40, 1))


def test_encoded_bytes_are_capped_by_the_pixel_limit(tmp_path):
    """A stream that never ends is read only up to what an image within the limit can take."""

    class Endless:
        def __init__(self):
            self.handed_out = 0

        def read(self, size=-1):
            assert size > 0  # never "read everything"
            self.handed_out += size
            return b"\0" * size

    endless = Endless()
    with pytest.raises(ImageInputError, match="holds more than 16.8 MB"):
        load_image(endless, max_megapixels=0.001)
    assert endless.handed_out <= 16_777_216 + 8_000 + 1
    big = tmp_path / "big.png"
    big.write_bytes(_png_bytes(Image.new("RGB", (40, 40))) + bytes(17_000_000))
    with pytest.raises(ImageInputError, match=r"the file is 17\.0 MB"):
        load_image(big, max_megapixels=0.001)
    with pytest.raises(ImageInputError, match=r"the file is 17\.0 MB"):
        load_image(memoryview(big.read_bytes()), max_megapixels=0.001)
    assert load_image(big).shape == (40, 40, 3)  # the default limit allows it; trailing bytes are ignored


def test_file_objects_that_misbehave():
    class NoneReader:  # a non-blocking stream with nothing to give yet
        def read(self, size=-1):
            return None

    class NumberReader:
        def read(self, size=-1):
            return 3

    class FailingReader:
        def read(self, size=-1):
            raise OSError("connection reset")

    with pytest.raises(ImageInputError, match="empty"):
        load_image(NoneReader())
    with pytest.raises(ImageInputError, match="returned a int, not bytes"):
        load_image(NumberReader())
    with pytest.raises(ImageInputError, match="connection reset"):
        load_image(FailingReader())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageInputError, match="not a regular file"):
        load_image(fifo)  # opening it would wait forever for a writer


@pytest.mark.parametrize("image_format", ["ICO", "TGA", "PPM", "PCX", "SGI", "DDS"])
def test_formats_a_photo_does_not_need_are_refused(image_format):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buffer, format=image_format)
    assert Image.open(io.BytesIO(buffer.getvalue())).format == image_format  # Pillow would read it
    with pytest.raises(ImageInputError, match="not a JPEG, PNG, WebP, GIF, BMP or TIFF"):
        load_image(buffer.getvalue())


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"])
def test_accepted_formats(image_format):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (250, 0, 0)).save(buffer, format=image_format)
    red = load_image(buffer.getvalue())[20, 20].astype(int)
    assert red[0] > 230 and red[1] < 25 and red[2] < 25


def test_alpha_composite_is_exact_for_every_colour_and_alpha():
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.stack([colour, colour, 255 - colour, alpha], axis=-1).astype(np.uint8)
    expected_red = (colour * alpha + 255 * (255 - alpha) + 127) // 255  # straight alpha over white, rounded
    expected_blue = ((255 - colour) * alpha + 255 * (255 - alpha) + 127) // 255

    for source in (rgba, _png_bytes(Image.fromarray(rgba))):
        result = load_image(source).astype(int)
        np.testing.assert_array_equal(result[..., 0], expected_red)
        np.testing.assert_array_equal(result[..., 1], expected_red)
        np.testing.assert_array_equal(result[..., 2], expected_blue)


def test_big_endian_and_little_endian_uint16_arrays_agree():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16)[None], (40, 1))
    expected = load_image(ramp)
    np.testing.assert_array_equal(load_image(ramp.astype(">u2")), expected)
    np.testing.assert_array_equal(expected[0, -1], 255)


# ---- broken input gives our error, never Pillow's -----------------------------------------------


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    with pytest.raises(ImageInputError, match="damaged or truncated"):
        load_image(path)


def test_truncated_png_header():
    data = _png_bytes(Image.new("RGB", (40, 40)))
    with pytest.raises(ImageInputError):
        load_image(data[:20])


def test_text_file_and_empty_input(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a photo\n")
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(text)
    with pytest.raises(ImageInputError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageInputError, match="empty"):
        load_image(io.BytesIO(b""))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageInputError, match=r"empty\.jpg is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")


def test_missing_path_directory_and_wrong_types(tmp_path):
    with pytest.raises(ImageInputError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageInputError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageInputError, match="text mode"):
        load_image(io.StringIO("abc"))
    with pytest.raises(ImageInputError, match="cannot read an image from a int"):
        load_image(42)


def test_closed_pil_image_is_refused(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(path)
    image = Image.open(path)
    image.close()
    with pytest.raises(ImageInputError):
        load_image(image)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        load_image(b"not an image")


# ---- fit_within ---------------------------------------------------------------------------------


def test_fit_within_leaves_small_images_alone():
    pixels = _halves()
    working, scale = fit_within(pixels, max_side=64)
    assert working is pixels and scale == 1.0


def test_fit_within_sizes_and_exact_mapping_back():
    height, width = 1500, 2600
    image = np.zeros((height, width, 3), np.uint8)
    centre_px = np.array([1733.0, 911.0])  # x, y in input pixels
    x0, y0 = centre_px.astype(int)
    image[y0 - 6 : y0 + 7, x0 - 6 : x0 + 7] = 255  # a symmetric blob centred on centre_px

    working, scale = fit_within(image, max_side=640)

    assert max(working.shape[:2]) == 640 and working.dtype == np.uint8
    assert (working.shape[1] - 1) * scale == pytest.approx(width - 1)  # corners map onto corners
    assert (working.shape[0] - 1) * scale <= height - 1
    weights = working[..., 0].astype(np.float64)
    ys, xs = np.mgrid[: working.shape[0], : working.shape[1]]
    centroid_working = np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
    np.testing.assert_allclose(centroid_working * scale, centre_px, atol=0.5)


def test_fit_within_portrait():
    working, scale = fit_within(np.zeros((3000, 1000, 3), np.uint8), max_side=1280)
    assert working.shape == (1280, 427, 3)
    assert scale == pytest.approx(2999 / 1279)
