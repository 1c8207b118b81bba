"""Load and soak test of the app: N gradio_client users at once for T seconds, on loopback only.

Starts `python app.py` on a free 127.0.0.1 port (or attaches to one with `--url`, `--pid`), then every
user loops over real photos (`examples/`), junk files and face-less images until the time is up, the
way people use the Space. It reports what was served, every failure by kind, latency percentiles,
queue-full ("busy, try again") answers and the server's memory (RSS) at start, after warm-up and at
the end, and writes it all to `weights_card/eval/load_test_<name>.json`.

    python tools/load_test.py --name c20_5min --clients 20 --seconds 300
    python tools/load_test.py --name soak_c2_30min --clients 2 --seconds 1800 --warmup 120

A real photo must come back as a GLB; junk and face-less inputs must come back as the app's readable
messages; a full queue must come back as Gradio's "try again" message. Anything else is a failure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import PIL.Image
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
EVAL_DIR = REPO_ROOT / "weights_card" / "eval"
LOOPBACK = "127.0.0.1"
MAX_CLIENTS = 64
MAX_SECONDS = 3600
SERVER_START_TIMEOUT_S = 300
# What the app and Gradio say for the inputs that are meant to be refused, and for a full queue.
EXPECTED_REFUSALS = {
    "junk": ("not an image the app can read", "cannot be used"),
    "faceless": ("No face found",),
}
BUSY_MESSAGE = "Queue is full"


# ---------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Sample:
    kind: str  # "real", "junk" or "faceless"
    path: Path


def make_samples(folder: Path) -> list[Sample]:
    """Per user round: four real faces, one junk file, one face-less image (the mix people send)."""
    folder.mkdir(parents=True, exist_ok=True)
    grace = PIL.Image.open(EXAMPLES / "grace_hopper.jpg").convert("RGB")
    astronaut = PIL.Image.open(EXAMPLES / "astronaut.jpg").convert("RGB")
    grace.resize((320, 375)).save(folder / "grace_small.png")
    astronaut.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "astronaut_mirrored.jpg", quality=90)
    (folder / "report.jpg").write_bytes(b"%PDF-1.4 not a photo\n" * 40)
    truncated = (EXAMPLES / "grace_hopper.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(truncated[: len(truncated) // 3])
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
    PIL.Image.fromarray(noise).save(folder / "noise.png")
    real = [EXAMPLES / "grace_hopper.jpg", EXAMPLES / "astronaut.jpg", folder / "grace_small.png",
            folder / "astronaut_mirrored.jpg"]
    return (
        [Sample("real", path) for path in real]
        + [Sample("junk", folder / "report.jpg"), Sample("faceless", EXAMPLES / "coffee.png")]
        + [Sample("real", path) for path in real]
        + [Sample("junk", folder / "truncated.jpg"), Sample("faceless", folder / "noise.png")]
    )


# ---------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def check_loopback(url: str) -> str:
    """Only ever load this machine's own loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != LOOPBACK:
        raise SystemExit(f"--url must be http://{LOOPBACK}:<port>/ (got {url!r})")
    return url if url.endswith("/") else url + "/"


