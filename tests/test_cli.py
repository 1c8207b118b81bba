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
from eyeglass3d.models.face_model import COEFFICIENT_SIZES

REPO_ROOT = Path(__file__).resolve().parent.parent


class StandInOutput:
    """Has what the CLI uses from a ReconstructionOutput; export writes the files a real one would."""

    stages = {"detector": "network", "parser": "landmark-drawn parts; no glasses parser shipped"}

    def __init__(self, rgb: np.ndarray):
        self.inpainted = PIL.Image.fromarray(rgb)
        self.face_box, self.score = np.array([1, 2, 30, 40], np.float32), 0.99
        self.landmarks = np.full((68, 2), float(rgb.mean()), np.float32)
        self.coefficients = {name: np.full(size, rgb.std(), np.float32) for name, size in COEFFICIENT_SIZES.items()}

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
        self.calls, self.batches, self.interrupt_after = [], [], None

    def reconstruct(self, images, glasses_mask=None, remove_glasses=True, all_faces=False, errors="raise"):
        assert isinstance(images, list) and errors == "return"  # the CLI hands over batches, never stops on one
        self.batches.append(len(images))
        return [self._one(image, remove_glasses, all_faces) for image in images]

    def _one(self, image, remove_glasses, all_faces):
        self.calls.append({"image": image, "remove_glasses": remove_glasses, "all_faces": all_faces})
        if self.interrupt_after is not None and len(self.calls) > self.interrupt_after:
            raise KeyboardInterrupt
        try:
            rgb = load_image(image)
        except ValueError as error:
            return error
        if rgb.std() == 0:
            return FaceNotFoundError("No face found in the image.")
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
    from eyeglass3d import Eyeglass3DPipeline

    def fail(weights, **kwargs):
        raise FileNotFoundError(f"{weights} has no model_index.json: not an eyeglass3d model repo")

    monkeypatch.setattr(Eyeglass3DPipeline, "from_pretrained", fail)
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


def test_batch_size_groups_photos_and_keeps_every_result(tmp_path, stand_in, capsys):
    for index in range(5):
        _photo(tmp_path / f"p{index}.jpg")
    _photo(tmp_path / "p5.png", flat=True)

    code = cli.main(["reconstruct", str(tmp_path), "--out", str(tmp_path / "out"), "--batch-size", "4"])

    assert code == 0
    assert stand_in.batches == [4, 2]
    assert "5 reconstructed, 1 failed" in capsys.readouterr().out
    assert {f"p{index}.glb" for index in range(5)} <= {p.name for p in (tmp_path / "out").iterdir()}


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_batch_size_must_be_positive(tmp_path, bad):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["reconstruct", str(tmp_path), "--out", str(tmp_path), "--batch-size", bad])
    assert exit_info.value.code == 2


