"""Activation coefficients of the memory plan, fitted to measured peaks.

Units: values of the compute dtype per token-width (:mod:`regionedit.plan.geometry`), per image.
``BACKWARD[kind]``: what a forward pass keeps for its backward pass plus the backward's own peak, per
block kind; ``FORWARD``: the peak of a forward pass without gradients, per token-width of its largest
block; ``VAE_ENCODE`` / ``VAE_DECODE``: per pixel and channel of the VAE's full-resolution level.

Fitted by ``docs/bench/plan_calibration.py`` (2026-12-07, 2 CPU cores, torch 2.13.0+cpu, diffusers 0.42.1,
float32, one thread): random denoisers of each family at the real head width and 512 channels (UNets
64-256), forward and backward at two sizes, two text lengths and batches 1 and 2, peaks of live CPU
tensors from torch's profiler (regionedit.bench.memory), least squares on relative error with a constant
per call beside the coefficients (up to 120 MB at 512 and 1024 px whatever the batch, absent at 64 px:
the CPU's, it seems; not carried into the plan); the largest error of each fit in brackets. Forward-only
fits are looser for the UNet and FLUX (one block's peak depends on its layout): they matter only where
no gradient is taken.
"""

from __future__ import annotations

BACKWARD = {
    "sd": {"resnet": 9.1, "attention": 24.4},  # UNet2DConditionModel (3%)
    "sdxl": {"resnet": 9.1, "attention": 24.4},  # the same class
    "flux": {"double": 16.5, "single": 14.8},  # FluxTransformer2DModel (4%)
    "sd3": {"double": 14.7},  # SD3Transformer2DModel (3%)
    "flux2": {"double": 22.4, "single": 21.6},  # Flux2Transformer2DModel (5%)
    "qwenimage": {"double": 17.3},  # QwenImageTransformer2DModel (2%)
    "zimage": {"block": 21.0},  # ZImageTransformer2DModel (1%)
}
# largest errors: UNet 29%, FLUX 19%, SD3 3%, FLUX.2 15%, Qwen-Image 2%, Z-Image 2%
FORWARD = {
    "sd": 16.8,
    "sdxl": 16.8,
    "flux": 16.2,
    "sd3": 13.6,
    "flux2": 23.3,
    "qwenimage": 15.8,
    "zimage": 16.9,
}

# VAEs, per image, by class and number of levels: the released layouts at a quarter of their channels at
# 128 and 256 px (AutoencoderKL 1% and 0%, FLUX.2's 23% and 17%, Qwen-Image's video VAE 19% and 13%), the
# mini models' 3-level VAE at 64 and 128 px (1%); batches 2 and 4 (batch 1 of the video VAE takes a
# CPU-only conv3d path that needs twice as much).
VAE_ENCODE = {("AutoencoderKL", 4): 5.1, ("AutoencoderKL", 3): 4.4, ("AutoencoderKLFlux2", 4): 6.3,
              ("AutoencoderKLQwenImage", 4): 17.3}  # fmt: skip
VAE_DECODE = {("AutoencoderKL", 4): 7.6, ("AutoencoderKL", 3): 6.1, ("AutoencoderKLFlux2", 4): 8.9,
              ("AutoencoderKLQwenImage", 4): 25.4}  # fmt: skip

# LoMOE's captured maps: float32 values held per map value in the gradient step (the softmax output
# the loss reads, the loss's difference to the reference maps, their gradients), measured as the peak
# with capture less the peak without (docs/bench/plan_calibration.py maps: a UNet 2.62, a FLUX 3.29;
# the joint-attention capture also keeps float32 copies of queries and keys). Qwen-Image and Z-Image
# have their own capture processors, taken as FLUX's.
MAP_COPIES = {"sd": 2.6, "sdxl": 2.6, "flux": 3.3, "sd3": 3.3, "flux2": 3.3, "qwenimage": 3.3, "zimage": 3.3}