def start_server(workdir: Path, extra_env: dict[str, str], app: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py` (or `app`) on a free loopback port, with every file it writes under `workdir`."""
    port = free_port()
    for name in ("share", "examples_cache", "gradio_tmp", "tmp"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        GRADIO_SERVER_NAME=LOOPBACK,
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        EYEGLASS3D_SHARE_DIR=str(workdir / "share"),
        GRADIO_EXAMPLES_CACHE=str(workdir / "examples_cache"),
        GRADIO_TEMP_DIR=str(workdir / "gradio_tmp"),
        TMPDIR=str(workdir / "tmp"),
        **extra_env,
    )
    log = (workdir / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(app)], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while "pipeline loaded in" not in (workdir / "server.log").read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError("app.py did not start:\n" + (workdir / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    return process, f"http://{LOOPBACK}:{port}/"


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------- measuring
class ServerMonitor(threading.Thread):
    """Samples the server's RSS, threads and open files once a second; marks the run's phases."""

    def __init__(self, pid: int, interval_s: float = 1.0):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, int, int]] = []  # seconds, RSS MB, threads, open fds
        self.marks: dict[str, dict] = {}
        self.started = time.monotonic()
        self.cpu_system: list[float] = []
        self.cpu_server: list[float] = []
        self._halt = threading.Event()

    def sample(self) -> tuple[float, float, int, int]:
        processes = [self.process, *self.process.children(recursive=True)]
        rss = sum(process.memory_info().rss for process in processes) / 2**20
        fds = self.process.num_fds() if hasattr(self.process, "num_fds") else -1
        return round(time.monotonic() - self.started, 1), round(rss, 1), self.process.num_threads(), fds

    def mark(self, name: str) -> None:
        seconds, rss, threads, fds = self.sample()
        self.marks[name] = {"at_s": seconds, "rss_mb": rss, "threads": threads, "open_fds": fds}

    def run(self) -> None:
        psutil.cpu_percent(None)
        self.process.cpu_percent(None)
        while not self._halt.wait(self.interval_s):
            try:
                self.samples.append(self.sample())
                self.cpu_system.append(psutil.cpu_percent(None))
                self.cpu_server.append(self.process.cpu_percent(None) / psutil.cpu_count())
            except psutil.Error:
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Tally:
    """What every request came back as, shared by the user threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    failure_examples: dict[str, str] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    sent: int = 0

    def take_ticket(self, max_requests: int) -> bool:
        with self.lock:
            if self.sent >= max_requests:
                return False
            self.sent += 1
            return True

    def add(self, outcome: str, seconds: float, failure: str | None = None, detail: str = "") -> None:
        with self.lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self.latencies.setdefault(outcome, []).append(seconds)
            if failure is not None:
                self.failures[failure] = self.failures.get(failure, 0) + 1
                self.failure_examples.setdefault(failure, detail[:500])


def failure_kind(error: BaseException) -> str:
    """Group failures by exception type and message, with numbers and ids blanked out."""
    message = re.sub(r"[0-9a-f]{8,}|\d+", "#", str(error).splitlines()[0] if str(error) else "")
    return f"{type(error).__name__}: {message[:120]}"


def judge(sample: Sample, call, fetch) -> tuple[str, str | None, str]:
    """One request → (outcome, failure kind or None, detail). Outcomes: served, refused_as_expected, busy,
    failed."""
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    try:
        result = call()
    except QueueError as error:
        if BUSY_MESSAGE in str(error) and "try again" in str(error):
            return "busy", None, ""
        return "failed", failure_kind(error), repr(error)
    except AppError as error:
        wanted = EXPECTED_REFUSALS.get(sample.kind, ())
        if any(text in str(error) for text in wanted):
            return "refused_as_expected", None, ""
        return "failed", f"{sample.kind} got " + failure_kind(error), repr(error)
    except Exception as error:  # noqa: BLE001 - every other way a request can go wrong is what we count
        return "failed", failure_kind(error), repr(error)
    if sample.kind != "real":
        return "failed", f"{sample.kind} was accepted", sample.path.name
    glb = result[3]
    if fetch(glb["url"])[:4] != b"glTF":
        return "failed", "the GLB did not download", glb["url"]
    return "served", None, ""


def user_loop(index: int, url: str, samples: list[Sample], deadline: float, tally: Tally, options) -> None:
    """One user: its own client (session), one request after another until the time is up."""
    import httpx
    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False, download_files=False)
    except Exception as error:  # noqa: BLE001
        tally.add("failed", 0.0, "client could not connect: " + failure_kind(error), repr(error))
        return

    def fetch(file_url: str) -> bytes:
        return httpx.get(file_url, timeout=options.request_timeout).content

    for sample in itertools.islice(itertools.cycle(samples), index, None):
        if time.monotonic() >= deadline or not tally.take_ticket(options.max_requests):
            return

        def call(sample=sample):
            job = client.submit(handle_file(str(sample.path)), True, api_name="/reconstruct")
            return job.result(timeout=options.request_timeout)

        started = time.monotonic()
        outcome, failure, detail = judge(sample, call, fetch)
        tally.add(outcome, time.monotonic() - started, failure, detail)
        if outcome == "busy":
            time.sleep(options.busy_backoff)  # what a person does: wait a moment, then press again


# ---------------------------------------------------------------------- the run
def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    array = np.asarray(values)
    return {
        "count": int(array.size),
        "p50_s": round(float(np.percentile(array, 50)), 3),
        "p95_s": round(float(np.percentile(array, 95)), 3),
        "max_s": round(float(array.max()), 3),
    }


def rss_trend(samples, after_s: float) -> dict:
    """The least-squares slope of RSS after warm-up: a leak climbs, a settled cache does not."""
    points = np.array([(seconds, rss) for seconds, rss, _, _ in samples if seconds >= after_s])
    if len(points) < 3:
        return {}
    slope = np.polyfit(points[:, 0], points[:, 1], 1)[0]
    return {"slope_mb_per_min": round(float(slope * 60), 2), "max_mb": float(points[:, 1].max())}


def code_version() -> str:
    """Which app the figures belong to: the commit, and whether the tree had changes on top."""
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return described.stdout.strip() or "unknown"


def folder_size_mb(folder: Path) -> float:
    return round(sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20, 2)


def run(options) -> dict:
    """Start (or attach to) the server, load it, and return the report."""
    workdir = Path(tempfile.mkdtemp(prefix="eyeglass3d-load-"))
    process = None
    try:
        if options.url:
            url, pid = check_loopback(options.url), options.pid
        else:
            extra = dict(item.split("=", 1) for item in options.server_env)
            process, url = start_server(workdir, extra, options.app)
            pid = process.pid
        samples = make_samples(workdir / "inputs")
        monitor = ServerMonitor(pid) if pid else None
        report = load(url, samples, monitor, options)
        if process is not None:
            report["server_files_mb"] = {
                name: folder_size_mb(workdir / name) for name in ("gradio_tmp", "tmp", "share", "examples_cache")
            }
            tail = (workdir / "server.log").read_text()[-2000:].splitlines()[-15:]
            # Tracebacks name this machine's folders; the report is committed, so they become relative.
            report["server_log_tail"] = [line.replace(f"{REPO_ROOT}/", "").replace(f"{workdir}/", "<workdir>/")
                                         for line in tail]
        return report
    finally:
        if process is not None:
            stop_server(process)
        shutil.rmtree(workdir, ignore_errors=True)


def load(url: str, samples: list[Sample], monitor: ServerMonitor | None, options) -> dict:
    tally = Tally()
    load_before, code = os.getloadavg(), code_version()
    if monitor:
        monitor.mark("start")
        monitor.start()
    started = time.monotonic()
    deadline = started + options.seconds
    users = [
        threading.Thread(target=user_loop, args=(index, url, samples, deadline, tally, options), daemon=True)
        for index in range(options.clients)
    ]
    for user in users:
        user.start()
    if monitor:
        time.sleep(min(options.warmup, options.seconds))
        monitor.mark("after_warmup")
    for user in users:
        user.join()
    elapsed = time.monotonic() - started
    if monitor:
        time.sleep(2)  # the last responses' buffers are let go
        monitor.mark("end")
        monitor.stop()
    failed = sum(tally.failures.values())
    report = {
        "name": options.name,
        "clients": options.clients,
        "seconds": options.seconds,
        "elapsed_s": round(elapsed, 1),
        "requests": tally.sent,
        "outcomes": tally.outcomes,
        "failed": failed,
        "failures_by_kind": tally.failures,
        "failure_examples": tally.failure_examples,
        "busy_answers": tally.outcomes.get("busy", 0),
        "served_per_min": round(tally.outcomes.get("served", 0) / elapsed * 60, 1),
        "latency": {outcome: percentiles(values) for outcome, values in sorted(tally.latencies.items())},
        "code": code,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": [round(value, 2) for value in load_before],
            "loadavg_after": [round(value, 2) for value in os.getloadavg()],
            "note": options.note,
        },
    }
    if monitor:
        report["server"] = server_report(monitor, options)
    return report


def server_report(monitor: ServerMonitor, options) -> dict:
    warm, end = monitor.marks["after_warmup"]["rss_mb"], monitor.marks["end"]["rss_mb"]
    return {
        "marks": monitor.marks,
        "rss_growth_after_warmup": round((end - warm) / warm, 4),
        "rss_trend_after_warmup": rss_trend(monitor.samples, monitor.marks["after_warmup"]["at_s"]),
        "cpu_percent_mean": {
            "whole_machine": round(float(np.mean(monitor.cpu_system or [0])), 1),
            "server": round(float(np.mean(monitor.cpu_server or [0])), 1),
        },
        "rss_samples_every_10": [list(sample) for sample in monitor.samples[:: max(1, 10 // int(monitor.interval_s))]],
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the report goes to weights_card/eval/load_test_<name>.json")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, help="seconds before the 'after warm-up' RSS (default: a fifth)")
    parser.add_argument("--max-requests", type=int, default=20000, help="stop sending after this many, whatever time")
    parser.add_argument("--request-timeout", type=float, default=300)
    parser.add_argument("--busy-backoff", type=float, default=2.0, help="seconds a busy user waits before the next try")
    parser.add_argument("--url", help=f"attach to a running app at http://{LOOPBACK}:<port>/ instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    parser.add_argument("--app", type=Path, default=REPO_ROOT / "app.py",
                        help="the app file to serve, e.g. an older app.py to compare (default: this one)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the started app.py (repeatable)")
    parser.add_argument("--note", default="", help="what else the machine was doing, for the report")
    parser.add_argument("--out", type=Path, help="report path (default weights_card/eval/load_test_<name>.json)")
    options = parser.parse_args(argv)
    if not 1 <= options.clients <= MAX_CLIENTS or not 0 < options.seconds <= MAX_SECONDS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --seconds 0..{MAX_SECONDS}")
    if not re.fullmatch(r"[\w.-]+", options.name):
        parser.error("--name: letters, digits, '_', '-' and '.' only")
    if options.warmup is None:
        options.warmup = options.seconds / 5
    return options


def main(argv=None) -> int:
    options = parse_args(argv)
    report = run(options)
    out = options.out or EVAL_DIR / f"load_test_{options.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    summary = {key: report.get(key) for key in ("requests", "outcomes", "failures_by_kind", "latency")}
    summary["server"] = {key: report.get("server", {}).get(key) for key in ("marks", "rss_growth_after_warmup",
                                                                             "rss_trend_after_warmup")}
    print(json.dumps(summary, indent=1))
    print(f"report: {out}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
