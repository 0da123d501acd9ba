"""Stateless denoising schedules: what an editor needs of a sampler at one timestep.

Editors call a step several times per timestep (once per chunk of branches, in a gradient pass
and again to re-evaluate), so a schedule keeps no step counter: ``step(output, t, sample)`` is a
pure function of its arguments. A schedule also noises a clean latent to a timestep and converts
the model's prediction to ε or to the clean latent there.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, FlowMatchEulerDiscreteScheduler

from ..errors import InvalidOptionError


@runtime_checkable
class Schedule(Protocol):
    """What a family's ``Model.scheduler(steps, size)`` returns."""

    timesteps: torch.Tensor  # decreasing

    def step(self, output: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """The latent one step after ``t``."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """A clean latent noised to ``t``."""

    def to_epsilon(self, output: torch.Tensor, sample: torch.Tensor, t) -> torch.Tensor:
        """The model's output at ``t`` as a noise estimate."""

    def to_x0(self, output: torch.Tensor, sample: torch.Tensor, t) -> torch.Tensor:
        """The model's output at ``t`` as a clean-latent estimate ẑ0."""


@runtime_checkable
class InverseSchedule(Protocol):
    """What a family's ``Model.inverse_scheduler(steps, size)`` returns."""

    timesteps: torch.Tensor  # increasing

    def step(self, output: torch.Tensor, t, sample: torch.Tensor, regularize=None) -> torch.Tensor:
        """The latent one step above ``t``; ``regularize`` may adjust a noise estimate first."""


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


def ddim_config(config: dict) -> dict:
    """A model's scheduler config for DDIM with the clamps of ẑ0 off, whatever the config says.

    DDIM defaults to ``clip_sample=True``: a config that lacks the key (an Euler or DPM-Solver
    config, as many fine-tunes ship) would clamp the clean-latent estimate to ±1 at every step,
    and the inversion would no longer retrace the image. SD's own configs say ``false``.
    """
    return {**config, "clip_sample": False, "thresholding": False}


class DDIMSchedule:
    """diffusers' DDIM sampler (η = 0) at ``steps`` steps, from a model's scheduler config."""

    def __init__(self, config: dict, steps: int, device=None):
        self.scheduler = DDIMScheduler.from_config(ddim_config(config))
        self.scheduler.set_timesteps(steps, device=device)
        self.timesteps = self.scheduler.timesteps
        self.prediction_type = self.scheduler.config.prediction_type

    def step(self, output: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """The latent one step later (DDIM's update, the same for any number of calls)."""
        return self.scheduler.step(output, t, sample).prev_sample

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, t)

    def alpha_prod(self, t) -> torch.Tensor:
        """ᾱ at ``t``: a number, or ``(B, 1, 1, 1)`` for a batch of timesteps."""
        t = torch.as_tensor(t)
        a = self.scheduler.alphas_cumprod[t.long().cpu()]
        return a if t.ndim == 0 else a.view(-1, 1, 1, 1)

    def to_epsilon(self, output, sample, t):
        return to_epsilon(output, sample, self.alpha_prod(t).to(sample), self.prediction_type)

    def to_x0(self, output, sample, t):
        return to_x0(output, sample, self.alpha_prod(t), self.prediction_type)


class DDIMInverse:
    """DDIM run backwards (η = 0): the inversion's steps, in ε.

    Every output is converted to ε with the ᾱ of the timestep the latent sits at (one stride
    below ``t``); ``regularize`` (pix2pix-zero) may then adjust that ε before the step.
    """

    def __init__(self, config: dict, steps: int, device=None):
        self.scheduler = DDIMInverseScheduler.from_config(
            {**ddim_config(config), "prediction_type": "epsilon"}
        )
        self.scheduler.set_timesteps(steps, device=device)
        self.timesteps = self.scheduler.timesteps
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.stride = self.scheduler.config.num_train_timesteps // steps

    def step(self, output: torch.Tensor, t, sample: torch.Tensor, regularize=None) -> torch.Tensor:
        cur = int(t) - self.stride
        s = self.scheduler
        alpha = s.alphas_cumprod[cur] if cur >= 0 else s.initial_alpha_cumprod
        eps = to_epsilon(output, sample, alpha.to(sample), self.prediction_type)
        if regularize is not None:
            eps = regularize(eps)
        return s.step(eps, t, sample).prev_sample


class FlowSchedule:
    """Rectified flow sampled with Euler steps on diffusers' ``FlowMatchEulerDiscreteScheduler``
    sigmas (the model's shift, and ``mu`` where it shifts by image size).

    A latent at σ is ``(1 − σ)·x0 + σ·noise``; the model predicts the velocity ``noise − x0``.
    Timesteps are ``σ · num_train_timesteps``, as the scheduler gives them.
    """

    prediction_type = "flow"

    def __init__(self, config: dict, steps: int, device=None, sigmas=None, mu=None):
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        self.scheduler.set_timesteps(steps, device=device, sigmas=sigmas, mu=mu)
        self.timesteps = self.scheduler.timesteps
        self.sigmas = self.scheduler.sigmas.to(device=self.timesteps.device, dtype=torch.float32)

    def _index(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.timesteps.device).reshape(-1, 1).to(self.timesteps.dtype)
        return (self.timesteps[None] - t).abs().argmin(dim=1)

    def sigma(self, t) -> torch.Tensor:
        """σ at each timestep of ``t`` (a number or a batch), shaped ``(B, 1, 1, 1)``."""
        return self.sigmas[self._index(t)].view(-1, 1, 1, 1)

    def step(self, output: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        i = self._index(t)
        return sample + (self.sigmas[i + 1] - self.sigmas[i]).view(-1, 1, 1, 1).to(sample) * output

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        s = self.sigma(t).to(x0)
        return (1 - s) * x0 + s * noise

    def to_epsilon(self, output, sample, t):
        return sample + (1 - self.sigma(t).to(sample)) * output

    def to_x0(self, output, sample, t):
        return sample - self.sigma(t).to(sample) * output


class FlowInverse:
    """The flow ODE integrated upwards, from the clean latent to noise, on the sigmas of the
    :class:`FlowSchedule` it mirrors: Euler, with the velocity taken at the lower σ of each step.

    ``regularize`` is accepted for the interface and ignored: pix2pix-zero regularises ε
    predictions, and a flow's noise estimate ``z + (1 − σ)·v`` cannot be turned back into a
    velocity near σ = 1.
    """

    def __init__(self, forward: FlowSchedule):
        self.sigmas = forward.sigmas.flip(0)
        self.timesteps = self.sigmas[:-1] * forward.scheduler.config.num_train_timesteps

    def step(self, output: torch.Tensor, t, sample: torch.Tensor, regularize=None) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.timesteps.device).to(self.timesteps.dtype)
        i = int((self.timesteps - t).abs().argmin())
        return sample + (self.sigmas[i + 1] - self.sigmas[i]).to(sample) * output
