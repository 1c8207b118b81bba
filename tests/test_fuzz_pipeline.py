"""Fuzzing `reconstruct`'s keyword combinations and the CLI's folder input (Hypothesis, fixed seed, few examples).

Every case must end in a result or a ValueError with a message (ImageInputError and FaceNotFoundError are
ValueErrors), never another exception or a hang. The tiny random pipeline keeps each example fast; the photo is
a small copy of an example face so that the full path (detection to mesh) runs whenever the input is usable.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eyeglass3d import ReconstructionOutput, cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FUZZ = settings(
    max_examples=12, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def small_photo() -> np.ndarray:
    return np.asarray(PIL.Image.open(EXAMPLES / "grace_hopper.jpg").convert("RGB").resize((180, 210)))


MASK_DTYPES = (np.bool_, np.uint8, np.uint16, np.int32, np.float32, np.float64, np.complex64, np.str_)


@st.composite
def masks(draw, height: int, width: int):
    """None, or a mask of any dtype, of the right shape or a wrong one, with 0-5 channels, of zeros, ones or a
    box, possibly as nested lists."""
    if draw(st.booleans()):
        return None
    shape = draw(st.sampled_from([
        (height, width), (width, height), (height, width, 1), (height, width, 2), (height, width, 3),
        (height, width, 4), (height, width, 0), (height, width, 5), (height,), (), (height, width, 1, 1), (0, 0),
    ]))
    dtype = draw(st.sampled_from(MASK_DTYPES))
    fill = draw(st.sampled_from(["zeros", "ones", "box", "nan"]))
    mask = np.zeros(shape, np.float64)
    if fill == "ones":
        mask[...] = 1
    elif fill == "box" and len(shape) >= 2 and min(shape[:2]) > 0:
        mask[shape[0] // 3: shape[0] // 2, shape[1] // 4: 3 * shape[1] // 4] = 255 if dtype == np.uint8 else 1
    elif fill == "nan":
        mask[...] = np.nan
    with np.errstate(invalid="ignore"):
        mask = mask.astype(dtype)
    return mask.tolist() if draw(st.booleans()) and mask.ndim >= 1 else mask


def _check(result, photo: np.ndarray, remove_glasses: bool) -> None:
    assert isinstance(result, ReconstructionOutput)
    assert result.glasses_mask.shape == photo.shape[:2] and result.glasses_mask.dtype == bool
    assert result.landmarks.shape == (68, 2) and np.isfinite(result.landmarks).all()
    if not remove_glasses:
        assert np.array_equal(np.asarray(result.inpainted), photo)


def _ends_well(run):
    """The call's result, or its error if it is a ValueError with a message; any other exception fails the test."""
    try:
        return run()
    except ValueError as error:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        return error


@FUZZ
@given(data=st.data(), remove_glasses=st.sampled_from([True, False, 1, 0, "no", None]),
       all_faces=st.sampled_from([True, False, "yes"]))
def test_reconstruct_keywords(tiny_pipeline, small_photo, data, remove_glasses, all_faces):
    mask = data.draw(masks(*small_photo.shape[:2]))
    outcome = _ends_well(lambda: tiny_pipeline.reconstruct(
        small_photo, glasses_mask=mask, remove_glasses=remove_glasses, all_faces=all_faces))
    if isinstance(outcome, ValueError):
        return
    assert remove_glasses in (True, False, 1, 0) and all_faces in (True, False)
    for face in outcome if all_faces else [outcome]:
        _check(face, small_photo, bool(remove_glasses))


ITEMS = {
    "photo": lambda photo: photo,
    "no face": lambda photo: np.full(photo.shape, 128, np.uint8),
    "junk bytes": lambda photo: b"\x89PNG\r\n\x1a\n not really",
    "missing file": lambda photo: "/nonexistent/photo.jpg",
    "tiny": lambda photo: photo[:8, :8],
    "float array": lambda photo: photo / 255.0,
    "number": lambda photo: 42,
}


@FUZZ
@given(data=st.data(), names=st.lists(st.sampled_from(sorted(ITEMS)), max_size=3),
       errors=st.sampled_from(["raise", "return"]), all_faces=st.booleans(), remove_glasses=st.booleans())
