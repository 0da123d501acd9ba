"""The conditioned denoiser ε̂ and the optimised sampling pass shared by both stages.

Spec references: §1.3 (guidance image by random-noise encoding), §1.5 (the inner
optimisation), §1.6 (plain DDIM after t_u), §3 (ControlNet residuals inside the graph).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.controlnets import MultiControlNetModel

from ..models.loading import Model
from .options import MultimodalOptions


def x0_from_output(
    output: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str
):
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
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


class ControlStack:
    """ControlNets with their control images, scales and active windows (§3).

    One net runs directly; several run through diffusers' ``MultiControlNetModel``, which
    sums their down- and mid-block residuals. The control images are duplicated for the
    CFG batch so both halves see them (guess mode off).
    """

    def __init__(self, nets: list, images: list[torch.Tensor], scales: list[float], windows: list[tuple]):
        self.nets = list(nets)
        self.images = images
        self.scales = scales
        self.windows = windows
        self.multi = MultiControlNetModel(self.nets) if len(self.nets) > 1 else None

    def __len__(self) -> int:
        return len(self.nets)

    def scales_at(self, step: int, num_steps: int) -> list[float]:
        # diffusers' control_guidance_start/end rule: a net is on while its window holds the step
        return [
            s if not (step / num_steps < a or (step + 1) / num_steps > b) else 0.0
            for s, (a, b) in zip(self.scales, self.windows, strict=True)
        ]

    def residuals(self, sample: torch.Tensor, t, emb: torch.Tensor, step: int, num_steps: int):
        """(down residuals, mid residual) for a batch ``sample``; the graph is kept."""
        batch = sample.shape[0]
        images = [im.expand(batch, -1, -1, -1) for im in self.images]
        scales = self.scales_at(step, num_steps)
        if self.multi is None:
            out = self.nets[0](
                sample, t, encoder_hidden_states=emb, controlnet_cond=images[0],
                conditioning_scale=scales[0], return_dict=False,
            )  # fmt: skip
        else:
            out = self.multi(
                sample, t, encoder_hidden_states=emb, controlnet_cond=images,
                conditioning_scale=scales, return_dict=False,
            )  # fmt: skip
        return out[0], out[1]


@dataclass
class Counter:
    forward: int = 0  # latent evaluations of the UNet without a graph
    backward: int = 0  # latent evaluations with a graph (each followed by a backward pass)


@dataclass
class Denoiser:
    """ε̂(z, t): CFG over [negative, target] with ControlNet residuals; output in the model's
    prediction type (CFG is linear, so combining v or ε outputs is the same)."""

    model: Model
    emb: torch.Tensor  # (2, tokens, width): negative prompt, the pass's prompt (target, or source)
    guidance_scale: float
    controls: ControlStack | None
    num_steps: int
    counter: Counter = field(default_factory=Counter)

    def __call__(self, z: torch.Tensor, t, step: int) -> torch.Tensor:
        model = self.model
        if self.guidance_scale == 1.0:
            sample, emb = z.to(model.dtype), self.emb[1:]
        else:
            sample, emb = torch.cat([z, z]).to(model.dtype), self.emb
        kwargs = {}
        if self.controls is not None and len(self.controls):
            down, mid = self.controls.residuals(sample, t, emb, step, self.num_steps)
            kwargs = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        out = model.unet(sample, t, encoder_hidden_states=emb, **kwargs).sample.float()
        if torch.is_grad_enabled() and z.requires_grad:
            self.counter.backward += sample.shape[0]
        else:
            self.counter.forward += sample.shape[0]
        if self.guidance_scale == 1.0:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)


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


@dataclass
class Targets:
    """What the losses compare with; which fields are used depends on the loss space.

    Attributes:
        pres: preservation target: ``z0`` (x0 space), the input image in [0, 1] (pixel space).
        guid: guidance target of the same kind (None in the guidance pass).
        pres_traj / guid_traj: step index -> noisy target at that step (noisy space).
        keep: ``(1, 1, h, w)`` float m̄ (1 = preserve); None = preserve everywhere.
        edit: ``(1, 1, h, w)`` float m, used by ``guid_mask="edit"``.
    """

    pres: torch.Tensor
    guid: torch.Tensor | None = None
    pres_traj: dict | None = None
    guid_traj: dict | None = None
    keep: torch.Tensor | None = None
    edit: torch.Tensor | None = None


def _masked_mse(diff2: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Σ w·d² / (C·Σ w): the mean over the weighted cells and every channel (§1.5 L_pres)."""
    if weight is None:
        return diff2.mean()
    if weight.shape[-2:] != diff2.shape[-2:]:
        weight = F.interpolate(weight, size=diff2.shape[-2:], mode="nearest")
    denom = weight.sum() * diff2.shape[1]
    if denom == 0:  # nothing to preserve (m = 1): a zero that keeps the graph
        return diff2.sum() * 0.0
    return (diff2 * weight).sum() / denom


