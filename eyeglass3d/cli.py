"""`eyeglass3d reconstruct INPUT... --out DIR`: batch reconstruction from the command line.

Heavy modules (torch, diffusers, the pipeline) are imported only once there is work to do, so
`eyeglass3d --help` answers at once. One bad photo never stops a batch: it is reported and the run
goes on; the exit code is non-zero only when nothing succeeded.
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
    return _reconstruct(args)


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
        "inputs", nargs="+", metavar="INPUT", type=Path,
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
    return parser


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

    from .paths import default_weights

    weights = args.weights if args.weights is not None else default_weights()
    try:
        pipe = _load_pipeline(weights)
    except (OSError, ValueError) as error:
        print(f"Cannot load the model from {weights}: {error}", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    succeeded = 0
    notes: dict[str, str] = {}
    progress = tqdm(files, desc="reconstructing", unit="photo", file=sys.stderr)
    for path in progress:
        name = _unique_name(path.stem, used_names)
        clock = time.perf_counter()
        try:
            written, stages = _reconstruct_one(pipe, path, name, args)
        except Exception as error:  # one bad photo must not end a batch; say what happened and go on
            reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            failures.append((path, reason))
            tqdm.write(f"failed  {path}: {reason}", file=sys.stderr)
            continue
        succeeded += 1
        notes.update({stage: how for stage, how in stages.items() if how != "network"})
        tqdm.write(f"ok      {path} -> {', '.join(p.name for p in written)} ({time.perf_counter() - clock:.1f} s)",
                   file=sys.stderr)
    progress.close()

    print(f"{succeeded} reconstructed, {len(failures)} failed; outputs in {args.out}")
    for stage, how in notes.items():
        print(f"note: {stage}: {how}")
    for path, reason in failures:
        print(f"failed: {path}: {reason}")
    return 0 if succeeded else 1


def _load_pipeline(weights):
    """Loaded once per run; torch and diffusers are imported here, not at `--help`."""
    from . import Eyeglass3DPipeline

    return Eyeglass3DPipeline.from_pretrained(weights)


def _reconstruct_one(pipe, path: Path, name: str, args: argparse.Namespace) -> tuple[list[Path], dict[str, str]]:
    result = pipe.reconstruct(str(path), remove_glasses=not args.keep_glasses, all_faces=args.all_faces)
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


def _unique_name(stem: str, used: set[str]) -> str:
    """`photo`, then `photo_2`, ... so that a.jpg and a.png (or two folders' a.jpg) keep apart."""
    name, number = stem, 2
    while name in used:
        name, number = f"{stem}_{number}", number + 1
    used.add(name)
    return name
