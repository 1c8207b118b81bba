"""eyeglass3d: single-photo 3D face reconstruction that removes eyeglasses first.

Names are imported lazily (PEP 562): `import eyeglass3d` stays cheap for the CLI, and diffusers'
loader still finds component classes here when it resolves `["eyeglass3d", "<ClassName>"]` entries
of `model_index.json`.
"""

from importlib import import_module

from .errors import FaceNotFoundError, ImageInputError

_LAZY = {
    "Eyeglass3DPipeline": ".pipeline",
    "ReconstructionOutput": ".outputs",
    "MTCNNDetector": ".models.detector",
    "LandmarkRegressor": ".models.landmarker",
    "FaceParser": ".models.parser",
    "InpaintGenerator": ".models.inpainter",
    "CoefficientRegressor": ".models.regressor",
    "FaceModel": ".models.face_model",
}

__all__ = ["FaceNotFoundError", "ImageInputError", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'eyeglass3d' has no attribute {name!r}")
