"""`regionedit bench ...` end to end on the tiny random model saved as a diffusers folder."""

import json

import pytest

from regionedit.cli import main


def test_bench_shapes_runs_resumes_and_reports(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["bench", "shapes", "--model", str(tiny_model_dir), "--n", "2", "--min-masks", "2",
            "--max-masks", "3", "--methods", "lomoe,sdedit", "--steps", "1", "--no-judge",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"lomoe", "sdedit"}
    for key in (
        "accuracy",
        "bg_psnr",
        "bg_ssim",
        "seconds_per_edit",
        "unet_evals_per_edit",
        "peak_memory_mb",
    ):
        assert key in summary["methods"]["lomoe"]
    assert (out / "report.md").exists()
    assert "| lomoe |" in capsys.readouterr().out
    assert main(args) == 0  # resumed: nothing new
    assert (out / "results.jsonl").read_text().splitlines() == lines
    assert main(["bench", "report", str(out)]) == 0


def test_bench_shapes_refuses_bad_ranges(tmp_path, capsys):
    code = main(["bench", "shapes", "--min-masks", "5", "--max-masks", "3", "--no-judge",
                 "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2 and "--min-masks" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    code = main(["bench", "shapes", "--methods", "lomoe,magic", "--no-judge", "--n", "1",
                 "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])  # fmt: skip
    assert code == 2 and "magic" in capsys.readouterr().err
    code = main(["bench", "shapes", "--background-weight", "-1", "--no-judge", "--n", "1",
                 "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "z")])  # fmt: skip
    assert code == 2 and "background_weight" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_bench_edit_and_speed_print_rows(tiny_model_dir, tmp_path, capsys):
    rows_path = tmp_path / "edit.json"
    assert main(["bench", "edit", "--model", str(tiny_model_dir), "--regions", "1,4", "--steps", "1",
                 "--chunk-size", "2", "--out", str(rows_path)]) == 0  # fmt: skip
    rows = json.loads(rows_path.read_text())
    assert [r["n_masks"] for r in rows] == [1, 4]
    # one step: inversion 1 + reference 2 + the reference maps recomputed 2 + 4(N+1) forward
    # latent evaluations; with more than one gradient chunk (N = 4: 5 branches in chunks of 2) the
    # editor first runs every branch without a graph, 2(N+1) more
    assert [r["unet_evals"] for r in rows] == [5 + 4 * 2, 5 + 4 * 5 + 2 * 5]
    assert all(r["chunk_size"] == 2 and r["peak_memory_mb"] > 0 for r in rows)
    speed_path = tmp_path / "speed.json"
    assert main(["bench", "speed", "--model", str(tiny_model_dir), "--size", "64", "--steps", "1",
                 "--masks", "1,2", "--repeats", "2", "--out", str(speed_path)]) == 0  # fmt: skip
    res = json.loads(speed_path.read_text())
    assert [r["n_masks"] for r in res["ratios"]] == [1, 2]
    assert res["ratios"][1]["unet_work_ratio"] == res["ratios"][1]["expected_work_ratio"]
    assert res["repeats"] == 2
    assert "21N/(8N+13)" in capsys.readouterr().out
    # the background blend leaves LoMOE's background branch out, and the analytic count follows
    assert main(["bench", "speed", "--model", str(tiny_model_dir), "--size", "64", "--steps", "1",
                 "--masks", "2", "--background-blend", "--out", str(speed_path)]) == 0  # fmt: skip
    (ratio,) = json.loads(speed_path.read_text())["ratios"]
    assert ratio["unet_work_ratio"] == pytest.approx(ratio["expected_work_ratio"]) == pytest.approx(26 / 21)
    assert "13N/(8N+5)" in capsys.readouterr().out


def test_bench_flags_reach_the_method_config():
    import argparse

    from regionedit.bench import cli as bench_cli

    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["bench", "shapes", "--out", "x", "--bootstrap-steps", "25", "--region-negative-prompt", "",
         "--lambda", "0.2", "--multimodal-control", "none", "--steps", "25", "--background-weight", "10",
         "--cross-attention-weight", "0", "--background-blend", "--temperature", "1.5",
         "--no-regularize-inversion", "--feather", "1",
         "--main-pass-control-scale", "0.5", "--main-pass-prompt", "source", "--loss-space", "noisy", "--grad-steps", "3",
         "--solver", "closed_form", "--mask-estimate-num-maps", "4",
         "--multimodal-learning-rate", "300", "--learning-rate", "0.2", "--chunk-size", "2"]
    )  # fmt: skip
    cfg = bench_cli._options(args, {})
    assert cfg.lomoe.bootstrap_steps == 25 and cfg.lomoe.region_negative_prompt == ""
    assert cfg.lomoe.background_weight == 10 and cfg.lomoe.cross_attention_weight == 0
    assert cfg.lomoe.background_blend is True
    # every LoMOE option has its flag, derived from the dataclass as in `regionedit edit`
    assert cfg.lomoe.temperature == 1.5 and cfg.lomoe.regularize_inversion is False and cfg.lomoe.feather == 1
    assert cfg.multimodal_control == "none"
    opts = cfg.multimodal_options()
    assert opts.preservation_weight == 0.2 and opts.num_inference_steps == 25 and opts.optimize_steps == 12
    assert opts.main_pass_control_scale == 0.5 and opts.mask_estimate.num_maps == 4
    assert opts.main_pass_prompt == "source" and opts.loss_space == "noisy" and opts.grad_steps == 3
    assert opts.solver == "closed_form" and opts.learning_rate == 300 and cfg.lomoe.learning_rate == 0.2
    assert cfg.execution.chunk_size == 2
    defaults = bench_cli._options(parser.parse_args(["bench", "shapes", "--out", "x"]), {})
    assert defaults.lomoe.region_negative_prompt.startswith("artifacts")
    assert defaults.lomoe.background_weight == 1.75 and defaults.lomoe.cross_attention_weight == 1.0
    assert defaults.lomoe.background_blend is False
    assert defaults.multimodal_options().preservation_weight == 0.6
    assert defaults.multimodal_options().main_pass_control_scale == 1.0
    assert defaults.multimodal_options().main_pass_prompt == "target"
    assert defaults.multimodal_options().loss_space == "x0" and defaults.multimodal_options().grad_steps == 5
    assert defaults.multimodal_options().solver == "adam"
    assert defaults.multimodal_options().learning_rate == 1e-2
    # the model's settings are the starting point; flags override them
    mini = {
        "lomoe": {"guidance_scale": 20.0},
        "multimodal": {"num_inference_steps": 20, "optimize_steps": 15},
    }
    started = bench_cli._options(
        parser.parse_args(["bench", "shapes", "--out", "x", "--lambda", "0.3"]), mini
    )
    assert started.lomoe.guidance_scale == 20.0 and started.guidance_scale == 20.0
    assert (started.multimodal.optimize_steps, started.multimodal.preservation_weight) == (15, 0.3)


def test_shards_share_one_run_and_report_counts_finished_items(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["bench", "shapes", "--model", str(tiny_model_dir), "--n", "3", "--min-masks", "1",
            "--max-masks", "2", "--methods", "sdedit,diffedit", "--steps", "1", "--no-judge",
            "--no-images", "--out", str(out)]  # fmt: skip
    assert main([*base, "--shard", "1/2"]) == 0
    items = {json.loads(line)["item"] for line in (out / "results.jsonl").read_text().splitlines()}
    assert items == {"shapes-multi-0-00001"}
    assert main([*base, "--shard", "0/2"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["item"] for r in records}) == [f"shapes-multi-0-0000{i}" for i in range(3)]
    assert len(records) == 6
    # drop one method's record of one item: the report compares methods on the 2 items both finished
    kept = [r for r in records if not (r["item"].endswith("2") and r["method"] == "diffedit")]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    capsys.readouterr()
    assert main(["bench", "report", str(out)]) == 0
    assert "2 items finished by every method" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["sdedit"]["n"] == 2 and summary["methods"]["diffedit"]["n"] == 2
    assert main(["bench", "report", str(out), "--all-items"]) == 0
    assert json.loads((out / "summary.json").read_text())["methods"]["sdedit"]["n"] == 3
    with pytest.raises(SystemExit) as exc:
        main([*base, "--shard", "2/2"])
    assert exc.value.code == 2 and "I/K" in capsys.readouterr().err


def test_lambda_and_solver_flags_reach_the_multimodal_options():
    from regionedit.bench.cli import _options
    from regionedit.cli import build_parser

    args = [
        "bench",
        "shapes",
        "--out",
        "x",
        "--lambda",
        "0.3",
        "--loss-space",
        "noisy",
        "--solver",
        "closed_form",
    ]
    cfg = _options(build_parser().parse_args(args), {})
    assert cfg.multimodal.preservation_weight == 0.3 and cfg.multimodal.solver == "closed_form"
    plain = _options(build_parser().parse_args(["bench", "shapes", "--out", "x"]), {}).multimodal
    assert plain.preservation_weight == 0.6 and plain.solver == "adam"


def test_optimize_steps_and_guidance_strength_flags_reach_the_multimodal_options(capsys):
    from regionedit.bench.cli import _options
    from regionedit.cli import build_parser

    args = ["bench", "shapes", "--out", "x", "--steps", "20"]
    cfg = _options(
        build_parser().parse_args([*args, "--optimize-steps", "20", "--guidance-strength", "0.7"]), {}
    )
    opts = cfg.multimodal_options(0.4)
    assert (opts.optimize_steps, opts.num_inference_steps, opts.guidance_strength) == (20, 20, 0.7)
    assert opts.preservation_weight == 0.4
    plain = _options(build_parser().parse_args(args), {}).multimodal_options()
    assert plain.optimize_steps == 10 and plain.guidance_strength is None  # first half, automatic s_g
    # t_u beyond the steps: one line, exit 2, before any model loads (the path does not exist)
    assert main([*args, "--optimize-steps", "21", "--model", "no/such/model"]) == 2
    assert "use at most 20" in capsys.readouterr().err


def test_silhouette_masks_are_a_pinned_setting(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    base = ["bench", "shapes", "--model", str(tiny_model_dir), "--set", "shape", "--n", "1",
            "--methods", "sdedit", "--steps", "1", "--no-judge", "--out", str(out)]  # fmt: skip
    assert main([*base, "--mask", "silhouette"]) == 0
    assert json.loads((out / "config.json").read_text())["mask"] == "silhouette"
    assert main(base) == 2  # box masks into the same folder would mix two benchmarks


def test_report_into_a_closed_pipe_stops_quietly(tmp_path, monkeypatch, capsys):
    import os

    run = tmp_path / "run"
    run.mkdir()
    record = {"item": "a", "method": "lomoe", "n_masks": 2, "accuracy": 1.0, "bg_psnr": 30.0, "seconds": 1.0}
    (run / "results.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "item": "b"}) + "\n")
    read, write = os.pipe()
    os.close(read)  # the reader has gone, as `| head` does
    with os.fdopen(write, "w", buffering=1) as stream:
        monkeypatch.setattr("sys.stdout", stream)
        assert main(["bench", "report", str(run)]) == 141
    monkeypatch.undo()
    assert "Traceback" not in capsys.readouterr().err
    assert (run / "summary.json").exists()  # the report's files were written before printing
