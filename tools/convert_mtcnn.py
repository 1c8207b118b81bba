"""Converts facenet-pytorch's MTCNN weights into the shipped `MTCNNDetector` (safetensors, fp16).

facenet-pytorch (MIT licence, Tim Esler) ships `pnet.pt`, `rnet.pt` and `onet.pt`: the weights of the
MTCNN authors (Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", 2016), ported from their Caffe/TF release. Install it without its torchvision
pin, which this project never uses:

    pip install --no-deps facenet-pytorch==2.6.0
    python tools/convert_mtcnn.py --out weights_card/detector

This is the only place in the project that reads a `.pt` file, with `weights_only=True`. The package is
never imported (that would import torchvision); its data folder is located with `importlib`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from eyeglass3d.models.detector import MTCNNDetector  # noqa: E402

EXAMPLE_PHOTOS = ("grace_hopper.jpg", "astronaut.jpg", "coffee.png")


def facenet_weights_dir() -> Path:
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("facenet-pytorch is not installed: pip install --no-deps facenet-pytorch==2.6.0")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_facenet_state_dict(weights_dir: Path) -> dict[str, torch.Tensor]:
    """facenet-pytorch's three state dicts under our submodule prefixes (its layer names are ours)."""
    state = {}
    for net in ("pnet", "rnet", "onet"):
        for name, tensor in torch.load(weights_dir / f"{net}.pt", map_location="cpu", weights_only=True).items():
            state[f"{net}.{name}"] = tensor.float()
    return state


def describe(detections) -> str:
    faces = [f"box [{', '.join(f'{v:.1f}' for v in d.box)}] score {d.score:.4f}" for d in detections]
    return "; ".join(faces) or "no face"


def compare_precisions(fp32: MTCNNDetector, fp16: MTCNNDetector, photos: list[Path]) -> float:
    """Runs both detectors on the photos, prints what they find and returns the largest box difference."""
    worst = 0.0
    for path in photos:
        image = np.asarray(Image.open(path).convert("RGB"))
        start = time.perf_counter()
        reference = fp32.detect(image)
        elapsed = time.perf_counter() - start
        converted = fp16.detect(image)
        print(f"{path.name}: {describe(reference)} ({elapsed * 1000:.0f} ms fp32)")
        if len(reference) != len(converted):
            raise SystemExit(f"{path.name}: fp32 finds {len(reference)} faces, fp16 finds {len(converted)}")
        for a, b in zip(reference, converted):
            worst = max(worst, float(np.abs(a.box - b.box).max()), float(np.abs(a.points - b.points).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "weights_card" / "detector")
    parser.add_argument("--max-diff-px", type=float, default=1.0, help="fail if fp16 moves a box or point more")
    args = parser.parse_args()
    torch.set_num_threads(1)

    # The retry where the first pass finds nothing was chosen on val faces with synthetic dark and mirrored
    # lenses (weights_card/eval/detector_retry_ab*_val.json): the same cuts on a 15 %-padded photo.
    detector = MTCNNDetector(retry_thresholds=(0.6, 0.7, 0.7), retry_pad=0.15)
    detector.load_state_dict(load_facenet_state_dict(facenet_weights_dir()), strict=True)
    detector.eval()

    half = copy.deepcopy(detector).half()  # .half(), not .to(): diffusers' to() warns about fp32 modules
    with tempfile.TemporaryDirectory() as tmp:
        half.save_pretrained(tmp, safe_serialization=True)
        rounded = MTCNNDetector.from_pretrained(tmp).eval()
    photos = [REPO_ROOT / "examples" / name for name in EXAMPLE_PHOTOS]
    worst = compare_precisions(detector, rounded, photos)
    print(f"max |fp32 - fp16| over boxes and points: {worst:.4f} px on {len(photos)} photos")
    if worst > args.max_diff_px:
        raise SystemExit(f"fp16 weights move detections by {worst:.3f} px > {args.max_diff_px}")

    half.save_pretrained(args.out, safe_serialization=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
