"""dlib as the teacher: 68 landmarks and 128-D identity descriptors for training labels.

Our networks learn from these labels; dlib itself never ships. Only modules under
`eyeglass3d/training/` may import this file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np

LANDMARKS68_FILE = "shape_predictor_68_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"


def teacher_models_dir() -> Path:
    """The `models/` folder of `face_recognition_models`.

    Found through the import machinery rather than by importing the package, because its
    `__init__` needs pkg_resources, which recent setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("face_recognition_models is not installed (pip install face-recognition-models)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@dataclass
class TeacherLabel:
    """dlib's reading of one face. `box_px` is (x0, y0, x1, y1) in input pixels."""

    box_px: np.ndarray
    landmarks68_px: np.ndarray
    descriptor: np.ndarray
    detected: bool  # False: dlib's detector missed and the whole image served as the box


class DlibTeacher:
    """HOG detector + 68-point shape predictor + ResNet face descriptor.

    Made for aligned face crops (UTKFace): when the HOG detector finds nothing, the whole image is
    used as the box, which is close to where the detector puts it on these crops (it returns about
    (15, 15, 194, 194) on a 200-pixel UTKFace crop); callers get `detected=False` to rate the label
    lower.
    """

    def __init__(self, models_dir: str | Path | None = None, *, upsample: int = 0, with_descriptor: bool = True):
        models_dir = Path(models_dir) if models_dir is not None else teacher_models_dir()
        self.upsample = upsample
        self.face_detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(str(models_dir / LANDMARKS68_FILE))
        self.descriptor_model = (
            dlib.face_recognition_model_v1(str(models_dir / DESCRIPTOR_FILE)) if with_descriptor else None
        )

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """The face box (x0, y0, x1, y1) nearest the image centre, or None when dlib finds no face."""
        rects = self.face_detector(_as_rgb_uint8(image), self.upsample)
        if len(rects) == 0:
            return None
        height, width = image.shape[:2]
        centre = np.array([width / 2, height / 2])
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float32)
        distance = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - centre, axis=1)
        return boxes[int(np.argmin(distance))]

    def landmarks(self, image: np.ndarray, box_px: np.ndarray) -> np.ndarray:
        shape = self.shape_predictor(_as_rgb_uint8(image), _rectangle(box_px))
        return np.array([[p.x, p.y] for p in shape.parts()], np.float32)

    def descriptor(self, image: np.ndarray, landmarks68_px: np.ndarray) -> np.ndarray:
        """dlib's 128-D identity embedding (unit-ish norm; same person when distance < 0.6)."""
        if self.descriptor_model is None:
            raise RuntimeError("DlibTeacher was built with with_descriptor=False")
        landmarks = np.asarray(landmarks68_px)
        box = np.concatenate([landmarks.min(0), landmarks.max(0)])
        points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])
        shape = dlib.full_object_detection(_rectangle(box), points)
        return np.asarray(self.descriptor_model.compute_face_descriptor(_as_rgb_uint8(image), shape), np.float32)

    def __call__(self, image: np.ndarray, fallback_box: np.ndarray | None = None) -> TeacherLabel:
        """Label the face nearest the centre; where dlib's detector misses, place the 68 points in
        `fallback_box` (another detector's face, for uncropped photos) or else the whole image."""
        image = _as_rgb_uint8(image)
        box = self.detect(image)
        detected = box is not None
        if box is None and fallback_box is not None:
            box = np.asarray(fallback_box, np.float32)
        elif box is None:
            height, width = image.shape[:2]
            box = np.array([0, 0, width - 1, height - 1], np.float32)
        landmarks = self.landmarks(image, box)
        descriptor = (
            self.descriptor(image, landmarks) if self.descriptor_model is not None else np.full(128, np.nan, np.float32)
        )
        return TeacherLabel(box_px=box, landmarks68_px=landmarks, descriptor=descriptor, detected=detected)


def _rectangle(box_px: np.ndarray) -> dlib.rectangle:
    x0, y0, x1, y1 = (int(round(float(v))) for v in box_px)
    return dlib.rectangle(x0, y0, x1, y1)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)
