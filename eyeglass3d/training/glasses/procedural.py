"""Procedural eyeglasses: lens outlines of common frame shapes, built in head space and drawn in 2D.

A frame is a handful of planar pieces (rims, bridge, end pieces, nose pads) on a slightly wrapped
and tilted front, plus two temples that run from the hinges back to the ears just outside the head
occluder. Everything is projected with the head pose and filled as polygons at supersampled
resolution; shading is estimated per pixel from where it lies around its lens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layers import Canvas, CropBox, GlassesLayers
from .materials import METALS, choose_frame_colour, frame_colour, weighted_choice
from .placement import HeadOccluder, HeadPose

FRAME_SHAPES = ("round", "oval", "rectangular", "wayfarer", "aviator", "cat_eye", "browline", "rimless", "half_rim")
# Rimless and thin-metal frames are the hard cases for a parser, so they are drawn often.
SHAPE_WEIGHTS = {
    "round": 0.9,
    "oval": 0.8,
    "rectangular": 1.3,
    "wayfarer": 1.1,
    "aviator": 0.8,
    "cat_eye": 0.6,
    "browline": 0.6,
    "rimless": 1.0,
    "half_rim": 0.9,
}
_ACETATE_WEIGHTS = {
    "black": 0.34,
    "tortoise": 0.2,
    "colour": 0.14,
    "transparent": 0.12,
    "gold": 0.07,
    "silver": 0.07,
    "gunmetal": 0.06,
}
_OUTLINE_POINTS = 72
_LIGHT_ANGLE = np.radians(120)  # light from the upper left, measured from the frame's +x towards +y


def lens_outline(shape: str, aspect: float, squareness: float, points: int = _OUTLINE_POINTS) -> np.ndarray:
    """Closed lens contour (points, 2): width 1, centred, x towards the temple, y up, counter-clockwise."""
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    exponent = {"round": 2.0, "oval": 2.2, "aviator": 2.3}.get(shape, squareness)
    x = 0.5 * np.sign(c) * np.abs(c) ** (2 / exponent)
    y = 0.5 * aspect * np.sign(s) * np.abs(s) ** (2 / exponent)
    top = np.clip(y / (0.5 * aspect), -1, 1)
    if shape == "wayfarer":
        x = x * (1 + 0.12 * top)
        y = y + 0.1 * aspect * np.clip(x / 0.5, 0, 1) ** 2 * (top > 0) * top
    elif shape == "aviator":
        # Teardrop: a straight-ish top; the nose side slants away, so the low point lies outwards.
        below = np.clip(-top, 0, 1)
        x = x * (1 - 0.22 * below**1.5) + 0.1 * below**2
        y = y - 0.1 * aspect * below * np.clip(x / 0.5 + 0.5, 0, 1)
    elif shape == "cat_eye":
        # The top edge rises towards the temple into a swept-up corner; the bottom narrows outwards.
        outward = np.clip(x + 0.5, 0, 1)
        y = y + 0.35 * aspect * np.clip(top, 0, 1) ** 0.5 * outward**2.5
        x = x - 0.08 * np.clip(-top, 0, 1) * outward
    outline = np.stack([x, y], 1)
    outline -= (outline.max(0) + outline.min(0)) / 2
    return outline / (outline[:, 0].max() - outline[:, 0].min())


def outward_normals(outline: np.ndarray) -> np.ndarray:
    tangent = np.roll(outline, -1, 0) - np.roll(outline, 1, 0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
    return normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)


@dataclass
class _Part:
    """One drawable group of polygons that share a material."""

    canvas: Canvas
    material: str
    colour: np.ndarray
    opacity: float
    casts_shadow: bool = True


def sample_style(shape: str, rng: np.random.Generator, pose: HeadPose) -> dict:
    """All the random choices of one procedural frame, in head units (JSON-serialisable)."""
    if shape == "aviator":
        material = str(rng.choice(list(METALS)))
    elif shape in ("rimless",):
        material = str(rng.choice(list(METALS) + ["transparent"], p=[0.35, 0.35, 0.15, 0.15]))
    elif shape == "half_rim":
        material = str(rng.choice(["black", "gunmetal", "silver", "gold", "tortoise"], p=[0.3, 0.2, 0.2, 0.15, 0.15]))
    elif shape == "browline":
        material = str(rng.choice(["black", "tortoise", "colour"], p=[0.55, 0.3, 0.15]))
    else:
        material = weighted_choice(_ACETATE_WEIGHTS, rng)
    colour_name, colour = choose_frame_colour(material, rng)
    metal = material in METALS
    thin = metal or shape in ("rimless", "aviator")
    aspect = {
        "round": rng.uniform(0.86, 1.0),
        "oval": rng.uniform(0.62, 0.76),
        "rectangular": rng.uniform(0.48, 0.68),
        "wayfarer": rng.uniform(0.66, 0.8),
        "aviator": rng.uniform(0.8, 0.92),
        "cat_eye": rng.uniform(0.56, 0.68),
        "browline": rng.uniform(0.6, 0.76),
    }.get(shape, rng.uniform(0.5, 0.78))
    lens_width = rng.uniform(0.74, 0.88) if shape != "aviator" else rng.uniform(0.86, 0.98)
    if shape == "round":
        lens_width = rng.uniform(0.66, 0.82)
    lens_height = lens_width * aspect
    if thin:
        rim = rng.uniform(0.01, 0.028)
    elif shape == "half_rim":
        rim = rng.uniform(0.025, 0.05)
    elif shape == "browline":
        rim = rng.uniform(0.03, 0.045)
    else:
        rim = rng.uniform(0.035, 0.085)
    top_factor = {"browline": rng.uniform(2.2, 3.0), "cat_eye": rng.uniform(1.2, 1.6)}.get(shape, rng.uniform(1.0, 1.3))
    bridge = rng.uniform(0.2, 0.32)
    # Lens centres sit a little below the pupils; the top rim stays under the brows unless the lens is large.
    centre_y = float(min(rng.uniform(-0.1, 0.0), pose.brow_height - lens_height / 2 - rim * top_factor + 0.06))
    return {
        "shape": shape,
        "material": material,
        "colour_name": colour_name,
        "colour": [float(v) for v in colour],
        "lens_width": float(lens_width),
        "lens_aspect": float(aspect),
        "squareness": float(rng.uniform(3.5, 7.0)),
        "rim": float(rim),
        "rim_top_factor": float(top_factor),
        "bridge": float(bridge),
        "bridge_height": float(rng.uniform(0.05, 0.3)),
        "bridge_arch": float(rng.uniform(0.0, 0.06)),
        "lens_centre_y": centre_y,
        "front_z": float(rng.uniform(0.25, 0.35)),
        "wrap": float(rng.uniform(0.03, 0.1)),
        "tilt": float(np.tan(np.radians(rng.uniform(4, 12)))),
        "endpiece": float(rng.uniform(0.03, 0.09)),
        "temple_height": float(rng.uniform(0.018, 0.035) if thin else rng.uniform(0.05, 0.12)),
        "temple_drop": float(rng.uniform(0.0, 0.12)),
        "opacity": float(rng.uniform(0.35, 0.65) if material == "transparent" else 1.0),
        "edge_opacity": float(rng.uniform(0.2, 0.45)),
        "edge_bright": bool(rng.random() < 0.6),
        "metal_parts": str(rng.choice(list(METALS))) if not metal else material,
    }


def render_procedural(
    pose: HeadPose,
    occluder: HeadOccluder,
    style: dict,
    image_shape: tuple[int, int],
    rng: np.random.Generator,
    supersample: int = 4,
    margin_px: float = 6.0,
) -> GlassesLayers:
    """Draw one procedural frame (and its lens coverage) over the crop box of its projection."""
    shape, width = style["shape"], style["lens_width"]
    height = width * style["lens_aspect"]
    centre_x = (width + style["bridge"]) / 2
    centre_y = style["lens_centre_y"]

    def front(points_xy: np.ndarray) -> np.ndarray:
        """Frame-plane points (..., 2) onto the wrapped, tilted front (..., 3)."""
        x, y = points_xy[..., 0], points_xy[..., 1]
        z = style["front_z"] - style["wrap"] * x**2 + style["tilt"] * (y - centre_y)
        return np.stack([x, y, z], -1)

    outline = lens_outline(shape, style["lens_aspect"], style["squareness"])
    normals = outward_normals(outline)
    up = np.clip(outline[:, 1] / (0.5 * style["lens_aspect"]), -1, 1)
    profile = style["rim"] * (1 + (style["rim_top_factor"] - 1) * np.clip(up, 0, 1) ** 0.7)
    lens_local = outline * width
    outer_local = lens_local + normals * profile[:, None]

    def place(local: np.ndarray, side: int) -> np.ndarray:
        """Lens-local points to frame-plane points; side -1 is the image-left lens (mirrored)."""
        return np.stack([side * (centre_x + local[:, 0]), centre_y + local[:, 1]], 1)

    lens_xy = {side: place(lens_local, side) for side in (-1, 1)}
    outer_xy = {side: place(outer_local, side) for side in (-1, 1)}
    # The lens sits in the rim's groove: a little larger than the opening.
    lens_glass_xy = {side: place(lens_local + normals * (0.3 * profile[:, None]), side) for side in (-1, 1)}

    def project(points3: np.ndarray) -> np.ndarray:
        return pose.project(points3)[0]

    lens_px = {side: project(front(lens_xy[side])) for side in (-1, 1)}
    outer_px = {side: project(front(outer_xy[side])) for side in (-1, 1)}
    glass_px = {side: project(front(lens_glass_xy[side])) for side in (-1, 1)}

    # Hinges: on the outer side of each rim, in its upper half.
    hinge_y = centre_y + 0.3 * height
    hinge_x = centre_x + width / 2 + style["rim"] + style["endpiece"]
    temple_h = style["temple_height"]
    metal_frame = style["material"] in METALS or shape in ("rimless", "aviator")

    temples_px = {side: _temple(pose, occluder, style, side, hinge_x, hinge_y, front) for side in (-1, 1)}

    all_points = [outer_px[-1], outer_px[1], glass_px[-1], glass_px[1]] + [p for t in temples_px.values() for p in t]
    box = CropBox.around(np.concatenate(all_points), margin_px, image_shape)
    lens_centres = np.stack([project(front(np.array([side * centre_x, centre_y]))) for side in (-1, 1)])
    lens_size = np.array([width, height]) * pose.scale_px
    if box.empty:
        return GlassesLayers.blank(box, lens_centres, lens_size)

    base = np.asarray(style["colour"], np.float32)
    metal_name = style["metal_parts"]
    metal_colour = choose_frame_colour(metal_name, rng)[1]
    main = _Part(Canvas(box, supersample), style["material"], base, style["opacity"])
    metal = _Part(Canvas(box, supersample), metal_name, metal_colour, 1.0)
    temples = main if not metal_frame else metal
    temple_part = _Part(Canvas(box, supersample), temples.material, temples.colour, temples.opacity)
    pads = _Part(Canvas(box, supersample), "transparent", np.array([225.0, 225, 220]), 0.35, casts_shadow=False)
    edge_colour = np.full(3, 235.0 if style["edge_bright"] else 70.0)
    edges = _Part(Canvas(box, supersample), "transparent", edge_colour, style["edge_opacity"], casts_shadow=False)

    for side in (-1, 1):
        temple_part.canvas.fill(temples_px[side])

    bridge_part = metal if metal_frame else main
    rims_part = metal if metal_frame else main
    scale = pose.scale_px
    if shape in ("rimless", "half_rim"):
        for side in (-1, 1):
            edges.canvas.polyline(glass_px[side], max(0.7, 0.006 * scale), closed=True)
    if shape == "rimless":
        for side in (-1, 1):
            # Drilled mount: a short bar from the lens edge to the hinge.
            x_in = centre_x + 0.46 * width
            half_h = temple_h * 0.6
            metal.canvas.fill([project(front(_bar(side * x_in, side * hinge_x, hinge_y, half_h)))])
    elif shape == "half_rim":
        upper, lower = _arc(up > -0.15), _arc(up <= -0.15)
        for side in (-1, 1):
            rims_part.canvas.fill([np.concatenate([outer_px[side][upper], lens_px[side][upper][::-1]])])
            # The nylon cord holding the lower half of the lens.
            edges.canvas.polyline(lens_px[side][lower], max(0.8, 0.01 * scale))
    elif shape == "browline":
        upper = _arc(up > 0.05)
        thin = lens_local + normals * style["rim"] * 0.45
        for side in (-1, 1):
            metal.canvas.fill([project(front(place(thin, side)))])
            band = np.concatenate([outer_px[side][upper], lens_px[side][upper][::-1]])
            main.canvas.fill([band])
    else:
        for side in (-1, 1):
            rims_part.canvas.fill([outer_px[side]])

    # Bridge across the nose, entering each lens a little (the opening is cut out below).
    bridge_y = centre_y + style["bridge_height"] * height / 2
    bridge_end = centre_x - 0.42 * width
    xs = np.linspace(-bridge_end, bridge_end, 9)
    arch = bridge_y + style["bridge_arch"] * (1 - (xs / max(bridge_end, 1e-6)) ** 2)
    saddle = not metal_frame and shape not in ("browline", "half_rim")  # moulded acetate bridge
    bridge_thickness = style["rim"] * 2.0 + 0.03 if saddle else style["rim"] * 1.4
    top, bottom = np.stack([xs, arch + bridge_thickness / 2], 1), np.stack([xs, arch - bridge_thickness / 2], 1)
    bridge = np.concatenate([top, bottom[::-1]])
    bridge_part.canvas.fill([project(front(bridge))])
    if shape == "aviator":
        top_y = centre_y + 0.44 * height
        bar_end = centre_x - 0.1 * width
        metal.canvas.fill([project(front(_bar(-bar_end, bar_end, top_y, style["rim"] / 2)))])

    # End pieces joining the rims to the hinges.
    if shape != "rimless":
        end_h = max(temple_h * 1.2, style["rim"] * 2)
        x_in = centre_x + 0.4 * width
        for side in (-1, 1):
            piece = _bar(side * x_in, side * hinge_x, hinge_y, end_h / 2)
            (metal if metal_frame else main).canvas.fill([project(front(piece))])

    # Cut the lens openings out of everything on the front.
    if shape not in ("rimless",):
        for part in (main, metal):
            part.canvas.fill([lens_px[-1], lens_px[1]], 0)

    if metal_frame or shape in ("half_rim", "browline"):
        for side in (-1, 1):
            # Nose pads rest on the nose just inside the lens's nasal edge, on short arms.
            pad_xy = np.array([side * (centre_x - 0.47 * width), centre_y - 0.18 * height])
            pad3 = front(pad_xy) - np.array([0, 0, 0.08])
            pads.canvas.ellipse(project(pad3), (0.022 * scale, 0.045 * scale), np.degrees(pose.roll) - side * 20)
            arm = np.stack([front(np.array([side * (centre_x - 0.5 * width), centre_y + 0.02 * height])), pad3])
            metal.canvas.polyline(project(arm), max(0.6, 0.01 * scale))

    lens_alpha = np.zeros((2, box.height, box.width), np.float32)
    for index, side in enumerate((-1, 1)):
        canvas = Canvas(box, supersample)
        canvas.fill([glass_px[side] if shape != "rimless" else lens_px[side]])
        lens_alpha[index] = canvas.alpha()

    angle = _angle_around_lenses(box, box.to_crop(lens_centres), lens_size, pose.roll)
    layers = GlassesLayers.blank(box, lens_centres, lens_size)
    layers.lens_alpha = lens_alpha
    for part in (temple_part, edges, pads, metal, main):
        if not part.canvas.mask.any():
            continue
        coverage = part.canvas.alpha()
        alpha = coverage * part.opacity
        if part.material == "transparent" and part is main:
            # Clear acetate shows its polished edges more than its body.
            alpha = np.clip(alpha + 1.6 * coverage * (1 - coverage), 0, 1)
        rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
        if len(rows) == 0:
            continue
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        shade, gloss = _shading(angle[window], part.material in METALS, rng)
        layers.over(alpha[window], frame_colour(part.material, part.colour, shade, gloss, rng), window)
        if part.casts_shadow:
            np.maximum(layers.shadow_caster, alpha, out=layers.shadow_caster)
    return layers


def _bar(x0: float, x1: float, y: float, half_height: float) -> np.ndarray:
    """A horizontal rectangle in the frame plane (4, 2)."""
    return np.array([[x0, y - half_height], [x1, y - half_height], [x1, y + half_height], [x0, y + half_height]])


def _temple(
    pose: HeadPose, occluder: HeadOccluder, style: dict, side: int, hinge_x: float, hinge_y: float, front
) -> list[np.ndarray]:
    """Image polygons of the visible part of one temple (none when the head hides all of it)."""
    hinge = front(np.array([side * hinge_x, hinge_y])) - np.array([0, 0, 0.02])
    ear_x = side * (occluder.radii[0] + 0.05)
    ear = np.array([ear_x, hinge_y - style["temple_drop"], occluder.centre[2] + 0.05])
    # Straight back from the hinge at first; the drop towards the ear comes near the end.
    bulge = np.array([side * max(abs(hinge[0]), abs(ear_x)), hinge[1], (hinge[2] + ear[2]) / 2])
    behind_z = hinge[2] - 0.12

    def curve(t: np.ndarray) -> np.ndarray:
        t = t[:, None]
        points = (1 - t) ** 2 * hinge + 2 * t * (1 - t) * bulge + t**2 * ear
        return occluder.push_outside(points, 0.04)

    t = np.linspace(0, 1, 24)
    hidden = occluder.hides(curve(t), pose, behind_z)
    if hidden[0]:
        return []
    if hidden.any():
        first = int(np.argmax(hidden))
        low, high = t[first - 1], t[first]
        for _ in range(8):
            mid = (low + high) / 2
            if occluder.hides(curve(np.array([mid])), pose, behind_z)[0]:
                high = mid
            else:
                low = mid
        t = np.linspace(0, low, 16)
    centre = curve(t)
    half_height = style["temple_height"] / 2 * (1 - 0.35 * t)
    lift = np.zeros((len(t), 3))
    lift[:, 1] = half_height
    thickness = np.array([side * min(style["temple_height"], 0.035), 0, 0])
    top, bottom = centre + lift, centre - lift
    # The bar's inner face, outer face and top edge; their union is what the camera sees.
    faces = [(top, bottom), (top + thickness, bottom + thickness), (top, top + thickness)]
    return [np.concatenate([pose.project(a)[0], pose.project(b)[0][::-1]]) for a, b in faces]


def _arc(selected: np.ndarray) -> np.ndarray:
    """Indices of the selected points of a closed outline, in order along one unbroken arc."""
    starts = np.flatnonzero(selected & ~np.roll(selected, 1))
    start = int(starts[0]) if len(starts) else 0
    order = np.roll(np.arange(len(selected)), -start)
    return order[selected[order]]


def _angle_around_lenses(box: CropBox, lens_centres: np.ndarray, lens_size: np.ndarray, roll: float) -> np.ndarray:
    """Each crop pixel's direction (radians, 0 = towards the temple of the image-right lens, pi/2 = up)
    as seen from the nearer lens centre, in lens-normalised units."""
    xs, ys = box.grid()
    cos_r, sin_r = np.float32(np.cos(roll)), np.float32(np.sin(roll))
    best_angle = np.zeros_like(xs)
    best_distance = np.full_like(xs, np.inf)
    for centre in lens_centres:
        dx, dy = xs - np.float32(centre[0]), ys - np.float32(centre[1])
        along = (dx * cos_r + dy * sin_r) * np.float32(2 / lens_size[0])
        up = (dx * sin_r - dy * cos_r) * np.float32(2 / lens_size[1])
        distance = along * along + up * up
        closer = distance < best_distance
        best_distance[closer] = distance[closer]
        best_angle[closer] = np.arctan2(up[closer], along[closer])
    return best_angle


def _shading(angle: np.ndarray, metal: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse and specular terms of a rim lit from the upper left: acetate is brighter on its lit
    side; polished metal mirrors light and dark surroundings in bands around the lens."""
    towards_light = np.cos(angle - np.float32(_LIGHT_ANGLE))
    lit = np.clip(towards_light, 0, 1)
    if metal:
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        shade = 0.5 + 0.4 * np.cos(2 * angle + phase) + 0.2 * towards_light
        gloss = lit**10 * 0.8
    else:
        shade = 0.65 + 0.35 * towards_light
        gloss = lit**12 * np.float32(rng.uniform(0.3, 0.7))
    return shade.astype(np.float32), gloss.astype(np.float32)
