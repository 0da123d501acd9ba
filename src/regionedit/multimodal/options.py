"""Options of the multi-modal optimisation editor (arXiv 2311.16882).

Defaults are the method's (paper, or diffusers where the paper is silent); each option of
ours is kept because a measurement shows what it does (docs/multimodal.md, BENCHMARKS.md).
Execution settings that do not change the result live in :class:`~regionedit.execution.ExecutionOptions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidOptionError, require_bools
from ..options import documented, option

LOSS_SPACES = ("x0", "noisy")  # predicted clean latent ẑ0 (paper), or the noisy latent z_t itself
SOLVERS = ("adam", "closed_form")  # k Adam steps per optimised step, or the exact minimiser (noisy)
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


@documented
@dataclass(frozen=True)
class MaskEstimateOptions:
    """How the edit mask is estimated when none is given (DiffEdit's settings in diffusers)."""

    num_maps: int = option(10, origin="diffusers", help="noise draws averaged for the text-difference map")
    encode_strength: float = option(
        0.5, origin="diffusers", help="noising strength of those draws, in [0, 1]"
    )
    clamp_ratio: float = option(
        3.0, origin="diffusers", help="clamp a difference map at this multiple of its mean, then rescale"
    )
    threshold: float = option(0.5, origin="diffusers", help="threshold of the rescaled map, in [0, 1]")
    dilate: bool = option(
        True, origin="ours", help="one 3x3 max-pool of the estimate (a user mask is never dilated)"
    )

    def __post_init__(self):
        _check_count(self, ("num_maps",), 1)
        _check_range(self, ("encode_strength", "threshold"), 0, 1, "in [0, 1]")
        if not _finite(self.clamp_ratio) or self.clamp_ratio <= 0:
            raise InvalidOptionError(f"clamp_ratio must be a finite number > 0, got {self.clamp_ratio!r}")
        require_bools(self, ("dilate",))


@documented
@dataclass(frozen=True)
class MultimodalOptions:
    """Settings of a multi-modal edit (:func:`regionedit.multimodal.edit`); a model's recommended
    settings override the defaults (docs/multimodal.md)."""

    num_inference_steps: int = option(
        50, flag="steps", origin="diffusers' DiffEdit",
        help="DDIM steps N (η = 0) shared by the inversion, the guidance pass and the main pass",
    )  # fmt: skip
    guidance_scale: float = option(
        7.5, origin="diffusers' DiffEdit", help="classifier-free guidance w of both passes (the inversion: 1)"
    )
    preservation_weight: float = option(
        0.6, flag="lambda", origin="paper",
        help="λ of L = λ·L_pres + (1−λ)·L_guid inside the masks, in [0, 1]: 1 returns the input there, 0 "
        "follows the instruction",
    )  # fmt: skip
    optimize_steps: int = option(
        25, origin="ours",
        help="t_u, the first steps (where the layout forms) that are optimised; keeps its share of the "
        "steps when only the steps are changed",
    )  # fmt: skip
    grad_steps: int = option(5, origin="ours", help="k Adam steps per optimised step (solver adam)")
    learning_rate: float = option(
        1e-2, origin="ours: as Null-text inversion", help="Adam's η, a new optimiser per timestep"
    )
    loss_space: str = option(
        "x0", choices=LOSS_SPACES, origin="paper: x0",
        help="compare the predicted clean latent ẑ0, or the noisy latent z_t itself, with the input's "
        "and the guidance image's, inside the masks",
    )  # fmt: skip
    solver: str = option(
        "adam", choices=SOLVERS, origin="paper: adam",
        help="k Adam steps per optimised step, or (noisy loss space only) the exact minimiser, "
        "λ·z^inv_t + (1−λ)·z^g_t inside the masks",
    )  # fmt: skip
    guidance_strength: float | None = option(
        None, origin="ours",
        help="s_g, how far the guidance image is noised, in (0, 1]; None: 1.0 with a layout condition, "
        "0.8 with text only",
    )  # fmt: skip
    control_scale: float = option(
        1.0, flag="default_control_scale", origin="diffusers",
        help="ControlNet scale of a condition that gives none",
    )  # fmt: skip
    main_pass_control_scale: float = option(
        1.0, origin="ours",
        help="multiplies every condition's scale in the main pass (the guidance pass keeps full scale); "
        "0 leaves the conditions to the guidance pass",
    )  # fmt: skip
    main_pass_prompt: str = option(
        "target", choices=MAIN_PASS_PROMPTS, origin="ours",
        help="the main pass's prompt; source: the edit reaches the output only through L_guid",
    )  # fmt: skip
    mask_threshold: float = option(
        0.5, origin="ours", help="a user mask is area-resized to the latent grid, then thresholded here"
    )
    mask_estimate: MaskEstimateOptions = option(
        default_factory=MaskEstimateOptions, help="how the mask is estimated when none is given"
    )

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

    @staticmethod
    def derived_changes(base: MultimodalOptions, given: dict) -> dict:
        """When the steps change without ``optimize_steps``, t_u keeps its share of the steps it has
        in ``base`` (15 of 20 stays 15 at 20 and becomes 30 at 40)."""
        if "num_inference_steps" in given and "optimize_steps" not in given:
            share = base.optimize_steps / base.num_inference_steps
            steps = given["num_inference_steps"]
            return {**given, "optimize_steps": min(round(steps * share), steps)}
        return given

    def strength_for(self, has_layout: bool) -> float:
        """s_g: erase the old layout fully when a ControlNet must impose a new one."""
        if self.guidance_strength is not None:
            return float(self.guidance_strength)
        return 1.0 if has_layout else 0.8
