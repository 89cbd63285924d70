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
    # kept in the page as Blobs: Download and Variations outlive the server's stored copy
    sources = page.eval_on_selector_all("#results img.result", "imgs => imgs.map(i => i.src)")
    assert all(src.startswith("blob:") for src in sources)
    assert page.locator("#results a.download").first.get_attribute("href").startswith("blob:")
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


def test_a_prompt_cut_to_clips_tokens_is_shown_as_drawn(page):
    page.fill("#prompt", "circle " * 120)  # under 1000 characters, over the CLIP's 77 tokens
    page.fill("#n", "1")
    page.click("#generate")
    wait_for_results(page, 1)
    note = page.inner_text("#results .revised")
    assert note.startswith("prompt shortened to: circle") and note.count("circle") < 120


def _error_json(message: str) -> str:
    return '{"error": {"message": "%s", "type": "server_error", "param": null, "code": null}}' % message


@pytest.mark.parametrize("answer, expected", [
    (dict(status=500, body=_error_json("The server had an error."), headers={"x-request-id": "abc123"}),
     "The server had an error. (request id abc123)"),
    (dict(status=429, body=_error_json("Too many requests; retry after 3 s."), headers={"Retry-After": "3"}),
     "Too many requests; retry after 3 s."),
    (dict(status=401, body=_error_json("No key.")), "No key. Enter the server's API key under Settings."),
    (dict(status=200, body="<html>a proxy page</html>"), "The server's answer was not understood (status 200)."),
    (None, "Could not reach the server"),
], ids=["500 with its request id", "429 said once", "401 points to the key", "not JSON", "network failure"])
def test_failures_are_explained_and_the_button_comes_back(page, answer, expected):
    held = []
    page.route("**/v1/images/generations", lambda route: held.append(route))
    page.fill("#prompt", "a red circle")
    page.fill("#n", "1")
    page.click("#generate")
    page.wait_for_function("document.getElementById('generate').disabled")  # no second job by a double click
    page.wait_for_function("document.querySelectorAll('#results .card.pending').length === 1")
    assert len(held) == 1
    held[0].fulfill(**answer) if answer is not None else held[0].abort()
    page.wait_for_selector("#error.shown", timeout=30_000)
    assert page.inner_text("#error").startswith(expected)
    assert page.locator("#results .card").count() == 0
    assert not page.locator("#generate").is_disabled()
    assert page.locator("details").evaluate("d => d.open") == (answer is not None and answer["status"] == 401)
