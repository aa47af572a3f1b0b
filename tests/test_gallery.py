"""The gallery without a browser: depth on one scale, its colours and 16-bit files in world units; the page's HTML
(escaping, relative paths, items not shown), its viewer files and mesh scripts."""

from __future__ import annotations

import base64
import gzip
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from regress.gallery import GalleryItem, colorize_depth, depth_range, read_depth_png, write_depth_png, write_gallery
from regress.gallery.depth import BACKGROUND, depth_figure_png
from regress.geometry.meshes import mesh_to_ply


def ramp(low: float, high: float, size: int = 32) -> np.ndarray:
    return np.linspace(low, high, size * size, dtype=np.float32).reshape(size, size)


def test_depth_range_is_one_scale_over_all_maps_and_ignores_the_background():
    first, second = ramp(2.0, 2.5), ramp(2.4, 3.0)
    mask = np.ones((32, 32), np.float32)
    mask[:4] = 0  # off the face: holds far-away background depth
    first[:4] = second[:4] = 50.0
    near, far = depth_range([first, torch.from_numpy(second)[None, None]], [mask, torch.from_numpy(mask)[None]])
    values = np.concatenate([first[4:].ravel(), second[4:].ravel()])
    assert (near, far) == pytest.approx(tuple(np.percentile(values, [2, 98])))
    assert 2.0 < near < 2.1 and 2.9 < far < 3.0  # both maps' values, not the background's 50
    assert depth_range([ramp(1.0, 1.0)]) == pytest.approx((1.0, 1.001))  # a flat map still has a scale


def test_the_same_depth_has_the_same_colour_in_every_map_of_a_row():
    first = ramp(2.0, 2.5)
    second = first.copy()
    second[:16] += 0.4  # the lower half is the same depth in both maps, the upper half lies further in the second
    near, far = depth_range([first, second])
    a, b = colorize_depth(first, None, near, far), colorize_depth(second, None, near, far)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert (a[16:] == b[16:]).all() and (a[:16] != b[:16]).any()
    alone = colorize_depth(second, None, *depth_range([second]))
    assert (alone[16:] != a[16:]).any()  # on its own scale the second map would colour the same depths otherwise
    assert a[0, 0].astype(int).sum() > b[-1, -1].astype(int).sum()  # near is the bright end, far the dark one
    mask = np.ones((32, 32))
    mask[0, 0] = 0
    assert tuple(colorize_depth(first, mask, near, far)[0, 0]) == BACKGROUND


def test_depth_png_keeps_world_units_and_the_mask(tmp_path):
    depth = ramp(2.2, 2.9)
    mask = np.ones_like(depth)
    mask[:, :3] = 0
    near, far = write_depth_png(tmp_path / "depth.png", depth, mask)
    assert (near, far) == pytest.approx((float(depth[:, 3:].min()), float(depth[:, 3:].max())))
    with Image.open(tmp_path / "depth.png") as image:
        assert image.mode == "I;16"  # 16-bit grayscale, opens in any image viewer
    back, inside = read_depth_png(tmp_path / "depth.png")
    assert (inside == (mask > 0.5)).all()
    assert np.abs(back[inside] - depth[inside]).max() <= (far - near) / 65534 / 2 + 1e-6
    assert np.isnan(back[~inside]).all()
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="not a depth PNG written by regress"):
        read_depth_png(tmp_path / "plain.png")


def test_depth_figure_colours_both_panels_on_one_scale():
    depth = ramp(2.0, 2.5, 64)
    png = depth_figure_png([("true", depth, None), ("predicted", depth + 0.25, None)])
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    near, far = depth_range([depth, depth + 0.25])
    nearest, farthest = colorize_depth(np.array([[near]]), None, near, far)[0, 0], colorize_depth(np.array([[far]]), None, near, far)[0, 0]
    has = lambda colour: (np.abs(image.astype(int) - colour).max(-1) <= 2).any()  # noqa: E731
    assert has(nearest) and has(farthest)  # the shared scale's two ends both appear (one in each panel)


