"""`eyeglass3d reconstruct INPUT... --out DIR` (or `--dataset`): batch reconstruction from the command line.

Heavy modules (torch, diffusers, the pipeline) are imported only once there is work to do, so
`eyeglass3d --help` answers at once. One bad photo never stops a batch: it is reported and the run
goes on; the exit code is non-zero only when nothing succeeded. Photos go to the networks
`--batch-size` at a time (stacked crops per stage), with the same results as one by one.
`--dataset` reads a Hugging Face `datasets` split and writes Parquet rows (`eyeglass3d.batch`),
resumable: a rerun after an interruption skips the rows already written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MESH_FORMATS = ("glb", "obj")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if bool(args.inputs) == bool(args.dataset):
        parser.error("give either INPUT files and folders or --dataset, not both" if args.inputs
                     else "nothing to reconstruct: give INPUT files or folders, or --dataset")
    if args.dataset and args.all_faces:
        parser.error("--all-faces writes several results per photo; --dataset writes one row per image")
    try:
        return _reconstruct_dataset(args) if args.dataset else _reconstruct(args)
    except KeyboardInterrupt:
        print("Interrupted. Finished photos are kept; with --dataset, the same command resumes.", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eyeglass3d",
        description="Single-photo 3D face reconstruction that removes eyeglasses first.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    reconstruct = commands.add_parser(
        "reconstruct",
        help="reconstruct textured 3D faces from photos",
        description=(
            "Reconstruct a textured 3D face from each photo. Writes <stem>.glb and/or <stem>.obj "
            "(+ .mtl, .png), <stem>_inpainted.png and <stem>_coefficients.json into --out."
        ),
    )
    reconstruct.add_argument(
        "inputs", nargs="*", metavar="INPUT", type=Path,
        help="image files, or folders searched recursively for " + ", ".join(sorted(IMAGE_SUFFIXES)),
    )
    reconstruct.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    reconstruct.add_argument(
        "--format", default="glb", type=_mesh_formats, metavar="glb,obj",
        help="mesh formats, comma-separated (default: glb)",
    )
    reconstruct.add_argument(
        "--keep-glasses", action="store_true", help="do not remove eyeglasses before reconstructing"
    )
    reconstruct.add_argument(
        "--weights", default=None, metavar="PATH_OR_REPO_ID",
        help="model folder or Hugging Face repo id (default: the weights shipped with the package)",
    )
    reconstruct.add_argument(
        "--all-faces", action="store_true",
        help="reconstruct every face in a photo (<stem>_face1, <stem>_face2, ...) instead of the largest",
    )
    reconstruct.add_argument(
        "--batch-size", default=8, type=_positive_int, metavar="N",
        help="photos whose faces go through the networks together (default: 8; 1 = one by one)",
    )
    dataset = reconstruct.add_argument_group(
        "data sets", "read a Hugging Face `datasets` split instead of files; write Parquet rows to --out/rows "
        "(coefficients, landmarks, mesh and inpainted paths, error), resumable by rerunning the same command",
    )
    dataset.add_argument(
        "--dataset", metavar="PATH_OR_ID",
        help="a folder (save_to_disk, or files load_dataset reads) or a Hub id (needs a connection)",
    )
    dataset.add_argument("--split", default="train", help="the split to read (default: train)")
    dataset.add_argument("--image-column", default="image", metavar="COL", help="column with the images (default: image)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _mesh_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()))
    unknown = [name for name in formats if name not in MESH_FORMATS]
    if not formats or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(MESH_FORMATS)}, got {text!r}")
    return formats


def collect_inputs(inputs: list[Path], exclude: Path | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files named directly, plus image files found recursively in folders (hidden ones skipped).

    Files under `exclude` (the output folder) are left out, so rerunning with `--out` inside an
    input folder does not reconstruct its own `_inpainted.png` files. Returns (files, missing).
    """
    exclude = exclude.resolve() if exclude is not None else None
    files: dict[Path, None] = {}
    missing: list[tuple[Path, str]] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(
                path for path in item.rglob("*")
                if path.is_file()
                and path.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in path.relative_to(item).parts)
                and not (exclude is not None and path.resolve().is_relative_to(exclude))
            )
            files.update(dict.fromkeys(found))
        elif item.exists():
            files[item] = None
        else:
            missing.append((item, "no such file or folder"))
    return list(files), missing


def _reconstruct(args: argparse.Namespace) -> int:
    files, failures = collect_inputs(args.inputs, exclude=args.out)
    for path, reason in failures:
        print(f"failed  {path}: {reason}", file=sys.stderr)
    if not files:
        print("No images to reconstruct.", file=sys.stderr)
        return 1

    from tqdm import tqdm

    pipe = _load_pipeline(args.weights)
    if pipe is None:
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    succeeded = 0
    notes: dict[str, str] = {}
    progress = tqdm(total=len(files), desc="reconstructing", unit="photo", file=sys.stderr)
    for start in range(0, len(files), args.batch_size):
        chunk = files[start:start + args.batch_size]
        clock = time.perf_counter()
        results = reconstruct_each(pipe, [str(path) for path in chunk], remove_glasses=not args.keep_glasses,
                                   all_faces=args.all_faces)
        seconds = (time.perf_counter() - clock) / len(chunk)
        for path, result in zip(chunk, results):
            name = _unique_name(path.stem, used_names)
            try:
                if isinstance(result, Exception):
                    raise result
                written, stages = _write_outputs(result, name, args)
            except Exception as error:  # one bad photo must not end a batch; say what happened and go on
                reason = _reason(error)
                failures.append((path, reason))
                tqdm.write(f"failed  {path}: {reason}", file=sys.stderr)
                continue
            succeeded += 1
            notes.update({stage: how for stage, how in stages.items() if how != "network"})
            tqdm.write(f"ok      {path} -> {', '.join(p.name for p in written)} ({seconds:.1f} s)", file=sys.stderr)
        progress.update(len(chunk))
    progress.close()

    print(f"{succeeded} reconstructed, {len(failures)} failed; outputs in {args.out}")
    for stage, how in notes.items():
        print(f"note: {stage}: {how}")
    for path, reason in failures:
        print(f"failed: {path}: {reason}")
    return 0 if succeeded else 1


