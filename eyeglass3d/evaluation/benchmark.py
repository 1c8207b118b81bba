"""Time every stage of `reconstruct` on the example photos, next to one plain ResNet-50 forward.

    python -m eyeglass3d.evaluation.benchmark [--weights weights_card] [--repeats 5] [--threads 2]

Prints the median milliseconds per stage and in total; the ResNet-50 at 224² measured in the same
process is the yardstick the project's speed target is written against (full reconstruct ≤ 3×). It is
timed once between every two reconstructions (the ratio printed per photo) and, last, in a warm
back-to-back loop, which runs ~10 % faster because its weights stay in cache.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from eyeglass3d.paths import REPO_ROOT, default_weights


def resnet50_yardstick():
    """A warmed-up plain ResNet-50 at 224²: calling it runs one forward and returns its milliseconds."""
    from eyeglass3d.models.backbones import resnet50

    model, image = resnet50().eval(), torch.rand(1, 3, 224, 224)

    def forward_ms() -> float:
        with torch.inference_mode():
            started = time.perf_counter()
            model(image)
            return (time.perf_counter() - started) * 1e3

    forward_ms()
    return forward_ms


def resnet50_forward_ms(repeats: int, yardstick=None) -> float:
    """Median of `repeats` back-to-back forwards (of `yardstick`, or of a fresh one)."""
    yardstick = yardstick or resnet50_yardstick()
    return statistics.median(yardstick() for _ in range(repeats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(default_weights()))
    parser.add_argument("--images", nargs="*", type=Path,
                        default=[REPO_ROOT / "examples" / "grace_hopper.jpg", REPO_ROOT / "examples" / "astronaut.jpg"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from eyeglass3d import Eyeglass3DPipeline

    started = time.perf_counter()
    pipe = Eyeglass3DPipeline.from_pretrained(args.weights)
    print(f"load: {(time.perf_counter() - started) * 1e3:.0f} ms from {args.weights}")
    yardstick = resnet50_yardstick()
    for path in args.images:
        pipe.reconstruct(path)  # warm-up
        stages: dict[str, list[float]] = {}
        totals, forwards = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            out = pipe.reconstruct(path)
            totals.append((time.perf_counter() - started) * 1e3)
            for name, value in out.timings_ms.items():
                stages.setdefault(name, []).append(value)
            forwards.append(yardstick())  # between the reconstructions: a busy moment hits both alike
        total, forward = statistics.median(totals), statistics.median(forwards)
        line = "  ".join(f"{name} {statistics.median(values):.0f}" for name, values in stages.items())
        print(f"{path.name}: total {total:.0f} ms = {total / forward:.2f}x one ResNet-50 forward at 224 "
              f"({forward:.1f} ms, {args.threads} threads, timed in between) | {line} | stages: {out.stages}")
    print(f"ResNet-50 forward at 224, warm back-to-back loop: {resnet50_forward_ms(args.repeats * 4, yardstick):.1f} ms")


if __name__ == "__main__":
    main()
