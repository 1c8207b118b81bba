"""Train the 68-point landmark network to see through eyeglasses.

Inputs are real faces (UTKFace, LFW train people, CelebAMask train: `--sets`) wearing synthetic
glasses (or none); targets are dlib's labels of the *clean* face, so the network learns where the eyes
are behind any frame or dark lens. The crop is the pipeline's own canonical crop, with the five points
jittered like a detector would, and the photo degraded like small, soft web photos are.

    python -m eyeglass3d.training.train_landmarker --out runs/landmarker [--epochs 28] [--resume]
        [--sets utkface,lfw,celebamask] [--init weights_card/landmarker]

Resumable (runs/<name>/last/ holds model, optimiser, schedule, epoch), tqdm progress, log in
runs/<name>/train.log; the best validation checkpoint is saved with `save_pretrained` in
runs/<name>/best/. Export to the card with `--export weights_card/landmarker` (fp16), which
`eval_landmarker` then measures on the test split.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eyeglass3d.evaluation.metrics import normalised_mean_error
from eyeglass3d.geometry.alignment import crop_matrix, transform_points, warp_crop
from eyeglass3d.models.landmarker import LandmarkRegressor
from eyeglass3d.paths import REPO_ROOT
from eyeglass3d.training.augment import downscale, flip_points, jitter_points, photometric
from eyeglass3d.training.checkpoint import restore_training_state, save_training_state
from eyeglass3d.training.datasets import FaceRecords
from eyeglass3d.training.face_sets import FACE_SETS
from eyeglass3d.training.glasses_cache import glasses_copies
from eyeglass3d.training.run_dir import export_fp16, start_run


class FaceMix:
    """Several face sets as one indexable set, with their glasses copies (photo sizes differ by set)."""

    def __init__(self, parts: list[tuple[FaceRecords, np.ndarray]]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(records) for records, _ in parts])
        self.shape = (int(self.offsets[-1]), min(versions.shape[1] for _, versions in parts))

    def _locate(self, index: int) -> tuple[int, int]:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return part, index - int(self.offsets[part])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        """A record, or with (index, copy) the glasses copy's image, like a (N, copies, H, W, 3) array."""
        if isinstance(index, tuple):
            part, local = self._locate(int(index[0]))
            return self.parts[part][1][local, index[1]]
        part, local = self._locate(int(index))
        return self.parts[part][0][local]


def load_mix(sets: list[str], split: str, copies: int, seed: int, cache_dir: Path, log) -> FaceMix:
    parts = []
    for name in sets:
        records = FaceRecords(split, face_set=name, glasses_csv=None)
        parts.append((records, glasses_copies(records, copies, seed, cache_dir, log).images))
        log.info("%s %s: %d faces", name, split, len(records))
    return FaceMix(parts)


def make_batch(records, versions, indices, size, rng, *, train: bool, glasses_probability: float, jitter: float = 0.5,
               downscale_probability: float = 0.0):
    """Crops (B,3,S,S) float and targets (B,68,2) unit crop coordinates, plus which inputs wear glasses."""
    images, targets, worn = [], [], []
    for index in indices:
        record = records[index]
        wear = versions is not None and rng.random() < glasses_probability
        image = versions[index, rng.integers(versions.shape[1])] if wear else record.image
        landmarks, points5 = record.landmarks68_px.astype(np.float64), record.points5_px.astype(np.float64)
        if train:
            if rng.random() < 0.5:
                width = image.shape[1]
                image = image[:, ::-1]
                landmarks, points5 = flip_points(landmarks, width), flip_points(points5, width)
            points5 = jitter_points(points5, rng, jitter)
        matrix = crop_matrix(points5, size)
        crop = warp_crop(np.ascontiguousarray(image), matrix, size)
        if train:
            if rng.random() < downscale_probability:
                crop = downscale(crop, rng)
            crop = photometric(crop, rng)
        images.append(crop)
        targets.append(transform_points(matrix, landmarks) / size)
        worn.append(wear)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    return batch.contiguous(memory_format=torch.channels_last), torch.from_numpy(np.stack(targets)).float(), np.array(worn)


def landmark_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The paper's L2 loss, or the wing loss (Feng et al. 2018), which weights small errors more."""
    if kind == "l2":
        return ((predicted - target) ** 2).sum(-1).mean()
    width, curvature = 0.01, 0.002  # in unit crop coordinates (~1.3 px and 0.26 px at 128)
    error = (predicted - target).abs()
    constant = width - width * math.log(1 + width / curvature)
    return torch.where(error < width, width * torch.log1p(error / curvature), error - constant).mean()


@torch.no_grad()
def evaluate(model, records, versions, size, batch_size=128) -> dict[str, float]:
    """NME on clean crops and on the same crops with their first glasses copy (undistorted five points)."""
    model.eval()
    rng = np.random.default_rng(0)
    errors = {"clean": [], "glasses": []}
    for start in range(0, len(records), batch_size):
        indices = range(start, min(start + batch_size, len(records)))
        for kind, probability in (("clean", 0.0), ("glasses", 1.0)):
            images, targets, _ = make_batch(records, versions, indices, size, rng, train=False, glasses_probability=probability)
            predicted = model(images)
            errors[kind].append(normalised_mean_error(predicted.float().numpy(), targets.numpy()))
    model.train()
    return {f"nme_{kind}": float(np.concatenate(values).mean()) for kind, values in errors.items()}


