"""The one pipeline: photo → detect → landmarks → parse → delete + inpaint → regress → textured mesh.

Each stage lives in its own module; this file only moves tensors between them in documented frames:
*input pixels* (the loaded photo), the *unit crop* (the canonical similarity-aligned face square,
`geometry.alignment`) and regions of it (a network's `crop_box`), and *model space* in metres.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
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
        glasses_mask=None,
        remove_glasses: bool = True,
        all_faces: bool = False,
        on_stage=None,
        errors: str = "raise",
    ):
        """Reconstruct the largest face (or every face with `all_faces=True`, giving a list).

        image: PIL image, HxWx3 uint8 RGB array, path or bytes. A list (or tuple) of them gives a list of
            results in the same order; the networks then run on the crops of all its faces stacked together
            (each face's `timings_ms` then holds its share of a stage's time).
        glasses_mask: (H, W) bool in input pixels, overriding the parser (e.g. painted by hand); (H, W, C)
            is read from its alpha (C = 2 or 4) or its brightest channel. With a list of images: one array
            for all, or a list with one mask (or None) per image.
        remove_glasses: False keeps the photo as is (no deletion, no inpainting).
        on_stage: called with each stage's name ("detect", "landmarks", "parse", "inpaint", "regress",
            "mesh") as it starts, once per call, so a UI can show real progress.
        errors: what a list does with a bad image (unreadable, no face, a mask that does not fit): "raise"
            (default) raises that image's error before any network runs, its type kept, "image <i>: " before
            its message and `error.index = i`; "return" puts the error (message as is, `error.index` set) in the
            image's place and reconstructs the others. A single image always raises.
        """
        batch = isinstance(image, (list, tuple))
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        remove_glasses = _flag("remove_glasses", remove_glasses)
        all_faces = _flag("all_faces", all_faces)
        images = list(image) if batch else [image]
        masks = _masks_per_image(glasses_mask, len(images), batch)
        report = on_stage or (lambda stage: None)

        report("detect")
        faces: list[_Face] = []
        failures: dict[int, ValueError] = {}
        for index, (item, mask) in enumerate(zip(images, masks)):
            try:
                faces += self._find_faces(index, item, mask, remove_glasses, all_faces)
            except ValueError as error:
                if not batch:
                    raise
                error.index = index
                if errors == "raise":
                    error.args = (f"image {index}: {error}", *error.args[1:])
                    raise
                failures[index] = error

        for name, stage in (
            ("landmarks", self._landmark_stage),
            ("parse", self._parse_stage),
            ("inpaint", self._inpaint_stage),
            ("regress", self._regress_stage),
            ("mesh", self._mesh_stage),
        ):
            report(name)
            clock = time.perf_counter()
            if faces:
                stage(faces)
            share = (time.perf_counter() - clock) * 1e3 / max(len(faces), 1)
            for face in faces:
                face.timings[name] = share

        per_image: dict[int, list[ReconstructionOutput]] = {}
        for face in faces:
            per_image.setdefault(face.image_index, []).append(face.output())
        results = [
            failures[index] if index in failures else per_image[index] if all_faces else per_image[index][0]
            for index in range(len(images))
        ]
        return results if batch else results[0]

    # ------------------------------------------------------------------ stages
    def _find_faces(self, index, image, glasses_mask, remove_glasses, all_faces) -> list[_Face]:
        """Load one image and detect its faces (largest first). Detection runs image by image: its pyramid is cut to
        each photo's size."""
        clock = time.perf_counter()
        rgb = load_image(image)
        user_mask = self._check_mask(glasses_mask, rgb.shape[:2])
        detections = self._detect(rgb)
        if not detections:
            raise FaceNotFoundError("No face found in the image. Use a photo where one face is clearly visible.")
        detect_ms = (time.perf_counter() - clock) * 1e3
        return [
            _Face(index, rgb, detection, user_mask, remove_glasses, {"detect": detect_ms})
            for detection in (detections if all_faces else detections[:1])
        ]

    @staticmethod
    def _check_mask(glasses_mask, shape) -> np.ndarray | None:
        """A bool (H, W) mask from what a caller may paint: bool, 0/255, 0..1 floats, one to four channels."""
        if glasses_mask is None:
            return None
        try:
            mask = np.asarray(glasses_mask)
        except (TypeError, ValueError) as error:
            raise ValueError(f"glasses_mask cannot be read as an array: {error}") from error
        if mask.dtype.kind not in "biuf":
            raise ValueError(f"glasses_mask has dtype {mask.dtype}; use bool, integers or floats")
        if mask.dtype.kind == "f" and not np.isfinite(mask).all():
            raise ValueError("glasses_mask contains NaN or infinite values")
        if not (mask.ndim == 2 or (mask.ndim == 3 and 1 <= mask.shape[-1] <= 4)):
            raise ValueError(f"glasses_mask must be (H, W) or (H, W, 1..4 channels), got shape {mask.shape}")
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

    def _landmark_stage(self, faces: list[_Face]) -> None:
        """68 landmarks per face, crop by crop: the landmarker's fp32 kernels answer a float ulp apart for one crop
        and for several, and under bf16 the inpainter's landmark guidance turns that ulp into a grey level and the
        coefficients move by ~1e-3. At ~7 ms a face, the same answer in a batch is worth more than the ~4 ms that
        stacking would save."""
        for face in faces:
            face.landmarks = self.landmarker.predict(face.rgb, face.points5)
            face.stages["landmarker"] = "network"

    def _parse_stage(self, faces: list[_Face]) -> None:
        """Class map in input pixels (the parser inside its band, landmark-drawn parts elsewhere) and the glasses
        mask: the caller's, else the parser's grown to cover the frames' edges."""
        for face in faces:
            height, width = face.rgb.shape[:2]
            face.parsing = parsing_from_landmarks(face.landmarks, height, width)
        if self.parser is None:
            predicted = [np.zeros(face.rgb.shape[:2], bool) for face in faces]
            how = "landmark-drawn parts; no glasses parser shipped"
        else:
            predicted, how = self._parser_masks(faces), "network"
        eyeglasses = PARSING_LABELS.index("eyeglasses")
        for face, mask in zip(faces, predicted):
            face.stages["parser"] = how
            if face.user_mask is not None:
                mask = face.user_mask
                face.stages["parser"] += " (glasses mask given by the caller)"
            face.glasses_mask = mask
            face.parsing[mask] = eyeglasses

    def _parser_masks(self, faces: list[_Face]) -> list[np.ndarray]:
        """The parser on every face's eye band in one forward; writes its labels into each face's parsing and
        returns the grown glasses masks."""
        band_labels = self.parser.predict_batch([face.rgb for face in faces], [face.points5 for face in faces])
        # Map the parser's own label names onto the pipeline's label list.
        lookup = np.full(256, 255, np.uint8)
        lookup[: len(self.parser.config.labels)] = [PARSING_LABELS.index(name) for name in self.parser.config.labels]
        masks = []
        for face, labels in zip(faces, band_labels):
            back = lookup[labels]
            inside = back != 255
            face.parsing[inside] = back[inside]
            glasses = face.parsing == PARSING_LABELS.index("eyeglasses")
            masks.append(grow_glasses_mask(glasses, face.landmarks))
        return masks

    def _inpaint_stage(self, faces: list[_Face]) -> None:
        """Glasses deleted and filled where a mask was found (and removal asked for); other faces pass through."""
        todo = [face for face in faces if face.remove_glasses and face.glasses_mask.any()]
        for face in faces:
            face.inpainted, face.stages["inpainter"] = face.rgb, "skipped"
        if not todo:
            return
        if self.inpainter is None:
            for face in todo:
                face.inpainted = classical_inpaint(face.rgb, face.glasses_mask, "telea")
                face.stages["inpainter"] = "OpenCV Telea (no inpainting network shipped)"
            return
        filled_faces = self.inpainter.predict_batch(
            [face.rgb for face in todo], [face.points5 for face in todo], [face.landmarks for face in todo],
            [face.glasses_mask for face in todo],
        )
        for face, (filled, handled) in zip(todo, filled_faces):
            outside = face.glasses_mask & ~handled
            if outside.any():  # a hand-painted mask may reach past the network's band
                filled = classical_inpaint(filled, outside, "telea")
            face.inpainted, face.stages["inpainter"] = filled, "network"

    def _regress_stage(self, faces: list[_Face]) -> None:
        """3DMM coefficients in the canonical crop's camera, from crops cut from the landmarks' five points.

        The shape must not follow the detector's eye points, which glasses move by ~5 % of the eye distance: the
        regressor's and the texture's crops come from the landmarks. (The parser and the inpainter map their
        answers back to the photo, and were trained on the detector's crops.)"""
        for face in faces:
            face.shape_points5 = alignment.five_points_from_landmarks(face.landmarks)
        if self.regressor is None:
            for face in faces:
                face.coefficients, face.stages["regressor"] = self._fit(face.inpainted, face.shape_points5, face.landmarks)
            return
        regressed = self.regressor.predict_batch([face.inpainted for face in faces], [face.shape_points5 for face in faces])
        for face, coefficients in zip(faces, regressed):
            face.coefficients, face.stages["regressor"] = coefficients, "network"

    def _fit(self, rgb, points5, landmarks_px):
        """Coefficients fitted to the landmarks while no regressor is shipped; projection scales with the crop
        size, so the pose means the same at every resolution (see FaceModel.project)."""
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

    def _mesh_stage(self, faces: list[_Face]) -> None:
        for face in faces:
            face.mesh = self._textured_mesh(face.inpainted, face.shape_points5, face.coefficients)

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


