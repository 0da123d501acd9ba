"""LoMOE options; defaults are the paper's and the official code's (docs/lomoe.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidOptionError, require_bools
from ..regions import MASK_GRIDS, MASK_RESIZES, OVERLAP_POLICIES

DEFAULT_REGION_NEGATIVE = (
    "artifacts, blurry, smooth texture, bad quality, distortions, unrealistic, distorted image"
)


@dataclass(frozen=True)
class LoMOEOptions:
    num_inference_steps: int = 50  # T: inversion and edit must match
    guidance_scale: float = 7.5  # classifier-free guidance s
    guidance_rescale: float = 0.0  # ours: φ of Lin et al. 2023 (diffusers' guidance_rescale) on the
    # region branches only, against over-saturation at high s; 0 = plain CFG (paper)
    cross_attention_weight: float = 1.0  # λ_xa in the paper, ca_coef in the official code
    background_weight: float = 1.75  # λ_b, official seg_coef (its function default 0.25 is unused)
    learning_rate: float = 0.1  # one SGD step on the views per timestep
    temperature: float = 1.25  # τ divides cross-attention scores before the softmax
    bootstrap_steps: int = 20  # steps with random constant backgrounds outside each mask; 0 = off
    mask_threshold: float = 0.5  # on [0, 1] grey
    feather: float = 0.0  # Gaussian soft mask edges, latent pixels; 0 = the paper's hard masks
    overlap: str = "average"  # "average" (paper) or "last" (last mask wins)
    mask_resize: str = "nearest"  # masks to the latent/token grid: "nearest" (official code) or
    # "majority" (ours: a cell is edited when at least half its pixels are masked)
    mask_grid: str = "token"  # on a flow transformer, fuse on its 2x2-cell "token" grid or on the
    # finer "latent" cells (ours); one and the same on a UNet
    region_negative_prompt: str = DEFAULT_REGION_NEGATIVE  # official README's negative prompt
    paste_back: bool = False  # copy original pixels outside the masks after decoding
    background_blend: bool = False  # ours: after every step, reset the fused latent outside the
    # masks to the inversion trajectory (Blended Latent Diffusion's rule; L_b alone lets it drift)
    regularize_inversion: bool = True  # pix2pix-zero noise regularisation in the inversion

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
