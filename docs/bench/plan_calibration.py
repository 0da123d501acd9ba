"""Fit the activation coefficients of regionedit.plan (src/regionedit/plan/coefficients.py) on CPU.

For each family, small random denoisers of the real head width are run forward and backward (the
gradient to their latent input, as LoMOE's gradient step takes it) and forward alone, at two image
sizes, two text lengths and batches 1 and 2; the peak of live CPU tensors (torch's profiler,
regionedit.bench.memory) is fitted as batch · Σ_kinds coefficient · tokens · width · 4 bytes, least
squares on the relative error. VAEs: encode and decode peaks as batch · pixels · first-level
channels · coefficient · 4 bytes.

    OMP_NUM_THREADS=1 .venv/bin/python docs/bench/plan_calibration.py [family ...] 2>/dev/null

(a few minutes on one core; the profiler prints two lines per measurement on stderr).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from regionedit.bench.denoiser_step import step_call
from regionedit.bench.memory import tensor_peak
from regionedit.plan.geometry import geometry
from regionedit.plan.shape import build_network as build
from regionedit.plan.shape import model_text_tokens

_UNET = dict(cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32)
_FLUX = dict(in_channels=64, attention_head_dim=128, num_attention_heads=4, joint_attention_dim=128,
             pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=(16, 56, 56))  # fmt: skip
_FLUX2 = dict(in_channels=128, attention_head_dim=128, num_attention_heads=4, joint_attention_dim=192, mlp_ratio=3.0,
              axes_dims_rope=(32, 32, 32, 32), timestep_guidance_channels=64)  # fmt: skip

# The families' denoisers at 512-wide (UNet: 64 to 256 channels), real head widths, few blocks.
DENOISERS = {
    "unet": [  # resnets nearly alone (attention only in the middle), then attention at every level
        ("UNet2DConditionModel", dict(_UNET, block_out_channels=(64, 128, 256), layers_per_block=2,
                                      down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)),
        ("UNet2DConditionModel", dict(_UNET, block_out_channels=(64, 128, 256), layers_per_block=1,
                                      down_block_types=("CrossAttnDownBlock2D",) * 3,
                                      up_block_types=("CrossAttnUpBlock2D",) * 3, transformer_layers_per_block=2)),
    ],
    "flux": [("FluxTransformer2DModel", dict(_FLUX, num_layers=2, num_single_layers=1)),
             ("FluxTransformer2DModel", dict(_FLUX, num_layers=1, num_single_layers=3))],
    "sd3": [("SD3Transformer2DModel", dict(sample_size=64, patch_size=2, in_channels=16, num_layers=2,
                                           attention_head_dim=64, num_attention_heads=8, joint_attention_dim=128,
                                           caption_projection_dim=512, pooled_projection_dim=64, out_channels=16,
                                           pos_embed_max_size=64))],
    "flux2": [("Flux2Transformer2DModel", dict(_FLUX2, num_layers=2, num_single_layers=1)),
              ("Flux2Transformer2DModel", dict(_FLUX2, num_layers=1, num_single_layers=3))],
    "qwenimage": [("QwenImageTransformer2DModel", dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                                       attention_head_dim=128, num_attention_heads=4,
                                                       joint_attention_dim=128, axes_dims_rope=(16, 56, 56)))],
    "zimage": [("ZImageTransformer2DModel", dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=512,
                                                 n_layers=2, n_refiner_layers=1, n_heads=4, n_kv_heads=4,
                                                 cap_feat_dim=128, axes_dims=(32, 48, 48), axes_lens=(256, 64, 64)))],
}  # fmt: skip
FAMILY = {"unet": "sd"}  # the coefficient set -> a family step_call and geometry know
SIZES = {"unet": (256, 512)}  # the transformers at 512 and 1024 (1024 and 4096 image tokens)
TEXTS, BATCHES = (32, 128), (1, 2)

# VAEs at a quarter of the released channels (the same ratios between levels); the mini models' 3-level
# layout apart (its peak per pixel and channel is lower).
VAES = {
    "AutoencoderKL": ("AutoencoderKL", dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=16,
                                            down_block_types=("DownEncoderBlock2D",) * 4,
                                            up_block_types=("UpDecoderBlock2D",) * 4)),
    "AutoencoderKL-3": ("AutoencoderKL", dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
                                              down_block_types=("DownEncoderBlock2D",) * 3,
                                              up_block_types=("UpDecoderBlock2D",) * 3)),
    "AutoencoderKLFlux2": ("AutoencoderKLFlux2", dict(block_out_channels=(32, 64, 128, 128), norm_num_groups=16)),
    "AutoencoderKLQwenImage": ("AutoencoderKLQwenImage", dict(base_dim=24)),
}  # fmt: skip
VAE_SIZES = {"AutoencoderKL-3": (64, 128)}  # the mini models' sizes; the others at 128 and 256
VAE_BATCHES = (2, 4)  # batch 1 of the video VAE takes a CPU-only conv3d path


def fit(features: np.ndarray, peaks: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares on relative errors, no intercept; returns (coefficients, largest relative error)."""
    scale = 1 / peaks
    coef, *_ = np.linalg.lstsq(features * scale[:, None], np.ones_like(peaks), rcond=None)
    return coef, float(np.max(np.abs(features @ coef / peaks - 1)))


