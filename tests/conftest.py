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
