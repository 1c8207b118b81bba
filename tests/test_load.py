"""The served app under load (short CI version of `tools/load_test.py`): several users at once get their
faces or readable messages, never a dropped request, and the server's memory does not climb."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tools"))

import app  # noqa: E402
import load_test  # noqa: E402
from eyeglass3d.sharing import ResultStore  # noqa: E402

CI_CLIENTS, CI_SECONDS, CI_WARMUP = 4, 20, 8
# RSS growth after warm-up over the rest of the run: the app before the memory fixes grew 6.6 % and 8.1 %
# in these 20 s; with them 0.01-0.05 %.
MAX_RSS_GROWTH = 0.04


def served_weights(tiny_pipeline_dir: Path) -> Path:
    """The shipped weights when they are complete (what the Space serves), else the tiny test pipeline."""
    from eyeglass3d.paths import default_weights
    from eyeglass3d.pipeline import check_model_folder

    try:
        check_model_folder(Path(default_weights()))
        return Path(default_weights())
    except FileNotFoundError:
        return tiny_pipeline_dir


def test_four_users_for_twenty_seconds_lose_nothing_and_memory_stays_flat(tiny_pipeline_dir, tmp_path):
    options = load_test.parse_args([
        "--name", "ci", "--clients", str(CI_CLIENTS), "--seconds", str(CI_SECONDS), "--warmup", str(CI_WARMUP),
        "--server-env", f"EYEGLASS3D_WEIGHTS={served_weights(tiny_pipeline_dir)}",
    ])
    report = load_test.run(options)
    outcomes = report["outcomes"]
    print({key: report[key] for key in ("requests", "outcomes", "latency")}, report["server"]["marks"])
    assert report["failed"] == 0, (report["failures_by_kind"], report["failure_examples"])
    assert outcomes.get("served", 0) >= CI_CLIENTS and outcomes.get("refused_as_expected", 0) >= 1
    assert report["server"]["rss_growth_after_warmup"] <= MAX_RSS_GROWTH, report["server"]["marks"]


def test_a_full_queue_tells_the_user_to_try_again(tiny_pipeline, tmp_path, monkeypatch):
    """More requests than the queue holds: the extra ones are told "try again", the rest are served."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    monkeypatch.setattr(app, "QUEUE_MAX_SIZE", 2)
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path / "examples_cache"))
    store = ResultStore(tmp_path / "share")
    demo = app.build_demo(tiny_pipeline, store, work_root=tmp_path / "work")
    port = load_test.free_port()
    app.launch(demo, store, server_port=port, concurrency=1, prevent_thread_lock=True)
    answers, lock = [], threading.Lock()

    def user():
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        try:
            client.predict(handle_file(str(load_test.EXAMPLES / "astronaut.jpg")), True, api_name="/reconstruct")
            answer = "served"
        except QueueError as error:
            answer = str(error)
        with lock:
            answers.append(answer)

    try:
        users = [threading.Thread(target=user) for _ in range(8)]
        for thread in users:
            thread.start()
        for thread in users:
            thread.join(timeout=240)
    finally:
        demo.close()
    busy = [answer for answer in answers if answer != "served"]
    assert len(answers) == 8 and busy and len(busy) < 8, answers
    assert all("try again" in answer.lower() for answer in busy), busy
