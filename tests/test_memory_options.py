"""Weights that fit: offloading, storage dtypes and quantized denoisers on a tiny random FLUX.

Tolerances are the largest differences from the float32 edit measured over six seeds (model and
edit seed 0..5; docs/models.md), with a margin of about three.
"""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import regionedit
from regionedit import LoMOEOptions, Region
from regionedit.errors import DependencyError, InvalidOptionError, ModelLoadError
from regionedit.models import memory
from regionedit.models.loading import from_components

from .conftest import box_grid, build_flux_components, wide_image

FAST = LoMOEOptions(num_inference_steps=3, bootstrap_steps=2)
CAPTION = "a red square and a blue circle on a gray background"
MASK = box_grid(1, 8, 8, (32, 24), (16, 16))[0]


def _tiny(model):
    model.max_sequence_length = 24  # T5 tokens: small and fast
    return model


def _edit(model):
    return regionedit.edit(
        model, wide_image(3), [Region(MASK, "a green triangle")], CAPTION, FAST, progress=False
    )


def _pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(int)


@pytest.fixture(scope="module")
def plain():
    model = _tiny(from_components(build_flux_components(), name="tiny-flux"))
    return model, _edit(model)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import FluxPipeline

    path = tmp_path_factory.mktemp("flux") / "model"
    FluxPipeline(**build_flux_components()).save_pretrained(str(path), safe_serialization=True)
    return path


