"""Multi-modal optimisation editor on tiny random components (spec tests T2, T3, T6–T11)."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, DDIMScheduler
from diffusers.models.controlnets import MultiControlNetModel
from PIL import Image

from regionedit.errors import DependencyError, InvalidInputError, InvalidOptionError
from regionedit.execution import ExecutionOptions
from regionedit.models.loading import from_components
from regionedit.models.schedule import to_x0
from regionedit.multimodal import Condition, InvalidConditionError, MultimodalOptions, edit, invert_image
from regionedit.multimodal.conditions import POSE_COLOURS, canny_edges, control_image, image_to_control_tensor
from regionedit.multimodal.guidance import Denoiser, Targets, optimised_pass
from regionedit.multimodal.mask import estimate_mask
from regionedit.multimodal.options import MaskEstimateOptions
from regionedit.regions import Region

SD_SCHEDULE = dict(
    prediction_type="epsilon", rescale_betas_zero_snr=False, timestep_spacing="leading", steps_offset=1
)
ZERO_SNR_V = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
FAST = MultimodalOptions(num_inference_steps=4, optimize_steps=2, grad_steps=2)
SOURCE = "a red square"


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def make_model(components, schedule=None, unit_latents=False, image=None):
    comps = dict(components)
    if schedule is not None:
        comps["scheduler"] = DDIMScheduler.from_config(comps["scheduler"].config, **schedule)
    if unit_latents:
        # Calibrate the latent scale to unit std, as real VAEs (and the mini model) are; the
        # random VAE's 0.18215 gives std 0.06 latents, where tiny latent errors swamp PSNR.
        vae = copy.deepcopy(comps["vae"])
        probe = from_components({**comps, "vae": vae})
        std = probe.encode(probe.image_to_tensor(image)).std()
        vae.register_to_config(scaling_factor=float(vae.config.scaling_factor / std))
        comps["vae"] = vae
    return from_components(comps, name="tiny")


def make_controlnet(unet, seed: int) -> ControlNetModel:
    """A tiny ControlNet for the tiny UNet (4x downsampling like its VAE), with random (not zero)
    output convolutions so its residuals actually reach the UNet."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # module constructors draw from the global RNG; keep it isolated
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "zero_conv" in name or "controlnet_mid_block" in name or "conv_out" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.requires_grad_(False).eval()


@pytest.fixture(scope="module")
def model(tiny_components):
    return make_model(tiny_components)


@pytest.fixture(scope="module")
def nets(model):
    return {
        kind: make_controlnet(model.unet, seed)
        for seed, kind in enumerate(["edge", "scribble", "pose", "seg"])
    }


@pytest.fixture(scope="module")
def pose_json(tmp_path_factory):
    kp = np.full((18, 3), 0.0)
    joints = {
        0: (32, 12),
        1: (32, 20),
        2: (26, 20),
        3: (22, 28),
        5: (38, 20),
        6: (42, 28),
        8: (28, 38),
        11: (36, 38),
    }
    for j, (x, y) in joints.items():
        kp[j] = (x, y, 1.0)
    path = tmp_path_factory.mktemp("pose") / "pose.json"
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": kp.ravel().tolist()}]}))
    return path


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- T2: ẑ0 formula -------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [SD_SCHEDULE, ZERO_SNR_V], ids=["sd-epsilon", "zero-snr-v"])
def test_x0_formula_recovers_clean_latent(tiny_components, schedule):
    sched = DDIMScheduler.from_config(tiny_components["scheduler"].config, **schedule)
    sched.set_timesteps(10)
    g = gen(3)
    z0, eps = torch.randn((1, 4, 8, 8), generator=g), torch.randn((1, 4, 8, 8), generator=g)
    for t in sched.timesteps:
        tt = t.reshape(1)
        z = sched.add_noise(z0, eps, tt)
        # A mock network that returns the true target of its prediction type.
        out = eps if schedule is SD_SCHEDULE else sched.get_velocity(z0, eps, tt)
        x0 = to_x0(out, z, sched.alphas_cumprod[int(t)], sched.config.prediction_type)
        assert torch.allclose(x0, z0, atol=1e-5), int(t)
        # and the scheduler's own step agrees (catches ᾱ off by one timestep)
        ref = sched.step(out, t, z).pred_original_sample
        assert torch.allclose(x0, ref, atol=1e-5)


