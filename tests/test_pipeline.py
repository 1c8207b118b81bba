"""The public contract of `Eyeglass3DPipeline`, end to end on tiny random networks."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pygltflib
import pytest
import trimesh

from eyeglass3d import Eyeglass3DPipeline, FaceNotFoundError, ReconstructionOutput
from eyeglass3d.models.face_model import COEFFICIENT_SIZES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(PIL.Image.open(EXAMPLES / "grace_hopper.jpg").convert("RGB"))


@pytest.fixture(scope="module")
def output(tiny_pipeline, photo) -> ReconstructionOutput:
    return tiny_pipeline.reconstruct(photo)


def test_save_pretrained_writes_every_component(tiny_pipeline_dir):
    index = json.loads((tiny_pipeline_dir / "model_index.json").read_text())
    for name in ("detector", "landmarker", "parser", "inpainter", "regressor", "face_model"):
        assert index[name][0].split(".")[0] == "eyeglass3d"
        assert (tiny_pipeline_dir / name / "config.json").is_file()
        assert (tiny_pipeline_dir / name / "diffusion_pytorch_model.safetensors").is_file()


def test_output_follows_the_contract(output, photo):
    height, width = photo.shape[:2]
    assert output.face_box.shape == (4,) and output.face_box.dtype == np.float32
    x0, y0, x1, y1 = output.face_box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert output.landmarks.shape == (68, 2) and output.landmarks.dtype == np.float32
    assert output.points5.shape == (5, 2) and output.points5.dtype == np.float32
    assert ((output.points5 >= [x0, y0]) & (output.points5 <= [x1, y1])).all(), "five points inside the face box"
    assert output.parsing.shape == (height, width) and output.parsing.dtype == np.uint8
    assert "eyeglasses" in output.parsing_labels
    assert output.parsing.max() < len(output.parsing_labels)
    assert output.glasses_mask.shape == (height, width) and output.glasses_mask.dtype == bool
    assert isinstance(output.inpainted, PIL.Image.Image) and output.inpainted.size == (width, height)
    inpainted = np.asarray(output.inpainted)
    assert np.array_equal(inpainted[~output.glasses_mask], photo[~output.glasses_mask])
    assert {name: value.shape for name, value in output.coefficients.items()} == {
        name: (size,) for name, size in COEFFICIENT_SIZES.items()
    }
    assert isinstance(output.mesh, trimesh.Trimesh)
    assert output.mesh.visual.uv is not None and len(output.mesh.visual.uv) == len(output.mesh.vertices)
    extent = output.mesh.extents
    assert 0.1 < extent.max() < 0.5, "a head in metres"
    assert set(output.stages) >= {"detector", "landmarker", "parser", "inpainter", "regressor"}


def test_landmarks_lie_in_the_face_box(output):
    x0, y0, x1, y1 = output.face_box
    margin = 0.25 * (x1 - x0)
    inside = (
        (output.landmarks[:, 0] > x0 - margin) & (output.landmarks[:, 0] < x1 + margin)
        & (output.landmarks[:, 1] > y0 - margin) & (output.landmarks[:, 1] < y1 + margin)
    )
    assert inside.all()


def test_export_round_trips(output, tmp_path):
    written = output.export(tmp_path / "face.glb")
    gltf = pygltflib.GLTF2().load(str(written[0]))
    assert len(gltf.images) == 1
    assert gltf.meshes[0].primitives[0].attributes.TEXCOORD_0 is not None
    obj_files = output.export(tmp_path / "face.obj")
    assert sorted(path.suffix for path in obj_files) == [".mtl", ".obj", ".png"]
    reloaded = trimesh.load(obj_files[0], force="mesh")
    assert len(reloaded.faces) == len(output.mesh.faces)
    assert json.loads(output.coefficients_json())["identity"]


def test_given_mask_replaces_the_parser_and_only_its_pixels_change(tiny_pipeline, photo, output):
    mask = np.zeros(photo.shape[:2], bool)
    left_eye = output.landmarks[36:42].mean(0).astype(int)
    mask[left_eye[1] - 10:left_eye[1] + 10, left_eye[0] - 25:left_eye[0] + 25] = True
    result = tiny_pipeline.reconstruct(photo, glasses_mask=mask)
    assert np.array_equal(result.glasses_mask, mask)
    inpainted = np.asarray(result.inpainted)
    assert np.array_equal(inpainted[~mask], photo[~mask])
    assert not np.array_equal(inpainted[mask], photo[mask])
    assert (result.parsing[mask] == result.parsing_labels.index("eyeglasses")).all()


def test_keep_glasses_leaves_the_photo_alone(tiny_pipeline, photo):
    mask = np.zeros(photo.shape[:2], bool)
    mask[200:240, 200:300] = True
    result = tiny_pipeline.reconstruct(photo, glasses_mask=mask, remove_glasses=False)
    assert np.array_equal(np.asarray(result.inpainted), photo)


def test_lists_paths_and_call_are_the_same_call(tiny_pipeline, output):
    path = EXAMPLES / "grace_hopper.jpg"
    results = tiny_pipeline([path, str(path)])
    assert isinstance(results, list) and len(results) == 2
    np.testing.assert_allclose(results[0].landmarks, output.landmarks, atol=1e-3)


def test_all_faces_gives_a_list(tiny_pipeline, photo):
    results = tiny_pipeline.reconstruct(photo, all_faces=True)
    assert isinstance(results, list) and len(results) >= 1


def test_no_face_is_a_clear_value_error(tiny_pipeline):
    with pytest.raises(FaceNotFoundError, match="No face"):
        tiny_pipeline.reconstruct(np.full((200, 300, 3), 128, np.uint8))
    assert issubclass(FaceNotFoundError, ValueError)


def test_mask_of_the_wrong_shape_is_refused(tiny_pipeline, photo):
    with pytest.raises(ValueError, match="glasses_mask"):
        tiny_pipeline.reconstruct(photo, glasses_mask=np.zeros((10, 10), bool))


def test_missing_component_is_named(tiny_pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken)
    shutil.rmtree(broken / "landmarker")
    with pytest.raises(FileNotFoundError, match="landmarker"):
        Eyeglass3DPipeline.from_pretrained(broken)


def test_components_declared_absent_use_named_fallbacks(tiny_pipeline_dir, tmp_path, photo):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_pipeline_dir, partial)
    index = json.loads((partial / "model_index.json").read_text())
    for name in ("parser", "inpainter", "regressor"):
        index[name] = [None, None]
        shutil.rmtree(partial / name)
    (partial / "model_index.json").write_text(json.dumps(index))
    pipe = Eyeglass3DPipeline.from_pretrained(partial)
    assert pipe.parser is None and pipe.regressor is None
    mask = np.zeros(photo.shape[:2], bool)
    mask[250:270, 220:300] = True
    result = pipe.reconstruct(photo, glasses_mask=mask)
    assert "Telea" in result.stages["inpainter"]
    assert "fitted" in result.stages["regressor"]
    assert np.array_equal(np.asarray(result.inpainted)[~mask], photo[~mask])


def test_repo_id_loads_from_the_cache_offline(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--someone--eyeglass3d"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_pipeline_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    pipe = Eyeglass3DPipeline.from_pretrained("someone/eyeglass3d", cache_dir=tmp_path / "hub")
    assert pipe.landmarker is not None


def test_repo_id_offline_and_not_cached_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(OSError, match="not in the Hugging Face cache"):
        Eyeglass3DPipeline.from_pretrained("someone/not-downloaded", cache_dir=tmp_path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("bad", [b"not an image at all", b"", b"\xff\xd8\xff\xe0" + b"\x00" * 64])
def test_unreadable_input_is_a_clear_value_error(tiny_pipeline, bad):
    from eyeglass3d import ImageInputError

    with pytest.raises(ImageInputError):
        tiny_pipeline.reconstruct(bad)


def test_greyscale_and_rgba_photos_work(tiny_pipeline, photo):
    grey = PIL.Image.fromarray(photo).convert("L")
    rgba = PIL.Image.fromarray(photo).convert("RGBA")
    for image in (grey, rgba):
        assert tiny_pipeline.reconstruct(image).landmarks.shape == (68, 2)


def test_loads_in_a_fresh_process(tiny_pipeline_dir):
    """diffusers needs the component modules imported; a new interpreter has imported nothing."""
    import subprocess
    import sys

    code = (
        "import sys; from eyeglass3d import Eyeglass3DPipeline; "
        f"pipe = Eyeglass3DPipeline.from_pretrained({str(tiny_pipeline_dir)!r}); "
        "print(type(pipe.landmarker).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LandmarkRegressor" in result.stdout


def test_stages_are_reported_in_order(tiny_pipeline, photo):
    seen = []
    tiny_pipeline.reconstruct(photo, on_stage=seen.append)
    assert seen == ["detect", "landmarks", "parse", "inpaint", "regress", "mesh"]


def test_a_batch_gives_what_one_by_one_gives(tiny_pipeline, photo):
    """Also under bf16 (where the CPU has it), in which a landmark moved by one float ulp could flip a rounding of
    the inpainter: the landmarker runs crop by crop for that reason, the U-Nets' batched kernels agree exactly."""
    photos = [photo, EXAMPLES / "astronaut.jpg", np.ascontiguousarray(photo[:, ::-1]), photo[::2, ::2].copy()]
    mask = np.zeros(photo.shape[:2], bool)
    mask[230:260, 200:320] = True
    masks = [mask, None, None, None]  # one hand-painted mask, the parser for the others

    together = tiny_pipeline.reconstruct(photos, glasses_mask=masks)
    alone = [tiny_pipeline.reconstruct(item, glasses_mask=item_mask) for item, item_mask in zip(photos, masks)]

    for a, b in zip(together, alone):
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.glasses_mask, b.glasses_mask)
        np.testing.assert_array_equal(a.parsing, b.parsing)
        np.testing.assert_array_equal(np.asarray(a.inpainted), np.asarray(b.inpainted))
        for name in a.coefficients:
            np.testing.assert_allclose(a.coefficients[name], b.coefficients[name], atol=1e-4)
        np.testing.assert_allclose(a.mesh.vertices, b.mesh.vertices, atol=1e-4)
        assert a.stages == b.stages
    assert np.array_equal(together[0].glasses_mask, mask) and not np.array_equal(together[1].glasses_mask, mask)


