"""CPU latency as every evaluation reports it: median milliseconds after warm-up, fp32 and bf16 autocast."""

from __future__ import annotations

import statistics
import time

import torch


def forward_ms(run, repeats: int) -> dict[str, float]:
    """Median milliseconds of `run()` in fp32 and under bf16 autocast (5 warm-up calls each)."""
    results = {}
    for name, autocast in (("fp32", False), ("bf16", True)):
        times = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for index in range(repeats + 5):
                started = time.perf_counter()
                run()
                if index >= 5:
                    times.append((time.perf_counter() - started) * 1e3)
        results[name] = round(statistics.median(times), 2)
    return results