# --- T3: identity ---------------------------------------------------------------------------


def _box(top=16, bottom=40, left=8, right=32):
    mask = np.zeros((64, 64))
    mask[top:bottom, left:right] = 1
    return mask


@pytest.mark.parametrize("solver", ["adam", "closed_form"])
def test_outside_the_mask_is_the_round_trip_for_any_lambda(model, image64, solver):
    """Whatever λ and solver, the pixels outside the mask are the VAE round trip's; an empty mask
    gives the round trip everywhere."""
    opts = dataclasses.replace(FAST, loss_space="noisy", solver=solver)
    first = None
    for lam in (0.0, 0.6, 1.0):
        res = edit(model, image64, "a blue circle", SOURCE, mask=_box(), generator=gen(),
                   options=dataclasses.replace(opts, preservation_weight=lam),
                   guidance=None if first is None else first.guidance)  # fmt: skip
        first = first or res
        outside = np.asarray(res.mask_image) == 0
        assert outside.any() and not outside.all()
        assert np.array_equal(np.asarray(res.image)[outside], np.asarray(res.reconstruction)[outside])
        assert not np.array_equal(np.asarray(res.image), np.asarray(res.reconstruction))  # it edits inside
    empty = edit(
        model, image64, "a blue circle", SOURCE, mask=np.zeros((64, 64)), options=opts, generator=gen()
    )
    assert np.array_equal(np.asarray(empty.image), np.asarray(empty.reconstruction))
    assert not empty.mask.any() and not empty.mask_estimated


@pytest.mark.parametrize("schedule", [SD_SCHEDULE, ZERO_SNR_V], ids=["sd-epsilon", "zero-snr-v"])
def test_lambda_one_returns_the_input_inside_the_mask(tiny_components, image64, schedule):
    """λ = 1 with the exact solver: the pass follows the inversion inside the mask too, so the
    whole image is the round trip; λ between trades the two (further from it as λ falls)."""
    model = make_model(tiny_components, schedule, unit_latents=True, image=image64)
    opts = dataclasses.replace(FAST, loss_space="noisy", solver="closed_form", preservation_weight=1.0)
    one = edit(model, image64, "a blue circle", SOURCE, mask=_box(), options=opts, generator=gen())
    assert torch.allclose(one.latents, one.inversion[:1], atol=1e-5)
    assert np.abs(np.asarray(one.image, float) - np.asarray(one.reconstruction, float)).max() <= 1
    inside = np.asarray(one.mask_image) > 0
    dist = []
    for lam in (0.8, 0.4, 0.0):
        res = edit(model, image64, "a blue circle", SOURCE, mask=_box(), generator=gen(), guidance=one.guidance,
                   options=dataclasses.replace(opts, preservation_weight=lam))  # fmt: skip
        dist.append(np.abs(np.asarray(res.image, float) - np.asarray(one.image, float))[inside].mean())
    assert 0 < dist[0] < dist[1] < dist[2]


