"""eyeglass3d in the browser: one photo in; landmarks, parsing, glasses removal, a 3D face and downloads out.

UI only: every result comes from `Eyeglass3DPipeline.reconstruct`. `build_demo(pipe, store)` makes the
Blocks for any pipeline (the tests pass tiny random ones). Running this file serves the page on
http://127.0.0.1:7860 (or `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`) first and then loads the shipped
weights, once; a request that comes before they are loaded waits for them.

    GRADIO_ANALYTICS_ENABLED=False python app.py

Environment: `EYEGLASS3D_WEIGHTS` (model folder or Hub id), `EYEGLASS3D_SHARE_DIR` (shared results,
default `share_store/`), `EYEGLASS3D_CONCURRENCY` (reconstructions at once, default 1: each one already
uses every core).

Load (`tools/load_test.py`): at most `QUEUE_MAX_SIZE` requests wait; one more gets Gradio's "This
application is currently busy. Please try again." Memory stays flat under load: glibc is held to
`MALLOC_ARENAS` arenas and trimmed every `TRIM_EVERY_S`, reconstructions run on the app's own threads,
only `SESSIONS_KEPT` sessions are kept, and per-request files go after `WORK_MAX_AGE_S`.
"""

from __future__ import annotations

import os
import time

STARTED = time.perf_counter()  # start-up is reported from here, before the heavy imports
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import contextvars
import ctypes
import hashlib
import json
import shutil
import tempfile
import threading
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import gradio as gr
import numpy as np
import PIL.Image

from eyeglass3d.errors import FaceNotFoundError, ImageInputError
from eyeglass3d.image_io import load_image
from eyeglass3d.render.overlay import EYEGLASSES_RGB, colorize_parsing, draw_landmarks
from eyeglass3d.sharing import ResultNotFound, ResultStore

APP_ROOT = Path(__file__).resolve().parent
EXAMPLE_PHOTOS = [APP_ROOT / "examples" / "grace_hopper.jpg", APP_ROOT / "examples" / "astronaut.jpg"]
DISPLAY_MAX_SIDE = 1024  # views are drawn at most this large; the 3D face and downloads use the full photo
MAX_UPLOAD = "25mb"
QUEUE_MAX_SIZE = 16  # ~10 s of waiting at ~0.6 s a reconstruction; the next one is told to try again
SESSIONS_KEPT = 500  # Gradio keeps ~50 KB per visit (10,000 by default: ~0.5 GB that only grows)
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter number
TRIM_EVERY_S = 2.0  # a trim takes about a millisecond
# Per-request output folders (~4 MB each): Gradio copies them into its cache as the handler returns, so
# keeping them longer only doubles the disk (kept 5 min: 0.97 GB in a 2-user soak; on a tmpfs /tmp, RAM).
WORK_MAX_AGE_S = 120.0
CACHE_CHECK_S, CACHE_MAX_AGE_S = 600, 3600  # Gradio's copies stay downloadable for an hour
VIEWER_CLEAR_COLOR = (0.93, 0.94, 0.96, 1.0)
VIEWER_CAMERA = (90, 90, 0.5)  # degrees, degrees, metres: straight at the face, the head filling the view
MASK_HEX = "#{:02x}{:02x}{:02x}".format(*EYEGLASSES_RGB)
MASK_LAYER_ALPHA = 140  # the seeded mask layer lets the glasses show through
EDITOR_SIDE = 800  # the mask editor's square canvas, in pixels
EDITOR_PAD_RGB = (236, 238, 242)
EDITOR_MATCH_TOLERANCE = 20.0  # mean |difference| (0..255) between the painted-on photo and the input photo
SHARE_MAX_BYTES = 2 * 1024**3
SHARE_MAX_AGE_S = 30 * 24 * 3600
# What the handlers return, in order (the event's output components are listed in the same order).
VIEW_NAMES = ("landmarks", "parsing", "before_after", "model_3d", "downloads", "status", "share_link")
RUN_OUTPUT_NAMES = VIEW_NAMES + ("mask_editor",)
RERUN_OUTPUT_NAMES = VIEW_NAMES
OPEN_OUTPUT_NAMES = ("photo",) + VIEW_NAMES + ("mask_editor",)
# Where each pipeline stage sits on the progress bar, and what it tells the user.
STAGE_PROGRESS = {
    "detect": (0.05, "Finding the face"),
    "landmarks": (0.15, "Placing 68 landmarks"),
    "parse": (0.2, "Finding the glasses"),
    "inpaint": (0.25, "Removing the glasses"),
    "regress": (0.3, "Fitting the 3D face"),
    "mesh": (0.35, "Texturing the 3D face"),
}
DOWNLOAD_NAMES = ("eyeglass3d_face.glb", "eyeglass3d_face_obj.zip", "eyeglass3d_coefficients.json")

