"""What the web UI does, without the web: painted layers -> regions -> edit -> PNG.

Kept free of gradio so it can be tested directly; ``app.py`` only converts component values.
The edit itself goes through :mod:`regionedit.edit_api`, exactly as the CLI's does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import edit_api, methods
from ..errors import ImageSizeError, InvalidInputError, InvalidMaskError, PromptCountError
from ..lomoe.options import LoMOEOptions
from ..lomoe.reference import Inversion
from ..multimodal.conditions import Condition

log = logging.getLogger(__name__)

MAX_OBJECTS = 6  # prompt rows in the page; each painted layer takes the row of its index
DEFAULT_MAX_PIXELS = 1024 * 1024
# Overlay colours of the masks, also the brush colour of each layer (same order).
LAYER_COLOURS = ["#ff3b30", "#0a84ff", "#ffd60a", "#30d158", "#bf5af2", "#ff9f0a"]


def painted_mask(layer: np.ndarray) -> np.ndarray:
    """A layer image ``(H, W, 4)`` RGBA (or ``(H, W, 3)``/``(H, W)``) -> bool ``(H, W)``, True where painted.

    The editor's layers are transparent except for the strokes, so alpha is the mask; a layer
    without alpha counts any non-black pixel as paint.
    """
    arr = np.asarray(layer)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        return arr[..., 3] > 0
    if arr.ndim == 3:
        return arr.max(axis=-1) > 0
    return arr > 0


def collect_regions(
    layers: list[np.ndarray | None],
    prompts: list[str],
    negative_prompts: list[str],
    size: tuple[int, int],
) -> tuple[list[np.ndarray], list[str], list[str], list[int]]:
    """Pair each painted layer with the prompt row of the same number.

    Args:
        layers: the editor's layers in order (None or an empty layer = not painted).
        prompts, negative_prompts: one per row (``MAX_OBJECTS`` long; empty strings allowed).
        size: ``(H, W)`` of the image; every painted layer must have it.

    Returns:
        masks (bool ``(H, W)``), prompts, negative prompts and the 1-based layer numbers used.
    """
    masks, used_prompts, used_negs, numbers = [], [], [], []
    for i, layer in enumerate(layers, start=1):
        mask = None if layer is None else painted_mask(layer)
        if mask is None or not mask.any():
            continue
        if i > len(prompts):
            raise PromptCountError(
                f"layer {i} is painted but the page has prompts for {len(prompts)} layers only; "
                f"use at most {len(prompts)} layers"
            )
        if mask.shape != tuple(size):
            raise InvalidMaskError(
                f"layer {i} is {mask.shape[1]}x{mask.shape[0]} but the image is {size[1]}x{size[0]}; "
                "paint on the uploaded image without resizing it"
            )
        prompt = (prompts[i - 1] or "").strip()
        if not prompt:
            raise PromptCountError(f"layer {i} is painted but its prompt is empty; say what it should become")
        masks.append(mask)
        used_prompts.append(prompt)
        used_negs.append((negative_prompts[i - 1] or "").strip() if i <= len(negative_prompts) else "")
        numbers.append(i)
    if not masks:
        raise InvalidMaskError(
            "no layer is painted; paint the region of each object to edit on its own layer"
        )
    orphans = [
        i
        for i, p in enumerate(prompts, start=1)
        if (p or "").strip() and i not in numbers and i <= MAX_OBJECTS
    ]
    if orphans:
        raise InvalidMaskError(
            f"prompt {orphans[0]} is filled in but layer {orphans[0]} has no paint; "
            "paint that layer or clear its prompt"
        )
    return masks, used_prompts, used_negs, numbers


def mask_overlay(image: Image.Image, masks: list[np.ndarray], alpha: float = 0.55) -> Image.Image:
    """The input with each mask tinted in its layer's colour (what the user painted, as used)."""
    out = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for i, m in enumerate(masks):
        colour = np.array([int(LAYER_COLOURS[i % len(LAYER_COLOURS)][k : k + 2], 16) for k in (1, 3, 5)])
        out[m] = (1 - alpha) * out[m] + alpha * colour
    return Image.fromarray(out.round().astype(np.uint8))


def image_digest(image: Image.Image) -> str:
    arr = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()


