"""Permalinks for results: snapshots of finished results in a folder, under unguessable ids.

A shared link has to keep working after the server restarts and must open exactly the one result it
names, nothing else. So every result gets a random 128-bit id (`secrets.token_urlsafe(16)`), the id is
checked against a strict pattern before it ever becomes part of a path (no `..`, no slashes, nothing
else), and the folder stays within a size and an age budget, oldest results going first.

A result is written into a staging folder, flushed to disk and renamed into place, so a reader (in
this process or another) never sees half of one, and a crash leaves at most a staging folder that a
later eviction removes. Its manifest records every file's size: an entry damaged afterwards (manifest
missing or garbled, a file cut short or replaced) reads as not found, is logged, and is evicted.
Nothing outside the store is ever read or written: symbolic links inside it are never followed.

No web framework in here: the app decides what a result contains; this module only stores files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

try:
    import fcntl
except ImportError:  # Windows: evictions are serialised within one process only
    fcntl = None

logger = logging.getLogger(__name__)

RESULT_ID_BYTES = 16  # 128 random bits
RESULT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")  # exactly what secrets.token_urlsafe(16) produces
FILE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.[a-z0-9]{2,5}")
ALLOWED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".glb", ".obj", ".mtl", ".zip", ".json"})
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1024**2  # the app's metadata is a status line and a few labels
STAGING_PREFIX = ".staging-"
STAGING_MAX_AGE_S = 3600.0  # a staging folder this old belongs to a save that crashed
LOCK_NAME = ".evict.lock"
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # Windows has none; lstat checks stand in for it there


class ResultNotFound(KeyError):
    """The id is malformed, unknown, expired or damaged; callers cannot (and need not) tell which."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "result not found"


class DamagedResult(Exception):
    """A result folder that exists but cannot be trusted; never leaves this module."""


@dataclass(frozen=True)
class StoredResult:
    result_id: str
    created: float  # seconds since the epoch
    files: dict[str, Path]  # file name → path inside the store
    metadata: dict


@dataclass(frozen=True)
class _Manifest:
    created: float
    size: int  # bytes of all files
    files: dict[str, int | None]  # name → size in bytes (None: written before sizes were recorded)
    metadata: dict


def new_result_id() -> str:
    return secrets.token_urlsafe(RESULT_ID_BYTES)


class ResultStore:
    """Results on disk under `root`, at most `max_bytes` in all and `max_age_s` old.

    `save` returns the new result's id; `load` gives it back or raises `ResultNotFound`. Safe to use
    from several threads and processes at once.
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
        # JSON-serialisable (and no NaN, which strict readers refuse), checked before any write.
        metadata = json.loads(json.dumps(dict(metadata or {}), allow_nan=False))

        result_id = new_result_id()
        staging = self.root / f"{STAGING_PREFIX}{result_id}"
        staging.mkdir()
        try:
            for name, source in files.items():
                shutil.copyfile(source, staging / name)
            for name, image in images.items():
                _save_image(image, staging / name)
            sizes = {name: (staging / name).stat().st_size for name in sorted(names)}
            size = sum(sizes.values())
            if size > self.max_bytes:
                raise ValueError(f"the result is {size} bytes, more than the store holds ({self.max_bytes})")
            manifest = {"created": time.time(), "bytes": size, "files": sizes, "metadata": metadata}
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest))
            _flush_to_disk(staging, [*sizes, MANIFEST_NAME])
            os.rename(staging, self.root / result_id)
            _flush_to_disk(self.root, [])
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
            manifest = _read_manifest(folder)
        except FileNotFoundError:
            raise ResultNotFound("result not found") from None
        except DamagedResult as damage:
            logger.warning("shared result %s is damaged, reading it as not found: %s", result_id, damage)
            raise ResultNotFound("result not found") from None
        if time.time() - manifest.created > self.max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            raise ResultNotFound("result not found")
        files = {name: folder / name for name in manifest.files}
        return StoredResult(result_id, manifest.created, files, manifest.metadata)

    def usage_bytes(self) -> int:
        return sum(manifest.size for _, manifest in self._results() if isinstance(manifest, _Manifest))

    def evict(self) -> list[str]:
        """Delete damaged and expired results, then the oldest until the store fits `max_bytes`;
        returns the ids deleted. Crashed saves' staging folders go after `STAGING_MAX_AGE_S`."""
        now = time.time()
        with self._lock, self._lock_between_processes():
            self._remove_stale_staging(now)
            sound, deleted = [], []
            for result_id, manifest in self._results():
                if isinstance(manifest, DamagedResult):
                    logger.warning("evicting damaged shared result %s: %s", result_id, manifest)
                    _remove(self.root / result_id)
                    deleted.append(result_id)
                else:
                    sound.append((manifest.created, result_id, manifest.size))
            total = sum(size for _, _, size in sound)
            for created, result_id, size in sorted(sound):
                if now - created <= self.max_age_s and total <= self.max_bytes:
                    continue
                shutil.rmtree(self.root / result_id, ignore_errors=True)
                total -= size
                deleted.append(result_id)
            return deleted

    def _results(self) -> Iterator[tuple[str, _Manifest | DamagedResult]]:
        """Every result folder's id with its manifest, or with what is wrong with it."""
        for entry in _scan(self.root):
            if not self.is_valid_id(entry.name):
                continue
            try:
                yield entry.name, _read_manifest(Path(entry.path))
            except FileNotFoundError:
                continue  # deleted meanwhile by another process's eviction
            except DamagedResult as damage:
                yield entry.name, damage

    def _remove_stale_staging(self, now: float) -> None:
        for entry in _scan(self.root):
            if not entry.name.startswith(STAGING_PREFIX):
                continue
            try:
                modified = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if entry.is_symlink() or now - modified > STAGING_MAX_AGE_S:
                _remove(Path(entry.path))

    @contextmanager
    def _lock_between_processes(self):
        """Evictions in several processes see and delete the same results one at a time."""
        if fcntl is None:
            yield
            return
        descriptor = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock


