"""Regressors scored on real-versus-inverted pairs: the numbers behind `python -m regress.evaluate benchmark`.

The depth regressor sees the real photo and is compared with the inversion's depth on the face
mask (abs-rel, RMSE, delta < 1.25; also after median scaling, which forgives a global scale). A depth regressor trained
on relative depth (`depth_units: relative`, kept in its checkpoint) is scored after its own per-image scale-and-shift
alignment, and the report says so.
The latent regressor's w is compared with the inverted w (L1, cosine of offsets from the mean
latent) and rendered at the pair's camera to compare with the real photo (PSNR, SSIM, identity),
beside the inversion's own quality. Timing sets a regressor's forward pass against the inversion.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from regress.datamodules.pairs import PairDataset, collate_pairs
from regress.evaluation.encoder import model_input
from regress.faces.identity import identity_scores
from regress.faces.quality import psnr, ssim
from regress.generators.base import Generator
from regress.models import DepthRegressor, LatentRegressor
from regress.models.metrics import DepthMetrics, LatentMetrics
from regress.runtime import timed
from regress.sample import MASK_THRESHOLD, image_to_uint8

EXAMPLE_COLUMNS = ("real", "inverted", "inverted depth", "predicted depth", "predicted latent render")


def median_scaled(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Predictions (N, 1, R, R) scaled per image so their median on the face mask is the target's."""
    scaled = []
    for p, t, m in zip(pred, target, mask):
        on = m > MASK_THRESHOLD
        factor = t[on].median() / p[on].median().clamp_min(1e-6) if on.any() else torch.ones((), device=p.device)
        scaled.append(p * factor)
    return torch.stack(scaled)


def depth_units_shown(units: str) -> str:
    """How the report names the depth a regressor was trained on, and so how it was scored."""
    return "world" if units == "world" else "relative (scored after per-image scale-and-shift alignment)"


def _finite_or_none(metric: DepthMetrics) -> dict[str, float | None]:
    """The metric's values, None where it saw no face pixel (JSON null, left out of means)."""
    return {k: float(v) if torch.isfinite(v) else None for k, v in metric.compute().items()}


def _depth_scores(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float | None]:
    metric = DepthMetrics().to(pred.device)
    metric.update(pred, target, mask)
    return _finite_or_none(metric)


def _seconds_per_image(run, image: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of `run(image[:1])` after one warm-up call (until the device finished)."""
    single = image[:1]
    run(single)
    return statistics.median(timed(lambda: run(single), single.device)[1] for _ in range(repeats))


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


@torch.no_grad()
def run_benchmark(
    dataset: PairDataset,
    depth_model: DepthRegressor | None,
    latent_model: LatentRegressor | None,
    generator: Generator | None,
    device: torch.device,
    batch_size: int = 8,
    examples: int = 4,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The report (aggregates, timing and per-pair rows) and example tensors (uint8, for the plots)."""
    if depth_model is None and latent_model is None:
        raise ValueError("give at least one checkpoint: depth_checkpoint or latent_checkpoint")
    if latent_model is not None and generator is None:
        raise ValueError("scoring a latent regressor renders its predictions: it needs the pairs' generator")
    depth_all, depth_scaled_all, latent_all = DepthMetrics().to(device), DepthMetrics().to(device), LatentMetrics().to(device)
    rows: list[dict[str, Any]] = []
    shown: dict[str, list[torch.Tensor]] = {name: [] for name in EXAMPLE_COLUMNS}
    timing: dict[str, float] = {}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_pairs)
    for batch in tqdm(loader, desc="benchmark", unit="batch", disable=not progress, dynamic_ncols=True):
        real, seen = batch["real"].to(device), batch["image"].to(device)
        depth, mask = batch["depth"].to(device), batch["mask"].to(device)
        w, camera = batch["w"].to(device), batch["camera"].to(device)
        batch_rows = [{"key": m["key"], "source": m.get("source"), **{f"inversion_{k}": v for k, v in m.get("quality", {}).items()},
                       "inversion_seconds": m.get("inversion", {}).get("seconds")} for m in batch["meta"]]  # fmt: skip
        pred_depth = rendered = None
        if depth_model is not None:
            image = model_input(depth_model, seen)
            pred_depth = depth_model.scored(depth_model(image, depth.shape[-1]), depth, mask)
            scaled = median_scaled(pred_depth, depth, mask)
            depth_all.update(pred_depth, depth, mask)
            depth_scaled_all.update(scaled, depth, mask)
            for i, row in enumerate(batch_rows):
                row.update(_depth_scores(pred_depth[i : i + 1], depth[i : i + 1], mask[i : i + 1]))
                row.update({f"{k}_median_scaled": v for k, v in _depth_scores(scaled[i : i + 1], depth[i : i + 1], mask[i : i + 1]).items()})
            if "depth_seconds_per_image" not in timing:
                timing["depth_seconds_per_image"] = _seconds_per_image(lambda x: depth_model(x, depth.shape[-1]), image)
        if latent_model is not None:
            image = model_input(latent_model, seen)
            pred_w = latent_model(image)
            latent_all.update(pred_w, w, latent_model.mean_latent)
            rendered = image_to_uint8(generator.synthesis(pred_w, camera)["image"])
            rerender = {"rerender_psnr": psnr(rendered, real), "rerender_ssim": ssim(rendered, real)}
            for i, row in enumerate(batch_rows):
                one = LatentMetrics().to(device)
                one.update(pred_w[i : i + 1], w[i : i + 1], latent_model.mean_latent)
                row.update({k: float(v) for k, v in one.compute().items()})
                row.update({k: float(v[i]) for k, v in rerender.items()})
                ids = identity_scores(real[i].permute(1, 2, 0).cpu().numpy(), rendered[i].permute(1, 2, 0).cpu().numpy(), batch["landmarks"][i].numpy())
                row.update({f"rerender_{k}": v for k, v in ids.items()})
            if "latent_seconds_per_image" not in timing:
                timing["latent_seconds_per_image"] = _seconds_per_image(latent_model, image)
                timing["latent_and_render_seconds_per_image"] = _seconds_per_image(
                    lambda x: generator.synthesis(latent_model(x), camera[:1]), image
                )
        rows.extend(batch_rows)
        _collect_examples(shown, examples, batch, pred_depth, rendered)
    report = _summarize(rows, timing, depth_all if depth_model else None, depth_scaled_all if depth_model else None,
                        latent_all if latent_model else None)  # fmt: skip
    if depth_model is not None:
        report["depth"] = {"units": depth_units_shown(depth_model.hparams.depth_units), **report["depth"]}
    tensors = {name: torch.cat(items) for name, items in shown.items() if items}
    return report, tensors


