"""Second-order spherical-harmonics (SH) lighting of a Lambertian surface.

Irradiance at a unit normal n is E(n) = Σ_k Â_l(k) · Y_k(n) · L_k over the 9 real SH functions Y_k
(bands l = 0, 1, 2 in the order (0,0), (1,-1), (1,0), (1,1), (2,-2), (2,-1), (2,0), (2,1), (2,2)),
with the Lambertian convolution constants Â_0 = π, Â_1 = 2π/3, Â_2 = π/4 (Ramamoorthi & Hanrahan
2001). The normals are in camera space, so the light is fixed to the camera (as in Deep3DFaceRecon).

Lighting coefficients come as (B, 27) = 3 colour channels × 9 SH coefficients, channel-major
(R's nine, then G's, then B's). An ambient term is added to every channel's L_0 so that zero
coefficients give irradiance `ambient` everywhere: a plain, evenly lit face instead of a black one.
"""

from __future__ import annotations

import math

import torch

SH_COEFFICIENTS = 9
LAMBERT_BAND_CONSTANTS = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)
_Y0 = 0.5 * math.sqrt(1.0 / math.pi)  # 0.282095
_Y1 = math.sqrt(3.0 / (4.0 * math.pi))  # 0.488603
_Y2 = 0.5 * math.sqrt(15.0 / math.pi)  # 1.092548
_Y20 = 0.25 * math.sqrt(5.0 / math.pi)  # 0.315392
_Y22 = 0.25 * math.sqrt(15.0 / math.pi)  # 0.546274


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit normals → (..., 9) irradiance basis Â_l · Y_lm(n)."""
    x, y, z = normals.unbind(-1)
    a0, a1, a2 = LAMBERT_BAND_CONSTANTS
    return torch.stack(
        [
            torch.full_like(x, a0 * _Y0),
            a1 * _Y1 * y,
            a1 * _Y1 * z,
            a1 * _Y1 * x,
            a2 * _Y2 * x * y,
            a2 * _Y2 * y * z,
            a2 * _Y20 * (3.0 * z * z - 1.0),
            a2 * _Y2 * x * z,
            a2 * _Y22 * (x * x - y * y),
        ],
        -1,
    )


def irradiance(normals: torch.Tensor, lighting: torch.Tensor, ambient: float = 1.0) -> torch.Tensor:
    """(B, N, 3) normals and (B, 27) coefficients → (B, N, 3) per-channel irradiance."""
    coefficients = lighting.reshape(lighting.shape[0], 3, SH_COEFFICIENTS)
    ambient_offset = torch.zeros(SH_COEFFICIENTS, dtype=lighting.dtype, device=lighting.device)
    ambient_offset[0] = ambient / (LAMBERT_BAND_CONSTANTS[0] * _Y0)
    coefficients = coefficients + ambient_offset
    return torch.einsum("bnk,bck->bnc", sh_basis(normals), coefficients)


def shade(albedo: torch.Tensor, normals: torch.Tensor, lighting: torch.Tensor, ambient: float = 1.0) -> torch.Tensor:
    """Lambertian colour = albedo × SH irradiance; (B, N, 3) each, lighting (B, 27)."""
    return albedo * irradiance(normals, lighting, ambient)