def test_two_regions_in_one_call(model, nets, image64):
    """Each region is drawn by its own prompt inside its own mask and, with a condition for it
    alone, its own ControlNet; outside both masks the image is the round trip."""
    left, right = _box(8, 40, 0, 24), _box(24, 56, 40, 64)
    regions = [Region(left, "a blue circle"), Region(right, "a green square")]
    opts = dataclasses.replace(FAST, preservation_weight=0.0)
    two = edit(model, image64, source_prompt=SOURCE, regions=regions, options=opts, generator=gen())
    outside = np.asarray(two.mask_image) == 0
    assert np.array_equal(np.asarray(two.image)[outside], np.asarray(two.reconstruction)[outside])
    assert two.mask.sum() == (left[::4, ::4] + right[::4, ::4] > 0).sum()
    # the second region's prompt draws its guidance inside its mask only; the first's is untouched
    other = [regions[0], Region(right, "a yellow triangle")]
    changed = edit(model, image64, source_prompt=SOURCE, regions=other, options=opts, generator=gen())
    m1, m2 = torch.from_numpy(left[::4, ::4] > 0), torch.from_numpy(right[::4, ::4] > 0)

    def same_guidance(a, b, m):
        return torch.equal(a.guidance_latents[..., m], b.guidance_latents[..., m])

    assert same_guidance(two, changed, m1) and not same_guidance(two, changed, m2)
    diff = np.abs(np.asarray(two.image, float) - np.asarray(changed.image, float)).sum(-1)
    assert diff[24:56, 40:64].mean() > diff[8:40, 0:24].mean()
    # a condition for region 2 alone reaches region 2's guidance only
    cond = [Condition("edge", "auto", region=1)]
    ruled = edit(model, image64, source_prompt=SOURCE, regions=regions, options=opts, generator=gen(),
                 controlnets=[nets["edge"]], conditions=cond)  # fmt: skip
    assert same_guidance(two, ruled, m1) and not same_guidance(two, ruled, m2)
    with pytest.raises(InvalidInputError, match="region 3"):
        edit(model, image64, source_prompt=SOURCE, regions=regions, controlnets=[nets["edge"]],
             conditions=[Condition("edge", "auto", region=2)])  # fmt: skip
    with pytest.raises(InvalidInputError, match="every region needs a mask"):
        edit(model, image64, source_prompt=SOURCE, regions=[Region(None, "a"), Region(left, "b")])
    with pytest.raises(InvalidInputError, match="either regions or prompt"):
        edit(model, image64, "a blue circle", SOURCE, regions=regions)


def test_identity_by_optimisation_alone(tiny_components, image64):
    """λ = 1, full mask, target = source, Adam on ẑ0: the preservation loss alone holds the image."""
    model = make_model(tiny_components, SD_SCHEDULE, unit_latents=True, image=image64)
    opts = MultimodalOptions(
        num_inference_steps=4, optimize_steps=4, grad_steps=10, learning_rate=0.05, preservation_weight=1.0
    )
    full = np.ones((64, 64))
    res = edit(model, image64, SOURCE, SOURCE, mask=full, options=opts, generator=gen())
    plain = edit(model, image64, SOURCE, SOURCE, mask=full, options=dataclasses.replace(opts, grad_steps=0))
    assert psnr(res.image, res.reconstruction) >= 30
    assert psnr(plain.image, plain.reconstruction) < 25  # the random network alone does not reconstruct


# --- T6: optimiser sanity -------------------------------------------------------------------


def test_gradients_reach_only_the_latent(model, nets, image64):
    cn = nets["edge"]
    res = edit(model, image64, "a blue circle", SOURCE, controlnets=[cn], conditions=[Condition("edge", "auto")],
               options=FAST, generator=gen())  # fmt: skip
    for module in (model.unet, model.vae, model.text_encoder, cn):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    steps = [r for r in res.guidance_losses + res.losses if "loss_before" in r]
    assert len(steps) >= 3
    falling = sum(r["loss_after"] < r["loss_before"] for r in steps)
    assert falling >= 0.9 * len(steps)
    assert res.timings["unet_backward_latent_evals"] > 0


# --- T7: no-op hook -------------------------------------------------------------------------


