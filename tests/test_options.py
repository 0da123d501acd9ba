"""make_options: defaults, then the model's settings, then the user's values; one t_u rule."""

import pytest

from regionedit import ExecutionOptions, LoMOEOptions, MultimodalOptions, make_options
from regionedit.errors import InvalidOptionError
from regionedit.execution import make_execution

MINI_LIKE = {"num_inference_steps": 20, "optimize_steps": 15, "loss_space": "noisy"}


def test_layers_of_values():
    assert make_options("lomoe") == LoMOEOptions()
    opts = make_options("lomoe", {"steps": 10}, {"num_inference_steps": 25, "guidance_scale": 20.0})
    assert (opts.num_inference_steps, opts.guidance_scale) == (10, 20.0)  # the user wins over the model
    given = LoMOEOptions(feather=1.0)
    assert make_options("lomoe", given, {"guidance_scale": 20.0}) is given  # an options object as it is


def test_optimised_steps_keep_their_share_of_the_steps():
    assert make_options("multimodal", {}, MINI_LIKE).optimize_steps == 15
    assert make_options("multimodal", {"steps": 40}, MINI_LIKE).optimize_steps == 30
    assert make_options("multimodal", {"steps": 4}, MINI_LIKE).optimize_steps == 3
    assert make_options("multimodal", {"steps": 20}).optimize_steps == 10  # the method's 25 of 50
    assert make_options("multimodal", {"steps": 40, "optimize_steps": 5}, MINI_LIKE).optimize_steps == 5
    assert make_options("multimodal", {"steps": 1}).optimize_steps == 0


def test_nested_mask_estimate_options_merge():
    opts = make_options(
        "multimodal", {"mask_estimate": {"num_maps": 4}}, {"mask_estimate": {"threshold": 0.3}}
    )
    assert (opts.mask_estimate.num_maps, opts.mask_estimate.threshold) == (4, 0.3)
    assert opts.mask_estimate.clamp_ratio == 3.0


@pytest.mark.parametrize(
    "method, values, fragment",
    [
        ("lomoe", {"nope": 1}, "unknown option 'nope'"),
        ("lomoe", {"steps": 2.5}, "num_inference_steps must be int"),
        ("lomoe", {"paste_back": 1}, "paste_back must be bool"),
        ("multimodal", {"mask_estimate": {"num_maps": "4"}}, "mask_estimate.num_maps"),
        ("multimodal", {"solver": "closed_form"}, "loss_space"),
        ("multimodal", LoMOEOptions(), "takes MultimodalOptions"),
        ("other", {}, "unknown method"),
    ],
)
def test_errors_name_the_option(method, values, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        make_options(method, values)


def test_bad_model_settings_are_named_as_such():
    with pytest.raises(InvalidOptionError, match="model settings"):
        make_options("lomoe", {}, {"guidance": 3})


def test_execution_options():
    assert make_execution({"chunk_size": 2}) == ExecutionOptions(chunk_size=2)
    assert make_execution(None) == ExecutionOptions()
    with pytest.raises(InvalidOptionError, match="gradient_checkpointing"):
        make_execution({"gradient_checkpointing": "yes"})
    assert MultimodalOptions().solver == "adam"  # the method's default is the paper's optimiser
