"""The benchmark runner, baselines and CLI on the tiny random model: plumbing, UNet work
counts against the analytic formula, determinism and resuming after an interruption."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from regionedit.bench import methods
from regionedit.bench.methods import METHODS, MethodConfig, MethodOutput, get_methods
from regionedit.bench.report import markdown_table, sweep_points, write_report
from regionedit.bench.runner import (
    RESULTS,
    item_seed,
    load_results,
    paired,
    run_benchmark,
    summarise,
    work_ratio,
)
from regionedit.errors import InvalidInputError
from regionedit.execution import ExecutionOptions
from regionedit.lomoe.options import LoMOEOptions
from regionedit.multimodal.options import MultimodalOptions
from regionedit.shapes.items import shapes_bench
from regionedit.shapes.judge import Judge

T = 2
# multimodal without a ControlNet here (the shipped one fits the mini model, not the tiny one)
CFG = MethodConfig(
    num_inference_steps=T,
    lomoe=LoMOEOptions(bootstrap_steps=1),
    multimodal=MultimodalOptions(num_inference_steps=T, optimize_steps=1),
    multimodal_control="none",
)


@pytest.fixture(scope="module")
def items():
    return shapes_bench(2, seed=0, min_masks=2, max_masks=2)


@pytest.fixture(scope="module")
def judge():
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Judge().eval()


@pytest.fixture(scope="module")
def full_run(tiny_model, items, judge, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    summary = run_benchmark(
        tiny_model, items, get_methods(list(METHODS)), out, CFG, judge=judge, progress=False
    )
    return out, summary


def test_every_method_writes_a_scored_line(full_run, items):
    out, summary = full_run
    records = load_results(out)
    assert len(records) == len(items) * len(METHODS)
    assert {(r["item"], r["method"]) for r in records} == {(i.id, m) for i in items for m in METHODS}
    for r in records:
        for key in ("accuracy", "bg_psnr", "bg_ssim", "bg_mse", "seam", "seconds", "unet_evals"):
            assert r[key] is not None, (r["method"], key)
        assert 0 <= r["accuracy"] <= 1 and r["seconds"] > 0 and r["peak_memory_mb"] > 0
        assert len(r["verdicts"]) == r["n_masks"]
    for name, m in summary["methods"].items():
        for key in (
            "accuracy",
            "bg_psnr",
            "bg_ssim",
            "seconds_per_edit",
            "unet_evals_per_edit",
            "peak_memory_mb",
        ):
            assert m[key] is not None, (name, key)
    assert (out / "images" / f"{items[0].id}_lomoe.png").exists()
    assert json.loads((out / "summary.json").read_text()) == summary


def test_unet_work_matches_the_analytic_count(full_run):
    # single pass: inversion 1 + reference 2 + (forward, backward = 2 forwards, re-evaluation)
    # on 2(N+1) latents + the reference maps recomputed on 2 = 8(N+1)+5 per step; iterative: N
    # passes at N = 1, 21N per step.
    _, summary = full_run
    n = 2
    lo, it = summary["methods"]["lomoe"], summary["methods"]["iterative"]
    assert lo["unet_work_per_edit"] == T * (8 * (n + 1) + 5)
    assert lo["unet_backward_evals_per_edit"] == T * 2 * (n + 1)
    assert it["unet_work_per_edit"] == T * 21 * n
    (row,) = summary["speed"]
    assert row["unet_work_ratio"] == pytest.approx(work_ratio(n))
    assert summary["methods"]["sdedit"]["unet_evals_per_edit"] == 2 * round(T * CFG.strength_sdedit)


def test_report_table_and_plots(full_run, tmp_path):
    _, summary = full_run
    table = markdown_table(summary)
    for name in METHODS:
        assert f"| {name} |" in table
    assert "21N/(8N+13)" in table
    path = write_report(summary, tmp_path)
    assert path.exists() and (tmp_path / "seconds_per_edit_vs_masks.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["lomoe", "blended", "diffedit", "sdedit"])
def test_methods_are_seeded(tiny_model, items, name):
    import torch

    fn = METHODS[name]
    a = fn(tiny_model, items[0], CFG, torch.Generator().manual_seed(5)).image
    b = fn(tiny_model, items[0], CFG, torch.Generator().manual_seed(5)).image
    assert np.array_equal(a, b)


@pytest.fixture(scope="module")
def edge_net_dir(tiny_model, tmp_path_factory):
    from .test_multimodal import make_controlnet

    path = tmp_path_factory.mktemp("controlnet") / "edge"
    make_controlnet(tiny_model.unet, 0).save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.mark.parametrize("kind", ["edge", "scribble"])
def test_multimodal_uses_the_target_map_through_the_controlnet(tiny_model, edge_net_dir, kind):
    import torch

    from regionedit.multimodal.conditions import canny_edges, scribble_from_image

    item = shapes_bench(1, which="shape", seed=0)[0]
    cfg = dataclasses.replace(CFG, multimodal_control=kind, controlnet=str(edge_net_dir))  # any net fits
    seen = []
    net = methods._controlnet(tiny_model, cfg, kind)
    hook = net.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["controlnet_cond"].clone()), with_kwargs=True
    )
    try:
        with_edges = methods.run_multimodal(tiny_model, item, cfg, torch.Generator().manual_seed(1)).image
    finally:
        hook.remove()
    assert seen, "the ControlNet was never called"
    draw = canny_edges if kind == "edge" else scribble_from_image
    expected = np.asarray(draw(Image.fromarray(item.target_image)), np.float32)[..., 0] / 255
    assert np.allclose(seen[0][0, 0].float().numpy(), expected)
    text_only = methods.run_multimodal(tiny_model, item, CFG, torch.Generator().manual_seed(1)).image
    assert not np.array_equal(with_edges, text_only)


def test_lambda_variants_share_seeds_and_differ_in_lambda(tiny_model, items):
    import torch

    found = get_methods("multimodal@0,multimodal@1")
    assert item_seed(0, "x", "multimodal@0") == item_seed(0, "x", "multimodal@1")
    assert item_seed(0, "x", "multimodal@0") != item_seed(0, "x", "lomoe")
    a = found["multimodal@0"](tiny_model, items[0], CFG, torch.Generator().manual_seed(2)).image
    b = found["multimodal@1"](tiny_model, items[0], CFG, torch.Generator().manual_seed(2)).image
    c = METHODS["multimodal"](tiny_model, items[0], CFG, torch.Generator().manual_seed(2)).image
    assert not np.array_equal(a, b)
    assert not np.array_equal(c, a) and not np.array_equal(c, b)  # default λ = 0.6
    for bad in ("multimodal@x", "multimodal@2", "lomoe@0.5"):
        with pytest.raises(ValueError):
            get_methods(bad)


def test_sweep_reuses_the_guidance_pass_and_reports_full_cost(tiny_model, items):
    from regionedit.bench.runner import evaluate_one

    found = get_methods("multimodal@0,multimodal@1")
    methods._GUIDANCE.clear()
    first = evaluate_one(tiny_model, items[0], "multimodal@0", found["multimodal@0"], CFG)
    second = evaluate_one(tiny_model, items[0], "multimodal@1", found["multimodal@1"], CFG)
    assert methods._GUIDANCE  # the pass was kept for the next variant
    methods._GUIDANCE.clear()
    alone = evaluate_one(tiny_model, items[0], "multimodal@1", found["multimodal@1"], CFG)
    assert np.array_equal(second["_image"], alone["_image"])  # reuse changes nothing
    # the reused pass's work is counted back in: every variant reports a standalone edit's cost
    for key in ("unet_evals", "unet_backward_evals"):
        assert second[key] == alone[key]
    assert first["unet_evals"] < second["unet_evals"]  # λ = 0 skips the steps tied to the input


def _record(item, method, acc, psnr, n_masks=2):
    return {"item": item, "method": method, "n_masks": n_masks, "accuracy": acc, "bg_psnr": psnr,
            "seconds": 1.0, "unet_work": 10}  # fmt: skip


def test_paired_differences_have_known_means_counts_and_intervals():
    recs = []
    for k in range(8):  # lomoe: +0.25 accuracy everywhere; bg PSNR +1 dB on 6 items, -3 dB on 2
        recs += [
            _record(f"i{k}", "lomoe", 0.75, 30.0 + (1 if k < 6 else -3)),
            _record(f"i{k}", "iterative", 0.5, 30.0),
        ]
    recs.append(_record("only-lomoe", "lomoe", 0.0, 10.0))  # unpaired items are left out
    p = paired(recs, "lomoe", "iterative")
    assert p["items"] == 8
    acc = p["accuracy"]
    assert acc["diff"] == pytest.approx(0.25) and acc["ci95"] == pytest.approx([0.25, 0.25])
    assert (acc["better"], acc["worse"]) == (8, 0)
    bg = p["bg_psnr"]
    assert bg["diff"] == pytest.approx(0.0) and (bg["better"], bg["worse"]) == (6, 2)
    assert bg["ci95"][0] < 0 < bg["ci95"][1]  # a mixed sign: the interval straddles zero
    assert paired(recs, "lomoe", "iterative") == p  # seeded: the same interval every time
    assert paired(recs, "lomoe", "blended") is None


def test_summary_and_table_compare_lomoe_with_every_other_method():
    recs = []
    for k in range(4):
        recs += [
            _record(f"i{k}", m, a, 25.0 + k)
            for m, a in (("lomoe", 1.0), ("iterative", 0.5), ("blended", 0.0))
        ]
    summary = summarise(recs)
    assert [p["against"] for p in summary["paired"]] == ["iterative", "blended"]
    table = markdown_table(summary)
    assert "| iterative | 4 | +0.500 [+0.500, +0.500] | 4 / 0 | +0.00 [+0.00, +0.00] | 0 / 0 |" in table
    assert "| blended | 4 | +1.000" in table


def test_sweep_report_plots_accuracy_and_psnr_against_lambda(tmp_path):
    summary = {
        "methods": {
            f"multimodal@{lam}": {
                "n": 3,
                "accuracy": 1 - lam,
                "shape_accuracy": 1 - lam,
                "bg_psnr": 20 + 10 * lam,
            }
            for lam in (0.0, 0.5, 1.0)
        },
        "by_masks": {},
    }
    assert [p[0] for p in sweep_points(summary)["multimodal"]] == [0.0, 0.5, 1.0]
    write_report(summary, tmp_path)
    assert (tmp_path / "multimodal_lambda_sweep.png").stat().st_size > 1000
    assert "multimodal_lambda_sweep.png" in (tmp_path / "report.md").read_text()


class _Counting:
    """A fake method: counts calls, returns the input image, can fail on a chosen call."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, model, item, config, generator):
        self.calls.append(item.id)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise KeyboardInterrupt
        return MethodOutput(item.image.copy())


