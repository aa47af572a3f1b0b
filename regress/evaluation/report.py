"""The benchmark's outputs: `report.json`, `report.md` (tables), plots (error histograms, example pairs) and `index.html`
(the example pairs and every score, opened from the folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regress.evaluation.benchmark import EXAMPLE_COLUMNS
from regress.evaluation.encoder_table import markdown as encoder_markdown
from regress.gallery.depth import add_colorbar, colorize_depth, depth_figure_png, depth_range, figure_png, pyplot
from regress.gallery.page import GalleryItem, write_gallery
from regress.sample import encode_image
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
DEPTH_COLUMNS = ("inverted depth", "predicted depth")
GALLERY_FOLDER = "gallery"  # the page's images, beside index.html


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
    plt = pyplot()
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


def _image(tensor: torch.Tensor) -> np.ndarray:
    """One uint8 image (3, H, W) as (H, W, 3) for matplotlib and PNG files."""
    return tensor.permute(1, 2, 0).numpy()


def row_depths(tensors: dict[str, torch.Tensor], row: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """A pair's depth maps, each (name, depth (R, R), mask (R, R)): the inverted one and, when scored, the prediction."""
    return [(name, tensors[name][row, 0], tensors[name][row, 1]) for name in DEPTH_COLUMNS if name in tensors]


def plot_examples(tensors: dict[str, torch.Tensor], path: Path, size: float = 1.6) -> Path:
    """Real photo, inverted image, inverted and predicted depth, and the predicted latent's render, a row per pair;
    the depths of a row on one scale, with its colour bar in world units."""
    plt = pyplot()
    names = [name for name in EXAMPLE_COLUMNS if name in tensors]
    rows = len(tensors[names[0]])
    bar = any(name in DEPTH_COLUMNS for name in names)
    figure, axes = plt.subplots(
        rows, len(names) + bar, figsize=(size * len(names) + 0.9 * bar, size * rows + 0.3), squeeze=False,
        gridspec_kw={"width_ratios": [1.0] * len(names) + [0.06] * bar},
    )  # fmt: skip
    for row in range(rows):
        depths = row_depths(tensors, row)
        near, far = depth_range([depth for _, depth, _ in depths], [mask for _, _, mask in depths]) if depths else (0.0, 1.0)
        for ax, name in zip(axes[row], names):
            value = tensors[name][row]
            ax.imshow(colorize_depth(value[0], value[1], near, far) if name in DEPTH_COLUMNS else _image(value))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=7)
        if bar:
            add_colorbar(figure, axes[row, -1], near, far, label="depth (world units)")
    write_atomic(path, figure_png(figure))
    return path


def write_page(report: dict[str, Any], tensors: dict[str, torch.Tensor], output: Path) -> Path:
    """`index.html`: the example pairs (real crop, inverted image, their depths on one scale with a colour bar, the
    predicted latent's render) with their scores, and the aggregates; every pair's scores stay in report.json/.md."""
    folder = output / GALLERY_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    shown = len(tensors["real"]) if tensors else 0
    items = []
    for row, scores in enumerate(report["per_pair"][:shown]):
        images = []
        for name in (name for name in EXAMPLE_COLUMNS if name in tensors):
            if name not in DEPTH_COLUMNS:
                images.append((name, _write_png(folder / f"{row}-{name.replace(' ', '-')}.png", encode_image(_image(tensors[name][row])))))
            elif not any(caption == "depth" for caption, _ in images):
                images.append(("depth", _write_png(folder / f"{row}-depth.png", depth_figure_png(row_depths(tensors, row)))))
        items.append(GalleryItem(str(scores["key"]), images, scores={k: v for k, v in scores.items() if k not in ("key", "source")}))
    summary = {section: report[section] for section in ("depth", "latent", "inversion", "timing") if report.get(section)}
    figures = {"pairs": report["pairs"], "pairs shown": shown, "every pair's scores": "report.md, report.json"}
    return write_gallery(output, f"Regressor benchmark on {report['pairs']} pairs", items, {**figures, **summary})


def _write_png(path: Path, data: bytes) -> str:
    """Write a PNG beside the page; its path relative to the page's folder."""
    write_atomic(path, data)
    return f"{GALLERY_FOLDER}/{path.name}"


def write_report(report: dict[str, Any], tensors: dict[str, torch.Tensor], output: str | Path) -> dict[str, str]:
    """Write report.json, report.md, plots/ and index.html (with gallery/) under `output`; their paths."""
    output = Path(output)
    plots = output / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    write_json(output / "report.json", json.loads(json.dumps(report, default=float)))
    write_atomic(output / "report.md", markdown(report).encode())
    paths = {"json": output / "report.json", "markdown": output / "report.md", "histograms": plot_histograms(report, plots / "histograms.png")}
    if tensors:
        paths["examples"] = plot_examples(tensors, plots / "examples.png")
    paths["page"] = write_page(report, tensors, output)
    return {k: str(v) for k, v in paths.items()}