def test_one_face_is_what_each_network_predicts(tiny_pipeline, photo, output):
    """The stacked stages cut the crops that the models' own `predict` (used by the evaluations) cuts."""
    from eyeglass3d.geometry.alignment import five_points_from_landmarks

    rgb = np.asarray(output.image)
    detector_points = tiny_pipeline._detect(rgb)[0].points.astype(np.float64)
    np.testing.assert_array_equal(output.landmarks, tiny_pipeline.landmarker.predict(rgb, detector_points).astype(np.float32))
    regressed = tiny_pipeline.regressor.predict(np.asarray(output.inpainted), five_points_from_landmarks(output.landmarks.astype(np.float64)))
    for name, value in regressed.items():
        np.testing.assert_allclose(output.coefficients[name], value[0].numpy(), atol=1e-4)
    mask = np.zeros(photo.shape[:2], bool)
    mask[230:260, 200:320] = True
    filled, handled = tiny_pipeline.inpainter.predict(photo, detector_points, output.landmarks.astype(np.float64), mask)
    assert handled.sum() > 100
    inpainted = np.asarray(tiny_pipeline.reconstruct(photo, glasses_mask=mask).inpainted)
    np.testing.assert_array_equal(inpainted[handled], filled[handled])  # (Telea fills the rest, past the band)


