import dataclasses

import numpy as np
import pytest
import torch

import regionedit as R
from regionedit.inversion import _auto_corr_loss, ddim_invert, regularize_noise
from regionedit.models.loading import from_components
from regionedit.models.schedule import to_epsilon

OPTS = R.InversionOptions(num_inference_steps=4)


@pytest.fixture(scope="module")
def inv(tiny_model, image64):
    return R.invert(
        tiny_model, image64, "a red square and a blue square on a gray background", OPTS, progress=False
    )


def test_trajectory_offsets_and_maps_shapes(inv):
    assert inv.latents.shape == (5, 4, 16, 16)
    assert inv.offsets.shape == (4, 4, 16, 16)
    assert inv.timesteps.tolist() == sorted(inv.timesteps.tolist(), reverse=True)
    # one reference per step and layer, (uncond, cond) x heads, stored once, not per region
    assert all(v.shape[:2] == (4, 2) for v in inv.attention.values())


def test_reconstruction_equals_vae_round_trip(tiny_model, image64, inv):
    """Stage 2 with offsets lands on the trajectory: an edit with no regions decodes to D(E(x))."""
    res = R.edit(tiny_model, inv, [], options=R.LoMOEOptions(num_inference_steps=4), progress=False)
    z0 = tiny_model.encode(tiny_model.image_to_tensor(image64))
    assert torch.allclose(res.latents, z0, atol=1e-4)
    round_trip = tiny_model.decode(z0)
    out = torch.from_numpy(np.array(res.image)).float().permute(2, 0, 1) / 255
    assert (out - round_trip[0]).abs().max() <= 1 / 255 + 1e-6


SD_SCHEDULE = dict(
    prediction_type="epsilon", rescale_betas_zero_snr=False, timestep_spacing="leading", steps_offset=1
)
ZERO_SNR_V = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")


@pytest.mark.parametrize("schedule", [SD_SCHEDULE, ZERO_SNR_V], ids=["sd-epsilon", "zero-snr-v"])
def test_reconstruction_exact_for_each_prediction_type(tiny_components, image64, schedule):
    comps = dict(tiny_components)
    comps["scheduler"] = comps["scheduler"].__class__.from_config(comps["scheduler"].config, **schedule)
    model = from_components(comps)
    inv = R.invert(model, image64, "a gray background", OPTS, progress=False)
    res = R.edit(model, inv, [], options=R.LoMOEOptions(num_inference_steps=4), progress=False)
    assert torch.allclose(res.latents, inv.latents[:1], atol=1e-4)


def test_v_to_epsilon_conversion():
    x0, eps = torch.randn(3), torch.randn(3)
    a = torch.tensor(0.3)
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(to_epsilon(v, z, a, "v_prediction"), eps, atol=1e-6)
    assert to_epsilon(v, z, a, "epsilon") is v


def test_regulariser_reduces_correlation_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 16, 16, generator=g)
    smooth = torch.nn.functional.avg_pool2d(base, 3, 1, 1) * 3  # strongly auto-correlated
    opts = R.InversionOptions()
    out1 = regularize_noise(smooth, opts, torch.Generator().manual_seed(1))
    out2 = regularize_noise(smooth, opts, torch.Generator().manual_seed(1))
    assert torch.equal(out1, out2)
    loss = lambda x: float(_auto_corr_loss(x, torch.Generator().manual_seed(5)))  # noqa: E731
    assert loss(out1) < loss(smooth)


def test_save_load_round_trip(tmp_path, inv):
    path = inv.save(tmp_path / "inv.safetensors")
    back = R.Inversion.load(path)
    assert torch.equal(back.latents, inv.latents) and torch.equal(back.offsets, inv.offsets)
    assert back.attention.keys() == inv.attention.keys()
    assert back.prompt == inv.prompt and back.image_size == inv.image_size
    assert back.temperature == inv.temperature


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(R.InvalidInputError, match="not a regionedit inversion"):
        R.Inversion.load(tmp_path / "x.safetensors")
    with pytest.raises(R.InvalidInputError, match="not found"):
        R.Inversion.load(tmp_path / "missing.safetensors")


