"""Say what to change: masks from words, from clicks and from boxes.

- **Words** are found with the editing model itself, its attention and its prediction (every
  family, nothing to download; :mod:`.attention`), or, when named, a zero-shot detector's boxes (Grounding DINO, OWLv2) cut out
  by a segmenter (SAM, SAM-HQ) from transformers (:mod:`.segmenters`).
- **Clicks** (positive and negative points, pixel coordinates, origin top-left) give the object
  under them: a segmenter's mask, or without one a region grown from the clicks and fitted to the
  image's edges (:func:`.refine.region_from_points`).
- **A box** is the mask itself, or a segmenter's cut of it.

Every call returns :class:`FoundMask`: a bool mask at the image's size and a score. :func:`grow`
makes room for a new shape (dilate, or the bounding box).

>>> found = from_words(model, "scene/image.png", "the red triangle", caption="a red triangle on gray")
>>> Image.fromarray(grow(found.mask, 2)).save("mask.png")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInputError
from ..prepared import read_image
from .attention import WordMap, attention_map, instances, removal_map
from .refine import grow, region_from_points

MIN_SCORE = (
    1.3  # the words' attention inside / outside a mask below which they count as not found (docs/masks.md)
)
DETECTOR_MIN_SCORE = 0.1  # a detector's (times a segmenter's) score below which a box is not kept


class MaskNotFoundError(InvalidInputError):
    """Nothing in the image scores as what the words name."""


@dataclass
class FoundMask:
    """A mask found in an image.

    Attributes:
        mask: bool ``(H, W)`` at the image's size, True = the object.
        score: how sure the finder is: the attention contrast (words; 1 = none), the detector's
            score times the segmenter's predicted IoU, the segmenter's IoU (clicks, boxes), or 1.
        how: which finder made it ("attention", "click", "box", "sam", "detector", ...).
    """

    mask: np.ndarray
    score: float
    how: str

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        """``(x0, y0, x1, y1)`` of the mask, x1/y1 exclusive; None when empty."""
        ys, xs = np.nonzero(self.mask)
        return None if not len(ys) else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    def image(self) -> Image.Image:
        """The mask as a black-and-white "L" image (white = the object)."""
        return Image.fromarray(self.mask.astype(np.uint8) * 255)


def _rgb(image) -> Image.Image:
    """A path, PIL image or ``uint8`` RGB array as a PIL RGB image."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise InvalidInputError(
                f"an image array must be uint8 (H, W, 3), got {image.dtype} {image.shape}"
            )
        return Image.fromarray(image)
    return read_image(image)


def _pixels(image) -> np.ndarray:
    return np.asarray(_rgb(image))


def check_points(points, size: tuple[int, int], what: str = "point") -> list[tuple[int, int]]:
    """``(x, y)`` pairs inside an image of ``size`` ``(H, W)``, as ints, or a one-line error."""
    out = []
    for p in points:
        try:
            x, y = (float(v) for v in p)
        except (TypeError, ValueError):
            raise InvalidInputError(f"a {what} is two numbers x,y; got {p!r}") from None
        if not (0 <= x < size[1] and 0 <= y < size[0]):
            raise InvalidInputError(
                f"{what} ({x:g}, {y:g}) is outside the {size[1]}x{size[0]} image (x in 0..{size[1] - 1}, "
                f"y in 0..{size[0] - 1}, origin top-left)"
            )
        out.append((int(x), int(y)))
    return out


