import dataclasses

import numpy as np
import pytest
import torch

import regionedit as R
from regionedit.execution import ExecutionOptions

from .conftest import box

OPTS = R.LoMOEOptions(num_inference_steps=4, bootstrap_steps=2)
CAPTION = "a red square and a blue square on a gray background"


@pytest.fixture(scope="module")
def inv(tiny_model, image64):
    return R.invert(tiny_model, image64, CAPTION, R.InversionOptions(num_inference_steps=4), progress=False)


def two_regions():
    return [R.Region(box(4, 28, 4, 28), "a green circle"), R.Region(box(32, 60, 28, 60), "a white triangle")]


def test_null_edit_with_losses_on_reproduces_input_latent(tiny_model, inv):
    res = R.edit(tiny_model, inv, [], options=OPTS, progress=False)
    assert torch.allclose(res.latents, inv.latents[:1], atol=1e-4)


def test_edit_changes_inside_and_reports(tiny_model, inv):
    res = R.edit(tiny_model, inv, two_regions(), options=OPTS, progress=False)
    assert res.image.size == (64, 64)
    assert not torch.allclose(res.latents, inv.latents[:1], atol=1e-3)
    assert res.masks.shape == (3, 16, 16) and len(res.mask_images) == 2
    assert len(res.losses) == 4 and res.losses[0]["cross_attention"] > 0
    # one forward+backward and one forward per step, each on all 2(N+1) latents, when the
    # reference maps are held; recomputing them adds one forward on 2 latents per step
    held = R.edit(tiny_model, inv, two_regions(), options=OPTS, progress=False,
                  execution=ExecutionOptions(reference_maps="device"))  # fmt: skip
    assert held.timings["unet_calls"] == 2 * 4
    assert held.timings["unet_latent_evals"] == 2 * 4 * 6
    assert held.timings["unet_backward_latent_evals"] == 4 * 6
    assert res.timings["unet_calls"] == 3 * 4
    assert res.timings["unet_latent_evals"] == 2 * 4 * 6 + 2 * 4
    assert res.timings["unet_backward_latent_evals"] == 4 * 6


