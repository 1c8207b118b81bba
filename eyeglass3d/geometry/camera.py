"""Camera maths shared by the face model, the fitter and the rasteriser.

Conventions (OpenGL): the camera sits at the origin and looks down -z, +x is image right, +y is up.
Model space follows the ICT face model (+x the subject's left, +y up, +z out of the face), so an
unrotated head placed at negative z faces the camera. Pixel coordinates put (0, 0) at the image's
top-left corner with y down (image rows); the principal point is the image centre (size / 2).

Rotations are Euler angles (pitch, yaw, roll) in radians about the model's x, y and z axes, applied
as R = Rz(roll) · Ry(yaw) · Rx(pitch) to column vectors. Seen by the camera: positive pitch tips the
nose down, positive yaw turns the nose to image right (the subject's left), positive roll turns the
face counter-clockwise in the image.
"""

from __future__ import annotations

import torch


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3) pitch, yaw, roll in radians → (..., 3, 3) rotation Rz·Ry·Rx."""
    pitch, yaw, roll = angles.unbind(-1)
    cx, sx = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cz, sz = torch.cos(roll), torch.sin(roll)
    row0 = torch.stack([cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx], -1)
    row1 = torch.stack([sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx], -1)
    row2 = torch.stack([-sy, cy * sx, cy * cx], -1)
    return torch.stack([row0, row1, row2], -2)


def rotation_matrix_derivatives(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3) angles → (..., 3, 3, 3): d R / d angle_i stacked on dim -3 (for Gauss-Newton fitting)."""
    pitch, yaw, roll = angles.unbind(-1)
    zeros, ones = torch.zeros_like(pitch), torch.ones_like(pitch)
    cx, sx = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cz, sz = torch.cos(roll), torch.sin(roll)

    def matrix(*entries):
        return torch.stack(entries, -1).reshape(*pitch.shape, 3, 3)

    rot_x = matrix(ones, zeros, zeros, zeros, cx, -sx, zeros, sx, cx)
    rot_y = matrix(cy, zeros, sy, zeros, ones, zeros, -sy, zeros, cy)
    rot_z = matrix(cz, -sz, zeros, sz, cz, zeros, zeros, zeros, ones)
    d_rot_x = matrix(zeros, zeros, zeros, zeros, -sx, -cx, zeros, cx, -sx)
    d_rot_y = matrix(-sy, zeros, cy, zeros, zeros, zeros, -cy, zeros, -sy)
    d_rot_z = matrix(-sz, -cz, zeros, cz, -sz, zeros, zeros, zeros, zeros)
    return torch.stack(
        [rot_z @ rot_y @ d_rot_x, rot_z @ d_rot_y @ rot_x, d_rot_z @ rot_y @ rot_x], -3
    )


def euler_angles(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of `rotation_matrix` for |yaw| < 90°: (..., 3, 3) → (..., 3) pitch, yaw, roll."""
    pitch = torch.atan2(rotation[..., 2, 1], rotation[..., 2, 2])
    yaw = torch.asin((-rotation[..., 2, 0]).clamp(-1.0, 1.0))
    roll = torch.atan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return torch.stack([pitch, yaw, roll], -1)


def perspective_project(points_cam: torch.Tensor, focal_px: float, image_size: int) -> torch.Tensor:
    """(..., 3) camera-space points → (..., 3) as x_px, y_px (rows, downwards) and depth (> 0 in front)."""
    depth = -points_cam[..., 2]
    x_px = image_size / 2 + focal_px * points_cam[..., 0] / depth
    y_px = image_size / 2 - focal_px * points_cam[..., 1] / depth
    return torch.stack([x_px, y_px, depth], -1)


def perspective_matrix(focal_ratio: float, near: float, far: float) -> torch.Tensor:
    """OpenGL 4x4 projection matching `perspective_project` for a square image.

    Normalised device x = 2·x_px/size - 1 and y = 1 - 2·y_px/size, so a rasteriser using this matrix
    draws each vertex exactly where `FaceModel.project` puts it, whatever the image size.
    """
    scale = 2.0 * focal_ratio
    return torch.tensor(
        [
            [scale, 0.0, 0.0, 0.0],
            [0.0, scale, 0.0, 0.0],
            [0.0, 0.0, -(far + near) / (far - near), -2.0 * far * near / (far - near)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(..., 3) eye, target, up → (..., 4, 4) world-to-camera matrix (camera looks down its -z).

    For viewers and renders of a mesh from other directions than the photo's camera.
    """
    backward = torch.nn.functional.normalize(eye - target, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(up, backward, dim=-1), dim=-1)
    true_up = torch.linalg.cross(backward, right, dim=-1)
    rotation = torch.stack([right, true_up, backward], -2)
    translation = -(rotation @ eye.unsqueeze(-1)).squeeze(-1)
    bottom = torch.zeros(*eye.shape[:-1], 1, 4, dtype=eye.dtype, device=eye.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([torch.cat([rotation, translation.unsqueeze(-1)], -1), bottom], -2)