def validate(weights: Path, sets: list[str], seed: int, cache_dir: Path, log, json_path: Path | None, argv) -> dict:
    """The per-set val NME the training selects checkpoints by, for any weights: how versions are compared."""
    from eyeglass3d.evaluation.report import public_path, write_report

    model = LandmarkRegressor.from_pretrained(weights).float().eval()
    report = {"split": "val", "weights": public_path(weights), "crops": "canonical crop of the label's five points"}
    for name in sets:
        mix = load_mix([name], "val", 1, seed + 1, cache_dir, log)
        report[name] = {"n": len(mix), **{k: round(v, 4) for k, v in evaluate(model, mix, mix, model.config.input_size).items()}}
    report["score"] = round(float(np.mean([report[n]["nme_clean"] + report[n]["nme_glasses"] for n in sets])), 4)
    return write_report(report, json_path or REPO_ROOT / "runs" / "eval" / "landmarker_val_crops.json",
                        module="eyeglass3d.training.train_landmarker", argv=argv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "landmarker")
    parser.add_argument("--sets", default="utkface", help=f"comma-separated face sets of {sorted(FACE_SETS)}")
    parser.add_argument("--init", type=Path, help="start from these weights (a save_pretrained folder)")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--variant", default="small", choices=["large", "small"])
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--head", default="spatial", choices=["pooled", "spatial"])
    parser.add_argument("--epochs", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--loss", default="wing", choices=["l2", "wing"])
    parser.add_argument("--glasses-probability", type=float, default=0.6)
    parser.add_argument("--jitter", type=float, default=0.5, help="detector-noise strength (1 = 7 deg, 6 %% scale, 5 %% shift)")
    parser.add_argument("--glasses-copies", type=int, default=2)
    parser.add_argument("--downscale-probability", type=float, default=0.0,
                        help="share of training crops shrunk and re-enlarged (small, soft faces of web photos)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast; measured 2x slower than fp32 for MobileNetV3 training on this CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", type=Path, help="write the best checkpoint as fp16 to this folder and stop")
    parser.add_argument("--validate", type=Path, metavar="WEIGHTS",
                        help="score these weights on the val split of --sets (as every epoch is scored) into --json and stop")
    parser.add_argument("--json", type=Path, help="report of --validate")
    parser.add_argument("--refinements", type=int, default=0,
                        help="re-crops `predict` makes from its own landmarks (each costs one more forward)")
    args = parser.parse_args(argv)

    log = start_run(args.out, "train_landmarker", args.threads)
    if args.export:
        export_fp16(LandmarkRegressor, args.out, args.export, log, refinements=args.refinements)
        return

    sets = args.sets.split(",")
    cache_dir = REPO_ROOT / "cache"
    cache_dir.mkdir(exist_ok=True)
    if args.validate:
        validate(args.validate, sets, args.seed, cache_dir, log, args.json, argv)
        return
    train = load_mix(sets, "train", args.glasses_copies, args.seed, cache_dir, log)
    val_sets = {name: load_mix([name], "val", 1, args.seed + 1, cache_dir, log) for name in sets}
    log.info("train %d faces, val %s faces", len(train), {name: len(mix) for name, mix in val_sets.items()})

    if args.init:
        model = LandmarkRegressor.from_pretrained(args.init).float()
        log.info("initialised from %s", args.init)
    else:
        model = LandmarkRegressor(input_size=args.input_size, variant=args.variant, width_mult=args.width_mult,
                                  head=args.head, refinements=args.refinements)
        with torch.no_grad():  # start from the data's own mean shape in the canonical crop
            rng = np.random.default_rng(args.seed)
            sample = rng.permutation(len(train))[:2048]
            _, targets, _ = make_batch(train, None, sample, args.input_size, rng, train=False, glasses_probability=0)
            model.mean_landmarks.copy_(targets.mean(0))
    for module in model.modules():  # torchvision's 0.01 suits fine-tuning; from scratch the running stats lag
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps, pct_start=0.1)
    state = {"epoch": 0, "best": math.inf, "history": []}
    last = args.out / "last"
    if args.resume:
        state = restore_training_state(last, state, model=model, optimizer=optimizer, schedule=schedule)
        log.info("resumed at epoch %d (best val NME %.4f)", state["epoch"], state["best"])

    for epoch in range(state["epoch"], args.epochs):
        rng = np.random.default_rng([args.seed, epoch])
        order = rng.permutation(len(train))
        started, running = time.time(), []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=10)
        for step in bar:
            indices = order[step * args.batch_size:(step + 1) * args.batch_size]
            images, targets, _ = make_batch(train, train, indices, args.input_size, rng, train=True,
                                            glasses_probability=args.glasses_probability, jitter=args.jitter,
                                            downscale_probability=args.downscale_probability)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                predicted = model(images)
            loss = landmark_loss(predicted.float(), targets, args.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            running.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.5f}")
        metrics = {}
        for name, mix in val_sets.items():
            metrics.update({f"{name}_{key}": value for key, value in evaluate(model, mix, mix, args.input_size).items()})
        # Each set weighs the same, however many faces it has: the wild photos count as much as UTKFace.
        score = float(np.mean([metrics[f"{name}_nme_glasses"] + metrics[f"{name}_nme_clean"] for name in val_sets]))
        metrics.update(epoch=epoch + 1, loss=float(np.mean(running)), seconds=round(time.time() - started, 1), score=score)
        state["history"].append(metrics)
        if score < state["best"]:
            state["best"] = score
            model.save_pretrained(args.out / "best", safe_serialization=True)
        state["epoch"] = epoch + 1
        save_training_state(last, model=model.state_dict(), optimizer=optimizer.state_dict(),
                            schedule=schedule.state_dict(), state=state)
        log.info("epoch %d: %s", epoch + 1, json.dumps(metrics))
    log.info("done; best val (clean+glasses NME) %.4f", state["best"])


if __name__ == "__main__":
    main()
