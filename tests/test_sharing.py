"""ResultStore: unguessable ids, no path walking, size and age caps, no photo metadata in shared files."""

from __future__ import annotations

import base64
import io
import json
import logging
import multiprocessing
import os
import random
import shutil
import threading
import time

import numpy as np
import PIL.Image
import pytest

from eyeglass3d import sharing
from eyeglass3d.sharing import RESULT_ID_PATTERN, STAGING_MAX_AGE_S, ResultNotFound, ResultStore, new_result_id


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


# ---- ids ----------------------------------------------------------------------------------------


def test_ids_carry_128_random_bits():
    ids = [new_result_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    raw = [base64.urlsafe_b64decode(result_id + "==") for result_id in ids]
    assert all(len(value) == 16 for value in raw)
    assert all(base64.urlsafe_b64encode(value).rstrip(b"=").decode() == result_id for value, result_id in zip(raw, ids))
    bits = np.unpackbits(np.frombuffer(b"".join(raw), np.uint8).reshape(len(ids), 16), axis=1)
    # Every one of the 128 bit positions is a fair coin (6 sigma either side of 0.5 for 1000 draws).
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.1)


def test_save_names_results_with_fresh_random_ids(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    handed_out = []
    monkeypatch.setattr(sharing, "new_result_id", lambda: handed_out.append(new_result_id()) or handed_out[-1])
    saved = [store.save(images={"a.png": np.zeros((4, 4), np.uint8)}) for _ in range(3)]
    assert saved == handed_out


# ---- damaged entries read as not found, are logged, and are evicted -------------------------------


def _save_sample(store: ResultStore, tag: str = "x") -> str:
    return store.save(
        files={"face.glb": _write(store.root.parent / f"{tag}.glb", b"glTF" + bytes(64))},
        images={"photo.png": np.full((6, 5, 3), 100, np.uint8)},
        metadata={"tag": tag},
    )


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _outside_result(folder) -> None:
    """A complete, valid-looking result outside the store (what a link inside it could point to)."""
    folder.mkdir()
    (folder / "face.glb").write_bytes(b"glTF" + bytes(64))
    manifest = {"created": time.time(), "bytes": 68, "files": {"face.glb": 68}, "metadata": {"tag": "outside"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _manifest_path(store, result_id):
    return store.root / result_id / "manifest.json"


def _edit_manifest(store, result_id, **changes):
    manifest = json.loads(_manifest_path(store, result_id).read_text())
    manifest.update(changes)
    _manifest_path(store, result_id).write_text(json.dumps(manifest))


DAMAGE = {
    "manifest missing": lambda store, rid, outside: _manifest_path(store, rid).unlink(),
    "manifest empty": lambda store, rid, outside: _manifest_path(store, rid).write_bytes(b""),
    "manifest cut short": lambda store, rid, outside: _manifest_path(store, rid).write_bytes(
        _manifest_path(store, rid).read_bytes()[:40]
    ),
    "manifest garbled": lambda store, rid, outside: _manifest_path(store, rid).write_bytes(os.urandom(200)),
    "manifest a list": lambda store, rid, outside: _manifest_path(store, rid).write_text("[1, 2]"),
    "manifest date NaN": lambda store, rid, outside: _manifest_path(store, rid).write_text(
        _manifest_path(store, rid).read_text().replace('"created": ', '"created": NaN, "was": ')
    ),
    "manifest too large": lambda store, rid, outside: _edit_manifest(store, rid, metadata={"pad": "x" * 2_000_000}),
    "manifest understates the size": lambda store, rid, outside: _edit_manifest(store, rid, bytes=1),
    "manifest names a folder above": lambda store, rid, outside: _edit_manifest(
        store, rid, files={"../../secret.png": 1}
    ),
    "manifest a link": lambda store, rid, outside: (
        _manifest_path(store, rid).unlink(),
        _manifest_path(store, rid).symlink_to(outside / "manifest.json"),
    ),
    "file cut short": lambda store, rid, outside: _write(
        store.root / rid / "face.glb", (store.root / rid / "face.glb").read_bytes()[:10]
    ),
    "file missing": lambda store, rid, outside: (store.root / rid / "photo.png").unlink(),
    "file is a folder": lambda store, rid, outside: (
        (store.root / rid / "photo.png").unlink(),
        (store.root / rid / "photo.png").mkdir(),
    ),
    "file a link out, same size": lambda store, rid, outside: (
        (store.root / rid / "face.glb").unlink(),
        (store.root / rid / "face.glb").symlink_to(outside / "face.glb"),
    ),
    "result folder a link out": lambda store, rid, outside: (
        shutil.rmtree(store.root / rid),
        (store.root / rid).symlink_to(outside, target_is_directory=True),
    ),
    "result folder a file": lambda store, rid, outside: (
        shutil.rmtree(store.root / rid),
        _write(store.root / rid, b"not a folder"),
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_result_reads_as_not_found_is_logged_and_evicted(tmp_path, caplog, damage):
    store = ResultStore(tmp_path / "store")
    outside = tmp_path / "outside"
    _outside_result(outside)
    damaged_id, sound_id = _save_sample(store, "damaged"), _save_sample(store, "sound")
    sound_size = store.usage_bytes() // 2
    DAMAGE[damage](store, damaged_id, outside)

    with caplog.at_level(logging.WARNING, logger="eyeglass3d.sharing"), pytest.raises(ResultNotFound):
        store.load(damaged_id)
    assert any(damaged_id in record.getMessage() for record in caplog.records), caplog.text
    assert store.usage_bytes() == sound_size  # counted no more

    assert damaged_id in store.evict()
    assert not os.path.lexists(store.root / damaged_id)
    assert store.load(sound_id).metadata == {"tag": "sound"}
    assert sorted(path.name for path in outside.iterdir()) == ["face.glb", "manifest.json"]  # untouched


def test_an_unknown_id_is_not_logged_as_damage(tmp_path, caplog):
    store = ResultStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="eyeglass3d.sharing"), pytest.raises(ResultNotFound):
        store.load(new_result_id())
    assert not caplog.records


def test_links_in_the_store_are_removed_never_followed(tmp_path):
    """An old-looking result behind a link, and a staging-named link: eviction removes the links only."""
    store = ResultStore(tmp_path / "store", max_age_s=60)
    outside = tmp_path / "outside"
    _outside_result(outside)
    outside_manifest = outside / "manifest.json"
    manifest = json.loads(outside_manifest.read_text())
    manifest["created"] -= 3600  # expired, so eviction would delete it if it followed the link
    outside_manifest.write_text(json.dumps(manifest))
    linked_id = new_result_id()
    (store.root / linked_id).symlink_to(outside, target_is_directory=True)
    (store.root / ".staging-link").symlink_to(outside, target_is_directory=True)

    with pytest.raises(ResultNotFound):
        store.load(linked_id)
    store.evict()

    assert not os.path.lexists(store.root / linked_id)
    assert not os.path.lexists(store.root / ".staging-link")
    assert sorted(path.name for path in outside.iterdir()) == ["face.glb", "manifest.json"]


def test_manifests_written_before_sizes_were_recorded_still_load(tmp_path):
    store = ResultStore(tmp_path)
    result_id = _save_sample(store)
    _edit_manifest(store, result_id, files=["face.glb", "photo.png"])
    assert set(store.load(result_id).files) == {"face.glb", "photo.png"}


# ---- atomic saves, concurrency ------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_save_that_dies_half_way_leaves_nothing_visible_and_is_cleaned(tmp_path):
    store = ResultStore(tmp_path / "store")
    blob = _write(tmp_path / "blob.glb", bytes(1000))
    child = os.fork()
    if child == 0:  # the process dies (no exception, no cleanup) while its files are half written
        sharing._save_image = lambda image, path: os._exit(3)
        store.save(files={"face.glb": blob}, images={"photo.png": np.zeros((4, 4), np.uint8)})
        os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 3
    (leftover,) = [path for path in store.root.iterdir() if path.name.startswith(".staging-")]
    assert store.usage_bytes() == 0
    with pytest.raises(ResultNotFound):
        store.load(leftover.name.removeprefix(".staging-"))

    store.evict()
    assert leftover.exists()  # it could still be a save in progress
    old = time.time() - STAGING_MAX_AGE_S - 60
    os.utime(leftover, (old, old))
    store.evict()
    assert not leftover.exists()


def test_readers_never_see_half_a_result_while_threads_write(tmp_path, caplog):
    store = ResultStore(tmp_path / "store")
    errors, stop = [], threading.Event()

    def write(writer: int):
        try:
            for index in range(6):
                data = f"{writer}-{index}".encode() * 50
                store.save(
                    files={"face.glb": _write(tmp_path / f"w{writer}-{index}.glb", data)},
                    images={"photo.png": np.full((8, 8), writer * 10 + index, np.uint8)},
                    metadata={"writer": writer, "index": index},
                )
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def read():
        while not stop.is_set():
            for path in store.root.iterdir():
                if ResultStore.is_valid_id(path.name):
                    try:
                        _check_consistent(store.load(path.name))
                    except Exception as error:  # noqa: BLE001 - a visible result must load whole
                        errors.append(error)

    writers = [threading.Thread(target=write, args=(writer,)) for writer in range(6)]
    reader = threading.Thread(target=read)
    with caplog.at_level(logging.WARNING, logger="eyeglass3d.sharing"):
        reader.start()
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        stop.set()
        reader.join()

    assert not errors, errors[:3]
    assert not caplog.records, caplog.text
    ids = [path.name for path in store.root.iterdir() if ResultStore.is_valid_id(path.name)]
    assert len(ids) == 36
    assert {(store.load(i).metadata["writer"], store.load(i).metadata["index"]) for i in ids} == {
        (writer, index) for writer in range(6) for index in range(6)
    }


def _check_consistent(result) -> None:
    writer, index = result.metadata["writer"], result.metadata["index"]
    assert result.files["face.glb"].read_bytes() == f"{writer}-{index}".encode() * 50
    assert np.asarray(PIL.Image.open(result.files["photo.png"])).max() == writer * 10 + index


def test_the_same_result_saved_by_many_threads_at_once(tmp_path):
    store = ResultStore(tmp_path / "store")
    mesh = _write(tmp_path / "face.glb", b"glTF" + os.urandom(3000))
    photo = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    barrier = threading.Barrier(8)
    ids = []

    def save():
        barrier.wait()
        ids.append(store.save(files={"face.glb": mesh}, images={"photo.png": photo}, metadata={"same": True}))

    threads = [threading.Thread(target=save) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(ids)) == 8
    for result_id in ids:
        result = store.load(result_id)
        assert result.files["face.glb"].read_bytes() == mesh.read_bytes()
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(result.files["photo.png"])), photo)


def _save_from_a_process(job):
    root, writer, max_bytes = job
    store = ResultStore(root, max_bytes=max_bytes)
    saved = []
    for index in range(5):
        data = f"{writer}-{index}".encode() * 50
        saved.append(store.save(
            files={"face.glb": _write(root.parent / f"p{writer}-{index}.glb", data)},
            images={"photo.png": np.full((8, 8), writer * 10 + index, np.uint8)},
            metadata={"writer": writer, "index": index},
        ))
        time.sleep(random.random() * 0.01)
    return saved


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_processes_share_one_store_within_its_size_limit(tmp_path):
    root = tmp_path / "store"
    max_bytes = 1500  # a result is 150 bytes of mesh and a ~70-byte PNG: about six fit
    with multiprocessing.get_context("fork").Pool(4) as pool:
        saved = [result_id for ids in pool.map(_save_from_a_process, [(root, w, max_bytes) for w in range(4)])
                 for result_id in ids]

    store = ResultStore(root, max_bytes=max_bytes)
    assert len(set(saved)) == 20
    assert store.usage_bytes() <= max_bytes
    alive = []
    for result_id in saved:
        try:
            result = store.load(result_id)
        except ResultNotFound:
            continue
        _check_consistent(result)
        alive.append(result_id)
    assert 4 <= len(alive) <= 7  # eviction ran in every process, and kept what fits
    assert not [path for path in root.iterdir() if path.name.startswith(".staging-")]
