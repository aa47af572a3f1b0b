"""Seconds per photo of each stage of `python -m regress.predict`, front end (detection, crop, camera) apart.

    python scripts/bench_predict.py --photos ../shared/fixtures/eg3d-photos --device cpu             # analytic head
    python scripts/bench_predict.py --photos ../shared/fixtures/eg3d-photos --generator eg3d \\
        --checkpoint ../shared/fixtures/eg3d-reference/network.pkl --generator_options '{"render_precision": "float16"}' \\
        --mesh_resolution 256 --device cuda
    ... --refine 20                                                                                   # + 20 projection steps

The regressors are the shipped model configs' (regress/configs/model/) with random weights: their time does not
depend on what they learned. Every photo goes through the front end once (timed, reported apart); the faces are then
predicted in batches with the predictor's own `predict_step` (what `Trainer.predict` calls) and turned into files with
the prediction writer's own `members` (PNG, NPY, meshes, MP4), after one warm-up batch. Prints a table and, with
--json, the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from regress.faces.landmarks import generator_template
from regress.generators import GeneratorSpec, LatentSpace
from regress.inversion.front_end import PhotoFrontEnd
from regress.inversion.photos import list_images
from regress.models import DepthRegressor, LatentRegressor
from regress.prediction.photos import PhotoDataset
from regress.prediction.predictor import FacePrediction, PhotoPredictor, PredictionChoices
from regress.prediction.writer import PredictionWriter
from regress.runtime import pick_device

from bench_synthesis import machine  # scripts/ is on sys.path when this runs as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="a folder of photos (the labelled fixtures: NAME.npy files are ignored)")
    parser.add_argument("--generator", default=None)
    parser.add_argument("--checkpoint", type=Path, default=None, help="the generator's weights")
    parser.add_argument("--generator_options", type=json.loads, default=None)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--refine", type=int, default=0)
    parser.add_argument("--mesh_resolution", type=int, default=128)
    parser.add_argument("--video_frames", type=int, default=48)
    parser.add_argument("--mesh_format", nargs="+", default=["glb"])
    parser.add_argument("--save_items", type=Path, default=None, help="keep the front end's results in this file")
    parser.add_argument("--load_items", type=Path, default=None, help="the front end's results of an earlier --save_items (a machine without dlib)")
    parser.add_argument("--skip_mp4", action="store_true", help="render the orbit but do not encode it (a host CPU stage; measure it where PyAV is)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = pick_device(args.device)
    generator = GeneratorSpec(args.generator, args.checkpoint, args.generator_options).build(device)
    if args.load_items is not None:
        items = torch.load(args.load_items, weights_only=False)  # our own file, written by --save_items
        photos = [item.path for item in items]
    else:
        photos = [p for p in list_images(args.photos) if p.parent == args.photos]  # the single photos, not multiview/
        dataset = PhotoDataset(photos, PhotoFrontEnd(generator_template(generator), generator.image_resolution))
        items = [dataset[i] for i in range(len(dataset))]
    if args.save_items is not None:
        torch.save(items, args.save_items)
    usable = [item for item in items if item.error is None]
    space = LatentSpace(tuple(generator.latent_shape), generator.mean_latent().cpu())
    depth_model = DepthRegressor(image_size=generator.image_resolution).eval()
    latent_model = LatentRegressor(image_size=generator.image_resolution, latent_space=space).eval()
    choices = PredictionChoices(args.refine, mesh_resolution=args.mesh_resolution, mrc="mrc" in args.mesh_format, video_frames=args.video_frames)
    predictor = PhotoPredictor(generator, depth_model, latent_model, choices).to(device)
    writer = PredictionWriter(Path("unused"), tuple(args.mesh_format), {"generator": {"box_size": generator.box_size}})

    batches = [usable[i : i + args.batch_size] for i in range(0, len(usable), args.batch_size)]
    predictor.predict_step(batches[0], 0)  # warm-up: kernels, caches, the projection's latent spread
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for index, batch in enumerate(batches):
        for result in predictor.predict_step(batch, index):
            if isinstance(result, FacePrediction):
                for stage, value in result.seconds.items():
                    seconds[stage] = seconds.get(stage, 0.0) + value
                if args.skip_mp4:
                    result.video = None
                began = time.perf_counter()
                writer.members(result)
                seconds["files (encode)"] = seconds.get("files (encode)", 0.0) + time.perf_counter() - began
    wall = time.perf_counter() - start
    faces = sum(len(item.faces) for item in usable)
    front = sum(item.seconds for item in items) / len(items)
    core = sum(v for k, v in seconds.items() if k in ("depth regressor", "latent regressor", "refine", "render", "generator mesh", "depth mesh"))
    figures = {
        "machine": machine(),
        "generator": generator.identity()["generator"],
        "photos": len(photos),
        "failed": len(items) - len(usable),
        "batch_size": args.batch_size,
        "refine": args.refine,
        "mesh_resolution": args.mesh_resolution,
        "video_frames": args.video_frames,
        "front_end_s_per_photo": front,
        "s_per_face": {stage: value / faces for stage, value in sorted(seconds.items())},
        "regressors_and_meshes_faces_per_s": faces / core,
        "all_faces_per_s": faces / wall,
    }
    print(f"{figures['machine']}: {faces} faces of {len(photos)} photos, {figures['generator']}, batch {args.batch_size}, "
          f"refine {args.refine}, mesh {args.mesh_resolution}^3, video {args.video_frames} frames")  # fmt: skip
    print(f"  front end (detect, crop, camera; loader workers)  {front * 1000:8.1f} ms/photo")
    for stage, value in figures["s_per_face"].items():
        print(f"  {stage:<48}  {value * 1000:8.1f} ms/face")
    print(f"  regressors + both meshes (+ refine)               {figures['regressors_and_meshes_faces_per_s']:8.1f} faces/s")
    print(f"  everything after the front end, files included    {figures['all_faces_per_s']:8.1f} faces/s")
    if args.json:
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    with torch.inference_mode(False):
        main()
