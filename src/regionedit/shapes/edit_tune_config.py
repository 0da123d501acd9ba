"""Settings of the mini model's edit-aimed UNet fine-tune (``regionedit tune-mini``), kept apart from
its recipe so that the CLI can list them as flags without importing the training code."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidOptionError
from ..options import documented, option


@documented
@dataclass(frozen=True)
class EditTuneConfig:
    """The edit-aimed fine-tune of a mini model's denoiser; defaults are the shipped run's."""

    seed: int = option(13, help="seed of the edit pairs and of training")
    pairs: int = option(1000, help="edit pairs, each inverted once (about 8 min on 2 cores)")
    max_objects: int = option(5, help="objects per training scene: 1 to this")
    steps: int = option(500, help="optimiser steps (about 23 min at 2.7 s a step on 2 cores)")
    batch: int = option(32, help="edit samples per step, and as many ordinary samples")
    lr: float = option(1e-4, help="AdamW learning rate, constant after the warm-up")
    warmup: int = option(20, help="warm-up steps of the learning rate")
    edit_weight: float = option(0.05, help="weight of the edit loss beside the ordinary one")
    num_steps: int = option(25, help="the edit's denoising steps (the mini models' LoMOE settings)")
    max_step: int = option(15, help="edit samples are drawn at one of the first max_step steps")
    min_snr_gamma: float = option(5.0, help="min-SNR weighting γ of the ordinary loss")
    caption_dropout: float = option(0.1, help="share of ordinary samples trained with an empty caption")
    no_background_caption: float = option(0.2, help="share of captions that leave the background out")
    mix: float = option(
        0.45,
        help="the written denoiser is (1 - mix)·base + mix·tuned (0.45 measured best for the UNet model)",
    )
    ckpt_every: int = option(50, help="steps between resumable checkpoints")

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
