"""A mask asked for in words, clicks or a box, as requests carry it (spec files, batch lines, flags).

In JSON: ``{"words": "the red triangle"}``, ``{"points": [[x, y], ...], "negative_points": [...]}`` or
``{"box": [x0, y0, x1, y1]}``, each with an optional ``"grow"``: pixels, ``"box"`` or ``"box+N"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

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

    detector, segmenter = _loaded(detector, segmenter)
    if query.words is not None:
        found = from_words(model, image, query.words, caption, detector=detector, segmenter=segmenter,
                           generator=generator, min_score=min_score)  # fmt: skip
    elif query.points:
        found = from_points(image, query.points, query.negative_points, segmenter=segmenter)
    else:
        found = from_box(image, query.box, segmenter=segmenter)
    return FoundMask(apply_grow(found.mask, query.grow), found.score, found.how)


def _loaded(detector, segmenter):
    """Hub ids or folders loaded (once per process); loaded ones as they are."""
    if isinstance(detector, str) or isinstance(segmenter, str):
        from .segmenters import cached_detector, cached_segmenter

        detector = cached_detector(detector) if isinstance(detector, str) else detector
        segmenter = cached_segmenter(segmenter) if isinstance(segmenter, str) else segmenter
    return detector, segmenter


def same_words(words: str) -> str:
    """``words`` as compared between regions: case and spacing ignored."""
    return " ".join(words.lower().split())


def find_all(queries, image, model=None, caption: str | None = None, detector=None, segmenter=None,
             seed: int = 0, min_score: float | None = None) -> list:  # fmt: skip
    """:func:`find` for every query of one edit. Queries that name the same words take distinct
    objects, left to right (by the centre of each mask), in the order the queries come: two
    regions "a red circle" are the leftmost red circle and the next one. Each finding draws its
    noise from a generator seeded with ``seed``.

    Raises:
        MaskNotFoundError: words named by more regions than they find objects for.
    """
    from . import FoundMask, MaskNotFoundError, from_words

    detector, segmenter = _loaded(detector, segmenter)

    def generator():
        return torch.Generator().manual_seed(seed)

    groups: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        if q.words is not None:
            groups.setdefault(same_words(q.words), []).append(i)
    out = [None] * len(queries)
    for members in groups.values():
        if len(members) < 2:
            continue
        words = queries[members[0]].words
        found = from_words(model, image, words, caption, detector=detector, segmenter=segmenter,
                           all_instances=True, min_score=min_score, generator=generator(),
                           count=len(members))  # fmt: skip
        if len(found) < len(members):
            raise MaskNotFoundError(
                f"{len(members)} regions name {words!r} but only {len(found)} object(s) score as it; "
                "give points or a box for the others"
            )
        chosen = sorted(found[: len(members)], key=lambda f: mask_centre(f.mask))
        for i, f in zip(members, chosen, strict=True):
            out[i] = FoundMask(apply_grow(f.mask, queries[i].grow), f.score, f.how)
    for i, q in enumerate(queries):
        if out[i] is None:
            out[i] = find(q, image, model, caption, detector, segmenter, generator(), min_score)
    return out


def mask_centre(mask: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of a mask's centre of mass; ``(0, 0)`` when empty."""
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else (0.0, 0.0)
