"""regionedit: mask-localized multi-object image editing with diffusion models.

Three layers, each importing only the ones before it (tests/test_layers.py checks this):

- the library core: ``models`` (the model-family interface, the family registry
  ``models.families`` and loading), ``inversion``, ``regions``, ``attention``, ``cfg``,
  ``metrics``, the two editors ``lomoe`` and ``multimodal`` (each: options, ``prepare`` = every
  input check, ``editor`` = the method, ``method`` = what the front ends see), the method registry
  ``methods`` (``make_options``: defaults, then the model's settings, then the user's values),
  ``options`` (options that document themselves) and ``edit_api`` (a request from plain data to a
  written PNG);
- ``shapes``: the procedural shapes world, its benchmark items, the mini models' training recipes,
  the judge and their commands (``shapes.cli``, a front end);
- the front ends, thin adapters over the above: ``cli``, ``ui`` (web page), ``batch`` (and
  Ray), ``bench``, ``demo``.

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
from .execution import ExecutionOptions
from .inversion import InversionOptions
from .lomoe import EditResult, LoMOEOptions
from .lomoe import edit as edit
from .lomoe.reference import Inversion, invert
from .methods import make_options
from .models.interface import Model
from .models.loading import describe, load
from .models.memory import MemoryOptions
from .multimodal import MultimodalOptions
from .regions import Region
from .version import __version__

__all__ = [
    "EditResult",
    "ExecutionOptions",
    "ImageSizeError",
    "InvalidInputError",
    "InvalidMaskError",
    "InvalidOptionError",
    "Inversion",
    "InversionOptions",
    "LoMOEOptions",
    "MemoryOptions",
    "Model",
    "MultimodalOptions",
    "ModelLoadError",
    "PromptCountError",
    "Region",
    "__version__",
    "RegionEditError",
    "describe",
    "edit",
    "invert",
    "load",
    "make_options",
]