def write_gguf(transformer, path, kind: str = "Q8_0"):
    """``transformer``'s weights as a GGUF file: 2-D weights whose rows are whole 32-value blocks
    quantized, the rest float32, under diffusers' names (from_single_file takes them as they are;
    its converter from FLUX's original names assumes FLUX.1's width)."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, kind)
    writer = gguf.GGUFWriter(str(path), "flux")
    for name, tensor in transformer.state_dict().items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gguf_file(folder):
    pytest.importorskip("gguf", reason="the quant extra is not installed: pip install 'regionedit[quant]'")
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(str(folder), subfolder="transformer")
    return write_gguf(transformer, folder.parent / "transformer-Q8_0.gguf")


def test_group_offloading_edits_exactly_as_without(plain):
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    model = _tiny(from_components(build_flux_components(), memory={"offload": "group"}))
    assert all(_is_group_offload_enabled(m) for m in (model.transformer, model.vae, model.text_encoder_2))
    result = _edit(model)
    assert torch.equal(result.latents, plain[1].latents)
    assert np.array_equal(_pixels(result), _pixels(plain[1]))


def test_the_backward_pass_sees_the_weights_the_forward_used(plain, tmp_path):
    """Offloaded to disk, a block's weights are emptied once it has run: autograd must keep the
    data it used (without that, the gradient step reads garbage and the edit blows up)."""
    model = _tiny(from_components(build_flux_components()))
    memory.apply(model, memory.MemoryOptions(offload="group"), offload_to_disk_path=str(tmp_path))
    result = _edit(model)
    assert (result.latents - plain[1].latents).abs().max() < 1e-5  # measured 6e-7
    assert np.abs(_pixels(result) - _pixels(plain[1])).max() <= 1


@pytest.mark.parametrize(
    "storage, latents_bound, pixels_bound",  # measured: latents ≤ 0.016 and ≤ 0.001, mean pixels ≤ 0.45 and ≤ 0.05
    [("float8_e4m3fn", 0.05, 1.5), ("bfloat16", 0.003, 0.15)],
)  # fmt: skip
def test_a_storage_dtype_edits_within_its_tolerance(plain, storage, latents_bound, pixels_bound):
    model = _tiny(from_components(build_flux_components(), memory={"storage_dtype": storage}))
    assert model.transformer.transformer_blocks[0].attn.to_q.weight.dtype == getattr(torch, storage)
    result = _edit(model)
    difference = (result.latents - plain[1].latents).abs().max()
    assert 0 < difference <= latents_bound
    assert np.abs(_pixels(result) - _pixels(plain[1])).mean() <= pixels_bound


def test_a_gguf_denoiser_loads_with_its_config_and_edits_from_the_cli(
    plain, folder, gguf_file, tmp_path, capsys
):
    from regionedit.cli import main

    assert regionedit.describe(str(gguf_file)).family is None  # diffusers' names: the config tells
    with pytest.raises(InvalidOptionError, match="quantized already"):
        regionedit.load(str(gguf_file), config=str(folder), memory={"quantize": "int8"})
    model = _tiny(regionedit.load(str(gguf_file), config=str(folder)))
    assert type(model.transformer.transformer_blocks[0].attn.to_q.weight).__name__ == "GGUFParameter"
    result = _edit(model)
    difference = (result.latents - plain[1].latents).abs().max()
    assert 0 < difference <= 0.01  # measured ≤ 0.0025 (Q4_0: ≤ 0.058)
    assert np.abs(_pixels(result) - _pixels(plain[1])).mean() <= 0.3  # measured ≤ 0.10

    wide_image(3).save(tmp_path / "in.png")
    Image.fromarray(MASK).save(tmp_path / "m.png")
    args = ["edit", "--model", str(gguf_file), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png"),
            "--prompt", "a green triangle", "--background-prompt", CAPTION, "--steps", "2", "--bootstrap-steps", "1"]  # fmt: skip
    assert main(args + ["--model-config", str(folder), "--out", str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (96, 64)
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "none.png")]) == 2  # the rest of the model is missing
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model-config" in err and not (tmp_path / "none.png").exists()


def test_a_gguf_file_in_flux_s_original_names_is_told_by_them(tmp_path):
    gguf = pytest.importorskip("gguf", reason="the quant extra is not installed")
    writer = gguf.GGUFWriter(str(tmp_path / "flux.gguf"), "flux")
    for name in ("double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "img_in.weight"):
        writer.add_tensor(name, np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert regionedit.describe(str(tmp_path / "flux.gguf")).family == "flux"


def test_int8_weights_edit_within_their_tolerance(plain, folder, tmp_path):
    pytest.importorskip("torchao", reason="the quant extra is not installed: pip install 'regionedit[quant]'")
    model = _tiny(regionedit.load(str(folder), memory={"quantize": "int8"}))
    assert type(model.transformer.transformer_blocks[0].attn.to_q.weight).__module__.startswith("torchao")
    result = _edit(model)
    difference = (result.latents - plain[1].latents).abs().max()
    assert 0 < difference <= 0.01  # measured ≤ 0.0029
    assert np.abs(_pixels(result) - _pixels(plain[1])).mean() <= 0.3  # measured ≤ 0.093
    # diffusers quantizes a denoiser loaded alone, not one inside a whole-pipeline single file
    save_file({"cond_stage_model.transformer.weight": torch.zeros(1)}, str(tmp_path / "sd.safetensors"))
    with pytest.raises(ModelLoadError, match="whole pipeline"):
        regionedit.load(str(tmp_path / "sd.safetensors"), memory={"quantize": "int8"})


def _gradient(model) -> torch.Tensor:
    """d mean(prediction²) / d latents, as LoMOE's gradient step takes it through the denoiser."""
    latents = torch.randn(1, 4, 16, 24, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    cond = model.with_guidance(model.encode_prompt([CAPTION]), 3.5)
    t = model.scheduler(3, (16, 24)).timesteps[1]
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(model.predict(latents, t, cond).pow(2).mean(), latents)
    return grad


# ‖grad − grad_float32‖ / ‖grad_float32‖ allowed; measured ≤ 0.041, 0.0023, 0.006, 0.009 over six seeds
GRADIENT_BOUNDS = {
    "group": 0.0,
    "model": 0.0,
    "float8_e4m3fn": 0.12,
    "bfloat16": 0.01,
    "gguf": 0.02,
    "int8": 0.03,
}


@pytest.mark.parametrize("how", list(GRADIENT_BOUNDS))
def test_the_gradient_reaches_the_latents_through_each_mechanism(plain, folder, how, request, tmp_path):
    if how == "gguf":
        model = regionedit.load(str(request.getfixturevalue("gguf_file")), config=str(folder))
    elif how == "int8":
        pytest.importorskip("torchao", reason="the quant extra is not installed")
        model = regionedit.load(str(folder), memory={"quantize": "int8"})
    elif how == "model":  # the accelerator's hooks, exercised on the CPU
        model = from_components(build_flux_components())
        memory.offload_idle(model)
    else:
        key = "offload" if how == "group" else "storage_dtype"
        model = from_components(build_flux_components(), memory={key: how})
    grad, reference = _gradient(_tiny(model)), _gradient(plain[0])
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    assert (grad - reference).norm() <= GRADIENT_BOUNDS[how] * reference.norm()  # exact where the bound is 0


@pytest.mark.parametrize(
    "storage, bound", [("float8_e4m3fn", 0.5), ("bfloat16", 0.05)]
)  # measured ≤ 0.21, ≤ 0.017
def test_a_unet_s_gradient_flows_through_cast_convolutions(storage, bound):
    """A convolution keeps its weight by reference for the backward pass, where layerwise casting
    has put it back in the storage dtype: the gradient must still see the compute-dtype weight."""

    def gradient(model):
        latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        cond, t = model.encode_prompt(["a red square"]), model.scheduler(3).timesteps[1]
        with torch.enable_grad():
            return torch.autograd.grad(model.predict(latents, t, cond).pow(2).mean(), latents)[0]

    cast = regionedit.load("mini", memory={"storage_dtype": storage})
    assert cast.unet.conv_in.weight.dtype == getattr(torch, storage)
    grad, reference = gradient(cast), gradient(regionedit.load("mini"))
    assert 0 < (grad - reference).norm() <= bound * reference.norm()


def test_model_offloading_keeps_one_network_at_a_time_off_the_cpu(plain, caplog):
    with caplog.at_level(logging.INFO, logger="regionedit"):
        model = _tiny(from_components(build_flux_components(), memory={"offload": "model"}))
    assert "does nothing on the CPU" in caplog.text
    model = _tiny(from_components(build_flux_components()))
    mover = memory.offload_idle(model)  # what an accelerator gets
    model.encode(model.image_to_tensor(wide_image(3)))
    assert mover.on is model.vae
    model.encode_prompt(["a blue circle"])
    assert mover.on is model.text_encoder_2  # CLIP ran first, then T5
    _gradient(model)
    assert mover.on is None  # the denoiser has the device to itself
    assert torch.equal(_edit(model).latents, plain[1].latents)


def test_nf4_without_cuda_is_refused_in_one_line(folder, tmp_path, capsys):
    from regionedit.cli import main

    with pytest.raises(InvalidOptionError, match="needs a CUDA device"):
        regionedit.load(str(folder), device="cpu", memory={"quantize": "nf4"})
    wide_image(3).save(tmp_path / "in.png")
    Image.fromarray(MASK).save(tmp_path / "m.png")
    code = main(["edit", "--model", str(folder), "--device", "cpu", "--quantize", "nf4", "--image", str(tmp_path / "in.png"),
                 "--mask", str(tmp_path / "m.png"), "--prompt", "x", "--background-prompt", "y", "--out",
                 str(tmp_path / "out.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "CUDA" in err and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    "values, message",
    [({"offload": "disk"}, "offload must be one of none, model, group"),
     ({"storage_dtype": "float16"}, "storage_dtype must be one of None, float8_e4m3fn, bfloat16"),
     ({"quantize": "int4"}, "quantize must be one of None, int8, nf4"),
     ({"quantise": "int8"}, "unknown option 'quantise'"),
     ({"storage_dtype": "bfloat16", "quantize": "int8"}, "choose one")],
)  # fmt: skip
def test_bad_values_are_refused_in_one_line(values, message):
    with pytest.raises(InvalidOptionError, match=message):
        regionedit.load("mini", memory=values)


def test_what_cannot_be_quantized_or_is_missing_is_said_in_one_line(folder, tmp_path, monkeypatch, capsys):
    from regionedit.cli import main

    with pytest.raises(InvalidOptionError, match="loading from files"):
        from_components(build_flux_components(), memory={"quantize": "int8"})
    real = memory.importlib.util.find_spec
    monkeypatch.setattr(
        memory.importlib.util, "find_spec", lambda name: None if name == "torchao" else real(name)
    )
    with pytest.raises(
        DependencyError, match=r"needs the torchao package: pip install 'regionedit\[quant\]'"
    ):
        regionedit.load(str(folder), memory={"quantize": "int8"})
    with pytest.raises(SystemExit) as exit_:
        main(["mask", "--image", "x.png", "--words", "y", "--out", "o.png", "--storage-dtype", "float16"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--storage-dtype" in err
