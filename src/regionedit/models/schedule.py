"""Stateless denoising schedules: what an editor needs of a sampler at one timestep.

Editors call a step several times per timestep (once per chunk of branches, in a gradient pass
and again to re-evaluate), so a schedule keeps no step counter: ``step(output, t, sample)`` is a
pure function of its arguments. A schedule also noises a clean latent to a timestep and converts
the model's prediction to ε or to the clean latent there.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from ..errors import InvalidOptionError


def to_epsilon(output: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str):
    """A model output as ε; v-prediction converts by ε = √ᾱ·v + √(1−ᾱ)·z."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha_prod**0.5 * output + (1 - alpha_prod) ** 0.5 * sample
    raise InvalidOptionError(
        f"prediction_type {prediction_type!r} is not supported; use epsilon or v_prediction"
    )


def to_x0(output: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str):
    """Clean-latent estimate ẑ0 from a model output at the same timestep (the scheduler's formulas).

    For v-prediction ẑ0 = √ᾱ·z − √(1−ᾱ)·v needs no division by √ᾱ, so it stays finite on a
    zero-terminal-SNR schedule where ᾱ at the first timestep is 0.
    """
    a = alpha_prod.to(sample)
    if prediction_type == "epsilon":
        return (sample - (1 - a) ** 0.5 * output) / a**0.5
    if prediction_type == "v_prediction":
        return a**0.5 * sample - (1 - a) ** 0.5 * output
    if prediction_type == "sample":
        return output
    raise InvalidOptionError(f"unsupported prediction_type {prediction_type!r}")


class DDIMSchedule:
    """diffusers' DDIM sampler (η = 0) at ``steps`` steps, from a model's scheduler config."""

    def __init__(self, config: dict, steps: int, device=None):
        self.scheduler = DDIMScheduler.from_config(config)
        self.scheduler.set_timesteps(steps, device=device)
        self.timesteps = self.scheduler.timesteps
        self.prediction_type = self.scheduler.config.prediction_type

    def step(self, output: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """The latent one step later (DDIM's update, the same for any number of calls)."""
        return self.scheduler.step(output, t, sample).prev_sample

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, t)

    def alpha_prod(self, t) -> torch.Tensor:
        return self.scheduler.alphas_cumprod[int(t)]

    def to_epsilon(self, output, sample, t):
        return to_epsilon(output, sample, self.alpha_prod(t).to(sample), self.prediction_type)

    def to_x0(self, output, sample, t):
        return to_x0(output, sample, self.alpha_prod(t), self.prediction_type)
