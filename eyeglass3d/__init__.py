"""eyeglass3d: single-photo 3D face reconstruction that removes eyeglasses first.

Component classes are exported here because diffusers' loader resolves `model_index.json` entries
as ``["eyeglass3d", "<ClassName>"]`` by importing this package.
"""

from .errors import FaceNotFoundError, ImageInputError
from .models.detector import MTCNNDetector
from .models.face_model import FaceModel
from .models.inpainter import InpaintGenerator
from .models.landmarker import LandmarkRegressor
from .models.parser import FaceParser
from .models.regressor import CoefficientRegressor
from .outputs import ReconstructionOutput
from .pipeline import Eyeglass3DPipeline

__all__ = [
    "CoefficientRegressor",
    "Eyeglass3DPipeline",
    "FaceModel",
    "FaceNotFoundError",
    "FaceParser",
    "ImageInputError",
    "InpaintGenerator",
    "LandmarkRegressor",
    "MTCNNDetector",
    "ReconstructionOutput",
]
__version__ = "0.1.0"
