"""Frame materials and lens tints: colours drawn at random, and per-pixel colour fields for a crop.

A material turns two shading terms (diffuse `shade` in [0, 1.2], specular `gloss` in [0, 1]) into
colour. The procedural frames estimate the terms from where a pixel lies on a rim; the mesh frames
get them from surface normals.
"""

from __future__ import annotations

import cv2
import numpy as np

METALS = ("gold", "silver", "gunmetal")

_ACETATE_COLOURS = {
    "navy": (28, 40, 80),
    "burgundy": (90, 22, 34),
    "dark_green": (30, 60, 40),
    "red": (170, 30, 35),
    "blue": (40, 80, 170),
    "brown": (90, 55, 30),
    "purple": (80, 40, 100),
    "grey": (95, 95, 100),
    "white": (225, 222, 215),
    "olive": (85, 85, 45),
}
_TRANSPARENT_COLOURS = {
    "crystal": (225, 225, 225),
    "pink": (235, 190, 195),
    "honey": (225, 180, 110),
    "smoke": (150, 150, 155),
    "blue": (170, 195, 225),
}
_METAL_COLOURS = {"gold": (205, 165, 85), "silver": (195, 196, 200), "gunmetal": (92, 94, 100)}

LENS_TINTS = {
    "grey": (70, 72, 75),
    "brown": (110, 70, 35),
    "green": (60, 85, 55),
    "blue": (50, 80, 140),
    "rose": (200, 110, 120),
    "yellow": (210, 180, 40),
}
SUN_TINTS = {"black": (12, 12, 14), "grey": (35, 37, 40), "brown": (55, 35, 20), "g15": (30, 45, 30)}
MIRROR_TINTS = {"silver": (200, 205, 210), "blue": (60, 120, 220), "gold": (220, 170, 70), "red": (220, 80, 50)}
MIRROR_WEIGHTS = {"silver": 0.4, "blue": 0.25, "gold": 0.2, "red": 0.15}


def weighted_choice(weights: dict[str, float], rng: np.random.Generator) -> str:
    """One key of `weights`, drawn with probability proportional to its value."""
    names = list(weights)
    p = np.asarray([weights[n] for n in names], np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def choose_frame_colour(material: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A named base colour (RGB 0..255) for a material, jittered a little."""
    if material == "black":
        name, rgb = "black", np.full(3, rng.uniform(14, 40)) + rng.uniform(-3, 3, 3)
    elif material == "colour":
        name = str(rng.choice(list(_ACETATE_COLOURS)))
        rgb = np.asarray(_ACETATE_COLOURS[name], np.float64)
    elif material == "tortoise":
        name, rgb = "tortoise", np.array([150.0, 90.0, 40.0])
    elif material == "transparent":
        name = str(rng.choice(list(_TRANSPARENT_COLOURS)))
        rgb = np.asarray(_TRANSPARENT_COLOURS[name], np.float64)
    else:
        name, rgb = material, np.asarray(_METAL_COLOURS[material], np.float64)
    rgb = np.clip(rgb * rng.uniform(0.9, 1.1), 0, 255)
    return name, rgb


def smooth_noise(height: int, width: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Value noise in [0, 1]: random values on a coarse grid, upsampled bicubically."""
    grid_h = max(2, int(np.ceil(height * cells / max(width, 1))))
    coarse = rng.random((grid_h, cells)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (max(width, 1), max(height, 1)), interpolation=cv2.INTER_CUBIC), 0, 1)


def frame_colour(
    material: str,
    base_rgb: np.ndarray,
    shade: np.ndarray,
    gloss: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Colour field (h, w, 3) float32 for a material under the given shading terms."""
    height, width = shade.shape
    base = np.broadcast_to(np.asarray(base_rgb, np.float32), (height, width, 3)).copy()
    if material == "tortoise":
        dark = np.array([45, 25, 12], np.float32) * rng.uniform(0.8, 1.2)
        amber = np.array([175, 105, 45], np.float32) * rng.uniform(0.85, 1.1)
        # Mottled shell: dark blotches of two sizes over amber.
        coarse = smooth_noise(height, width, max(4, width // 5), rng)
        fine = smooth_noise(height, width, max(8, width // 2), rng)
        noise = 0.65 * coarse + 0.35 * fine
        spots = np.clip((noise - rng.uniform(0.4, 0.55)) * 3.5 + 0.5, 0, 1)[..., None]
        base = dark * spots + amber * (1 - spots)
    if material in METALS:
        # Polished metal mirrors its surroundings: strong light/dark banding, bright highlights.
        colour = base * (0.35 + 0.75 * shade[..., None]) + 255 * 0.8 * gloss[..., None]
    else:
        colour = base * (0.75 + 0.3 * shade[..., None]) + 255 * 0.55 * gloss[..., None]
    return np.clip(colour, 0, 255).astype(np.float32)