def test_reconstruct_lists(tiny_pipeline, small_photo, data, names, errors, all_faces, remove_glasses):
    items = [ITEMS[name](small_photo) for name in names]
    masks_given = data.draw(st.one_of(st.none(), masks(*small_photo.shape[:2]),
                                      st.lists(masks(*small_photo.shape[:2]), min_size=len(items), max_size=len(items))))
    outcome = _ends_well(lambda: tiny_pipeline.reconstruct(
        items, glasses_mask=masks_given, errors=errors, all_faces=all_faces, remove_glasses=remove_glasses))
    if isinstance(outcome, ValueError):
        if errors == "return":  # only a list-wide problem (the masks' count) may raise then
            assert "glasses_mask is a list" in str(outcome)
        else:
            assert hasattr(outcome, "index") or "glasses_mask is a list" in str(outcome)
        return
    assert len(outcome) == len(items)
    for name, result in zip(names, outcome):
        if isinstance(result, ValueError):
            assert name != "photo" or masks_given is not None, "a usable photo without a mask must succeed"
            continue
        assert name in ("photo", "float array")
        for face in result if all_faces else [result]:
            _check(face, np.asarray(face.image), remove_glasses)


FILES = {
    "photo.jpg": lambda photo: _encode(photo, "JPEG"),
    "photo.png": lambda photo: _encode(photo, "PNG"),
    "junk.jpg": lambda photo: b"\x00\x01junk" * 7,
    "empty.png": lambda photo: b"",
    "truncated.jpg": lambda photo: _encode(photo, "JPEG")[:300],
    "text.gif": lambda photo: b"GIF89a but then nothing",
    "huge.png": lambda photo: _huge_png_header(),
    "one_pixel.bmp": lambda photo: _encode(photo[:1, :1], "BMP"),
    "grey.tif": lambda photo: _encode(np.linspace(0, 255, photo[..., 0].size).reshape(photo.shape[:2]).astype(np.uint8), "TIFF"),
    "noface.webp": lambda photo: _encode(np.full_like(photo, 200), "WEBP"),
}
ODD_STEMS = ("-dash", "sp ace", "ünïcødé", "a.b.c", "x" * 120, "semi;colon", "new\nline", "percent%s")


def _encode(pixels: np.ndarray, format: str) -> bytes:
    import io

    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def _huge_png_header() -> bytes:
    """A PNG header claiming 60000 x 60000 pixels: refused from the header, nothing decoded."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))


@FUZZ
@given(kinds=st.lists(st.sampled_from(sorted(FILES)), min_size=1, max_size=5),
       stems=st.lists(st.sampled_from(ODD_STEMS), min_size=5, max_size=5),
       batch_size=st.integers(1, 4), extras=st.sets(st.sampled_from(["folder.jpg", "broken_link.png", "notes.txt"])))
def test_cli_on_a_messy_folder(tiny_pipeline, small_photo, monkeypatch, capsys, kinds, stems, batch_size, extras):
    monkeypatch.setattr(cli, "_load_pipeline", lambda weights: tiny_pipeline)
    with tempfile.TemporaryDirectory() as root:
        folder, out = Path(root) / "in", Path(root) / "out"
        folder.mkdir()
        for index, (kind, stem) in enumerate(zip(kinds, stems)):
            suffix = Path(kind).suffix.upper() if index % 2 else Path(kind).suffix
            (folder / f"{stem}{index}{suffix}").write_bytes(FILES[kind](small_photo))
        if "folder.jpg" in extras:
            (folder / "folder.jpg").mkdir()
        if "broken_link.png" in extras:
            (folder / "broken_link.png").symlink_to(folder / "nowhere.png")
        if "notes.txt" in extras:
            (folder / "notes.txt").write_text("not an image")

        code = cli.main(["reconstruct", str(folder), "--out", str(out), "--batch-size", str(batch_size)])

        printed = capsys.readouterr()
        usable = sum(kind.startswith("photo") for kind in kinds)
        assert f"{usable} reconstructed, {len(kinds) - usable} failed" in printed.out
        assert code == (0 if usable else 1)
        assert "Traceback" not in printed.err
        failures = [line for line in printed.out.splitlines() if line.startswith("failed: ")]
        assert all(line.split(": ", 2)[-1].strip() for line in failures), "every failure gives a reason"
        assert len(list(out.glob("*.glb"))) == usable