def test_no_optimisation_equals_plain_regeneration(model, nets, image64):
    cn, target = nets["edge"], "a blue circle"
    cond = [Condition("edge", "auto")]
    free = dataclasses.replace(FAST, preservation_weight=0.0)  # λ = 0: nothing ties the pass to the input
    outs = [
        edit(
            model, image64, target, SOURCE, mask=np.ones((64, 64)), controlnets=[cn], conditions=cond, options=o,
            generator=gen(),
        ).latents
        for o in (dataclasses.replace(free, grad_steps=0), dataclasses.replace(free, optimize_steps=0))
    ]  # fmt: skip
    # The plain loop, written out here: invert, then DDIM with CFG and the ControlNet.
    inv = invert_image(model, image64, SOURCE, 4)
    sched = model.scheduler(4)
    emb = model.encode_prompt(["", target]).embeds
    control = image_to_control_tensor(canny_edges(image64), model.device, model.dtype)
    z = inv[-1:]
    with torch.no_grad():
        for t in sched.timesteps:
            zz = torch.cat([z, z])
            down, mid = cn(zz, t, encoder_hidden_states=emb, controlnet_cond=control.expand(2, -1, -1, -1),
                           conditioning_scale=1.0, return_dict=False)  # fmt: skip
            out = model.unet(zz, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample.float()  # fmt: skip
            u, c = out.chunk(2)
            z = sched.step(u + 7.5 * (c - u), t, z)
    assert torch.equal(outs[0], z) and torch.equal(outs[1], z)


# --- T8: closed form ------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.6, 0.2])
@pytest.mark.parametrize("masked", [False, True], ids=["whole-image", "mask"])
def test_noisy_loss_optimum_matches_closed_form(model, lam, masked):
    """The closed-form solver lands on the optimum λ·a + (1−λ)·b of the cells both losses read
    exactly, and leaves the rest; many Adam steps approach it."""
    g = gen(5)
    a, b = torch.randn((1, 4, 16, 16), generator=g), torch.randn((1, 4, 16, 16), generator=g)
    m = torch.zeros((1, 1, 16, 16))
    m[..., 4:10, 3:12] = 1
    sched = model.scheduler(2)
    den = Denoiser(model, model.encode_prompt(["", ""]), 1.0, None, 2)
    targets = Targets(pres=a, pres_traj={0: a}, guid_traj={0: b}, weight=m if masked else None)
    start = torch.randn((1, 4, 16, 16), generator=g)
    expected = lam * a + (1 - lam) * b
    if masked:
        expected = torch.where(m > 0, expected, start)
    noisy = MultimodalOptions(
        num_inference_steps=2, optimize_steps=1, loss_space="noisy", preservation_weight=lam
    )
    exact = dataclasses.replace(noisy, solver="closed_form")
    _, traj, records = optimised_pass(den, sched, start, 0, exact, lam, targets)
    assert torch.allclose(traj[0], expected, atol=1e-6)
    assert records[0]["loss_after"] < records[0]["loss_before"]
    adam = dataclasses.replace(noisy, grad_steps=2000, learning_rate=0.01)
    _, traj_adam, _ = optimised_pass(den, sched, start, 0, adam, lam, targets)
    assert torch.allclose(traj_adam[0], expected, atol=2e-3)


# --- T9: ControlNet plumbing ----------------------------------------------------------------


def test_single_net_in_multi_equals_plain_net(model, nets, image64):
    cond = [Condition("edge", "auto")]
    kw = dict(options=FAST, conditions=cond)
    plain = edit(model, image64, "a blue circle", SOURCE, controlnets=nets["edge"], generator=gen(), **kw)
    multi = edit(model, image64, "a blue circle", SOURCE, controlnets=MultiControlNetModel([nets["edge"]]),
                 generator=gen(), **kw)  # fmt: skip
    none = edit(model, image64, "a blue circle", SOURCE, options=FAST, generator=gen())
    assert torch.equal(plain.latents, multi.latents)
    assert not torch.allclose(plain.latents, none.latents, atol=1e-3)  # the condition matters


def test_main_pass_control_off_leaves_the_condition_to_the_guidance_pass(model, nets, image64):
    box = np.zeros((64, 64))
    box[16:48, 16:48] = 1
    one = dataclasses.replace(FAST, preservation_weight=1.0)  # λ = 1: the guidance image is unused
    off = dataclasses.replace(one, main_pass_control_scale=0.0)
    kw = dict(mask=box, controlnets=nets["edge"], conditions=[Condition("edge", "auto")])
    on_1 = edit(model, image64, "a blue circle", SOURCE, options=one, generator=gen(), **kw)
    off_1 = edit(model, image64, "a blue circle", SOURCE, options=off, generator=gen(), **kw)
    text_1 = edit(model, image64, "a blue circle", SOURCE, options=one, generator=gen(), mask=box)
    assert torch.equal(on_1.guidance.latents, off_1.guidance.latents)  # the guidance pass still uses it
    assert torch.allclose(off_1.latents, text_1.latents, atol=1e-6)  # the main pass does not
    assert not torch.allclose(on_1.latents, off_1.latents, atol=1e-3)
    # a guidance pass made with the control in the main pass serves this setting too
    low = dataclasses.replace(off, preservation_weight=0.0)
    reused = edit(
        model, image64, "a blue circle", SOURCE, options=low, generator=gen(), guidance=on_1.guidance, **kw
    )
    assert not torch.allclose(reused.latents, off_1.latents, atol=1e-3)  # λ 0: towards the guidance image


def test_main_pass_control_scale_weakens_the_condition_in_the_main_pass_only(model, nets, image64):
    box = np.zeros((64, 64))
    box[16:48, 16:48] = 1
    one = dataclasses.replace(FAST, preservation_weight=1.0)
    kw = dict(mask=box, controlnets=nets["edge"], conditions=[Condition("edge", "auto")])
    run = {
        f: edit(model, image64, "a blue circle", SOURCE, generator=gen(), **kw,
                options=dataclasses.replace(one, main_pass_control_scale=f))
        for f in (0.0, 0.5, 1.0)
    }  # fmt: skip
    text = edit(model, image64, "a blue circle", SOURCE, options=one, generator=gen(), mask=box)
    assert all(torch.equal(r.guidance.latents, run[0.0].guidance.latents) for r in run.values())
    assert torch.allclose(run[0.0].latents, text.latents, atol=1e-6)  # scale 0: no condition in the main pass
    assert not torch.allclose(run[0.5].latents, run[0.0].latents, atol=1e-3)
    assert not torch.allclose(run[0.5].latents, run[1.0].latents, atol=1e-3)
    with pytest.raises(InvalidOptionError, match="main_pass_control_scale"):
        MultimodalOptions(main_pass_control_scale=-1)


def test_main_pass_prompt_source_keeps_the_target_prompt_out_of_the_main_pass(model, image64):
    box = np.zeros((64, 64))
    box[16:48, 16:48] = 1
    one = dataclasses.replace(FAST, preservation_weight=1.0)  # λ = 1: the guidance image is unused
    src = dataclasses.replace(one, main_pass_prompt="source")
    edited = edit(model, image64, "a blue circle", SOURCE, mask=box, options=src, generator=gen())
    same = edit(model, image64, SOURCE, SOURCE, mask=box, options=one, generator=gen())
    target = edit(model, image64, "a blue circle", SOURCE, mask=box, options=one, generator=gen())
    assert torch.allclose(edited.latents, same.latents, atol=1e-6)  # denoised with the source prompt
    assert not torch.allclose(edited.guidance.latents, same.guidance.latents, atol=1e-3)  # guidance: target
    assert not torch.allclose(edited.latents, target.latents, atol=1e-3)
    reused = edit(model, image64, "a blue circle", SOURCE, mask=box, generator=gen(), guidance=target.guidance,
                  options=dataclasses.replace(src, preservation_weight=0.0))  # fmt: skip
    assert not torch.allclose(reused.latents, edited.latents, atol=1e-3)  # one guidance pass serves both
    with pytest.raises(InvalidOptionError, match="main_pass_prompt"):
        MultimodalOptions(main_pass_prompt="negative")


def test_second_net_at_scale_zero_changes_nothing(model, nets, image64):
    one = [Condition("edge", "auto", scale=1.0)]
    two = one + [Condition("scribble", "auto", scale=0.0)]
    kw = dict(options=FAST, mask=np.ones((64, 64)))
    a = edit(model, image64, "a blue circle", SOURCE, controlnets=nets, conditions=one, generator=gen(), **kw)
    b = edit(model, image64, "a blue circle", SOURCE, controlnets=nets, conditions=two, generator=gen(), **kw)
    assert torch.allclose(a.latents, b.latents, atol=1e-5)


def test_control_image_reaches_both_cfg_halves(model, nets, image64):
    seen = []
    hook = nets["edge"].register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0].shape[0], kwargs["controlnet_cond"])), with_kwargs=True
    )
    try:
        opts = dataclasses.replace(FAST, grad_steps=0)
        edit(model, image64, "a blue circle", SOURCE, controlnets=[nets["edge"]],
             conditions=[Condition("edge", "auto")], options=opts, mask=np.ones((64, 64)))  # fmt: skip
    finally:
        hook.remove()
    expected = image_to_control_tensor(canny_edges(image64), model.device, model.dtype)
    assert seen and all(batch in (2, 4) for batch, _ in seen)  # CFG halves (of the edit and its anchor)
    for batch, cond in seen:
        assert all(torch.equal(cond[i : i + 1], expected) for i in range(batch))


