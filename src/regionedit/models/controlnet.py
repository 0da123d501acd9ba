"""Loading ControlNets from diffusers folders, once per folder and model."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError
from ..quiet import quiet_libraries


def load_controlnet(path, model, kind: str):
    """The family's diffusers ControlNet (``model.controlnet_class``) from the folder ``path`` on the
    model's device and dtype."""
    import json

    import diffusers

    from .loading import dtype_argument

    path = Path(path)
    if not (path / "config.json").is_file():
        raise InvalidInputError(f"no ControlNet for {kind} at {path}: give a diffusers ControlNet folder")
    wanted = model.controlnet_class
    try:
        found = json.loads((path / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        found = None
    if found != wanted:
        raise InvalidInputError(
            f"the {kind} ControlNet at {path} is a {found}; {model.family} models take a {wanted}"
        )
    try:
        with quiet_libraries():
            net = getattr(diffusers, wanted).from_pretrained(str(path), **dtype_argument(model.dtype))
    except Exception as exc:  # diffusers raises many types; one clear line for the user
        raise InvalidInputError(f"cannot load the {kind} ControlNet from {path}: {exc}") from None
    return net.to(model.device)


_LOADED: dict = {}  # (folder, model, device, dtype) -> net: batches, the page and the bench reuse them


def cached_controlnet(path, model, kind: str):
    """:func:`load_controlnet`, loaded once per folder and model (the last few are kept)."""
    path = Path(path)
    key = (str(path.resolve()), id(model), str(model.device), model.dtype)
    if key not in _LOADED:
        if len(_LOADED) >= 4:  # a few kinds of one model: drop the oldest
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load_controlnet(path, model, kind)
    return _LOADED[key]
