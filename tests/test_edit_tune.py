"""The mini model's edit-aimed fine-tune, on a tiny random pipeline."""

import pytest
import torch
from safetensors.torch import load_file

import regionedit
from regionedit.cli import main
from regionedit.errors import InvalidOptionError
from regionedit.shapes.edit_tune import EditTuneConfig, edit_tune, export, mix_weights

from .conftest import build_flux_components

CFG = EditTuneConfig(pairs=4, steps=3, batch=2, warmup=2, num_steps=5, max_step=3, ckpt_every=1, mix=0.5)
UNET = "unet/diffusion_pytorch_model.safetensors"


def test_edit_tune_moves_the_unet_and_mixes_it_with_the_base(tmp_path, tiny_model_dir):
    pipe = edit_tune(tmp_path / "run", tiny_model_dir, CFG)
    base, mixed = load_file(tiny_model_dir / UNET), load_file(pipe / UNET)
    tuned = {
        k[5:]: v
        for k, v in load_file(tmp_path / "run" / "ckpt" / "edit_tune.safetensors").items()
        if k.startswith("unet.")
    }
    assert base.keys() == mixed.keys() == tuned.keys()
    assert max((tuned[k] - base[k]).abs().max().item() for k in base) > 0  # training changed it
    for k in base:
        assert torch.allclose(mixed[k], 0.5 * base[k] + 0.5 * tuned[k], atol=1e-6)
    data = load_file(tmp_path / "run" / "data.safetensors")
    assert data["inv"].shape[:2] == (4, 3) and data["box"].shape[0] == 4
    # mix 0 is the base, bit for bit; the other components are the base's
    again = export(tmp_path / "run", tiny_model_dir, 0.0)
    assert all(torch.equal(load_file(again / UNET)[k], base[k]) for k in base)
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert load_file(again / vae).keys() == load_file(tiny_model_dir / vae).keys()


def test_the_flow_family_tunes_its_transformer(tmp_path):
    from diffusers import FluxPipeline

    base = tmp_path / "flux"
    FluxPipeline(**build_flux_components(guidance_embeds=False)).save_pretrained(
        base, safe_serialization=True
    )
    pipe = edit_tune(tmp_path / "run", base, CFG)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    before, mixed = load_file(base / weights), load_file(pipe / weights)
    tuned = load_file(tmp_path / "run" / "ckpt" / "edit_tune.safetensors")
    tuned = {k[len("transformer.") :]: v for k, v in tuned.items() if k.startswith("transformer.")}
    assert before.keys() == mixed.keys() == tuned.keys()
    assert max((tuned[k] - before[k]).abs().max().item() for k in before) > 0
    for k in before:
        assert torch.allclose(mixed[k], 0.5 * before[k] + 0.5 * tuned[k], atol=1e-6)
    assert not (pipe / "unet").exists()
    assert regionedit.load(str(pipe)).family == "flux"


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path, tiny_model_dir):
    full = load_file(edit_tune(tmp_path / "full", tiny_model_dir, CFG) / UNET)
    runs = 0
    while (pipe := edit_tune(tmp_path / "resumed", tiny_model_dir, CFG, max_minutes=0)) is None:
        runs += 1
        assert runs < 5
    assert runs == 2  # stopped after steps 1 and 2
    resumed = load_file(pipe / UNET)
    # Adam magnifies ~1e-9 reload rounding where gradients are near zero (as in test_train)
    assert max((full[k] - resumed[k]).abs().max().item() for k in full) < 1e-3


def test_bad_options_and_mismatched_unets_are_refused(tmp_path, capsys):
    with pytest.raises(InvalidOptionError, match="max_step"):
        EditTuneConfig(max_step=30, num_steps=25)
    with pytest.raises(InvalidOptionError, match="mix"):
        EditTuneConfig(mix=1.5)
    with pytest.raises(InvalidOptionError, match="same parameters"):
        mix_weights({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, 0.5)
    assert main(["tune-mini", "--out", str(tmp_path / "x"), "--mix", "2"]) == 2
    assert "mix must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
