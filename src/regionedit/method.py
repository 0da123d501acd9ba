"""What an editing method is to the front ends: one object per method, found in :mod:`regionedit.methods`.

A front end (command line, spec files, batches, the web page, the bench) never asks which method
it holds. It looks the method up by name and lets the object check a request, prepare it, run it
and say what the written PNG records. A method subclasses :class:`Method` in its own package
(:mod:`regionedit.lomoe.method`, :mod:`regionedit.multimodal.method`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .options import build


class Method:
    """An editing method.

    Attributes:
        name: how requests, spec files and ``--method`` name it; also the key of its recommended
            settings in a model's ``regionedit_settings.json``.
        title: one line saying what it does (``--help`` groups, the web page's choices).
        options_class: its options dataclass.
        request_fields: the optional fields of an :class:`~regionedit.edit_api.EditRequest` it
            takes (e.g. ``controls``); a request that sets another method's is refused.
        masks_required: every prompt needs its mask (else a missing mask is estimated).
        caption_required: the input's caption must be given (else it defaults to "").
        execution_fields: the :class:`~regionedit.execution.ExecutionOptions` it uses.
    """

    name: str = ""
    title: str = ""
    options_class: type = object
    request_fields: frozenset[str] = frozenset()
    masks_required: bool = True
    caption_required: bool = True
    execution_fields: frozenset[str] = frozenset({"chunk_size", "gradient_checkpointing", "reference_maps",
                                                  "max_memory"})  # fmt: skip

    def options(self, values=None, settings: Mapping | None = None):
        """Its options: the defaults, then a model's ``settings`` for it, then ``values``."""
        return build(self.options_class, values, settings, what=self.name)

    def model_settings(self, settings: Mapping | None) -> Mapping | None:
        """This method's part of a model's recommended settings."""
        return (settings or {}).get(self.name)

    def check_request(self, request) -> None:
        """Checks that read no file (counts of masks and prompts); raise a one-line error."""

    def prepare(self, request, options, vae_scale_factor: int, patch_size: int, model_settings):
        """Every file read and every check of ``request``: a :class:`~regionedit.prepared.PreparedEdit`.

        ``model_settings`` is None when the model is not known yet (only the inputs are checked).
        """
        raise NotImplementedError

    def run(self, model, prepared, generator: torch.Generator, progress: bool = True, callback=None,
            inversion=None):  # fmt: skip
        """The edit's result object (with ``image``, ``timings``)."""
        raise NotImplementedError

    def metadata(self, request, prepared) -> dict:
        """What the written PNG records beside the common keys."""
        return {}

    def side_images(self, result, prepared) -> dict:
        """Name suffix -> image written beside the edit when masks are saved."""
        return {}