class InversionCache:
    """The last few inversions, keyed by everything an inversion depends on.

    Guidance and temperature are not in the key: ``edit`` recomputes the reference pass when
    they change, and the updated inversion replaces the cached one.
    """

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict[tuple, tuple[Inversion, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(image: Image.Image, caption: str, options: LoMOEOptions) -> tuple:
        return (image_digest(image), caption, options.num_inference_steps, options.regularize_inversion)

    def get(self, key: tuple) -> tuple[Inversion, float] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, inversion: Inversion, invert_seconds: float) -> None:
        with self._lock:
            self._items[key] = (inversion, invert_seconds)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


@dataclass
class UIResult:
    image: Image.Image
    overlay: Image.Image
    png_path: Path
    message: str
    reused_inversion: bool
    timings: dict


class Engine:
    """Holds the model, the inversion cache and the output folder of one running app."""

    def __init__(
        self,
        model,
        model_name: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        output_dir: str | Path | None = None,
        cache_size: int = 4,
    ):
        self.model = model
        self.model_name = model_name or getattr(model, "name", "model")
        self.max_pixels = max_pixels
        self.cache = InversionCache(cache_size)
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="regionedit-ui-"))
        self._count = 0
        self._lock = threading.Lock()

    def options(self, method: str, values=None, base=None):
        """The method's options: ``values`` (the page's) over ``base`` (options), else over the
        model's settings. An options object as ``values`` is used as it is."""
        start = dataclasses.asdict(base) if base is not None else self.model.settings.get(method)
        return methods.get(method).options(values, start)

    def check_image(self, image: Image.Image | None) -> Image.Image:
        if image is None:
            raise InvalidInputError("no image: upload one or pick a shapes-world example")
        w, h = image.size
        if w * h > self.max_pixels:
            raise ImageSizeError(
                f"image is {w}x{h} ({w * h} pixels), above this app's limit of {self.max_pixels} pixels; "
                "crop or downscale it first (or start the server with a larger --max-pixels)"
            )
        f = self.model.size_factor
        if w % f or h % f:
            raise ImageSizeError(
                f"image is {w}x{h}; this model needs sides that are multiples of {f} — "
                f"crop it to {w - w % f}x{h - h % f} with the editor's crop tool or resize it first"
            )
        return image.convert("RGB")

    def find(
        self, image: Image.Image | None, words: str = "", points=(), negative_points=(), caption: str = ""
    ):
        """A layer's mask from ``words`` (the model's attention, read with ``caption``) or from
        clicks: a :class:`~regionedit.masks.FoundMask` at the image's size."""
        from .. import masks

        image = self.check_image(image)
        if (words or "").strip():
            return masks.from_words(self.model, image, words.strip(), (caption or "").strip() or None)
        if not points:
            raise InvalidInputError("type the words that name the object, or click on it in the photo")
        return masks.from_points(image, points, negative_points)

    def edit(
        self,
        image: Image.Image | None,
        layers: list,
        prompts: list[str],
        negative_prompts: list[str],
        background_prompt: str,
        method: str = "lomoe",
        seed: int = 0,
        options: dict | LoMOEOptions | None = None,
        callback=None,
        progress: bool = False,
    ) -> UIResult:
        """Validate the page's values, edit (reusing a cached inversion) and write the PNG.

        ``options``: the page's option values (over the model's settings), or an options object.
        ``progress``: the edit's progress bars (the page follows them).
        """
        image = self.check_image(image)
        background_prompt = (background_prompt or "").strip()
        if not background_prompt:
            raise PromptCountError("the background prompt is empty; describe the input image (its caption)")
        masks, used, negs, numbers = collect_regions(
            layers, prompts, negative_prompts, (image.height, image.width)
        )
        options = self.options(method, options)
        # An empty negative prompt means "the default", as on the CLI when none is given.
        neg_list = negs if any(negs) else []
        if neg_list:
            neg_list = [n or options.region_negative_prompt for n in negs]
        request = edit_api.EditRequest(
            image=image,
            masks=masks,
            prompts=used,
            negative_prompts=neg_list,
            background_prompt=background_prompt,
            method=method,
            seed=int(seed),
            options=options,
            model=self.model_name,
        )
        prepared = request.prepare(self.model)
        key = self.cache.key(image, background_prompt, options)
        cached = self.cache.get(key)
        inversion, first_invert_seconds = cached if cached else (None, 0.0)
        result = edit_api.run(self.model, prepared, progress=progress, callback=callback, inversion=inversion)
        if inversion is None:
            self.cache.put(key, result.inversion, result.timings["invert_seconds"])
        else:
            self.cache.put(key, result.inversion, first_invert_seconds)
        path = self._save(result, request, prepared)
        t = result.timings
        layer_text = ", ".join(f"layer {n}: {p!r}" for n, p in zip(numbers, used, strict=True))
        if inversion is not None:
            message = (
                f"Reused the inversion of this image: edited in {t['seconds']:.1f} s, "
                f"{first_invert_seconds:.1f} s of inversion saved. ({layer_text})"
            )
        else:
            message = (
                f"Edited in {t['seconds']:.1f} s (inversion {t['invert_seconds']:.1f} s, "
                f"edit {t['edit_seconds']:.1f} s); editing this image again reuses its inversion. "
                f"({layer_text})"
            )
        return UIResult(
            image=result.image,
            overlay=mask_overlay(image, masks),
            png_path=path,
            message=message,
            reused_inversion=inversion is not None,
            timings={**t, "first_invert_seconds": first_invert_seconds},
        )

    def edit_multimodal(
        self,
        image: Image.Image | None,
        layers: list,
        prompts: list[str],
        source_prompt: str,
        control=None,
        control_kind: str = "edge",
        seed: int = 0,
        options: dict | None = None,
        callback=None,
        progress: bool = False,
    ) -> UIResult:
        """The multi-modal method: each painted layer with the prompt of its number, as LoMOE (no
        layer painted: prompt 1 alone, its mask estimated); the background prompt is the source
        caption; ``control`` an optional layout map for every region."""
        image = self.check_image(image)
        painted = [
            i for i, layer in enumerate(layers, start=1) if layer is not None and painted_mask(layer).any()
        ]
        if painted:
            masks, targets, _, _ = collect_regions(layers, prompts, [], (image.height, image.width))
        else:
            extra = [i for i, p in enumerate(prompts, start=1) if i > 1 and (p or "").strip()]
            if extra:
                raise PromptCountError(
                    f"prompt {extra[0]} is filled in but no layer is painted: without masks the multi-modal "
                    f"method edits prompt 1 alone (its mask estimated); paint a layer per prompt, or clear "
                    f"prompt {extra[0]}"
                )
            target = (prompts[0] if prompts else "").strip()
            if not target:
                raise PromptCountError(
                    "prompt 1 is empty; say what the image should become (the target prompt)"
                )
            masks, targets = [], [target]
        controls = [] if control is None else [Condition(control_kind, np.asarray(control))]
        request = edit_api.EditRequest(
            image=image,
            masks=masks,
            prompts=targets,
            background_prompt=(source_prompt or "").strip(),
            method="multimodal",
            seed=int(seed),
            options=options,
            model=self.model_name,
            controls=controls,
        )
        prepared = request.prepare(self.model)
        result = edit_api.run(self.model, prepared, progress=progress, callback=callback)
        path = self._save(result, request, prepared)
        t = result.timings
        how = f"your {len(masks)} mask(s)" if painted else "an estimated mask"
        message = (
            f"Edited in {t['seconds']:.1f} s (guidance pass {t.get('guidance_seconds', 0.0):.1f} s, "
            f"main pass {t['main_seconds']:.1f} s) with {how}"
            + (f" and the {control_kind} map" if controls else "")
            + f" at λ = {prepared.options.preservation_weight:g}."
        )
        shown = [np.asarray(m, bool) for m in masks] or [np.asarray(result.mask_image) > 127]
        return UIResult(result.image, mask_overlay(image, shown), path, message, False, dict(t))

    def _save(self, result, request, prepared) -> Path:
        with self._lock:
            self._count += 1
            name = f"regionedit-{self._count:04d}-{time.strftime('%H%M%S')}.png"
        return edit_api.save_result(
            result, request, prepared, self.output_dir / name, model_name=self.model_name
        )


def page_values(fields: dict, types: dict) -> dict:
    """The page's field values as option values: unset ones dropped, whole floats made ints
    where the option is an integer (gradio sends every number as a float)."""
    out = {}
    for name, value in fields.items():
        if value is None:
            continue
        if types.get(name) is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[name] = value
    return out
