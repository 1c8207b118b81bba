"""CPU precision for the U-Nets: bf16 autocast where the processor computes bf16 natively, fp32 elsewhere."""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU has bf16 dot products (AVX512-BF16 or AMX): there bf16 autocast runs the parser and the
    inpainter ~30 % faster; without them bf16 is emulated and slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def unet_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=device.type == "cpu" and native_bf16())