def decode_with_grad(model: Model, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [0, 1], keeping the graph (the pixel loss space)."""
    shift = getattr(model.vae.config, "shift_factor", None) or 0.0
    x = model.vae.decode((latents / model.vae.config.scaling_factor + shift).to(model.dtype)).sample
    return ((x.float() + 1) / 2).clamp(0, 1)


def compute_loss(model, options, lam, targets: Targets, z, out, alpha_prod, prediction_type, step):
    """L = λ·L_pres + (1−λ)·L_guid in the chosen space; returns (L, L_pres, L_guid)."""
    if options.loss_space == "noisy":
        cur, pres, guid = z, targets.pres_traj[step], (targets.guid_traj or {}).get(step)
    else:
        cur = x0_from_output(out, z, alpha_prod, prediction_type)
        if options.loss_space == "pixel":
            cur = decode_with_grad(model, cur)
        pres, guid = targets.pres, targets.guid
    l_pres = _masked_mse((cur - pres) ** 2, targets.keep) if lam > 0 else cur.new_zeros(())
    l_guid = cur.new_zeros(())
    if lam < 1 and guid is not None:
        d2 = (cur - guid) ** 2
        if options.guid_mask == "edit" and targets.edit is not None:
            w = targets.edit
            if w.shape[-2:] != d2.shape[-2:]:
                w = F.interpolate(w, size=d2.shape[-2:], mode="nearest")
            d2 = d2 * w  # still divided by the whole image: m only removes terms
        l_guid = d2.mean()
    return lam * l_pres + (1 - lam) * l_guid, l_pres, l_guid


def optimised_pass(
    denoiser: Denoiser,
    sched,
    z: torch.Tensor,
    start: int,
    options: MultimodalOptions,
    lam: float,
    targets: Targets,
    blend: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress_bar=None,
    callback=None,
    stage: str = "main",
):
    """Denoise from step ``start`` to t = 0, optimising z_t at steps < t_u (§1.5, §1.6).

    Args:
        blend: ``(edit mask (1, 1, h, w), inversion trajectory)`` for ``post_blend``.

    Returns:
        (z0, trajectory {step: z_t actually denoised}, per-step loss records).
    """
    model = denoiser.model
    n = len(sched.timesteps)
    pred_type = sched.config.prediction_type
    traj, records = {}, []
    optimise = options.grad_steps > 0 and options.learning_rate > 0
    for i in range(start, n):
        t = sched.timesteps[i]
        alpha = sched.alphas_cumprod[int(t)]
        info = {"stage": stage, "step": i, "timestep": int(t)}
        if optimise and i < options.optimize_steps:
            # A fresh leaf and optimiser per timestep: nothing of the graph survives the step.
            z = z.detach().float().requires_grad_(True)
            opt_cls = torch.optim.Adam if options.optimizer == "adam" else torch.optim.SGD
            opt = opt_cls([z], lr=options.learning_rate)
            before = None
            with torch.enable_grad():
                for _ in range(options.grad_steps):
                    opt.zero_grad()
                    out = None if options.loss_space == "noisy" else denoiser(z, t, i)
                    loss, l_pres, l_guid = compute_loss(
                        model, options, lam, targets, z, out, alpha, pred_type, i
                    )
                    before = float(loss.detach()) if before is None else before
                    if not loss.requires_grad:  # no term depends on z (e.g. λ = 0 without a target)
                        break
                    loss.backward()
                    opt.step()
            z = z.detach()
            info.update(loss_before=before)
        with torch.no_grad():
            out = denoiser(z, t, i)
            if "loss_before" in info:
                loss, l_pres, l_guid = compute_loss(model, options, lam, targets, z, out, alpha, pred_type, i)
                info.update(loss_after=float(loss), pres=float(l_pres), guid=float(l_guid))
            traj[i] = z
            z = sched.step(out, t, z).prev_sample
            if blend is not None and i >= options.optimize_steps:
                edit_mask, inv = blend
                z = edit_mask * z + (1 - edit_mask) * inv[n - i - 1 : n - i]
        records.append(info)
        if callback is not None:
            callback(i, info)
        if progress_bar is not None:
            progress_bar.update(1)
    return z, traj, records


def start_index(n: int, strength: float) -> int:
    """img2img's first denoising step for a strength [diffusers]: ``N − min(int(N·s), N)``."""
    return n - min(int(n * strength), n)


def guidance_start_latent(sched, z0, inv_traj, strength, start_kind, generator):
    """§1.3 step 1: the img2img start index and latent, plus the trajectory before it.

    ``i0 = N − min(int(N·s_g), N)`` [diffusers img2img]; the start is ``add_noise(z0, ε, τ_i0)``
    with seeded ε (paper: random noise), or the inverted latent at τ_i0 (option).
    """
    n = len(sched.timesteps)
    i0 = start_index(n, strength)
    noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(z0.device)
    steps = range(min(i0, n - 1) + 1)
    if start_kind == "inversion":
        before = {i: inv_traj[n - i : n - i + 1] for i in steps}
    else:
        before = {i: sched.add_noise(z0, noise, sched.timesteps[i : i + 1]) for i in steps}
    # int(N·s_g) = 0 leaves nothing to denoise: the guidance image is the input itself.
    return i0, (before[i0] if i0 < n else z0), before


def blend_trajectory(inversion, guid_traj, z0_g, keep, options) -> torch.Tensor:
    """What ``post_blend`` puts outside m, indexed like the inversion (z_0..z_T).

    "input": the inversion itself. "loss": the optimum of λ·L_pres + (1−λ)·L_guid in noisy
    space (spec T8), ``(α·z^inv_t + β·z^g_t) / (α + β)`` with α = λ/(C·Σm̄) and β = (1−λ)/(C·h·w)
    (β = 0 with ``guid_mask="edit"``, where L_guid does not reach m̄). λ = 1 gives the input,
    λ = 0 the guidance trajectory; only cells outside m are read.
    """
    lam = options.preservation_weight
    if options.post_blend_target == "input" or lam >= 1:
        return inversion
    h, w = inversion.shape[-2:]
    kept = float(keep.sum()) if keep is not None else float(h * w)
    alpha = lam / kept if kept > 0 else 0.0
    beta = 0.0 if options.guid_mask == "edit" else (1 - lam) / (h * w)
    if alpha + beta == 0:  # no loss reaches m̄: keep the input there, as "input" does
        return inversion
    n = inversion.shape[0] - 1
    guid = torch.cat([z0_g] + [guid_traj[n - k] for k in range(1, n + 1)]).to(inversion)
    a = alpha / (alpha + beta)
    return a * inversion + (1 - a) * guid
