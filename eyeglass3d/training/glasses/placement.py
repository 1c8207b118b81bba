"""Where glasses sit on a face photo: a rough head pose and head occluder from 68 landmarks.

Head space, in interocular units (1 = distance between the eye centres, about 63 mm): origin
midway between the eye centres, +x to the image right (the subject's left), +y up, +z out of the
face towards the camera, the eye centres at (±0.5, 0, 0). Glasses are built in this space and
projected with a pinhole camera on the +z axis, so foreshortening, yaw and the hiding of the far
temple behind the head all come from one geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# tan(yaw) per unit of eye-to-jaw asymmetry (dL - dR) / (dL + dR): fitted against solvePnP with the
# ICT face model's 3D landmarks on 300 UTKFace faces (residual about 1.5 degrees median).
YAW_PER_ASYMMETRY = 0.5


@dataclass(frozen=True)
class HeadPose:
    """A pinhole view of head space. Angles in radians; `roll` follows the image eye line."""

    centre_px: np.ndarray  # (2,) image position of the head origin (pixel centres at integers)
    scale_px: float  # image pixels per head unit at the origin's depth
    roll: float  # angle of the eye line in the image, clockwise positive (image y points down)
    yaw: float  # positive: the image-right half of the face turns away from the camera
    pitch: float  # positive: the face tilts up
    camera_distance: float  # head units from the origin to the camera
    face_half_width: float  # half the jaw width at landmarks 0/16, head units
    brow_height: float  # mean brow height above the eye line, head units

    def __post_init__(self):
        object.__setattr__(self, "_rotation", self._rotation_matrix())

    def rotation(self) -> np.ndarray:
        """Head space to camera space (camera +y up, looking down -z)."""
        return self._rotation

    def _rotation_matrix(self) -> np.ndarray:
        cr, sr = np.cos(-self.roll), np.sin(-self.roll)
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        cp, sp = np.cos(-self.pitch), np.sin(-self.pitch)
        roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        return roll @ yaw @ pitch

    @property
    def focal_px(self) -> float:
        return self.scale_px * self.camera_distance

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Head-space points (..., 3) to image pixels (..., 2) and view depth (...) in head units."""
        camera = points @ self.rotation().T
        depth = self.camera_distance - camera[..., 2]
        uv = np.empty(points.shape[:-1] + (2,))
        uv[..., 0] = self.centre_px[0] + self.focal_px * camera[..., 0] / depth
        uv[..., 1] = self.centre_px[1] - self.focal_px * camera[..., 1] / depth
        return uv, depth

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Image pixels (..., 2) at view depth (...) back to head-space points (..., 3)."""
        camera = np.empty(uv.shape[:-1] + (3,))
        camera[..., 0] = (uv[..., 0] - self.centre_px[0]) * depth / self.focal_px
        camera[..., 1] = -(uv[..., 1] - self.centre_px[1]) * depth / self.focal_px
        camera[..., 2] = self.camera_distance - depth
        return camera @ self.rotation()

    def camera_position(self) -> np.ndarray:
        return np.array([0.0, 0.0, self.camera_distance]) @ self.rotation()

    def up_px(self) -> np.ndarray:
        """The image direction of head-space +y (unit vector, image coordinates)."""
        return np.array([np.sin(self.roll), -np.cos(self.roll)])


@dataclass
class HeadOccluder:
    """What hides the temples: an ellipsoid for the skull, and the face outline for the far side.

    The ellipsoid is about as wide as the face behind the eyes and widest near the ears; the
    temples are kept just outside it (`push_outside`), so on the side turned to the camera they
    stay in view along the head. Its front is narrower than a real face, so on the side turned away
    a temple is also hidden wherever it projects inside the face outline from the landmarks (jaw
    contour closed over the brows): there it runs behind the face.
    """

    centre: np.ndarray  # (3,) head units
    radii: np.ndarray  # (3,)
    face_outline_px: np.ndarray  # (K, 2) closed polygon, image pixels
    far_side: int  # +1: the image-right side faces away, -1: the image-left side, 0: frontal

    @classmethod
    def for_face(cls, pose: HeadPose, landmarks_px: np.ndarray) -> "HeadOccluder":
        landmarks = np.asarray(landmarks_px, np.float64).reshape(68, 2)
        lift = pose.up_px() * 0.45 * pose.scale_px
        forehead = landmarks[[26, 24, 19, 17]] + lift
        # The jaw contour runs inside the real silhouette at eye level (temples, cheekbones): widen it.
        outline = np.concatenate([landmarks[0:17], forehead])
        along = np.array([np.cos(pose.roll), np.sin(pose.roll)])
        offset = (outline - pose.centre_px) @ along
        outline = outline + np.outer(offset * 0.12, along)
        half_width = float(np.clip(pose.face_half_width * 1.02, 0.85, 1.3))
        far_side = int(np.sign(pose.yaw)) if abs(pose.yaw) > np.radians(3) else 0
        return cls(
            centre=np.array([0.0, -0.1, -1.0]),
            radii=np.array([half_width, 1.5, 1.5]),
            face_outline_px=outline,
            far_side=far_side,
        )

    def hides(self, points: np.ndarray, pose: HeadPose, behind_z: float, margin: float = 0.01) -> np.ndarray:
        """True for head-space points (N, 3) the camera cannot see; points in front of `behind_z` are
        only tested against the ellipsoid (hinges and end pieces sit beside the face, not behind it)."""
        # Ray from the camera towards each point, in coordinates where the ellipsoid is the unit sphere.
        camera = pose.camera_position()
        origin = (camera - self.centre) / self.radii
        scaled = (points - camera) / self.radii  # the ray reaches its point at t = 1
        x, y, z = scaled[:, 0], scaled[:, 1], scaled[:, 2]
        a = x * x + y * y + z * z
        b = 2 * (x * origin[0] + y * origin[1] + z * origin[2])
        c = origin @ origin - 1
        discriminant = b * b - 4 * a * c
        entry = (-b - np.sqrt(np.maximum(discriminant, 0))) / (2 * a)
        length = np.linalg.norm(points - camera, axis=1)
        hidden = (discriminant > 0) & (entry > 0) & (entry < 1 - margin / np.maximum(length, 1e-9))
        if self.far_side:
            far = (np.sign(points[:, 0]) == self.far_side) & (points[:, 2] < behind_z)
            if far.any():
                hidden[far] |= inside_polygon(pose.project(points[far])[0], self.face_outline_px)
        return hidden

    def push_outside(self, points: np.ndarray, margin: float) -> np.ndarray:
        """Move points inside the ellipsoid grown by `margin` outwards along x: temples rest on the head."""
        radii = self.radii + margin
        rel = (points - self.centre) / radii
        inside = (rel**2).sum(-1) < 1
        rest = np.clip(1 - rel[..., 1] ** 2 - rel[..., 2] ** 2, 0, None)
        out = points.copy()
        sign = np.where(points[..., 0] < 0, -1.0, 1.0)
        out[..., 0] = np.where(inside, self.centre[0] + sign * radii[0] * np.sqrt(rest), points[..., 0])
        return out


def inside_polygon(points_px: np.ndarray, polygon_px: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for (N, 2) points against a closed (K, 2) polygon."""
    x, y = points_px[:, 0:1], points_px[:, 1:2]
    a, b = polygon_px[None], np.roll(polygon_px, -1, 0)[None]
    straddles = (a[..., 1] > y) != (b[..., 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = a[..., 0] + (y - a[..., 1]) * (b[..., 0] - a[..., 0]) / (b[..., 1] - a[..., 1])
    return ((straddles & (x < x_cross)).sum(1) % 2) == 1


def estimate_head_pose(
    landmarks_px: np.ndarray, camera_distance: float = 9.0, pitch: float = 0.0, roll_offset: float = 0.0
) -> HeadPose:
    """Roll from the eye line, yaw from the eye-to-jaw asymmetry, scale from the eye distance.

    The side of the face turned towards the camera shows more cheek, so its outer eye corner lies
    farther from the jaw contour. Pitch cannot be read reliably from 2D landmarks; callers choose
    it. `roll_offset` tilts the result against the eye line (glasses rarely sit exactly level).
    """
    landmarks = np.asarray(landmarks_px, np.float64).reshape(68, 2)
    left_eye, right_eye = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    eye_line = right_eye - left_eye
    eye_distance = max(float(np.linalg.norm(eye_line)), 1e-3)
    roll = float(np.arctan2(eye_line[1], eye_line[0]))
    left_span = np.linalg.norm(landmarks[36] - landmarks[0])
    right_span = np.linalg.norm(landmarks[45] - landmarks[16])
    asymmetry = (left_span - right_span) / max(left_span + right_span, 1e-6)
    yaw = float(np.arctan(YAW_PER_ASYMMETRY * np.clip(asymmetry, -0.9, 0.9)))
    scale = eye_distance / np.cos(yaw)
    centre = (left_eye + right_eye) / 2
    down = np.array([-np.sin(roll), np.cos(roll)])
    brow_height = float(-((landmarks[17:27] - centre) @ down).mean() / scale)
    face_half_width = float(np.linalg.norm(landmarks[16] - landmarks[0]) / 2 / scale)
    return HeadPose(
        centre_px=centre,
        scale_px=float(scale),
        roll=roll + float(roll_offset),
        yaw=yaw,
        pitch=float(pitch),
        camera_distance=float(camera_distance),
        face_half_width=float(np.clip(face_half_width, 0.8, 1.5)),
        brow_height=float(np.clip(brow_height, 0.15, 0.6)),
    )
