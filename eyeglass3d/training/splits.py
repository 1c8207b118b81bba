"""The fixed train/val/test splits of the face sets, shared by every network.

UTKFace and CelebAMask: each file goes to a split by a stable hash of its name, so the assignment
never depends on which images got good labels, on the order of a directory listing, or on a random
seed. One exception: UTKFace holds the same photo more than once (re-crops, colour and grey copies,
other age labels), about 5 % of the held-out files had a copy in train. Such near-duplicates (dlib
descriptor distance below 0.2) form a group that goes to the split of its first file name.

LFW: by person, so that the standard pairs stay usable for testing: the people of folds 1-3 of
`pairs_dev.txt` and the people in no fold train, fold 4's people are val, fold 5's are test (LFW's
folds are identity-disjoint).

The result is written to `splits/<set>_split.csv`, keyed by `face_sets.file_key` (a hash of the
file's path, since UTKFace names carry labels its terms say not to publish), so that the held-out
images are fixed in the repo.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from eyeglass3d.training.face_sets import FACE_SETS, SPLITS_DIR, face_set, file_key

UTKFACE_SPLIT_CSV = SPLITS_DIR / "utkface_split.csv"
SPLIT_NAMES = ("train", "val", "test")
# Per-mille boundaries: [0, 800) train, [800, 900) val, [900, 1000) test.
SPLIT_PER_MILLE = {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}
# pairs_dev.txt folds (1-based) -> split; people in no fold train.
LFW_FOLD_SPLITS = {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}

# Same photo: 346 pairs of UTKFace files are below this; above it, pairs turn into look-alike babies
# (at 0.25 the groups chain into one of 116 files).
NEAR_DUPLICATE_DISTANCE = 0.2

_HEADERS = {
    "utkface": """\
Fixed train/val/test split of UTKFace crop_part1 (9,780 files), 80/10/10 by file name:
split = bucket of int(sha1(name)[:8], 16) % 1000 (see eyeglass3d/training/splits.py), where name is
the group's first file name for near-duplicate photos (dlib descriptor distance < 0.2) and the file's
own name otherwise. key = face_sets.file_key(file name), group = file_key(group's first file name).
Only hashed keys and split names are stored here, no names or pixels. The images themselves are under
the UTKFace terms (non-commercial research only, not redistributed): see ../shared/data/faces/utkface/README.md.""",
    "lfw": """\
Fixed train/val/test split of LFW dev (lfw_dev: 6,922 photos of 3,554 people) by person: the people
of folds 1-3 of pairs_dev.txt and the people in no fold are train, fold 4's people val, fold 5's test.
key = face_sets.file_key("Name/Name_0001.jpg"), group = file_key(person name).
LFW has no formal licence: news photos, research and evaluation inside the project only (not redistributed).""",
    "celebamask": """\
Fixed train/val/test split of CelebAMask mini (942 CelebA-HQ faces), 80/10/10 by file name:
split = bucket of int(sha1(name)[:8], 16) % 1000; key = face_sets.file_key(file name).
CelebAMask-HQ terms: non-commercial research only, not redistributed.""",
}


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


def read_lfw_pair_folds(pairs_path: str | Path) -> dict[str, int]:
    """person -> 1-based fold of LFW's `pairs.txt` format (header `folds<TAB>n`, then per fold n
    same-person lines `name i j` and n different-person lines `name1 i name2 j`)."""
    lines = Path(pairs_path).read_text().split("\n")
    folds, per_fold = (int(v) for v in lines[0].split())
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    if len(rows) != 2 * folds * per_fold:
        raise ValueError(f"{pairs_path}: expected {2 * folds * per_fold} pairs, found {len(rows)}")
    fold_of_person: dict[str, int] = {}
    for index, row in enumerate(rows):
        fold = index // (2 * per_fold) + 1
        for person in (row[0],) if len(row) == 3 else (row[0], row[2]):
            if fold_of_person.setdefault(person, fold) != fold:
                raise ValueError(f"{person} is in folds {fold_of_person[person]} and {fold}: folds must be identity-disjoint")
    return fold_of_person


def lfw_split_of_person(person: str, folds: Mapping[str, int]) -> str:
    return LFW_FOLD_SPLITS[folds[person]] if person in folds else "train"


def split_rows(set_name: str, files: Iterable[str], groups: Mapping[str, str] | None = None,
               lfw_folds: Mapping[str, int] | None = None) -> list[tuple[str, str, str]]:
    """(key, split, group key) per file, sorted by key: the rule of the set (see module doc)."""
    groups = groups or {}
    rows = []
    for name in sorted(set(files)):
        if set_name == "lfw":
            person = name.split("/")[0]
            rows.append((file_key(name), lfw_split_of_person(person, lfw_folds or {}), file_key(person)))
        else:
            group = groups.get(name, "")
            rows.append((file_key(name), assign_split(group or name), file_key(group) if group else ""))
    return sorted(rows)


def write_split_csv(rows: Iterable[tuple[str, str, str]], path: str | Path, header: str) -> None:
    with open(path, "w", newline="") as handle:
        handle.writelines(f"# {line}\n" for line in header.strip().splitlines())
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["key", "split", "group"])
        writer.writerows(rows)


def read_keyed_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of one of the committed CSVs (comment lines skipped)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))


def read_split_csv(path: str | Path = UTKFACE_SPLIT_CSV) -> dict[str, str]:
    """file key -> split name, as recorded in the CSV."""
    return {row["key"]: row["split"] for row in read_keyed_csv(path)}


def split_of_files(files: Iterable[str], path: str | Path = UTKFACE_SPLIT_CSV) -> list[str | None]:
    """The recorded split of each file (None for a file the CSV does not hold)."""
    splits = read_split_csv(path)
    return [splits.get(file_key(str(f))) for f in files]


def load_split(name: str, set_name: str = "utkface") -> list[str]:
    """The sorted file names (relative paths) of one split of a face set, resolved against its images."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
    faces = face_set(set_name)
    splits = read_split_csv(faces.split_csv)
    return [f for f in faces.files() if splits.get(file_key(f)) == name]


def main(argv: list[str] | None = None) -> None:
    from eyeglass3d.paths import REPO_ROOT

    parser = argparse.ArgumentParser(description="Write a face set's split CSV from its image folder.")
    parser.add_argument("--set", default="utkface", choices=sorted(FACE_SETS))
    parser.add_argument("--labels", type=Path, default=None,
                        help="UTKFace: label_faces cache whose descriptors group near-duplicate photos")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    faces = face_set(args.set)
    files = faces.files()
    groups, folds = {}, None
    if args.set == "utkface":
        with np.load(args.labels or REPO_ROOT / "cache" / "utkface_labels.npz") as labels:
            groups = near_duplicate_groups([str(f) for f in labels["files"]], labels["descriptor"])
    elif args.set == "lfw":
        folds = read_lfw_pair_folds(faces.root / "pairs_dev.txt")
    out = args.out or faces.split_csv
    write_split_csv(split_rows(args.set, files, groups, folds), out, _HEADERS[args.set])
    counts = {name: 0 for name in SPLIT_NAMES}
    for split in read_split_csv(out).values():
        counts[split] += 1
    print(f"{args.set}: {len(files)} files; {len(groups)} in near-duplicate groups; {counts}")


if __name__ == "__main__":
    main()
