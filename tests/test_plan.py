"""The memory plan: its peak against the measured peak of live CPU tensors in whole LoMOE edits, its
geometry against the models' own, the chunk size it picks, the budget check before an edit, and the
commands that print it (``regionedit plan``, ``regionedit bench gpu --tiny``)."""

import dataclasses
import logging

import pytest
import torch

import regionedit
from regionedit import ExecutionOptions, LoMOEOptions
from regionedit.bench.architectures import ARCHITECTURES
from regionedit.bench.memory import edit_peak, tensor_peak
from regionedit.bench.plan_cli import shape_for
from regionedit.errors import InvalidOptionError
from regionedit.lomoe.memory import reference_bytes_per_step
from regionedit.models.loading import describe
from regionedit.plan import plan_memory, shape_of_folder, shape_of_model
from regionedit.plan.budget import parse_bytes
from regionedit.plan.geometry import geometry

TOLERANCE = 0.15


@pytest.fixture(scope="module")
def mini():
    return regionedit.load("mini")


@pytest.fixture(scope="module")
def mini_flow():
    return regionedit.load("mini-flow")


def planned_and_measured(model, size, regions, bootstrap, chunk=None, steps=1):
    options = dataclasses.replace(LoMOEOptions(), bootstrap_steps=bootstrap)
    execution = ExecutionOptions(chunk_size=chunk)
    measured = edit_peak(model, size, regions, steps=steps, options=options, execution=execution)
    plan = plan_memory(shape_of_model(model), size, size, regions, dtype="fp32", chunk_size=chunk, steps=steps,
                       bootstrap=bootstrap > 0)  # fmt: skip
    return plan, measured


@pytest.mark.parametrize(
    "name, regions, bootstrap, chunk, phase",
    [
        ("mini", 2, 20, None, "VAE encoding"),  # ten colour images through the VAE
        ("mini", 4, 0, None, "gradient step"),
        ("mini", 4, 0, 2, "gradient step"),
        ("mini-flow", 2, 20, None, "VAE encoding"),
        ("mini-flow", 4, 0, None, "gradient step"),
    ],
)
def test_the_plan_is_within_15_percent_of_the_measured_peak(name, regions, bootstrap, chunk, phase, request):
    model = request.getfixturevalue(name.replace("-", "_"))
    plan, measured = planned_and_measured(model, model.native_size, regions, bootstrap, chunk)
    assert plan.phase == phase
    assert abs(plan.peak / measured - 1) <= TOLERANCE, (plan.peak / 2**20, measured / 2**20, plan.phases)


def _reduced(name: str):
    """SDXL and FLUX.1-dev of their real widths at a reduced depth (bench/random_models.py)."""
    from regionedit.bench.random_models import flux_dev_components, sdxl_base_components, timing_model

    if name == "sdxl":
        components = sdxl_base_components(layers_per_block=1, transformer_layers_per_block=(1, 1, 1))
        return timing_model(components, name="sdxl-reduced")
    model = timing_model(flux_dev_components(num_layers=1, num_single_layers=2), name="flux-reduced")
    model.max_sequence_length = 64  # T5 tokens: the real widths, fewer tokens
    return model


@pytest.mark.slow  # about 50 s each on one core
@pytest.mark.parametrize("name, regions", [("sdxl", 1), ("flux", 3)])
def test_the_plan_holds_at_the_real_widths(name, regions):
    model = _reduced(name)
    plan, measured = planned_and_measured(model, 256, regions, 0)
    assert plan.phase == "gradient step"
    assert abs(plan.peak / measured - 1) <= TOLERANCE, (plan.peak / 2**20, measured / 2**20, plan.phases)


