"""Real faces with their teacher labels, the one loader every training script shares.

Faces come from one of the sets of `face_sets` (UTKFace, LFW, CelebAMask). A record is
`(image, landmarks68_px, points5_px, descriptor, wears_glasses)`:

    image            (H, W, 3) uint8 RGB, the photo as stored (200, 250 or 512 px square)
    landmarks68_px   (68, 2) float32, dlib's landmarks in image pixels
    points5_px       (5, 2) float32, our MTCNN detector's five points in image pixels (the crop
                     networks see at inference is cut from these: `canonical_crop`); where MTCNN
                     found no face (quality 0) or did not run, the same five points from the 68 landmarks
    descriptor       (128,) float32, dlib's identity descriptor of the (glasses-free or not) photo
    wears_glasses    bool, from `splits/utkface_glasses.csv` (UTKFace; other sets: False)

Images are decoded once and kept in RAM as uint8 (about 117 KB per UTKFace face, 1.2 GB for all 9,780);
call `preload()` before forking DataLoader workers so that they share the pages.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from eyeglass3d.geometry.alignment import crop_matrix, transform_points, warp_crop
from eyeglass3d.training import face_sets
from eyeglass3d.training.face_sets import SPLITS_DIR, file_key
from eyeglass3d.training.splits import read_keyed_csv, read_split_csv

DEFAULT_LABELS = face_sets.face_set("utkface").default_labels
GLASSES_CSV = SPLITS_DIR / "utkface_glasses.csv"


def utkface_images_dir() -> Path:
    return face_sets.face_set("utkface").images_dir


def five_points_from_landmarks68(landmarks68_px: np.ndarray) -> np.ndarray:
    """The detector's five points (eye centres, nose tip, mouth corners; image-left first) from 68 landmarks.

    Works on (68, 2) or batches (..., 68, 2).
    """
    landmarks = np.asarray(landmarks68_px, np.float64)
    points = [landmarks[..., 36:42, :].mean(-2), landmarks[..., 42:48, :].mean(-2)]
    points += [landmarks[..., i, :] for i in (30, 48, 54)]
    return np.stack(points, axis=-2).astype(np.float32)


class FaceRecord(NamedTuple):
    image: np.ndarray
    landmarks68_px: np.ndarray
    points5_px: np.ndarray
    descriptor: np.ndarray
    wears_glasses: bool


def read_glasses_csv(path: str | Path = GLASSES_CSV) -> dict[str, tuple[float, bool]]:
    """file key -> (glasses_prob, wears_glasses) as recorded by `glasses_labels`."""
    return {r["key"]: (float(r["glasses_prob"]), r["wears_glasses"] == "1") for r in read_keyed_csv(path)}


class FaceRecords:
    """The labelled faces of one split, filtered by label quality and, optionally, by eyeglasses.

    Args:
        split: 'train', 'val', 'test', or None for every labelled file.
        face_set: 'utkface', 'lfw' or 'celebamask'; sets the default labels, images and split.
        min_quality: keep files whose `label_faces` quality flag is at least this (1 keeps the
            whole-crop fallback labels, 2 only faces dlib's detector found; 0 keeps the drops too).
        glasses: 'any', 'without' (inpainting targets, clean identities) or 'with' (real wearers).
        glasses_csv: the wearer labels (UTKFace only); None when they are not needed (every face
            counts as clean).
    """

    def __init__(
        self,
        split: str | None = "train",
        *,
        face_set: str = "utkface",
        labels_path: str | Path | None = None,
        images_dir: str | Path | None = None,
        split_csv: str | Path | None = None,
        glasses_csv: str | Path | None = GLASSES_CSV,
        min_quality: int = 1,
        glasses: str = "any",
    ):
        if glasses not in ("any", "without", "with"):
            raise ValueError(f"glasses must be 'any', 'without' or 'with', got {glasses!r}")
        if face_set != "utkface" and glasses_csv == GLASSES_CSV:
            glasses_csv = None  # the wearer labels are UTKFace's; the other sets have none
        if glasses != "any" and glasses_csv is None:
            raise ValueError(f"filtering {face_set} by eyeglasses needs wearer labels (glasses_csv)")
        faces = face_sets.face_set(face_set)
        self.face_set = face_set
        self.images_dir = Path(images_dir) if images_dir is not None else faces.images_dir
        with np.load(labels_path if labels_path is not None else faces.default_labels) as labels:
            keep = labels["quality"] >= min_quality
            if split is not None:
                splits = read_split_csv(split_csv if split_csv is not None else faces.split_csv)
                keep &= np.array([splits.get(file_key(str(f))) == split for f in labels["files"]])
            columns = {name: labels[name][keep] for name in
                       ("files", "landmarks68", "points5", "descriptor", "quality")}
        worn = read_glasses_csv(glasses_csv) if glasses_csv is not None else {}
        wears = np.array([worn.get(file_key(str(f)), (0.0, False))[1] for f in columns["files"]], bool)
        if glasses != "any":
            chosen = wears if glasses == "with" else ~wears
            columns = {name: column[chosen] for name, column in columns.items()}
            wears = wears[chosen]
        self.files = [str(f) for f in columns["files"]]
        self.landmarks68_px = columns["landmarks68"]
        has_points5 = np.isfinite(columns["points5"]).all(axis=(1, 2))
        self.points5_px = np.where(
            has_points5[:, None, None], columns["points5"], five_points_from_landmarks68(self.landmarks68_px)
        ).astype(np.float32)
        self.descriptors = columns["descriptor"]
        self.quality = columns["quality"]
        self.wears_glasses = wears
        self._images: np.ndarray | None = None
        self._loaded = np.zeros(len(self.files), bool)

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> np.ndarray:
        if self._images is None:
            first = _read_rgb(self.images_dir / self.files[0])
            # np.empty reserves address space only; pages are touched as images are read.
            self._images = np.empty((len(self.files), *first.shape), np.uint8)
        if not self._loaded[index]:
            self._images[index] = _read_rgb(self.images_dir / self.files[index])
            self._loaded[index] = True
        return self._images[index]

    def preload(self) -> FaceRecords:
        for index in range(len(self)):
            self.image(index)
        return self

    def __getitem__(self, index: int) -> FaceRecord:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return FaceRecord(
            self.image(index), self.landmarks68_px[index], self.points5_px[index], self.descriptors[index],
            bool(self.wears_glasses[index]),
        )


def canonical_crop(
    image: np.ndarray, points5_px: np.ndarray, landmarks68_px: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The crop the pipeline cuts at inference: (crop uint8, landmarks in crop pixels, 2x3 matrix)."""
    matrix = crop_matrix(points5_px, size)
    crop = warp_crop(image, matrix, size)
    return crop, transform_points(matrix, landmarks68_px).astype(np.float32), matrix


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
