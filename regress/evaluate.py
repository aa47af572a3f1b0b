"""`python -m regress.evaluate pairs|benchmark`: pair real photos with their inversions; score regressors on the pairs.

    python -m regress.evaluate pairs --config pairs-analytic --images photos/
    python -m regress.evaluate pairs --config pairs-analytic --images photos/ --init_checkpoint latent.ckpt
    python -m regress.evaluate benchmark --config benchmark --pairs data/pairs/analytic \\
        --depth_checkpoint depth.ckpt --latent_checkpoint latent.ckpt

Options come from YAML files (`--config`: a file, or a short name of regress/configs/evaluate/) and
flags; a bad command line exits with status 2, other bad input with 1 (`regress.errors`), each in one line
that says what to fix, except bad photos, which are listed per file in errors.json.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal


from regress.configs import run_job, verify_arguments
from regress.faces.perceptual import PerceptualDistance
from regress.generators import GeneratorSpec
from regress.geometry.grids import check_coarse_stride
from regress.geometry.mesh_files import MeshFormat, check_mesh_format
from regress.inversion.align import FaceAligner
from regress.faces.landmarks import generator_template
from regress.inversion.front_end import PhotoFrontEnd
from regress.inversion.pairs import PairBuilder, build_pairs
from regress.inversion.photos import CameraLabels, list_images
from regress.inversion.project import REFINE, ProjectionConfig
from regress.runtime import hold_output, pick_device
from regress.store.pairs import read_pairs_manifest, verify_pairs


def pairs(
    images: str,
    output: str = "data/pairs/analytic",
    generator: str | None = None,
    checkpoint: str | None = None,
    generator_options: dict | None = None,
    aligner: FaceAligner = FaceAligner(),
    projection: ProjectionConfig = ProjectionConfig(),
    init_checkpoint: str | None = None,
    vgg_weights: str | None = None,
    lpips_weights: str | None = None,
    camera_template: str = "label",
    cameras: str | None = None,
    aligned: bool = False,
    min_camera_confidence: float = 0.0,
    with_mesh: bool = False,
    mesh_resolution: int = 128,
    mesh_coarse_stride: int | None = None,
    mesh_format: MeshFormat = "ply",
    image_format: Literal["png", "jpg", "webp"] = "png",
    resume: bool = True,
    shards: bool = False,
    samples_per_shard: int = 1000,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Build a pairs set: each photo's crop (EG3D's by default), its camera, its inversion and the inversion's quality.

    Args:
        images: a folder of photos, a .txt file listing them (one path a line), or one photo
        output: the pairs folder (records/, errors.json, manifest.json, optional shards)
        generator: backend name (analytic, eg3d); None picks eg3d with a checkpoint, else analytic
        checkpoint: generator weights file (never downloaded)
        generator_options: keyword overrides for the backend, e.g. {image_resolution: 64}
        aligner: face detection and crop options (crop: eg3d or ffhq; all_faces: pair every face, not just the largest)
        projection: inversion options (space w or w+, steps, lr, loss weights, pti_steps for pivotal tuning)
        init_checkpoint: a LatentRegressor checkpoint (python -m regress.fit --model latent): projection and
            pivotal tuning start from its prediction on each crop instead of the mean latent
        vgg_weights: a local torchvision VGG16 state dict; enables the perceptual loss
        lpips_weights: the LPIPS v0.1 linear layers for VGG (vgg.pth of the lpips package); with vgg_weights
        camera_template: 3D landmarks the camera is fitted to: `label` (EG3D's label frame: cameras as EG3D's
            preprocessing labels them), `generator` (its own landmarks_3d if it has them, else label),
            `mean_face` (a human mean face in world units), or a JSON file with 68 points
        cameras: given camera labels instead of the fit: an EG3D dataset.json, or `npy` for NAME.npy beside each photo
        aligned: the photos are already EG3D crops: no crop (their landmarks are still found)
        min_camera_confidence: skip (and list in errors.json) a face whose fitted camera's confidence in [0, 1]
            is lower, instead of inverting it with a wrong camera; cameras under 0.5 are listed either way
        with_mesh: add a mesh (marching cubes of the inverted density, `mesh_format`) to each record
        mesh_resolution: density grid points per axis for meshes
        mesh_coarse_stride: None evaluates the density at every grid point; k coarse to fine from every k-th point, the
            same meshes from a small share of the points (`regress.geometry.grids.refine_grids`)
        mesh_format: the mesh file: ply, obj, glb (the surface) or mrc (the density grid)
        image_format: encoding of the inverted image (real.png is always PNG)
        resume: keep records already in `output` and skip their photos
        shards: also pack the records into WebDataset shards
        samples_per_shard: records per shard
        device: torch device, or auto
        progress: show progress bars
    """
    check_coarse_stride(mesh_coarse_stride)
    photos = list_images(images)
    spec = GeneratorSpec(generator, checkpoint, generator_options)
    synthesizer = spec.build(pick_device(device))
    perceptual = None
    if vgg_weights is not None:
        perceptual = PerceptualDistance(vgg_weights, lpips_weights).to(synthesizer.device)
    elif lpips_weights is not None:
        raise ValueError("lpips_weights needs vgg_weights too (the VGG16 backbone they sit on)")
    labels = CameraLabels(cameras) if cameras is not None else None
    encoder = None
    if init_checkpoint is not None:
        from regress.evaluation.encoder import latent_encoder, load_latent_regressor

        encoder = latent_encoder(load_latent_regressor(init_checkpoint, synthesizer))
    front_end = PhotoFrontEnd(generator_template(synthesizer, camera_template), synthesizer.image_resolution, aligner, cameras=labels,
                              aligned=aligned, min_camera_confidence=min_camera_confidence)  # fmt: skip
    builder = PairBuilder(
        synthesizer, front_end, projection, perceptual, with_mesh, mesh_resolution, check_mesh_format(mesh_format), image_format, progress, encoder,
        mesh_coarse_stride,
    )  # fmt: skip
    settings = {"checkpoint": spec.checkpoint, "generator_options": spec.stored_options(), "camera_template": camera_template,
                "cameras": cameras, "aligned": aligned, "aligner": dataclasses.asdict(aligner), "perceptual": perceptual.name if perceptual else None,
                **({"init_checkpoint": init_checkpoint} if init_checkpoint else {}),
                **({"min_camera_confidence": min_camera_confidence} if min_camera_confidence else {}),
                **({"mesh_coarse_stride": mesh_coarse_stride} if mesh_coarse_stride else {})}  # fmt: skip (keys only when given: older sets still resume)
    with hold_output(Path(output), "python -m regress.evaluate pairs", "building the pairs set", "let it finish, or give another --output"):
        summary = build_pairs(photos, Path(output), builder, resume, shards, samples_per_shard, settings, progress)
    failed = f"{len(summary['errors'])} failed" + (f": see {Path(output) / 'errors.json'}" if summary["errors"] else "")
    if summary["records"] == 0:
        raise ValueError(f"no photo could be paired, {failed}")
    print(
        f"regress.evaluate pairs: {summary['records']} records in {summary['output']} ({summary['built']} new, "
        f"{summary['skipped']} photos already done, {failed})",
        file=sys.stderr,
    )
    return summary


