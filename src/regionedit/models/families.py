"""The registry of model families: the one place that knows which families exist.

A family is a :class:`~regionedit.models.interface.Model` subclass that says how it is
recognised (its denoiser's class and the components it needs, the tensor-name prefixes of its
original single files), how diffusers loads it (pipeline class, keywords) and how it runs.
Adding one is a file with its class and a :func:`register` line here (or in the caller's code:
a family registered later is asked first).
"""

from __future__ import annotations

from ..errors import ModelLoadError
from .flow import Flux, StableDiffusion3
from .flux2 import Flux2Klein
from .interface import Model
from .qwenimage import QwenImage
from .sd import StableDiffusion
from .sdxl import StableDiffusionXL
from .zimage import ZImage

FAMILIES: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    """Add a family class under ``cls.family``; it is asked before the ones registered earlier."""
    if not cls.family or cls.family in FAMILIES:
        raise ValueError(f"a family needs a new name, got {cls.family!r}")
    FAMILIES[cls.family] = cls
    return cls


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


for _cls in (StableDiffusion, StableDiffusionXL, Flux, StableDiffusion3, Flux2Klein, QwenImage, ZImage):
    register(_cls)


def _asked() -> list[type[Model]]:
    return list(reversed(FAMILIES.values()))


def supported() -> str:
    """The supported families in words, for messages."""
    names = [cls.display_name for cls in FAMILIES.values()]
    return ", ".join(names[:-1]) + f" and {names[-1]} architecture models"


def get(name: str) -> type[Model]:
    if name not in FAMILIES:
        raise ModelLoadError(f"unknown model family {name!r}; regionedit supports {supported()}")
    return FAMILIES[name]


# What a folder no family takes is, for the refusal: (test on its component classes, words).
UNSUPPORTED = (
    (lambda c: c.get("transformer") is not None, lambda c: f"a transformer model ({c['transformer']})"),
    (lambda c: c.get("text_encoder_2") is not None and c.get("text_encoder") is None,
     lambda c: "an SDXL refiner (one text encoder, aesthetic-score conditioning)"),
)  # fmt: skip


def index_classes(index: dict) -> dict[str, str | None]:
    """Component -> class name of a ``model_index.json`` (None where it lists none), and its pipeline
    class as ``_class_name``."""
    classes = {k: (v[-1] if isinstance(v, list) and v and v[0] is not None else None) for k, v in index.items()
               if not k.startswith("_")}  # fmt: skip
    return {**classes, "_class_name": index.get("_class_name")}


def component_classes(components: dict) -> dict[str, str | None]:
    """Component -> class name of in-memory components."""
    return {k: (None if v is None else type(v).__name__) for k, v in components.items()}


def family_of(classes: dict[str, str | None], where: str, kind: str = "") -> type[Model]:
    """The family whose components ``classes`` are (see :func:`index_classes`)."""
    for cls in _asked():
        if cls.recognises(classes):
            return cls
    for test, words in UNSUPPORTED:
        if test(classes):
            kind = words(classes)
            break
    raise ModelLoadError(
        f"{where} is {kind or 'a pipeline folder'}; regionedit supports {supported()} so far"
    )


def family_of_index(index: dict, where: str) -> type[Model]:
    """The family of a diffusers folder's ``model_index.json``."""
    return family_of(index_classes(index), where, f"a {index.get('_class_name', 'pipeline')} folder")


def family_of_components(components: dict) -> type[Model]:
    """The family of in-memory components (as built in tests, keyed like a diffusers pipeline)."""
    return family_of(component_classes(components), "these components")


def family_of_keys(keys: list[str], where: str) -> type[Model]:
    """The family of an original-format single-file checkpoint, from its tensor names."""
    for cls in _asked():
        for prefix in cls.single_file_prefixes:
            if any(k.startswith(prefix) or k.startswith("model.diffusion_model." + prefix) for k in keys):
                return cls
    raise ModelLoadError(
        f"{where}: not a checkpoint regionedit recognises; regionedit supports {supported()}"
    )