def test_every_condition_kind_combined_with_text(model, nets, image64, pose_json, tmp_path):
    seg = np.zeros((64, 64, 3), np.uint8)
    seg[:32] = (120, 120, 120)
    seg[32:] = (4, 200, 3)
    Image.fromarray(seg).save(tmp_path / "seg.png")
    canny_edges(image64).save(tmp_path / "edge.png")
    conds = [
        Condition("edge", tmp_path / "edge.png"),
        Condition("scribble", "auto"),
        Condition("pose", pose_json, scale=1.2),
        Condition("seg", tmp_path / "seg.png"),
    ]
    res = edit(model, image64, "a blue circle", SOURCE, controlnets=nets, conditions=conds, options=FAST,
               generator=gen())  # fmt: skip
    assert len(res.control_images) == 4
    assert np.array_equal(np.asarray(res.control_images[0]), np.asarray(canny_edges(image64)))
    assert np.array_equal(np.asarray(res.control_images[3]), seg)
    assert np.isfinite(res.latents.numpy()).all()


def test_condition_images_per_kind(image64, pose_json, tmp_path):
    edge = np.asarray(control_image(Condition("edge", "auto"), image64))
    assert edge.shape == (64, 64, 3) and set(np.unique(edge)) <= {0, 255} and edge.max() == 255
    scribble = np.asarray(control_image(Condition("scribble", "auto"), image64))
    assert (scribble > 0).sum() > (edge > 0).sum()  # strokes are thicker than edges
    photo = control_image(Condition("edge", image64, preprocess=True), image64)
    assert np.array_equal(np.asarray(photo), edge)
    pose = control_image(Condition("pose", pose_json), image64)
    arr = np.asarray(pose)
    assert tuple(arr[12, 32]) == POSE_COLOURS[0]  # the nose joint, drawn in its own colour
    assert arr[60, 5].max() == 0  # background stays black
    pose.save(tmp_path / "skeleton.png")
    assert np.array_equal(
        np.asarray(control_image(Condition("pose", tmp_path / "skeleton.png"), image64)), arr
    )
    # Normalised coordinates and a canvas size scale to the image.
    kp = json.loads(pose_json.read_text())
    kp["canvas_width"], kp["canvas_height"] = 128, 128
    half = np.asarray(control_image(Condition("pose", kp), image64))
    assert tuple(half[6, 16]) == POSE_COLOURS[0]