def pairs_generator_spec(root: str | Path, name: str | None, checkpoint: str | None, options: dict | None) -> GeneratorSpec:
    """The generator that made a pairs set: as given, or rebuilt from its manifest (analytic needs no weights)."""
    identity = read_pairs_manifest(root)["generator"]
    if name is None and checkpoint is None:
        if identity["generator"] != "analytic":
            raise ValueError(f"{root} was inverted with {identity['generator']}; give its --checkpoint to render predicted latents")
        name, options = "analytic", {**identity["config"], **(options or {})}
    spec = GeneratorSpec(name, checkpoint, options)
    checksum = spec.build().identity()["checksum"]
    if checksum != identity["checksum"]:
        print(f"regress.evaluate benchmark: warning: generator {checksum} differs from the pairs' {identity['checksum']}", file=sys.stderr)
    return spec


def benchmark(
    pairs: str,
    output: str = "data/benchmark",
    depth_checkpoint: str | None = None,
    latent_checkpoint: str | None = None,
    generator: str | None = None,
    checkpoint: str | None = None,
    generator_options: dict | None = None,
    image: Literal["real", "inverted"] = "real",
    batch_size: int = 8,
    examples: int = 4,
    encoder_seeds: int = 0,
    encoder_k: tuple[int, ...] = (5, 10, 20, 40),
    encoder_steps: int = 200,
    encoder_refine: ProjectionConfig = REFINE,
    skip_corrupt: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Score DepthRegressor / LatentRegressor checkpoints on a pairs set; write report.json, report.md and plots/.

    Args:
        pairs: a pairs folder built by `python -m regress.evaluate pairs`
        output: where the report and plots go
        depth_checkpoint: a Lightning checkpoint of a DepthRegressor
        latent_checkpoint: a Lightning checkpoint of a LatentRegressor
        generator: backend that renders predicted latents; None: the one in the pairs' manifest (analytic)
        checkpoint: its weights (needed for eg3d)
        generator_options: keyword overrides for the backend
        image: what the regressors see, the real photo or the inverted render
        batch_size: pairs per forward pass
        examples: pairs shown in plots/examples.png
        encoder_seeds: with a latent checkpoint, > 0 adds the encoder table (regressor, regressor + k projection
            steps, projection from the mean latent) on this many held-out seeds of the generator; 0: none
        encoder_k: the table's projection steps after the regressor
        encoder_steps: the table's projection steps from the mean latent that the regressor's start should reach
        encoder_refine: projection options from the regressor's prediction (steps replaced by each k)
        skip_corrupt: score the records that are whole and count the others (missing, or failing their manifest's
            size or SHA-256), instead of stopping at the first
        device: torch device, or auto
        progress: show a progress bar
    """
    from regress.datamodules.pairs import PairDataset
    from regress.evaluation.benchmark import run_benchmark
    from regress.evaluation.encoder import latent_encoder, load_latent_regressor, load_regressor
    from regress.evaluation.encoder_table import HELD_OUT_START, encoder_table
    from regress.evaluation.report import write_report
    from regress.models import DepthRegressor

    if encoder_seeds > 0 and latent_checkpoint is None:
        raise ValueError("encoder_seeds scores a latent regressor as an encoder: give its latent_checkpoint, or set encoder_seeds: 0")
    run_on = pick_device(device)
    models, synthesizer = {}, None
    if depth_checkpoint is not None:
        models["depth"] = load_regressor(DepthRegressor, depth_checkpoint, run_on, "depth")
    if latent_checkpoint is not None:
        synthesizer = pairs_generator_spec(pairs, generator, checkpoint, generator_options).build(run_on)
        models["latent"] = load_latent_regressor(latent_checkpoint, synthesizer)
    dataset = PairDataset(pairs, image=image, skip_corrupt=skip_corrupt)
    report, tensors = run_benchmark(dataset, models.get("depth"), models.get("latent"), synthesizer, run_on, batch_size, examples, progress)
    report["pairs_root"] = str(pairs)
    report["inversion_settings"] = dataset.manifest["projection"]  # the inversion times were measured when the pairs were built
    report["checkpoints"] = {"depth": depth_checkpoint, "latent": latent_checkpoint}
    if encoder_seeds > 0:
        held_out = range(HELD_OUT_START, HELD_OUT_START + encoder_seeds)
        report["encoder"] = encoder_table(synthesizer, latent_encoder(models["latent"]), held_out, k=encoder_k, steps=encoder_steps, refine=encoder_refine)
    report["device"] = str(run_on)
    report["outputs"] = write_report(report, tensors, output)
    print(f"regress.evaluate benchmark: {report['pairs']} pairs; report in {report['outputs']['markdown']}", file=sys.stderr)
    return report


def verify(root: str) -> int:
    """Check a pairs set against its manifest, print one line per bad record and a summary; 1 if any is bad, else 0."""
    checked, problems = verify_pairs(root)
    for problem in problems:
        print(f"regress.evaluate pairs: bad record: {problem}")
    verdict = f"{len(problems)} bad" if problems else "every one whole, with its files' recorded sizes and SHA-256"
    print(f"regress.evaluate pairs: verified {checked} records of {root} against its manifest: {verdict}")
    return 1 if problems else 0


def main(args: list[str] | None = None) -> Any:
    """Command line: subcommands `pairs` and `benchmark`, or `pairs --verify DIR` to check a finished set; errors exit 2
    (usage) or 1 with one line (regress.errors)."""

    def verify_if_asked(expanded: list[str]) -> None:
        if expanded[:1] == ["pairs"] and any(arg.split("=")[0] == "--verify" for arg in expanded):
            raise SystemExit(verify(verify_arguments(expanded[1:], "python -m regress.evaluate pairs", "a pairs folder with its manifest.json").verify))

    return run_job("regress.evaluate", [pairs, benchmark], "evaluate", args, verify_if_asked)


if __name__ == "__main__":
    main()
