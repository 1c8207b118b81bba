"""Synthetic eyeglasses on real faces: exact glasses masks and exact glasses-free targets.

No photo set here comes with eyeglasses masks, so the parser ("deleter"), the inpainter and the
landmark network learn from faces that had glasses put on them here: the clean photo is the
inpainting target, and the mask marks every pixel the glasses changed.

The mask covers frames, temples where they lie in front of the head, the whole lens area (also for
clear lenses, like CelebAMask-HQ's `eye_g`) and the soft frame shadow on the skin: the inpainter
has to remove the shadow too, so the shadow halo is glasses. Outside the mask the output equals
the input bit for bit.

Two sources of frames: procedural outlines of common shapes (`glasses.procedural`), and the
jeeliz glassesVTO 3D model (Apache-2.0), rasterised in perspective (`glasses.mesh_glasses`).
Lenses are clear (a faint room reflection from the jeeliz environment map, streaks, a little
refraction), tinted, gradient, dark or mirrored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..paths import data_root
from .glasses.layers import GlassesLayers
from .glasses.materials import LENS_TINTS, MIRROR_TINTS, MIRROR_WEIGHTS, SUN_TINTS, weighted_choice
from .glasses.mesh_glasses import FRAME_FILE, GlassesMesh, render_mesh
from .glasses.placement import HeadOccluder, estimate_head_pose
from .glasses.procedural import FRAME_SHAPES, SHAPE_WEIGHTS, render_procedural, sample_style

LENS_KINDS = ("clear", "tinted", "gradient", "sunglasses", "mirrored")
LENS_WEIGHTS = {"clear": 0.5, "tinted": 0.1, "gradient": 0.1, "sunglasses": 0.2, "mirrored": 0.1}
SOURCES = ("procedural", "mesh")
MASK_ALPHA = 0.02  # coverage below this is dropped (and the pixel left untouched)

__all__ = ["FRAME_SHAPES", "LENS_KINDS", "SOURCES", "GlassesCompositor", "GlassesSample"]


@dataclass
class GlassesSample:
    """One face with synthetic glasses, the exact mask of what changed, and the untouched original."""

    image: np.ndarray  # (H, W, 3) uint8: the face wearing glasses
    mask: np.ndarray  # (H, W) bool: every pixel the glasses changed (frames, visible temples, lenses, shadow)
    clean: np.ndarray  # (H, W, 3) uint8: the input, unchanged
    params: dict  # what was drawn; JSON-serialisable


class GlassesCompositor:
    """Put random eyeglasses on a face photo, placed from its 68 iBUG landmarks.

    `seed` drives the compositor's own generator, used when a call passes no `rng`. Every call
    draws one 63-bit sample seed (reported in `params["seed"]`) and everything else follows from
    it, so the same seed and inputs give the same output. `shape` (procedural frames only), `lens`
    and `source` force a choice; otherwise shapes and lens kinds are drawn with `shape_weights` / `lens_weights`, and
    the 3D model with `mesh_probability`. `supersample` (procedural) and `mesh_supersample` are the
    anti-aliasing factors for faces about 80 px between the eyes; larger faces get fewer.
    """

    def __init__(
        self,
        seed: int = 0,
        mesh_probability: float = 0.35,
        shape_weights: dict[str, float] | None = None,
        lens_weights: dict[str, float] | None = None,
        supersample: int = 4,
        mesh_supersample: int = 3,
        glasses_dir: str | Path | None = None,
    ):
        self._rng = np.random.default_rng(seed)
        self.mesh_probability = float(mesh_probability)
        self.shape_weights = _checked_weights(shape_weights or SHAPE_WEIGHTS, FRAME_SHAPES, "shape")
        self.lens_weights = _checked_weights(lens_weights or LENS_WEIGHTS, LENS_KINDS, "lens")
        self.supersample = int(supersample)
        self.mesh_supersample = int(mesh_supersample)
        self.glasses_dir = Path(glasses_dir) if glasses_dir is not None else data_root() / "glasses" / "glassesVTO"
        if self.mesh_probability > 0 and not (self.glasses_dir / FRAME_FILE).exists():
            raise FileNotFoundError(
                f"no {FRAME_FILE} in {self.glasses_dir}: set EYEGLASS3D_DATA or pass glasses_dir, "
                "or mesh_probability=0 for procedural frames only"
            )

    def __call__(
        self,
        image: np.ndarray,
        landmarks_px: np.ndarray,
        rng: np.random.Generator | None = None,
        *,
        shape: str | None = None,
        lens: str | None = None,
        source: str | None = None,
    ) -> GlassesSample:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        landmarks = np.asarray(landmarks_px, np.float64)
        if landmarks.shape != (68, 2) or not np.isfinite(landmarks).all():
            raise ValueError(f"expected 68 finite (x, y) landmarks, got shape {landmarks.shape}")
        choices = ((shape, FRAME_SHAPES, "shape"), (lens, LENS_KINDS, "lens"), (source, SOURCES, "source"))
        for value, allowed, name in choices:
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {allowed}")

        seed = int((rng if rng is not None else self._rng).integers(2**63))
        r = np.random.default_rng(seed)
        if source is None:
            source = "mesh" if r.random() < self.mesh_probability else "procedural"
        shape = shape if shape is not None else weighted_choice(self.shape_weights, r)
        lens = lens if lens is not None else weighted_choice(self.lens_weights, r)

        pose = estimate_head_pose(
            landmarks,
            camera_distance=r.uniform(6, 12),
            pitch=np.radians(r.uniform(-5, 5)),
            roll_offset=np.radians(r.uniform(-1.5, 1.5)),
        )
        occluder = HeadOccluder.for_face(pose, landmarks)
        shadow = {
            "strength": float(r.uniform(0.15, 0.45)),
            "offset": float(r.uniform(0.01, 0.035) * pose.scale_px),
            "sideways": float(r.uniform(-0.5, 0.5)),
            "blur": float(r.uniform(0.008, 0.025) * pose.scale_px),
        }
        margin = shadow["offset"] * 1.2 + 3 * shadow["blur"] + 2
        if source == "mesh":
            mesh = _mesh(self.glasses_dir)
            supersample = _supersample(self.mesh_supersample, pose.scale_px)
            layers, style = render_mesh(mesh, pose, occluder, image.shape[:2], r, supersample, margin)
        else:
            style = sample_style(shape, r, pose)
            supersample = _supersample(self.supersample, pose.scale_px)
            layers = render_procedural(pose, occluder, style, image.shape[:2], r, supersample, margin)
        lens_params = _lens_params(lens, r)
        environment = _environment(self.glasses_dir)
        glasses, mask = _composite(image, layers, lens_params, shadow, pose.up_px(), environment)
        params = {
            "seed": seed,
            "source": source,
            "shape": style["shape"],
            "lens": lens,
            "material": style["material"],
            "frame_colour": style["colour_name"],
            "lens_params": lens_params,
            "shadow": shadow,
            "pose": {
                "yaw_deg": float(np.degrees(pose.yaw)),
                "roll_deg": float(np.degrees(pose.roll)),
                "pitch_deg": float(np.degrees(pose.pitch)),
                "scale_px": float(pose.scale_px),
                "camera_distance": float(pose.camera_distance),
            },
            "box": [layers.box.x0, layers.box.y0, layers.box.x1, layers.box.y1],
            "style": style,
        }
        return GlassesSample(image=glasses, mask=mask, clean=image.copy(), params=params)


def _supersample(factor: int, eye_distance_px: float) -> int:
    """Fewer subsamples for large faces: `factor` is meant for about 80 px between the eyes (UTKFace)."""
    return int(np.clip(np.ceil(factor * 80 / max(eye_distance_px, 1.0)), 1, factor))


def _checked_weights(weights: dict[str, float], allowed: tuple[str, ...], name: str) -> dict[str, float]:
    unknown = set(weights) - set(allowed)
    if unknown or not any(v > 0 for v in weights.values()):
        raise ValueError(f"bad {name} weights {weights}; names must be in {allowed}, some weight > 0")
    return {k: float(v) for k, v in weights.items() if v > 0}


def _lens_params(kind: str, rng: np.random.Generator) -> dict:
    """Tint colour and opacity (top and bottom), reflectance and refraction of a lens kind."""
    params = {
        "kind": kind,
        "magnification": float(rng.uniform(0.9, 1.06)),
        "reflectance": float(rng.uniform(0.04, 0.14)),
        "coating": [1.0, 1.0, 1.0],
        "streaks": 0,
    }
    if kind == "clear":
        tint, opacity = (255.0, 255.0, 255.0), (0.0, 0.0)
        if rng.random() < 0.4:  # anti-reflective coatings reflect a faint green or violet
            params["coating"] = [float(v) for v in (rng.choice([[0.6, 1.0, 0.7], [0.85, 0.65, 1.0], [0.6, 0.8, 1.0]]))]
        params["streaks"] = int(rng.choice([0, 1, 2], p=[0.5, 0.3, 0.2]))
    elif kind == "tinted":
        tint = LENS_TINTS[str(rng.choice(list(LENS_TINTS)))]
        o = rng.uniform(0.2, 0.5)
        opacity = (o, o)
    elif kind == "gradient":
        tint = LENS_TINTS[str(rng.choice(["grey", "brown", "blue", "rose"]))]
        opacity = (rng.uniform(0.6, 0.9), rng.uniform(0.05, 0.3))
    elif kind == "sunglasses":
        tint = SUN_TINTS[str(rng.choice(list(SUN_TINTS)))]
        o = rng.uniform(0.75, 0.95)
        opacity = (o, o)
        params["reflectance"] = float(rng.uniform(0.06, 0.2))
    else:  # mirrored
        tint = MIRROR_TINTS[weighted_choice(MIRROR_WEIGHTS, rng)]
        o = rng.uniform(0.88, 0.97)
        opacity = (o, o)
        params["reflectance"] = float(rng.uniform(0.3, 0.6))
    params["tint"] = [float(v) for v in tint]
    params["opacity_top"], params["opacity_bottom"] = float(opacity[0]), float(opacity[1])
    params["env_window"] = [float(v) for v in (rng.uniform(0, 1), rng.uniform(0.3, 0.6), rng.uniform(0.12, 0.3))]
    params["streak_angle"] = float(rng.uniform(25, 70))
    params["streak_offset"] = [float(v) for v in rng.uniform(-0.6, 0.6, 2)]
    params["streak_width"] = float(rng.uniform(0.05, 0.18))
    params["streak_strength"] = float(rng.uniform(0.08, 0.3))
    return params


def _composite(
    image: np.ndarray,
    layers: GlassesLayers,
    lens: dict,
    shadow: dict,
    up_px: np.ndarray,
    environment: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Refraction, frame shadow, lens tint and reflection, then the frame; returns (image, mask)."""
    out = image.copy()
    mask = np.zeros(image.shape[:2], bool)
    box = layers.box
    if box.empty:
        return out, mask
    crop = image[box.y0 : box.y1, box.x0 : box.x1].astype(np.float32)
    lens_area = layers.lens_alpha.max(0)
    xs, ys = box.grid()

    if lens_area.max() > 0:
        crop = _refract(crop, layers, lens["magnification"], xs, ys)

    caster = layers.shadow_caster
    darkening = np.zeros_like(caster)
    if caster.max() > 0:
        down = -up_px
        side = np.array([-down[1], down[0]])
        offset = shadow["offset"] * (down + shadow["sideways"] * side)
        shift = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
        cast = cv2.warpAffine(caster, shift, (box.width, box.height), flags=cv2.INTER_LINEAR)
        cast = cv2.GaussianBlur(cast, (0, 0), max(shadow["blur"], 0.3))
        # A soft threshold keeps the faint tail out of the image (and out of the mask).
        darkening = np.clip(shadow["strength"] * cast - 0.01, 0, 1) * (1 - layers.frame_alpha)
        crop *= (1 - darkening)[..., None]

    if lens_area.max() > 0:
        height = np.zeros_like(lens_area)
        for centre, size, alpha in zip(layers.lens_centres, layers.lens_size_px, layers.lens_alpha):
            along_up = ((xs - centre[0]) * up_px[0] + (ys - centre[1]) * up_px[1]) / max(size[1] / 2, 1e-3)
            height = np.where(alpha > 0, along_up, height)
        t = np.clip((height + 1) / 2, 0, 1)
        t = t * t * (3 - 2 * t)
        opacity = lens["opacity_bottom"] + (lens["opacity_top"] - lens["opacity_bottom"]) * t
        a = (lens_area * opacity)[..., None]
        tint = np.asarray(lens["tint"], np.float32)
        reflection = _reflection(environment, box.width, box.height, lens["env_window"])
        reflection *= np.asarray(lens["coating"], np.float32)
        if lens["kind"] == "mirrored":
            luminance = reflection.mean(-1, keepdims=True) / max(float(reflection.mean()), 1.0)
            mirror = tint * np.clip(0.5 + 0.5 * luminance, 0, 1.3)
            crop = crop * (1 - a) + mirror * a
        else:
            crop = crop * (1 - a) + tint * a
            r = (lens_area * lens["reflectance"])[..., None]
            crop = crop * (1 - r) + reflection * r
        for k in range(lens["streaks"]):
            angle = np.radians(lens["streak_angle"])
            centre = layers.lens_centres[k % 2]
            size = layers.lens_size_px[k % 2]
            coord = ((xs - centre[0]) * np.cos(angle) + (ys - centre[1]) * np.sin(angle)) / max(size[0], 1e-3)
            band = np.exp(-(((coord - lens["streak_offset"][k] * 0.5) / lens["streak_width"]) ** 2))
            crop += (255 * lens["streak_strength"] * band * layers.lens_alpha[k % 2])[..., None]

    crop = crop * (1 - layers.frame_alpha)[..., None] + layers.frame_premultiplied
    changed = (layers.frame_alpha > MASK_ALPHA) | (lens_area > MASK_ALPHA) | (darkening > 0)
    result = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
    original = image[box.y0 : box.y1, box.x0 : box.x1]
    out[box.y0 : box.y1, box.x0 : box.x1] = np.where(changed[..., None], result, original)
    mask[box.y0 : box.y1, box.x0 : box.x1] = changed
    return out, mask


