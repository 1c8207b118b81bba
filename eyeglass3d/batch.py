"""Reconstruct whole data sets into Parquet: one row per image, resumable, on one machine or as a Ray Data stage.

The row format is shared by `eyeglass3d reconstruct --dataset` and `reconstruct_ray`, so both write the same table:

    row (int64, the image's index in the split; null for a Ray dataset without one), source (the image's file name
    or path, when known), face_box (4 floats), score, landmarks (68 x 2, input pixels), coefficients (struct of
    identity, expression, texture, lighting, pose), glb_path and inpainted_path (relative to the output folder),
    stages (JSON), error ("FaceNotFoundError: No face found ..." on a row that failed; null otherwise)

Rows go to `<out>/rows/*.parquet`, read as one table by `pyarrow.parquet.read_table(out / "rows")` or
`datasets.load_dataset("parquet", data_files=str(out / "rows" / "*.parquet"))`; meshes and inpainted photos to
`<out>/files/`. Each part is written whole (temporary name, then renamed), so a run stopped at any point leaves only
finished rows and the next run skips them. A failed row is a finished row: its error will not change by rerunning.

Ray (the `batch` extra) is imported only by `reconstruct_ray`, never by the pipeline or the app:

    import ray
    from eyeglass3d.batch import reconstruct_ray
    ray.init(num_cpus=2)
    reconstruct_ray(ray.data.read_images("photos/", include_paths=True), "results/", weights="weights_card")

It runs the pipeline in `map_batches` actors (each loads the pipeline once) and writes the same Parquet.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .cli import reconstruct_each
from .models.face_model import COEFFICIENT_SIZES

ROWS_DIR = "rows"
FILES_DIR = "files"
RESULT_SCHEMA = pa.schema([
    ("row", pa.int64()),
    ("source", pa.string()),
    ("face_box", pa.list_(pa.float32(), 4)),
    ("score", pa.float32()),
    ("landmarks", pa.list_(pa.list_(pa.float32(), 2), 68)),
    ("coefficients", pa.struct([(name, pa.list_(pa.float32(), size)) for name, size in COEFFICIENT_SIZES.items()])),
    ("glb_path", pa.string()),
    ("inpainted_path", pa.string()),
    ("stages", pa.string()),
    ("error", pa.string()),
])


def image_and_source(value) -> tuple[object, str | None]:
    """What `reconstruct` can read from a data set's image cell, and the file it came from if known: a `datasets`
    Image cell undecoded ({"bytes", "path"}), a path, bytes, a PIL image or an array (as `ray.data.read_images`
    gives). An empty cell is handed on as None, which `reconstruct` refuses with a clear ImageInputError."""
    if isinstance(value, dict):
        path = value.get("path")
        return (value.get("bytes") or path), path
    if isinstance(value, (str, os.PathLike)):
        return value, os.fspath(value)
    return value, None


def file_stem(row: int | None, source: str | None) -> str:
    """Output file names: `row-000042` by index; a data set without indices names by file and a hash of its path."""
    if row is not None:
        return f"row-{row:06d}"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source or "image").stem)[:60]
    return f"{stem}-{hashlib.sha1((source or '').encode()).hexdigest()[:8]}"


def reconstruct_records(pipe, rows: list, cells: list, out: Path, *, sources: list | None = None,
                        remove_glasses: bool = True) -> list[dict]:
    """Reconstruct one batch of data set cells; one record per cell (a result or its error), files written.
    `sources` overrides where the cells say they come from."""
    read = [image_and_source(cell) for cell in cells]
    images = [image for image, _ in read]
    sources = sources if sources is not None else [source for _, source in read]
    results = reconstruct_each(pipe, images, remove_glasses=remove_glasses)
    (out / FILES_DIR).mkdir(parents=True, exist_ok=True)
    records = []
    for row, source, result in zip(rows, sources, results):
        row = None if row is None else int(row)
        record = dict.fromkeys(RESULT_SCHEMA.names)
        record.update(row=row, source=source)
        if isinstance(result, Exception):
            record["error"] = f"{type(result).__name__}: {result}"
        else:
            stem = file_stem(row, source)
            glb, inpainted = f"{FILES_DIR}/{stem}.glb", f"{FILES_DIR}/{stem}_inpainted.png"
            result.export(out / glb)
            result.inpainted.save(out / inpainted)
            record.update(
                face_box=np.asarray(result.face_box, np.float32).tolist(),
                score=float(result.score),
                landmarks=np.asarray(result.landmarks, np.float32).tolist(),
                coefficients={name: np.asarray(result.coefficients[name], np.float32).tolist()
                              for name in COEFFICIENT_SIZES},
                glb_path=glb,
                inpainted_path=inpainted,
                stages=json.dumps(result.stages),
            )
        records.append(record)
    return records


def claim_output(out: Path, source: dict) -> None:
    """Record which data set `out` holds rows of (`rows/_source.json`, which Parquet readers skip), and refuse to
    resume into it from another one: its row numbers would be skipped as if they were done."""
    record = out / ROWS_DIR / "_source.json"
    if record.is_file():
        claimed = json.loads(record.read_text())
        if claimed != source:
            raise ValueError(f"{out} holds rows of {claimed}, not of {source}; use another --out")
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(source))


def finished_rows(out: Path) -> set[int]:
    """Row indices already in `<out>/rows` (results and errors alike): what a resumed run skips."""
    folder = out / ROWS_DIR
    parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    return {row for part in parts for row in pq.read_table(part, columns=["row"]).column("row").to_pylist()}


def write_part(out: Path, records: list[dict]) -> Path:
    """One Parquet part, written under a hidden temporary name (which readers skip) and renamed: never half a part
    after an interruption."""
    folder = out / ROWS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{records[0]['row']:06d}.parquet"
    temporary = folder / f".{path.name}.tmp"
    pq.write_table(pa.Table.from_pylist(records, schema=RESULT_SCHEMA), temporary)
    os.replace(temporary, path)
    return path


def read_results(out: str | Path) -> pa.Table:
    """All rows written so far into `out`, sorted by row (then source)."""
    table = pq.read_table(Path(out) / ROWS_DIR, schema=RESULT_SCHEMA)
    return table.sort_by([("row", "ascending"), ("source", "ascending")])


class ReconstructBatches:
    """A Ray Data `map_batches` stage: each actor loads the pipeline once and turns batches of images into rows."""

    def __init__(self, weights: str, out: str, image_column: str = "image", remove_glasses: bool = True,
                 threads: int = 1):
        import torch

        from .pipeline import Eyeglass3DPipeline

        torch.set_num_threads(threads)
        self.pipe = Eyeglass3DPipeline.from_pretrained(weights)
        self.out, self.image_column, self.remove_glasses = Path(out), image_column, remove_glasses

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        cells = list(batch[self.image_column])
        rows = list(batch["row"]) if "row" in batch else [None] * len(cells)
        # ray.data.read_images(..., include_paths=True) gives decoded arrays and, beside them, their files.
        sources = [str(path) for path in batch["path"]] if "path" in batch else None
        records = reconstruct_records(self.pipe, rows, cells, self.out, sources=sources,
                                      remove_glasses=self.remove_glasses)
        return pa.Table.from_pylist(records, schema=RESULT_SCHEMA)


def reconstruct_ray(dataset, out: str | Path, *, weights: str | Path, image_column: str = "image",
                    batch_size: int = 8, actors: int = 1, threads_per_actor: int = 1,
                    remove_glasses: bool = True) -> Path:
    """Run the pipeline over a Ray dataset (`ray.data.read_images(..., include_paths=True)`, or
    `ray.data.from_huggingface(...)`, with a `row` column to name rows by index) and write its rows to
    `<out>/rows` as Parquet. Not resumable: filter out `finished_rows(out)` first to resume."""
    out = Path(out)
    results = dataset.map_batches(
        ReconstructBatches,
        fn_constructor_kwargs={"weights": str(weights), "out": str(out), "image_column": image_column,
                               "remove_glasses": remove_glasses, "threads": threads_per_actor},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=threads_per_actor,
    )
    results.write_parquet(str(out / ROWS_DIR))
    return out / ROWS_DIR
