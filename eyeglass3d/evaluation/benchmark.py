"""Time every stage of `reconstruct` on real photos, next to a ResNet-50 treated the way the pipeline treats its nets.

    python -m eyeglass3d.evaluation.benchmark [--weights weights_card] [--images examples/*.jpg] [--repeats 15]
        [--threads 2] [--json weights_card/eval/benchmark_examples.json]

The project's speed target is written against one ResNet-50 forward at 224² (full reconstruct ≤ 3×). A fair
yardstick gets what the pipeline's own networks get: BatchNorm folded into the convolutions (as
`backbones.fold_batchnorm` does for the landmarker and the regressor) and bf16 autocast where the CPU computes bf16
natively (`precision.native_bf16`, as the parser and the inpainter run). Both precisions are timed and reported:
`fp32` (folded) and `policy` (folded, under the pipeline's bf16 rule); the headline ratio uses the faster one.
Each yardstick runs once between every two reconstructions, so a busy moment of a shared machine hits both alike.
Per-stage figures are the pipeline's own `timings_ms` on the given photos (real faces, real crops).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from eyeglass3d.evaluation.report import EVAL_DIR, public_path, write_report
from eyeglass3d.paths import REPO_ROOT, default_weights

EXAMPLE_PHOTOS = (REPO_ROOT / "examples" / "grace_hopper.jpg", REPO_ROOT / "examples" / "astronaut.jpg")
YARDSTICK_SIZE = 224
# A residual block's convolutions and their BatchNorms are attributes, not `nn.Sequential` pairs.
RESNET_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def fold_resnet(network: nn.Module) -> nn.Module:
    """An eval copy of a ResNet with every BatchNorm folded into its convolution: `fold_batchnorm` reaches the
    downsample pairs (in `nn.Sequential`), the rest are the blocks' attribute pairs."""
    from eyeglass3d.models.backbones import fold_batchnorm

    folded = fold_batchnorm(network)
    for module in list(folded.modules()):
        for conv_name, norm_name in RESNET_PAIRS:
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, nn.Identity())
    return folded


def yardstick_autocast(bf16: bool) -> torch.autocast:
    """The pipeline's precision rule for its U-Nets (bf16 only where native), or plain fp32."""
    from eyeglass3d.models.precision import native_bf16

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and native_bf16())


def resnet50_yardstick(bf16: bool = False):
    """A warmed-up folded ResNet-50 at 224²: calling it runs one forward and returns its milliseconds."""
    from eyeglass3d.models.backbones import resnet50

    model, image = fold_resnet(resnet50()), torch.rand(1, 3, YARDSTICK_SIZE, YARDSTICK_SIZE)

    def forward_ms() -> float:
        with torch.inference_mode(), yardstick_autocast(bf16):
            started = time.perf_counter()
            model(image)
            return (time.perf_counter() - started) * 1e3

    for _ in range(2):
        forward_ms()
    return forward_ms


def resnet50_forward_ms(repeats: int, yardstick=None) -> float:
    """Median of `repeats` back-to-back forwards (of `yardstick`, or of a fresh fp32 folded one)."""
    yardstick = yardstick or resnet50_yardstick()
    return statistics.median(yardstick() for _ in range(repeats))


def time_photo(pipe, path: Path, yardsticks: dict, repeats: int) -> dict:
    """Medians over `repeats` reconstructions of one photo, each followed by one forward of every yardstick."""
    pipe.reconstruct(path)  # warm-up
    totals, stages, forwards = [], {}, {name: [] for name in yardsticks}
    for _ in range(repeats):
        started = time.perf_counter()
        out = pipe.reconstruct(path)
        totals.append((time.perf_counter() - started) * 1e3)
        for name, value in out.timings_ms.items():
            stages.setdefault(name, []).append(value)
        for name, forward in yardsticks.items():
            forwards[name].append(forward())
    total = statistics.median(totals)
    yardstick_ms = {name: round(statistics.median(values), 1) for name, values in forwards.items()}
    return {
        "photo": public_path(path),
        "glasses_found": bool(out.glasses_mask.any()),
        "total_ms": round(total, 1),
        "stages_ms": {name: round(statistics.median(values), 1) for name, values in stages.items()},
        "resnet50_ms": yardstick_ms,
        "ratio": {name: round(total / value, 2) for name, value in yardstick_ms.items()},
        "ratio_to_fastest_yardstick": round(total / min(yardstick_ms.values()), 2),
        "stages": out.stages,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(default_weights()))
    parser.add_argument("--images", nargs="+", type=Path, default=list(EXAMPLE_PHOTOS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=EVAL_DIR / "benchmark_examples.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from eyeglass3d import Eyeglass3DPipeline
    from eyeglass3d.models.precision import native_bf16

    started = time.perf_counter()
    pipe = Eyeglass3DPipeline.from_pretrained(args.weights)
    load_ms = (time.perf_counter() - started) * 1e3
    yardsticks = {"fp32": resnet50_yardstick(bf16=False), "policy": resnet50_yardstick(bf16=True)}
    photos = [time_photo(pipe, path, yardsticks, args.repeats) for path in args.images]
    report = {
        "split": "examples",
        "n": len(photos),
        "repeats": args.repeats,
        "threads": args.threads,
        "native_bf16": native_bf16(),
        "yardstick": f"ResNet-50 at {YARDSTICK_SIZE}², BatchNorm folded; 'fp32' and 'policy' (bf16 autocast where "
                     "the CPU computes bf16 natively, as the parser and inpainter run), once between reconstructions",
        "load_ms": round(load_ms, 1),
        "photos": photos,
        "warm_loop_resnet50_ms": {name: round(resnet50_forward_ms(args.repeats * 4, forward), 1)
                                  for name, forward in yardsticks.items()},
    }
    return write_report(report, args.json, module="eyeglass3d.evaluation.benchmark", argv=argv)


if __name__ == "__main__":
    main()