class Parsed(HTMLParser):
    """Tags with their attributes and the page's text, as a browser would read them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags, self.text = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def attrs(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


def glb_file(path: Path) -> Path:
    path.write_bytes(trimesh.creation.icosphere(subdivisions=1).export(file_type="glb"))
    return path


def sidecar_glb(script: Path) -> bytes:
    _, data = re.fullmatch(r'regressGalleryMesh\("(\d+)", "([A-Za-z0-9+/=]+)"\);\n', script.read_text()).groups()
    return gzip.decompress(base64.b64decode(data))


def test_page_escapes_text_and_quotes_relative_paths(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "crop #1 & co.png")
    name = '<script>alert("x")</script> & "photo"'
    page = write_gallery(tmp_path, "Faces <b>", [GalleryItem(name, [("crop <1>", "crop #1 & co.png")], scores={"psnr": 31.23456, "<k>": "<v>"})])
    text = page.read_text()
    assert "<script>alert" not in text and "<b>" not in text.split("<body")[1]
    parsed = Parsed(text)
    assert name in parsed.text and "Faces <b>" in parsed.text and "<k>" in parsed.text and "<v>" in parsed.text
    assert "31.23" in parsed.text and "31.23456" not in parsed.text  # 4 significant digits
    (image,) = parsed.attrs("img")
    assert image == {"src": "crop%20%231%20%26%20co.png", "alt": "crop <1>"}
    assert (tmp_path / "crop #1 & co.png").is_file()  # the URL names the file beside the page
    with pytest.raises(ValueError, match="relative to the page's folder"):
        write_gallery(tmp_path, "t", [GalleryItem("a", [("crop", str(tmp_path / "crop #1 & co.png"))])])


def test_items_not_shown_are_listed_with_their_reason_and_an_empty_gallery_works(tmp_path):
    items = [
        GalleryItem("ok.jpg", [("crop", "ok.png")]),
        GalleryItem("blurry.jpg", note="no face found: use a photo with one frontal face"),
        GalleryItem("empty.jpg"),
    ]
    parsed = Parsed(write_gallery(tmp_path, "t", items).read_text())
    assert "Not shown (2)" in parsed.text and "1 shown, 2 not shown" in parsed.text
    assert ": no face found: use a photo with one frontal face" in parsed.text and ": nothing to show" in parsed.text
    assert [a["id"] for a in parsed.attrs("article")] == ["item-0"]
    empty = Parsed(write_gallery(tmp_path / "none", "nothing", []).read_text())
    assert "nothing to show" in empty.text and not empty.attrs("article")


def test_summary_sections_become_rows(tmp_path):
    summary = {"pairs": 3, "depth": {"absrel": 0.123456, "per_pair": [1, 2]}, "per_pair": [{"key": "a"}]}
    parsed = Parsed(write_gallery(tmp_path, "t", [], summary).read_text())
    assert "depth · absrel" in parsed.text and "0.1235" in parsed.text and "pairs" in parsed.text
    assert "per_pair" not in parsed.text and "depth · per_pair" not in parsed.text  # lists stay in report.json


def test_viewer_and_mesh_scripts_ship_beside_the_page(tmp_path):
    glb = glb_file(tmp_path / "face.glb")
    sphere = trimesh.creation.icosphere(subdivisions=2)
    (tmp_path / "sphere.ply").write_bytes(mesh_to_ply(sphere))
    items = [GalleryItem("a", mesh="face.glb"), GalleryItem("b", mesh="sphere.ply")]
    parsed = Parsed(write_gallery(tmp_path, "t", items).read_text())
    viewer = tmp_path / "viewer"
    assert (viewer / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert "@google/model-viewer 4.4.0" in (viewer / "README.md").read_text()
    assert [a["src"] for a in parsed.attrs("script") if "src" in a] == ["viewer/model-viewer-umd.min.js"]
    views = parsed.attrs("model-viewer")
    assert [(v["data-script"], v["data-file"]) for v in views] == [("viewer/mesh-0.js", "face.glb"), ("viewer/mesh-1.js", "sphere.ply")]
    assert sidecar_glb(viewer / "mesh-0.js") == glb.read_bytes()  # a .glb travels unchanged
    converted = trimesh.load(io.BytesIO(sidecar_glb(viewer / "mesh-1.js")), file_type="glb", force="mesh")
    assert len(converted.faces) == len(sphere.faces)
    write_gallery(tmp_path, "t", items[:1])
    assert not (viewer / "mesh-1.js").exists()  # the viewer folder is rewritten whole: no stale meshes


def test_a_missing_or_unreadable_mesh_is_refused_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="mesh .*face.glb not found"):
        write_gallery(tmp_path, "t", [GalleryItem("a", mesh="face.glb")])
    (tmp_path / "face.ply").write_bytes(b"not a mesh")
    with pytest.raises(ValueError, match="could not be read for the 3D view"):
        write_gallery(tmp_path, "t", [GalleryItem("a", mesh="face.ply")])
    assert not (tmp_path / "index.html").exists()
