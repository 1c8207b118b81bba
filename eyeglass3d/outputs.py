"""What `Eyeglass3DPipeline.reconstruct` returns for one face."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import trimesh
from diffusers.utils import BaseOutput


@dataclass
class ReconstructionOutput(BaseOutput):
    """One reconstructed face. Coordinates are input-image pixels unless a name says otherwise.

    `stages` records how each stage was produced ("network", or the fallback used while a component
    is not shipped) so that nobody mistakes a fallback for the trained model; `timings_ms` is per stage.
    """

    face_box: np.ndarray  # (4,) float32 x0, y0, x1, y1
    score: float
    landmarks: np.ndarray  # (68, 2) float32, iBUG-68 order
    parsing: np.ndarray  # (H, W) uint8 class ids into parsing_labels
    parsing_labels: list[str]
    glasses_mask: np.ndarray  # (H, W) bool, the area that removal replaced
    inpainted: PIL.Image.Image  # input size; identical to the input outside glasses_mask
    coefficients: dict[str, np.ndarray]  # identity, expression, texture, lighting, pose
    mesh: trimesh.Trimesh  # metres, +y up, +z out of the face, UV-textured
    image: PIL.Image.Image | None = None  # the input as loaded (EXIF-rotated RGB)
    stages: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    points5: np.ndarray | None = None  # (5, 2) float32, the crop of the regressor and the texture: eye centres, nose tip, mouth corners of `landmarks`

    def export(self, path: str | Path) -> list[Path]:
        """Write the textured mesh: `.glb`, or `.obj` with its `.mtl` and `.png`; returns the files written."""
        from .mesh import export_mesh

        return export_mesh(self.mesh, path)

    def coefficients_json(self) -> str:
        """The 3DMM coefficients and face geometry as JSON, for downloads and sharing."""
        payload = {name: np.asarray(value).astype(float).round(6).tolist() for name, value in self.coefficients.items()}
        payload["face_box"] = np.asarray(self.face_box).astype(float).round(2).tolist()
        payload["landmarks"] = np.asarray(self.landmarks).astype(float).round(2).tolist()
        payload["stages"] = dict(self.stages)
        return json.dumps(payload)
