"""Model folders: the family is read from the files; settings ship beside model_index.json."""

import json
import shutil
from pathlib import Path

import pytest

from regionedit.cli import main
from regionedit.errors import ModelLoadError
from regionedit.models.loading import MINI_DIR, describe, load


def _folder(tmp_path, tiny_model_dir, index_changes):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(index_changes)
    index = {k: v for k, v in index.items() if v is not None}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_describe_reads_the_factor_and_the_settings(tiny_model_dir, tmp_path):
    info = describe(tiny_model_dir)
    assert (info.family, info.vae_scale_factor, info.settings) == ("sd", 4, {})
    mini = describe("mini")
    assert mini.vae_scale_factor == 4 and mini.settings["lomoe"]["guidance_scale"] == 20.0
    edge = mini.settings["controlnets"]["edge"]  # resolved against the model's folder
    assert (MINI_DIR.parent / "controlnet-mini" / "edge").resolve() == Path(edge)
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (folder / "regionedit_settings.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="settings file"):
        describe(folder)


@pytest.mark.parametrize(
    "changes, family",
    [
        ({"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": None,
          "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}, "SDXL refiner"),
        ({"_class_name": "PixArtAlphaPipeline", "transformer": ["diffusers", "PixArtTransformer2DModel"],
          "unet": None}, "transformer model \\(PixArtTransformer2DModel\\)"),
    ],
)  # fmt: skip
def test_unsupported_families_are_refused_in_one_line(
    tiny_model_dir, tmp_path, capsys, image64, changes, family
):
    folder = _folder(tmp_path, tiny_model_dir, changes)
    with pytest.raises(
        ModelLoadError, match=f"{family}.*supports Stable Diffusion 1.x/2.x, SDXL \\(base\\), FLUX"
    ):
        load(folder)
    image64.save(tmp_path / "in.png")
    code = main(["edit", "--model", str(folder), "--image", str(tmp_path / "in.png"), "--prompt", "x",
                 "--mask", str(tmp_path / "in.png"), "--background-prompt", "y", "--out", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "o.png").exists()


def test_a_family_is_not_told_by_its_name(tiny_model_dir, tmp_path):
    folder = _folder(tmp_path, tiny_model_dir, {"_class_name": "StableDiffusionXLPipeline"})
    assert describe(folder).family == "sd"  # the components say SD 1.x/2.x, whatever the class says
    assert load(folder).family == "sd"
