"""Find the UTKFace people who really wear eyeglasses.

    python -m eyeglass3d.training.glasses_labels [--threshold 0.3] [--sheets runs/glasses_labels]

Clean inpainting targets must come from glasses-free photos, and the real wearers are the real-world
test set, but UTKFace has no eyeglasses label. A tiny CNN on the eye band of the canonical crop
learns "glasses" from the compositor's glasses on each photo (positives) against the same photo
untouched (negatives), and scores real photos it did not train on (`cross_fitted_scores`). The
bands and scores are cached in `cache/`, which is git-ignored: the bands are UTKFace pixels.

Writes `splits/utkface_glasses.csv` (file, glasses_prob, wears_glasses, checked_by_hand), where
verdicts by eye from `splits/utkface_glasses_hand.csv` override the threshold, and contact sheets:
positives by score and the top-scored negatives (to set the threshold), and, without scores and in
file-name order, a random sample and the test-split candidates (to judge by eye).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from eyeglass3d.geometry.alignment import EYE_BAND, region_matrix
from eyeglass3d.paths import REPO_ROOT
from eyeglass3d.training.datasets import DEFAULT_LABELS, GLASSES_CSV, FaceRecords
from eyeglass3d.training.face_sets import file_key
from eyeglass3d.training.splits import SPLITS_DIR, load_split, read_keyed_csv, split_of_files

BAND_HW = (40, 88)  # EYE_BAND is 0.84 x 0.38 of the unit crop; 56 x 124 scored no better on hand-labelled photos
DEFAULT_BANDS = REPO_ROOT / "cache" / "utkface_glasses_bands.npz"
DEFAULT_SCORES = REPO_ROOT / "cache" / "utkface_glasses_scores.npz"
HAND_CSV = SPLITS_DIR / "utkface_glasses_hand.csv"
# Test-split photos scored at least this are all judged by eye; below it, about 1 wearer in 9 of a
# random sample was found (3 of 27).
CANDIDATE_PROB = 0.05
LOG = logging.getLogger("eyeglass3d.glasses_labels")


def eye_band(image: np.ndarray, points5_px: np.ndarray, size_hw: tuple[int, int] = BAND_HW) -> np.ndarray:
    """The eye band of the canonical crop, where the deleter and inpainter will look for glasses."""
    matrix = region_matrix(points5_px, EYE_BAND, size_hw)
    return cv2.warpAffine(image, matrix, size_hw[::-1], flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


class GlassesClassifier(ModelMixin, ConfigMixin):
    """Four conv blocks and a linear head: eye band (N, 3, H, W) in [0, 1] -> logit of "wears glasses".

    Each band is standardised on its own first, so exposure and skin tone do not carry the label.
    """

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        layers, previous = [], 3
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, 1)

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        mean = bands.mean(dim=(1, 2, 3), keepdim=True)
        std = bands.std(dim=(1, 2, 3), keepdim=True).clamp_min(0.02)
        features = self.features((bands - mean) / std)
        return self.head(features.mean(dim=(2, 3))).squeeze(1)


def build_bands(records: FaceRecords, seed: int = 0) -> dict[str, np.ndarray]:
    """The real eye band of every face, and the band of the same face wearing compositor glasses."""
    from tqdm import tqdm

    from eyeglass3d.training.compositor import GlassesCompositor

    compositor = GlassesCompositor(seed=seed)
    rng = np.random.default_rng(seed)
    real = np.empty((len(records), *BAND_HW, 3), np.uint8)
    synthetic = np.empty_like(real)
    for index in tqdm(range(len(records)), desc="eye bands", mininterval=5):
        image, landmarks68_px, points5_px, _, _ = records[index]
        real[index] = eye_band(image, points5_px)
        synthetic[index] = eye_band(compositor(image, landmarks68_px, rng).image, points5_px)
    return {"files": np.array(records.files), "real": real, "synthetic": synthetic}


def _to_tensor(bands: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bands).permute(0, 3, 1, 2).float() / 255.0


def _augment(bands: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror half of the batch, jitter gain and colour: all label-preserving for eyeglasses."""
    flip = torch.rand(len(bands), generator=generator) < 0.5
    bands = torch.where(flip[:, None, None, None], bands.flip(3), bands)
    gain = 1 + 0.25 * (torch.rand(len(bands), 1, 1, 1, generator=generator) * 2 - 1)
    tint = 1 + 0.08 * (torch.rand(len(bands), 3, 1, 1, generator=generator) * 2 - 1)
    bands = bands * gain * tint
    # Many UTKFace photos are upscaled from small faces, while compositor frames are drawn sharp:
    # blur a random half of the batches so that sharpness cannot give the synthetic glasses away.
    if torch.rand(1, generator=generator).item() < 0.5:
        height, width = bands.shape[2:]
        scale = 0.35 + 0.5 * torch.rand(1, generator=generator).item()
        small = F.interpolate(bands, scale_factor=scale, mode="area")
        bands = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return bands.clamp(0, 1)


