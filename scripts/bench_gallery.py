"""How big a gallery page is, and how long a browser takes to show it, for predict-sized runs.

Meshes of an analytic head by marching cubes at each `--resolutions` (one mesh per resolution, shown `--meshes`
times, so the sizes are those of a run of that many photos), written as trimesh's GLB (float32 vertices, no normals):

    python scripts/bench_gallery.py --meshes 15 --resolutions 128 256 [--browser]

Prints per resolution: the mesh's faces and GLB size, the page's total size on disk (index.html, the viewer, one mesh
script per mesh, the GLB files themselves), the mesh scripts' share, and the seconds `write_gallery` takes; with
`--browser` (needs chromium), the seconds headless Chromium takes from start to every view drawn (tests/chromium.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from regress.gallery import GalleryItem, write_gallery
from regress.generators import GeneratorSpec
from regress.geometry.grids import density_grid
from regress.geometry.meshes import grid_to_mesh

MB = 1e6


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", type=int, default=15)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--browser", action="store_true", help="also time headless Chromium showing the page")
    args = parser.parse_args()
    generator = GeneratorSpec("analytic").build("cpu")
    w = generator.sample([0])["w"]
    for resolution in args.resolutions:
        mesh = grid_to_mesh(density_grid(generator, w, resolution)[0], generator.surface_level, generator.box_size)
        glb = mesh.export(file_type="glb")
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            items = []
            for index in range(args.meshes):
                (folder / f"{index}.glb").write_bytes(glb)
                items.append(GalleryItem(f"photo {index}", mesh=f"{index}.glb"))
            start = time.perf_counter()
            page = write_gallery(folder, "bench", items)
            written = time.perf_counter() - start
            total, scripts = folder_bytes(folder), folder_bytes(folder / "viewer", "mesh-*.js")
            print(f"{resolution}^3: {len(mesh.faces)} faces, GLB {len(glb) / MB:.2f} MB; {args.meshes} meshes: page "
                  f"{total / MB:.1f} MB on disk (mesh scripts {scripts / MB:.1f} MB, GLB files {args.meshes * len(glb) / MB:.1f} MB, "
                  f"viewer {folder_bytes(folder / 'viewer', 'model-viewer*') / MB:.2f} MB); write_gallery {written:.2f} s")  # fmt: skip
            if args.browser:
                sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
                from tests.chromium import check_page, find_chromium

                check = check_page(page, find_chromium(), height=400 * args.meshes + 400, timeout=600)
                drawn = sum(view["changed"] > 0.05 for view in check.views)
                print(f"  chromium: {check.state} in {check.seconds:.1f} s, {drawn}/{len(check.views)} views drawn, "
                      f"{len(check.console_errors)} console errors")  # fmt: skip


if __name__ == "__main__":
    main()
