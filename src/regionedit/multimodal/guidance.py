"""The conditioned denoiser ε̂ and the optimised sampling pass shared by both stages.

Steps of docs/multimodal.md: 2 (guidance image by random-noise encoding) and 4 (the inner
optimisation, then plain DDIM after t_u); ControlNet residuals stay inside the graph ("Layout conditions").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.interface import Conditioning, Model
from .options import MultimodalOptions


class ControlStack:
    """ControlNets with their inputs, scales and active windows (docs/multimodal.md, "Layout conditions").

    ``inputs`` are what each net reads (``Model.control_input``: the control image for a UNet
    ControlNet, its latents for a transformer's); they are expanded to the batch, so both CFG
    halves see them (guess mode off). The family sums several nets' residuals.
    """

    def __init__(self, nets: list, inputs: list[torch.Tensor], scales: list[float], windows: list[tuple]):
        self.nets = list(nets)
        self.inputs = inputs
        self.scales = scales
        self.windows = windows

    def __len__(self) -> int:
        return len(self.nets)

    def scales_at(self, step: int, num_steps: int) -> list[float]:
        # diffusers' control_guidance_start/end rule: a net is on while its window holds the step
        return [
            s if not (step / num_steps < a or (step + 1) / num_steps > b) else 0.0
            for s, (a, b) in zip(self.scales, self.windows, strict=True)
        ]

    def residuals(
        self, model: Model, sample: torch.Tensor, t, cond: Conditioning, step: int, num_steps: int
    ) -> dict:
        """``model.predict``'s residual keywords for a batch ``sample``; the graph is kept."""
        inputs = [x.expand(sample.shape[0], *x.shape[1:]) for x in self.inputs]
        return model.control_residuals(self.nets, inputs, self.scales_at(step, num_steps), sample, t, cond)


@dataclass
class Counter:
    forward: int = 0  # latent evaluations of the UNet without a graph
    backward: int = 0  # latent evaluations with a graph (each followed by a backward pass)


@dataclass
class Denoiser:
    """ε̂(z, t): CFG over [negative, target] with ControlNet residuals; output in the model's
    prediction type (CFG is linear, so combining v or ε outputs is the same)."""

    model: Model
    cond: Conditioning  # 2 items: the negative prompt, the pass's prompt (target, or source)
    guidance_scale: float
    controls: ControlStack | None
    num_steps: int
    counter: Counter = field(default_factory=Counter)

    def __call__(self, z: torch.Tensor, t, step: int) -> torch.Tensor:
        model, controls = self.model, self.controls
        negative, positive = self.cond[:1], self.cond[1:]
        if z.shape[0] > 1:  # a batch of latents, one instruction
            negative, positive = (
                negative.repeat_interleave(z.shape[0]),
                positive.repeat_interleave(z.shape[0]),
            )

        def residuals(sample, cond):
            if controls is None or not len(controls):
                return {}
            return controls.residuals(model, sample.to(model.dtype), t, cond, step, self.num_steps)

        if self.guidance_scale == 1.0:
            self._count(z, z.shape[0])
            return model.predict(z, t, positive, **residuals(z, positive))
        self._count(z, z.shape[0] * model.guidance_batches)
        return model.guided(z, t, negative, positive, self.guidance_scale, residuals=residuals)

    def _count(self, z: torch.Tensor, evals: int) -> None:
        if torch.is_grad_enabled() and z.requires_grad:
            self.counter.backward += evals
        else:
            self.counter.forward += evals


@dataclass
class Fused:
    """Several regions' denoisers as one: each region's prediction inside its mask (overlaps
    averaged), the first region's elsewhere (cells outside every mask are reset to the input's
    trajectory after each step, so that choice never reaches the output)."""

    parts: list  # Denoiser per region, sharing one Counter
    weights: torch.Tensor  # (R, 1, 1, h, w): m_k / max(Σ m, 1)

    @property
    def counter(self) -> Counter:
        return self.parts[0].counter

    def __call__(self, z: torch.Tensor, t, step: int) -> torch.Tensor:
        outs = [d(z, t, step) for d in self.parts]
        return outs[0] if len(outs) == 1 else join(self.weights, outs)


def region_weights(masks: torch.Tensor) -> torch.Tensor:
    """``(R, h, w)`` bool -> ``(R, 1, 1, h, w)`` float m_k / max(Σ m, 1): overlaps are averaged."""
    m = masks.float()
    return (m / m.sum(0).clamp(min=1))[:, None, None]


def join(weights: torch.Tensor, items: list) -> torch.Tensor:
    """Each region's latent or prediction inside its mask, the first region's elsewhere."""
    rest = 1 - weights.sum(0)
    return sum(w * x for w, x in zip(weights, items, strict=True)) + rest * items[0]


@dataclass
class Targets:
    """What the losses compare with.

    Attributes:
        pres: preservation target ``z0`` (x0 space).
        guid: guidance target ``z0^g`` (None in the guidance pass).
        pres_traj / guid_traj: step index -> noisy target at that step (noisy space).
        weight: ``(1, 1, h, w)`` float, the cells both losses read (the edit mask); None: all.
    """

    pres: torch.Tensor
    guid: torch.Tensor | None = None
    pres_traj: dict | None = None
    guid_traj: dict | None = None
    weight: torch.Tensor | None = None

    def at(self, step: int, space: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(preservation, guidance) targets of ``step`` in ``space``."""
        if space == "noisy":
            return self.pres_traj[step], (self.guid_traj or {}).get(step)
        return self.pres, self.guid


def _masked_mse(diff2: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Σ w·d² / (C·Σ w): the mean over the weighted cells and every channel."""
    if weight is None:
        return diff2.mean()
    denom = weight.sum() * diff2.shape[1]
    if denom == 0:  # nothing to compare (an empty mask): a zero that keeps the graph
        return diff2.sum() * 0.0
    return (diff2 * weight).sum() / denom


def compute_loss(lam: float, cur: torch.Tensor, pres: torch.Tensor, guid, weight):
    """L = λ·L_pres + (1−λ)·L_guid of ``cur`` (ẑ0 or z_t) over ``weight``; returns (L, L_pres, L_guid)."""
    l_pres = _masked_mse((cur - pres) ** 2, weight) if lam > 0 else cur.new_zeros(())
    l_guid = _masked_mse((cur - guid) ** 2, weight) if lam < 1 and guid is not None else cur.new_zeros(())
    return lam * l_pres + (1 - lam) * l_guid, l_pres, l_guid


def noisy_minimiser(z, pres, guid, weight, lam: float) -> torch.Tensor:
    """The exact minimiser of the noisy-space losses: ``λ·pres + (1−λ)·guid`` on the weighted
    cells (both losses are means over the same cells, so the blend is per cell), ``z`` elsewhere.
    Without ``guid`` the minimiser is ``pres`` (for λ > 0)."""
    if guid is None:
        blend = pres if lam > 0 else z
    else:
        blend = lam * pres + (1 - lam) * guid
    return blend if weight is None else torch.where(weight > 0, blend, z)


def _record(info, lam, cur, pres, guid, weight, before=None):
    loss, l_pres, l_guid = compute_loss(lam, cur, pres, guid, weight)
    if before is not None:
        info.update(loss_before=before)
    info.update(loss_after=float(loss), pres=float(l_pres), guid=float(l_guid))


def _adam_steps(denoiser, sched, z, t, i, options, lam, targets) -> tuple[torch.Tensor, float | None]:
    """k Adam steps on z_t (a fresh leaf and optimiser per timestep: no graph survives it)."""
    pres, guid = targets.at(i, options.loss_space)
    z = z.detach().float().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=options.learning_rate)
    before = None
    with torch.enable_grad():
        for _ in range(options.grad_steps):
            opt.zero_grad()
            cur = z if options.loss_space == "noisy" else sched.to_x0(denoiser(z, t, i), z, t)
            loss = compute_loss(lam, cur, pres, guid, targets.weight)[0]
            before = float(loss.detach()) if before is None else before
            if not loss.requires_grad:  # no term depends on z (e.g. λ = 0 without a target)
                break
            loss.backward()
            opt.step()
    return z.detach(), before


def optimised_pass(
    denoiser,
    sched,
    z: torch.Tensor,
    start: int,
    options: MultimodalOptions,
    lam: float,
    targets: Targets,
    outside: tuple[torch.Tensor, torch.Tensor] | None = None,
    anchor: torch.Tensor | None = None,
    progress_bar=None,
    callback=None,
    stage: str = "main",
):
    """Denoise from step ``start`` to t = 0, optimising z_t at steps < t_u (docs/multimodal.md, step 4).

    Args:
        outside: ``(mask (1, 1, h, w), trajectory z_0..z_T)``: after every step the cells outside
            the mask are put back on the trajectory (blended diffusion), so they end where it ends.
        anchor: a trajectory z_0..z_T the steps from t_u − 1 on are tied to with weight λ: each
            adds λ·(z^a_{i+1} − step(z^a_i)), the step's error on the anchor itself, so at λ = 1
            a pass that reaches t_u on the anchor follows it to its end.

    Returns:
        (z0, trajectory {step: z_t actually denoised}, per-step loss records).
    """
    n = len(sched.timesteps)
    traj, records = {}, []
    closed = options.solver == "closed_form"
    optimise = closed or (options.grad_steps > 0 and options.learning_rate > 0)
    for i in range(start, n):
        t = sched.timesteps[i]
        info = {"stage": stage, "step": i, "timestep": int(t)}
        optimised = optimise and i < options.optimize_steps
        if optimised and closed:
            pres, guid = targets.at(i, "noisy")
            before = float(compute_loss(lam, z, pres, guid, targets.weight)[0])
            z = noisy_minimiser(z, pres, guid, targets.weight, lam)
            info.update(loss_before=before)
        elif optimised:
            z, before = _adam_steps(denoiser, sched, z, t, i, options, lam, targets)
            info.update(loss_before=before)
        tied = anchor is not None and lam > 0 and i >= options.optimize_steps - 1
        with torch.no_grad():
            if tied:
                a = anchor[n - i : n - i + 1]
                out, out_a = denoiser(torch.cat([z, a]), t, i).chunk(2)
            else:
                out = denoiser(z, t, i)
            if optimised:
                pres, guid = targets.at(i, options.loss_space)
                cur = z if options.loss_space == "noisy" else sched.to_x0(out, z, t)
                _record(info, lam, cur, pres, guid, targets.weight)
            traj[i] = z
            z = sched.step(out, t, z)
            if tied:
                z = z + lam * (anchor[n - i - 1 : n - i] - sched.step(out_a, t, a))
            if outside is not None:
                mask, path = outside
                z = mask * z + (1 - mask) * path[n - i - 1 : n - i]
        records.append(info)
        if callback is not None:
            callback(i, info)
        if progress_bar is not None:
            progress_bar.update(1)
    return z, traj, records


def start_index(n: int, strength: float) -> int:
    """img2img's first denoising step for a strength [diffusers]: ``N − min(int(N·s), N)``."""
    return n - min(int(n * strength), n)


def guidance_start_latent(sched, z0, strength, generator):
    """Step 2 of docs/multimodal.md, its start: the img2img start index and latent, plus the trajectory before it.

    ``i0 = N − min(int(N·s_g), N)`` [diffusers img2img]; the start is ``add_noise(z0, ε, τ_i0)``
    with seeded ε (the paper's random-noise encoding).
    """
    n = len(sched.timesteps)
    i0 = start_index(n, strength)
    noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(z0.device)
    before = {i: sched.add_noise(z0, noise, sched.timesteps[i : i + 1]) for i in range(min(i0, n - 1) + 1)}
    # int(N·s_g) = 0 leaves nothing to denoise: the guidance image is the input itself.
    return i0, (before[i0] if i0 < n else z0), before
