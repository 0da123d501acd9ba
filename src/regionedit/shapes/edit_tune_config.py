"""Settings of the mini model's edit-aimed UNet fine-tune (``regionedit tune-mini``), kept apart from
its recipe so that the CLI can list them as flags without importing the training code."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidOptionError


@dataclass(frozen=True)
class EditTuneConfig:
    seed: int = 13
    pairs: int = 1000  # edit pairs, each DDIM-inverted once (8 min on 2 cores)
    max_objects: int = 5
    steps: int = 500  # 23 min at 2.7 s/step on 2 cores
    batch: int = 32  # edit samples per step, and as many ordinary ones
    lr: float = 1e-4  # AdamW, 20 warm-up steps, then constant
    warmup: int = 20
    edit_weight: float = 0.05  # of the edit loss beside the ordinary one
    num_steps: int = 25  # the edit's steps (both mini models' LoMOE settings)
    max_step: int = 15  # edit samples at one of the first max_step of them
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    no_background_caption: float = 0.2
    mix: float = 0.45  # shipped UNet = (1 - mix)·base + mix·tuned (0.45 measured best)
    ckpt_every: int = 50

    def __post_init__(self):
        for name in (
            "pairs",
            "steps",
            "batch",
            "warmup",
            "num_steps",
            "max_step",
            "ckpt_every",
            "max_objects",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidOptionError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_step > self.num_steps:
            raise InvalidOptionError(f"max_step ({self.max_step}) cannot exceed num_steps ({self.num_steps})")
        for name in ("mix", "caption_dropout", "no_background_caption"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidOptionError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0 and self.edit_weight >= 0):
            raise InvalidOptionError("lr must be > 0 and edit_weight >= 0")
