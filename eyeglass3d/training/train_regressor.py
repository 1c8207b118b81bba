"""Train the 3DMM coefficient regressor (component `regressor`) and the face-feature network its loss uses.

    python -m eyeglass3d.training.regressor_data ...            # first: cache/regressor_data_{train,val}.npz
    python -m eyeglass3d.training.train_regressor --out runs/regressor \\
        --backbone mobilenet_v3_large --backbone resnet50 --minutes 3 [--device cuda] [--resume]
    python -m eyeglass3d.training.train_regressor --out runs/regressor_ft --init runs/regressor/mobilenet_v3_large/best \
        --consistency-weight 0.25 --lr 5e-4 --minutes 40                 # fine-tune for glasses invariance
    python -m eyeglass3d.training.train_regressor --out runs/regressor --export mobilenet_v3_large

Input: the canonical crop at 128 px, either the clean photo or its de-glassed twin (the same face after the
shipped parser and inpainter removed synthetic glasses), with one photometric augmentation. Every term is
measured against the *clean* face, so glasses and what inpainting leaves of them must not move anything:

    loss = coefficients (pseudo ground truth of `fit_landmarks` + linear albedo/light solves, per group
           relative to its mean square) + w_lm · landmark reprojection (squared NME)
           + 1.4 · photometric (shaded albedo vs photo over visible skin, the paper's λ)
           + 0.25 · (1 - cos) of face features of the render over the photo and of the photo (the paper's λ)
           [+ w_c · mean squared vertex distance (mm²) between the shapes predicted from a face's clean crop
              and from its de-glassed twin, with `--consistency-weight`: batches are then such pairs]

`--crop-jitter` moves every crop (and its targets) by a random similarity, as a detection on another photo of
the face would: glasses move MTCNN's five points, so the pipeline's crop of a de-glassed photo is not the clean
photo's crop; pose then comes from the landmark term alone.

The face-feature network (`face_features.py`) is distilled from dlib's descriptors first, then frozen.
Training is budgeted in minutes per network (the step count is fixed after timing the first steps, and a
cosine schedule runs over it), so that one command fits a lent accelerator's time; `--steps` fixes it
instead. Each network resumes from `<out>/<name>/last/`; the log is `<out>/train.log`; held-out figures of
the validation faces go to `<out>/metrics.json` (landmark NME of the mesh, photometric error, and the RMS
shape change in mm when the input is the de-glassed twin, next to the RMS between two people).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from eyeglass3d.geometry.photometric_fit import skin_mask
from eyeglass3d.models.face_model import FaceModel
from eyeglass3d.models.regressor import CoefficientRegressor
from eyeglass3d.paths import REPO_ROOT, default_weights
from eyeglass3d.training.checkpoint import restore_training_state, save_training_state
from eyeglass3d.training.face_features import FaceFeatureNet, feature_loss
from eyeglass3d.training.reconstruction_losses import (
    FaceTerms,
    coefficient_loss,
    coefficient_units,
    group_scales,
    landmark_nme,
)
from eyeglass3d.training.regressor_data import load_crops
from eyeglass3d.training.run_dir import export_fp16, start_run

PHOTOMETRIC_WEIGHT = 1.4  # the paper's λ
FEATURE_WEIGHT = 0.25  # the paper's λ
CONSISTENCY_UNIT_M = 1e-3  # the consistency term is the mean squared vertex distance in mm²
WARMUP_STEPS = 10
TIMING_STEPS = 20


class FaceSet:
    """One split on the training device: uint8 crops, skin masks and targets as tensors."""

    def __init__(self, path: Path, device: torch.device):
        with np.load(path) as data:
            clean, deglassed = load_crops(data)
            landmarks = data["landmarks_px"].astype(np.float32)
            self.size = int(data["crop_size"])
            self.coefficients = torch.from_numpy(data["coefficients"].astype(np.float32)).to(device)
            self.descriptors = torch.from_numpy(data["descriptor"].astype(np.float32)).to(device)
        self.clean = torch.from_numpy(clean).to(device)
        self.deglassed = torch.from_numpy(deglassed).to(device)
        self.landmarks = torch.from_numpy(landmarks).to(device)
        self.skin = torch.from_numpy(skin_mask(landmarks, self.size)).to(device)

    def __len__(self) -> int:
        return len(self.clean)


def to_images(pixels: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 → (B, 3, S, S) float in [0, 1], channels_last like the networks."""
    return pixels.permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=torch.channels_last)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and noise: photos differ in exposure and camera, not in face."""
    batch = images.shape[0]

    def uniform(low, high):
        return torch.empty(batch, 1, 1, 1, device=images.device).uniform_(low, high, generator=generator)

    grey = images.mean(1, keepdim=True)
    images = grey + (images - grey) * uniform(0.6, 1.4)
    images = images.mean((1, 2, 3), keepdim=True) + (images - images.mean((1, 2, 3), keepdim=True)) * uniform(0.7, 1.3)
    images = images * uniform(0.75, 1.25)
    noise = torch.randn(images.shape, device=images.device, generator=generator) * uniform(0.0, 0.03)
    return (images + noise).clamp(0, 1).contiguous(memory_format=torch.channels_last)


def mixed_pixels(data: FaceSet, indices: torch.Tensor, generator: torch.Generator, deglassed_share: float):
    """(B, S, S, 3) uint8: per face, its clean crop or (with probability `deglassed_share`) its de-glassed twin."""
    use_twin = torch.rand(len(indices), device=indices.device, generator=generator) < deglassed_share
    return torch.where(use_twin[:, None, None, None], data.deglassed[indices], data.clean[indices])


def pick_inputs(data: FaceSet, indices: torch.Tensor, generator: torch.Generator, deglassed_share: float):
    """The clean crop or its de-glassed twin per face, and the clean crop as every term's reference."""
    pixels = mixed_pixels(data, indices, generator, deglassed_share)
    return augment(to_images(pixels), generator), to_images(data.clean[indices])


