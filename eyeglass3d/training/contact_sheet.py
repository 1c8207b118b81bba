"""A grid of synthetic-glasses samples on UTKFace faces, to look at what the compositor makes.

    python -m eyeglass3d.training.contact_sheet --out runs/contact_sheet.png --count 48 --seed 0

Each cell shows the composite and, beside it, the mask in red over it, with the frame shape
("mesh" for the 3D model), lens kind and frame material written on top. Landmarks come from the dlib teacher on the fly.
UTKFace is for non-commercial research only: keep the sheet inside the project (`runs/` is not
tracked).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..paths import data_root
from .compositor import GlassesCompositor
from .teacher import DlibTeacher

COLUMNS = 4  # cells per row; a cell is two faces wide


def contact_sheet(count: int, seed: int, mesh_probability: float) -> tuple[np.ndarray, list[float]]:
    """The sheet (RGB uint8) and the compositor's time per sample in milliseconds."""
    folder = data_root() / "faces" / "utkface"
    rows = list(csv.DictReader(open(folder / "labels.csv", newline="")))
    rng = np.random.default_rng(seed)
    teacher = DlibTeacher(with_descriptor=False)
    compositor = GlassesCompositor(seed=seed, mesh_probability=mesh_probability)
    cells, timings = [], []
    for index in rng.permutation(len(rows)):
        if len(cells) == count:
            break
        image = np.asarray(Image.open(folder / "images" / rows[index]["file"]).convert("RGB"))
        label = teacher(image)
        if not label.detected:
            continue
        start = time.perf_counter()
        sample = compositor(image, label.landmarks68_px)
        timings.append((time.perf_counter() - start) * 1000)
        overlay = sample.image.copy()
        overlay[sample.mask] = (overlay[sample.mask] * 0.45 + np.array([140, 0, 0])).astype(np.uint8)
        cell = np.concatenate([sample.image, overlay], 1)
        p = sample.params
        caption = f"{p['shape']} {p['lens']} {p['material']}"
        cell = cv2.resize(cell, (400, 200), interpolation=cv2.INTER_AREA)
        cell[:17] = cell[:17] // 3
        cv2.putText(cell, caption, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 140), 1, cv2.LINE_AA)
        cells.append(cell)
    while len(cells) % COLUMNS:
        cells.append(np.zeros_like(cells[0]))
    grid = [np.concatenate(cells[i : i + COLUMNS], 1) for i in range(0, len(cells), COLUMNS)]
    return np.concatenate(grid, 0), timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/contact_sheet.png"))
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mesh-probability", type=float, default=0.35)
    args = parser.parse_args(argv)
    sheet, timings = contact_sheet(args.count, args.seed, args.mesh_probability)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(args.out)
    median, slowest = np.median(timings), np.max(timings)
    print(f"wrote {args.out} ({len(timings)} faces); compositor wall time median {median:.1f} ms, max {slowest:.1f} ms")


if __name__ == "__main__":
    main()
