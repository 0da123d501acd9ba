"""Loading ControlNets: the mini model's shipped ones, or any diffusers ControlNet folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInputError

# Shipped ControlNets of the mini model, one folder per kind (written by train_controlnet).
MINI_CONTROLNET_DIR = Path(__file__).resolve().parent.parent / "data" / "controlnet-mini"


def mini_controlnet_path(kind: str) -> Path:
    return MINI_CONTROLNET_DIR / kind


def load_controlnet(path, model, kind: str, given: bool = True):
    """A diffusers ``ControlNetModel`` from ``path`` on the model's device and dtype.

    ``given`` says whether the user named the folder (it changes only the error's hint).
    """
    from diffusers import ControlNetModel

    path = Path(path)
    if not (path / "config.json").is_file():
        hint = (
            "give a diffusers ControlNet folder"
            if given
            else "train it with `python -m regionedit.multimodal.train_controlnet`"
        )
        raise InvalidInputError(f"no ControlNet for {kind} at {path}: pass --controlnet {kind}=DIR or {hint}")
    try:
        net = ControlNetModel.from_pretrained(str(path), torch_dtype=model.dtype)
    except Exception as exc:  # diffusers raises many types; one clear line for the user
        raise InvalidInputError(f"cannot load the {kind} ControlNet from {path}: {exc}") from None
    return net.to(model.device)


_LOADED: dict = {}  # (folder, model, device, dtype) -> net: batches, the page and the bench reuse them


def cached_controlnet(path, model, kind: str, given: bool = True):
    """:func:`load_controlnet`, loaded once per folder and model (the last few are kept)."""
    path = Path(path)
    key = (str(path.resolve()), id(model), str(model.device), model.dtype)
    if key not in _LOADED:
        if len(_LOADED) >= 4:  # a few kinds of one model: drop the oldest
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = load_controlnet(path, model, kind, given=given)
    return _LOADED[key]
