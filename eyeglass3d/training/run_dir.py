"""What every train_<component>.py does around its loop: a run folder with a log file, and the export
of its best checkpoint to the model card as fp16."""

from __future__ import annotations

import logging
from pathlib import Path

import torch


def start_run(out: Path, name: str, threads: int) -> logging.Logger:
    """Create `out`, log to `out/train.log` and the console, and fix the CPU thread count."""
    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False  # its own handlers, whatever the root logger was given (a test runner, say)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(message)s")
    for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler()):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    torch.set_num_threads(threads)
    return log


def export_fp16(model_class, out: Path, folder: Path, log: logging.Logger, **config) -> None:
    """Write `out/best` (a `save_pretrained` folder) to `folder` in fp16, the card's storage format; `config`
    overrides inference-only settings the checkpoint was saved without."""
    model = model_class.from_pretrained(out / "best", **config)
    model.half().save_pretrained(folder, safe_serialization=True)
    log.info("exported %s to %s (fp16)", out / "best", folder)
