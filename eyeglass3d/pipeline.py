"""The one pipeline: photo → detect → landmarks → parse → delete + inpaint → regress → textured mesh.

Each stage lives in its own module; this file only moves tensors between them in documented frames:
*input pixels* (the loaded photo), the *unit crop* (the canonical similarity-aligned face square,
`geometry.alignment`) and regions of it (a network's `crop_box`), and *model space* in metres.
"""

from __future__ import annotations

import json
import os
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline

from .errors import FaceNotFoundError
from .geometry import alignment
from .geometry.face_regions import PARSING_LABELS, grow_glasses_mask, parsing_from_landmarks
from .geometry.fitting import fit_landmarks
from .geometry.photometric_fit import bounded_shading, fit_photometric
from .image_io import fit_within, load_image
from .inpaint_classical import classical_inpaint
from .mesh import build_mesh
from .models.face_model import COEFFICIENT_SIZES
from .outputs import ReconstructionOutput
from .render.texture import atlas_uv, unwrap_texture

COMPONENT_MODULES = tuple(
    f"eyeglass3d.models.{name}" for name in ("detector", "landmarker", "face_model", "parser", "inpainter", "regressor")
)
REQUIRED_COMPONENTS = ("detector", "landmarker", "face_model")
OPTIONAL_COMPONENTS = ("parser", "inpainter", "regressor")
DETECTION_MAX_SIDE = 1280
# The photo is sampled from a 384-px canonical crop into a 256 x 512 UV atlas: about 3x faster than 512 / 512
# (texture unwrapping was two thirds of a reconstruction) and hard to tell apart in the viewer.
TEXTURE_CROP_SIZE = 384
TEXTURE_SIZE = 256
FIT_CROP_SIZE = 224


def resolve_model_folder(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local folder as is; a Hub repo id through `snapshot_download` (diffusers refuses our components
    when given a repo id, so we download first and load from the folder)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                str(name_or_path),
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=bool(local_files_only),
                allow_patterns=["model_index.json", "*/config.json", "*.safetensors", "README.md"],
            )
        )
    except HFValidationError as error:
        raise ValueError(f"{name_or_path!s} is neither a folder nor a valid Hub repo id") from error
    except LocalEntryNotFoundError as error:
        raise OSError(
            f"Cannot load {name_or_path!s}: it is not a local folder and not in the Hugging Face cache, and the Hub "
            "cannot be reached (offline mode or no network). Download it once online, or pass a local folder."
        ) from error