# --- T10: determinism -----------------------------------------------------------------------


def test_seeded_and_deterministic(model, image64):
    a = edit(model, image64, "a blue circle", SOURCE, options=FAST, generator=gen(1))
    b = edit(model, image64, "a blue circle", SOURCE, options=FAST, generator=gen(1))
    c = edit(model, image64, "a blue circle", SOURCE, options=FAST, generator=gen(2))
    assert torch.equal(a.latents, b.latents) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.guidance_latents, c.guidance_latents)


def test_reused_guidance_pass_gives_the_same_edit_at_another_lambda(model, image64):
    """A λ sweep computes the guidance pass once: reuse must equal recomputing, draw for draw."""
    opts = dataclasses.replace(FAST, preservation_weight=0.2)
    first = edit(model, image64, "a blue circle", SOURCE, options=FAST, generator=gen(1))  # estimated mask
    fresh = edit(model, image64, "a blue circle", SOURCE, options=opts, generator=gen(1))
    reused = edit(
        model, image64, "a blue circle", SOURCE, options=opts, generator=gen(1), guidance=first.guidance
    )
    assert torch.equal(fresh.latents, reused.latents) and torch.equal(fresh.mask, reused.mask)
    assert reused.timings.get("guidance_reused") and not fresh.timings.get("guidance_reused")
    assert not torch.equal(first.latents, fresh.latents)  # λ did change the edit
    assert first.guidance.unet_evals > 0 and first.guidance.unet_backward_evals > 0
    with pytest.raises(InvalidInputError, match="guidance pass"):  # another seed
        edit(model, image64, "a blue circle", SOURCE, options=opts, generator=gen(2), guidance=first.guidance)
    with pytest.raises(InvalidInputError, match="guidance pass"):  # another prompt
        edit(
            model, image64, "a green circle", SOURCE, options=opts, generator=gen(1), guidance=first.guidance
        )


