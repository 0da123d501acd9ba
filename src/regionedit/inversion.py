"""Inversion of an image's latent to noise, the first step of both editors.

DDIM run backwards on UNet families (with the pix2pix-zero regulariser of each predicted noise),
the flow ODE integrated upwards on flow transformers: the model's ``inverse_scheduler`` says
which. LoMOE's reusable :class:`~regionedit.lomoe.reference.Inversion` builds on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import InvalidOptionError
from .models.interface import Model
from .options import documented, option
from .progress import Report
from .progress import steps as progress_steps

log = logging.getLogger(__name__)


@documented
@dataclass(frozen=True)
class InversionOptions:
    """Settings of the DDIM (or flow) inversion of an input image."""

    num_inference_steps: int = option(50, flag="steps", help="steps T; the edit must use the same T")
    regularize: bool = option(
        True, origin="official code: pix2pix-zero",
        help="push each predicted noise towards white noise (UNet families; flow inversions ignore it)",
    )  # fmt: skip
    lambda_ac: float = option(
        20.0, origin="pix2pix-zero", help="auto-correlation step size (split over the rolls)"
    )
    lambda_kl: float = option(20.0, origin="pix2pix-zero", help="KL step size")
    num_reg_steps: int = option(5, origin="pix2pix-zero", help="regularisation rounds per inversion step")
    num_ac_rolls: int = option(5, origin="pix2pix-zero", help="random rolls per auto-correlation round")
    sample_posterior: bool = option(
        False, origin="ours", help="encode with a seeded VAE posterior sample instead of its mean"
    )

    def __post_init__(self):
        if not isinstance(self.num_inference_steps, int) or not 1 <= self.num_inference_steps <= 1000:
            raise InvalidOptionError(
                f"num_inference_steps must be an integer in 1..1000, got {self.num_inference_steps!r}"
            )
        for name in ("lambda_ac", "lambda_kl"):
            v = getattr(self, name)
            if not (v == v and 0 <= v < float("inf")):
                raise InvalidOptionError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.num_reg_steps < 0 or self.num_ac_rolls < 1:
            raise InvalidOptionError("num_reg_steps must be >= 0 and num_ac_rolls >= 1")


# --- pix2pix-zero noise regularisation (docs/lomoe.md, step 1) --------------------------------


def _auto_corr_loss(eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Squared means of products with random rolls, per channel, over a 2x2-pooled pyramid.

    Summed over the batch of per-item losses (the rolls shared), so items do not mix."""
    loss = eps.new_zeros(())
    for ch in range(eps.shape[1]):
        x = eps[:, ch : ch + 1]
        while True:
            for dim in (2, 3):
                n = max(1, x.shape[dim] // 2)
                shift = int(torch.randint(0, n, (1,), generator=generator))
                loss = loss + ((x * torch.roll(x, shifts=shift, dims=dim)).mean(dim=(1, 2, 3)) ** 2).sum()
            if min(x.shape[2], x.shape[3]) <= 8:
                break
            x = torch.nn.functional.avg_pool2d(x, 2)
    return loss


def _kl_loss(eps: torch.Tensor) -> torch.Tensor:
    var, mean = eps.var(dim=(1, 2, 3)), eps.mean(dim=(1, 2, 3))
    return (var + mean**2 - 1 - torch.log(var)).sum()


def regularize_noise(eps: torch.Tensor, opts: InversionOptions, generator: torch.Generator) -> torch.Tensor:
    """Push a predicted ε towards white Gaussian noise (pix2pix-zero)."""
    with torch.enable_grad():
        for _ in range(opts.num_reg_steps):
            if opts.lambda_ac > 0:
                for _ in range(opts.num_ac_rolls):
                    x = eps.detach().requires_grad_(True)
                    (grad,) = torch.autograd.grad(_auto_corr_loss(x, generator), x)
                    eps = eps - opts.lambda_ac / opts.num_ac_rolls * grad
            if opts.lambda_kl > 0:
                x = eps.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(_kl_loss(x), x)
                eps = eps - opts.lambda_kl * grad
    return eps.detach()


@torch.no_grad()
def ddim_invert(
    model: Model,
    z0: torch.Tensor,
    prompt: str,
    opts: InversionOptions,
    generator: torch.Generator,
    progress: bool | Report = True,
) -> torch.Tensor:
    """The trajectory ``(T + 1, C, h, w)`` from ``z0`` up to ``z_T``, caption, no CFG."""
    return invert_batch(model, z0, [prompt], opts, lambda step: generator, progress)[:, 0]


@torch.no_grad()
def invert_batch(
    model: Model,
    z0: torch.Tensor,
    prompts: list[str],
    opts: InversionOptions,
    generator_at: Callable[[int], torch.Generator],
    progress: bool | Report = True,
) -> torch.Tensor:
    """:func:`ddim_invert` of a batch ``(B, C, h, w)``, one caption each: ``(T + 1, B, C, h, w)``.

    ``generator_at(step)`` gives the regulariser's generator at each step (one shared
    generator for an edit; the mini model's edit-tune reseeds it per step)."""
    inverse = model.inverse_scheduler(opts.num_inference_steps, z0.shape[-2:])
    cond = model.encode_prompt(prompts)
    z = z0
    traj = [z0]
    for step, t in enumerate(progress_steps(inverse.timesteps, progress, "invert")):
        out = model.predict(z, t, cond)
        reg = (
            (lambda eps, step=step: regularize_noise(eps, opts, generator_at(step)))
            if opts.regularize
            else None
        )
        z = inverse.step(out, t, z, reg)
        traj.append(z)
    return torch.stack(traj)
