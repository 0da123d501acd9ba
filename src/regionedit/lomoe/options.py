"""LoMOE's options: each field says what it does, its allowed values and where its default comes from."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidOptionError, require_bools
from ..options import documented, option
from ..regions import MASK_GRIDS, MASK_RESIZES, OVERLAP_POLICIES

DEFAULT_REGION_NEGATIVE = (
    "artifacts, blurry, smooth texture, bad quality, distortions, unrealistic, distorted image"
)


@documented
@dataclass(frozen=True)
class LoMOEOptions:
    """Settings of a LoMOE edit (:func:`regionedit.edit`); defaults are the paper's and the
    official code's, and a model's recommended settings override them (docs/lomoe.md)."""

    num_inference_steps: int = option(
        50, flag="steps", origin="paper", help="denoising steps T; the inversion and the edit use the same T"
    )
    guidance_scale: float = option(7.5, origin="paper", help="classifier-free guidance scale s")
    guidance_rescale: float = option(
        0.0, origin="ours",
        help="φ of Lin et al. (diffusers' guidance_rescale) on the region branches, in [0, 1], against "
        "over-saturation at a high guidance scale; 0 is plain CFG",
    )  # fmt: skip
    cross_attention_weight: float = option(
        1.0, origin="official code: ca_coef",
        help="λ_xa, weight of the cross-attention loss that keeps each region's layout",
    )  # fmt: skip
    background_weight: float = option(
        1.75, origin="official code: seg_coef",
        help="λ_b, weight of the background latent loss (no effect while background_blend is on)",
    )  # fmt: skip
    learning_rate: float = option(
        0.1, origin="official code", help="η of the one SGD step on the branches' latents per step"
    )
    temperature: float = option(
        1.25, origin="official code", help="τ, divides cross-attention scores before the softmax"
    )
    bootstrap_steps: int = option(
        20, origin="official code",
        help="first steps in which each region branch sees random constant colours outside its mask; 0 = off",
    )  # fmt: skip
    mask_threshold: float = option(
        0.5, origin="ours", help="grey masks are binarised at this level, in (0, 1]"
    )
    feather: float = option(
        0.0, origin="ours", help="Gaussian soft mask edges, in latent pixels; 0 = the paper's hard masks"
    )
    overlap: str = option(
        "average", choices=OVERLAP_POLICIES, origin="paper: average",
        help="where masks overlap: average the branches, or give the pixel to the last mask",
    )  # fmt: skip
    mask_resize: str = option(
        "nearest", choices=MASK_RESIZES, origin="official code: nearest",
        help="how masks reach the latent (or token) grid: each cell takes its top-left pixel, or a cell "
        "is edited when at least half its pixels are masked",
    )  # fmt: skip
    mask_grid: str = option(
        "token", choices=MASK_GRIDS, origin="ours",
        help="flow transformers: make masks on the 2x2-cell token grid, or on the finer latent cells "
        "(the same on a UNet)",
    )  # fmt: skip
    region_negative_prompt: str = option(
        DEFAULT_REGION_NEGATIVE, origin="official README",
        help="negative prompt of every region without its own",
    )  # fmt: skip
    paste_back: bool = option(
        False, origin="ours", help="copy the input's pixels outside the masks after decoding"
    )
    background_blend: bool = option(
        False, origin="ours: Blended Latent Diffusion's rule",
        help="after every step, reset the fused latent outside the masks to the inversion trajectory",
    )  # fmt: skip
    regularize_inversion: bool = option(
        True, origin="official code: pix2pix-zero",
        help="push each predicted noise of the inversion towards white noise",
    )  # fmt: skip

    def __post_init__(self):
        if not isinstance(self.num_inference_steps, int) or not 1 <= self.num_inference_steps <= 1000:
            raise InvalidOptionError(
                f"num_inference_steps must be an integer in 1..1000, got {self.num_inference_steps!r}"
            )
        for name in (
            "guidance_scale",
            "cross_attention_weight",
            "background_weight",
            "learning_rate",
            "feather",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InvalidOptionError(f"{name} must be a finite number >= 0, got {v!r}")
        if (
            not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or self.temperature <= 0
        ):
            raise InvalidOptionError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not isinstance(self.guidance_rescale, (int, float)) or not 0 <= self.guidance_rescale <= 1:
            raise InvalidOptionError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale!r}")
        if not isinstance(self.bootstrap_steps, int) or self.bootstrap_steps < 0:
            raise InvalidOptionError(f"bootstrap_steps must be an integer >= 0, got {self.bootstrap_steps!r}")
        if not isinstance(self.mask_threshold, (int, float)) or not 0 < self.mask_threshold <= 1:
            raise InvalidOptionError(f"mask_threshold must be in (0, 1], got {self.mask_threshold!r}")
        if self.overlap not in OVERLAP_POLICIES:
            raise InvalidOptionError(f"overlap must be one of {OVERLAP_POLICIES}, got {self.overlap!r}")
        if self.mask_resize not in MASK_RESIZES:
            raise InvalidOptionError(f"mask_resize must be one of {MASK_RESIZES}, got {self.mask_resize!r}")
        if self.mask_grid not in MASK_GRIDS:
            raise InvalidOptionError(f"mask_grid must be one of {MASK_GRIDS}, got {self.mask_grid!r}")
        require_bools(self, ("paste_back", "background_blend", "regularize_inversion"))
