"""`eyeglass3d.batch` as a Ray Data stage: on a local Ray instance, its rows are the CLI's `--dataset` rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from eyeglass3d import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PHOTOS = ("astronaut.jpg", "coffee.png", "grace_hopper.jpg")  # coffee.png has no face: an error row


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_rows_equal_the_cli_rows(local_ray, tiny_pipeline_dir, tmp_path):
    import datasets

    from eyeglass3d.batch import read_results, reconstruct_ray

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(EXAMPLES / name, folder / name)
    dataset = datasets.Dataset.from_dict({"image": [str(folder / name) for name in PHOTOS]})
    dataset.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "dataset"))

    assert cli.main(["reconstruct", "--dataset", str(tmp_path / "dataset"), "--out", str(tmp_path / "cli"),
                     "--weights", str(tiny_pipeline_dir), "--batch-size", "1"]) == 0
    images = local_ray.data.read_images(str(folder), include_paths=True, mode="RGB")
    reconstruct_ray(images, tmp_path / "ray", weights=tiny_pipeline_dir, batch_size=1)

    by_cli = {row["source"]: row for row in read_results(tmp_path / "cli").to_pylist()}
    by_ray = {Path(row["source"]).name: row for row in read_results(tmp_path / "ray").to_pylist()}
    assert sorted(by_cli) == sorted(by_ray) == sorted(PHOTOS)
    for name in PHOTOS:
        ours, theirs = by_cli[name], by_ray[name]
        assert ours["error"] == theirs["error"]
        if ours["error"] is not None:
            assert "FaceNotFoundError" in ours["error"] and theirs["coefficients"] is None
            continue
        np.testing.assert_allclose(theirs["landmarks"], ours["landmarks"], atol=1e-4)
        np.testing.assert_allclose(theirs["face_box"], ours["face_box"], atol=1e-4)
        for group, values in ours["coefficients"].items():
            np.testing.assert_allclose(theirs["coefficients"][group], values, atol=1e-4)
        assert ours["stages"] == theirs["stages"]
        assert (tmp_path / "ray" / theirs["glb_path"]).stat().st_size > 0
        assert (tmp_path / "ray" / theirs["inpainted_path"]).is_file()
    assert by_cli["astronaut.jpg"]["glb_path"] == "files/row-000000.glb"
    assert by_ray["astronaut.jpg"]["row"] is None and by_ray["astronaut.jpg"]["glb_path"].startswith("files/astronaut-")
