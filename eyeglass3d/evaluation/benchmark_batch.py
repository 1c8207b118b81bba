"""Throughput of `reconstruct` on a list (the networks on stacked crops) against the one-by-one loop.

    python -m eyeglass3d.evaluation.benchmark_batch [--weights weights_card] [--photos 32] [--batch-size 8]
        [--rounds 3] [--threads 2] [--json weights_card/eval/batch_throughput_examples.json]

The photos are the example faces (`examples/`) and their mirror images, repeated to `--photos`, held in memory so
that both ways decode nothing. Each round times the loop, then the batched calls, on the same photos: a busy moment
of a shared machine hits both alike, and the headline is the median of the rounds' ratios. The report also gives the
largest difference between the two ways' outputs, so a faster batch cannot hide a different answer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from eyeglass3d.evaluation.report import EVAL_DIR, public_path, write_report
from eyeglass3d.paths import REPO_ROOT, default_weights

EXAMPLE_FACES = (REPO_ROOT / "examples" / "grace_hopper.jpg", REPO_ROOT / "examples" / "astronaut.jpg")


def example_photos(count: int) -> list[np.ndarray]:
    """`count` example-sized photos: the example faces and their mirror images, in turn."""
    faces = [np.asarray(PIL.Image.open(path).convert("RGB")) for path in EXAMPLE_FACES]
    variants = faces + [np.ascontiguousarray(face[:, ::-1]) for face in faces]
    return [variants[index % len(variants)] for index in range(count)]


def loop(pipe, photos: list) -> list:
    return [pipe.reconstruct(photo) for photo in photos]


def batched(pipe, photos: list, batch_size: int) -> list:
    return [out for start in range(0, len(photos), batch_size)
            for out in pipe.reconstruct(photos[start:start + batch_size])]


def largest_differences(one_by_one: list, together: list) -> dict[str, float]:
    """The largest absolute difference, over all photos, of each output the two ways give."""
    def worst(read) -> float:
        return max(float(np.abs(read(a).astype(np.float64) - read(b)).max()) for a, b in zip(one_by_one, together))

    return {
        "landmarks_px": worst(lambda out: out.landmarks),
        "coefficients": worst(lambda out: np.concatenate(list(out.coefficients.values()))),
        "mesh_vertices_m": worst(lambda out: np.asarray(out.mesh.vertices)),
        "inpainted_grey_levels": worst(lambda out: np.asarray(out.inpainted)),
        "glasses_mask_pixels": float(sum(int((a.glasses_mask != b.glasses_mask).sum())
                                         for a, b in zip(one_by_one, together))),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="model folder or repo id (default: the shipped weights)")
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="photos per reconstruct call in the batched way")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=str, default=str(EVAL_DIR / "batch_throughput_examples.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from eyeglass3d import Eyeglass3DPipeline
    from eyeglass3d.models.precision import native_bf16

    weights = args.weights or default_weights()
    pipe = Eyeglass3DPipeline.from_pretrained(weights)
    photos = example_photos(args.photos)
    batched(pipe, photos[: args.batch_size], args.batch_size)  # warm-up: first-call allocations of both shapes
    loop(pipe, photos[:2])

    rounds = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        one_by_one = loop(pipe, photos)
        loop_s = time.perf_counter() - started
        started = time.perf_counter()
        together = batched(pipe, photos, args.batch_size)
        batch_s = time.perf_counter() - started
        rounds.append({"loop_images_per_s": round(len(photos) / loop_s, 2),
                       "batched_images_per_s": round(len(photos) / batch_s, 2),
                       "speedup": round(loop_s / batch_s, 3)})
        print(rounds[-1], flush=True)

    report = {
        "split": "examples",
        "what": "reconstruct throughput, one list call per batch vs one call per photo (same photos, same process)",
        "weights": public_path(weights),
        "photos": len(photos),
        "photo_sizes": sorted({f"{photo.shape[1]}x{photo.shape[0]}" for photo in photos}),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "native_bf16": native_bf16(),
        "rounds": rounds,
        "loop_images_per_s_median": statistics.median(r["loop_images_per_s"] for r in rounds),
        "batched_images_per_s_median": statistics.median(r["batched_images_per_s"] for r in rounds),
        "speedup_median": round(statistics.median(r["speedup"] for r in rounds), 3),
        "largest_difference_batched_vs_loop": largest_differences(one_by_one, together),
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    return write_report(report, Path(args.json),
                        module="eyeglass3d.evaluation.benchmark_batch", argv=argv)


if __name__ == "__main__":
    main()