def check_model_folder(folder: Path) -> dict:
    """Fail early, naming the component, when the model repo lacks something the pipeline needs."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{folder} has no model_index.json: not an eyeglass3d model repo")
    index = json.loads(index_file.read_text())
    problems = []
    for name in REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS:
        entry = index.get(name)
        declared = isinstance(entry, list) and entry[0] is not None
        if not declared:
            if name in REQUIRED_COMPONENTS:
                problems.append(f"component '{name}' is not declared in model_index.json")
            continue
        weights = folder / name / "diffusion_pytorch_model.safetensors"
        if not (folder / name / "config.json").is_file() or not weights.is_file():
            problems.append(f"component '{name}' is missing: expected {name}/config.json and {weights.name}")
    if problems:
        raise FileNotFoundError(f"Incomplete model repo {folder}: " + "; ".join(problems))
    return index


class Eyeglass3DPipeline(DiffusionPipeline):
    """Single-photo 3D face reconstruction that removes eyeglasses first.

    `parser`, `inpainter` and `regressor` may be declared absent (``[null, null]`` in model_index.json)
    while they are not trained: the pipeline then uses landmark-drawn parsing, OpenCV Telea inpainting
    and landmark fitting, and says so in `output.stages`.
    """

    _optional_components = list(OPTIONAL_COMPONENTS)

    def __init__(self, detector, landmarker, face_model, parser=None, inpainter=None, regressor=None):
        super().__init__()
        self.register_modules(
            detector=detector,
            landmarker=landmarker,
            face_model=face_model,
            parser=parser,
            inpainter=inpainter,
            regressor=regressor,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a local folder or a Hub repo id (`revision=`, `cache_dir=`, `token=` are honoured)."""
        folder = resolve_model_folder(
            pretrained_model_name_or_path,
            revision=kwargs.pop("revision", None),
            cache_dir=kwargs.pop("cache_dir", None),
            token=kwargs.pop("token", None),
            local_files_only=kwargs.pop("local_files_only", None),
        )
        check_model_folder(folder)
        # diffusers resolves ["eyeglass3d.models.<module>", "<Class>"] entries only for modules already
        # imported; the package exports them lazily, so import them here.
        for module in COMPONENT_MODULES:
            import_module(module)
        pipe = super().from_pretrained(folder, **kwargs)
        # Weights ship in fp16 to keep the repo small; CPU inference runs in fp32.
        for name in REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS:
            module = getattr(pipe, name, None)
            if module is not None:
                module.float().eval().requires_grad_(False)
        return pipe

    # ------------------------------------------------------------------ public API
    def __call__(self, image, **kwargs):
        return self.reconstruct(image, **kwargs)

    @torch.inference_mode()
    def reconstruct(
        self,
        image,
        glasses_mask: np.ndarray | None = None,
        remove_glasses: bool = True,
        all_faces: bool = False,
        on_stage=None,
    ):
        """Reconstruct the largest face (or every face with `all_faces=True`, giving a list).

        image: PIL image, HxWx3 uint8 RGB array, path or bytes; a list gives a list of results.
        glasses_mask: (H, W) bool in input pixels, overriding the parser (e.g. painted by hand).
        remove_glasses: False keeps the photo as is (no deletion, no inpainting).
        on_stage: called with each stage's name ("detect", "landmarks", "parse", "inpaint", "regress",
            "mesh") as it starts, so a UI can show real progress.
        """
        if isinstance(image, (list, tuple)):
            return [self.reconstruct(item, glasses_mask, remove_glasses, all_faces, on_stage) for item in image]
        report = on_stage or (lambda stage: None)
        timings: dict[str, float] = {}
        report("detect")
        clock = time.perf_counter()
        rgb = load_image(image)
        user_mask = self._check_mask(glasses_mask, rgb.shape[:2])
        detections = self._detect(rgb)
        timings["detect"] = (time.perf_counter() - clock) * 1e3
        if not detections:
            raise FaceNotFoundError("No face found in the image. Use a photo where one face is clearly visible.")
        chosen = detections if all_faces else detections[:1]
        results = [
            self._reconstruct_face(rgb, detection, user_mask, remove_glasses, dict(timings), report)
            for detection in chosen
        ]
        return results if all_faces else results[0]

    # ------------------------------------------------------------------ stages
    @staticmethod
    def _check_mask(glasses_mask, shape) -> np.ndarray | None:
        if glasses_mask is None:
            return None
        mask = np.asarray(glasses_mask)
        if mask.ndim == 3:
            mask = mask[..., -1] if mask.shape[-1] in (2, 4) else mask.max(-1)
        if mask.shape != tuple(shape):
            raise ValueError(f"glasses_mask has shape {mask.shape}; the image is {tuple(shape)} (H, W)")
        return mask > (127 if mask.dtype == np.uint8 else 0)

    def _detect(self, rgb: np.ndarray):
        working, scale = fit_within(rgb, DETECTION_MAX_SIDE)
        detections = self.detector.detect(working)
        for detection in detections:
            detection.box = (detection.box * scale).astype(np.float32)
            detection.points = (detection.points * scale).astype(np.float32)
        return detections

    def _reconstruct_face(self, rgb, detection, user_mask, remove_glasses, timings, report) -> ReconstructionOutput:
        height, width = rgb.shape[:2]
        stages: dict[str, str] = {"detector": "network"}
        points5 = detection.points.astype(np.float64)

        report("landmarks")
        clock = time.perf_counter()
        landmarks_px = self.landmarker.predict(rgb, points5)
        stages["landmarker"] = "network"
        timings["landmarks"] = (time.perf_counter() - clock) * 1e3

        report("parse")
        clock = time.perf_counter()
        parsing, predicted_mask, stages["parser"] = self._parse(rgb, points5, landmarks_px)
        if user_mask is not None:
            glasses_mask = user_mask
            stages["parser"] += " (glasses mask given by the caller)"
        else:
            glasses_mask = predicted_mask
        parsing[glasses_mask] = PARSING_LABELS.index("eyeglasses")
        timings["parse"] = (time.perf_counter() - clock) * 1e3

        report("inpaint")
        clock = time.perf_counter()
        if remove_glasses and glasses_mask.any():
            inpainted, stages["inpainter"] = self._inpaint(rgb, points5, landmarks_px, glasses_mask)
        else:
            inpainted, stages["inpainter"] = rgb, "skipped"
        timings["inpaint"] = (time.perf_counter() - clock) * 1e3

        report("regress")
        clock = time.perf_counter()
        # The shape must not follow the detector's eye points, which glasses move by ~5 % of the eye distance:
        # the regressor's and the texture's crops come from the landmarks' five points. (The parser and the
        # inpainter map their answers back to the photo, and were trained on the detector's crops.)
        shape_points5 = alignment.five_points_from_landmarks(landmarks_px)
        coefficients, stages["regressor"] = self._regress(inpainted, shape_points5, landmarks_px)
        timings["regress"] = (time.perf_counter() - clock) * 1e3

        report("mesh")
        clock = time.perf_counter()
        mesh = self._textured_mesh(inpainted, shape_points5, coefficients)
        timings["mesh"] = (time.perf_counter() - clock) * 1e3

        return ReconstructionOutput(
            face_box=detection.box.astype(np.float32),
            score=float(detection.score),
            landmarks=landmarks_px.astype(np.float32),
            parsing=parsing,
            parsing_labels=list(PARSING_LABELS),
            glasses_mask=glasses_mask,
            inpainted=PIL.Image.fromarray(inpainted),
            coefficients={name: value[0].cpu().numpy() for name, value in coefficients.items()},
            mesh=mesh,
            image=PIL.Image.fromarray(rgb),
            stages=stages,
            timings_ms={name: round(value, 1) for name, value in timings.items()},
            points5=shape_points5.astype(np.float32),
        )

    def _parse(self, rgb, points5, landmarks_px):
        """Class map in input pixels: the parser inside its band, landmark-drawn parts elsewhere."""
        height, width = rgb.shape[:2]
        parsing = parsing_from_landmarks(landmarks_px, height, width)
        if self.parser is None:
            return parsing, np.zeros((height, width), bool), "landmark-drawn parts; no glasses parser shipped"
        region_labels = self.parser.predict(rgb, points5)
        # Map the parser's own label names onto the pipeline's label list.
        lookup = np.full(256, 255, np.uint8)
        lookup[: len(self.parser.config.labels)] = [PARSING_LABELS.index(name) for name in self.parser.config.labels]
        back = lookup[region_labels]
        inside = back != 255
        parsing[inside] = back[inside]
        glasses = parsing == PARSING_LABELS.index("eyeglasses")
        return parsing, grow_glasses_mask(glasses, landmarks_px), "network"

    def _inpaint(self, rgb, points5, landmarks_px, glasses_mask):
        if self.inpainter is None:
            return classical_inpaint(rgb, glasses_mask, "telea"), "OpenCV Telea (no inpainting network shipped)"
        out, handled = self.inpainter.predict(rgb, points5, landmarks_px, glasses_mask)
        outside = glasses_mask & ~handled
        if outside.any():  # a hand-painted mask may reach past the network's band
            out = classical_inpaint(out, outside, "telea")
        return out, "network"

    def _regress(self, rgb, points5, landmarks_px):
        """3DMM coefficients in the canonical crop's camera; projection scales with the crop size, so the
        pose means the same at every resolution (see FaceModel.project)."""
        if self.regressor is not None:
            return self.regressor.predict(rgb, points5), "network"
        matrix = alignment.crop_matrix(points5, FIT_CROP_SIZE)
        stage = "fitted to the 68 landmarks (no regressor network shipped)"
        with torch.inference_mode(False), torch.enable_grad():
            landmarks_crop = torch.from_numpy(alignment.transform_points(matrix, landmarks_px)).float()[None]
            fitted = fit_landmarks(self.face_model, landmarks_crop, FIT_CROP_SIZE)
            if self.face_model.config.has_texture_basis:  # albedo and light for the texture's unseen parts
                crop = alignment.warp_crop(rgb, matrix, FIT_CROP_SIZE)
                # Only the linear albedo and light solves: the fill needs colours, not a better shape, and
                # the full descent (~0.85 s) would triple the time of a reconstruction.
                fitted = fit_photometric(
                    self.face_model, crop[None], landmarks_crop, fitted, iterations=0, fit_shape=False
                )
                stage = "fitted to the 68 landmarks; albedo and light solved from the photo (no regressor shipped)"
        coefficients = {
            name: fitted[name].detach().reshape(1, -1) if name in fitted else torch.zeros(1, size)
            for name, size in COEFFICIENT_SIZES.items()
        }
        return coefficients, stage

    def _textured_mesh(self, rgb, points5, coefficients):
        """Mesh in model space (metres), textured from the photo where visible, albedo × light elsewhere."""
        model = self.face_model
        vertices_m = model.shape(coefficients["identity"], coefficients["expression"])
        camera = model.to_camera(vertices_m, coefficients["pose"])
        projected = model.project(camera, TEXTURE_CROP_SIZE)
        matrix = alignment.crop_matrix(points5, TEXTURE_CROP_SIZE)
        crop = alignment.warp_crop(rgb, matrix, TEXTURE_CROP_SIZE)
        albedo = model.albedo(coefficients["texture"])
        normals = model.vertex_normals(camera)
        shaded = bounded_shading(model, albedo, camera, normals, coefficients["lighting"]).clamp(0, 1)
        texture, _ = unwrap_texture(
            crop,
            projected[0].numpy(),
            model.triangles.numpy(),
            model.uv_coords.float().numpy(),
            model.uv_triangles.numpy(),
            size=TEXTURE_SIZE,
            fallback_rgb=shaded[0].numpy(),
            mirror_index=model.mirror_index.numpy(),
            normals=normals[0].numpy(),
        )
        return build_mesh(
            vertices_m[0].numpy(),
            model.triangles.numpy(),
            atlas_uv(model.uv_coords.float().numpy()),
            model.uv_triangles.numpy(),
            texture,
        )
