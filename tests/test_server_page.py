"""The web page (GET /) in headless Chromium against a live server on 127.0.0.1.

Uses Debian's Chromium (``apt-get install chromium``) through Playwright's Python package with
``executable_path`` (Playwright's own browser download is not needed). Skipped, with the reason,
only when Chromium or Playwright is missing; .ci/run installs both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the serve extra (unclip[serve])")
sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs playwright (unclip[test])")

from unclip.server import create_app  # noqa: E402
from unclip.server.background import serve_in_thread  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium() -> str | None:
    for candidate in (os.environ.get("UNCLIP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def page_url(tiny_pipeline):
    app = create_app(tiny_pipeline, steps=1, model_name="tiny-page")
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, page_url):
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    outside = []
    page.on("request", lambda r: None if r.url.startswith((page_url, "data:", "blob:")) else outside.append(r.url))
    page.goto(f"{page_url}/")
    yield page
    context.close()
    assert outside == [], f"the page reached outside the server: {outside}"


def result_images(page) -> int:
    return page.locator("#results img.result").count()


def wait_for_results(page, count: int) -> None:
    """Wait until ``count`` result images are shown and have decoded."""
    page.wait_for_function(
        "n => { const imgs = [...document.querySelectorAll('#results img.result')];"
        " return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=count, timeout=60_000)


def test_generate_shows_images(page):
    page.fill("#prompt", "a large red circle in the top left on a white background")
    page.select_option("#size", "256x256")
    page.fill("#n", "2")
    page.click("#generate")
    wait_for_results(page, 2)
    widths = page.eval_on_selector_all("#results img.result", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths == [256, 256]
    assert page.locator("#results .card.pending").count() == 0
    assert page.locator("#results a.download").first.get_attribute("download").endswith(".png")
    assert not page.locator("#error").is_visible()


def test_variations_of_a_result(page):
    page.fill("#prompt", "a small blue square")
    page.fill("#n", "1")
    page.click("#generate")
    wait_for_results(page, 1)
    page.locator("#results button.vary").first.click()
    wait_for_results(page, 2)


def test_upload_for_variations_and_edit_with_the_brush(page, tmp_path):
    array = np.zeros((120, 160, 3), np.uint8)
    array[:, :80] = (200, 60, 40)
    array[:, 80:] = (40, 80, 200)
    path = tmp_path / "upload.png"
    Image.fromarray(array).save(path)
    page.select_option("#size", "256x256")
    page.fill("#n", "2")
    page.set_input_files("#upload", str(path))
    page.wait_for_function("!document.getElementById('vary-upload').disabled")
    page.click("#vary-upload")
    wait_for_results(page, 2)

    box = page.locator("#canvas").bounding_box()  # erase a stroke across the middle
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    alpha = page.evaluate("() => { const c = document.getElementById('canvas');"
                          " return c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data[3]; }")
    assert alpha == 0
    page.fill("#prompt", "a yellow star")
    page.click("#edit-upload")
    wait_for_results(page, 4)
    assert not page.locator("#error").is_visible()


def test_outpaint_an_upload(page, tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.full((48, 48, 3), (30, 160, 90), np.uint8)).save(path)
    page.fill("#n", "1")
    page.set_input_files("#upload", str(path))
    page.wait_for_function("!document.getElementById('outpaint-upload').disabled")
    page.fill("#prompt", "a green square")
    page.fill("#expand", "8")
    page.click("#outpaint-upload")
    wait_for_results(page, 1)
    widths = page.eval_on_selector_all("#results img.result", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths == [64]  # 48 + 2 × 8: the canvas grew
    assert not page.locator("#error").is_visible()


def test_the_servers_refusal_is_shown(page):
    page.fill("#prompt", "")
    page.click("#generate")
    page.wait_for_selector("#error.shown", timeout=30_000)
    assert "prompt" in page.inner_text("#error")
    assert result_images(page) == 0
    assert page.locator("#results .card").count() == 0  # the placeholders are gone
