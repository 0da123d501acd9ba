"""Options of the multi-modal optimisation editor (arXiv 2311.16882).

Defaults are the method's (paper, or diffusers where the paper is silent); each option of
ours is kept because a measurement shows what it does (docs/multimodal.md, BENCHMARKS.md).
Execution settings that do not change the result live in :class:`~regionedit.execution.ExecutionOptions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import InvalidOptionError, require_bools

LOSS_SPACES = ("x0", "noisy")  # predicted clean latent ẑ0 (paper), or the noisy latent z_t itself
SOLVERS = ("adam", "closed_form")  # k Adam steps per optimised step, or the exact minimiser (noisy)
PRES_MASKS = ("keep", "none")  # L_pres over m̄ (paper), or over the whole image
POST_BLENDS = ("none", "input", "loss")  # after t_u outside m: nothing, z^inv, or the losses' optimum
MAIN_PASS_PROMPTS = ("target", "source")  # the main pass's prompt (the guidance pass uses the target)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_range(options, names, low, high, what) -> None:
    for name in names:
        v = getattr(options, name)
        if not _finite(v) or not low <= v <= high:
            raise InvalidOptionError(f"{name} must be {what}, got {v!r}")


def _check_count(options, names, low) -> None:
    for name in names:
        v = getattr(options, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise InvalidOptionError(f"{name} must be an integer >= {low}, got {v!r}")


@dataclass(frozen=True)
class MaskEstimateOptions:
    """How the edit mask is estimated when none is given (DiffEdit's settings in diffusers)."""

    num_maps: int = 10  # noise draws averaged for the text-difference map
    encode_strength: float = 0.5  # noising strength of those draws
    clamp_ratio: float = 3.0  # clamp a difference map at this multiple of its mean, then rescale
    threshold: float = 0.5  # on the rescaled maps
    dilate: bool = True  # one 3x3 max-pool of the estimate (a user mask is never dilated)

    def __post_init__(self):
        _check_count(self, ("num_maps",), 1)
        _check_range(self, ("encode_strength", "threshold"), 0, 1, "in [0, 1]")
        if not _finite(self.clamp_ratio) or self.clamp_ratio <= 0:
            raise InvalidOptionError(f"clamp_ratio must be a finite number > 0, got {self.clamp_ratio!r}")
        require_bools(self, ("dilate",))


@dataclass(frozen=True)
class MultimodalOptions:
    num_inference_steps: int = 50  # N, DDIM with η = 0; inversion, guidance and main pass share it
    guidance_scale: float = 7.5  # CFG w in both passes (the inversion runs at CFG 1)
    preservation_weight: float = 0.6  # λ of L = λ·L_pres + (1−λ)·L_guid (paper); CLI --lambda
    optimize_steps: int = 25  # t_u: the first steps, where the layout forms, are optimised
    grad_steps: int = 5  # k Adam steps per optimised step (solver "adam")
    learning_rate: float = 1e-2  # Adam's η, a new optimiser per timestep as in Null-text inversion
    loss_space: str = "x0"  # compare ẑ0 (paper) or z_t with the inverted/guidance trajectories
    solver: str = "adam"  # "closed_form": in noisy space L is quadratic in z_t, so each optimised
    # step sets z_t to its exact minimiser, a per-cell blend of z^inv_t and z^g_t
    pres_mask: str = "keep"  # "none" preserves the whole image, so λ also weighs input against
    # the guidance image inside m
    guidance_strength: float | None = None  # s_g; None: 1.0 with a layout condition, 0.8 text-only
    post_blend: str = "none"  # after t_u outside m: "input" resets to z^inv (DiffEdit), "loss" to
    # the noisy-space optimum of the losses (λ weighs z^inv against z^g)
    control_scale: float = 1.0  # a condition's ControlNet scale when it gives none [diffusers]
    main_pass_control_scale: float = 1.0  # multiplies every condition's scale in the main pass
    # (the guidance pass keeps full scale); 0 leaves the conditions to the guidance pass alone
    main_pass_prompt: str = "target"  # "source" denoises the main pass with the source prompt, so
    # the edit reaches the output only through L_guid
    mask_threshold: float = 0.5  # a user mask: area-resized to the latent grid, then this threshold
    mask_estimate: MaskEstimateOptions = field(default_factory=MaskEstimateOptions)

    def __post_init__(self):
        _check_count(self, ("num_inference_steps",), 1)
        if self.num_inference_steps > 1000:
            raise InvalidOptionError(
                f"num_inference_steps must be at most 1000, got {self.num_inference_steps}"
            )
        _check_count(self, ("optimize_steps", "grad_steps"), 0)
        if self.optimize_steps > self.num_inference_steps:
            raise InvalidOptionError(
                f"optimize_steps (t_u = {self.optimize_steps}) cannot exceed num_inference_steps "
                f"({self.num_inference_steps}); use at most {self.num_inference_steps}"
            )
        names = ("guidance_scale", "learning_rate", "control_scale", "main_pass_control_scale")
        _check_range(self, names, 0, math.inf, "a finite number >= 0")
        _check_range(self, ("preservation_weight",), 0, 1, "in [0, 1]")
        if not _finite(self.mask_threshold) or not 0 < self.mask_threshold <= 1:
            raise InvalidOptionError(f"mask_threshold must be in (0, 1], got {self.mask_threshold!r}")
        if self.guidance_strength is not None and (
            not _finite(self.guidance_strength) or not 0 < self.guidance_strength <= 1
        ):
            raise InvalidOptionError(
                f"guidance_strength must be in (0, 1] or None (automatic), got {self.guidance_strength!r}"
            )
        for name, allowed in (
            ("loss_space", LOSS_SPACES),
            ("solver", SOLVERS),
            ("pres_mask", PRES_MASKS),
            ("post_blend", POST_BLENDS),
            ("main_pass_prompt", MAIN_PASS_PROMPTS),
        ):
            if getattr(self, name) not in allowed:
                raise InvalidOptionError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.solver == "closed_form" and self.loss_space != "noisy":
            raise InvalidOptionError(
                'solver="closed_form" needs loss_space="noisy" (only there is the objective quadratic)'
            )
        if not isinstance(self.mask_estimate, MaskEstimateOptions):
            raise InvalidOptionError(
                f"mask_estimate must be MaskEstimateOptions, got {type(self.mask_estimate).__name__}"
            )

    def strength_for(self, has_layout: bool) -> float:
        """s_g: erase the old layout fully when a ControlNet must impose a new one."""
        if self.guidance_strength is not None:
            return float(self.guidance_strength)
        return 1.0 if has_layout else 0.8