STAGE_TITLES = {
    "detector": "face detection",
    "landmarker": "68 landmarks",
    "parser": "glasses mask",
    "inpainter": "glasses removal",
    "regressor": "3DMM coefficients",
}

INTRO = """# eyeglass3d: a 3D face from one photo, eyeglasses removed first
Face → 68 landmarks → face parsing with an *eyeglasses* class → glasses deleted and filled in → 3D morphable
model → textured mesh ([Zhao & Qi, MMM 2022](https://arxiv.org/abs/2412.19848)). Everything runs on
CPU. The status under the 3D view says which stages ran a trained network and which a stand-in."""

MASK_HELP = """Paint over the frames and lenses with the brush, erase what is not glasses, then re-run: the glasses are
removed where you painted and the 3D face is rebuilt from that. The paint starts from the app's own mask."""


def with_readable_upload_errors(image: gr.Image) -> gr.Image:
    """Make an unreadable upload a readable `gr.Error` instead of Gradio's bare "Error".

    Gradio opens the upload before any handler runs, so the check has to sit in the component's own
    preprocessing. (A `gr.Image` subclass would do it too, but Gradio writes a `.pyi` stub beside the
    module of every component subclass.)
    """
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except PIL.Image.DecompressionBombError as error:
            raise gr.Error("This image has too many pixels for the app. Use a smaller photo.") from error
        except (OSError, ValueError) as error:
            message = "This file is not an image the app can read. Use a JPEG, PNG or WebP photo."
            raise gr.Error(message) from error

    image.preprocess = checked
    return image


