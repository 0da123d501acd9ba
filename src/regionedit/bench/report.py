"""Markdown tables and plots from a benchmark summary (numbers are only ever read, never made)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = (
    ("accuracy", "accuracy", "{:.3f}"),
    ("bg_psnr", "bg PSNR (dB)", "{:.2f}"),
    ("mask_psnr", "mask PSNR (dB)", "{:.2f}"),
    ("bg_ssim", "bg SSIM", "{:.3f}"),
    ("bg_mse", "bg MSE", "{:.5f}"),
    ("seam", "seam", "{:.4f}"),
    ("clip_target", "CLIP target", "{:.2f}"),
    ("seconds_per_edit", "s / edit", "{:.2f}"),
    ("unet_evals_per_edit", "UNet evals / edit", "{:.0f}"),
    ("unet_work_per_edit", "UNet work / edit", "{:.0f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
)


def _fmt(value, spec: str) -> str:
    return "–" if value is None else spec.format(value)


def markdown_table(summary: dict) -> str:
    """One row per method; columns with no value for any method are left out."""
    methods = summary["methods"]
    cols = [c for c in COLUMNS if any(m.get(c[0]) is not None for m in methods.values())]
    lines = [
        "| method | edits | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for name, m in methods.items():
        lines.append(f"| {name} | {m['n']} | " + " | ".join(_fmt(m.get(k), f) for k, _, f in cols) + " |")
    if summary.get("speed"):
        lines += [
            "",
            f"| masks N | iterative / LoMOE time | UNet-work ratio measured | {summary.get('work_formula', '19N/(8N+11)')} "
            "| time / expected |",
            "|---:|---:|---:|---:|---:|",
        ]
        for s in summary["speed"]:
            lines.append(
                f"| {s['n_masks']} | {s['time_ratio']:.2f} | {s['unet_work_ratio']:.2f} | "
                f"{s['expected_work_ratio']:.2f} | {s['time_ratio_fraction']:.0%} |"
            )
    if summary.get("paired"):
        lines += [
            "",
            "| LoMOE against | items | accuracy diff [95% CI] | better / worse | bg PSNR diff (dB) [95% CI] | better / worse |",
            "|---|---:|---|---:|---|---:|",
        ]
        for p in summary["paired"]:
            cells = []
            for field, spec in (("accuracy", "{:+.3f}"), ("bg_psnr", "{:+.2f}")):
                f = p.get(field)
                if f is None:
                    cells += ["–", "–"]
                    continue
                lo, hi = (spec.format(v) for v in f["ci95"])
                cells += [f"{spec.format(f['diff'])} [{lo}, {hi}]", f"{f['better']} / {f['worse']}"]
            lines.append(f"| {p['against']} | {p['items']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None (logged) without the ``bench`` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install regionedit[bench]); skipping plots")
        return None
    return plt


def sweep_points(summary: dict) -> dict[str, list[tuple[float, dict]]]:
    """``{"multimodal": [(λ, means), ...]}`` for methods run as ``name@value``, sorted by value."""
    out: dict[str, list] = {}
    for name, m in summary["methods"].items():
        base, sep, value = name.partition("@")
        if sep:
            out.setdefault(base, []).append((float(value), m))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items() if len(v) > 1}


def plot_sweep(summary: dict, out_dir: str | Path) -> list[Path]:
    """Judge accuracy and background PSNR against λ for each swept method (one PNG each)."""
    sweeps = sweep_points(summary)
    plt = _pyplot() if sweeps else None
    if plt is None:
        return []
    written = []
    for base, pts in sweeps.items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [p[0] for p in pts]
        for key, label, colour in (("accuracy", "judge accuracy", "tab:blue"),
                                   ("shape_accuracy", "shape accuracy", "tab:green")):  # fmt: skip
            ys = [p[1].get(key) for p in pts]
            if all(y is not None for y in ys):
                ax.plot(xs, ys, marker="o", color=colour, label=label)
        ax.set_xlabel("λ (preservation weight)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower left")
        ax2 = ax.twinx()
        ax2.plot(xs, [p[1].get("bg_psnr") for p in pts], marker="s", color="tab:red", label="background")
        inside = [p[1].get("mask_psnr") for p in pts]
        if all(y is not None for y in inside):  # how much of the input the masks keep
            ax2.plot(xs, inside, marker="^", color="tab:purple", label="inside the masks")
            ax2.legend(loc="lower right")
        ax2.set_ylabel("PSNR against the input (dB)", color="tab:red")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(out_dir) / f"{base}_lambda_sweep.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_by_masks(summary: dict, out_dir: str | Path) -> list[Path]:
    """Seconds per edit, accuracy and background PSNR against the number of masks (PNGs).

    Needs matplotlib (the ``bench`` extra); without it, logs why and returns no files.
    """
    plt = _pyplot()
    if plt is None:
        return []
    out_dir = Path(out_dir)
    written = []
    for key, label in (
        ("seconds_per_edit", "seconds per edit"),
        ("accuracy", "judge accuracy"),
        ("bg_psnr", "background PSNR (dB)"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        drawn = False
        for name, per_n in summary["by_masks"].items():
            pts = sorted((int(n), m[key]) for n, m in per_n.items() if m.get(key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("number of masks")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{key}_vs_masks.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_report(summary: dict, out_dir: str | Path, title: str = "Benchmark") -> Path:
    """``DIR/report.md``: the table and the plots."""
    out_dir = Path(out_dir)
    plots = plot_by_masks(summary, out_dir) + plot_sweep(summary, out_dir)
    text = f"# {title}\n\n" + markdown_table(summary)
    text += "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    path = out_dir / "report.md"
    path.write_text(text)
    return path