def test_inversion_is_deterministic(tiny_model, image64):
    a = R.invert(
        tiny_model, image64, "a red square", OPTS, generator=torch.Generator().manual_seed(3), progress=False
    )
    b = R.invert(
        tiny_model, image64, "a red square", OPTS, generator=torch.Generator().manual_seed(3), progress=False
    )
    assert torch.equal(a.latents, b.latents)


def test_option_validation():
    with pytest.raises(R.InvalidOptionError, match="num_inference_steps"):
        R.InversionOptions(num_inference_steps=0)
    with pytest.raises(R.InvalidOptionError, match="lambda_ac"):
        dataclasses.replace(R.InversionOptions(), lambda_ac=float("nan"))


def test_odd_image_size_error(tiny_model, image64):
    with pytest.raises(R.ImageSizeError, match="multiples of 4"):
        R.invert(tiny_model, image64.crop((0, 0, 62, 64)), "x", OPTS, progress=False)


def test_batched_inversion_equals_one_item_at_a_time(tiny_model, image64):
    """invert_batch keeps items apart: the regulariser sums per-item losses (rolls shared)."""
    from regionedit.inversion import invert_batch

    x = torch.from_numpy(np.array(image64)).permute(2, 0, 1)[None].float() / 127.5 - 1
    z0 = torch.cat([tiny_model.encode(x), tiny_model.encode(x.flip(-1))])
    prompts = ["a red square on a gray background", "a blue circle"]
    opts = R.InversionOptions(num_inference_steps=4)
    fresh = lambda step: torch.Generator().manual_seed(step)  # noqa: E731
    both = invert_batch(tiny_model, z0, prompts, opts, fresh, progress=False)
    assert both.shape == (5, 2, *z0.shape[1:])
    for i in range(2):
        one = invert_batch(tiny_model, z0[i : i + 1], prompts[i : i + 1], opts, fresh, progress=False)
        assert torch.allclose(both[:, i], one[:, 0], atol=1e-4)  # batched kernels round differently
    # ddim_invert is the one-item case with a single generator threaded through the steps
    g = torch.Generator().manual_seed(3)
    single = ddim_invert(tiny_model, z0[:1], prompts[0], opts, torch.Generator().manual_seed(3), False)
    assert torch.equal(single, invert_batch(tiny_model, z0[:1], prompts[:1], opts, lambda s: g, False)[:, 0])


def test_a_scheduler_config_without_clip_sample_is_not_clipped(tiny_components, image64):
    """DDIM's own default clamps ẑ0 to ±1 (``clip_sample=True``) when a config lacks the key, as
    Euler and DPM-Solver configs do; the inversion and the edit must not inherit that clamp."""
    from diffusers import DDIMScheduler

    from regionedit.models.schedule import DDIMSchedule

    unclipped = from_components(dict(tiny_components), name="unclipped")
    config = dict(unclipped.scheduler_config, prediction_type="epsilon", timestep_spacing="leading")
    unclipped.scheduler_config = config
    lacking = from_components(dict(tiny_components), name="lacking")
    lacking.scheduler_config = {k: v for k, v in config.items() if k not in ("clip_sample", "thresholding")}
    z0 = unclipped.encode(unclipped.image_to_tensor(image64))
    opts = R.InversionOptions(num_inference_steps=4, regularize=False)
    g = torch.Generator().manual_seed(0)
    expected = ddim_invert(unclipped, z0, "a gray background", opts, g, progress=False)
    got = ddim_invert(lacking, z0, "a gray background", opts, g, progress=False)
    assert torch.equal(got, expected)
    # the premise: diffusers' DDIM built from that config as it is would clamp on this trajectory
    t = DDIMSchedule(lacking.scheduler_config, 4).timesteps[0]
    out = lacking.predict(expected[-1:], t, lacking.encode_prompt(["a gray background"]))
    raw = DDIMScheduler.from_config(lacking.scheduler_config)
    raw.set_timesteps(4)
    assert raw.config.clip_sample
    ours = DDIMSchedule(lacking.scheduler_config, 4).step(out, t, expected[-1:])
    assert not torch.allclose(raw.step(out, t, expected[-1:]).prev_sample, ours, atol=1e-3)
