"""`python -m regress.predict`: photos -> a 3D face each: depth map, meshes that open everywhere, novel views, a page.

    python -m regress.predict --images photos/ --depth_checkpoint depth.ckpt --latent_checkpoint latent.ckpt
    python -m regress.predict --config eg3d --checkpoint ffhq512-128.pkl --images me.jpg --latent_checkpoint latent.ckpt --refine 20

The front end is `evaluate pairs`' own (detection fallbacks, EG3D crop, camera fit; `--aligned`, `--cameras`);
`Trainer.predict` runs the regressors and the generator in batches on any device (and any number of GPUs, each rank
its share of the photos) while loader workers detect and crop the next photos; a prediction writer stores each face
in `OUTPUT/NAME/` as it comes. Options come from YAML (`--config`: a file or a short name of regress/configs/predict/)
and flags; a bad command line exits with status 2, other bad input with 1, in one line; bad photos are listed per file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from regress import __version__
from regress.configs import run_job
from regress.faces.landmarks import generator_template
from regress.generators import GeneratorSpec
from regress.geometry.grids import check_coarse_stride
from regress.geometry.mesh_files import MeshFormat, mesh_formats
from regress.inversion.align import FaceAligner
from regress.inversion.front_end import PhotoFrontEnd
from regress.inversion.photos import CameraLabels, list_images
from regress.inversion.project import REFINE, ProjectionConfig
from regress.runtime import hold_output, pick_device
from regress.store.files import file_sha256


def predict(
    images: str,
    output: str = "predictions",
    depth_checkpoint: str | None = None,
    latent_checkpoint: str | None = None,
    generator: str | None = None,
    checkpoint: str | None = None,
    generator_options: dict | None = None,
    aligner: FaceAligner = FaceAligner(),
    camera_template: str = "label",
    cameras: str | None = None,
    aligned: bool = False,
    min_camera_confidence: float = 0.0,
    refine: int = 0,
    projection: ProjectionConfig = REFINE,
    mesh_format: MeshFormat | list[MeshFormat] = "glb",
    mesh_resolution: int = 128,
    mesh_coarse_stride: int | None = None,
    video_frames: int = 48,
    video_fps: int = 24,
    batch_size: int = 8,
    num_workers: int = 2,
    resume: bool = True,
    device: str = "auto",
    devices: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Turn photos into 3D faces: one folder per face in `output`, `errors.json` for the photos that failed.

    Args:
        images: a folder of photos, a .txt file listing them (one path a line), or one photo
        output: where each face's folder goes (a rerun skips the photos already done)
        depth_checkpoint: a DepthRegressor checkpoint (python -m regress.fit --model depth): depth, its mesh
        latent_checkpoint: a LatentRegressor checkpoint (--model latent): w, the generator's render, mesh and video
        generator: backend that renders w (analytic, eg3d); None picks eg3d with a checkpoint, else analytic
        checkpoint: generator weights file (never downloaded)
        generator_options: keyword overrides for the backend
        aligner: face detection and crop options (as in evaluate pairs)
        camera_template: 3D landmarks the camera is fitted to (label, generator, mean_face or a JSON file)
        cameras: given camera labels instead of the fit: an EG3D dataset.json, or `npy` for NAME.npy beside each photo
        aligned: the photos are already EG3D crops: no crop (their landmarks are still found)
        min_camera_confidence: skip (and list in errors.json) a face whose fitted camera's confidence in [0, 1] is
            lower; every camera under 0.5 is named on the page and in the summary either way
        refine: projection steps from the latent regressor's w towards the photo (0: its w as it is)
        projection: the refinement's options (steps come from `refine`)
        mesh_format: ply, obj, glb (surfaces, vertex-coloured) and/or mrc (the generator's density grid), one or a list
        mesh_resolution: density grid points per axis of the generator's mesh
        mesh_coarse_stride: None evaluates the density at every grid point; k evaluates every k-th point, then only the
            blocks of k^3 cells the surface passes through: the same mesh from a small share of the points (512^3 for
            less than a dense 256^3); an mrc grid holds the coarse grid's interpolation away from the surface
        video_frames: frames of the orbit video (yaw ±35°, pitch ±15°); 0: none
        video_fps: the video's frame rate
        batch_size: faces per device batch
        num_workers: loader processes running detection, crop and camera fit (0: in this process)
        resume: skip photos already done in `output` (their settings must match); false redoes them all
        device: torch device, or auto
        devices: GPUs to spread the photos over (DDP), with device auto or cuda
        progress: show a progress bar
    """
    import lightning as L
    from torch.utils.data import DataLoader

    from regress.evaluation.encoder import load_latent_regressor, load_regressor
    from regress.models import DepthRegressor
    from regress.prediction.photos import PhotoDataset, collate_photos
    from regress.prediction.predictor import PhotoPredictor, PredictionChoices
    from regress.prediction.writer import PredictionWriter, gather_errors, photo_done, prepare_output, write_predict_page

    formats = mesh_formats(mesh_format)
    if depth_checkpoint is None and latent_checkpoint is None:
        raise ValueError("give --depth_checkpoint, --latent_checkpoint or both (trained with python -m regress.fit): there is nothing to predict with")
    if refine < 0 or video_frames < 0 or batch_size < 1 or mesh_resolution < 2:
        raise ValueError("refine and video_frames are 0 or more, batch_size 1 or more, mesh_resolution 2 or more")
    check_coarse_stride(mesh_coarse_stride)
    photos = list_images(images)
    spec = GeneratorSpec(generator, checkpoint, generator_options)
    run_on = pick_device(device)
    synthesizer = spec.build(run_on)
    depth_model = load_regressor(DepthRegressor, depth_checkpoint, run_on, "depth", " --model depth") if depth_checkpoint else None
    latent_model = load_latent_regressor(latent_checkpoint, synthesizer) if latent_checkpoint else None
    choices = PredictionChoices(
        refine, projection, mesh_resolution, mesh_coarse_stride=mesh_coarse_stride, mrc="mrc" in formats, video_frames=video_frames, video_fps=video_fps
    )
    labels = CameraLabels(cameras) if cameras is not None else None
    front_end = PhotoFrontEnd(generator_template(synthesizer, camera_template), synthesizer.image_resolution, aligner, cameras=labels,
                              aligned=aligned, min_camera_confidence=min_camera_confidence)  # fmt: skip
    settings = {
        "generator": {**spec.fingerprint(), "box_size": synthesizer.box_size},
        "checkpoints": {kind: {"path": str(path), "sha256": file_sha256(path)} for kind, path in (("depth", depth_checkpoint), ("latent", latent_checkpoint)) if path},
        "choices": {"camera_template": camera_template, "cameras": cameras, "aligned": aligned, "min_camera_confidence": min_camera_confidence, "refine": refine,
                    "mesh_format": list(formats), "mesh_resolution": mesh_resolution, "video_frames": video_frames,
                    **({"mesh_coarse_stride": mesh_coarse_stride} if mesh_coarse_stride else {})},  # fmt: skip (only when on: older outputs resume)
    }
    out = Path(output)
    with hold_output(out, "python -m regress.predict", "writing predictions", "let it finish, or give another --output"):
        prepare_output(out, settings, resume)
        todo = [p for p in photos if not photo_done(out, p)]
        writer = PredictionWriter(out, formats, {**settings, "regress_version": __version__}, video_fps)
        if todo:
            accelerator = "gpu" if run_on.type == "cuda" else "cpu"
            trainer = L.Trainer(
                accelerator=accelerator, devices=[run_on.index or 0] if accelerator == "gpu" and devices == 1 else devices,
                strategy="ddp" if devices > 1 else "auto", logger=False, enable_checkpointing=False, enable_model_summary=False,
                inference_mode=False, callbacks=[writer], enable_progress_bar=progress,
            )  # fmt: skip
            data = DataLoader(PhotoDataset(todo, front_end), batch_size=batch_size, num_workers=num_workers, collate_fn=collate_photos)
            trainer.predict(PhotoPredictor(synthesizer, depth_model, latent_model, choices), data, return_predictions=False)
            trainer.strategy.barrier()  # every rank's faces are written before rank 0 lists them
            if not trainer.is_global_zero:
                return {"output": str(out), "written": len(writer.written)}
        errors = gather_errors(out)
        page = write_predict_page(out, errors)
        summary = {"output": str(out), "written": len(writer.written), "skipped": len(photos) - len(todo), "errors": errors, "page": str(page)}
        failed = f"{len(errors)} failed" + (f": see {out / 'errors.json'}" if errors else "")
        print(f"regress.predict: {len(writer.written)} faces written to {out} ({summary['skipped']} photos already done, {failed}); open {page}", file=sys.stderr)
        if len(errors) == len(photos):
            raise ValueError(f"no photo could be used, {failed}")
    return summary


def main(args: list[str] | None = None) -> Any:
    """Command line; errors exit 2 (usage) or 1 with one line (regress.errors)."""
    return run_job("regress.predict", predict, "predict", args)


if __name__ == "__main__":
    main()