def test_same_seed_bit_identical_and_seed_matters(tiny_model, inv):
    a = R.edit(
        tiny_model,
        inv,
        two_regions(),
        options=OPTS,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    b = R.edit(
        tiny_model,
        inv,
        two_regions(),
        options=OPTS,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    c = R.edit(
        tiny_model,
        inv,
        two_regions(),
        options=OPTS,
        generator=torch.Generator().manual_seed(2),
        progress=False,
    )
    assert torch.equal(a.latents, b.latents)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not torch.equal(a.latents, c.latents)  # the bootstrap colours come from the seed


def test_gradients_reach_the_latents_only(tiny_model, inv):
    seen = []
    R.edit(
        tiny_model,
        inv,
        two_regions(),
        options=OPTS,
        progress=False,
        callback=lambda i, info: seen.append(info["total"]),
    )
    assert all(
        p.grad is None
        for m in (tiny_model.unet, tiny_model.vae, tiny_model.text_encoder)
        for p in m.parameters()
    )
    assert not any(p.requires_grad for p in tiny_model.unet.parameters())
    assert len(seen) == 4 and seen[0] > 0


def test_chunked_gradient_matches_single_batch(tiny_model, inv):
    full = R.edit(tiny_model, inv, two_regions(), options=OPTS, progress=False)
    chunked = R.edit(
        tiny_model, inv, two_regions(), options=OPTS, progress=False, execution=ExecutionOptions(chunk_size=1)
    )
    assert torch.allclose(full.latents, chunked.latents, atol=1e-4)
    assert chunked.timings["unet_calls"] > full.timings["unet_calls"]


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_blended_edits_skip_the_background_branch_and_keep_the_result(
    tiny_model, inv, monkeypatch, chunk_size
):
    from regionedit.lomoe import editor

    opts = dataclasses.replace(OPTS, background_blend=True, bootstrap_steps=2)
    execution = ExecutionOptions(chunk_size=chunk_size)

    def run():
        g = torch.Generator().manual_seed(1)
        return R.edit(
            tiny_model, inv, two_regions(), options=opts, generator=g, progress=False, execution=execution
        )

    skipped = run()
    monkeypatch.setattr(editor, "_background_needed", lambda options, weights: True)
    full = run()
    assert torch.allclose(skipped.latents, full.latents, atol=1e-4)  # batch sizes differ: rounding only
    steps, k = inv.num_steps, tiny_model.guidance_batches
    assert (
        full.timings["unet_backward_latent_evals"] - skipped.timings["unet_backward_latent_evals"]
        == steps * k
    )
    # one latent less in the gradient pass and in the step; chunked, no pre-pass of all 3 branches
    assert full.timings["unet_latent_evals"] - skipped.timings["unet_latent_evals"] == steps * k * (
        5 if chunk_size else 2
    )


def test_soft_masks_keep_the_background_branch():
    from regionedit.lomoe import editor

    hard = torch.zeros(3, 1, 4, 4)
    hard[0, :, :2], hard[1, :, 2:] = 1, 1
    soft = hard.clone()
    soft[0, 0, 1, 1] = 0.5
    blend = R.LoMOEOptions(background_blend=True)
    assert not editor._background_needed(blend, hard)
    assert editor._background_needed(blend, soft)
    assert editor._background_needed(R.LoMOEOptions(), hard)


def test_gradient_checkpointing_gives_the_same_edit(tiny_model, inv):
    full = R.edit(tiny_model, inv, two_regions(), options=OPTS, progress=False)
    checkpointed = R.edit(tiny_model, inv, two_regions(), options=OPTS, progress=False,
                          execution=ExecutionOptions(gradient_checkpointing=True))  # fmt: skip
    assert torch.allclose(full.latents, checkpointed.latents, atol=1e-5)
    assert not tiny_model.unet.is_gradient_checkpointing  # restored


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_many_regions_run(tiny_model, inv, n):
    regions = [
        R.Region(box(16 * (i // 4), 16 * (i // 4) + 12, 16 * (i % 4), 16 * (i % 4) + 12), "a red circle")
        for i in range(n)
    ]
    res = R.edit(
        tiny_model, inv, regions, options=dataclasses.replace(OPTS, num_inference_steps=4), progress=False
    )
    assert res.masks.shape == (n + 1, 16, 16)
    assert torch.isfinite(res.latents).all()
    # the reference maps are shared, not copied per region
    assert all(v.shape[1] == 2 for v in res.inversion.attention.values())


def test_paste_back_keeps_original_pixels_outside(tiny_model, image64):
    opts = dataclasses.replace(OPTS, paste_back=True)
    regions = two_regions()
    res = R.edit(tiny_model, image64, regions, background_prompt=CAPTION, options=opts, progress=False)
    union = regions[0].mask | regions[1].mask
    assert np.array_equal(np.asarray(res.image)[~union], np.asarray(image64)[~union])


def test_background_blend_lands_outside_the_masks_on_the_input_latent(tiny_model, inv):
    regions = two_regions()
    plain = R.edit(tiny_model, inv, regions, options=OPTS, progress=False)
    opts = dataclasses.replace(OPTS, background_blend=True)
    res = R.edit(tiny_model, inv, regions, options=opts, progress=False)
    bg = res.masks[0] == 1
    z0 = inv.latents[0]
    assert torch.equal(res.latents[0][:, bg], z0[:, bg])
    assert not torch.allclose(plain.latents[0][:, bg], z0[:, bg], atol=1e-3)  # the loss alone drifts
    inside = res.masks[0] == 0
    assert not torch.allclose(res.latents[0][:, inside], z0[:, inside], atol=1e-3)


def test_guidance_rescale_acts_on_region_branches_only(tiny_model, image64):
    """The background branch keeps plain CFG (the inversion's offsets are for it), so a null edit
    still lands on the input latent; with regions the rescale changes the edit."""
    # an empty background negative (the default is the caption itself, which makes CFG a no-op)
    inv_opts = R.InversionOptions(num_inference_steps=4)
    inv = R.invert(tiny_model, image64, CAPTION, inv_opts, negative_prompt="", progress=False)
    # no losses: one SGD step through CFG 10 is not exact, which is not what is tested here
    base = dataclasses.replace(OPTS, guidance_scale=10.0, learning_rate=0.0, bootstrap_steps=0)
    opts = dataclasses.replace(base, guidance_rescale=1.0)
    null = R.edit(tiny_model, inv, [], options=opts, progress=False)
    assert torch.allclose(null.latents, inv.latents[:1], atol=1e-4)
    plain = R.edit(tiny_model, inv, two_regions(), options=base, progress=False)
    res = R.edit(tiny_model, inv, two_regions(), options=opts, progress=False)
    inside = res.masks[0] == 0
    assert not torch.allclose(res.latents[0][:, inside], plain.latents[0][:, inside], atol=1e-3)


def test_steps_mismatch_and_missing_caption(tiny_model, inv, image64):
    with pytest.raises(R.InvalidInputError, match="4 steps but the edit asks for 50"):
        R.edit(tiny_model, inv, two_regions(), progress=False)
    with pytest.raises(R.InvalidInputError, match="background_prompt"):
        R.edit(tiny_model, image64, two_regions(), options=OPTS, progress=False)


def test_changed_guidance_recomputes_reference(tiny_model, inv):
    opts = dataclasses.replace(OPTS, guidance_scale=3.0)
    res = R.edit(tiny_model, inv, [], options=opts, progress=False)
    assert res.inversion.guidance_scale == 3.0 and inv.guidance_scale == 7.5
    assert torch.allclose(res.latents, inv.latents[:1], atol=1e-4)


@pytest.mark.parametrize(
    "field,value",
    [
        ("guidance_scale", -1.0),
        ("temperature", 0.0),
        ("learning_rate", float("nan")),
        ("num_inference_steps", 0),
        ("bootstrap_steps", -2),
        ("overlap", "max"),
        ("mask_resize", "area"),
        ("mask_grid", "pixel"),
        ("mask_threshold", 1.5),
        ("background_blend", "yes"),
        ("guidance_rescale", 1.5),
    ],
)
def test_option_errors_name_the_option(field, value):
    with pytest.raises(R.InvalidOptionError, match=field):
        R.LoMOEOptions(**{field: value})


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_chunk_size_errors(value):
    with pytest.raises(R.InvalidOptionError, match="chunk_size"):
        ExecutionOptions(chunk_size=value)


def test_edit_from_image_equals_edit_from_its_inversion(tiny_model, image64):
    """Invert once, edit many: a cached inversion reproduces a fresh edit with the same seed."""
    regions = two_regions()
    opts = dataclasses.replace(OPTS, bootstrap_steps=3)
    fresh = R.edit(
        tiny_model,
        image64,
        regions,
        background_prompt=CAPTION,
        options=opts,
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    inv = R.invert(tiny_model, image64, CAPTION, R.InversionOptions(num_inference_steps=4), progress=False)
    cached = R.edit(
        tiny_model, inv, regions, options=opts, generator=torch.Generator().manual_seed(3), progress=False
    )
    assert torch.equal(fresh.latents, cached.latents)


def test_reference_maps_held_or_recomputed_give_the_same_edit(tiny_model, image64):
    """Where LoMOE keeps its reference attention maps changes memory, never the edit."""
    regions = two_regions()
    results = {}
    for mode in ("recompute", "device", "cpu"):
        results[mode] = R.edit(
            tiny_model, image64, regions, background_prompt=CAPTION, options=OPTS, progress=False,
            execution=ExecutionOptions(reference_maps=mode),
        )  # fmt: skip
    assert torch.equal(results["recompute"].latents, results["device"].latents)
    assert torch.equal(results["recompute"].latents, results["cpu"].latents)
    assert not results["recompute"].inversion.attention  # nothing held across steps
    again = R.edit(tiny_model, results["device"].inversion, regions, options=OPTS, progress=False)
    assert torch.equal(again.latents, results["recompute"].latents) and not again.inversion.attention
    held = results["device"].inversion.attention
    assert held and all(v.shape[0] == OPTS.num_inference_steps for v in held.values())
    # recomputing costs one batch-2 forward per step more
    extra = results["recompute"].timings["unet_latent_evals"] - results["device"].timings["unet_latent_evals"]
    assert extra == 2 * OPTS.num_inference_steps
    with pytest.raises(R.InvalidOptionError, match="reference_maps"):
        ExecutionOptions(reference_maps="disk")


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_reference_bytes_formula_matches_the_held_maps(tiny_model, sdxl_components, image64, family):
    from regionedit.lomoe.memory import reference_bytes
    from regionedit.models.loading import from_components

    model = tiny_model if family == "sd" else from_components(sdxl_components, name="xl")
    image = image64.crop((0, 0, 64, 48))  # not square: 48 x 64
    inv = R.invert(model, image, CAPTION, R.InversionOptions(num_inference_steps=3), store_attention=True,
                   progress=False)  # fmt: skip
    held = sum(v.numel() * v.element_size() for v in inv.attention.values())
    assert held == reference_bytes(model, 48, 64, 3) > 0
    assert len(inv.attention) == len(model.cross_attention_layers())


def test_a_given_inversion_must_fit_and_paste_back_needs_the_original(tiny_model, inv, image64):
    from regionedit import edit_api

    opts = dataclasses.replace(OPTS, paste_back=True)
    with pytest.raises(R.InvalidInputError, match="original"):
        R.edit(tiny_model, inv, two_regions(), options=opts, progress=False)  # refused before any step
    with pytest.raises(R.InvalidInputError, match="original is 32x32"):
        R.edit(tiny_model, inv, two_regions(), options=opts, original=image64.crop((0, 0, 32, 32)))
    res = R.edit(tiny_model, inv, two_regions(), options=opts, original=image64, progress=False)
    outside = ~np.any(np.stack([r.mask for r in two_regions()]), axis=0)
    assert np.array_equal(np.asarray(res.image)[outside], np.asarray(image64)[outside])
    other = image64.crop((0, 0, 64, 48))  # another image: its prepared edit does not fit the inversion
    request = edit_api.EditRequest(image=other, masks=[], prompts=[], background_prompt=CAPTION, options=OPTS)
    with pytest.raises(R.InvalidInputError, match="another image or caption"):
        edit_api.run(tiny_model, request.prepare(tiny_model), progress=False, inversion=inv)


def test_invert_starts_from_the_models_settings(tiny_components, image64):
    from regionedit.models.loading import from_components

    settings = {"lomoe": {"num_inference_steps": 3, "guidance_scale": 5.0, "bootstrap_steps": 1}}
    model = from_components(tiny_components, name="tiny", settings=settings)
    inv = R.invert(model, image64, CAPTION, progress=False)
    assert inv.num_steps == 3 and inv.guidance_scale == 5.0
    res = R.edit(model, inv, two_regions(), progress=False)  # the same settings: no reference pass again
    assert res.inversion.guidance_scale == 5.0 and res.timings["unet_calls"] == 3 * 3
