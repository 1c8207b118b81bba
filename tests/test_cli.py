"""`eyeglass3d reconstruct`: batch behaviour (per-file failures, summary, exit codes, output names).

Most tests swap the model for a small stand-in so that they test the command line, not the
networks, in milliseconds; input validation inside it is the real `load_image`. The integration
test runs the shipped weights on a real photo.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from eyeglass3d import cli
from eyeglass3d.errors import FaceNotFoundError
from eyeglass3d.image_io import load_image

REPO_ROOT = Path(__file__).resolve().parent.parent


class StandInOutput:
    """Has what the CLI uses from a ReconstructionOutput; export writes the files a real one would."""

    stages = {"detector": "network", "parser": "landmark-drawn parts; no glasses parser shipped"}

    def __init__(self, rgb: np.ndarray):
        self.inpainted = PIL.Image.fromarray(rgb)

    def export(self, path):
        path = Path(path)
        written = [path] if path.suffix == ".glb" else [path, path.with_suffix(".mtl"), path.with_suffix(".png")]
        for file in written:
            file.write_bytes(b"mesh")
        return written

    def coefficients_json(self) -> str:
        return json.dumps({"identity": [0.0] * 3})


class StandInPipeline:
    """Finds "faces" in any non-uniform image (two of them), none in a flat one."""

    def __init__(self):
        self.calls = []

    def reconstruct(self, image, glasses_mask=None, remove_glasses=True, all_faces=False):
        self.calls.append({"image": image, "remove_glasses": remove_glasses, "all_faces": all_faces})
        rgb = load_image(image)
        if rgb.std() == 0:
            raise FaceNotFoundError("No face found in the image.")
        faces = [StandInOutput(rgb), StandInOutput(rgb)]
        return faces if all_faces else faces[0]


@pytest.fixture
def stand_in(monkeypatch):
    pipeline = StandInPipeline()
    loaded_from = []

    def load(weights):
        loaded_from.append(weights)
        return pipeline

    monkeypatch.setattr(cli, "_load_pipeline", load)
    pipeline.loaded_from = loaded_from
    return pipeline


def _photo(path: Path, flat: bool = False) -> Path:
    rng = np.random.default_rng(0)
    pixels = np.full((64, 64, 3), 128, np.uint8) if flat else rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


def _mixed_folder(root: Path) -> Path:
    """One usable photo, one without a face, one broken file (and a non-image that is not picked up)."""
    folder = root / "photos"
    (folder / "nested").mkdir(parents=True)
    _photo(folder / "good.jpg")
    _photo(folder / "nested" / "blank.png", flat=True)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    _photo(folder / ".hidden.png")
    return folder


def test_mixed_folder_succeeds_with_failures_reported(tmp_path, stand_in, capsys):
    out = tmp_path / "out"

    code = cli.main(["reconstruct", str(_mixed_folder(tmp_path)), "--out", str(out), "--format", "glb,obj"])

    assert code == 0
    captured = capsys.readouterr()
    assert "1 reconstructed, 2 failed" in captured.out
    assert "broken.jpg" in captured.err and "blank.png: No face found" in captured.err
    assert "note: parser: landmark-drawn parts" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [
        "good.glb", "good.mtl", "good.obj", "good.png", "good_coefficients.json", "good_inpainted.png",
    ]
    assert json.loads((out / "good_coefficients.json").read_text()) == {"identity": [0.0, 0.0, 0.0]}
    assert PIL.Image.open(out / "good_inpainted.png").size == (64, 64)
    assert len(stand_in.loaded_from) == 1  # the model is loaded once for the whole batch
    assert len(stand_in.calls) == 3  # notes.txt and the hidden file are not inputs
    assert all(call["remove_glasses"] and not call["all_faces"] for call in stand_in.calls)


def test_nothing_succeeds_exit_code_1(tmp_path, stand_in, capsys):
    _photo(tmp_path / "blank.png", flat=True)
    (tmp_path / "broken.png").write_bytes(b"")

    code = cli.main(["reconstruct", str(tmp_path / "blank.png"), str(tmp_path / "broken.png"),
                     str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "out")])

    assert code == 1
    captured = capsys.readouterr()
    assert "0 reconstructed, 3 failed" in captured.out
    assert "missing.jpg: no such file or folder" in captured.out
    assert "broken.png is empty (0 bytes)" in captured.out


def test_no_inputs_found_does_not_load_the_model(tmp_path, stand_in, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["reconstruct", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert stand_in.loaded_from == []
    assert "No images" in capsys.readouterr().err


def test_options_reach_the_pipeline_and_names_stay_apart(tmp_path, stand_in):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _photo(tmp_path / "a" / "face.jpg")
    _photo(tmp_path / "b" / "face.jpg")
    out = tmp_path / "out"

    code = cli.main(["reconstruct", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out),
                     "--keep-glasses", "--all-faces", "--weights", "some/repo"])

    assert code == 0
    assert stand_in.loaded_from == ["some/repo"]
    assert all(not call["remove_glasses"] and call["all_faces"] for call in stand_in.calls)
    names = {p.name for p in out.iterdir()}
    assert {"face_face1.glb", "face_face2.glb", "face_2_face1.glb", "face_2_face2_inpainted.png"} <= names
    assert not any(name.endswith(".obj") for name in names)  # glb only by default


def test_output_folder_inside_the_input_folder_is_not_reread(tmp_path, stand_in):
    _photo(tmp_path / "me.jpg")
    arguments = ["reconstruct", str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.main(arguments) == 0
    stand_in.calls.clear()
    assert cli.main(arguments) == 0  # second run: out/me_inpainted.png exists now
    assert [Path(call["image"]).name for call in stand_in.calls] == ["me.jpg"]


def test_model_that_cannot_load_is_one_clear_line(tmp_path, monkeypatch, capsys):
    def fail(weights):
        raise FileNotFoundError(f"{weights} has no model_index.json: not an eyeglass3d model repo")

    monkeypatch.setattr(cli, "_load_pipeline", fail)
    _photo(tmp_path / "me.jpg")
    assert cli.main(["reconstruct", str(tmp_path / "me.jpg"), "--out", str(tmp_path / "out"),
                     "--weights", str(tmp_path)]) == 1
    assert "Cannot load the model" in capsys.readouterr().err


def test_bad_format_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["reconstruct", str(tmp_path), "--out", str(tmp_path), "--format", "glb,stl"])
    assert exit_info.value.code == 2


def test_help_is_instant_and_does_not_import_torch():
    probe = (
        "import sys, contextlib, io\n"
        "from eyeglass3d.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['reconstruct', '--help'])\n"
        "    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules, 'diffusers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_python_dash_m_help():
    for arguments in (["--help"], ["reconstruct", "--help"]):
        result = subprocess.run([sys.executable, "-m", "eyeglass3d", *arguments], capture_output=True, text=True,
                                cwd=REPO_ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "reconstruct" in result.stdout
    assert "--keep-glasses" in result.stdout and "--all-faces" in result.stdout


def _real_inputs(root: Path, with_face: bool = True) -> Path:
    """A real photo (optional), a photo without a face, and a JPEG cut off after its header."""
    folder = root / "photos"
    folder.mkdir()
    photo = (REPO_ROOT / "examples" / "grace_hopper.jpg").read_bytes()
    if with_face:
        (folder / "grace_hopper.jpg").write_bytes(photo)
    gradient = np.linspace(0, 255, 256, dtype=np.uint8)[None].repeat(256, 0)
    PIL.Image.fromarray(gradient).save(folder / "no_face.png")
    (folder / "broken.jpg").write_bytes(photo[:500])
    return folder


def test_real_pipeline_nothing_usable_exit_code_1(tmp_path, tiny_pipeline_dir, capsys):
    code = cli.main(["reconstruct", str(_real_inputs(tmp_path, with_face=False)), "--out", str(tmp_path / "out"),
                     "--weights", str(tiny_pipeline_dir)])

    assert code == 1
    captured = capsys.readouterr()
    assert "0 reconstructed, 2 failed" in captured.out
    assert "no_face.png: No face found" in captured.out
    assert "broken.jpg" in captured.out
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_real_pipeline_writes_every_output(tmp_path, tiny_pipeline_dir, capsys):
    """Tiny random networks behind the shipped detector: the export plumbing, end to end (~3 s)."""
    out = tmp_path / "out"
    code = cli.main(["reconstruct", str(_real_inputs(tmp_path)), "--out", str(out), "--format", "glb,obj",
                     "--weights", str(tiny_pipeline_dir)])

    assert code == 0
    assert "1 reconstructed, 2 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "grace_hopper.glb", "grace_hopper.mtl", "grace_hopper.obj", "grace_hopper.png",
        "grace_hopper_coefficients.json", "grace_hopper_inpainted.png",
    ]
    assert PIL.Image.open(out / "grace_hopper_inpainted.png").size == PIL.Image.open(
        REPO_ROOT / "examples" / "grace_hopper.jpg").size


@pytest.mark.integration
def test_shipped_weights_on_a_real_photo(tmp_path, capsys):
    out = tmp_path / "out"

    code = cli.main(["reconstruct", str(_real_inputs(tmp_path)), "--out", str(out), "--format", "glb,obj"])

    assert code == 0
    captured = capsys.readouterr()
    assert "1 reconstructed, 2 failed" in captured.out
    assert "no_face.png" in captured.out and "broken.jpg" in captured.out
    for name in ("grace_hopper.glb", "grace_hopper.obj", "grace_hopper_inpainted.png",
                 "grace_hopper_coefficients.json"):
        assert (out / name).stat().st_size > 0, name
    coefficients = json.loads((out / "grace_hopper_coefficients.json").read_text())
    assert {"identity", "expression", "pose"} <= set(coefficients)