class EyeglassApp:
    """The event handlers, separate from the layout so tests can call them with any pipeline."""

    def __init__(self, pipe, store: ResultStore, work_root: str | os.PathLike | None = None, workers: int = 1):
        self._pipe = pipe  # an Eyeglass3DPipeline, or a Future of one while it loads in the background
        self.store = store
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eyeglass3d-reconstruct")
        self.work_root = Path(work_root or Path(tempfile.gettempdir()) / "eyeglass3d-app")
        self.work_root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ handlers
    def reconstruct(self, photo, remove_glasses=True, progress=gr.Progress()):
        """Photo → (landmarks, parsing, before/after, GLB, downloads, status, share link, mask editor)."""
        return self._run(photo, None, bool(remove_glasses), progress, with_editor=True)

    def rerun_with_mask(self, photo, painted, progress=gr.Progress()):
        """The same photo with the glasses mask painted in the editor; the editor keeps the user's paint."""
        rgb = self._load(photo)
        mask = painted_mask(painted, rgb)
        return self._run(photo, mask, True, progress, with_editor=False, rgb=rgb)

    def share(
        self, photo, landmarks_view, parsing_view, before_after, model_3d, downloads, status, request: gr.Request = None
    ):
        """Store what is on screen under a new unguessable id; returns the link that reopens it."""
        if not model_3d or not before_after or not parsing_view or not landmarks_view or photo is None:
            raise gr.Error("Reconstruct a photo first, then share the result.")
        base_path, annotations = parsing_view
        images = {"photo.jpg": PIL.Image.fromarray(self._load(photo))}
        files = {
            "landmarks" + _image_suffix(landmarks_view): landmarks_view,
            "parsing" + _image_suffix(base_path): base_path,
            "before" + _image_suffix(before_after[0]): before_after[0],
            "after" + _image_suffix(before_after[1]): before_after[1],
            "face.glb": model_3d,
        }
        labels = []
        for index, (mask_path, label) in enumerate(annotations):
            files[f"parsing_mask_{index}.png"] = mask_path
            labels.append(str(label))
        for path in downloads or []:
            name = Path(path).name
            if name in DOWNLOAD_NAMES:
                files[name] = path
        check_shared_files(files)
        try:
            result_id = self.store.save(
                files=files, images=images, metadata={"status": str(status or ""), "parsing_labels": labels}
            )
        except ValueError as error:
            raise gr.Error(f"This result cannot be shared: {error}") from error
        return share_link(request, result_id)

    def open_result(self, result_id: str, request: gr.Request = None):
        """A shared result back on screen: (photo, landmarks, parsing, before/after, GLB, downloads, status,
        share link, mask editor). An unknown, expired or forged id changes nothing but the status."""
        try:
            result = self.store.load((result_id or "").strip())
        except ResultNotFound:
            gr.Warning("This share link does not point to a result: it is mistyped, or the result has expired.")
            not_found = "**Result not found.** This share link is mistyped, or the result has expired."
            return (gr.skip(),) * 6 + (not_found, gr.skip(), gr.skip())
        files, metadata = result.files, result.metadata
        masks = [
            (np.asarray(PIL.Image.open(files[f"parsing_mask_{index}.png"]).convert("RGBA"))[..., 3] / 255.0, label)
            for index, label in enumerate(metadata.get("parsing_labels", []))
        ]
        parsing = (str(_named(files, "parsing")), masks)
        before, after = str(_named(files, "before")), str(_named(files, "after"))
        eyeglasses = [mask for mask, label in masks if label == "eyeglasses"]
        before_rgb = np.asarray(PIL.Image.open(before).convert("RGB"))
        editor = editor_value(before_rgb, eyeglasses[0] > 0 if eyeglasses else None)
        downloads = [str(files[name]) for name in DOWNLOAD_NAMES if name in files]
        status = "*Opened from a share link.*\n\n" + metadata.get("status", "")
        return (
            str(files["photo.jpg"]), str(_named(files, "landmarks")), parsing, (before, after),
            str(files["face.glb"]), downloads, status, share_link(request, result.result_id), editor,
        )

    def open_from_link(self, request: gr.Request):
        """Page load: open `?result=<id>` when the URL has one, otherwise leave the page as it is."""
        result_id = dict(request.query_params).get("result") if request is not None else None
        if result_id is None:
            return (gr.skip(),) * 9
        return self.open_result(result_id, request)

    # ------------------------------------------------------------------ work
    def _load(self, photo) -> np.ndarray:
        if photo is None:
            raise gr.Error("Add a photo first: upload one, use the webcam or paste from the clipboard.")
        try:
            # Bytes, not the path: error messages then never show the server's file names.
            return load_image(Path(photo).read_bytes() if isinstance(photo, (str, os.PathLike)) else photo)
        except ImageInputError as error:
            raise gr.Error(f"This photo cannot be used: {error}") from error
        except OSError as error:
            raise gr.Error("The uploaded file could not be read. Please upload it again.") from error

    def _run(self, *args, **kwargs):
        """Reconstructions run on the app's own long-lived threads, not on Gradio's, which come and go
        (a soak saw new ones every few minutes): each new thread that runs torch starts its own OpenMP
        team and per-thread buffers."""
        context = contextvars.copy_context()  # gr.Progress finds its event through context variables
        return self._workers.submit(context.run, self._reconstruct_now, *args, **kwargs).result()

    def _reconstruct_now(self, photo, glasses_mask, remove_glasses, progress, with_editor, rgb=None):
        started = time.perf_counter()
        progress(0.0, desc="Reading the photo")
        rgb = self._load(photo) if rgb is None else rgb
        pipe = self._pipeline(progress)
        try:
            out = pipe.reconstruct(
                rgb, glasses_mask=glasses_mask, remove_glasses=remove_glasses,
                on_stage=lambda stage: progress(STAGE_PROGRESS[stage][0], desc=STAGE_PROGRESS[stage][1]),
            )
        except FaceNotFoundError as error:
            raise gr.Error(str(error)) from error
        except ValueError as error:
            raise gr.Error(f"The reconstruction stopped: {error}") from error

        folder = self._fresh_work_folder()
        progress(0.6, desc="Writing the 3D face (GLB)")
        glb_path = out.export(folder / "eyeglass3d_face.glb")[0]
        progress(0.7, desc="Packing OBJ + MTL + PNG")
        obj_files = out.export(folder / "obj" / "eyeglass3d_face.obj")
        zip_path = folder / "eyeglass3d_face_obj.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in obj_files:
                archive.write(path, path.name)
        json_path = folder / "eyeglass3d_coefficients.json"
        json_path.write_text(out.coefficients_json())

        progress(0.85, desc="Drawing the views")
        photo_view = _shrink(rgb)
        landmarks_view = _shrink(draw_landmarks(rgb, out.landmarks))
        parsing = _shrink(out.parsing, nearest=True)
        mask_view = _shrink(out.glasses_mask.astype(np.uint8), nearest=True) > 0
        annotations = [  # face parts half see-through, the glasses mask (what removal replaces) opaque
            (mask_view.astype(np.float32), label)
            if label == "eyeglasses"
            else ((parsing == index).astype(np.float32) * 0.6, label)
            for index, label in enumerate(out.parsing_labels)
            if label != "background" and (label == "eyeglasses" or (parsing == index).any())
        ]
        inpainted_view = _shrink(np.asarray(out.inpainted))
        seconds = time.perf_counter() - started
        status = describe_result(out, remove_glasses, seconds, hand_painted=glasses_mask is not None)

        outputs = (
            landmarks_view,
            (photo_view, annotations),
            (photo_view, inpainted_view),
            str(glb_path),
            [str(glb_path), str(zip_path), str(json_path)],
            status,
            "",  # a new result is not shared until the user asks
        )
        if with_editor:
            outputs += (editor_value(photo_view, mask_view),)
        progress(1.0, desc="Done")
        return outputs

    def _pipeline(self, progress):
        """The pipeline; a request that arrives while it still loads waits for it."""
        if not isinstance(self._pipe, Future):
            return self._pipe
        if not self._pipe.done():
            progress(0.02, desc="Loading the models (only right after the app starts)")
        try:
            return self._pipe.result()
        except Exception as error:
            raise gr.Error(f"The models could not be loaded: {error}") from error

    def _fresh_work_folder(self) -> Path:
        """A new folder for one request's files; older ones go (Gradio copies them into its cache at once)."""
        now = time.time()
        for folder in self.work_root.glob("run-*"):
            try:
                if now - folder.stat().st_mtime > WORK_MAX_AGE_S:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.work_root))


