"""The mini-ControlNet recipe, smoke-tested for a few steps on the tiny model."""

import dataclasses

import torch
from diffusers import ControlNetModel
from safetensors.torch import load_file

from regionedit.shapes.train_controlnet import ControlTrainConfig, train_controlnet

CFG = ControlTrainConfig(num_scenes=6, steps=3, batch=2, ckpt_every=2, embedding_channels=(8, 16, 32))


def test_resumed_run_equals_uninterrupted_run(tiny_model, tmp_path):
    whole = train_controlnet(tiny_model, tmp_path / "a", CFG)
    assert train_controlnet(tiny_model, tmp_path / "b", CFG, max_minutes=0) is None  # stops after one step
    resumed = train_controlnet(tiny_model, tmp_path / "b", CFG)
    a = load_file(whole / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "diffusion_pytorch_model.safetensors")
    # Equal up to float rounding (the restored Adam state takes another kernel path: ~1e-8 measured).
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    net = ControlNetModel.from_pretrained(str(whole))
    start = ControlNetModel.from_unet(tiny_model.unet, conditioning_embedding_out_channels=(8, 16, 32))
    moved = any(not torch.equal(p, q) for p, q in zip(net.parameters(), start.parameters(), strict=True))
    assert moved  # the zero convolutions learnt something


def test_scribble_kind_and_model_untouched(tiny_model, tmp_path):
    before = {k: v.clone() for k, v in tiny_model.unet.state_dict().items()}
    cfg = dataclasses.replace(CFG, kind="scribble", steps=1)
    assert (train_controlnet(tiny_model, tmp_path, cfg) / "config.json").exists()
    assert all(torch.equal(before[k], v) for k, v in tiny_model.unet.state_dict().items())
    assert all(not p.requires_grad for p in tiny_model.unet.parameters())


def test_init_from_a_trained_net_starts_from_its_weights(tiny_model, tmp_path):
    first = train_controlnet(tiny_model, tmp_path / "a", CFG)
    a = load_file(first / "diffusion_pytorch_model.safetensors")
    # With no steps to take, the export is the starting point: the given net, or a fresh copy.
    same = train_controlnet(
        tiny_model, tmp_path / "b", dataclasses.replace(CFG, steps=0, init_from=str(first))
    )
    fresh = train_controlnet(tiny_model, tmp_path / "c", dataclasses.replace(CFG, steps=0))
    b = load_file(same / "diffusion_pytorch_model.safetensors")
    c = load_file(fresh / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert not (tmp_path / "b" / "dataset.safetensors").exists()  # nothing to train: no scenes made


def test_init_from_a_missing_folder_says_so(tiny_model, tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="no ControlNet folder"):
        train_controlnet(tiny_model, tmp_path, dataclasses.replace(CFG, init_from=str(tmp_path / "nope")))


def test_a_controlnet_grows_with_its_unet():
    import pytest

    from regionedit.shapes.model import MiniConfig, build_components, load_grown_unet
    from regionedit.shapes.train_controlnet import grow_controlnet

    cfg = MiniConfig(vae_channels=(32, 32, 32), unet_channels=(16, 32, 32), text_width=32)
    small = build_components(cfg, seed=1)["unet"]
    grown = build_components(dataclasses.replace(cfg, image_size=128, unet_plain_levels=1), seed=2)["unet"]
    load_grown_unet(grown, small.state_dict(), 1)
    old = ControlNetModel.from_unet(small, conditioning_embedding_out_channels=(8, 16, 32))
    with torch.no_grad():  # a "trained" net: output convs no longer zero
        for conv in [*old.controlnet_down_blocks, old.controlnet_mid_block]:
            conv.weight.normal_(generator=torch.Generator().manual_seed(3))
    net = grow_controlnet(old, grown)
    a, b = old.state_dict(), net.state_dict()
    assert torch.equal(b["down_blocks.1.resnets.0.conv1.weight"], a["down_blocks.0.resnets.0.conv1.weight"])
    assert torch.equal(b["controlnet_down_blocks.2.weight"], a["controlnet_down_blocks.0.weight"])
    assert torch.equal(b["controlnet_mid_block.weight"], a["controlnet_mid_block.weight"])
    assert torch.equal(
        b["controlnet_cond_embedding.conv_in.weight"], a["controlnet_cond_embedding.conv_in.weight"]
    )
    assert torch.equal(b["conv_in.weight"], grown.state_dict()["conv_in.weight"])
    g = torch.Generator().manual_seed(0)
    z, emb = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    cond = torch.rand(1, 3, 128, 128, generator=g)
    with torch.no_grad():
        down, mid = net(z, 10, encoder_hidden_states=emb, controlnet_cond=cond, return_dict=False)
        assert len(down) == len(net.controlnet_down_blocks) == len(old.controlnet_down_blocks) + 2
        assert down[0].abs().max() == 0 and down[1].abs().max() == 0  # the new level adds nothing yet
        assert down[2].abs().max() > 0
        out = grown(z, 10, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        assert out.sample.shape == z.shape
    with pytest.raises(ValueError, match="levels"):
        grow_controlnet(net, grown)