def _refract(
    crop: np.ndarray, layers: GlassesLayers, magnification: float, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Scale the view through each lens about its centre (minus lenses shrink the eyes)."""
    map_x, map_y = xs.copy(), ys.copy()
    for centre, alpha in zip(layers.lens_centres, layers.lens_alpha):
        map_x += alpha * (centre[0] + (xs - centre[0]) / magnification - xs)
        map_y += alpha * (centre[1] + (ys - centre[1]) / magnification - ys)
    return cv2.remap(crop, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _reflection(environment: np.ndarray, width: int, height: int, window: list[float]) -> np.ndarray:
    """A blurred window of the room panorama, stretched over the crop: what the lenses reflect."""
    env_h, env_w = environment.shape[:2]
    win_w = max(int(window[2] * env_w), 4)
    win_h = max(int(win_w * height / max(width, 1)), 4)
    x0 = int(window[0] * (env_w - win_w))
    y0 = int(np.clip(window[1] * env_h - win_h / 2, 0, env_h - win_h))
    patch = environment[y0 : y0 + win_h, x0 : x0 + win_w]
    return cv2.resize(patch, (width, height), interpolation=cv2.INTER_LINEAR)


@functools.lru_cache(maxsize=4)
def _mesh(glasses_dir: Path) -> GlassesMesh:
    return GlassesMesh.load(glasses_dir)


@functools.lru_cache(maxsize=4)
def _environment(glasses_dir: Path) -> np.ndarray:
    """The jeeliz room panorama (RGB float32, 512x256, blurred like a slightly rough lens surface).

    Without the data folder, a plain synthetic room (bright windows on a dim wall) stands in.
    """
    path = glasses_dir / "envMap.jpg"
    if path.exists():
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        small = cv2.resize(bgr, (512, 256), interpolation=cv2.INTER_AREA)[..., ::-1].astype(np.float32)
    else:
        rng = np.random.default_rng(0)
        small = np.full((256, 512, 3), 70, np.float32) + np.linspace(40, -30, 256, dtype=np.float32)[:, None, None]
        for _ in range(6):
            x, y = rng.integers(0, 470), rng.integers(60, 160)
            small[y : y + 50, x : x + 40] = rng.uniform(180, 255, 3)
    return cv2.GaussianBlur(small, (0, 0), 1.5)
