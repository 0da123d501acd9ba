"""Options of the multi-modal optimisation editor; defaults are the spec table
(shared/design/multimodal-spec.md §2). Every [ours] choice of the spec is a field here."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import InvalidOptionError, require_bools

LOSS_SPACES = ("x0", "noisy", "pixel")  # §1.5: predicted clean latent (default), z_t, decoded ẑ0
GUID_MASKS = ("none", "edit")  # §1.5: L_guid over the whole image (default) or inside m only
PRES_MASKS = ("keep", "none")  # §1.5: L_pres over m̄ (default) or over the whole image
OPTIMIZERS = ("adam", "sgd")
GUIDANCE_STARTS = ("noise", "inversion")  # §1.3: random-noise encoding (paper) or DDIM-inverted start
BLEND_TARGETS = ("input", "loss")  # post_blend outside m: z^inv, or T8's λ-weighted mean of z^inv and z^g
MAIN_PASS_PROMPTS = ("target", "source")  # the main pass's prompt (the guidance pass always uses the target)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class MultimodalOptions:
    num_inference_steps: int = 50  # N, DDIM with η = 0; inversion, guidance and main pass share it
    guidance_scale: float = 7.5  # CFG w of ε̂ in both passes (not in the inversion: CFG 1 there, §1.2)
    preservation_weight: float = 0.6  # λ of L = λ·L_pres + (1−λ)·L_guid [paper†]; CLI --lambda
    optimize_steps: int = 25  # t_u: timesteps with inner optimisation (first half; layout forms early)
    grad_steps: int = 5  # k gradient steps per optimised timestep
    optimizer: str = "adam"  # a new optimiser per timestep, as Null-text inversion does
    learning_rate: float = 1e-2  # η
    loss_space: str = "x0"  # ẑ0 latent (default); "noisy" has a closed-form optimum (T8)
    guid_mask: str = "none"  # "edit" multiplies L_guid by m (stricter, less robust to tight masks)
    pres_mask: str = "keep"  # the preservation region: m̄ [paper†]; "none" = the whole image, so λ
    # also weighs the input against the guidance image inside m (main pass only)
    guidance_strength: float | None = None  # s_g; None: 1.0 with a layout condition, 0.8 text-only
    guidance_start: str = "noise"  # "inversion" starts the guidance pass from z^inv instead of noise
    post_blend: bool = False  # after t_u: z ← m·z + m̄·z^inv (DiffEdit-style), off by default (§1.6)
    post_blend_target: str = "input"  # ours: "loss" blends towards the optimum of the losses in noisy
    # space instead (T8's closed form: λ weighs z^inv against z^g_t), so λ still acts after t_u
    mask_threshold: float = 0.5  # user mask: area-resize to the latent grid, then this threshold
    mask_num_maps: int = 10  # DiffEdit M_text: noise draws averaged [diffusers default]
    mask_encode_strength: float = 0.5  # DiffEdit M_text: noising strength [diffusers default]
    mask_clamp_ratio: float = 3.0  # clamp the difference map at this multiple of its mean [diffusers]
    mask_estimate_threshold: float = 0.5  # on the rescaled difference maps
    mask_dilate: bool = True  # one 3×3 max-pool of the estimated mask (user masks never)
    control_scale_single: float = 1.0  # ControlNet scale when one net is used [diffusers default]
    control_scale_multi: float = 0.8  # each net's scale when two or more are combined [ours]
    gradient_checkpointing: bool = False  # trade compute for memory in UNet/ControlNet backward
    main_pass_control: bool = True  # ours (§3): the conditions steer the main pass too; False leaves
    # them to the guidance pass, so the instruction reaches the edit only through L_guid, weighed by λ
    main_pass_control_scale: float = 1.0  # ours: multiplies every condition's scale in the main pass
    # only (the guidance pass keeps full scale); below 1 the main pass alone draws the layout less
    # firmly, so λ trades it against the input (0 acts as main_pass_control=False)
    main_pass_prompt: str = "target"  # ours: "source" denoises the main pass with the source
    # prompt, so with main_pass_control=False the edit reaches the output only through L_guid

    def __post_init__(self):
        for name in ("num_inference_steps",):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1000:
                raise InvalidOptionError(f"{name} must be an integer in 1..1000, got {v!r}")
        for name in ("optimize_steps", "grad_steps", "mask_num_maps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InvalidOptionError(f"{name} must be an integer >= 0, got {v!r}")
        if self.optimize_steps > self.num_inference_steps:
            raise InvalidOptionError(
                f"optimize_steps (t_u = {self.optimize_steps}) cannot exceed num_inference_steps "
                f"({self.num_inference_steps}); use at most {self.num_inference_steps}"
            )
        if self.mask_num_maps < 1:
            raise InvalidOptionError(f"mask_num_maps must be >= 1, got {self.mask_num_maps}")
        for name in (
            "guidance_scale",
            "learning_rate",
            "mask_clamp_ratio",
            "control_scale_single",
            "control_scale_multi",
            "main_pass_control_scale",
        ):
            v = getattr(self, name)
            if not _finite(v) or v < 0:
                raise InvalidOptionError(f"{name} must be a finite number >= 0, got {v!r}")
        if not _finite(self.mask_clamp_ratio) or self.mask_clamp_ratio <= 0:
            raise InvalidOptionError(f"mask_clamp_ratio must be > 0, got {self.mask_clamp_ratio!r}")
        for name in ("preservation_weight", "mask_encode_strength", "mask_estimate_threshold"):
            v = getattr(self, name)
            if not _finite(v) or not 0 <= v <= 1:
                raise InvalidOptionError(f"{name} must be in [0, 1], got {v!r}")
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
            ("guid_mask", GUID_MASKS),
            ("pres_mask", PRES_MASKS),
            ("optimizer", OPTIMIZERS),
            ("guidance_start", GUIDANCE_STARTS),
            ("post_blend_target", BLEND_TARGETS),
            ("main_pass_prompt", MAIN_PASS_PROMPTS),
        ):
            if getattr(self, name) not in allowed:
                raise InvalidOptionError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        require_bools(self, ("post_blend", "mask_dilate", "gradient_checkpointing", "main_pass_control"))
        if self.post_blend_target != "input" and not self.post_blend:
            raise InvalidOptionError(
                f"post_blend_target={self.post_blend_target!r} acts only with post_blend=True; set both"
            )

    def at_steps(self, steps: int) -> MultimodalOptions:
        """These options at ``steps`` DDIM steps, t_u clamped to the first half of them."""
        return replace(self, num_inference_steps=steps, optimize_steps=min(self.optimize_steps, steps // 2))

    def strength_for(self, has_layout: bool) -> float:
        """s_g (§1.3): erase the old layout fully when a ControlNet must impose a new one."""
        if self.guidance_strength is not None:
            return float(self.guidance_strength)
        return 1.0 if has_layout else 0.8
