"""regionedit: mask-localized multi-object image editing with diffusion models.

>>> import regionedit
>>> model = regionedit.load("mini")
>>> result = regionedit.edit(model, "image.png", [regionedit.Region("mask_1.png", "a blue square")],
...                          background_prompt="a red circle on a gray background")
>>> result.image.save("edited.png")
"""

from .errors import (
    ImageSizeError,
    InvalidInputError,
    InvalidMaskError,
    InvalidOptionError,
    ModelLoadError,
    PromptCountError,
    RegionEditError,
)
from .inversion import Inversion, InversionOptions, invert
from .lomoe import EditResult, LoMOEOptions
from .lomoe import edit as edit
from .models.loading import Model, load
from .regions import Region

__version__ = "0.1.0"

__all__ = [
    "EditResult",
    "ImageSizeError",
    "InvalidInputError",
    "InvalidMaskError",
    "InvalidOptionError",
    "Inversion",
    "InversionOptions",
    "LoMOEOptions",
    "Model",
    "ModelLoadError",
    "PromptCountError",
    "Region",
    "RegionEditError",
    "edit",
    "invert",
    "load",
]
