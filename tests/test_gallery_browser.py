"""The gallery in a real browser: headless Chromium opens a generated index.html from disk, with no network, and
every image loads, the 3D view draws the mesh and the console stays clean; a missing image or a corrupt mesh fails.

Skipped without a Chromium binary (`apt-get install chromium`; .ci/run installs it and sets REGRESS_REQUIRE_CHROMIUM,
so CI fails instead of skipping).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from regress.gallery import GalleryItem, write_depth_png, write_gallery
from regress.gallery.depth import depth_figure_png
from regress.generators import GeneratorSpec
from regress.geometry.meshes import depth_to_mesh
from regress.store.files import write_atomic
from tests.chromium import check_page, find_chromium

CHROMIUM = find_chromium()
if CHROMIUM is None and os.environ.get("REGRESS_REQUIRE_CHROMIUM"):
    raise RuntimeError("REGRESS_REQUIRE_CHROMIUM is set but no chromium binary was found: apt-get install chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found: apt-get install chromium (or set REGRESS_CHROMIUM)"),
]
DRAWN = 0.05  # share of a 3D view's pixels off its background colour: a face mesh covers about a third of the view


@pytest.fixture(scope="module")
def face() -> dict:
    """An analytic head's render, depth and the mesh of its depth map (a GLB from trimesh)."""
    sample = GeneratorSpec("analytic").create().sample([3], jitter=False)
    mesh = depth_to_mesh(sample["depth"][0], sample["camera"][0], sample["mask"][0])
    return {
        "image": sample["image"][0].permute(1, 2, 0).numpy(), "depth": sample["depth"][0, 0].numpy(),
        "mask": sample["mask"][0, 0].numpy(), "glb": mesh.export(file_type="glb"),
    }  # fmt: skip


def gallery(folder: Path, face: dict) -> Path:
    """A page like predict's: the render, depth panels on one scale with a colour bar, the depth PNG, the mesh; and a
    photo that failed."""
    folder.mkdir()
    Image.fromarray(face["image"]).save(folder / "render.png")
    write_atomic(folder / "depth.png", depth_figure_png([("depth", face["depth"], face["mask"]), ("depth + 0.05", face["depth"] + 0.05, face["mask"])]))
    write_depth_png(folder / "depth16.png", face["depth"], face["mask"])
    (folder / "face.glb").write_bytes(face["glb"])
    items = [
        GalleryItem("seed 3", [("render", "render.png"), ("depth", "depth.png"), ("16-bit depth", "depth16.png")], mesh="face.glb",
                    scores={"psnr": 31.2}),
        GalleryItem("blurry.jpg", note="no face found"),
    ]  # fmt: skip
    return write_gallery(folder, "seed 3 <analytic>", items, {"photos": 2})


def test_the_gallery_opens_from_disk_with_every_image_and_a_drawn_mesh(tmp_path, face):
    check = check_page(gallery(tmp_path / "page", face), CHROMIUM)
    assert check.state == "ready", check.failures
    assert check.console_errors == []
    assert [(i["src"], i["width"]) for i in check.images] == [("render.png", 512), ("depth.png", check.images[1]["width"]), ("depth16.png", 128)]
    assert check.images[1]["width"] > 300
    (view,) = check.views
    assert view["changed"] > DRAWN and view["std"] > 5.0, view  # pixels of the mesh, not an empty canvas


def test_a_missing_image_or_a_corrupt_mesh_fails_the_check(tmp_path, face):
    page = gallery(tmp_path / "page", face)
    (tmp_path / "page" / "render.png").unlink()
    (tmp_path / "page" / "face.glb").write_bytes(b"glTF" + bytes(range(256)) * 4)
    write_gallery(page.parent, "broken", [GalleryItem("seed 3", [("render", "render.png")], mesh="face.glb")])
    check = check_page(page, CHROMIUM)
    assert check.state == "failed"
    assert any("render.png did not load" in f for f in check.failures) and any("face.glb" in f for f in check.failures)
    assert check.images == [{"src": "render.png", "width": 0}]
    assert any("gallery: image render.png" in e for e in check.console_errors), "\n".join(check.console_errors)
    (view,) = check.views
    assert view["changed"] < DRAWN  # nothing drawn in the view
