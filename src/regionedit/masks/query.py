"""A mask asked for in words, clicks or a box, as requests carry it (spec files, batch lines, flags).

In JSON: ``{"words": "the red triangle"}``, ``{"points": [[x, y], ...], "negative_points": [...]}`` or
``{"box": [x0, y0, x1, y1]}``, each with an optional ``"grow"``: pixels, ``"box"`` or ``"box+N"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InvalidInputError

KEYS = ("words", "points", "negative_points", "box", "grow")


@dataclass(frozen=True)
class MaskQuery:
    """What to find; exactly one of ``words``, ``points`` and ``box``.

    Attributes:
        words: what names the object ("the red triangle").
        points / negative_points: ``(x, y)`` clicks on and off the object (pixels, origin top-left).
        box: ``(x0, y0, x1, y1)``.
        grow: pixels to dilate the found mask by, ``"box"`` (its bounding box) or ``"box+N"`` (the
            box dilated by N): room for a new shape. None: the mask as found.
    """

    words: str | None = None
    points: tuple = ()
    negative_points: tuple = ()
    box: tuple | None = None
    grow: int | str | None = None

    def __post_init__(self):
        given = [k for k in ("words", "points", "box") if getattr(self, k)]
        if len(given) != 1:
            raise InvalidInputError(f"a mask query takes one of words, points or box; got {given or 'none'}")
        if self.words is not None and (not isinstance(self.words, str) or not self.words.strip()):
            raise InvalidInputError("words must be a non-empty string")
        if self.negative_points and not self.points:
            raise InvalidInputError("negative points need points on the object too")
        grow_amount(self.grow)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, ())}


def grow_amount(grow) -> tuple[bool, int]:
    """``(to the box, dilate by)`` of a ``grow`` value, or a one-line error."""
    if grow is None:
        return False, 0
    if isinstance(grow, int) and not isinstance(grow, bool) and grow >= 0:
        return False, grow
    if isinstance(grow, str):
        text = grow.strip()
        if text.isdigit():
            return False, int(text)
        if text == "box":
            return True, 0
        if text.startswith("box+") and text[4:].isdigit():
            return True, int(text[4:])
    raise InvalidInputError(f"grow must be pixels >= 0, 'box' or 'box+N'; got {grow!r}")


def apply_grow(mask: np.ndarray, grow) -> np.ndarray:
    from .refine import grow as dilate

    to_box, pixels = grow_amount(grow)
    return dilate(dilate(mask, "box") if to_box else mask, pixels)


def _pairs(value, what: str) -> tuple:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 for p in value
    ):
        raise InvalidInputError(f"{what} must be a list of [x, y] pairs, got {value!r}")
    return tuple((float(x), float(y)) for x, y in value)


def from_json(value, where: str = "a mask") -> MaskQuery:
    """A query from its JSON object (spec files, batch lines)."""
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a mask path or an object with words, points or box")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise InvalidInputError(f"{where}: unknown key(s) {unknown}; a mask query takes {', '.join(KEYS)}")
    try:
        return MaskQuery(
            words=value.get("words"),
            points=_pairs(value.get("points", []), "points"),
            negative_points=_pairs(value.get("negative_points", []), "negative_points"),
            box=tuple(value["box"]) if value.get("box") is not None else None,
            grow=value.get("grow"),
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None


def parse_pair(text: str, what: str) -> tuple[float, float]:
    """``"X,Y"`` -> ``(x, y)``."""
    parts = str(text).split(",")
    try:
        x, y = (float(v) for v in parts)
    except ValueError:
        raise InvalidInputError(f"{what} must look like X,Y (pixels), got {text!r}") from None
    return x, y


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"X0,Y0,X1,Y1"`` -> a tuple."""
    try:
        x0, y0, x1, y1 = (float(v) for v in str(text).split(","))
    except ValueError:
        raise InvalidInputError(f"--box must look like X0,Y0,X1,Y1 (pixels), got {text!r}") from None
    return x0, y0, x1, y1


def find(query: MaskQuery, image, model=None, caption: str | None = None, detector=None, segmenter=None,
         generator=None, min_score: float | None = None):  # fmt: skip
    """The :class:`~regionedit.masks.FoundMask` of ``query`` in ``image``, grown as it asks.

    ``detector`` / ``segmenter``: loaded ones, or hub ids / folders (loaded once per process)."""
    from . import FoundMask, from_box, from_points, from_words

    if isinstance(detector, str) or isinstance(segmenter, str):
        from .segmenters import cached_detector, cached_segmenter

        detector = cached_detector(detector) if isinstance(detector, str) else detector
        segmenter = cached_segmenter(segmenter) if isinstance(segmenter, str) else segmenter
    if query.words is not None:
        found = from_words(model, image, query.words, caption, detector=detector, segmenter=segmenter,
                           generator=generator, min_score=min_score)  # fmt: skip
    elif query.points:
        found = from_points(image, query.points, query.negative_points, segmenter=segmenter)
    else:
        found = from_box(image, query.box, segmenter=segmenter)
    return FoundMask(apply_grow(found.mask, query.grow), found.score, found.how)
