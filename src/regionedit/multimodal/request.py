"""Multi-modal request data: controls as ``"KIND=VALUE"`` strings and their ControlNet folders.

Controls look as on the command line: ``edge=PATH``, ``edge=auto``, ``pose=KEYPOINTS.json``, each
for every region, or ``2:edge=PATH`` for the second region (numbered from 1 in the order of the
masks). A kind's ControlNet is the request's folder for it, else the one the model's settings name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import InvalidInputError
from .conditions import AUTO, Condition


def split_pairs(items, what: str) -> list[tuple[str, str]]:
    """``["edge=auto", ...]`` -> ``[("edge", "auto"), ...]``, with a clear error for a bad item."""
    out = []
    for item in items or []:
        kind, sep, value = str(item).partition("=")
        if not sep or not kind.strip() or not value.strip():
            raise InvalidInputError(f"{what} must look like KIND=VALUE (e.g. edge=auto), got {item!r}")
        out.append((kind.strip(), value.strip()))
    return out


def resolve_control(value: str, resolve) -> str:
    """A control's VALUE with ``resolve`` applied to its path (``auto`` stays as it is)."""
    return value if value == AUTO else resolve(value)


def parse_control(item, what: str = "a control") -> Condition:
    """``"[REGION:]KIND=VALUE"`` -> :class:`Condition` (REGION counts from 1; none: every region)."""
    kind, value = split_pairs([item], what)[0]
    number, sep, kind = kind.rpartition(":")
    region = None
    if sep:
        if not number.strip().isdigit() or int(number) < 1:
            raise InvalidInputError(
                f"{what} must look like [REGION:]KIND=VALUE with REGION a number from 1 (e.g. 2:edge=auto), "
                f"got {item!r}"
            )
        region = int(number) - 1
    return Condition(kind.strip(), value, region=region)


def check_condition_regions(conditions: list[Condition], regions: int) -> None:
    """Every condition names a region that exists (or none: every region)."""
    for c in conditions:
        if c.region is not None and c.region >= regions:
            raise InvalidInputError(
                f"a {c.kind} control is for region {c.region + 1} but there are {regions} region(s)"
            )


def conditions_from(controls, scales) -> list[Condition]:
    """One :class:`Condition` per ``[REGION:]KIND=VALUE`` string (or Condition); ``scales`` go to the first ones."""
    scales = list(scales or [])
    if len(scales) > len(controls or []):
        raise InvalidInputError(f"got {len(scales)} control scales for {len(controls or [])} controls")
    out = []
    for i, item in enumerate(controls or []):
        cond = item if isinstance(item, Condition) else parse_control(item)
        out.append(replace(cond, scale=scales[i]) if i < len(scales) else cond)
    return out


def control_names(controls) -> list[str]:
    """How controls are recorded in metadata: ``KIND=VALUE``, ``KIND=<image>`` for in-memory maps."""
    names = []
    for item in controls:
        if isinstance(item, str):
            names.append(item)
        else:
            names.append(f"{item.kind}={item.source if isinstance(item.source, (str, Path)) else '<image>'}")
    return names


def controlnet_folders(conditions: list[Condition], given: dict, defaults: dict | None) -> dict:
    """Kind -> ControlNet folder for every condition: ``given``, else the model's ``defaults``.

    Every folder named in ``given`` must serve a condition and hold a diffusers ControlNet.
    ``defaults`` None (the model is not known yet) checks the given folders only.
    """
    kinds = {c.kind for c in conditions}
    for kind in given:
        if kind not in kinds:
            raise InvalidInputError(f"a ControlNet is given for {kind} but there is no {kind} control")
    folders = {}
    for kind in sorted(kinds):
        if kind in given:
            path, hint = Path(given[kind]), "give a diffusers ControlNet folder"
        elif defaults is None:
            continue
        elif kind in defaults:
            path, hint = Path(defaults[kind]), "the model's settings name it; reinstall or pass --controlnet"
        else:
            raise InvalidInputError(
                f"no ControlNet for {kind} controls: this model ships none; pass --controlnet {kind}=DIR"
            )
        if not (path / "config.json").is_file():
            raise InvalidInputError(f"no ControlNet for {kind} at {path}: {hint}")
        folders[kind] = path
    return folders
