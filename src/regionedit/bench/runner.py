"""Resumable benchmark runner: one JSON line per (item, method), then a summary.

``DIR/results.jsonl`` is appended and flushed after every edit, so an interrupted run loses
at most the edit in progress; a rerun with the same settings skips every (item, method)
already there. ``DIR/config.json`` pins the settings that change results; resuming with
different ones is refused rather than silently mixing numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..lomoe.editor import background_branch
from ..metrics import attribute_accuracy, image_metrics
from .measure import measure
from .methods import ITERATIVE, ONE_PASS, MethodConfig, base_name

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"
SUMMARY_FIELDS = (
    "accuracy",
    "colour_accuracy",
    "shape_accuracy",
    "bg_psnr",
    "mask_psnr",
    "bg_ssim",
    "bg_mse",
    "seam",
    "clip_target",
    "clip_source",
    "seconds_per_edit",
    "unet_evals_per_edit",
    "unet_backward_evals_per_edit",
    "unet_work_per_edit",
)
_PER_EDIT = {
    "seconds_per_edit": "seconds",
    "unet_evals_per_edit": "unet_evals",
    "unet_backward_evals_per_edit": "unet_backward_evals",
    "unet_work_per_edit": "unet_work",
}


def work_ratio(n: int, recompute: bool = True, k: int = 2, background: bool = True) -> float:
    """UNet work of N single-region LoMOE passes over one N-region pass, per step.

    With ``k`` denoiser batches per branch (2 for CFG, 1 where guidance is distilled), one pass is
    forward + backward (≈ 3 forwards) and a re-evaluation on k(N+1) latents, i.e. 4k(N+1), plus
    inversion (1), reference pass (k) and, when the reference maps are recomputed rather than held,
    one forward on k latents: with k = 2, 8(N+1)+5 (held: 8(N+1)+3) against 21N (19N) for N passes.
    ``background=False``: the background branch is left out (:func:`~regionedit.lomoe.editor.background_branch`), 4kN
    latents instead of 4k(N+1): 13N/(8N+5) with k = 2.
    """
    extra = k if recompute else 0
    b = 1 if background else 0
    one = 4 * k * (n + b) + 1 + k + extra
    return n * (4 * k * (1 + b) + 1 + k + extra) / one


def work_formula(recompute: bool = True, k: int = 2, background: bool = True) -> str:
    extra = k if recompute else 0
    b = 1 if background else 0
    return f"{4 * k * (1 + b) + 1 + k + extra}N/({4 * k}N+{4 * k * b + 1 + k + extra})"


def item_seed(seed: int, item_id: str, method: str) -> int:
    """Seed of one (item, method): independent of run order, so resumed runs match.

    Variants of a method (``multimodal@0.2``, ``multimodal@0.4``) share the seed, so a sweep
    compares them on the same noise.
    """
    return zlib.crc32(f"{seed}/{item_id}/{base_name(method)}".encode())


def load_results(out_dir: Path) -> list[dict]:
    """Records in ``results.jsonl``; a torn last line (killed mid-write) is dropped."""
    path = out_dir / RESULTS
    if not path.exists():
        return []
    records, torn = [], False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    if torn:  # rewrite clean so the next append does not continue a broken line
        log.warning("dropping an incomplete line of %s", path)
        tmp = path.with_name(RESULTS + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(path)
    return records


def complete_items(records: list[dict]) -> list[dict]:
    """The records of items that every method in ``records`` finished (a fair comparison)."""
    methods = {r["method"] for r in records}
    done: dict[str, set] = {}
    for r in records:
        done.setdefault(r["item"], set()).add(r["method"])
    return [r for r in records if done[r["item"]] == methods]


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _with_new_defaults(old: dict) -> dict:
    """``old`` with method-config fields added since it was written, at their defaults."""
    defaults = json.loads(json.dumps(dataclasses.asdict(MethodConfig())))
    mc = old.get("method_config")
    if not isinstance(mc, dict):
        return old
    mc = {**defaults, **mc}
    for key, value in defaults.items():  # nested option dataclasses (lomoe, multimodal)
        if isinstance(value, dict) and isinstance(mc[key], dict):
            mc[key] = {**value, **mc[key]}
    return {**old, "method_config": mc}


def computes_background(out_dir: Path) -> bool:
    """Did LoMOE in the run in ``out_dir`` compute its background branch?"""
    path = out_dir / CONFIG
    config = json.loads(path.read_text()) if path.is_file() else {}
    return background_branch(config.get("method_config", {}).get("lomoe", {}))


def recomputes_reference(out_dir: Path) -> bool:
    """Did the run in ``out_dir`` recompute LoMOE's reference maps (runs made before the
    execution settings existed held them)?"""
    path = out_dir / CONFIG
    config = json.loads(path.read_text()) if path.is_file() else {}
    execution = config.get("method_config", {}).get("execution", {"reference_maps": "device"})
    return execution.get("reference_maps", "device") == "recompute"


def _check_config(out_dir: Path, settings: dict) -> None:
    path = out_dir / CONFIG
    if path.exists():
        old = _with_new_defaults(json.loads(path.read_text()))
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise InvalidInputError(
                f"{out_dir} holds results made with other settings ({', '.join(diff)}); "
                "use a new --out or the same settings to resume"
            )
    else:
        path.write_text(json.dumps(settings, indent=2))


def _finite(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def run_benchmark(
    model,
    items,
    methods: dict,
    out_dir,
    config: MethodConfig | None = None,
    judge=None,
    clip=None,
    seed: int = 0,
    settings: dict | None = None,
    save_images: bool = True,
    progress: bool = True,
) -> dict:
    """Run every method on every item, resuming from ``out_dir``; return the summary.

    Args:
        model: a loaded :class:`regionedit.Model`, shared by all methods.
        items: :class:`BenchItem` list.
        methods: name -> method (see :mod:`regionedit.bench.methods`).
        judge: attribute classifier for items with ``targets``; None skips accuracy.
        clip: optional :class:`ClipScorer`; None skips CLIP scores.
        settings: extra dataset settings pinned in config.json (the method config is added).
    """
    config = config or MethodConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pinned = {
        **(settings or {}),
        "seed": seed,
        "model": getattr(model, "name", "model"),
        "method_config": json.loads(json.dumps(dataclasses.asdict(config))),
    }
    _check_config(out_dir, pinned)
    done = {(r["item"], r["method"]) for r in load_results(out_dir)}
    todo = [(it, name) for it in items for name in methods if (it.id, name) not in done]
    if done:
        log.info("resuming: %d done, %d to go", len(done), len(todo))
    for item, name in tqdm(todo, desc="bench", disable=not progress):
        record = evaluate_one(model, item, name, methods[name], config, judge, clip, seed)
        if save_images:
            img_dir = out_dir / "images"
            img_dir.mkdir(exist_ok=True)
            Image.fromarray(record.pop("_image")).save(img_dir / f"{item.id}_{name}.png")
        record.pop("_image", None)
        _append(out_dir / RESULTS, record)
    records = [r for r in load_results(out_dir) if r["method"] in methods]
    summary = summarise(
        records,
        config.execution.reference_maps == "recompute",
        background_branch(dataclasses.asdict(config.lomoe_options())),
    )
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def evaluate_one(model, item, name, method, config, judge=None, clip=None, seed: int = 0) -> dict:
    """Run one method on one item, measured, and score it."""
    generator = torch.Generator().manual_seed(item_seed(seed, item.id, name))
    with measure(model) as m:
        out = method(model, item, config, generator)
    m.unet_backward_evals = out.unet_backward_evals
    if out.reused is not None:  # count shared work as if this edit had done it alone
        m.seconds += out.reused[0]
        m.unet_evals += out.reused[1]
        m.unet_backward_evals += out.reused[2]
    edited = np.array(out.image, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)
    record = {"item": item.id, "method": name, "n_masks": item.num_masks}
    record.update({k: _finite(v) for k, v in image_metrics(item.image, edited, item.eval_masks).items()})
    if judge is not None and item.targets is not None:
        score = attribute_accuracy(judge, edited, item.eval_masks, item.targets)
        record.update(accuracy=score.both, colour_accuracy=score.colour, shape_accuracy=score.shape)
        record["verdicts"] = [[v.colour, v.shape] for v in score.verdicts]
    if clip is not None:
        record["clip_target"] = clip.score(edited, item.target_caption)
        record["clip_source"] = clip.score(edited, item.source_caption)
    record.update(
        seconds=m.seconds,
        unet_evals=m.unet_evals,
        unet_backward_evals=m.unet_backward_evals,
        unet_work=m.unet_work,
        peak_memory_mb=m.peak_memory_mb,
        memory_kind=m.memory_kind,
        _image=edited,
    )
    return record


def _means(records: list[dict]) -> dict:
    out = {"n": len(records)}
    for key in SUMMARY_FIELDS:
        src = _PER_EDIT.get(key, key)
        vals = [r[src] for r in records if r.get(src) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    mem = [r["peak_memory_mb"] for r in records if r.get("peak_memory_mb") is not None]
    out["peak_memory_mb"] = float(max(mem)) if mem else None
    return out


PAIRED_FIELDS = ("accuracy", "bg_psnr")


def paired(records: list[dict], a: str, b: str, resamples: int = 10_000, seed: int = 0) -> dict | None:
    """Method ``a`` minus method ``b`` on the items both finished, per field of PAIRED_FIELDS.

    Each field gets the mean difference, a 95% percentile bootstrap interval over items (seeded,
    so a report is reproducible) and how many items ``a`` did better or worse on. None when
    the two methods share no item.
    """
    by = {m: {r["item"]: r for r in records if r["method"] == m} for m in (a, b)}
    items = sorted(set(by[a]) & set(by[b]))
    if not items:
        return None
    out = {"method": a, "against": b, "items": len(items)}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(items), size=(resamples, len(items)))
    for field in PAIRED_FIELDS:
        pairs = [(by[a][i].get(field), by[b][i].get(field)) for i in items]
        d = np.array([x - y for x, y in pairs if x is not None and y is not None], dtype=float)
        if len(d) != len(items):  # a field missing on some item: no paired interval
            continue
        means = d[picks].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        out[field] = {
            "diff": float(d.mean()),
            "ci95": [float(lo), float(hi)],
            "better": int((d > 0).sum()),
            "worse": int((d < 0).sum()),
        }
    return out


def summarise(records: list[dict], recompute: bool = True, background: bool = True) -> dict:
    """``{"methods": {name: means}, "by_masks": {name: {N: means}}, "speed": [...], "paired": [...]}``.

    ``speed`` compares LoMOE with the iterative baseline per mask count: measured time and
    UNet-work ratios next to the analytic work ratio (:func:`work_ratio`; ``recompute`` says
    whether the run recomputed LoMOE's reference maps, ``background`` whether LoMOE computed its
    background branch). ``paired`` compares LoMOE with every other
    method item by item (:func:`paired`).
    """
    names = list(dict.fromkeys(r["method"] for r in records))
    summary = {
        "methods": {},
        "by_masks": {},
        "speed": [],
        "paired": [],
        "work_formula": work_formula(recompute, background=background),
    }
    for name in names:
        rs = [r for r in records if r["method"] == name]
        summary["methods"][name] = _means(rs)
        counts = sorted({r["n_masks"] for r in rs})
        summary["by_masks"][name] = {str(n): _means([r for r in rs if r["n_masks"] == n]) for n in counts}
    if ONE_PASS in names and ITERATIVE in names:
        by = summary["by_masks"]
        for n in sorted(set(by[ONE_PASS]) & set(by[ITERATIVE]), key=int):
            lo, it = by[ONE_PASS][n], by[ITERATIVE][n]
            expected = work_ratio(int(n), recompute, background=background)
            time_ratio = it["seconds_per_edit"] / lo["seconds_per_edit"]
            summary["speed"].append(
                {
                    "n_masks": int(n),
                    "time_ratio": time_ratio,
                    "unet_work_ratio": it["unet_work_per_edit"] / lo["unet_work_per_edit"],
                    "expected_work_ratio": expected,
                    "time_ratio_fraction": time_ratio / expected,
                }
            )
    if ONE_PASS in names:  # every other method paired against the one-pass method
        comparisons = (paired(records, ONE_PASS, other) for other in names if other != ONE_PASS)
        summary["paired"] = [c for c in comparisons if c is not None]
    return summary
