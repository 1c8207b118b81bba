"""The fixed train/val/test split of the face data, shared by every network.

Each file goes to a split by a stable hash of its name, so the assignment never depends on which
images got good labels, on the order of a directory listing, or on a random seed. One exception:
UTKFace holds the same photo more than once (re-crops, colour and grey copies, other age labels),
about 5 % of the held-out files had a copy in train. Such near-duplicates (dlib descriptor distance
below 0.2) form a group that goes to the split of its first file name. The result is written to
`splits/utkface_split.csv` so that the held-out images are visible in the repo.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
UTKFACE_SPLIT_CSV = SPLITS_DIR / "utkface_split.csv"
SPLIT_NAMES = ("train", "val", "test")
# Per-mille boundaries: [0, 800) train, [800, 900) val, [900, 1000) test.
SPLIT_PER_MILLE = {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}

# Same photo: 346 pairs of UTKFace files are below this; above it, pairs turn into look-alike babies
# (at 0.25 the groups chain into one of 116 files).
NEAR_DUPLICATE_DISTANCE = 0.2

_CSV_HEADER_COMMENT = """\
# Fixed train/val/test split of UTKFace crop_part1 (9,780 files), 80/10/10 by file name:
# split = bucket of int(sha1(key)[:8], 16) % 1000 (see eyeglass3d/training/splits.py), where key is
# `group` when set (near-duplicate photos: dlib descriptor distance < 0.2; group = first file name
# of the group) and the file name otherwise.
# Only file names and split names are stored here, no pixels. The images themselves are under the
# UTKFace terms (non-commercial research only, not redistributed): see ../shared/data/faces/utkface/README.md.
"""


def assign_split(file_name: str) -> str:
    """'train', 'val' or 'test' for one file name; the same answer on every machine and run."""
    bucket = int(hashlib.sha1(file_name.encode("utf-8")).hexdigest()[:8], 16) % 1000
    for name, (low, high) in SPLIT_PER_MILLE.items():
        if low <= bucket < high:
            return name
    raise AssertionError(bucket)


def near_duplicate_groups(
    file_names: list[str], descriptors: np.ndarray, max_distance: float = NEAR_DUPLICATE_DISTANCE
) -> dict[str, str]:
    """file -> first file name of its group, for files with a near-duplicate (by dlib descriptor)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    descriptors = np.asarray(descriptors, np.float64)
    squared = (descriptors**2).sum(1)
    distance_sq = squared[:, None] + squared[None] - 2 * descriptors @ descriptors.T
    close = distance_sq < max_distance**2
    np.fill_diagonal(close, False)
    _, component = connected_components(csr_matrix(close), directed=False)
    groups: dict[str, str] = {}
    for label in np.unique(component[close.any(1)]):
        members = sorted(file_names[i] for i in np.flatnonzero(component == label))
        groups.update((member, members[0]) for member in members)
    return groups


def write_split_csv(
    file_names: Iterable[str], path: str | Path = UTKFACE_SPLIT_CSV, groups: dict[str, str] | None = None
) -> None:
    """Rows (file, split, group); `groups` maps near-duplicates to their group key (see module doc)."""
    groups = groups or {}
    rows = sorted(set(file_names))
    with open(path, "w", newline="") as handle:
        handle.write(_CSV_HEADER_COMMENT)
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "split", "group"])
        for name in rows:
            group = groups.get(name, "")
            writer.writerow((name, assign_split(group or name), group))


def read_split_csv(path: str | Path = UTKFACE_SPLIT_CSV) -> dict[str, str]:
    """file name -> split name, as recorded in the CSV."""
    with open(path, newline="") as handle:
        lines = (line for line in handle if not line.startswith("#"))
        return {row["file"]: row["split"] for row in csv.DictReader(lines)}


def load_split(name: str, path: str | Path = UTKFACE_SPLIT_CSV) -> list[str]:
    """The sorted file names of one split ('train', 'val', 'test') of the recorded CSV."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
    return sorted(file for file, split in read_split_csv(path).items() if split == name)


def main(argv: list[str] | None = None) -> None:
    from eyeglass3d.paths import REPO_ROOT, data_root

    parser = argparse.ArgumentParser(description="Write the UTKFace split CSV from the image folder.")
    parser.add_argument("--images", type=Path, default=data_root() / "faces" / "utkface" / "images")
    parser.add_argument("--labels", type=Path, default=REPO_ROOT / "cache" / "utkface_labels.npz",
                        help="label_faces cache whose descriptors group near-duplicate photos")
    parser.add_argument("--out", type=Path, default=UTKFACE_SPLIT_CSV)
    args = parser.parse_args(argv)
    with np.load(args.labels) as labels:
        groups = near_duplicate_groups([str(f) for f in labels["files"]], labels["descriptor"])
    write_split_csv((p.name for p in args.images.glob("*.jpg")), args.out, groups)
    counts = {name: 0 for name in SPLIT_NAMES}
    for split in read_split_csv(args.out).values():
        counts[split] += 1
    print(f"{len(groups)} files in {len(set(groups.values()))} near-duplicate groups; {counts}")


if __name__ == "__main__":
    main()