def test_resume_after_interruption_redoes_nothing(tiny_model, tmp_path):
    items = shapes_bench(4, seed=1, min_masks=2, max_masks=3)
    first = _Counting(fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(tiny_model, items, {"copy": first}, tmp_path, CFG, progress=False)
    assert [r["item"] for r in load_results(tmp_path)] == [i.id for i in items[:2]]
    # a write torn by the kill: the partial line is dropped and its item redone
    with open(tmp_path / RESULTS, "a") as fh:
        fh.write('{"item": "' + items[2].id + '", "meth')
    second = _Counting()
    summary = run_benchmark(tiny_model, items, {"copy": second}, tmp_path, CFG, progress=False)
    assert second.calls == [i.id for i in items[2:]]
    records = load_results(tmp_path)
    assert sorted(r["item"] for r in records) == sorted(i.id for i in items)
    assert summary["methods"]["copy"]["n"] == 4
    assert summary["methods"]["copy"]["bg_psnr"] == 100.0  # the copy changes nothing
    third = _Counting()
    run_benchmark(tiny_model, items, {"copy": third}, tmp_path, CFG, progress=False)
    assert third.calls == []


def test_resume_with_other_settings_is_refused(tiny_model, tmp_path):
    items = shapes_bench(1, seed=1)
    run_benchmark(tiny_model, items, {"copy": _Counting()}, tmp_path, CFG, progress=False)
    other = MethodConfig(num_inference_steps=3)
    with pytest.raises(InvalidInputError, match="other settings"):
        run_benchmark(tiny_model, items, {"copy": _Counting()}, tmp_path, other, progress=False)


def test_run_folders_from_before_a_new_option_still_resume(tiny_model, tmp_path):
    items = shapes_bench(1, seed=1)
    run_benchmark(tiny_model, items, {"copy": _Counting()}, tmp_path, CFG, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["method_config"]["execution"]  # as written before the field existed
    del config["method_config"]["multimodal"]["control_scale"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    again = _Counting()
    run_benchmark(tiny_model, items, {"copy": again}, tmp_path, CFG, progress=False)
    assert again.calls == []
    # the new option at another value is refused
    changed = dataclasses.replace(CFG, execution=ExecutionOptions(chunk_size=1))
    with pytest.raises(InvalidInputError, match="other settings"):
        run_benchmark(tiny_model, items, {"copy": _Counting()}, tmp_path, changed, progress=False)


def test_work_ratio_formula():
    assert work_ratio(1) == pytest.approx(1.0) == work_ratio(1, recompute=False)
    assert work_ratio(7, recompute=False) == pytest.approx(133 / 67)
    assert work_ratio(1000, recompute=False) < 19 / 8
    assert work_ratio(7) == pytest.approx(147 / 69) and work_ratio(1000) < 21 / 8


def test_metrics_read_the_eval_masks_not_the_edit_masks(tiny_model):
    from regionedit.bench.runner import evaluate_one
    from regionedit.shapes.items import shapes_item

    item = shapes_item(0, 1, which="shape", mask_kind="silhouette")
    box, edit = item.eval_masks[0], item.masks[0]

    def paint_box(model, it, cfg, generator):  # changes the box around the outline only
        out = it.image.copy()
        out[box & ~edit] = 255 - out[box & ~edit]
        return MethodOutput(out)

    record = evaluate_one(tiny_model, item, "paint", paint_box, CFG)
    assert record["bg_psnr"] == 100.0 and record["bg_mse"] == 0.0
    item.eval_masks = list(item.masks)  # scored under the outline, the same output loses background
    tight = evaluate_one(tiny_model, item, "paint", paint_box, CFG)
    assert tight["bg_mse"] > 1e-4 and tight["bg_psnr"] < 50


def test_option_changes_in_a_method_name_equal_the_changed_config(tiny_model, items):
    import torch

    from regionedit.bench.methods import base_name

    name = "multimodal[loss_space=noisy;solver=closed_form]@0.3"
    a = get_methods(name)[name](tiny_model, items[0], CFG, torch.Generator().manual_seed(2)).image
    changed = dataclasses.replace(CFG.multimodal, loss_space="noisy", solver="closed_form")
    cfg = dataclasses.replace(CFG, multimodal=changed)
    b = METHODS["multimodal"](tiny_model, items[0], cfg, torch.Generator().manual_seed(2), lam=0.3).image
    assert np.array_equal(a, b)
    c = METHODS["multimodal"](tiny_model, items[0], CFG, torch.Generator().manual_seed(2), lam=0.3).image
    assert not np.array_equal(a, c)  # the change did reach the editor
    assert base_name(name) == "multimodal" == base_name("multimodal@0.3")  # variants share seeds
    for bad in ("sdedit[strength=1]", "multimodal[nope=1]", "multimodal[grad_steps]", "lomoe[feather=x]"):
        with pytest.raises(ValueError):
            get_methods(bad)


def test_a_lomoe_variant_keeps_its_steps_and_guidance(tiny_model, items):
    import torch

    seen = []
    real = methods.run_lomoe

    def spy(model, item, cfg, generator):
        seen.append(cfg.lomoe_options())
        return real(model, item, cfg, generator)

    methods.METHODS["lomoe"] = spy
    try:
        name = "lomoe[guidance_scale=3.0;steps=1]"
        get_methods(name)[name](tiny_model, items[0], CFG, torch.Generator().manual_seed(0))
    finally:
        methods.METHODS["lomoe"] = real
    assert (seen[0].num_inference_steps, seen[0].guidance_scale) == (1, 3.0)
