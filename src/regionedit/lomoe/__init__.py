"""LoMOE: localized multi-object editing in one multi-diffusion pass (arXiv 2403.00437)."""

from .editor import EditResult, edit
from .options import LoMOEOptions

__all__ = ["EditResult", "LoMOEOptions", "edit"]