def _read_manifest(folder: Path) -> _Manifest:
    """The manifest of a result folder, checked against the files beside it, without following links.

    Raises FileNotFoundError when there is no such folder and DamagedResult when it cannot be trusted.
    """
    if not stat.S_ISDIR(os.lstat(folder).st_mode):  # a link (even to a folder) or a file
        raise DamagedResult("not a plain folder")
    manifest = _parse_manifest(_read_small_file(folder / MANIFEST_NAME))
    for name, size in manifest.files.items():
        _check_stored_file(folder / name, size)
    return manifest


def _read_small_file(path: Path) -> bytes:
    try:
        descriptor = os.open(path, os.O_RDONLY | _NO_FOLLOW)
    except OSError as error:  # missing, or ELOOP: a symbolic link
        raise DamagedResult(f"{path.name}: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise DamagedResult(f"{path.name} is not a regular file")
        data = stream.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise DamagedResult(f"{path.name} is larger than {MAX_MANIFEST_BYTES} bytes")
    return data


def _parse_manifest(data: bytes) -> _Manifest:
    try:
        manifest = json.loads(data, parse_constant=_refuse_constant)
        created, size, files, metadata = (manifest[key] for key in ("created", "bytes", "files", "metadata"))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as error:
        raise DamagedResult(f"unreadable manifest ({error})") from None
    if isinstance(files, list):  # written before sizes were recorded
        files = dict.fromkeys(files)
    if not (_is_number(created) and math.isfinite(created) and _is_count(size)):
        raise DamagedResult("the manifest's date or size is not a number")
    if not (isinstance(files, dict) and files and isinstance(metadata, dict)):
        raise DamagedResult("the manifest's file list or metadata is malformed")
    for name, file_size in files.items():
        try:
            _check_file_name(name)
        except ValueError as error:
            raise DamagedResult(str(error)) from None
        if file_size is not None and not _is_count(file_size):
            raise DamagedResult(f"{name}: the size in the manifest is not a byte count")
    if None not in files.values() and size != sum(files.values()):  # eviction counts on `size`
        raise DamagedResult(f"the manifest's total of {size} bytes is not the sum of its files")
    return _Manifest(float(created), size, files, metadata)


def _check_stored_file(path: Path, size: int | None) -> None:
    try:
        info = os.lstat(path)
    except OSError as error:
        raise DamagedResult(f"{path.name}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DamagedResult(f"{path.name} is not a regular file")
    if size is not None and info.st_size != size:
        raise DamagedResult(f"{path.name} is {info.st_size} bytes; the manifest says {size}")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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


def _flush_to_disk(folder: Path, names: list[str]) -> None:
    """fsync the files, then the folder: a rename that survives a power cut then names whole files."""
    for name in names:
        descriptor = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    if os.name == "posix":  # folders can be opened and synced on POSIX only
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except FileNotFoundError:
        return []


def _remove(path: Path) -> None:
    """Delete a folder of the store, or the link that stands in its place (never what a link points to)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