def test_inputs_and_dataset_are_exclusive(tmp_path):
    for arguments in (["--out", str(tmp_path)], [str(tmp_path), "--dataset", str(tmp_path), "--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["reconstruct", *arguments])
        assert exit_info.value.code == 2


class CrashingPipeline(StandInPipeline):
    """A batch that fails with a bug (not a ValueError) for one photo: the others must still come through."""

    def reconstruct(self, images, **options):
        if any(Path(image).name == "crash.jpg" for image in images):
            raise RuntimeError("kernel fault")
        return super().reconstruct(images, **options)


def test_a_crash_in_a_batch_is_pinned_on_its_photo(tmp_path, monkeypatch, capsys):
    pipeline = CrashingPipeline()
    monkeypatch.setattr(cli, "_load_pipeline", lambda weights: pipeline)
    for name in ("a.jpg", "crash.jpg", "b.jpg"):
        _photo(tmp_path / name)

    assert cli.main(["reconstruct", str(tmp_path), "--out", str(tmp_path / "out")]) == 0

    out = capsys.readouterr().out
    assert "2 reconstructed, 1 failed" in out and "crash.jpg: RuntimeError: kernel fault" in out


def _image_dataset(root: Path, count: int, flat: tuple[int, ...] = (), broken: tuple[int, ...] = ()) -> Path:
    """A `save_to_disk` data set of `count` images (flat ones have no face, broken ones are cut-off JPEGs)."""
    import datasets

    root.mkdir(exist_ok=True)
    files = []
    for index in range(count):
        path = _photo(root / f"img{index}.png", flat=index in flat)
        if index in broken:
            path = root / f"img{index}.jpg"
            path.write_bytes(b"\xff\xd8\xff\xe0 cut off")
        files.append(str(path))
    dataset = datasets.Dataset.from_dict({"picture": files, "label": list(range(count))})
    dataset = dataset.cast_column("picture", datasets.Image())
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(root / "dataset"))
    return root / "dataset"


def _dataset_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return ["reconstruct", "--dataset", str(dataset), "--split", "test", "--image-column", "picture",
            "--out", str(out), *extra]


def test_dataset_rows_go_to_parquet_with_errors(tmp_path, stand_in, capsys):
    from eyeglass3d.batch import read_results

    dataset = _image_dataset(tmp_path, 4, flat=(1,), broken=(2,))
    out = tmp_path / "out"

    assert cli.main(_dataset_args(dataset, out, "--batch-size", "3")) == 0

    assert "2 reconstructed, 2 failed" in capsys.readouterr().out
    rows = read_results(out).to_pylist()
    assert [row["row"] for row in rows] == [0, 1, 2, 3]
    assert [row["source"] for row in rows] == ["img0.png", "img1.png", "img2.jpg", "img3.png"]
    assert rows[1]["error"].startswith("FaceNotFoundError: No face") and rows[1]["coefficients"] is None
    assert rows[2]["error"].startswith("ImageInputError: ")
    for row in (rows[0], rows[3]):
        assert row["error"] is None
        assert (out / row["glb_path"]).is_file() and (out / row["inpainted_path"]).is_file()
        assert np.asarray(row["landmarks"]).shape == (68, 2)
        assert {name: len(value) for name, value in row["coefficients"].items()} == dict(COEFFICIENT_SIZES)
    assert json.loads(rows[0]["stages"])["parser"].startswith("landmark-drawn")


def test_dataset_resumes_after_an_interruption_without_redoing_rows(tmp_path, stand_in, capsys):
    from eyeglass3d.batch import read_results

    dataset = _image_dataset(tmp_path, 7, flat=(3,))
    out = tmp_path / "out"
    stand_in.interrupt_after = 4  # rows 0-3 are two finished parts of 2; the third batch is cut short

    assert cli.main(_dataset_args(dataset, out, "--batch-size", "2")) == 130
    assert "the same command resumes" in capsys.readouterr().err
    assert [row["row"] for row in read_results(out).to_pylist()] == [0, 1, 2, 3]

    stand_in.interrupt_after, stand_in.calls = None, []
    assert cli.main(_dataset_args(dataset, out, "--batch-size", "2")) == 0

    assert len(stand_in.calls) == 3  # rows 4, 5, 6 only
    rows = read_results(out).to_pylist()
    assert [row["row"] for row in rows] == list(range(7))
    assert [row["error"] is not None for row in rows] == [index == 3 for index in range(7)]
    assert "6 reconstructed, 1 failed" in capsys.readouterr().out

    stand_in.calls = []
    assert cli.main(_dataset_args(dataset, out)) == 0 and stand_in.calls == []  # all done: nothing to do
    assert len(read_results(out)) == 7

    other = _image_dataset(tmp_path / "other", 3)
    assert cli.main(_dataset_args(other, out)) == 1  # another data set's rows 0-2 are not done
    assert "use another --out" in capsys.readouterr().err


def test_dataset_that_cannot_be_read_is_one_clear_line(tmp_path, stand_in, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = _image_dataset(tmp_path, 1)
    for arguments, message in (
        (_dataset_args(dataset, tmp_path / "out")[:-2] + ["--split", "nope", "--out", str(tmp_path / "o")], "no split 'nope'"),
        (["reconstruct", "--dataset", str(dataset), "--split", "test", "--out", str(tmp_path / "o")], "no column 'image'"),
        (["reconstruct", "--dataset", "someone/not-downloaded-dataset", "--out", str(tmp_path / "o")], "Cannot read"),
    ):
        assert cli.main(arguments) == 1
        assert message in capsys.readouterr().err
    assert stand_in.loaded_from == []


def test_dataset_from_an_image_folder(tmp_path, stand_in, capsys):
    """A plain folder of images is a data set too (`load_dataset` on a folder: the imagefolder builder)."""
    from eyeglass3d.batch import read_results

    folder = tmp_path / "faces" / "train"
    folder.mkdir(parents=True)
    _photo(folder / "a.png")
    _photo(folder / "b.png", flat=True)

    assert cli.main(["reconstruct", "--dataset", str(tmp_path / "faces"), "--out", str(tmp_path / "out")]) == 0
    assert [row["error"] is None for row in read_results(tmp_path / "out").to_pylist()] == [True, False]