def _collect_examples(shown: dict[str, list], limit: int, batch: dict, pred_depth: torch.Tensor | None, rendered: torch.Tensor | None) -> None:
    """Keep the first `limit` pairs' images and depths for the example figure."""
    have = sum(len(x) for x in shown["real"])
    take = max(0, min(limit - have, batch["real"].shape[0]))
    if take == 0:
        return
    shown["real"].append(batch["real"][:take].cpu())
    shown["inverted"].append(batch["inverted"][:take].cpu())
    shown["inverted depth"].append(torch.cat([batch["depth"][:take], batch["mask"][:take]], dim=1).cpu())
    if pred_depth is not None:
        shown["predicted depth"].append(torch.cat([pred_depth[:take].cpu(), batch["mask"][:take]], dim=1))
    if rendered is not None:
        shown["predicted latent render"].append(rendered[:take].cpu())


def _summarize(rows: list[dict], timing: dict[str, float], depth: DepthMetrics | None, depth_scaled: DepthMetrics | None,
               latent: LatentMetrics | None) -> dict[str, Any]:  # fmt: skip
    report: dict[str, Any] = {"pairs": len(rows)}
    if depth is not None:
        report["depth"] = _finite_or_none(depth)
        report["depth"].update({f"{k}_median_scaled": v for k, v in _finite_or_none(depth_scaled).items()})
        report["depth"]["pairs_without_face_pixels"] = sum(r.get("depth_absrel", 0.0) is None for r in rows)
    if latent is not None:
        report["latent"] = {k: float(v) for k, v in latent.compute().items()}
        report["latent"].update({k: _mean(rows, k) for k in ("rerender_psnr", "rerender_ssim", "rerender_identity_similarity", "rerender_identity_distance")})
    inversion = {k.removeprefix("inversion_"): _mean(rows, k) for k in rows[0] if k.startswith("inversion_")} if rows else {}
    report["inversion"] = inversion
    timing = dict(timing)
    timing["inversion_seconds_per_image"] = inversion.get("seconds")
    fastest = min((v for k, v in timing.items() if k != "inversion_seconds_per_image" and v), default=None)
    if fastest and timing["inversion_seconds_per_image"]:
        timing["inversion_over_fastest_regressor"] = timing["inversion_seconds_per_image"] / fastest
    report["timing"] = timing
    report["per_pair"] = rows
    return report
