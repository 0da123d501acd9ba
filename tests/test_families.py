"""The family registry: a family is one class and one registry line, recognised from its files."""

import ast
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import regionedit
from regionedit.models import families
from regionedit.models.interface import Model
from regionedit.models.schedule import InverseSchedule, Schedule
from regionedit.models.sd import StableDiffusion

from .test_layers import PACKAGE, compared_strings


@dataclass(eq=False, kw_only=True)
class CustomFamily(StableDiffusion):
    """A family defined here, as a user would add one: an SD-architecture pipeline of its own class."""

    family = "custom-test"
    display_name = "Custom test"
    pipeline_classes = ("RegionEditCustomPipeline",)


@pytest.fixture
def custom_family():
    families.register(CustomFamily)
    try:
        yield CustomFamily
    finally:
        families.unregister(CustomFamily.family)


def _custom_folder(tiny_model_dir, tmp_path) -> Path:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "custom")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "RegionEditCustomPipeline"}))
    return folder


def test_a_family_registered_from_a_test_file_loads_and_edits(
    custom_family, tiny_model_dir, tmp_path, image64
):
    folder = _custom_folder(tiny_model_dir, tmp_path)
    assert regionedit.describe(folder).family == "custom-test"
    model = regionedit.load(folder)
    assert type(model) is CustomFamily and model.family == "custom-test"
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[8:24, 8:24] = True
    opts = regionedit.LoMOEOptions(num_inference_steps=2, bootstrap_steps=1)
    result = regionedit.edit(model, image64, [regionedit.Region(mask.numpy(), "a blue square")], "a gray background",
                             opts, progress=False)  # fmt: skip
    assert result.image.size == (64, 64)
    assert regionedit.describe(tiny_model_dir).family == "sd"  # the others keep their family


def test_without_the_registration_the_folder_is_plain_stable_diffusion(tiny_model_dir, tmp_path):
    assert regionedit.describe(_custom_folder(tiny_model_dir, tmp_path)).family == "sd"


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="new name"):
        families.register(StableDiffusion)


def test_families_are_told_by_components_and_tensor_names():
    sd = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}
    assert families.family_of(sd, "x").family == "sd"
    assert families.family_of({**sd, "text_encoder_2": "CLIPTextModelWithProjection"}, "x").family == "sdxl"
    flux = {"transformer": "FluxTransformer2DModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
            "text_encoder_2": "T5EncoderModel"}  # fmt: skip
    assert families.family_of(flux, "x").family == "flux"
    sd3 = {**flux, "transformer": "SD3Transformer2DModel", "text_encoder_3": None}  # no T5: still SD3
    assert families.family_of(sd3, "x").family == "sd3"
    with pytest.raises(
        regionedit.ModelLoadError, match=r"transformer model \(PixArt.*supports Stable Diffusion"
    ):
        families.family_of({**flux, "transformer": "PixArtTransformer2DModel"}, "x")
    assert families.family_of_keys(["model.diffusion_model.joint_blocks.0.x"], "f").family == "sd3"
    assert families.family_of_keys(["conditioner.embedders.1.model.x"], "f").family == "sdxl"
    with pytest.raises(regionedit.ModelLoadError, match="not a checkpoint regionedit recognises"):
        families.family_of_keys(["something.else"], "f")


def test_every_familys_schedules_follow_the_protocol(tiny_model):
    from .test_flow import BUILDERS

    models = [tiny_model] + [
        regionedit.models.loading.from_components(build()) for build in BUILDERS.values()
    ]
    for model in models:
        assert isinstance(model.scheduler(4, (8, 8)), Schedule), model.family
        assert isinstance(model.inverse_scheduler(4, (8, 8)), InverseSchedule), model.family


def test_the_model_declares_what_loader_memory_and_editors_read():
    for name in ("pipeline", "modules", "objects", "pipeline_kwargs", "config_fields", "display_name",
                 "denoiser_name", "denoiser_class", "single_file_prefixes", "controlnet_class"):  # fmt: skip
        assert hasattr(Model, name), name
    for name in ("cross_attention_geometry", "cross_attention_layers", "control_input", "control_residuals"):
        assert callable(getattr(Model, name)), name


FAMILY_NAMES = {"sd", "sdxl", "flux", "sd3", "flux2", "qwenimage", "zimage"}
FAMILY_CLASSES = {
    "StableDiffusion",
    "StableDiffusionXL",
    "Flux",
    "StableDiffusion3",
    "FlowTransformer",
    "FlowModel",
    "Flux2Klein",
    "QwenImage",
    "ZImage",
}


def family_checks(root: Path = PACKAGE) -> list[str]:
    """``x == "flux"``-like comparisons and ``isinstance(m, Flux)`` outside the model families' own files."""
    allowed = {
        "models/families.py",
        "models/sd.py",
        "models/sdxl.py",
        "models/flow.py",
        "models/flux2.py",
        "models/qwenimage.py",
        "models/zimage.py",
        "models/interface.py",
    }
    found = compared_strings(root, FAMILY_NAMES, allowed)
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())) if rel not in allowed else ():
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "isinstance"
                and len(node.args) == 2
            ):
                if {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} & FAMILY_CLASSES:
                    found.append(f"{rel}:{node.lineno}")
    return sorted(found)


def test_no_family_checks_outside_the_family_registry(tmp_path):
    assert family_checks() == []
    (tmp_path / "bad.py").write_text('def f(m):\n    return m.family == "flux" or isinstance(m, Flux)\n')
    assert family_checks(tmp_path) == ["bad.py:2", "bad.py:2"]  # the check finds what it looks for
