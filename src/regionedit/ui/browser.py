"""Drive the web UI in headless Chromium: the browser test and the README screenshot share this.

Needs ``playwright`` (the dev extra) and a system Chromium (``make browser`` installs Debian's);
Playwright's own browser download is not used.

    python -m regionedit.ui.browser --model mini --out docs/ui.png
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in containers has no user namespaces for the sandbox
    "--disable-gpu",
    "--headless",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}


def chromium_path() -> str | None:
    for path in CHROMIUM_CANDIDATES:
        if Path(path).is_file():
            return path
    return shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_chromium(playwright):
    path = chromium_path()
    if path is None:
        raise RuntimeError(
            "no Chromium found; install it with `make browser` (Debian: apt-get install chromium)"
        )
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


def upload(page, path, timeout_ms: float = 30_000) -> None:
    """Put an image into the editor and wait until it shows; retried once.

    Right after ``goto`` the file input can exist before Gradio's handlers are attached (seen
    on a loaded machine), and then the file is silently dropped.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_selector("#editor input[type=file]", state="attached", timeout=timeout_ms)
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_load_state("networkidle", timeout=timeout_ms / 3)
    for attempt in range(2):
        page.set_input_files("#editor input[type=file]", str(path))
        try:
            wait_for_upload(page, timeout_ms / 2 if attempt == 0 else timeout_ms)
            return
        except PlaywrightTimeout:
            if attempt == 1:
                raise


def wait_for_upload(page, timeout_ms: float = 30_000) -> None:
    """Wait until the editor shows the uploaded image (its "Upload an image" prompt is gone)."""
    page.wait_for_function(
        "() => !(document.querySelector('#editor')?.innerText || 'Upload an image').includes('Upload an image')",
        timeout=timeout_ms,
    )


def paint_stroke(page, dx: float = 40, dy: float = 40, steps: int = 20) -> None:
    """Select the brush and drag a diagonal stroke through the middle of the editor's canvas.

    ``dx``, ``dy`` are screen pixels from the centre; the canvas zooms small images to fit.
    """
    page.click("#editor button[aria-label=Brush]")
    box = page.locator("#editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - dx, cy - dy)
    page.mouse.down()
    for k in range(1, steps + 1):
        page.mouse.move(cx - dx + 2 * dx * k / steps, cy - dy + 2 * dy * k / steps)
    page.mouse.up()


def wait_for_result(page, timeout_ms: float = 120_000) -> None:
    """Wait until the result image is shown and the status line reports the edit."""
    page.wait_for_selector("#result-image img", timeout=timeout_ms)
    page.wait_for_function(
        "() => /Edited in|Reused the inversion/.test(document.querySelector('#status')?.innerText || '')",
        timeout=timeout_ms,
    )


def screenshot(url: str, out: str | Path, example_seed: int = 3, objects: int = 2) -> Path:
    """Load a shapes-world example in the page at ``url``, run the edit and save a screenshot."""
    from playwright.sync_api import sync_playwright

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            page.fill("#example-seed input", str(example_seed))
            page.fill("#example-objects input[type=number]", str(objects))
            page.click("#example")
            page.wait_for_function(
                "() => (document.querySelector('#background-prompt textarea')?.value || '').length > 0"
            )
            # Change what each object is: the example fills prompts with the current objects.
            first = page.input_value("#prompt-1 textarea")
            page.fill("#prompt-1 textarea", _swap_colour(first))
            page.click("#run")
            wait_for_result(page)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return out


def _swap_colour(phrase: str) -> str:
    from ..shapes.world import COLOURS

    words = phrase.split()
    colours = list(COLOURS)
    for i, w in enumerate(words):
        if w in colours:
            words[i] = colours[(colours.index(w) + 2) % len(colours)]
    return " ".join(words)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot the web UI after one example edit.")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--out", default="docs/ui.png")
    parser.add_argument("--name", default=None, help="model name shown in the page (default: --model)")
    parser.add_argument("--seed", type=int, default=3, help="shapes-world example seed")
    parser.add_argument("--steps", type=int, default=None, help="edit steps (default: the model's)")
    args = parser.parse_args(argv)

    from .. import edit_api
    from .app import build_app, launch

    model = edit_api.load(args.model)
    options = {"paste_back": True, **({"num_inference_steps": args.steps} if args.steps else {})}
    app = build_app(model, model_name=args.name or args.model, options=options)
    port = free_port()
    launch(app, "127.0.0.1", port, block=False, quiet=True)
    try:
        print(screenshot(f"http://127.0.0.1:{port}/", args.out, example_seed=args.seed))
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