# ---------------------------------------------------------------------- memory
def _glibc():
    """glibc's malloc controls, or None where the C library is another (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


GLIBC = _glibc()


def limit_malloc_arenas() -> None:
    """Call before the server starts its threads. Gradio runs handlers on many threads and glibc gives
    each its own arena, which keeps what a request freed: under 12 users the heap in use stayed at
    ~300 MB while the freed-but-kept part grew from 100 to 210 MB in two minutes."""
    if GLIBC is not None:
        GLIBC.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def start_memory_trimmer() -> None:
    """Hand freed pages back to the system every `TRIM_EVERY_S`, so RSS follows what is in use: without
    it the last requests' freed buffers stayed in RSS after a load ended (+110 MB after 20 users)."""
    if GLIBC is None:
        return

    def trim_forever():
        while True:
            time.sleep(TRIM_EVERY_S)
            GLIBC.malloc_trim(0)

    threading.Thread(target=trim_forever, name="eyeglass3d-malloc-trim", daemon=True).start()


# ---------------------------------------------------------------------- pure helpers
def describe_result(out, remove_glasses: bool, seconds: float, hand_painted: bool = False) -> str:
    """One honest line per stage: "network", or the stand-in that ran because no network is shipped."""
    glasses_pixels = int(np.count_nonzero(out.glasses_mask))
    lines = [f"**Face found** (confidence {out.score:.2f}) in {seconds:.1f} s."]
    for stage, title in STAGE_TITLES.items():
        how = out.stages.get(stage)
        if how is None:
            continue
        if how == "skipped":
            if not remove_glasses:
                how = "off (glasses kept, as asked)"
            elif glasses_pixels == 0:
                how = "nothing to remove: the mask is empty. Paint the glasses under *Fix the glasses mask by hand*."
        lines.append(f"- {title}: {how}")
    if hand_painted:
        lines.append(f"- mask painted by hand: {glasses_pixels} pixels")
    return "\n".join(lines)