# --- T11: mask estimation -------------------------------------------------------------------


def test_estimated_mask_shape_and_pose_only_edit(model, nets, image64, pose_json):
    res = edit(model, image64, SOURCE, SOURCE, controlnets=[nets["pose"]], conditions=[Condition("pose", pose_json)],
               options=FAST, generator=gen())  # fmt: skip
    assert res.mask_estimated and res.mask.dtype == torch.bool and res.mask.shape == (16, 16)
    assert "text" not in res.mask_parts and res.mask_parts["layout"].any()
    assert res.mask_parts["layout"][3, 8] and not res.mask_parts["layout"][15, 0]  # the skeleton's box
    assert res.mask_image.size == (64, 64)
    text = edit(model, image64, "a blue circle", SOURCE, options=FAST, generator=gen())
    assert text.mask.shape == (16, 16) and set(text.mask_parts) == {"text", "diff"}


def test_empty_estimate_falls_back_to_whole_image(caplog):
    m = estimate_mask({"diff": torch.zeros((16, 16), dtype=torch.bool)}, dilate=True)
    assert m.all() and "empty" in caplog.text
    one = torch.zeros((16, 16), dtype=torch.bool)
    one[5, 5] = True
    assert estimate_mask({"diff": one}, dilate=True).sum() == 9


def test_user_mask_is_used_as_given(model, image64):
    mask = np.zeros((64, 64))
    mask[8:24, 8:24] = 1
    res = edit(
        model, image64, "a blue circle", SOURCE, mask=mask, options=dataclasses.replace(FAST, grad_steps=0)
    )
    assert not res.mask_estimated and int(res.mask.sum()) == 16 and res.mask[2:6, 2:6].all()


# --- errors ---------------------------------------------------------------------------------


