"""The method registry: front ends look a method up and never ask which one they hold."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regionedit import methods
from regionedit.cli import main
from regionedit.edit_api import read_metadata
from regionedit.errors import InvalidInputError, InvalidOptionError
from regionedit.method import Method
from regionedit.options import documented, option
from regionedit.prepared import PreparedEdit, read_image

from .test_layers import PACKAGE, compared_strings


@documented
@dataclass(frozen=True)
class IdentityOptions:
    """Options of a method that returns its input."""

    num_inference_steps: int = option(1, flag="steps", help="unused")
    gain: float = option(1.0, help="multiplies every pixel")


@dataclass
class IdentityResult:
    image: Image.Image
    timings: dict


class Identity(Method):
    """A method defined here, as a new method would be: the front ends must take it as it is."""

    name = "identity-test"
    title = "returns the input, scaled by gain"
    options_class = IdentityOptions
    masks_required = False
    caption_required = False

    def prepare(self, request, options, vae_scale_factor, patch_size, model_settings):
        image = read_image(request.image)
        return PreparedEdit(
            self.name, image, (image.height, image.width), (), request.background_prompt, options
        )

    def run(self, model, prepared, generator, progress=True, callback=None, inversion=None):
        pixels = np.clip(np.asarray(prepared.image, np.float32) * prepared.options.gain, 0, 255)
        return IdentityResult(Image.fromarray(pixels.astype(np.uint8)), {"seconds": 0.0})

    def metadata(self, request, prepared) -> dict:
        return {"identity": True}


@pytest.fixture
def identity():
    method = methods.register(Identity())
    try:
        yield method
    finally:
        methods.METHODS.pop(method.name)


def test_a_registered_method_runs_from_the_command_line_and_a_spec(
    identity, tiny_model_dir, tmp_path, image64
):
    image64.save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    argv = ["edit", "--method", identity.name, "--model", str(tiny_model_dir), "--image", str(tmp_path / "in.png"),
            "--prompt", "anything", "--gain", "0.5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert np.array_equal(np.asarray(Image.open(out)), (np.asarray(image64) * 0.5).astype(np.uint8))
    meta = read_metadata(out)
    assert meta["method"] == identity.name and meta["identity"] and meta["options"]["gain"] == 0.5
    spec = {"image": "in.png", "prompts": ["x"], "method": identity.name, "options": {"gain": 0.25},
            "out": str(tmp_path / "spec.png")}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["edit", "--spec", str(tmp_path / "spec.json"), "--model", str(tiny_model_dir)]) == 0
    assert read_metadata(tmp_path / "spec.png")["options"]["gain"] == 0.25


def test_other_methods_flags_are_refused_naming_them(identity, tiny_model_dir, tmp_path, image64, capsys):
    image64.save(tmp_path / "in.png")
    argv = ["edit", "--method", identity.name, "--model", str(tiny_model_dir), "--image", str(tmp_path / "in.png"),
            "--prompt", "x", "--lambda", "0.3", "--control", "edge=auto", "--out", str(tmp_path / "o.png")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--lambda, --control: need the multimodal method; add --method multimodal" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


def test_lookup_and_errors():
    assert methods.get(None) is methods.get("lomoe")
    assert methods.make_options("multimodal", {"steps": 10}).num_inference_steps == 10
    with pytest.raises(InvalidOptionError, match="unknown method 'nope'; choose one of"):
        methods.get("nope")
    with pytest.raises(ValueError, match="new name"):
        methods.register(methods.get("lomoe"))
    with pytest.raises(InvalidInputError, match="controls: need the multimodal method, not lomoe"):
        methods.check_fields(methods.get("lomoe"), ["controls"])


def method_name_checks(root: Path = PACKAGE) -> list[str]:
    """Comparisons with a registered method's name outside the registry and the methods' own files."""
    allowed = {"methods.py", "method.py", "lomoe/method.py", "multimodal/method.py"}
    return compared_strings(root, set(methods.names()), allowed)


def test_no_method_name_comparisons_outside_the_registry(tmp_path):
    assert method_name_checks() == []
    (tmp_path / "bad.py").write_text('def f(m):\n    return m == "multimodal" or m in ("lomoe", "x")\n')
    assert method_name_checks(tmp_path) == ["bad.py:2", "bad.py:2"]
