"""Loaders for real benchmarks in their published layouts, producing :class:`BenchItem`.

LoMOE-Bench / LoSOE-Bench (``LoMOE.json``): per image id an object with ``image_path``,
``mask_path`` (several paths in one string, each in double quotes, separated by a space),
the target prompts in ``fg_prompt`` (same quoted form) or in a text file (one prompt a
line, ``prompt_path``/``fg_path``), and the source caption in ``bg_prompt`` or a caption
file ``bg_path``. Relative paths are resolved against the JSON file's folder.

PIE-Bench (``mapping_file.json`` beside ``annotation_images/``): per id ``image_path``,
``original_prompt`` and ``editing_prompt`` (edited words in ``[brackets]``, removed here)
and ``mask``, run-length encoded as flat ``[start, length, start, length, ...]`` over the
row-major 512×512 image. One mask per item (the union of the edited parts).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidInputError
from ..shapes.items import BenchItem

PIE_SIZE = 512


def split_quoted(text) -> list[str]:
    """``'"a b.png" "c.png"'`` -> ``["a b.png", "c.png"]``; a list passes through; a bare
    string without quotes is one entry."""
    if isinstance(text, list):
        return [str(t) for t in text]
    text = str(text).strip()
    if '"' not in text:
        return [text] if text else []
    return shlex.split(text)


def _load_rgb(path: Path, size: int | None) -> np.ndarray:
    if not path.is_file():
        raise InvalidInputError(f"benchmark image not found: {path}")
    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im).copy()


def _load_mask(path: Path, size: int | None) -> np.ndarray:
    if not path.is_file():
        raise InvalidInputError(f"benchmark mask not found: {path}")
    with Image.open(path) as im:
        im = im.convert("L")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.NEAREST)  # masks stay binary
        return np.asarray(im) >= 128


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InvalidInputError(f"benchmark text file not found: {path}")
    return path.read_text().strip()


def load_lomoe_bench(json_path, size: int | None = 512, limit: int | None = None) -> list[BenchItem]:
    """Items of a LoMOE-Bench / LoSOE-Bench JSON file (see the module docstring).

    ``size`` resizes images (bicubic) and masks (nearest) to ``size × size``; None keeps them.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise InvalidInputError(f"LoMOE-Bench file not found: {json_path}")
    root = json_path.parent
    data = json.loads(json_path.read_text())
    items = []
    for key in sorted(data, key=lambda k: (len(k), k)):
        e = data[key]
        try:
            masks = [_load_mask(root / p, size) for p in split_quoted(e["mask_path"])]
            if "fg_prompt" in e:
                prompts = split_quoted(e["fg_prompt"])
            else:
                text = _read_text(root / e.get("prompt_path", e.get("fg_path")))
                prompts = [line.strip() for line in text.splitlines() if line.strip()]
            caption = e["bg_prompt"] if "bg_prompt" in e else _read_text(root / e["bg_path"])
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"{json_path}: entry {key!r} lacks a field: {exc}") from None
        if len(prompts) != len(masks):
            raise InvalidInputError(
                f"{json_path}: entry {key!r} has {len(masks)} masks but {len(prompts)} prompts"
            )
        items.append(
            BenchItem(
                id=f"lomoe-{key}",
                image=_load_rgb(root / e["image_path"], size),
                masks=masks,
                prompts=prompts,
                source_caption=caption,
                target_caption=caption,  # the layout has no target caption
            )
        )
        if limit and len(items) >= limit:
            break
    return items


def decode_pie_mask(encoded, shape=(PIE_SIZE, PIE_SIZE)) -> np.ndarray:
    """PIE-Bench run-length mask -> bool ``shape``; runs past the end are clipped."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    if len(encoded) % 2:
        raise InvalidInputError("PIE-Bench mask must hold (start, length) pairs")
    for start, length in zip(encoded[0::2], encoded[1::2], strict=True):
        flat[int(start) : int(start) + int(length)] = True
    return flat.reshape(shape)


def _plain(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.replace("[", "").replace("]", "")).strip()


def load_pie_bench(
    root, size: int | None = 512, limit: int | None = None, categories=None
) -> list[BenchItem]:
    """Items of PIE-Bench from ``root/mapping_file.json`` and ``root/annotation_images``.

    ``categories``: keep only these ``editing_type_id`` values (strings); None keeps all.
    """
    root = Path(root)
    mapping = root / "mapping_file.json"
    if not mapping.is_file():
        raise InvalidInputError(f"PIE-Bench mapping file not found: {mapping}")
    data = json.loads(mapping.read_text())
    items = []
    for key in sorted(data):
        e = data[key]
        if categories is not None and str(e.get("editing_type_id")) not in set(map(str, categories)):
            continue
        try:
            src = _plain(e.get("original_prompt", e.get("source_prompt")))
            tgt = _plain(e.get("editing_prompt", e.get("target_prompt")))
            mask = decode_pie_mask(e["mask"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidInputError(f"{mapping}: entry {key!r} lacks a field: {exc}") from None
        if size is not None and size != PIE_SIZE:
            mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
        if not mask.any():
            continue  # nothing to edit locally (some global edits have empty masks)
        items.append(
            BenchItem(
                id=f"pie-{key}",
                image=_load_rgb(root / "annotation_images" / e["image_path"], size),
                masks=[mask],
                prompts=[tgt],  # the region prompt is the whole target prompt, as PIE-Bench gives
                source_caption=src,
                target_caption=tgt,
            )
        )
        if limit and len(items) >= limit:
            break
    return items