def test_condition_input_errors(model, nets, image64, tmp_path):
    small = Image.new("RGB", (32, 32))
    with pytest.raises(InvalidConditionError, match="32x32 but the input image is 64x64"):
        control_image(Condition("edge", small), image64)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match="cannot read edge control image"):
        control_image(Condition("edge", bad), image64)
    cases = {
        "broken.json": "{people: [",
        "short.json": json.dumps({"people": [{"pose_keypoints_2d": [1, 2, 1] * 17}]}),
        "nopeople.json": json.dumps({"persons": []}),
        "nan.json": json.dumps([[float("nan"), 1.0]] * 18),
        "strings.json": json.dumps({"people": [{"pose_keypoints_2d": ["a"] * 54}]}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InvalidConditionError):
            control_image(Condition("pose", tmp_path / name), image64)
    with pytest.raises(InvalidConditionError, match="not found"):
        control_image(Condition("pose", tmp_path / "missing.json"), image64)
    with pytest.raises(DependencyError, match="keypoint JSON"):
        control_image(Condition("pose", image64, preprocess=True), image64)
    with pytest.raises(InvalidConditionError, match="kind"):
        Condition("depth", "x.png")
    with pytest.raises(InvalidConditionError, match="auto"):
        Condition("pose", "auto")
    with pytest.raises(InvalidConditionError, match="start"):
        Condition("edge", "auto", start=0.5, end=0.5)
    with pytest.raises(InvalidInputError, match="one net per condition"):
        edit(model, image64, "x", controlnets=[nets["edge"]], conditions=[Condition("edge", "auto")] * 2)
    with pytest.raises(InvalidInputError, match="need ControlNets"):
        edit(model, image64, "x", conditions=[Condition("edge", "auto")])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        wrong = ControlNetModel.from_unet(model.unet)  # 8x downsampling: an SD net, not for this VAE
    with pytest.raises(InvalidInputError, match="downsamples"):
        edit(model, image64, "x", controlnets=[wrong], conditions=[Condition("edge", "auto")])
    with pytest.raises(InvalidInputError, match="mask is 32x32"):
        edit(model, image64, "x", mask=np.zeros((32, 32)))


def test_option_validation():
    for bad in (
        dict(preservation_weight=1.5),
        dict(optimize_steps=60),
        dict(loss_space="z"),
        dict(solver="lbfgs"),
        dict(solver="closed_form"),  # the closed form exists in noisy space only
        dict(guidance_strength=0.0),
        dict(learning_rate=float("nan")),
        dict(grad_steps=-1),
        dict(control_scale=-1.0),
        dict(mask_estimate=dict(num_maps=3)),
    ):
        with pytest.raises(InvalidOptionError):
            MultimodalOptions(**bad)
    for bad in (dict(num_maps=0), dict(threshold=1.5), dict(clamp_ratio=0.0), dict(dilate="yes")):
        with pytest.raises(InvalidOptionError):
            MaskEstimateOptions(**bad)
    assert MultimodalOptions().strength_for(True) == 1.0 and MultimodalOptions().strength_for(False) == 0.8


# --- loss spaces and memory option ----------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(loss_space="noisy"), dict(loss_space="noisy", solver="closed_form")])
def test_noisy_loss_space_runs_and_optimises(model, image64, kw):
    res = edit(
        model, image64, "a blue circle", SOURCE, options=dataclasses.replace(FAST, **kw), generator=gen()
    )
    steps = [r for r in res.losses if "loss_before" in r]
    assert steps and all(np.isfinite([r["loss_before"], r["loss_after"]]).all() for r in steps)
    assert all(r["loss_after"] < r["loss_before"] for r in steps)


def test_gradient_checkpointing_gives_the_same_edit(model, nets, image64):
    kw = dict(controlnets=[nets["edge"]], conditions=[Condition("edge", "auto")])
    a = edit(model, image64, "a blue circle", SOURCE, options=FAST, generator=gen(), **kw)
    execution = ExecutionOptions(gradient_checkpointing=True)
    b = edit(
        model, image64, "a blue circle", SOURCE, options=FAST, generator=gen(), execution=execution, **kw
    )
    assert torch.allclose(a.latents, b.latents, atol=1e-5)
    assert not model.unet.is_gradient_checkpointing  # restored
