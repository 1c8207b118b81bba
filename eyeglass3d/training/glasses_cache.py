"""Faces wearing synthetic glasses, composited once and kept on disk with their exact masks.

The compositor costs ~10 ms a face; drawing it inside a training loop would halve the speed on two
cores, and fixed copies make validation figures comparable between epochs. The cache name hashes
the file list, copy count and seed, so new labels never meet stale images.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from eyeglass3d.training.compositor import GlassesCompositor
from eyeglass3d.training.datasets import FaceRecords


class GlassesCopies(NamedTuple):
    images: np.ndarray  # (N, copies, H, W, 3) uint8: the faces wearing glasses
    masks: np.ndarray  # (N, copies, H, W) bool: every pixel each pair of glasses changed


def glasses_copies(
    records: FaceRecords, copies: int, seed: int, cache_dir: Path, log: logging.Logger | None = None
) -> GlassesCopies:
    """`copies` composites per face (memory-mapped), drawn with rng [seed, index, copy]."""
    digest = hashlib.sha1(("\n".join(records.files) + f"|{copies}|{seed}").encode()).hexdigest()[:12]
    paths = [cache_dir / f"glasses_{digest}.npy", cache_dir / f"glasses_{digest}_mask.npy"]
    if all(path.exists() for path in paths):
        images, masks = (np.load(path, mmap_mode="r") for path in paths)
        if images.shape[:2] == masks.shape[:2] == (len(records), copies):
            return GlassesCopies(images, masks)
    if log is not None:
        log.info("compositing %d x %d glasses images into %s", len(records), copies, paths[0])
    shape = records.image(0).shape
    temporary = [path.with_suffix(".tmp.npy") for path in paths]
    images = np.lib.format.open_memmap(temporary[0], "w+", np.uint8, (len(records), copies, *shape))
    masks = np.lib.format.open_memmap(temporary[1], "w+", np.bool_, (len(records), copies, *shape[:2]))
    compositor = GlassesCompositor(seed=seed)
    for index in tqdm(range(len(records)), desc="glasses", mininterval=5):
        record = records[index]
        for copy in range(copies):
            sample = compositor(record.image, record.landmarks68_px, np.random.default_rng([seed, index, copy]))
            images[index, copy], masks[index, copy] = sample.image, sample.mask
    for array in (images, masks):
        array.flush()
    del images, masks
    for source, target in zip(temporary, paths):
        source.rename(target)
    return GlassesCopies(*(np.load(path, mmap_mode="r") for path in paths))
