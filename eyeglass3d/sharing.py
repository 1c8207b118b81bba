"""Permalinks for results: snapshots of finished results in a folder, under unguessable ids.

A shared link has to keep working after the server restarts and must open exactly the one result it
names, nothing else. So every result gets a random 128-bit id (`secrets.token_urlsafe(16)`), the id is
checked against a strict pattern before it ever becomes part of a path (no `..`, no slashes, nothing
else), and the folder stays within a size and an age budget, oldest results going first. A result is
written into a staging folder and renamed into place, so a reader never sees half of one.

No web framework in here: the app decides what a result contains; this module only stores files.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

RESULT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # exactly what secrets.token_urlsafe(16) produces
FILE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.[a-z0-9]{2,5}")
ALLOWED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".glb", ".obj", ".mtl", ".zip", ".json"})
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MANIFEST_NAME = "manifest.json"
STAGING_PREFIX = ".staging-"
STAGING_MAX_AGE_S = 3600.0  # a staging folder this old belongs to a save that crashed


class ResultNotFound(KeyError):
    """The id is malformed, unknown or expired; callers cannot (and need not) tell which."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "result not found"


@dataclass(frozen=True)
class StoredResult:
    result_id: str
    created: float  # seconds since the epoch
    files: dict[str, Path]  # file name → path inside the store
    metadata: dict


class ResultStore:
    """Results on disk under `root`, at most `max_bytes` in all and `max_age_s` old.

    `save` returns the new result's id; `load` gives it back or raises `ResultNotFound`.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int = 2 * 1024**3, max_age_s: float = 7 * 24 * 3600):
        if max_bytes <= 0 or max_age_s <= 0:
            raise ValueError("max_bytes and max_age_s must be positive")
        self.root = Path(root).resolve()
        self.max_bytes = int(max_bytes)
        self.max_age_s = float(max_age_s)
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def is_valid_id(result_id) -> bool:
        return isinstance(result_id, str) and RESULT_ID_PATTERN.fullmatch(result_id) is not None

    def save(
        self,
        files: Mapping[str, str | os.PathLike] | None = None,
        images: Mapping[str, PIL.Image.Image | np.ndarray] | None = None,
        metadata: Mapping | None = None,
    ) -> str:
        """Copy `files` and encode `images` (format from the name's suffix) into a new result.

        Keys are the file names the result will have (`face.glb`, `photo.jpg`); `metadata` is any
        JSON-serialisable mapping. Raises ValueError for a bad name or a result larger than the store.
        """
        files, images = dict(files or {}), dict(images or {})
        names = list(files) + list(images)
        if not names:
            raise ValueError("a result needs at least one file or image")
        if len(set(names)) != len(names):
            raise ValueError("file and image names must be unique")
        for name in names:
            _check_file_name(name)
        for name in images:
            if Path(name).suffix not in IMAGE_FORMATS:
                raise ValueError(f"{name}: images are stored as " + ", ".join(sorted(IMAGE_FORMATS)))
        metadata = json.loads(json.dumps(dict(metadata or {})))  # JSON-serialisable, checked before any write

        result_id = secrets.token_urlsafe(16)
        staging = self.root / f"{STAGING_PREFIX}{result_id}"
        staging.mkdir()
        try:
            for name, source in files.items():
                shutil.copyfile(source, staging / name)
            for name, image in images.items():
                _save_image(image, staging / name)
            size = sum(path.stat().st_size for path in staging.iterdir())
            if size > self.max_bytes:
                raise ValueError(f"the result is {size} bytes, more than the store holds ({self.max_bytes})")
            manifest = {"created": time.time(), "bytes": size, "files": sorted(names), "metadata": metadata}
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest))
            staging.rename(self.root / result_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.evict()
        return result_id

    def load(self, result_id: str) -> StoredResult:
        """The result named by `result_id`; `ResultNotFound` for anything that is not a live result."""
        if not self.is_valid_id(result_id):
            raise ResultNotFound("result not found")
        folder = self.root / result_id
        try:
            manifest = json.loads((folder / MANIFEST_NAME).read_text())
            created, names, metadata = float(manifest["created"]), list(manifest["files"]), dict(manifest["metadata"])
            for name in names:
                _check_file_name(name)
        except (OSError, ValueError, KeyError, TypeError):
            raise ResultNotFound("result not found") from None
        if time.time() - created > self.max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            raise ResultNotFound("result not found")
        files = {name: folder / name for name in names}
        if not all(path.is_file() for path in files.values()):
            raise ResultNotFound("result not found")
        return StoredResult(result_id, created, files, metadata)

    def usage_bytes(self) -> int:
        return sum(entry["bytes"] for entry in self._entries())

    def evict(self) -> list[str]:
        """Delete expired results, then the oldest until the store fits `max_bytes`; returns the ids deleted."""
        now = time.time()
        with self._lock:
            for staging in self.root.glob(f"{STAGING_PREFIX}*"):
                if now - _mtime(staging) > STAGING_MAX_AGE_S:
                    shutil.rmtree(staging, ignore_errors=True)
            entries = sorted(self._entries(), key=lambda entry: entry["created"])
            deleted = []
            total = sum(entry["bytes"] for entry in entries)
            for entry in entries:
                if now - entry["created"] <= self.max_age_s and total <= self.max_bytes:
                    continue
                shutil.rmtree(self.root / entry["id"], ignore_errors=True)
                total -= entry["bytes"]
                deleted.append(entry["id"])
            return deleted

    def _entries(self) -> list[dict]:
        entries = []
        for folder in self.root.iterdir():
            if not self.is_valid_id(folder.name):
                continue
            try:
                manifest = json.loads((folder / MANIFEST_NAME).read_text())
                created, size = float(manifest["created"]), int(manifest["bytes"])
                entries.append({"id": folder.name, "created": created, "bytes": size})
            except (OSError, ValueError, KeyError):
                # Being renamed into place or deleted right now, or damaged: age it by its folder.
                if folder.is_dir():
                    entries.append({"id": folder.name, "created": _mtime(folder), "bytes": _folder_bytes(folder)})
        return entries


def _check_file_name(name) -> None:
    if not isinstance(name, str) or not FILE_NAME_PATTERN.fullmatch(name) or name == MANIFEST_NAME:
        raise ValueError(f"unusable file name for a stored result: {name!r}")
    if Path(name).suffix not in ALLOWED_SUFFIXES:
        raise ValueError(f"{name}: the store keeps only " + ", ".join(sorted(ALLOWED_SUFFIXES)))


def _save_image(image, path: Path) -> None:
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image)
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"{path.name}: expected a PIL image or a uint8 array, got {type(image).__name__}")
    image_format = IMAGE_FORMATS[path.suffix]
    if image_format == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    # No metadata is copied: a shared photo must not carry its EXIF (GPS position, camera serial).
    image.save(path, format=image_format, **({"quality": 92} if image_format == "JPEG" else {}))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.iterdir():
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total
