"""The mini flow model's recipe: resumable, exported as a FluxPipeline that diffusers and
regionedit load, edits on it."""

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import regionedit
from regionedit.cli import main
from regionedit.shapes.train_flow import FlowConfig, export_flow, shift_sigmas, train_flow

CFG = FlowConfig(num_scenes=16, steps=3, batch=2, ckpt_every=2, warmup_steps=1, width=32, head_dim=16,
                 double_layers=1, single_layers=1)  # fmt: skip


def test_interrupted_flow_training_resumes_and_exports_a_flux_pipeline(tmp_path):
    full = train_flow(tmp_path / "full", CFG)
    runs = 0
    while train_flow(tmp_path / "resumed", CFG, max_minutes=0) is None:
        runs += 1
        assert runs < 5
    assert runs >= 1  # it really stopped and went on
    for part in ("transformer", "text_encoder_2"):
        a = load_file(next((full / part).glob("*.safetensors")))
        b = load_file(next((tmp_path / "resumed" / "pipeline" / part).glob("*.safetensors")))
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    trained = load_file(next((full / "transformer").glob("*.safetensors")))
    index = json.loads((full / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline" and index["transformer"][1] == "FluxTransformer2DModel"
    assert json.loads((full / "training_config.json").read_text())["steps_done"] == 3
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(full))  # diffusers' own pipeline loads it
    assert pipe.transformer.config.guidance_embeds is False
    assert all(torch.isfinite(v).all() for v in trained.values())


def test_a_flow_model_from_the_recipe_edits_and_exports_again(tmp_path):
    out = tmp_path / "run"
    folder = train_flow(out, CFG)
    model = regionedit.load(str(folder))
    assert model.family == "flux" and model.native_size == 128 and model.guidance == "cfg"
    image = Image.fromarray(np.full((128, 128, 3), 120, np.uint8))
    mask = np.zeros((128, 128), bool)
    mask[32:64, 32:64] = True
    options = regionedit.LoMOEOptions(num_inference_steps=2, bootstrap_steps=1)
    result = regionedit.edit(model, image, [regionedit.Region(mask, "a red circle")], "a gray background", options,
                             progress=False)  # fmt: skip
    assert result.image.size == (128, 128)
    again = export_flow(out, tmp_path / "again")
    a, b = (load_file(next((f / "transformer").glob("*.safetensors"))) for f in (folder, again))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flow_flags_reach_the_config_and_unet_flags_are_refused(monkeypatch, tmp_path, capsys):
    seen = {}
    monkeypatch.setattr(
        "regionedit.shapes.train_flow.train_flow", lambda out, cfg, minutes: seen.update(cfg=cfg)
    )
    assert (
        main(
            [
                "train-mini",
                "--family",
                "flow",
                "--out",
                str(tmp_path),
                "--flow-steps",
                "7",
                "--flow-lr",
                "1e-4",
                "--flow-train-shift",
                "2",
            ]
        )
        == 0
    )
    assert (seen["cfg"].steps, seen["cfg"].lr, seen["cfg"].train_shift) == (7, 1e-4, 2.0)
    assert main(["train-mini", "--family", "flow", "--out", str(tmp_path), "--flow-train-shift", "0"]) == 2
    assert "train_shift and sample_shift must be > 0" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"flow": {"steps": 9, "lr": 2e-4, "batch": 3}}))
    assert main(["train-mini", "--family", "flow", "--out", str(tmp_path), "--flow-lr", "3e-4"]) == 0
    assert (seen["cfg"].steps, seen["cfg"].lr, seen["cfg"].batch) == (9, 3e-4, 3)  # the run's own plan
    (tmp_path / "config.json").write_text(json.dumps({"unet": {}}))
    assert main(["train-mini", "--family", "flow", "--out", str(tmp_path)]) == 2
    assert "is not a flow training config" in capsys.readouterr().err
    assert main(["train-mini", "--family", "flow", "--out", str(tmp_path), "--unet-steps", "7"]) == 2
    assert "--unet-steps apply to --family unet only" in capsys.readouterr().err
    assert main(["train-mini", "--out", str(tmp_path), "--flow-steps", "7"]) == 2
    assert main(["train-mini", "--out", str(tmp_path), "--flow-train-shift", "2"]) == 2


def test_the_training_shift_keeps_the_ends_and_moves_sigmas_towards_noise():
    sigma = torch.linspace(0, 1, 11)
    assert torch.equal(shift_sigmas(sigma, 1.0), sigma)
    shifted = shift_sigmas(sigma, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted[1:-1] > sigma[1:-1]).all() and (shifted.diff() > 0).all()
    assert abs(shifted[5].item() - 0.75) < 1e-6  # 3 * 0.5 / (1 + 2 * 0.5)


def test_cached_latents_are_rebuilt_for_other_scenes(tmp_path):
    from dataclasses import replace

    from regionedit.shapes.train_flow import _latents, build_flow_components

    comps = build_flow_components(CFG)
    first, records, _ = _latents(comps, CFG, tmp_path, 128)
    assert len(first) == len(records) == 16
    again, _, _ = _latents(comps, CFG, tmp_path, 128)  # read back from the cache
    assert torch.equal(first, again)
    fewer, records, _ = _latents(comps, replace(CFG, num_scenes=12, max_objects=2), tmp_path, 128)
    assert len(fewer) == len(records) == 12
