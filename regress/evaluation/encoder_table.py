"""The encoder table: a latent regressor as the start of inversion, against projection, on held-out seeds.

Held-out seeds are rendered without jitter, then inverted from the mean latent, by the regressor,
by the regressor + k projection steps (the refine config, for each k) and by projection from the
mean latent (each k, and N steps). Each latent is re-rendered and scored against the true latent's
render at the sample's camera and at the novel views (ImageMetrics), with its time per image.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch

from regress.camera import ViewMixture
from regress.evaluation.encoder import Encoder
from regress.generators.base import Generator
from regress.inversion.project import REFINE, ProjectionConfig, project
from regress.models.metrics import ImageMetrics
from regress.runtime import timed
from regress.sample import Batch, image_to_float

HELD_OUT_START = 10_000  # above the default validation seeds [0, 64), far below the training seeds (>= 2**62)
MEAN_LATENT, REGRESSOR = "mean latent", "regressor"  # where a row's inversion starts
HEADER = "| method | steps | PSNR (dB) | SSIM | novel-view PSNR (dB) | novel-view SSIM | depth L1 | time per image (ms) |"


def score(generator: Generator, w: torch.Tensor, batch: Batch) -> dict[str, float]:
    """ImageMetrics of latents `w` against the batch's true latents: PSNR, SSIM, novel-view PSNR / SSIM, depth L1."""
    metric = ImageMetrics().to(generator.device)
    metric.update(generator, w, batch["w"], batch["camera"])
    return {k: float(v) for k, v in metric.compute().items()}


def table_row(method: str, start: str, steps: int, scores: dict[str, float], seconds: float, images: int) -> dict[str, Any]:
    """One row: how the latents were found (start, projection steps), their scores, and milliseconds per image."""
    return {"method": method, "start": start, "steps": steps, **scores, "ms_per_image": 1000 * seconds / images}


def encoder_table(
    generator: Generator,
    encoder: Encoder | None,
    seeds: Sequence[int],
    views: str = "published",
    psi: float = 0.7,
    k: Sequence[int] = (5, 10, 20, 40),
    steps: int = 200,
    refine: ProjectionConfig = REFINE,
    projection: ProjectionConfig = ProjectionConfig(),
    report: Callable[[dict[str, Any]], None] = lambda row: None,
) -> dict[str, Any]:
    """The table's settings, rows and catch-up summary on `seeds`; without an encoder only the mean latent and projection.

    `refine` projects from the encoder's prediction (k steps each), `projection` from the mean
    latent (k and `steps` steps); both with their own step counts replaced. `report` sees each row
    as soon as it is scored, so a long table shows its progress and a cut-short one its rows.
    """
    batch = generator.sample(seeds, ViewMixture.load(views), psi=psi, jitter=False)
    target, images, device = image_to_float(batch["image"]), len(seeds), generator.device

    def projected(init: torch.Tensor | None, config: ProjectionConfig, count: int) -> tuple[torch.Tensor, float]:
        return timed(lambda: project(generator, target, batch["camera"], dataclasses.replace(config, steps=count), init=init).w, device)

    projected(None, projection, 1)  # warm-up: first calls pay for allocations and kernel choice
    mean = generator.mean_latent()[None].expand_as(batch["w"]).to(batch["w"])
    rows: list[dict[str, Any]] = []

    def add(method: str, start: str, count: int, w: torch.Tensor, seconds: float) -> None:
        rows.append(table_row(method, start, count, score(generator, w, batch), seconds, images))
        report(rows[-1])

    add(MEAN_LATENT, MEAN_LATENT, 0, mean, 0.0)
    if encoder is not None:
        encoder(batch["image"])  # warm-up
        predicted, seconds = timed(lambda: encoder(batch["image"]), device)
        add(REGRESSOR, REGRESSOR, 0, predicted, seconds)
        for count in k:
            w, more = projected(predicted, refine, count)
            add(f"regressor + {count} projection steps", REGRESSOR, count, w, seconds + more)
    for count in dict.fromkeys([*k, steps]):
        add(f"projection, {count} steps", MEAN_LATENT, count, *projected(None, projection, count))
    settings = {"seeds": [int(s) for s in seeds], "views": views, "psi": psi, "k": list(k), "steps": steps,
                "refine": dataclasses.asdict(refine), "projection": dataclasses.asdict(projection)}  # fmt: skip
    return {**settings, "rows": rows, "summary": catch_up(rows, steps) if encoder is not None else None}


def catch_up(rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """The fewest steps after the regressor (0: the regressor alone) whose PSNR reaches `steps`-step projection's.

    `k` and `time_fraction` (its time over the projection's) are None when no regressor row reaches it;
    `speedup` is how many times faster the regressor alone is than that projection (None without its row).
    """
    reference = next((r for r in rows if r["start"] == MEAN_LATENT and r["steps"] == steps), None)
    if reference is None:
        raise ValueError(f"the rows have no {steps}-step projection from the mean latent to compare with")
    reached = [r for r in rows if r["start"] == REGRESSOR and r["image_psnr"] >= reference["image_psnr"]]
    best = min(reached, key=lambda r: r["steps"], default=None)
    alone = next((r for r in rows if r["start"] == REGRESSOR and r["steps"] == 0), None)
    return {
        "speedup": None if alone is None else reference["ms_per_image"] / alone["ms_per_image"],
        "steps": steps,
        "reference_psnr": reference["image_psnr"],
        "reference_ms_per_image": reference["ms_per_image"],
        "k": None if best is None else best["steps"],
        "ms_per_image": None if best is None else best["ms_per_image"],
        "time_fraction": None if best is None else best["ms_per_image"] / reference["ms_per_image"],
    }


def markdown(table: dict[str, Any]) -> str:
    """The rows as a Markdown table, then one line: how soon the regressor's start reaches the long projection."""
    lines = [HEADER, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", *map(markdown_row, table["rows"])]
    summary = table["summary"]
    if summary is not None:
        lines += ["", summary_line(summary, table["k"])]
    return "\n".join(lines)


def markdown_row(r: dict[str, Any]) -> str:
    """One row of the Markdown table."""
    ms = "–" if not r["ms_per_image"] else f"{r['ms_per_image']:.{2 if r['ms_per_image'] < 10 else 1}f}"
    depth = "–" if math.isnan(r["render_depth_l1"]) else f"{r['render_depth_l1']:.4f}"  # no face pixel to score
    return (f"| {r['method']} | {r['steps']} | {r['image_psnr']:.1f} | {r['image_ssim']:.3f} | {r['novel_psnr']:.1f} "
            f"| {r['novel_ssim']:.3f} | {depth} | {ms} |")  # fmt: skip


def summary_line(summary: dict[str, Any], k: Sequence[int]) -> str:
    """The catch-up summary in words."""
    speed = "" if summary["speedup"] is None else f"The regressor alone is {summary['speedup']:,.0f}x faster than the {summary['steps']}-step projection. "
    reference = f"the {summary['steps']}-step projection's PSNR ({summary['reference_psnr']:.1f} dB)"
    if summary["k"] is None:
        return speed + f"No regressor + k projection steps (k in {', '.join(map(str, k))}) reaches {reference}."
    method = "The regressor alone" if summary["k"] == 0 else f"Regressor + {summary['k']} projection steps"
    return speed + (f"{method} reaches {reference} in {summary['time_fraction']:.1%} of its time "
                    f"({summary['ms_per_image']:.1f} against {summary['reference_ms_per_image']:.1f} ms per image).")  # fmt: skip
