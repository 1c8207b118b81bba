"""Resumable training state without pickle: tensors in safetensors, the rest in JSON.

Every train_<component>.py saves model, optimiser, schedule and its own progress dict here, so a run
stopped at any epoch continues where it was with `--resume`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _split(value, prefix: str, tensors: dict):
    """Replace tensors in a nested structure by references, collecting them in `tensors`."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[_split(k, f"{prefix}.k{i}", tensors), _split(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    return value


def _join(value, tensors: dict):
    if isinstance(value, dict) and "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if isinstance(value, dict) and "__dict__" in value:
        return {_join(k, tensors): _join(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_training_state(folder: str | Path, **parts) -> None:
    """Write `parts` (state dicts and plain data) to folder/state.safetensors + folder/state.json atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(parts, "s", tensors)
    save_file(tensors, folder / "state.safetensors.tmp")
    (folder / "state.json.tmp").write_text(json.dumps(skeleton))
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    (folder / "state.json.tmp").replace(folder / "state.json")


def load_training_state(folder: str | Path) -> dict | None:
    """The parts saved by `save_training_state`, or None when there is nothing to resume."""
    folder = Path(folder)
    if not (folder / "state.json").exists():
        return None
    tensors = load_file(folder / "state.safetensors")
    return _join(json.loads((folder / "state.json").read_text()), tensors)


def restore_training_state(folder: str | Path, state: dict, **stateful) -> dict:
    """Load a saved run into `stateful` (model, optimizer, schedule ... by the names they were saved
    under) and return its progress dict; without a checkpoint, return `state` unchanged."""
    checkpoint = load_training_state(folder)
    if checkpoint is None:
        return state
    for name, value in stateful.items():
        value.load_state_dict(checkpoint[name])
    return checkpoint["state"]
