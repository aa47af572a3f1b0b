"""The benchmark's outputs: `report.json`, `report.md` (tables) and plots (error histograms, example pairs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regress.evaluation.benchmark import EXAMPLE_COLUMNS
from regress.evaluation.encoder_table import markdown as encoder_markdown
from regress.models.previews import colormap_depth, depth_range, preview_grid
from regress.store.files import write_atomic, write_json

HISTOGRAMS = (
    ("depth_absrel", "depth abs-rel"),
    ("depth_absrel_median_scaled", "depth abs-rel, median-scaled"),
    ("latent_l1", "latent L1"),
    ("rerender_psnr", "re-rendered PSNR (dB)"),
    ("rerender_identity_similarity", "re-rendered identity similarity"),
    ("inversion_psnr", "inversion PSNR (dB)"),
)
PER_PAIR_ROWS = 50


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the benchmark's plots need matplotlib: pip install matplotlib") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def markdown(report: dict[str, Any]) -> str:
    """Tables: metrics per section, time per image, the encoder table if any, and the first pairs one by one."""
    lines = [f"# Regressor benchmark on {report['pairs']} pairs", ""]
    for section in ("depth", "latent", "inversion", "timing"):
        if not report.get(section):
            continue
        lines += [f"## {section}", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in report[section].items()]
        lines.append("")
    encoder = report.get("encoder")
    if encoder:
        seeds = encoder["seeds"]
        lines += ["## encoder", "", f"{len(seeds)} held-out seeds ({seeds[0]}-{seeds[-1]}) of the generator, views {encoder['views']}, "
                  "no jitter; latents scored against the true latent's render.", "", encoder_markdown(encoder), ""]  # fmt: skip
    rows = report["per_pair"][:PER_PAIR_ROWS]
    if rows:
        columns = [c for c in rows[0] if c != "source"]
        lines += ["## per pair", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
        if len(report["per_pair"]) > PER_PAIR_ROWS:
            lines.append(f"\n({len(report['per_pair']) - PER_PAIR_ROWS} more pairs in report.json)")
    return "\n".join(lines) + "\n"


def plot_histograms(report: dict[str, Any], path: Path) -> Path:
    """One histogram per per-pair metric present in the report."""
    plt = _pyplot()
    present = [(k, label) for k, label in HISTOGRAMS if any(r.get(k) is not None for r in report["per_pair"])]
    cols = min(3, max(len(present), 1))
    rows = -(-max(len(present), 1) // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.axis("off")
    for ax, (key, label) in zip(axes.flat, present):
        values = [r[key] for r in report["per_pair"] if r.get(key) is not None]
        ax.hist(values, bins=min(20, max(3, len(values))), color="#4477aa")
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("pairs", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def example_grid(tensors: dict[str, torch.Tensor], size: int = 128) -> tuple[np.ndarray, list[str]]:
    """Example pairs as one uint8 grid (H, W, 3), a row per pair, and the names of its columns."""
    columns, names = [], []
    near = far = None
    if "inverted depth" in tensors:
        depth, mask = tensors["inverted depth"][:, :1], tensors["inverted depth"][:, 1:]
        near, far = depth_range(depth, mask)
    for name in EXAMPLE_COLUMNS:
        if name not in tensors:
            continue
        value = tensors[name]
        if name.endswith("depth"):
            value = colormap_depth(value[:, :1], value[:, 1:], near, far)
        columns.append(value)
        names.append(name)
    return preview_grid(columns, size).permute(1, 2, 0).numpy(), names


def plot_examples(tensors: dict[str, torch.Tensor], path: Path, size: int = 128) -> Path:
    """Real photo, inverted image, inverted and predicted depth, and the predicted latent's render, per pair."""
    plt = _pyplot()
    grid, names = example_grid(tensors, size)
    figure = plt.figure(figsize=(1.6 * len(names), 1.6 * grid.shape[0] / size + 0.4))
    ax = figure.add_axes((0, 0, 1, 0.92))
    ax.imshow(grid)
    ax.set_xticks([size * (i + 0.5) for i in range(len(names))], names, fontsize=7)
    ax.xaxis.set_ticks_position("top")
    ax.set_yticks([])
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(report: dict[str, Any], tensors: dict[str, torch.Tensor], output: str | Path) -> dict[str, str]:
    """Write report.json, report.md and plots/ under `output`; their paths."""
    output = Path(output)
    plots = output / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    write_json(output / "report.json", json.loads(json.dumps(report, default=float)))
    write_atomic(output / "report.md", markdown(report).encode())
    paths = {"json": output / "report.json", "markdown": output / "report.md", "histograms": plot_histograms(report, plots / "histograms.png")}
    if tensors:
        paths["examples"] = plot_examples(tensors, plots / "examples.png")
    return {k: str(v) for k, v in paths.items()}
