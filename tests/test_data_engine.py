"""The data engine: fixed split, teacher-label cache, shared face loader, dlib teacher."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
from PIL import Image

from eyeglass3d.paths import data_root
from eyeglass3d.training import label_faces
from eyeglass3d.training.datasets import FaceRecords, canonical_crop, five_points_from_landmarks68
from eyeglass3d.training.face_sets import SPLITS_DIR, face_set, file_key
from eyeglass3d.training.splits import (
    SPLIT_NAMES, UTKFACE_SPLIT_CSV, assign_split, load_split, near_duplicate_groups, read_keyed_csv,
    read_lfw_pair_folds, read_split_csv, split_of_files, split_rows, write_split_csv,
)

UTKFACE_IMAGES = data_root() / "faces" / "utkface" / "images"


needs_shared_data = pytest.mark.skipif(not UTKFACE_IMAGES.is_dir(), reason="the shared face data is not here")


def recorded_split(set_name: str, expected_files: int) -> tuple[dict[str, str], dict[str, str]]:
    """(key -> split, key -> file name) of a set's committed CSV, after checking every key names one of its photos."""
    faces = face_set(set_name)
    recorded = read_split_csv(faces.split_csv)
    names = faces.resolve(recorded)
    assert len(recorded) == len(names) == expected_files
    return recorded, names


@needs_shared_data
def test_utkface_split_keys_resolve_and_follow_the_hash_rule():
    recorded, names = recorded_split("utkface", 9780)
    # The CSV is exactly what the hash rule gives, so it can always be regenerated, and a group of
    # near-duplicate photos never straddles two splits.
    rows = read_keyed_csv(UTKFACE_SPLIT_CSV)
    assert all(assign_split(names[row["group"] or row["key"]]) == row["split"] for row in rows)
    group_splits = {}
    for row in rows:
        if row["group"]:
            group_splits.setdefault(row["group"], set()).add(row["split"])
    assert len(group_splits) > 100 and all(len(splits) == 1 for splits in group_splits.values())
    assert assign_split("100_1_0_20170110183726390.jpg.chip.jpg") == "test"
    assert assign_split("100_1_2_20170105174847679.jpg.chip.jpg") == "train"
    splits = {name: set(load_split(name)) for name in SPLIT_NAMES}
    assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]
    assert set().union(*splits.values()) == set(names.values())
    fractions = {name: len(files) / len(recorded) for name, files in splits.items()}
    assert fractions["train"] == pytest.approx(0.8, abs=0.015)
    assert fractions["val"] == pytest.approx(0.1, abs=0.01)
    assert fractions["test"] == pytest.approx(0.1, abs=0.01)


def test_committed_csvs_hold_no_utkface_file_names():
    for path in SPLITS_DIR.glob("*.csv"):
        assert ".chip.jpg" not in path.read_text(), path.name


@needs_shared_data
def test_lfw_split_is_by_person_and_follows_the_pair_folds():
    recorded, names = recorded_split("lfw", 6922)
    split_of_person: dict[str, set] = {}
    for key, name in names.items():
        split_of_person.setdefault(name.split("/")[0], set()).add(recorded[key])
    assert all(len(splits) == 1 for splits in split_of_person.values())  # no person in two splits
    folds = read_lfw_pair_folds(face_set("lfw").root / "pairs_dev.txt")
    for person, (split,) in split_of_person.items():
        assert split == {4: "val", 5: "test"}.get(folds.get(person), "train"), person
    # Every person of a fold-4 or fold-5 pair has a photo in val or test.
    assert {p for p, f in folds.items() if f == 5} <= {p for p, s in split_of_person.items() if s == {"test"}}
    assert len(load_split("val", "lfw")) + len(load_split("test", "lfw")) + len(load_split("train", "lfw")) == 6922


