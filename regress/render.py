"""`python -m regress.render`: any latent w as a novel-view video and meshes, or a walk from one w to another.

    python -m regress.render --w predictions/astronaut-1a2b3c4d --output renders/astronaut
    python -m regress.render --w data/shards/synth:17 --to data/shards/synth:42 --output renders/walk --checkpoint ffhq.pkl

A w is a `.npy` file, a folder holding `w.npy` (a `regress.predict` face, a pairs record) or `SHARDS_FOLDER:SEED`
(that seed's Sample). Alone, it is seen along an orbit (yaw ±35°, pitch ±15°); with `--to`, the latent is interpolated
linearly from one to the other, seen from the front (the origin's latent code interpolation). Either way the video
shows the render beside its depth on one scale, and meshes (the generator's surface in its own colours) are written
beside it. A bad command line exits with status 2, other bad input with 1, in one line (`regress.errors`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from regress.configs import run_job
from regress.generators import GeneratorSpec
from regress.geometry.mesh_files import MeshFormat, mesh_files, mesh_formats
from regress.runtime import pick_device


def render(
    w: str,
    to: str | None = None,
    output: str = "renders",
    generator: str | None = None,
    checkpoint: str | None = None,
    generator_options: dict | None = None,
    frames: int = 48,
    fps: int = 24,
    yaw_deg: float = 35.0,
    pitch_deg: float = 15.0,
    mesh_format: MeshFormat | list[MeshFormat] = "glb",
    mesh_resolution: int = 128,
    mesh_coarse_stride: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
) -> dict[str, Any]:
    """Render a latent along an orbit, or the walk from `w` to `to`, to a video and meshes in `output`.

    Args:
        w: the latent: a .npy file, a folder holding w.npy (a predict face, a pairs record) or SHARDS_FOLDER:SEED
        to: a second latent (same forms): the video walks from w to it, and meshes are made at its start, middle and end
        output: the folder written (an earlier render there is replaced whole; any other folder is refused)
        generator: backend the latents belong to (analytic, eg3d); None picks eg3d with a checkpoint, else analytic
        checkpoint: generator weights file (never downloaded)
        generator_options: keyword overrides for the backend
        frames: frames of the video
        fps: its frame rate
        yaw_deg: the orbit's yaw swing either side of frontal
        pitch_deg: the orbit's pitch swing
        mesh_format: ply, obj, glb (surfaces, vertex-coloured) and/or mrc (the density grid), one or a list
        mesh_resolution: density grid points per axis for meshes
        mesh_coarse_stride: None evaluates the density at every grid point; k coarse to fine from every k-th point, the
            same meshes from a small share of the points (`regress.geometry.grids.refine_grids`)
        batch_size: frames per generator call
        device: torch device, or auto
    """
    import torch

    from regress.camera import frontal_camera, orbit_cameras
    from regress.geometry.grids import check_coarse_stride, density_grid
    from regress.geometry.meshes import generator_meshes
    from regress.gallery.depth import depth_range
    from regress.prediction.latents import load_latent
    from regress.prediction.views import view_frames
    from regress.store.files import write_folder
    from regress.store.video import video_bytes

    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / "meta.json").is_file():
        raise FileExistsError(f"{out} exists and is no regress.render output: it would be replaced; choose another --output")
    formats = mesh_formats(mesh_format)
    if frames < 1 or fps < 1 or batch_size < 1 or mesh_resolution < 2:
        raise ValueError("frames, fps and batch_size are 1 or more, mesh_resolution 2 or more")
    check_coarse_stride(mesh_coarse_stride)
    latents = [load_latent(w)] + ([load_latent(to)] if to is not None else [])
    spec = GeneratorSpec(generator, checkpoint, generator_options)
    synthesizer = spec.build(pick_device(device))
    checksum = synthesizer.identity()["checksum"]
    for latent in latents:
        if latent.w.shape != tuple(synthesizer.latent_shape):
            raise ValueError(f"{latent.source} holds a w of shape {latent.w.shape}, the {synthesizer.name} generator's are "
                             f"{tuple(synthesizer.latent_shape)}; give the generator it belongs to (--generator, --checkpoint)")  # fmt: skip
        if latent.generator_checksum not in (None, checksum):
            print(f"regress.render: warning: {latent.source} was made by generator {latent.generator_checksum}, rendering with {checksum}", file=sys.stderr)
    ends = torch.stack([torch.from_numpy(latent.w) for latent in latents]).to(synthesizer.device)
    with torch.no_grad():
        front = synthesizer.synthesis(ends, frontal_camera(len(ends)).to(synthesizer.device))
        near, far = depth_range(list(front["depth"]), list(front["mask"]))  # one scale for the whole video
        if to is None:
            cameras, path, name = orbit_cameras(frames, yaw_deg, pitch_deg), ends[:1].expand(frames, -1, -1), "orbit"
            marks = {"": ends[0]}
        else:
            t = torch.linspace(0, 1, frames, device=ends.device)[:, None, None]
            cameras, path, name = frontal_camera(frames), torch.lerp(ends[0], ends[1], t), "interpolation"
            marks = {"_start": ends[0], "_middle": torch.lerp(ends[0], ends[1], 0.5), "_end": ends[1]}
        files = {f"{name}.mp4": video_bytes(view_frames(synthesizer, path, cameras, near, far, batch_size), fps)}
        at = torch.stack(list(marks.values()))
        grids = density_grid(synthesizer, at, mesh_resolution, coarse_stride=mesh_coarse_stride)
        for suffix, mesh, grid in zip(marks, generator_meshes(synthesizer, at, grids), grids):
            files.update(mesh_files(f"mesh{suffix}", mesh, formats, grid, synthesizer.box_size))
    meta = {"sources": [latent.source for latent in latents], "generator": spec.fingerprint(), "frames": frames, "fps": fps,
            "depth_scale": {"near": near, "far": far}, "orbit": {"yaw_deg": yaw_deg, "pitch_deg": pitch_deg} if to is None else None}  # fmt: skip
    files["meta.json"] = (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode()
    folder = write_folder(out, files)
    print(f"regress.render: {name}.mp4 and {len(marks)} mesh(es) in {folder}", file=sys.stderr)
    return {"output": str(folder), "files": sorted(files)}


def main(args: list[str] | None = None) -> Any:
    """Command line; errors exit 2 (usage) or 1 with one line (regress.errors)."""
    return run_job("regress.render", render, "render", args)


if __name__ == "__main__":
    main()
