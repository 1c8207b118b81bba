"""What every train_<component>.py does around its loop: a run folder with a log file, and the export
of its best checkpoint to the model card as fp16."""

from __future__ import annotations

import logging
from pathlib import Path

import torch


def start_run(out: Path, name: str, threads: int) -> logging.Logger:
    """Create `out`, log to `out/train.log` and the console, and fix the CPU thread count."""
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(out / "train.log"), logging.StreamHandler()],
    )
    torch.set_num_threads(threads)
    return logging.getLogger(name)


def export_fp16(model_class, out: Path, folder: Path, log: logging.Logger) -> None:
    """Write `out/best` (a `save_pretrained` folder) to `folder` in fp16, the card's storage format."""
    model = model_class.from_pretrained(out / "best")
    model.half().save_pretrained(folder, safe_serialization=True)
    log.info("exported %s to %s (fp16)", out / "best", folder)