def denoiser_rows(name: str):
    family = FAMILY.get(name, name)
    for index, (cls, config) in enumerate(DENOISERS[name]):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build(cls, config).requires_grad_(False)
        for size in SIZES.get(name, (512, 1024)):
            for text in TEXTS:
                for batch in BATCHES:
                    latents, call = step_call(family, net, batch, size, size, text)
                    leaf = latents.clone().requires_grad_(True)

                    def backward(call=call, leaf=leaf):
                        return torch.autograd.grad(call(leaf).float().square().sum(), leaf)

                    def forward(call=call, latents=latents):
                        with torch.no_grad():
                            return call(latents)

                    forward()  # warm-up: tables some networks cache per size (rotary embeddings)
                    grid = (size // 8,) * 2 if family == "sd" else (size // 16,) * 2
                    geo = geometry(family, dict(net.config), grid, text)
                    _, grad = tensor_peak(backward)
                    _, fwd = tensor_peak(forward)
                    yield index, size, text, batch, geo, grad, fwd


def calibrate_denoiser(name: str) -> None:
    rows = list(denoiser_rows(name))
    kinds = sorted({k for r in rows for k in r[4].token_widths()})
    # a constant per call besides the token-width terms (50-120 MB in FLUX.2, Qwen-Image and Z-Image at
    # 512 and 1024 px whatever the batch, absent at 64 px: CPU matrix-multiply workspace, it seems); the
    # plan leaves it out and scales the rest
    per_call = [2**20]
    grad_x = np.array(
        [[r[3] * r[4].token_widths().get(k, 0) * 4 for k in kinds] + per_call for r in rows], float
    )
    grad_coef, grad_err = fit(grad_x, np.array([r[5] for r in rows], float))
    fwd_x = np.array([[r[3] * r[4].largest() * 4] + per_call for r in rows], float)
    fwd_coef, fwd_err = fit(fwd_x, np.array([r[6] for r in rows], float))
    for r in rows:
        print(f"  {name} config {r[0]} {r[1]}px text {r[2]} batch {r[3]}: backward {r[5] / 2**20:.2f} MB, "
              f"forward {r[6] / 2**20:.2f} MB")  # fmt: skip
    coefs = ", ".join(f"{k} {c:.1f}" for k, c in zip(kinds, grad_coef, strict=False))
    coefs += f", {grad_coef[-1]:.1f} MB per call"
    print(f"{name}: backward {coefs} (largest error {grad_err:.0%}); forward {fwd_coef[0]:.1f}, "
          f"{fwd_coef[1]:.1f} MB per call ({fwd_err:.0%})")  # fmt: skip


def calibrate_vae(name: str) -> None:
    cls, config = VAES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = build(cls, config).requires_grad_(False)
    c0 = vae.config.get("base_dim") or vae.config["block_out_channels"][0]
    video = name == "AutoencoderKLQwenImage"
    enc, dec = [], []
    for size in VAE_SIZES.get(name, (128, 256)):
        for batch in VAE_BATCHES:
            image = torch.rand(batch, 3, *((1,) if video else ()), size, size)
            with torch.no_grad():
                vae.decode(vae.encode(image).latent_dist.mean)  # warm-up: caches made on a first call
                _, e = tensor_peak(lambda: vae.encode(image).latent_dist.mean)  # noqa: B023
                z = vae.encode(image).latent_dist.mean
                _, d = tensor_peak(lambda: vae.decode(z).sample)  # noqa: B023
            feature = batch * size * size * c0 * 4
            enc.append((feature, e))
            dec.append((feature, d))
            print(f"  {name} {size}px batch {batch}: encode {e / 2**20:.2f} MB, decode {d / 2**20:.2f} MB")
    ce, ee = fit(np.array([[f] for f, _ in enc], float), np.array([p for _, p in enc], float))
    cd, ed = fit(np.array([[f] for f, _ in dec], float), np.array([p for _, p in dec], float))
    print(f"{name}: encode {ce[0]:.1f} ({ee:.0%}), decode {cd[0]:.1f} ({ed:.0%})")


def calibrate_maps() -> None:
    """Float32 copies of the captured maps LoMOE's gradient step holds: the peak of the guided call, the
    cross-attention loss and its gradient, less the same call's peak without capture, per map value, on
    a UNet and a FLUX whose maps outweigh their activations (16 heads of 8, 512 text tokens)."""
    from regionedit.bench.random_models import flux_dev_components, sd2_base_components, timing_model
    from regionedit.lomoe.losses import cross_attention_loss
    from regionedit.lomoe.reference import captured_maps

    models = {
        "unet": sd2_base_components(block_out_channels=(32, 64), attention_head_dim=(8, 8), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=16),
        "flux": flux_dev_components(num_layers=2, num_single_layers=1, num_attention_heads=16, attention_head_dim=8,
                                    axes_dims_rope=(2, 2, 4)),
    }  # fmt: skip
    for name, components in models.items():
        model = timing_model(components, name=name)
        size, branches = 256, 2
        geo = geometry(
            model.family,
            dict(model.denoiser.config),
            (size // model.size_factor,) * 2,
            model_text_tokens(model),
        )
        k = model.guidance_batches
        z = torch.randn(
            branches, model.latent_channels, size // model.vae_scale_factor, size // model.vae_scale_factor
        )
        neg, pos = model.encode_prompt([""] * branches), model.encode_prompt(["a photo"] * branches)
        t = model.scheduler(10, z.shape[-2:]).timesteps[3]
        with model.cross_attention(1.25) as store:
            store.capture = True
            with torch.no_grad():
                model.guided(z[:1], t, neg[[0]], pos[[0]], 7.5)
            reference = captured_maps(store, model.dtype, halves=k)

            def step(
                capture: bool, model=model, z=z, t=t, neg=neg, pos=pos, reference=reference, store=store
            ):
                leaf = z.clone().requires_grad_(True)
                store.capture = capture
                out = model.guided(leaf, t, neg, pos, 7.5)
                loss = cross_attention_loss(store.maps, reference) if capture else out.square().sum()
                grad = torch.autograd.grad(loss, leaf)
                store.clear()
                return grad

            _, with_maps = tensor_peak(step, True)
            _, without = tensor_peak(step, False)
        copies = (with_maps - without) / (branches * k * geo.map_values() * 4)
        print(f"maps {name}: {with_maps / 2**20:.1f} MB with capture, {without / 2**20:.1f} MB without: "
              f"{copies:.2f} float32 copies per map value")  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(1)
    chosen = sys.argv[1:] or [*DENOISERS, *VAES, "maps"]
    for what in chosen:
        if what == "maps":
            calibrate_maps()
        else:
            (calibrate_vae if what in VAES else calibrate_denoiser)(what)
