"""The regressor's training set: canonical crops, their pseudo ground truth, and a de-glassed twin of each.

    python -m eyeglass3d.training.regressor_data --split train --shard 0/2     # one process per shard
    python -m eyeglass3d.training.regressor_data --split train --merge 2      # -> cache/regressor_data_train.npz

Per glasses-free face of the split (the UTKFace terms apply: non-commercial research only):

* ``clean``: the canonical crop at `CROP_SIZE`, cut from MTCNN's five points as the pipeline cuts it;
* ``deglassed``: (the eye band's rows of) the same face wearing its cached synthetic glasses (`glasses_cache`, copy 0) after the
  shipped landmarker, parser and inpainter ran on it exactly as `reconstruct` runs them, cropped the same
  way. Trained towards the clean face's targets, it is what teaches the regressor that glasses (and what the
  inpainter leaves of them) must not move the shape;
* pseudo ground truth: `fit_landmarks` on dlib's 68 points (identity, expression, pose), then the linear
  albedo and SH-light solves of `fit_photometric` on the 224-px crop (texture, lighting);
* the teacher's landmarks in crop pixels and dlib's 128-D descriptor (the target of the face-feature network).

Crops are stored as WebP (quality 80, ~1.4 KB a crop) and numbers as float16, so the set stays small enough to travel to a training machine.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

from eyeglass3d.geometry.alignment import warp_crop
from eyeglass3d.geometry.fitting import fit_landmarks
from eyeglass3d.geometry.photometric_fit import fit_photometric
from eyeglass3d.models.face_model import join_coefficients
from eyeglass3d.paths import REPO_ROOT, default_weights
from eyeglass3d.training.datasets import DEFAULT_LABELS, FaceRecords, canonical_crop
from eyeglass3d.training.glasses_cache import glasses_copies

LOG = logging.getLogger("eyeglass3d.regressor_data")
CROP_SIZE = 128
FIT_SIZE = 224
BATCH = 32
WEBP_QUALITY = 80
# Rows of the crop that hold `alignment.EYE_BAND` (y 0.20-0.58), the only place the parser and the inpainter
# change: the de-glassed twin is stored as these rows alone, pasted over its clean crop when loaded.
BAND_ROWS = (24, 76)
GLASSES_SEEDS = {"train": (100, 2), "val": (101, 1)}  # the parser's and inpainter's caches, reused


def encode_image(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, "WEBP", quality=WEBP_QUALITY)
    return buffer.getvalue()


def decode_images(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 from the concatenated encoded images and their (N + 1) offsets."""
    return np.stack(
        [np.asarray(PIL.Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB")) for a, b in zip(offsets, offsets[1:])]
    )


def load_crops(data) -> tuple[np.ndarray, np.ndarray]:
    """(clean, deglassed) crops (N, S, S, 3) uint8 of a loaded `regressor_data_<split>.npz`."""
    clean = decode_images(data["clean_webp"], data["clean_offsets"])
    deglassed = clean.copy()
    deglassed[:, slice(*BAND_ROWS)] = decode_images(data["deglassed_webp"], data["deglassed_offsets"])
    return clean, deglassed


def pack_images(images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(item) for item in images]).astype(np.int64)
    return np.frombuffer(b"".join(images), np.uint8), offsets


def deglass(pipe, image: np.ndarray, points5: np.ndarray) -> np.ndarray:
    """What `reconstruct` feeds its regressor for this photo: the pipeline's own landmark, parse and inpaint
    stages, so the twins cannot drift from inference."""
    landmarks = pipe.landmarker.predict(image, points5)
    _, mask, _ = pipe._parse(image, points5, landmarks)
    return pipe._inpaint(image, points5, landmarks, mask)[0] if mask.any() else image


@torch.no_grad()
def build_shard(split: str, shard: int, shards: int, weights: Path, labels_path: Path) -> dict[str, np.ndarray]:
    from eyeglass3d.pipeline import Eyeglass3DPipeline

    records = FaceRecords(split, labels_path=labels_path, glasses="without")
    seed, copies = GLASSES_SEEDS[split]
    glasses = glasses_copies(records, copies, seed, REPO_ROOT / "cache", LOG)
    pipe = Eyeglass3DPipeline.from_pretrained(weights)
    face_model = pipe.face_model
    indices = np.arange(len(records))[shard::shards]
    LOG.info("%s shard %d/%d: %d faces", split, shard, shards, len(indices))
    columns: dict[str, list] = {k: [] for k in ("clean", "deglassed", "landmarks", "coefficients", "rmse", "photo")}
    for start in tqdm(range(0, len(indices), BATCH), desc=f"{split} {shard}/{shards}", mininterval=10):
        batch = indices[start : start + BATCH]
        fit_crops, fit_landmarks_px = [], []
        for index in batch:
            record = records[int(index)]
            crop, landmarks, matrix = canonical_crop(record.image, record.points5_px, record.landmarks68_px, CROP_SIZE)
            wearing = np.ascontiguousarray(glasses.images[int(index), 0])
            deglassed = warp_crop(deglass(pipe, wearing, record.points5_px), matrix, CROP_SIZE)
            columns["clean"].append(encode_image(crop))
            columns["deglassed"].append(encode_image(deglassed[slice(*BAND_ROWS)]))
            columns["landmarks"].append(landmarks)
            big, big_landmarks, _ = canonical_crop(record.image, record.points5_px, record.landmarks68_px, FIT_SIZE)
            fit_crops.append(big)
            fit_landmarks_px.append(big_landmarks)
        with torch.enable_grad():
            target = torch.from_numpy(np.stack(fit_landmarks_px)).float()
            fitted = fit_landmarks(face_model, target, FIT_SIZE)
            fitted = fit_photometric(face_model, np.stack(fit_crops), target, fitted, iterations=0, fit_shape=False)
        columns["coefficients"].append(join_coefficients({k: v.float() for k, v in fitted.items()}).numpy())
        columns["rmse"].append(fitted["landmark_rmse_px"].numpy())
        columns["photo"].append(fitted["photometric_error"].numpy())
    clean_blob, clean_offsets = pack_images(columns["clean"])
    deglassed_blob, deglassed_offsets = pack_images(columns["deglassed"])
    return {
        "files": np.array([records.files[i] for i in indices]),
        "clean_webp": clean_blob,
        "clean_offsets": clean_offsets,
        "deglassed_webp": deglassed_blob,
        "deglassed_offsets": deglassed_offsets,
        "landmarks_px": np.stack(columns["landmarks"]).astype(np.float16),
        "coefficients": np.concatenate(columns["coefficients"]).astype(np.float16),
        "fit_rmse_px": np.concatenate(columns["rmse"]).astype(np.float32) * (CROP_SIZE / FIT_SIZE),
        "photometric_error": np.concatenate(columns["photo"]).astype(np.float32),
        "descriptor": records.descriptors[indices].astype(np.float16),
        "crop_size": np.int64(CROP_SIZE),
    }


def merge(paths: list[Path]) -> dict[str, np.ndarray]:
    """Concatenate shards; image offsets are rebased onto the joined byte strings."""
    parts = [dict(np.load(path)) for path in paths]
    merged = {}
    for name in parts[0]:
        if name.endswith("_offsets"):
            rebased, base = [np.zeros(1, np.int64)], 0
            for part in parts:
                rebased.append(part[name][1:] + base)
                base += part[name][-1]
            merged[name] = np.concatenate(rebased)
        elif name == "crop_size":
            merged[name] = parts[0][name]
        else:
            merged[name] = np.concatenate([part[name] for part in parts])
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=sorted(GLASSES_SEEDS), required=True)
    parser.add_argument("--shard", default="0/1", help="i/n: this process takes every n-th face from the i-th")
    parser.add_argument("--merge", type=int, default=0, help="join this many finished shards instead")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "cache" / "regressor_data")
    parser.add_argument("--weights", type=Path, default=default_weights())
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / f"{args.split}.log")],
    )
    if args.merge:
        shards = [args.out / f"{args.split}_{i}of{args.merge}.npz" for i in range(args.merge)]
        target = args.out.parent / f"{args.out.name}_{args.split}.npz"
        np.savez_compressed(target, **merge(shards))
        LOG.info("merged %d shards into %s (%.1f MB)", len(shards), target, target.stat().st_size / 1e6)
        return
    shard, shards = (int(part) for part in args.shard.split("/"))
    target = args.out / f"{args.split}_{shard}of{shards}.npz"
    if target.exists():
        LOG.info("%s exists, nothing to do", target)
        return
    clock = time.time()
    data = build_shard(args.split, shard, shards, args.weights, args.labels)
    np.savez_compressed(target.with_suffix(".tmp.npz"), **data)
    target.with_suffix(".tmp.npz").rename(target)
    LOG.info("wrote %s: %d faces in %.0f s, fit rmse median %.2f px (128-px crop), images %.1f MB",
             target, len(data["files"]), time.time() - clock, float(np.median(data["fit_rmse_px"])),
             (data["clean_webp"].size + data["deglassed_webp"].size) / 1e6)


if __name__ == "__main__":
    main()