def train_classifier(
    positives: np.ndarray, negatives: np.ndarray, *, epochs: int = 8, batch_size: int = 128, seed: int = 0
) -> GlassesClassifier:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = GlassesClassifier()
    bands = _to_tensor(np.concatenate([positives, negatives]))
    targets = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(bands) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(bands), generator=generator)
        total = 0.0
        for start in range(0, len(bands), batch_size):
            batch = order[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(_augment(bands[batch], generator)), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        LOG.info("epoch %d: loss %.4f", epoch, total / len(bands))
    return model.eval()


@torch.no_grad()
def glasses_probability(model: GlassesClassifier, bands: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Probability of eyeglasses per band, averaged over the band and its mirror image."""
    probs = []
    for start in range(0, len(bands), batch_size):
        batch = _to_tensor(bands[start : start + batch_size])
        logits = (model(batch) + model(batch.flip(3))) / 2
        probs.append(torch.sigmoid(logits).numpy())
    return np.concatenate(probs)


def contact_sheet(images: list[np.ndarray], captions: list[str], path: Path, columns: int = 10, cell: int = 120) -> None:
    """A grid of faces with a caption under each, for looking at labels by eye."""
    rows = max(1, (len(images) + columns - 1) // columns)
    sheet = np.full((rows * (cell + 16), columns * cell, 3), 255, np.uint8)
    for i, (image, caption) in enumerate(zip(images, captions)):
        y, x = (i // columns) * (cell + 16), (i % columns) * cell
        sheet[y : y + cell, x : x + cell] = cv2.resize(image, (cell, cell), interpolation=cv2.INTER_AREA)
        cv2.putText(sheet, caption, (x + 2, y + cell + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def read_hand_labels(path: str | Path = HAND_CSV) -> dict[str, bool]:
    """file key -> wears glasses, as judged by eye (see the CSV's header)."""
    return {row["key"]: row["wears_glasses"] == "1" for row in read_keyed_csv(path)}


def write_glasses_csv(
    path: Path, files: list[str], probs: np.ndarray, threshold: float, how: str, hand: dict[str, bool] | None = None
) -> None:
    """Rows (file key, glasses_prob, wears_glasses, checked_by_hand); a verdict by eye (keyed like
    the rows) overrides the threshold."""
    hand = hand or {}
    with open(path, "w", newline="") as handle:
        for line in how.strip().splitlines():
            handle.write(f"# {line}\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["key", "glasses_prob", "wears_glasses", "checked_by_hand"])
        for key, prob in sorted(zip(map(file_key, files), probs)):
            wears = hand.get(key, bool(prob >= threshold))
            writer.writerow([key, f"{prob:.4f}", int(wears), int(key in hand)])


def fold_of(file_name: str, folds: int) -> int:
    """Cross-fitting fold of a file, from hash bits the train/val/test split does not use."""
    return int(hashlib.sha1(file_name.encode("utf-8")).hexdigest()[8:16], 16) % folds


def cross_fitted_scores(
    files: list[str], real: np.ndarray, synthetic: np.ndarray, usable: np.ndarray, *, folds: int = 3,
    negative_quantile: float = 0.8, pseudo_positive: float = 0.9, epochs: int = 6, rounds: int = 2,
) -> list[np.ndarray]:
    """Glasses probability of every real band, each from a model that never saw that photo; one array per round.

    Round 1 trains on synthetic glasses vs every clean photo. Real wearers among those negatives
    teach the model that real glasses are "no glasses", and a photo it trained on is scored near 0,
    so no model scores the photos it trained on (cross-fitting) and round 2 trains without the
    photos round 1 ranked in its top (1 - negative_quantile), adding those round 1 called glasses
    with probability >= pseudo_positive as real positives. (A third round drifted: its confident
    "wearers" included wrinkled faces and stock-photo watermarks across the eyes.)
    """
    fold = np.array([fold_of(f, folds) for f in files])
    history: list[np.ndarray] = []
    for round_index in range(1, rounds + 1):
        probs = np.zeros(len(files), np.float32)
        for k in range(folds):
            fit = usable & (fold != k)
            negatives = fit.copy()
            positives = [synthetic[fit]]
            if history:
                previous = history[-1]
                negatives &= previous < np.quantile(previous[usable], negative_quantile)
                positives.append(real[fit & (previous >= pseudo_positive)])
            positives = np.concatenate(positives)
            LOG.info("round %d fold %d: %d positives (%d real), %d negatives", round_index, k, len(positives),
                     len(positives) - fit.sum(), negatives.sum())
            model = train_classifier(positives, real[negatives], epochs=epochs, seed=round_index * folds + k)
            probs[fold == k] = glasses_probability(model, real[fold == k])
        history.append(probs)
    return history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--bands", type=Path, default=DEFAULT_BANDS, help="cache of eye bands (rebuilt if missing)")
    parser.add_argument("--scores", type=Path, default=DEFAULT_SCORES, help="cache of the scores (rebuilt if missing)")
    parser.add_argument("--out", type=Path, default=GLASSES_CSV)
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--hand", type=Path, default=HAND_CSV, help="verdicts by eye that override the classifier")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sheets", type=Path, default=REPO_ROOT / "runs" / "glasses_labels")
    parser.add_argument("--note", default="", help="extra header line for the CSV (e.g. the hand-check result)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    start = time.perf_counter()

    records = FaceRecords(None, labels_path=args.labels, glasses_csv=None, min_quality=0)
    if args.scores.exists():
        scores = np.load(args.scores)
        assert scores["files"].tolist() == records.files, "score cache is stale; delete it"
        probs = scores["probs"]
    else:
        if args.bands.exists():
            bands = dict(np.load(args.bands))
        else:
            bands = build_bands(records)
            args.bands.parent.mkdir(parents=True, exist_ok=True)
            np.savez(args.bands, **bands)
        assert bands["files"].tolist() == records.files, "band cache is stale; delete it"
        LOG.info("bands ready after %.0f s", time.perf_counter() - start)
        rounds = cross_fitted_scores(records.files, bands["real"], bands["synthetic"], records.quality > 0,
                                     epochs=args.epochs)
        probs = rounds[-1]
        np.savez(args.scores, files=np.array(records.files), probs=probs, rounds=np.stack(rounds))

    splits = np.array(split_of_files(records.files))
    hand = read_hand_labels(args.hand) if args.hand.exists() else {}
    wears = np.array([hand.get(file_key(f), bool(p >= args.threshold)) for f, p in zip(records.files, probs)])
    for name in ("train", "val", "test"):
        in_split = splits == name
        LOG.info("%s: %d wearers of %d (%.1f %%)", name, wears[in_split].sum(), in_split.sum(),
                 100 * wears[in_split].mean())
    how = f"""Eyeglasses on UTKFace crop_part1, made by eyeglass3d/training/glasses_labels.py: a small CNN
on the eye band of the canonical crop, trained on compositor glasses vs the same photos clean, in 3
cross-fitted folds (no photo is scored by a model that saw it) and 2 rounds (round 2 without
round 1's likely wearers among the negatives and with its confident real wearers, p >= 0.9, as positives).
wears_glasses = glasses_prob >= {args.threshold:g} (chosen by looking at contact sheets), except where
checked_by_hand = 1: there it is the verdict by eye from {args.hand.name}. {args.note}
Only file names and per-file numbers are stored, no pixels; the images are under the UTKFace terms
(non-commercial research only, not redistributed): see ../shared/data/faces/utkface/README.md."""
    write_glasses_csv(args.out, records.files, probs, args.threshold, how, hand)
    write_sheets(records, probs, args.threshold, args.sheets)
    LOG.info("done in %.0f s", time.perf_counter() - start)


def write_sheets(records: FaceRecords, probs: np.ndarray, threshold: float, folder: Path, per_sheet: int = 100) -> None:
    """Positives by falling score and the top-scored negatives (with scores); sheets to judge by eye (without)."""
    order = np.argsort(-probs)
    positives = order[probs[order] >= threshold]
    for page, start in enumerate(range(0, len(positives), per_sheet)):
        chosen = positives[start : start + per_sheet]
        contact_sheet([records.image(i) for i in chosen], [f"{start + k} {probs[i]:.2f}" for k, i in enumerate(chosen)],
                      folder / f"positives_{page:02d}.png")
    negatives = order[probs[order] < threshold][: 2 * per_sheet]
    for page in range(2):
        chosen = negatives[page * per_sheet : (page + 1) * per_sheet]
        contact_sheet([records.image(i) for i in chosen], [f"{probs[i]:.2f}" for i in chosen],
                      folder / f"top_negatives_{page:02d}.png")
    # Sheets to judge by eye: no scores shown, file-name order.
    files = np.array(records.files)
    sample = np.sort(np.random.default_rng(2024).choice(len(files), 2 * per_sheet, replace=False))
    candidates = np.flatnonzero((probs >= CANDIDATE_PROB) & np.isin(files, load_split("test")))
    for name, chosen_all in (("blind_sample", sample), ("test_candidates", candidates)):
        np.savetxt(folder / f"{name}.txt", files[chosen_all], fmt="%s")
        for page, start in enumerate(range(0, len(chosen_all), per_sheet // 2)):
            chosen = chosen_all[start : start + per_sheet // 2]
            contact_sheet([records.image(i) for i in chosen], [str(start + k) for k in range(len(chosen))],
                          folder / f"{name}_{page:02d}.png", columns=8, cell=200)


if __name__ == "__main__":
    main()
