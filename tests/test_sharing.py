"""ResultStore: unguessable ids, no path walking, size and age caps, no photo metadata in shared files."""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import PIL.Image
import pytest

from eyeglass3d.sharing import RESULT_ID_PATTERN, ResultNotFound, ResultStore


def _photo_with_gps_exif() -> bytes:
    exif = PIL.Image.Exif()
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # GPSInfo: where the photo was taken
    exif[0x010F] = "SecretCam"
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (40, 30), (200, 120, 90)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def test_save_and_load_round_trip(tmp_path):
    store = ResultStore(tmp_path / "store")
    mesh = tmp_path / "face.glb"
    mesh.write_bytes(b"glTF" + bytes(100))
    mask = np.zeros((30, 40), np.uint8)
    mask[5:10, 5:20] = 255

    result_id = store.save(
        files={"face.glb": mesh},
        images={"mask.png": mask, "photo.jpg": PIL.Image.new("RGB", (40, 30), "red")},
        metadata={"status": "glasses removal: OpenCV Telea", "labels": ["skin", "eyeglasses"]},
    )
    assert RESULT_ID_PATTERN.fullmatch(result_id)

    result = store.load(result_id)
    assert set(result.files) == {"face.glb", "mask.png", "photo.jpg"}
    assert result.files["face.glb"].read_bytes() == mesh.read_bytes()
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(result.files["mask.png"])), mask)
    assert PIL.Image.open(result.files["photo.jpg"]).size == (40, 30)
    assert result.metadata["labels"] == ["skin", "eyeglasses"]
    assert all(path.parent == store.root / result_id for path in result.files.values())


def test_ids_are_unguessable_and_distinct(tmp_path):
    store = ResultStore(tmp_path)
    ids = {store.save(images={"a.png": np.zeros((4, 4), np.uint8)}) for _ in range(20)}
    assert len(ids) == 20
    assert all(len(result_id) == 22 for result_id in ids)  # 16 random bytes


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "..",
        "../../etc/passwd",
        "..%2F..%2Fetc",
        "a" * 21,
        "a" * 23,
        "a/" + "a" * 20,
        "a\\" + "a" * 20,
        "." + "a" * 21,
        "a" * 21 + "\n",
        "a" * 21 + "\x00",
        None,
        42,
        "AAAAAAAAAAAAAAAAAAAAAA",  # well-formed, but no such result
    ],
)
def test_forged_or_unknown_ids_are_not_found(tmp_path, forged):
    store = ResultStore(tmp_path / "store")
    store.save(images={"a.png": np.zeros((4, 4), np.uint8)})
    with pytest.raises(ResultNotFound):
        store.load(forged)


def test_ids_cannot_reach_outside_the_store(tmp_path):
    """A folder that merely looks like a result beside the store is never opened."""
    store = ResultStore(tmp_path / "store")
    outside = tmp_path / ("b" * 22)
    outside.mkdir()
    manifest = {"created": time.time(), "bytes": 1, "files": [], "metadata": {}}
    (outside / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultNotFound):
        store.load("../" + "b" * 22)
    with pytest.raises(ResultNotFound):
        store.load("b" * 22)


def test_a_tampered_manifest_cannot_name_files_outside_the_result(tmp_path):
    store = ResultStore(tmp_path)
    result_id = store.save(images={"a.png": np.zeros((4, 4), np.uint8)})
    manifest_path = store.root / result_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = ["../../secret.png"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ResultNotFound):
        store.load(result_id)


@pytest.mark.parametrize("name", ["../x.png", "a/b.png", ".hidden.png", "manifest.json", "run.sh", "x.PNG", "noext"])
def test_bad_file_names_are_refused(tmp_path, name):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError):
        store.save(images={name: np.zeros((4, 4), np.uint8)})
    assert list(store.root.iterdir()) == []  # nothing half-written stays behind


def test_old_results_expire(tmp_path):
    store = ResultStore(tmp_path, max_age_s=60)
    old_id = store.save(images={"a.png": np.zeros((4, 4), np.uint8)})
    manifest_path = store.root / old_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["created"] -= 120
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(ResultNotFound):
        store.load(old_id)
    assert not (store.root / old_id).exists()


def test_expired_results_are_evicted_on_the_next_save(tmp_path):
    store = ResultStore(tmp_path, max_age_s=60)
    old_id = store.save(images={"a.png": np.zeros((4, 4), np.uint8)})
    manifest_path = store.root / old_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["created"] -= 120
    manifest_path.write_text(json.dumps(manifest))
    new_id = store.save(images={"a.png": np.zeros((4, 4), np.uint8)})
    assert not (store.root / old_id).exists()
    assert store.load(new_id).result_id == new_id


def test_size_cap_evicts_oldest_first(tmp_path):
    blob = tmp_path / "blob.bin.json"
    blob.write_bytes(os.urandom(4000))
    store = ResultStore(tmp_path / "store", max_bytes=10_000)
    ids = []
    for _ in range(5):
        ids.append(store.save(files={"blob.json": blob}))
        time.sleep(0.01)
    assert store.usage_bytes() <= 10_000
    for result_id in ids[:-2]:
        with pytest.raises(ResultNotFound):
            store.load(result_id)
    for result_id in ids[-2:]:
        assert store.load(result_id).files["blob.json"].stat().st_size == 4000


def test_a_result_larger_than_the_store_is_refused(tmp_path):
    blob = tmp_path / "blob.json"
    blob.write_bytes(bytes(5000))
    store = ResultStore(tmp_path / "store", max_bytes=1000)
    with pytest.raises(ValueError, match="more than the store holds"):
        store.save(files={"blob.json": blob})
    assert list(store.root.iterdir()) == []


def test_stored_images_carry_no_exif(tmp_path):
    store = ResultStore(tmp_path)
    photo = PIL.Image.open(io.BytesIO(_photo_with_gps_exif()))
    assert photo.getexif()  # the upload does carry GPS and camera data
    result = store.load(store.save(images={"photo.jpg": photo, "photo_copy.png": photo}))
    for path in result.files.values():
        assert not PIL.Image.open(path).getexif()
        assert b"SecretCam" not in path.read_bytes()


def test_crashed_staging_folders_are_cleaned(tmp_path):
    store = ResultStore(tmp_path)
    stale = store.root / ".staging-leftover"
    stale.mkdir()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    store.evict()
    assert not stale.exists()
