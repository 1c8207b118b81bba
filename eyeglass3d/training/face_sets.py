"""The three real-face sets the networks learn from, and how each is found, keyed and split.

    utkface      9,780 tight 200x200 crops (UTKFace terms: non-commercial research)
    lfw          6,922 in-the-wild 250x250 news photos of 3,554 known people (LFW dev: folds 1-5 only)
    celebamask   942 sharp 512x512 CelebA-HQ faces with human parsing masks, none wearing glasses

A file is named by its path relative to the set's image folder ("Name/Name_0001.jpg" for LFW). Every
committed CSV keys files by `file_key` (a hash of that path) rather than the path itself: UTKFace's
names carry age, gender and race labels that its terms say not to publish.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from eyeglass3d.paths import REPO_ROOT, data_root

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
KEY_HEX_DIGITS = 16  # 64 bits: no collision among ~10^4 files of a set


def file_key(relative_path: str) -> str:
    """The public key of one file: a sha1 prefix of its path relative to the set's image folder."""
    return hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:KEY_HEX_DIGITS]


@dataclass(frozen=True)
class FaceSet:
    name: str
    folder: str  # under the shared data root
    pattern: str  # glob below `images/` that lists the set's photos

    @property
    def root(self) -> Path:
        return data_root() / self.folder

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def split_csv(self) -> Path:
        return SPLITS_DIR / f"{self.name}_split.csv"

    @property
    def default_labels(self) -> Path:
        """The teacher-label cache `label_faces` writes (git-ignored: derived from the photos)."""
        return REPO_ROOT / "cache" / f"{self.name}_labels.npz"

    def files(self) -> list[str]:
        """Every photo of the set, as sorted paths relative to `images_dir`."""
        return sorted(p.relative_to(self.images_dir).as_posix() for p in self.images_dir.glob(self.pattern))

    def resolve(self, keys) -> dict[str, str]:
        """key -> relative path for the keys that name a photo of the set (others are left out)."""
        wanted = set(keys)
        return {key: f for f in self.files() if (key := file_key(f)) in wanted}


FACE_SETS = {
    "utkface": FaceSet("utkface", "faces/utkface", "*.jpg"),
    "lfw": FaceSet("lfw", "lfw_dev", "*/*.jpg"),
    "celebamask": FaceSet("celebamask", "celebamask_mini", "*.jpg"),
}


def face_set(name: str) -> FaceSet:
    if name not in FACE_SETS:
        raise ValueError(f"unknown face set {name!r}; expected one of {sorted(FACE_SETS)}")
    return FACE_SETS[name]
