"""End to end in a real headless Chromium: upload, paint a layer, type a prompt, run, see the result.

`make test` installs Debian's chromium first (`make browser`); without it this test skips.
The screenshot of the finished page is saved to tests/artifacts/ui_browser.png.
"""

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web UI needs the ui extra: pip install 'regionedit[ui]'")
pytest.importorskip("playwright", reason="the browser test needs playwright: pip install 'regionedit[dev]'")

from regionedit.lomoe.options import LoMOEOptions  # noqa: E402
from regionedit.ui.app import build_app, launch  # noqa: E402
from regionedit.ui.browser import (  # noqa: E402
    VIEWPORT,
    chromium_path,
    free_port,
    launch_chromium,
    paint_stroke,
    upload,
    wait_for_result,
)

ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason="no Chromium at /usr/bin/chromium: run `make browser` (needs root and apt) to install it",
)


def _served(model, folder, steps: int):
    """The page on a free local port, its edits ``steps`` steps long."""
    options = LoMOEOptions(num_inference_steps=steps, bootstrap_steps=1, paste_back=True)
    app = build_app(model, model_name="tiny", options=options, output_dir=folder)
    port = free_port()
    launch(app, "127.0.0.1", port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def url(tiny_model, tmp_path_factory):
    yield from _served(tiny_model, tmp_path_factory.mktemp("out"), 2)


@pytest.fixture(scope="module")
def slow_url(tiny_model, tmp_path_factory):
    """The page with enough steps that an edit runs for seconds: its progress can be watched."""
    yield from _served(tiny_model, tmp_path_factory.mktemp("slow"), 40)


def test_upload_paint_prompt_run_in_chromium(url, image64, tmp_path):
    from playwright.sync_api import sync_playwright

    image64.save(tmp_path / "input.png")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            upload(page, tmp_path / "input.png")
            page.fill("#background-prompt textarea", "a red square and a blue square on a gray background")
            page.fill("#prompt-1 textarea", "a yellow circle")
            # Nothing painted yet: the page shows the message, not a traceback.
            page.click("#run")
            page.get_by_text("no layer is painted").first.wait_for(timeout=30_000)
            assert page.get_by_text("Traceback").count() == 0
            paint_stroke(page)
            page.click("#run")
            wait_for_result(page)
            page.screenshot(path=str(ARTIFACTS / "ui_browser.png"), full_page=True)
            status = page.inner_text("#status")
            size = page.evaluate(
                "() => { const i = document.querySelector('#result-image img');"
                " return [i.naturalWidth, i.naturalHeight]; }"
            )
            href = page.get_attribute("#download a", "href")
        finally:
            browser.close()
    assert "layer 1: 'a yellow circle'" in status
    assert size == [64, 64]
    # The downloaded PNG changed where the stroke went (the middle) and nowhere else.
    with urllib.request.urlopen(href if href.startswith("http") else url.rstrip("/") + href) as r:
        (tmp_path / "out.png").write_bytes(r.read())
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(int)
    src = np.asarray(image64).astype(int)
    changed = np.abs(out - src).max(axis=-1) > 0
    assert changed[28:36, 28:36].any()
    assert not changed[:8, :].any() and not changed[-8:, :].any()


PROGRESS_JS = """() => [...document.querySelectorAll('.progress-text, .meta-text, .meta-text-center')]
    .filter(e => e.offsetParent !== null && e.innerText.trim()).map(e => e.innerText.trim())"""


def test_status_follows_the_last_run_and_progress_shows_once(slow_url, image64, tmp_path):
    """An error replaces an earlier success in the status line; during an edit the progress is shown
    in one place and moves before the edit ends."""
    from playwright.sync_api import sync_playwright

    image64.save(tmp_path / "input.png")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(slow_url)
            upload(page, tmp_path / "input.png")
            page.fill("#background-prompt textarea", "a red square and a blue square on a gray background")
            page.fill("#prompt-1 textarea", "a yellow circle")
            paint_stroke(page)
            page.click("#run")
            seen = []
            while not page.inner_text("#status").startswith("Edited"):
                seen.append(page.evaluate(PROGRESS_JS))
                page.wait_for_timeout(100)
            wait_for_result(page)
            page.fill("#background-prompt textarea", "")
            page.click("#run")
            page.wait_for_function(
                "() => document.querySelector('#status').innerText.includes('Not edited')", timeout=30_000
            )
            status = page.inner_text("#status")
        finally:
            browser.close()
    assert status.startswith("Not edited: the background prompt is empty") and "Edited in" not in status
    busy = [texts for texts in seen if texts]
    assert busy and max(len(texts) for texts in busy) <= 2, busy  # one progress block: its text and its timer
    assert any("%" in t or "/" in t for texts in busy for t in texts if not t.startswith("0.0%")), busy


def test_a_click_on_the_example_selects_its_object_then_edit(url):
    """Load the one-object example, click its object in the photo: layer 1 becomes that object (not
    the example's box), the status says so, and the edit runs on it."""
    from playwright.sync_api import sync_playwright

    from regionedit.shapes.world import make_scene

    obj = make_scene(5, 1, size=64).objects[0]
    x, y = (obj.bbox[0] + obj.bbox[2]) / 2, (obj.bbox[1] + obj.bbox[3]) / 2
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            page.fill("#example-seed input", "5")
            page.fill("#example-objects input[type=number]", "1")
            page.click("#example")
            page.wait_for_selector("#pick-image img", timeout=30_000)
            page.wait_for_function("() => document.querySelector('#pick-image img').naturalWidth === 256")
            box = page.evaluate(
                "() => { const r = document.querySelector('#pick-image img').getBoundingClientRect();"
                " return [r.width, r.height]; }"
            )
            # shown at its natural size (4x the 64-px scene), centred in the element
            left, top = (box[0] - 256) / 2, (box[1] - 256) / 2
            page.click("#pick-image img", position={"x": left + (x + 0.5) * 4, "y": top + (y + 0.5) * 4})
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('1 click(s)')",
                                   timeout=30_000)  # fmt: skip
            selected = page.inner_text("#status")
            page.fill("#prompt-1 textarea", "a white circle")
            page.click("#run")
            wait_for_result(page)
            status = page.inner_text("#status")
        finally:
            browser.close()
    assert selected.startswith("Layer 1: 1 click(s) on the object") and "layer 1: 'a white circle'" in status
