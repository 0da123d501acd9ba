"""Optimisation-based multi-modal editing (arXiv 2311.16882): text, pose, scribble, edge and layout."""

from .conditions import Condition, InvalidConditionError, canny_edges, render_pose, scribble_from_image
from .editor import MultimodalResult, edit, invert_image
from .options import MultimodalOptions

__all__ = [
    "Condition",
    "InvalidConditionError",
    "MultimodalOptions",
    "MultimodalResult",
    "canny_edges",
    "edit",
    "invert_image",
    "render_pose",
    "scribble_from_image",
]
