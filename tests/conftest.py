"""Shared fixtures: a pipeline of tiny random networks saved through the real `save_pretrained` path.

The detector and the face model are the shipped ones (they are real from day one: converted MTCNN
weights and the ICT face model); the four trained networks are tiny and random, so unit tests
exercise every stage's plumbing in seconds without depending on training results.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = REPO_ROOT / "weights_card"
EXAMPLES = REPO_ROOT / "examples"


def build_tiny_pipeline():
    from eyeglass3d import (
        CoefficientRegressor,
        Eyeglass3DPipeline,
        FaceModel,
        FaceParser,
        InpaintGenerator,
        LandmarkRegressor,
        MTCNNDetector,
    )

    return Eyeglass3DPipeline(
        detector=MTCNNDetector.from_pretrained(WEIGHTS / "detector").float(),
        landmarker=LandmarkRegressor(input_size=64, variant="small", width_mult=0.25),
        face_model=FaceModel.from_pretrained(WEIGHTS / "face_model").float(),
        parser=FaceParser(base_channels=4, depth=2, input_size=(32, 64)),
        inpainter=InpaintGenerator(base_channels=4, num_residual_blocks=7, input_size=(32, 64)),
        regressor=CoefficientRegressor(backbone="mobilenet_v3_large", input_size=64),
    )


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    build_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_pipeline_dir):
    from eyeglass3d import Eyeglass3DPipeline

    return Eyeglass3DPipeline.from_pretrained(tiny_pipeline_dir)


@pytest.fixture(scope="session")
def example_records():
    """Two real photos as training records, with plausible 68-point labels placed from five hand-read points."""
    import numpy as np
    import PIL.Image

    from eyeglass3d.geometry.alignment import crop_matrix, invert_affine, transform_points
    from eyeglass3d.models.landmarker import FRONTAL_MEAN_LANDMARKS
    from eyeglass3d.training.datasets import FaceRecord

    out = []
    five = {
        "astronaut.jpg": [[205, 108], [243, 106], [224, 128], [208, 148], [241, 147]],
        "grace_hopper.jpg": [[226, 205], [304, 203], [268, 247], [234, 285], [297, 285]],
    }
    for name, points in five.items():
        image = np.asarray(PIL.Image.open(EXAMPLES / name).convert("RGB"))
        points5 = np.array(points, np.float64)
        unit = np.array(FRONTAL_MEAN_LANDMARKS) + np.random.default_rng(0).normal(0, 0.01, (68, 2))
        landmarks = transform_points(invert_affine(crop_matrix(points5, 1)), unit).astype(np.float32)
        out.append(FaceRecord(image, landmarks, points5.astype(np.float32), np.zeros(128, np.float32), False))
    return out