def editor_value(photo_rgb: np.ndarray, mask: np.ndarray | None) -> dict:
    """The mask editor's content: the photo, fitted into the square canvas, and the mask as one translucent
    magenta layer in the same place.

    The photo is padded to exactly the canvas size: the editor places layers on its initial canvas, so a
    photo of any other size would shift against its mask layer.
    """
    x0, y0, width, height = editor_frame(photo_rgb.shape[:2])
    background = np.full((EDITOR_SIDE, EDITOR_SIDE, 3), EDITOR_PAD_RGB, np.uint8)
    fitted_photo = cv2.resize(photo_rgb, (width, height), interpolation=cv2.INTER_AREA)
    background[y0 : y0 + height, x0 : x0 + width] = fitted_photo
    layer = np.zeros((EDITOR_SIDE, EDITOR_SIDE, 4), np.uint8)
    if mask is not None:
        fitted = _resize_mask(mask, (width, height))
        layer[y0 : y0 + height, x0 : x0 + width][fitted] = (*EYEGLASSES_RGB, MASK_LAYER_ALPHA)
    return {"background": background, "layers": [layer], "composite": None}


def editor_frame(shape_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a photo of this size sits in the editor's square canvas: x0, y0, width, height."""
    height, width = shape_hw
    scale = EDITOR_SIDE / max(height, width)
    fitted_width, fitted_height = max(1, round(width * scale)), max(1, round(height * scale))
    return (EDITOR_SIDE - fitted_width) // 2, (EDITOR_SIDE - fitted_height) // 2, fitted_width, fitted_height


def painted_mask(painted, photo_rgb: np.ndarray) -> np.ndarray:
    """Union of the editor's painted layers (any opaque pixel), cut out of the canvas and scaled to the photo."""
    if not painted or painted.get("background") is None:
        raise gr.Error("Reconstruct a photo first: the mask is painted over its result.")
    x0, y0, width, height = editor_frame(photo_rgb.shape[:2])
    background = _to_canvas(np.asarray(painted["background"])[..., :3])
    shown = background[y0 : y0 + height, x0 : x0 + width].astype(np.float32)
    expected = cv2.resize(photo_rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    if np.abs(shown - expected).mean() > EDITOR_MATCH_TOLERANCE:
        raise gr.Error("The mask was painted on a different photo. Press Reconstruct for this photo first.")
    mask = np.zeros((EDITOR_SIDE, EDITOR_SIDE), bool)
    for layer in painted.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4:
            paint = layer[..., 3] > 0
        else:  # a layer without alpha: anything not black counts as paint
            paint = layer.reshape(layer.shape[0], layer.shape[1], -1).max(-1) > 0
        mask |= _to_canvas(paint.astype(np.uint8), nearest=True) > 0
    mask = mask[y0 : y0 + height, x0 : x0 + width]
    if not mask.any():
        raise gr.Error("The mask is empty. Paint over the glasses first, or press Reconstruct to use the app's mask.")
    photo_height, photo_width = photo_rgb.shape[:2]
    return _resize_mask(mask, (photo_width, photo_height))


def _resize_mask(mask: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Bilinear, then half-way threshold: unlike OpenCV's nearest neighbour it keeps the mask centred."""
    return cv2.resize(mask.astype(np.uint8) * 255, size_wh, interpolation=cv2.INTER_LINEAR) > 127


def _to_canvas(image: np.ndarray, nearest: bool = False) -> np.ndarray:
    if image.shape[:2] == (EDITOR_SIDE, EDITOR_SIDE):
        return image
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(image, (EDITOR_SIDE, EDITOR_SIDE), interpolation=interpolation)


def check_shared_files(files: dict) -> None:
    """Only what the app itself shows may be stored for others: images that decode, a GLB, a zip, JSON."""
    for name, path in files.items():
        suffix = Path(name).suffix
        try:
            if suffix in (".png", ".jpg", ".jpeg", ".webp"):
                with PIL.Image.open(path) as image:
                    image.verify()
            elif suffix == ".glb":
                if Path(path).read_bytes()[:4] != b"glTF":
                    raise ValueError("not a GLB file")
            elif suffix == ".zip":
                if not zipfile.is_zipfile(path):
                    raise ValueError("not a zip file")
            elif suffix == ".json":
                json.loads(Path(path).read_text())
        except (OSError, ValueError, SyntaxError) as error:
            raise gr.Error(f"This result cannot be shared: {name} is damaged or of the wrong kind.") from error


def share_link(request, result_id: str) -> str:
    """The page's own address with `?result=<id>`; a relative link when the page address is unknown."""
    referer = request.headers.get("referer") if request is not None else None
    if referer:
        parts = urlsplit(referer)
        if parts.scheme in ("http", "https") and parts.netloc:
            return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", f"result={result_id}", ""))
    return f"?result={result_id}"


def parsing_color_map(labels) -> dict[str, str]:
    """The overlay module's palette, so the app and the debug pictures colour parts alike."""
    palette = colorize_parsing(np.arange(len(labels))[None], list(labels))[0]
    return {label: "#{:02x}{:02x}{:02x}".format(*rgb) for label, rgb in zip(labels, palette.tolist())}


def _shrink(image: np.ndarray, nearest: bool = False) -> np.ndarray:
    height, width = image.shape[:2]
    scale = DISPLAY_MAX_SIDE / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _image_suffix(path) -> str:
    suffix = Path(str(path)).suffix.lower()
    return suffix if suffix in (".png", ".jpg", ".jpeg", ".webp") else ".png"


def _named(files: dict[str, Path], stem: str) -> Path:
    return next(path for name, path in files.items() if Path(name).stem == stem)


# ---------------------------------------------------------------------- layout
def build_demo(
    pipe, store: ResultStore, work_root: str | os.PathLike | None = None, workers: int = 1
) -> gr.Blocks:
    """The Blocks for `pipe` (a pipeline, or a Future of one); results are shared through `store`;
    `workers` reconstructions run at once (give `launch` the same concurrency)."""
    from eyeglass3d.geometry.face_regions import PARSING_LABELS

    app = EyeglassApp(pipe, store, work_root, workers)
    title = "eyeglass3d: 3D face without eyeglasses"
    with gr.Blocks(title=title, delete_cache=(CACHE_CHECK_S, CACHE_MAX_AGE_S)) as demo:
        # Outputs are made first (unrendered) so the examples can sit under the photo, before them on the page.
        model_3d = gr.Model3D(
            label="3D face: drag to turn, scroll to zoom",
            clear_color=VIEWER_CLEAR_COLOR,
            camera_position=VIEWER_CAMERA,
            height=400,
            elem_id="face-3d",
            render=False,
        )
        status = gr.Markdown(
            "Upload a photo or pick an example, then press **Reconstruct**.", elem_id="status", render=False
        )
        landmarks_view = gr.Image(
            label="68 landmarks", type="filepath", format="jpeg", interactive=False, render=False
        )
        parsing_view = gr.AnnotatedImage(
            label="Face parsing and eyeglasses mask",
            color_map=parsing_color_map(PARSING_LABELS),
            format="jpeg",
            render=False,
        )
        before_after = gr.ImageSlider(
            label="Glasses removal: before | after", type="filepath", format="png", interactive=False, render=False
        )
        downloads = gr.File(
            label="Downloads: GLB, OBJ + MTL + PNG (zip), 3DMM coefficients (JSON)",
            file_count="multiple",
            interactive=False,
            render=False,
        )
        link_box = gr.Textbox(
            label="Share link: anyone with it sees this result (photo included)",
            buttons=["copy"],
            interactive=False,
            elem_id="share-link",
            scale=4,
            render=False,
        )
        mask_editor = gr.ImageEditor(
            label="Glasses mask (magenta)",
            type="numpy",
            sources=[],
            brush=gr.Brush(colors=[(MASK_HEX, 0.55)], default_color=(MASK_HEX, 0.55), color_mode="fixed"),
            eraser=gr.Eraser(),
            layers=False,
            transforms=[],
            format="png",
            canvas_size=(EDITOR_SIDE, EDITOR_SIDE),
            fixed_canvas=True,
            height=520,
            elem_id="mask-editor",
            render=False,
        )
        views = [landmarks_view, parsing_view, before_after, model_3d, downloads, status, link_box]

        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                photo = with_readable_upload_errors(
                    gr.Image(
                        label="Photo with one face",
                        sources=["upload", "webcam", "clipboard"],
                        type="filepath",
                        image_mode=None,  # keep the original file: EXIF and colour modes are load_image's job
                        height=400,
                        elem_id="photo",
                    )
                )
                remove_glasses = gr.Checkbox(True, label="Remove eyeglasses before the 3D fit")
                run_button = gr.Button("Reconstruct", variant="primary", elem_id="run")
                gr.Examples(
                    examples=[[str(path), True] for path in EXAMPLE_PHOTOS if path.is_file()],
                    inputs=[photo, remove_glasses],
                    outputs=views + [mask_editor],
                    fn=app.reconstruct,
                    cache_examples=True,
                    cache_mode="lazy",  # cached on first use, so start-up does no reconstruction
                    label="Examples (public domain / CC0, see examples/README.md)",
                    elem_id="examples",
                )
            with gr.Column(scale=1):
                model_3d.render()
                status.render()
        with gr.Row(equal_height=False):
            landmarks_view.render()
            parsing_view.render()
            before_after.render()
        downloads.render()
        with gr.Accordion("Fix the glasses mask by hand", open=False, elem_id="mask-accordion"):
            gr.Markdown(MASK_HELP)
            mask_editor.render()
            rerun_button = gr.Button("Re-run with my mask", variant="primary", elem_id="rerun")
        with gr.Row(equal_height=True):
            share_button = gr.Button("Create a share link", scale=0, min_width=200, elem_id="share")
            link_box.render()
        result_id_box = gr.Textbox(visible=False)

        run_button.click(app.reconstruct, [photo, remove_glasses], views + [mask_editor], api_name="reconstruct")
        rerun_button.click(app.rerun_with_mask, [photo, mask_editor], views, api_name="rerun_with_mask")
        light = {"concurrency_limit": 4, "concurrency_id": "light"}  # quick file work, beside reconstructions
        share_button.click(
            app.share,
            [photo, landmarks_view, parsing_view, before_after, model_3d, downloads, status],
            [link_box],
            api_name="share",
            **light,
        )
        opened = [photo] + views + [mask_editor]
        result_id_box.submit(app.open_result, [result_id_box], opened, api_name="open_result", **light)
        demo.load(app.open_from_link, None, opened, api_visibility="undocumented", **light)
    return demo


def examples_cache_folder(weights) -> Path:
    """Cached examples belong to one set of weights: a new landmark network must not show old results."""
    digest = hashlib.sha256()
    folder = Path(weights)
    component_files = sorted(folder.glob("*/config.json")) + sorted(folder.glob("*/*.safetensors"))
    for path in [folder / "model_index.json", *component_files]:
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return APP_ROOT / ".gradio" / "cached_examples" / digest.hexdigest()[:12]


def launch(
    demo: gr.Blocks,
    store: ResultStore,
    *,
    server_name: str = "127.0.0.1",
    server_port: int = 7860,
    concurrency: int = 1,
    prevent_thread_lock: bool = False,
):
    """Queue and serve `demo`: `concurrency` reconstructions at once, the rest wait in line (up to
    `QUEUE_MAX_SIZE`, then "busy, try again"); uploads over `MAX_UPLOAD` are refused before they reach a
    handler."""
    demo.queue(default_concurrency_limit=concurrency, max_size=QUEUE_MAX_SIZE)
    return demo.launch(
        server_name=server_name,
        server_port=server_port,
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(store.root)],
        state_session_capacity=SESSIONS_KEPT,
        prevent_thread_lock=prevent_thread_lock,
    )


def main() -> None:
    """Serve the page first, then load the pipeline (torch, diffusers, weights), once.

    Requests that arrive while it loads wait for it; if it cannot be loaded the app stops with that
    error rather than serve a page that cannot work.
    """
    from eyeglass3d.paths import default_weights

    limit_malloc_arenas()
    start_memory_trimmer()
    weights = os.environ.get("EYEGLASS3D_WEIGHTS") or default_weights()
    if Path(weights).is_dir():
        os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(examples_cache_folder(weights)))
    concurrency = max(1, int(os.environ.get("EYEGLASS3D_CONCURRENCY", "1")))
    share_dir = os.environ.get("EYEGLASS3D_SHARE_DIR") or APP_ROOT / "share_store"
    store = ResultStore(share_dir, SHARE_MAX_BYTES, SHARE_MAX_AGE_S)
    store.evict()  # what a previous run left expired or damaged goes now, not at the next share
    pipeline: Future = Future()
    demo = build_demo(pipeline, store, workers=concurrency)
    launch(
        demo,
        store,
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        concurrency=concurrency,
        prevent_thread_lock=True,
    )
    print(f"eyeglass3d app ready in {time.perf_counter() - STARTED:.1f} s", flush=True)
    try:
        import torch

        from eyeglass3d import Eyeglass3DPipeline

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // concurrency))  # the workers share the cores
        pipeline.set_result(Eyeglass3DPipeline.from_pretrained(weights))
    except BaseException as error:
        pipeline.set_exception(error)
        demo.close()
        raise
    print(f"eyeglass3d pipeline loaded in {time.perf_counter() - STARTED:.1f} s", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
