"""Train the deleter: a face-parsing U-Net over the eye band whose key class is *eyeglasses*.

Inputs are glasses-free UTKFace faces, wearing synthetic glasses most of the time (and none the rest,
so the network learns to say "none"); eyeglasses labels are the compositor's exact masks (frames,
temples on the face, lens area, frame shadow), the other classes are drawn from dlib's landmarks
(`geometry.face_regions`; hair is not labelled). The band is cut like the pipeline cuts it, from five
points jittered like a detector would place them on a face with glasses.

    python -m eyeglass3d.training.train_parser --out runs/parser [--epochs 8] [--resume]

Resumable (runs/<name>/last/), tqdm progress, log in runs/<name>/train.log, best validation
checkpoint in runs/<name>/best/ (chosen by eyeglasses IoU on the validation faces).
`--export weights_card/parser` writes the best checkpoint as fp16.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from eyeglass3d.geometry.alignment import EYE_BAND
from eyeglass3d.models.parser import FaceParser
from eyeglass3d.paths import REPO_ROOT
from eyeglass3d.training.checkpoint import restore_training_state, save_training_state
from eyeglass3d.training.eye_band import EYEGLASSES, band_batch, glasses_free_splits
from eyeglass3d.training.run_dir import export_fp16, start_run


def parsing_loss(logits: torch.Tensor, labels: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy over all classes plus a soft Dice term on eyeglasses: thin frames are few pixels,
    and Dice scores the glasses area as a whole, which is what IoU (and the inpainter) needs."""
    cross_entropy = F.cross_entropy(logits, labels)
    probability = logits.softmax(1)[:, EYEGLASSES]
    target = (labels == EYEGLASSES).float()
    overlap = (probability * target).sum((1, 2))
    total = probability.sum((1, 2)) + target.sum((1, 2))
    dice = 1 - (2 * overlap + 1) / (total + 1)
    return cross_entropy + dice_weight * dice.mean()


@torch.no_grad()
def evaluate(model, records, copies, size_hw, batch_size=64) -> dict[str, float]:
    """Eyeglasses IoU over the validation faces wearing their first copy, and the share of clean faces
    where the parser marks more than 0.5% of the band as eyeglasses (false positives)."""
    model.eval()
    intersection = union = 0.0
    false_positives = 0
    for start in range(0, len(records), batch_size):
        indices = range(start, min(start + batch_size, len(records)))
        for probability in (1.0, 0.0):
            batch = band_batch(records, copies, indices, EYE_BAND, size_hw, np.random.default_rng(0),
                               train=False, glasses_probability=probability)
            predicted = model(batch.inputs).argmax(1) == EYEGLASSES
            if probability:
                target = batch.labels == EYEGLASSES
                intersection += (predicted & target).sum().item()
                union += (predicted | target).sum().item()
            else:
                false_positives += (predicted.float().mean((1, 2)) > 0.005).sum().item()
    model.train()
    return {"iou_glasses": intersection / max(union, 1), "false_positive_rate": false_positives / len(records)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "parser")
    parser.add_argument("--labels", type=Path, default=REPO_ROOT / "cache" / "utkface_labels.npz")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--glasses-probability", type=float, default=0.75)
    parser.add_argument("--jitter", type=float, default=0.7, help="detector-noise strength (1 = 7 deg, 6 %% scale, 5 %% shift)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (measure it: not always faster on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", type=Path, help="write the best checkpoint as fp16 to this folder and stop")
    args = parser.parse_args(argv)

    log = start_run(args.out, "train_parser", args.threads)
    if args.export:
        export_fp16(FaceParser, args.out, args.export, log)
        return

    train, val, train_copies, val_copies = glasses_free_splits(args.labels, 2, log)

    size_hw = (args.height, args.width)
    model = FaceParser(base_channels=args.base_channels, depth=args.depth, input_size=size_hw, crop_box=EYE_BAND)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, len(train) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.1)
    state = {"epoch": 0, "best": -math.inf, "history": []}
    last = args.out / "last"
    if args.resume:
        state = restore_training_state(last, state, model=model, optimizer=optimizer, schedule=schedule)
        log.info("resumed at epoch %d (best val IoU %.4f)", state["epoch"], state["best"])

    for epoch in range(state["epoch"], args.epochs):
        rng = np.random.default_rng([args.seed, epoch])
        order = rng.permutation(len(train))
        started, running = time.time(), []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", mininterval=10)
        for step in bar:
            indices = order[step * args.batch_size:(step + 1) * args.batch_size]
            batch = band_batch(train, train_copies, indices, EYE_BAND, size_hw, rng, train=True,
                               glasses_probability=args.glasses_probability, jitter=args.jitter)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(batch.inputs)
            loss = parsing_loss(logits.float(), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.4f}")
        metrics = evaluate(model, val, val_copies, size_hw)
        metrics.update(epoch=epoch + 1, loss=float(np.mean(running)), seconds=round(time.time() - started, 1))
        state["history"].append(metrics)
        score = metrics["iou_glasses"] - metrics["false_positive_rate"]
        if score > state["best"]:
            state["best"] = score
            model.save_pretrained(args.out / "best", safe_serialization=True)
        state["epoch"] = epoch + 1
        save_training_state(last, model=model.state_dict(), optimizer=optimizer.state_dict(),
                            schedule=schedule.state_dict(), state=state)
        log.info("epoch %d: %s", epoch + 1, json.dumps(metrics))
    log.info("done; best val (IoU - false-positive rate) %.4f", state["best"])


if __name__ == "__main__":
    main()
