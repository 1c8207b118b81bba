"""The fixed train/val/test split of the face data, shared by every network.

Each file goes to a split by a stable hash of its name alone, so the assignment never depends on
which images got good labels, on the order of a directory listing, or on a random seed. The result is
also written to `splits/utkface_split.csv` so that the held-out images are visible in the repo.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections.abc import Iterable
from pathlib import Path

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
UTKFACE_SPLIT_CSV = SPLITS_DIR / "utkface_split.csv"
SPLIT_NAMES = ("train", "val", "test")
# Per-mille boundaries: [0, 800) train, [800, 900) val, [900, 1000) test.
SPLIT_PER_MILLE = {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}

_CSV_HEADER_COMMENT = """\
# Fixed train/val/test split of UTKFace crop_part1 (9,780 files), 80/10/10 by file name:
# split = bucket of int(sha1(file_name)[:8], 16) % 1000 (see eyeglass3d/training/splits.py).
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


def write_split_csv(file_names: Iterable[str], path: str | Path = UTKFACE_SPLIT_CSV) -> None:
    rows = sorted(set(file_names))
    with open(path, "w", newline="") as handle:
        handle.write(_CSV_HEADER_COMMENT)
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "split"])
        writer.writerows((name, assign_split(name)) for name in rows)


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
    from eyeglass3d.paths import data_root

    parser = argparse.ArgumentParser(description="Write the UTKFace split CSV from the image folder.")
    parser.add_argument("--images", type=Path, default=data_root() / "faces" / "utkface" / "images")
    parser.add_argument("--out", type=Path, default=UTKFACE_SPLIT_CSV)
    args = parser.parse_args(argv)
    write_split_csv((p.name for p in args.images.glob("*.jpg")), args.out)
    counts = {name: 0 for name in SPLIT_NAMES}
    for split in read_split_csv(args.out).values():
        counts[split] += 1
    print(counts)


if __name__ == "__main__":
    main()
