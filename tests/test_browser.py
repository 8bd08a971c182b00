"""The web page in a real browser: headless Chromium on a real `captioner serve` process uploads a
shapes image, waits for the caption, hovers a word and sees the attention overlay change."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from test_serve import random_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _chromium() -> str:
    """The browser to drive: $CAPTIONER_CHROMIUM or Debian's chromium. Missing, the test fails
    in CI (.ci/run installs it) and is skipped with the reason elsewhere."""
    path = os.environ.get("CAPTIONER_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    problem = None
    if not path:
        problem = "no chromium executable (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401  (only whether it is there)
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {problem}")
        pytest.skip(problem)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"captioner serve exited: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"captioner serve did not answer {url}/healthz in {seconds:g} s")


def _pixels(page) -> np.ndarray:
    url = page.evaluate("document.getElementById('photo').toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_the_page_captions_an_upload_and_hovering_a_word_overlays_its_attention(shapes_dir,
                                                                                  tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    checkpoint = random_checkpoint(shapes_dir, tmp_path / "m.safetensors")
    image = sorted((shapes_dir / "images").glob("test_*.png"))[1]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "captioner", "serve", "--model",
                             str(checkpoint), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium,
                                        args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 820})
                page.goto(url + "/")
                page.wait_for_function("document.getElementById('model').textContent"
                                       ".includes('soft attention')")
                page.set_input_files("#file", str(image))
                page.wait_for_selector(".word", timeout=60_000)
                words = page.locator(".word").all_inner_texts()
                api = httpx.post(url + "/v1/captions?beam_size=3&n_best=3&length_penalty=0",
                                 files=[("images", (image.name, image.read_bytes()))],
                                 timeout=60).json()["results"][0]["captions"]
                assert words == api[0]["words"]  # the page shows the API's best caption
                assert page.locator("#nbest-list li").count() == len(api)
                assert page.locator(".tile").count() == len(words)  # one map per word
                before = _pixels(page)
                page.hover(".word >> nth=0")
                after = _pixels(page)
                changed = np.abs(after - before).max(axis=2) > 8
                assert changed.mean() > 0.2, f"the overlay changed {changed.mean():.1%} of pixels"
                assert page.locator(".word.active").count() == 1
                page.wait_for_timeout(300)  # let the word chip finish its transition
                page.screenshot(path=str(tmp_path / "serve_page.png"))
                if os.environ.get("CAPTIONER_SCREENSHOT"):
                    page.screenshot(path=os.environ["CAPTIONER_SCREENSHOT"])
                page.mouse.move(5, 5)  # leaving the word takes the overlay away again
                assert np.abs(_pixels(page) - before).max() <= 2
            finally:
                browser.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)