@dataclass
class _Face:
    """One face on its way through the stages; each stage fills its fields in for every face of a call at once."""

    image_index: int
    rgb: np.ndarray
    detection: object
    user_mask: np.ndarray | None
    remove_glasses: bool
    timings: dict[str, float]
    stages: dict[str, str] = field(default_factory=lambda: {"detector": "network"})
    landmarks: np.ndarray | None = None
    parsing: np.ndarray | None = None
    glasses_mask: np.ndarray | None = None
    inpainted: np.ndarray | None = None
    shape_points5: np.ndarray | None = None
    coefficients: dict[str, torch.Tensor] | None = None
    mesh: object = None

    @property
    def points5(self) -> np.ndarray:
        """The detector's five points: the landmarker's, the parser's and the inpainter's crops are cut from them."""
        return self.detection.points.astype(np.float64)

    def output(self) -> ReconstructionOutput:
        return ReconstructionOutput(
            face_box=self.detection.box.astype(np.float32),
            score=float(self.detection.score),
            landmarks=self.landmarks.astype(np.float32),
            parsing=self.parsing,
            parsing_labels=list(PARSING_LABELS),
            glasses_mask=self.glasses_mask,
            inpainted=PIL.Image.fromarray(self.inpainted),
            coefficients={name: value[0].cpu().numpy() for name, value in self.coefficients.items()},
            mesh=self.mesh,
            image=PIL.Image.fromarray(self.rgb),
            stages=self.stages,
            timings_ms={name: round(value, 1) for name, value in self.timings.items()},
            points5=self.shape_points5.astype(np.float32),
        )


def _flag(name: str, value) -> bool:
    """True/False (or 1/0): a string such as "no" would otherwise pass as true."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def _masks_per_image(glasses_mask, count: int, batch: bool) -> list:
    """One glasses_mask entry per image: a list of images takes a list with one mask (or None) each, or one
    array for all of them."""
    if batch and isinstance(glasses_mask, (list, tuple)):
        if len(glasses_mask) != count:
            raise ValueError(
                f"glasses_mask is a list of {len(glasses_mask)} masks for {count} images: give one per image "
                "(None where the parser decides), or one array for all"
            )
        return list(glasses_mask)
    return [glasses_mask] * count
