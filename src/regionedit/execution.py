"""How an edit is executed: settings that change memory and time, never the result."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from .errors import InvalidOptionError, require_bools
from .options import build, documented, option

REFERENCE_MAPS = ("recompute", "device", "cpu")


@documented
@dataclass(frozen=True)
class ExecutionOptions:
    """How an edit runs: memory and time, never the result (docs/models.md)."""

    chunk_size: int | None = option(
        None, help="LoMOE: regions per gradient chunk (the gradient stays exact); None = all at once"
    )
    gradient_checkpointing: bool = option(
        False, help="recompute the denoiser's activations in backward passes (both methods)"
    )
    reference_maps: str = option(
        "recompute", choices=REFERENCE_MAPS,
        help="LoMOE's reference cross-attention maps: recomputed each step (nothing held across steps), "
        "or all steps held on the model's device, or on the CPU",
    )  # fmt: skip
    max_memory: str | None = option(
        None, help="LoMOE: a device-memory budget such as 24GB; warn when the planned peak (regionedit plan) "
        "exceeds it and, without a chunk size, take the largest gradient chunk that fits",
    )  # fmt: skip

    def __post_init__(self):
        if self.chunk_size is not None and (
            not isinstance(self.chunk_size, int) or isinstance(self.chunk_size, bool) or self.chunk_size < 1
        ):
            raise InvalidOptionError(
                f"chunk_size must be a positive integer or None, got {self.chunk_size!r}"
            )
        require_bools(self, ("gradient_checkpointing",))
        if self.max_memory is not None:
            from .plan.budget import parse_bytes

            parse_bytes(self.max_memory)
        if self.reference_maps not in REFERENCE_MAPS:
            raise InvalidOptionError(
                f"reference_maps must be one of {REFERENCE_MAPS}, got {self.reference_maps!r}"
            )


def make_execution(values=None) -> ExecutionOptions:
    """:class:`ExecutionOptions` from a mapping (or as given)."""
    return build(ExecutionOptions, values, what="execution")


@contextmanager
def gradient_checkpointing(modules: list, enabled: bool):
    """Enable activation checkpointing on the networks for the duration; restore afterwards."""
    changed = []
    try:
        if enabled:
            for m in modules:
                if getattr(m, "_supports_gradient_checkpointing", False) and not m.is_gradient_checkpointing:
                    m.enable_gradient_checkpointing()
                    changed.append(m)
        yield
    finally:
        for m in changed:
            m.disable_gradient_checkpointing()