def test_lfw_pair_folds_reader_on_a_known_file(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nCid\t1\t3\nCid\t2\tDee\t1\n")
    assert read_lfw_pair_folds(pairs) == {"Ann": 1, "Bob": 1, "Cid": 2, "Dee": 2}
    pairs.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nCid\t1\t3\nCid\t2\tAnn\t2\n")
    with pytest.raises(ValueError, match="identity-disjoint"):
        read_lfw_pair_folds(pairs)
    rows = split_rows("lfw", ["Ann/Ann_0001.jpg", "Cid/Cid_0001.jpg", "Eve/Eve_0001.jpg"], lfw_folds={"Ann": 4, "Cid": 5})
    assert sorted(split for _, split, _ in rows) == ["test", "train", "val"]
    assert dict((key, split) for key, split, _ in rows)[file_key("Eve/Eve_0001.jpg")] == "train"


@needs_shared_data
def test_celebamask_split_keys_resolve_80_10_10():
    recorded, names = recorded_split("celebamask", 942)
    assert all(assign_split(name) == recorded[key] for key, name in names.items())
    counts = {name: sum(s == name for s in recorded.values()) for name in SPLIT_NAMES}
    assert counts["train"] / 942 == pytest.approx(0.8, abs=0.04)


def test_split_rows_ignore_listing_order_and_keep_groups_together(tmp_path):
    names = [f"{i}_0_0_2017.jpg.chip.jpg" for i in range(50)]
    write_split_csv(split_rows("utkface", names), tmp_path / "a.csv", "made in a test")
    write_split_csv(split_rows("utkface", reversed(names)), tmp_path / "b.csv", "made in a test")
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert read_split_csv(tmp_path / "a.csv") == {file_key(n): assign_split(n) for n in names}
    # A group follows its key's split, whatever the members' own hashes say.
    groups = {name: names[0] for name in names[:10]}
    write_split_csv(split_rows("utkface", names, groups), tmp_path / "c.csv", "made in a test")
    recorded = read_split_csv(tmp_path / "c.csv")
    assert {recorded[file_key(n)] for n in names[:10]} == {assign_split(names[0])}
    assert split_of_files(names[:2] + ["absent.jpg"], tmp_path / "c.csv")[2] is None
    with pytest.raises(ValueError):
        load_split("training")


def test_near_duplicate_groups_join_close_descriptors_only():
    rng = np.random.default_rng(3)
    base = rng.normal(scale=0.1, size=(4, 128))
    descriptors = np.concatenate([base, base[:2] + 0.001, base[:1] + 0.002])  # 0 has two copies, 1 has one
    names = ["a", "b", "c", "d", "a2", "b2", "a3"]
    groups = near_duplicate_groups(names, descriptors, max_distance=0.2)
    assert groups == {"a": "a", "a2": "a", "a3": "a", "b": "b", "b2": "b"}


def _fake_record(file: str, rng: np.random.Generator, *, mtcnn: bool = True, shift: float = 0.0) -> dict:
    landmarks = (rng.uniform(40, 160, size=(68, 2))).astype(np.float32)
    record = {"file": file, "dlib_detected": True, "dlib_box": np.array([15, 15, 194, 194], np.float32),
              "landmarks68": landmarks, "descriptor": rng.normal(size=128).astype(np.float32)}
    if mtcnn:
        points5 = five_points_from_landmarks68(landmarks) + shift
        record.update(mtcnn_ran=True, mtcnn_faces=1, mtcnn_box=np.array([20, 20, 180, 190], np.float32),
                      mtcnn_score=np.float32(0.99), points5=points5)
    return record


def test_quality_flags_follow_teacher_agreement():
    rng = np.random.default_rng(0)
    records = [
        _fake_record("agree.jpg", rng),
        dict(_fake_record("fallback.jpg", rng), dlib_detected=False),
        _fake_record("disagree.jpg", rng, shift=200.0),
        {**_fake_record("no_face.jpg", rng, mtcnn=False), "mtcnn_ran": True, "mtcnn_faces": 0},
        _fake_record("dlib_only.jpg", rng, mtcnn=False),
    ]
    quality, error = label_faces.quality_flags(label_faces.stack_records(records))
    assert quality.tolist() == [2, 1, 0, 0, 2]
    assert error[0] == pytest.approx(0.0, abs=1e-5) and error[2] > 1.0 and np.isnan(error[3])


def test_chunks_resume_and_later_passes_win(tmp_path):
    rng = np.random.default_rng(1)
    chunks = tmp_path / "labels.chunks"
    chunks.mkdir()
    first = [_fake_record(f"{i}.jpg", rng, mtcnn=False) for i in range(3)]
    label_faces.write_npz(chunks / "chunk_00000.npz", label_faces.stack_records(first))
    later = _fake_record("1.jpg", rng)
    label_faces.write_npz(chunks / "chunk_00001.npz", label_faces.stack_records([later]))
    done = label_faces.load_chunks(chunks)
    assert sorted(done) == ["0.jpg", "1.jpg", "2.jpg"]
    assert done["1.jpg"]["mtcnn_ran"] and "mtcnn_ran" not in done["0.jpg"]  # 0.jpg still needs its MTCNN pass
    merged = label_faces.merge(chunks, tmp_path / "labels.npz")
    assert merged["files"].tolist() == ["0.jpg", "1.jpg", "2.jpg"]
    np.testing.assert_array_equal(merged["points5"][1], later["points5"])


def test_mtcnn_pass_pads_the_image_and_maps_points_back():
    from eyeglass3d.models.detector import FaceDetection

    seen = {}

    class CentreDetector:
        """Reports one face at the centre of whatever image it gets."""

        def detect(self, image):
            seen["shape"] = image.shape
            h, w = image.shape[:2]
            points = np.array([[w / 2 - 20, h / 2], [w / 2 + 20, h / 2], [w / 2, h / 2 + 15],
                               [w / 2 - 15, h / 2 + 30], [w / 2 + 15, h / 2 + 30]], np.float32)
            return [FaceDetection(box=np.array([w / 2 - 50, h / 2 - 50, w / 2 + 50, h / 2 + 50], np.float32),
                                  score=0.99, points=points)]

    image = np.zeros((200, 200, 3), np.uint8)
    detections = label_faces._detect_padded(CentreDetector(), image)
    pad = round(label_faces.MTCNN_PAD * 200)
    assert seen["shape"] == (200 + 2 * pad, 200 + 2 * pad, 3)
    np.testing.assert_allclose(detections[0].box, [50, 50, 150, 150])
    np.testing.assert_allclose(detections[0].points[0], [80, 100])
    fields = label_faces._mtcnn_fields(detections, np.array([15, 15, 194, 194], np.float32))
    assert fields["mtcnn_ran"] and fields["mtcnn_faces"] == 1 and fields["points5"].shape == (5, 2)


@pytest.fixture
def fake_cache(tmp_path):
    """Three 200x200 faces, their label cache, split and glasses CSVs, all under tmp_path."""
    rng = np.random.default_rng(2)
    images = tmp_path / "images"
    images.mkdir()
    files = ["a.jpg", "b.jpg", "c.jpg"]
    for file in files:
        Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(images / file)
    records = [_fake_record("a.jpg", rng), _fake_record("b.jpg", rng, mtcnn=False), _fake_record("c.jpg", rng)]
    arrays = label_faces.stack_records(records)
    arrays["quality"], arrays["disagreement"] = label_faces.quality_flags(arrays)
    label_faces.write_npz(tmp_path / "labels.npz", arrays)
    a, b, c = (file_key(f) for f in files)
    (tmp_path / "split.csv").write_text(f"# test\nkey,split\n{a},train\n{b},train\n{c},val\n")
    (tmp_path / "glasses.csv").write_text(
        f"# test\nkey,glasses_prob,wears_glasses\n{a},0.9,1\n{b},0.1,0\n{c},0.2,0\n"
    )
    return {"labels_path": tmp_path / "labels.npz", "images_dir": images, "split_csv": tmp_path / "split.csv",
            "glasses_csv": tmp_path / "glasses.csv"}, records


def test_face_records_shapes_and_filters(fake_cache):
    paths, records = fake_cache
    train = FaceRecords("train", **paths)
    assert train.files == ["a.jpg", "b.jpg"] and len(train) == 2
    image, landmarks68_px, points5_px, descriptor, wears_glasses = train[0]
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    assert landmarks68_px.shape == (68, 2) and points5_px.shape == (5, 2) and descriptor.shape == (128,)
    assert landmarks68_px.dtype == points5_px.dtype == descriptor.dtype == np.float32
    assert wears_glasses is True and train[1].wears_glasses is False
    np.testing.assert_array_equal(image, np.asarray(Image.open(paths["images_dir"] / "a.jpg")))
    # b.jpg has no MTCNN pass: its five points come from its 68 landmarks.
    np.testing.assert_allclose(train[1].points5_px, five_points_from_landmarks68(records[1]["landmarks68"]))
    assert FaceRecords("train", glasses="without", **paths).files == ["b.jpg"]
    assert FaceRecords("val", glasses="with", **paths).files == []
    assert FaceRecords(None, **paths).files == ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(IndexError):
        train[2]


def test_canonical_crop_maps_landmarks_with_the_image(fake_cache):
    paths, _ = fake_cache
    image, landmarks68_px, points5_px, _, _ = FaceRecords("train", **paths)[0]
    crop, landmarks_crop_px, matrix = canonical_crop(image, points5_px, landmarks68_px, 128)
    assert crop.shape == (128, 128, 3) and landmarks_crop_px.shape == (68, 2)
    np.testing.assert_allclose(landmarks_crop_px, landmarks68_px @ matrix[:, :2].T + matrix[:, 2], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib teacher not installed")
@pytest.mark.skipif(not UTKFACE_IMAGES.is_dir(), reason="shared UTKFace data not available")
def test_dlib_teacher_puts_68_points_inside_the_face_box():
    from eyeglass3d.training.teacher import DlibTeacher

    image = np.asarray(Image.open(UTKFACE_IMAGES / "100_1_0_20170110183726390.jpg.chip.jpg").convert("RGB"))
    label = DlibTeacher(with_descriptor=False)(image)
    assert label.detected
    x0, y0, x1, y1 = label.box_px
    assert label.landmarks68_px.shape == (68, 2)
    margin = 0.05 * (x1 - x0)  # the chin may touch the bottom edge of dlib's box
    assert (label.landmarks68_px[:, 0] >= x0 - margin).all() and (label.landmarks68_px[:, 0] <= x1 + margin).all()
    assert (label.landmarks68_px[:, 1] >= y0 - margin).all() and (label.landmarks68_px[:, 1] <= y1 + margin).all()
    # Anatomy, not just bounds: eyes above the nose tip above the mouth, left eye left of right eye.
    eyes_y = label.landmarks68_px[36:48, 1].mean()
    assert eyes_y < label.landmarks68_px[30, 1] < label.landmarks68_px[48:68, 1].mean()
    assert label.landmarks68_px[36:42, 0].mean() < label.landmarks68_px[42:48, 0].mean()


def test_eye_band_covers_both_eyes():
    from eyeglass3d.geometry.alignment import EYE_BAND, region_matrix, transform_points
    from eyeglass3d.training.glasses_labels import BAND_HW, eye_band

    points5_px = np.array([[70, 90], [130, 90], [100, 125], [75, 150], [125, 150]], np.float32)
    image = np.zeros((200, 200, 3), np.uint8)
    image[85:96, 65:76] = 255  # a bright patch on the image-left eye
    band = eye_band(image, points5_px)
    assert band.shape == (*BAND_HW, 3) and band.dtype == np.uint8
    eyes = transform_points(region_matrix(points5_px, EYE_BAND, BAND_HW), points5_px[:2])
    assert ((eyes >= 0) & (eyes < np.array(BAND_HW[::-1]))).all()
    x, y = np.round(eyes[0]).astype(int)
    assert band[y, x].min() > 200 and band[:, BAND_HW[1] - 5 :].max() == 0


def test_glasses_classifier_learns_a_toy_frame_and_csv_round_trips(tmp_path):
    import torch

    from eyeglass3d.training.datasets import read_glasses_csv
    from eyeglass3d.training.glasses_labels import (
        BAND_HW, fold_of, glasses_probability, train_classifier, write_glasses_csv,
    )

    torch.set_num_threads(1)
    rng = np.random.default_rng(4)
    clean = rng.integers(90, 160, size=(96, *BAND_HW, 3), dtype=np.uint8)
    framed = clean.copy()
    framed[:, 12:15, 8:80] = 20  # a dark top bar, like a frame
    model = train_classifier(framed[:64], clean[:64], epochs=4, batch_size=32)
    probs_framed, probs_clean = glasses_probability(model, framed[64:]), glasses_probability(model, clean[64:])
    assert probs_framed.shape == (32,) and probs_framed.min() > probs_clean.max()

    files = ["b.jpg", "a.jpg", "c.jpg"]
    hand = {file_key("c.jpg"): True}  # a verdict by eye beats the threshold
    write_glasses_csv(tmp_path / "g.csv", files, np.array([0.2, 0.7, 0.1]), 0.5, "made in a test\nsecond line", hand)
    text = (tmp_path / "g.csv").read_text()
    assert text.startswith("# made in a test\n# second line\nkey,glasses_prob,wears_glasses,checked_by_hand\n")
    a, b, c = (file_key(f) for f in ("a.jpg", "b.jpg", "c.jpg"))
    assert f"{c},0.1000,1,1" in text and f"{a},0.7000,1,0" in text and "a.jpg" not in text
    assert read_glasses_csv(tmp_path / "g.csv") == {a: (0.7, True), b: (0.2, False), c: (0.1, True)}
    # Fold bits are sha1 hex digits 8-16, independent of the split's first 8: fixed known answers.
    assert [fold_of(f"{i}.jpg", 3) for i in range(12)] == [1, 0, 2, 1, 1, 1, 1, 1, 2, 0, 0, 2]
    assert fold_of("b.jpg", 5) == 1


def test_recorded_glasses_labels_cover_every_file_and_keep_the_hand_verdicts():
    from eyeglass3d.training.datasets import GLASSES_CSV, read_glasses_csv
    from eyeglass3d.training.glasses_labels import CANDIDATE_PROB, HAND_CSV, read_hand_labels

    labels = read_glasses_csv(GLASSES_CSV)
    hand = read_hand_labels(HAND_CSV)
    assert set(labels) == set(read_split_csv())
    assert all(labels[key][1] == wears for key, wears in hand.items())
    # The real-world test set: every test photo the classifier flagged was judged by eye.
    test = {key for key, split in read_split_csv().items() if split == "test"}
    assert all(file in hand for file in test if labels[file][0] >= CANDIDATE_PROB)
    wearers = sum(labels[file][1] for file in test)
    assert 0.05 < wearers / len(test) < 0.25
