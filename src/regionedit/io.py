"""Image reading and atomic writing."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .errors import InvalidInputError, OutputExistsError

# Pillow's decompression-bomb guard, made explicit: larger images are refused, not decoded.
MAX_PIXELS = 64_000_000


def load_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open an image file as RGB.

    Grayscale, palette, 16-bit and RGBA inputs are converted (alpha is dropped, composited on
    black). Unreadable, truncated or huge files raise :class:`InvalidInputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise InvalidInputError(
                    f"{what} {path} is {im.width}x{im.height}, above the limit of {MAX_PIXELS} "
                    "pixels; resize it first"
                )
            im.load()
            return to_rgb(im)
    except InvalidInputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInputError(f"cannot read {what} {path}: {exc}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        base = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(base, im)
    return im.convert("RGB")


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back
    os.umask(mask)
    return mask


def _replace_into(tmp: str, path: Path) -> None:
    """Give the temporary file the mode a new file gets (mkstemp makes it 0600), then rename it."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def save_image(
    image: Image.Image,
    path: str | Path,
    overwrite: bool = False,
    text: dict[str, str] | None = None,
) -> Path:
    """Write a PNG atomically (temp file + rename), optionally with text chunks.

    Nothing is left at ``path`` if writing fails; an existing file is kept unless
    ``overwrite`` is true. The file gets the permissions the umask gives a new file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG", pnginfo=info)
        _replace_into(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path, what: str, error: type[Exception] = InvalidInputError):
    """Parse a JSON file, raising ``error`` with a one-line message when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} file {path} is not valid JSON: {exc}") from None


def write_text_atomic(path: str | Path, content: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(content)
        _replace_into(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