def check_box(box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` inside an image of ``size`` ``(H, W)`` with x0 < x1 and y0 < y1."""
    try:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    except (TypeError, ValueError):
        raise InvalidInputError(f"a box is four numbers x0,y0,x1,y1; got {box!r}") from None
    if not (0 <= x0 < x1 <= size[1] and 0 <= y0 < y1 <= size[0]):
        raise InvalidInputError(
            f"box ({x0}, {y0}, {x1}, {y1}) is not inside the {size[1]}x{size[0]} image with x0 < x1 and y0 < y1"
        )
    return x0, y0, x1, y1


def word_map(model, image, words: str, caption: str | None = None, generator=None) -> WordMap:
    """Where the model places ``words`` in ``image`` (:class:`~.attention.WordMap`), read with
    ``caption`` when it names them (a caption of the whole image places them better), else with the
    words alone."""
    if not isinstance(words, str) or not words.strip():
        raise InvalidInputError("give the words that name the object (e.g. 'the red triangle')")
    pixels = _rgb(image)
    model.check_image_size(pixels.height, pixels.width)
    prompt = caption if caption and model.word_positions(caption, words) else words
    positions = model.word_positions(prompt, words)
    if not positions:
        raise InvalidInputError(f"the model's tokenizer finds no tokens in {words!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    x, size = model.image_to_tensor(pixels), (pixels.height, pixels.width)
    attention = attention_map(model, x, size, prompt, positions, generator)
    without = " ".join(prompt.replace(words, " ").split())  # the prompt with the words left out
    change = removal_map(model, x, size, prompt, without, generator)
    return WordMap(spread(attention) + spread(change), attention, prompt, positions)


def spread(values: np.ndarray) -> np.ndarray:
    """``values`` scaled to span [0, 1]: the two maps of :func:`word_map` weigh alike."""
    low = values - values.min()
    return low / max(float(low.max()), 1e-12)


def from_words(model, image, words: str, caption: str | None = None, *, detector=None, segmenter=None,
               all_instances: bool = False, min_score: float | None = None, generator=None,
               count: int = 1):  # fmt: skip
    """The object(s) ``words`` name in ``image``.

    Args:
        model: a loaded model (its attention finds the words); may be None with a ``detector``.
        image: path or PIL image.
        words: what to find ("the red triangle").
        caption: the image's caption, if known (an edit's background prompt).
        detector / segmenter: from :func:`.segmenters.load_detector` / ``load_segmenter``; with a
            detector the words are its candidate label and each box is cut out by the segmenter
            (or kept as a box without one).
        all_instances: every instance found, best first, instead of the best one.
        count: how many instances to look for at least (the model's attention searches past the
            map's brightest parts until it has them; a detector returns all its boxes anyway).
        min_score: below it nothing counts as found (default: the finder's own, :data:`MIN_SCORE`
            for attention, the detector's threshold).
        generator: seeds the noise the attention is read under (default seed 0).

    Returns:
        A :class:`FoundMask`, or a list of them with ``all_instances``.

    Raises:
        MaskNotFoundError: nothing scores ``min_score``; the message names the best score.
    """
    if detector is not None:
        from .segmenters import detect_and_segment

        found = detect_and_segment(detector, segmenter, _rgb(image), words)
        how = "the detector"
        min_score = DETECTOR_MIN_SCORE if min_score is None else min_score
    else:
        if model is None:
            raise InvalidInputError("words need the editing model or a detector to find them")
        found_map = word_map(model, image, words, caption, generator)
        found = [FoundMask(m, s, "attention") for m, s in instances(_pixels(image), found_map, count=count)]
        how = "the model's attention"
        min_score = MIN_SCORE if min_score is None else min_score
    best = max((f.score for f in found), default=0.0)
    kept = [f for f in found if f.score >= min_score]
    if not kept:
        raise MaskNotFoundError(
            f"{how} finds nothing that {words!r} names (best score {best:.2f}, needed {min_score:.2f}); "
            "check the words, or give points or a box"
        )
    return kept if all_instances else kept[0]


def from_points(image, points, negative_points=(), *, segmenter=None) -> FoundMask:
    """The object under the clicked ``points`` (``(x, y)`` pixels), not under ``negative_points``."""
    pixels = _pixels(image)
    points = check_points(points, pixels.shape[:2])
    negative = check_points(negative_points, pixels.shape[:2], "negative point")
    if not points:
        raise InvalidInputError("give at least one point on the object")
    if segmenter is not None:
        from .segmenters import segment

        mask, score = segment(segmenter, Image.fromarray(pixels), points=points, negative_points=negative)
        return FoundMask(mask, score, "segmenter")
    mask = region_from_points(pixels, points, negative)
    return FoundMask(mask, 1.0, "click")


def from_box(image, box, *, segmenter=None) -> FoundMask:
    """The box as a mask, or the object a segmenter cuts out of it."""
    pixels = _pixels(image)
    x0, y0, x1, y1 = check_box(box, pixels.shape[:2])
    if segmenter is not None:
        from .segmenters import segment

        mask, score = segment(segmenter, Image.fromarray(pixels), box=(x0, y0, x1, y1))
        return FoundMask(mask, score, "segmenter")
    mask = np.zeros(pixels.shape[:2], bool)
    mask[y0:y1, x0:x1] = True
    return FoundMask(mask, 1.0, "box")


def save_mask(found: FoundMask | np.ndarray, path: str | Path, overwrite: bool = False) -> Path:
    """Write a mask as a black-and-white PNG (atomically)."""
    from ..io import save_image

    mask = found.mask if isinstance(found, FoundMask) else np.asarray(found, bool)
    return save_image(Image.fromarray(mask.astype(np.uint8) * 255), path, overwrite=overwrite)


__all__ = ["FoundMask", "MaskNotFoundError", "check_box", "check_points", "from_box", "from_points", "from_words",
           "grow", "save_mask", "word_map"]  # fmt: skip
