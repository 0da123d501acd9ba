"""The plan before every edit: ``ExecutionOptions(max_memory=...)`` checks the planned peak against a
budget, and picks the gradient chunk size that fits when none is given."""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import torch

from ..errors import InvalidOptionError

log = logging.getLogger(__name__)

UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
         "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}  # fmt: skip


def parse_bytes(text: str | int) -> int:
    """``"24GB"``, ``"24 GiB"``, ``"800MB"`` or a number of bytes -> bytes. GB and GiB both mean 2^30
    bytes, as ``nvidia-smi`` and ``torch.cuda`` count them."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise InvalidOptionError(f"max_memory must look like 24GB, 800MB or a byte count, got {text!r}")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def storage_of(model) -> str | None:
    """The dtype the denoiser's weights are stored in where it is not the model's (layerwise casting)."""
    from .estimate import DTYPE_BYTES

    dtypes = [p.dtype for p in model.denoiser.parameters()]
    stored = str(max(set(dtypes), key=dtypes.count)).removeprefix("torch.")
    return stored if stored in DTYPE_BYTES and getattr(torch, stored) != model.dtype else None


def offload_of(model) -> str:
    """How the model's networks are offloaded (:mod:`regionedit.models.memory`), from where their weights
    wait: a denoiser with weights on the CPU while the model runs elsewhere is group-offloaded."""
    if model.device.type == "cpu":
        return "none"  # nothing to offload to
    if any(p.device.type == "cpu" for p in model.denoiser.parameters()):
        return "group"
    others = [m for m in (model.vae, model.text_encoder) if isinstance(m, torch.nn.Module)]
    return "model" if any(p.device.type == "cpu" for m in others for p in m.parameters()) else "none"


def plan_of_model(model, height: int, width: int, regions: int, options, background: bool = True,
                  chunk_size: int | None = None, max_memory: int | None = None, reference_maps: str = "recompute"):  # fmt: skip
    """The plan of a LoMOE edit with ``options`` (:class:`~regionedit.lomoe.options.LoMOEOptions`) on a
    loaded model as it stands: its dtype, the denoiser's storage dtype and the offloading applied."""
    from .estimate import plan_memory
    from .shape import shape_of_model

    return plan_memory(
        shape_of_model(model), height, width, regions, dtype=DTYPE_NAMES.get(model.dtype, "fp32"),
        storage=storage_of(model), offload=offload_of(model), chunk_size=chunk_size, max_memory=max_memory,
        steps=options.num_inference_steps, reference_maps=reference_maps, bootstrap=options.bootstrap_steps > 0,
        background=background,
    )  # fmt: skip


def fit_budget(model, edit, background: bool = True):
    """The execution options of a prepared LoMOE edit under its ``max_memory`` budget: with no chunk
    size given, the largest that the plan says fits; a warning when the planned peak exceeds the budget
    even so. ``background``: the edit computes its background branch. Returns the (possibly changed)
    :class:`~regionedit.execution.ExecutionOptions`."""
    from .estimate import gib

    execution = edit.execution
    budget = parse_bytes(execution.max_memory)
    height, width = edit.image_size
    plan = plan_of_model(model, height, width, len(edit.regions), edit.options, background, execution.chunk_size,
                         budget, execution.reference_maps)  # fmt: skip
    if not plan.fits:
        log.warning("the planned peak is %s in the %s, over the %s budget: %s", gib(plan.peak), plan.phase,
                    gib(budget), plan.advice)  # fmt: skip
    if execution.chunk_size is None and plan.chunk_size < plan.branches:
        log.info(
            "gradient chunks of %d branches fit %s (planned %s)", plan.chunk_size, gib(budget), gib(plan.peak)
        )
        return replace(execution, chunk_size=plan.chunk_size)
    return execution