def crop_jitter(batch: int, strength: float, generator: torch.Generator, device) -> torch.Tensor:
    """(B, 2, 3) random similarities in normalised crop coordinates (x, y in [-1, 1], centre 0), with the spread
    `augment.jitter_points` gives a detector at this strength (angle σ 0.12·s rad, scale σ 0.06·s, shift σ 0.05·s
    eye distances; the eye distance is ~0.6 of the normalised crop)."""

    def normal(scale):
        return torch.randn(batch, device=device, generator=generator) * scale

    angle, scale = normal(0.12 * strength), torch.exp(normal(0.06 * strength))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    shift = torch.stack([normal(0.05 * strength * 0.6), normal(0.05 * strength * 0.6)], -1)
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1)


def apply_jitter(matrices: torch.Tensor, images: torch.Tensor, landmarks_px: torch.Tensor, mode: str = "bilinear"):
    """Move crop content by `matrices` (output = M · input, normalised coordinates): images (B, C, S, S) resampled
    (border replicated, like the pipeline's crops), landmarks (B, 68, 2) in cv2 pixels (centres on integers)."""
    size = images.shape[-1]
    linear, shift = matrices[:, :, :2], matrices[:, :, 2:]
    inverse = torch.linalg.inv(linear)
    theta = torch.cat([inverse, -inverse @ shift], -1)  # output coordinates → where to sample the input
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    moved = torch.nn.functional.grid_sample(images.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    normalised = (landmarks_px + 0.5) * (2.0 / size) - 1.0
    moved_landmarks = (normalised @ linear.transpose(1, 2) + shift.transpose(1, 2) + 1.0) * (size / 2.0) - 0.5
    return moved, moved_landmarks


class Budget:
    """Steps for a network: fixed, or as many as `minutes` allow, timed over steps after a warm-up (the
    first steps pay for kernel selection and allocation)."""

    def __init__(self, steps: int | None, minutes: float | None):
        self.total = steps
        self.minutes = minutes
        self.started = time.time()
        self.clock = self.started

    def settle(self, step: int, done_before: int) -> None:
        if self.total is not None:
            return
        if step - done_before == WARMUP_STEPS:
            self.clock = time.time()
        elif step - done_before == WARMUP_STEPS + TIMING_STEPS:
            per_step = (time.time() - self.clock) / TIMING_STEPS
            left = self.minutes * 60 - (time.time() - self.started)
            self.total = max(step + 1, step + int(left / per_step * 0.92))


def cosine_lr(base: float, step: int, total: int | None, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    if total is None:
        return base
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def recalibrate_batchnorm(
    model, data: FaceSet, generator: torch.Generator, batch: int = 128, batches: int = 40
) -> None:
    """Exact BatchNorm statistics of the final weights over un-augmented training crops (clean and de-glassed).

    MobileNetV3's BN momentum is 0.01: after a short run its running statistics still remember the first
    steps' activations, and in eval mode such a network answers every face alike. Batches are large whatever
    the training batch: averaging small batches' variances would miss the spread of their means.
    """
    batches = min(batches, max(1, len(data) // batch))  # about one pass at most
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    device = data.clean.device
    for _ in range(batches):
        indices = torch.randint(len(data), (batch,), device=device, generator=generator)
        with autocast(device):
            model(to_images(mixed_pixels(data, indices, generator, 0.5)))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


# ------------------------------------------------------------------------------------------ face features


def train_features(args, train: FaceSet, val: FaceSet, device, log) -> FaceFeatureNet:
    folder = args.out / "face_features"
    network = FaceFeatureNet().to(device).to(memory_format=torch.channels_last)
    network.descriptor_mean.copy_(train.descriptors.mean(0))
    weights_file = folder / "model.safetensors"
    if weights_file.exists():
        network.load_state_dict(load_file(weights_file, device=str(device)))
        log.info("face features: loaded %s", weights_file)
        return network.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    state = restore_training_state(folder / "last", {"step": 0, "total": args.feature_steps},
                                   model=network, optimizer=optimizer)
    budget = Budget(state["total"], args.feature_minutes)
    generator = torch.Generator(device).manual_seed(1000 + state["step"])
    step, first = state["step"], state["step"]
    progress = tqdm(desc="face features", mininterval=10)
    while budget.total is None or step < budget.total:
        network.train()
        indices = torch.randint(len(train), (args.batch,), device=device, generator=generator)
        inputs, _ = pick_inputs(train, indices, generator, 0.5)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(args.lr, step, budget.total)
        with autocast(device):
            loss = feature_loss(network(inputs), network.targets(train.descriptors[indices]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        budget.settle(step, first)
        progress.update()
        if step % 200 == 0:
            log.info("face features step %d/%s loss %.4f", step, budget.total, loss.item())
            save_training_state(folder / "last", model=network.state_dict(), optimizer=optimizer.state_dict(),
                                state={"step": step, "total": budget.total})
    recalibrate_batchnorm(network, train, generator)
    network.eval().requires_grad_(False)
    figures = evaluate_features(network, val)
    log.info("face features after %d steps, val: %s", step, json.dumps(figures))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, weights_file)
    (folder / "metrics.json").write_text(json.dumps({"steps": step, **figures}, indent=1))
    return network


@torch.no_grad()
def evaluate_features(network: FaceFeatureNet, val: FaceSet, batch: int = 128) -> dict[str, float]:
    """Cosine to dlib's (centred) descriptor on val faces, clean and de-glassed, and the cosine between
    two different val faces' features as the scale."""
    cosines = {"clean": [], "deglassed": [], "other_person": []}
    for start in range(0, len(val), batch):
        indices = torch.arange(start, min(start + batch, len(val)), device=val.clean.device)
        targets = network.targets(val.descriptors[indices])
        clean = network(to_images(val.clean[indices]))
        cosines["clean"].append((clean * targets).sum(-1))
        cosines["deglassed"].append((network(to_images(val.deglassed[indices])) * targets).sum(-1))
        cosines["other_person"].append((clean * targets.roll(1, 0)).sum(-1))
    return {f"val_cosine_{name}": float(torch.cat(values).mean()) for name, values in cosines.items()}


# ------------------------------------------------------------------------------------------ regressor


def regressor_loss(model, terms, features, inputs, photos, skin, landmarks, coefficients, scales, args):
    """Total loss and its parts for a batch: `inputs` the network sees, the clean `photos`, `skin` masks and
    teacher `landmarks` in their frame, and the pseudo ground-truth `coefficients` for the groups in `scales`."""
    with autocast(inputs.device):
        predicted = model(inputs)
    predicted = predicted.float()
    result = terms(predicted, photos, skin, render=args.feature_weight > 0)
    parts = {
        "coefficients": coefficient_loss(predicted, coefficients, scales).mean(),
        # Squared NME (the paper's L2), linear beyond 0.1 so that a wild early pose cannot blow the step up.
        "landmarks": torch.nn.functional.huber_loss(
            landmark_nme(result.landmarks_px, landmarks), torch.zeros(len(landmarks), device=landmarks.device),
            delta=0.1) * 2,
        "photometric": result.photometric.mean(),
    }
    total = parts["coefficients"] + args.landmark_weight * parts["landmarks"] + PHOTOMETRIC_WEIGHT * parts["photometric"]
    if args.feature_weight > 0:
        with autocast(inputs.device):
            rendered_features = features(result.rendered.contiguous(memory_format=torch.channels_last))
            photo_features = features(photos)
        parts["features"] = feature_loss(rendered_features, photo_features.detach())
        total = total + args.feature_weight * parts["features"]
    if args.consistency_weight > 0:  # the batch is clean faces, then their de-glassed twins (`paired_inputs`)
        clean_shape, twin_shape = result.face_vertices_m.chunk(2)
        parts["consistency"] = (clean_shape - twin_shape).pow(2).sum(-1).mean() / CONSISTENCY_UNIT_M**2
        total = total + args.consistency_weight * parts["consistency"]
    return total, parts


def vertex_rms_mm(first_m: torch.Tensor, second_m: torch.Tensor) -> torch.Tensor:
    """(B,) RMS distance in mm between corresponding vertices (B, V, 3) given in metres."""
    return (first_m - second_m).pow(2).sum(-1).mean(-1).sqrt() / CONSISTENCY_UNIT_M


def paired_inputs(data: FaceSet, indices: torch.Tensor, generator: torch.Generator):
    """Each face twice, clean and de-glassed (each augmented on its own), with the clean crop as reference for
    both: the consistency term then asks for one shape from both."""
    clean, twin = to_images(data.clean[indices]), to_images(data.deglassed[indices])
    inputs = torch.cat([augment(clean, generator), augment(twin, generator)])
    return inputs.contiguous(memory_format=torch.channels_last), torch.cat([clean, clean]), torch.cat([indices, indices])


@torch.no_grad()
def evaluate_regressor(model, terms: FaceTerms, val: FaceSet, batch: int = 128) -> dict[str, float]:
    """Held-out figures on the val faces: landmark NME of the mesh against the teacher, photometric error
    (0-255) on clean input, and the shape's RMS change (mm, face area, model space: identity and expression,
    no alignment) between clean and de-glassed input, next to the RMS between two val people."""
    model.eval()
    collected = {k: [] for k in ("nme_clean", "nme_deglassed", "photo_clean", "glasses_rms_mm", "between_rms_mm")}
    for start in range(0, len(val), batch):
        indices = torch.arange(start, min(start + batch, len(val)), device=val.clean.device)
        photos = to_images(val.clean[indices])
        outputs = {}
        for name, pixels in (("clean", val.clean[indices]), ("deglassed", val.deglassed[indices])):
            with autocast(photos.device):
                coefficients = model(to_images(pixels)).float()
            outputs[name] = terms(coefficients, photos, val.skin[indices])
            collected[f"nme_{name}"].append(landmark_nme(outputs[name].landmarks_px, val.landmarks[indices]))
        collected["photo_clean"].append(outputs["clean"].photometric * 255)
        clean_shape, glasses_shape = outputs["clean"].face_vertices_m, outputs["deglassed"].face_vertices_m
        collected["glasses_rms_mm"].append(vertex_rms_mm(clean_shape, glasses_shape))
        collected["between_rms_mm"].append(vertex_rms_mm(clean_shape, clean_shape.roll(1, 0)))
    values = {name: torch.cat(parts).float().cpu() for name, parts in collected.items()}
    figures = {f"val_{name}_mean": float(v.mean()) for name, v in values.items()}
    figures.update({f"val_{name}_median": float(v.median()) for name, v in values.items() if "rms" in name})
    between = figures["val_between_rms_mm_median"]
    figures["val_glasses_over_between"] = figures["val_glasses_rms_mm_median"] / between if between > 0 else math.nan
    return figures


def train_one_regressor(args, backbone: str, train: FaceSet, val: FaceSet, features, face_model, device, log):
    folder = args.out / backbone
    scales = group_scales(train.coefficients)
    model = CoefficientRegressor(backbone=backbone, input_size=train.size)
    model.output_scale.copy_(coefficient_units(scales))
    if args.init is not None:  # fine-tune a trained regressor (its own output_scale comes along)
        model.load_state_dict(CoefficientRegressor.from_pretrained(args.init).state_dict())
        log.info("%s: starting from %s", backbone, args.init)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    state = restore_training_state(folder / "last", {"step": 0, "total": args.steps, "history": []},
                                   model=model, optimizer=optimizer)
    if state.get("finished"):
        log.info("%s: finished earlier (%d steps)", backbone, state["step"])
        return state["history"][-1] if state["history"] else {}
    terms = FaceTerms(face_model, train.size)
    shape_scales = {name: value for name, value in scales.items() if name not in ("angles", "translation")}
    budget = Budget(state["total"], args.minutes)
    generator = torch.Generator(device).manual_seed(state["step"])
    step, first = state["step"], state["step"]
    progress = tqdm(desc=backbone, mininterval=10)
    running: dict[str, float] = {}
    while budget.total is None or step < budget.total:
        model.train()
        if args.consistency_weight > 0:
            indices = torch.randint(len(train), (args.batch // 2,), device=device, generator=generator)
            inputs, photos, indices = paired_inputs(train, indices, generator)
        else:
            indices = torch.randint(len(train), (args.batch,), device=device, generator=generator)
            inputs, photos = pick_inputs(train, indices, generator, args.deglassed_share)
        skin, landmarks = train.skin[indices, None].float(), train.landmarks[indices]
        if args.crop_jitter > 0:  # the crop as another detection would cut it: the pose target no longer holds
            matrices = crop_jitter(len(indices), args.crop_jitter, generator, device)
            inputs, _ = apply_jitter(matrices, inputs, landmarks)
            photos, _ = apply_jitter(matrices, photos, landmarks)
            skin, landmarks = apply_jitter(matrices, skin, landmarks, mode="nearest")
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(args.lr, step, budget.total)
        loss, parts = regressor_loss(
            model, terms, features, inputs.contiguous(memory_format=torch.channels_last),
            photos.contiguous(memory_format=torch.channels_last), skin[:, 0] > 0.5, landmarks,
            train.coefficients[indices], shape_scales if args.crop_jitter > 0 else scales, args)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        budget.settle(step, first)
        progress.update()
        for name, value in parts.items():
            running[name] = 0.98 * running.get(name, value.item()) + 0.02 * value.item()
        if step % args.log_every == 0:
            log.info("%s step %d/%s %s", backbone, step, budget.total,
                     " ".join(f"{k} {v:.4f}" for k, v in running.items()))
            save_training_state(folder / "last", model=model.state_dict(), optimizer=optimizer.state_dict(),
                                state={"step": step, "total": budget.total, "history": state["history"]})
    recalibrate_batchnorm(model, train, generator)
    figures = {"backbone": backbone, "steps": step, "input_size": train.size, **evaluate_regressor(model, terms, val)}
    log.info("%s after %d steps, val: %s", backbone, step, json.dumps(figures))
    model.save_pretrained(folder / "best", safe_serialization=True)
    state["history"].append(figures)
    save_training_state(folder / "last", model=model.state_dict(), optimizer=optimizer.state_dict(),
                        state={"step": step, "total": budget.total, "history": state["history"], "finished": True})
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "regressor")
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "cache", help="folder of regressor_data_*.npz")
    parser.add_argument("--weights", type=Path, default=default_weights(), help="model repo with face_model/")
    parser.add_argument("--backbone", action="append", choices=["mobilenet_v3_large", "resnet18", "resnet50"])
    parser.add_argument("--minutes", type=float, default=3.0, help="time budget per regressor")
    parser.add_argument("--steps", type=int, help="fixed step count per regressor instead of --minutes")
    parser.add_argument("--feature-minutes", type=float, default=1.0)
    parser.add_argument("--feature-steps", type=int)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--landmark-weight", type=float, default=200.0)
    parser.add_argument("--feature-weight", type=float, default=FEATURE_WEIGHT)
    parser.add_argument("--deglassed-share", type=float, default=0.5)
    parser.add_argument("--consistency-weight", type=float, default=0.0,
                        help="train on (clean, de-glassed) pairs and penalise their shape difference (per mm²)")
    parser.add_argument("--crop-jitter", type=float, default=0.0,
                        help="move each crop like detector noise of this strength (augment.jitter_points); the pose "
                             "is then learnt from the landmarks alone")
    parser.add_argument("--init", type=Path, help="a saved regressor folder to fine-tune instead of starting afresh")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--export", metavar="BACKBONE", help="write <out>/<BACKBONE>/best as fp16 to --export-to")
    parser.add_argument("--export-to", type=Path, default=default_weights() / "regressor")
    args = parser.parse_args(argv)
    log = start_run(args.out, "eyeglass3d.train_regressor", args.threads)
    if args.export:
        export_fp16(CoefficientRegressor, args.out / args.export, args.export_to, log)
        return
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    clock = time.time()
    train = FaceSet(args.data / "regressor_data_train.npz", device)
    val = FaceSet(args.data / "regressor_data_val.npz", device)
    log.info("train %d faces, val %d faces at %d px on %s (%.0f s to load)", len(train), len(val), train.size,
             device, time.time() - clock)
    face_model = FaceModel.from_pretrained(args.weights / "face_model").float().to(device).requires_grad_(False)
    features = train_features(args, train, val, device, log) if args.feature_weight > 0 else None
    results = [train_one_regressor(args, name, train, val, features, face_model, device, log)
               for name in args.backbone or ["mobilenet_v3_large"]]
    (args.out / "metrics.json").write_text(json.dumps(results, indent=1))
    log.info("done in %.0f s", time.time() - clock)


if __name__ == "__main__":
    main()