def test_a_bad_image_in_a_list_raises_with_its_index_before_any_network(tiny_pipeline, photo):
    seen = []
    with pytest.raises(FaceNotFoundError, match=r"^image 1: No face") as error:
        tiny_pipeline.reconstruct([photo, np.full((200, 300, 3), 128, np.uint8), photo], on_stage=seen.append)
    assert error.value.index == 1
    assert seen == ["detect"]


def test_errors_return_keeps_the_good_images(tiny_pipeline, photo, output):
    from eyeglass3d import ImageInputError

    results = tiny_pipeline.reconstruct([b"junk", photo, np.full((200, 300, 3), 128, np.uint8)], errors="return")
    assert isinstance(results[0], ImageInputError) and results[0].index == 0
    assert isinstance(results[1], ReconstructionOutput)
    np.testing.assert_allclose(results[1].landmarks, output.landmarks, atol=1e-4)
    assert isinstance(results[2], FaceNotFoundError) and str(results[2]).startswith("No face")
    assert tiny_pipeline.reconstruct([], errors="return") == []


def test_all_faces_in_a_list_gives_a_list_per_image(tiny_pipeline, photo):
    results = tiny_pipeline.reconstruct((photo, photo), all_faces=True)
    assert [type(item) for item in results] == [list, list]
    assert len(results[0]) == len(results[1]) >= 1


@pytest.mark.parametrize("arguments, message", [
    ({"errors": "ignore"}, "errors must be"),
    ({"remove_glasses": "no"}, "remove_glasses must be True or False"),
    ({"all_faces": None}, "all_faces must be True or False"),
    ({"glasses_mask": [None]}, "a list of 1 masks for 2 images"),
])
def test_bad_arguments_are_value_errors(tiny_pipeline, photo, arguments, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.reconstruct([photo, photo], **arguments)


@pytest.mark.parametrize("mask, message", [
    (np.zeros((10, 10, 5), bool), r"1\.\.4 channels"),
    (np.zeros((10,), bool), r"1\.\.4 channels"),
    (np.array([["a"]]), "dtype"),
    (np.full((2, 2), np.nan), "NaN"),
    ([[0, 1], [1]], "cannot be read as an array"),
])
def test_unusable_masks_are_value_errors(tiny_pipeline, photo, mask, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.reconstruct(photo, glasses_mask=mask)


def test_stages_are_reported_once_per_batch(tiny_pipeline, photo):
    seen = []
    tiny_pipeline.reconstruct([photo, photo], on_stage=seen.append)
    assert seen == ["detect", "landmarks", "parse", "inpaint", "regress", "mesh"]


def test_pipeline_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, eyeglass3d.pipeline, eyeglass3d.cli; print('ray' in sys.modules, 'pyarrow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]