def _load_pipeline(weights):
    """Loaded once per run (torch and diffusers are imported here, not at `--help`); None, said on stderr,
    when the model cannot be loaded."""
    from . import Eyeglass3DPipeline
    from .paths import default_weights

    weights = weights if weights is not None else default_weights()
    try:
        return Eyeglass3DPipeline.from_pretrained(weights)
    except (OSError, ValueError) as error:
        print(f"Cannot load the model from {weights}: {error}", file=sys.stderr)
        return None


def reconstruct_each(pipe, images: list, **options) -> list:
    """`pipe.reconstruct(images, errors="return")`: a result or the error for each image. Should the batch fail in
    a way no single image was blamed for (not a ValueError), each image is retried alone so that the others still
    get through and the error lands on the one that caused it."""
    try:
        return pipe.reconstruct(images, errors="return", **options)
    except Exception:
        results = []
        for image in images:
            try:
                results += pipe.reconstruct([image], errors="return", **options)
            except Exception as error:
                results.append(error)
        return results


def _reason(error: Exception) -> str:
    return str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"


def _write_outputs(result, name: str, args: argparse.Namespace) -> tuple[list[Path], dict[str, str]]:
    if args.all_faces:
        named = [(f"{name}_face{index}", face) for index, face in enumerate(result, start=1)]
    else:
        named = [(name, result)]
    written: list[Path] = []
    stages: dict[str, str] = {}
    for face_name, face in named:
        for mesh_format in args.format:
            written += face.export(args.out / f"{face_name}.{mesh_format}")
        inpainted_path = args.out / f"{face_name}_inpainted.png"
        face.inpainted.save(inpainted_path)
        coefficients_path = args.out / f"{face_name}_coefficients.json"
        coefficients_path.write_text(face.coefficients_json())
        written += [inpainted_path, coefficients_path]
        stages.update(face.stages)
    return written, stages


def _reconstruct_dataset(args: argparse.Namespace) -> int:
    """`--dataset`: rows not yet in --out/rows, `--batch-size` at a time, each batch written as one Parquet part."""
    try:
        from . import batch
    except ImportError as error:
        print(f"--dataset needs the batch extra (pip install 'eyeglass3d[batch]'): {error}", file=sys.stderr)
        return 1
    try:
        images = _load_split(args.dataset, args.split, args.image_column)
    except (OSError, ValueError) as error:  # datasets raises both (missing, offline, bad split or column)
        print(f"Cannot read the data set {args.dataset} (split {args.split}): {error}", file=sys.stderr)
        return 1
    try:
        dataset = Path(args.dataset).resolve() if Path(args.dataset).exists() else args.dataset
        batch.claim_output(args.out, {"dataset": str(dataset), "split": args.split,
                                      "image_column": args.image_column, "rows": len(images)})
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    done = batch.finished_rows(args.out)
    todo = [row for row in range(len(images)) if row not in done]
    print(f"{len(images)} rows, {len(images) - len(todo)} already in {args.out / batch.ROWS_DIR}, {len(todo)} to do",
          file=sys.stderr)
    if todo:
        from tqdm import tqdm

        pipe = _load_pipeline(args.weights)
        if pipe is None:
            return 1
        for start in tqdm(range(0, len(todo), args.batch_size), desc="reconstructing", unit="batch", file=sys.stderr):
            rows = todo[start:start + args.batch_size]
            cells = images[rows][args.image_column]
            batch.write_part(args.out, batch.reconstruct_records(pipe, rows, cells, args.out,
                                                                 remove_glasses=not args.keep_glasses))
    table = batch.read_results(args.out)
    failed = table.column("error").drop_null().to_pylist()
    print(f"{table.num_rows - len(failed)} reconstructed, {len(failed)} failed; rows in {args.out / batch.ROWS_DIR}")
    return 0 if table.num_rows > len(failed) else 1


def _load_split(name: str, split: str, image_column: str):
    """The split, with its image column left undecoded: `load_image` reads each cell and turns a broken one into
    that row's error instead of stopping the data set."""
    import datasets

    path = Path(name)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():  # written by save_to_disk
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"no split {split!r}; it has {', '.join(loaded)}")
            loaded = loaded[split]
    else:
        loaded = datasets.load_dataset(str(name), split=split)
    if image_column not in loaded.column_names:
        raise ValueError(f"no column {image_column!r}; it has {', '.join(loaded.column_names)}")
    loaded = loaded.select_columns([image_column])
    if isinstance(loaded.features[image_column], datasets.Image):
        loaded = loaded.cast_column(image_column, datasets.Image(decode=False))
    return loaded


def _unique_name(stem: str, used: set[str]) -> str:
    """`photo`, then `photo_2`, ... so that a.jpg and a.png (or two folders' a.jpg) keep apart."""
    name, number = stem, 2
    while name in used:
        name, number = f"{stem}_{number}", number + 1
    used.add(name)
    return name