def test_the_geometry_gives_the_models_own_reference_maps(mini, mini_flow):
    for model in (mini, mini_flow):
        shape = shape_of_model(model)
        f = shape.size_factor
        geo = geometry(shape.family, shape.denoiser_config, (128 // f, 96 // f), shape.text_tokens)
        expected = reference_bytes_per_step(model, 128, 96, torch.float32)
        assert shape.guidance_batches * geo.map_values() * 4 == expected


def test_a_folders_configs_give_the_loaded_models_shape(mini_flow):
    info = describe("mini-flow")
    assert shape_of_folder("mini-flow", info.path, info.family) == shape_of_model(mini_flow)


def test_released_architectures_have_their_published_sizes():
    published = {  # billions of denoiser parameters as the model cards give them
        "sd15-random": 0.86, "sdxl-base-random": 2.6, "flux-dev-random": 12, "sd3-medium-random": 2,
        "flux2-klein-4b-random": 4, "flux2-klein-9b-random": 9, "qwen-image-random": 20, "z-image-random": 6,
    }  # fmt: skip
    for name, billions in published.items():
        count = shape_for(name).parameters["denoiser"] / 1e9
        assert abs(count / billions - 1) < 0.05, (name, count)
    assert shape_for("flux-dev-random").guidance_batches == 1
    assert shape_for("qwen-image-random").size_factor == shape_for("flux2-klein-4b-random").size_factor == 16


def test_layerwise_casting_keeps_the_compute_weights_through_the_backward_pass():
    """Float8 storage: the weights a forward pass used stay alive in its graph, in the compute dtype."""
    from diffusers import FluxTransformer2DModel

    from regionedit.bench.denoiser_step import step_call
    from regionedit.models.memory import keep_saved_tensors

    def gradient_peak(storage):
        torch.manual_seed(0)
        net = FluxTransformer2DModel(in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=64,
                                     num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
                                     axes_dims_rope=(16, 24, 24)).requires_grad_(False)  # fmt: skip
        cast = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        linear = sum(m.weight.numel() for m in cast) * 4
        if storage:
            net.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
            keep_saved_tensors(net)
        z, call = step_call("flux", net, 1, 64, 64, 8)
        leaf = z.requires_grad_(True)
        return tensor_peak(lambda: torch.autograd.grad(call(leaf).square().sum(), leaf))[1], linear

    plain, linear = gradient_peak(False)
    cast, _ = gradient_peak(True)
    assert cast - plain > 0.8 * linear  # the float32 copies of the linear layers' weights, held


def test_the_chunk_size_is_the_largest_that_fits():
    shape = shape_for("flux-dev-random")
    one, every = (plan_memory(shape, 1024, 1024, 4, chunk_size=c).peak for c in (1, 5))
    budget = (one + every) // 2
    plan = plan_memory(shape, 1024, 1024, 4, max_memory=budget)
    assert plan.fits and plan.peak <= budget and 1 <= plan.chunk_size < 5
    assert plan_memory(shape, 1024, 1024, 4, chunk_size=plan.chunk_size + 1).peak > budget
    tight = plan_memory(shape, 1024, 1024, 4, max_memory=one - 1)
    assert not tight.fits and tight.chunk_size == 1 and "does not fit even at chunk 1" in tight.advice
    assert "offload=" in tight.advice


def test_offloading_and_storage_move_the_weights():
    shape = shape_for("qwen-image-random")
    plans = {
        k: plan_memory(shape, 1024, 1024, 1, chunk_size=1, offload=k) for k in ("none", "model", "group")
    }
    assert plans["none"].peak > plans["model"].peak > plans["group"].peak
    fp8 = plan_memory(shape, 1024, 1024, 1, chunk_size=1, storage="float8_e4m3fn", bootstrap=False)
    plain = plan_memory(shape, 1024, 1024, 1, chunk_size=1, bootstrap=False)
    assert fp8.weights["denoiser"] * 2 == plain.weights["denoiser"]
    assert fp8.phase == "gradient step" and fp8.peak > plain.peak  # the backward holds both copies


def test_byte_budgets_parse_and_bad_ones_are_refused():
    assert parse_bytes("24GB") == parse_bytes("24 GiB") == 24 * 2**30
    assert parse_bytes("512mb") == 512 * 2**20 and parse_bytes(1000) == 1000
    for bad in ("24 parsecs", "GB", "-1GB"):
        with pytest.raises(InvalidOptionError, match="max_memory"):
            ExecutionOptions(max_memory=bad)


def test_an_edit_over_its_budget_warns_and_takes_a_chunk_that_fits(mini, caplog):
    from regionedit.bench.speed import grid_item

    item = grid_item(3, 128, factor=mini.size_factor)
    regions = [regionedit.Region(m, p) for m, p in zip(item.masks, item.prompts, strict=True)]
    options = LoMOEOptions(num_inference_steps=1, bootstrap_steps=0)
    shape = shape_of_model(mini)
    chunk_two = plan_memory(shape, 128, 128, 3, dtype="fp32", chunk_size=2, steps=1, bootstrap=False).peak

    def run(budget):
        return regionedit.edit(mini, _pil(item.image), regions, item.source_caption, options, progress=False,
                               execution=ExecutionOptions(max_memory=budget))  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="regionedit"):
        fitted = run(f"{chunk_two}")
    assert not [r for r in caplog.records if "budget" in r.getMessage()]
    whole = run(None)
    assert fitted.timings["unet_calls"] > whole.timings["unet_calls"]  # chunks of 2 of the 4 branches
    with caplog.at_level(logging.WARNING, logger="regionedit"):
        run("1MB")
    assert any("over the 0.0 GiB budget" in r.getMessage() for r in caplog.records)


def _pil(array):
    from PIL import Image

    return Image.fromarray(array)


def test_regionedit_plan_prints_the_parts_and_the_chunk_that_fits(capsys):
    from regionedit.cli import main

    args = [
        "plan",
        "--model",
        "flux2-klein-4b-random",
        "--size",
        "1024x768",
        "--regions",
        "4",
        "--max-memory",
        "40GB",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "weights: text_encoder" in out and "gradient step, chunk size" in out and "**peak**" in out
    assert "fits 40.0 GiB at chunk size" in out or "does not fit even at chunk 1" in out
    assert main(["plan", "--model", "flux2-klein-4b-random", "--size", "1000x1000"]) == 2


def test_every_architecture_plans_from_its_configs():
    for name in ARCHITECTURES:
        plan = plan_memory(shape_for(name), 1024, 1024, 8)
        assert plan.peak > sum(plan.weights.values()) and plan.backward > 0


def test_the_gpu_benchmark_runs_end_to_end_in_tiny_mode(tmp_path, capsys):
    from regionedit.cli import main

    out = tmp_path / "gpu.md"
    args = ["bench", "gpu", "--tiny", "--models", "flux2-klein-4b-random,sdxl-base-random", "--modes", "none,fp8",
            "--regions", "1", "--repeats", "1", "--steps", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| flux2") or line.startswith("| sdxl")]
    assert len(rows) == 2 * 2 * 2  # two models, two settings, the pipeline step and LoMOE at one region
    assert "| mini | fp8 | 1 | editor |" in table and "| mini-flow | none | 1 | editor |" in table
    assert (tmp_path / "gpu.json").is_file()


def test_regionedit_plan_says_nothing_else(tmp_path):
    """A fresh process: the libraries the planner imports (transformers, torchao where installed) stay quiet."""
    import subprocess
    import sys

    args = ["plan", "--model", "qwen-image-random", "--size", "512x512"]
    done = subprocess.run([sys.executable, "-m", "regionedit.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0 and "**peak**" in done.stdout and done.stderr == ""
