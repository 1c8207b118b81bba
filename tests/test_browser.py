"""The app in a real browser: headless Chromium opens the page, runs an example and must show a face in
the 3D viewer; a share link opened in the browser brings the result back, a forged one says not found.

Needs Debian's `chromium` and `chromium-driver` (CI installs them) and selenium; skipped without them.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--enable-unsafe-swiftshader",  # WebGL for the 3D viewer on a machine without a GPU
    "--window-size=1400,1800",
]
WAIT_S = 120

selenium = pytest.importorskip("selenium", reason="selenium is not installed")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

sys.path.insert(0, str(REPO_ROOT))
import app  # noqa: E402
from eyeglass3d.sharing import ResultStore  # noqa: E402

VIEWER_BACKGROUND = np.array(app.VIEWER_CLEAR_COLOR[:3]) * 255


@pytest.fixture(scope="module")
def server(tiny_pipeline, tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("browser_app")
    previous_cache, previous_threads = os.environ.get("GRADIO_EXAMPLES_CACHE"), torch.get_num_threads()
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / "examples_cache")
    torch.set_num_threads(1)  # the browser needs the other core
    store = ResultStore(root / "share")
    demo = app.build_demo(tiny_pipeline, store, work_root=root / "work")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(demo, store, server_port=port, prevent_thread_lock=True)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", examples_cache=root / "examples_cache")
    finally:
        demo.close()
        torch.set_num_threads(previous_threads)
        if previous_cache is None:
            os.environ.pop("GRADIO_EXAMPLES_CACHE", None)
        else:
            os.environ["GRADIO_EXAMPLES_CACHE"] = previous_cache


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="eyeglass3d-chromium-")
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _viewer_face_fraction(driver, screenshot_path: Path) -> float:
    """Share of the 3D viewer's pixels that are not its background, from a screenshot of the canvas.

    The top band is left out (the label and buttons float there); the face must also look like a
    photo texture (warm: red over blue), not a grey placeholder.
    """
    canvas = driver.find_element(By.CSS_SELECTOR, "#face-3d canvas")
    canvas.screenshot(str(screenshot_path))
    pixels = np.asarray(PIL.Image.open(screenshot_path).convert("RGB"), np.float32)[40:]
    foreground = np.abs(pixels - VIEWER_BACKGROUND).max(-1) > 30
    if foreground.mean() == 0:
        return 0.0
    warm = pixels[foreground][:, 0].mean() > pixels[foreground][:, 2].mean() + 10
    return float(foreground.mean()) if warm else 0.0


def _wait_for_face(driver, screenshot_path: Path) -> float:
    deadline = time.monotonic() + WAIT_S
    fraction = 0.0
    while time.monotonic() < deadline:
        if driver.find_elements(By.CSS_SELECTOR, "#face-3d canvas"):
            fraction = _viewer_face_fraction(driver, screenshot_path)
            if fraction > 0.05:
                return fraction
        time.sleep(1.0)
    return fraction


def _status(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#status").text


def test_example_shows_a_face_in_the_3d_viewer(server, browser, tmp_path):
    browser.get(server.url)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples img"))
    assert not browser.find_elements(By.CSS_SELECTOR, "#face-3d canvas")  # nothing shown before the example

    browser.find_element(By.CSS_SELECTOR, "#examples img").click()
    fraction = _wait_for_face(browser, tmp_path / "viewer.png")
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert fraction > 0.05, f"the 3D viewer shows no face (see {tmp_path})"
    assert "Face found" in _status(browser)
    assert any(server.examples_cache.rglob("*.csv")), "the example was not cached"


def test_share_link_reopens_in_the_browser_and_a_forged_one_is_not_found(server, browser, tmp_path):
    if not browser.find_elements(By.CSS_SELECTOR, "#face-3d canvas"):
        browser.get(server.url)
        WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples img"))
        browser.find_element(By.CSS_SELECTOR, "#examples img").click()
        assert _wait_for_face(browser, tmp_path / "viewer.png") > 0.05

    browser.find_element(By.CSS_SELECTOR, "#share").click()
    link_field = "#share-link textarea, #share-link input"
    WebDriverWait(browser, WAIT_S).until(
        lambda d: "result=" in (d.find_element(By.CSS_SELECTOR, link_field).get_attribute("value") or "")
    )
    link = browser.find_element(By.CSS_SELECTOR, link_field).get_attribute("value")
    assert link.startswith(server.url + "?result=")

    browser.get(link)  # a fresh page: everything shown comes from the stored result
    assert _wait_for_face(browser, tmp_path / "shared.png") > 0.05
    WebDriverWait(browser, WAIT_S).until(lambda d: "Opened from a share link" in _status(d))

    browser.get(server.url + "?result=" + "A" * 22)
    WebDriverWait(browser, WAIT_S).until(lambda d: "not found" in _status(d).lower())
    assert not browser.find_elements(By.CSS_SELECTOR, "#face-3d canvas")
