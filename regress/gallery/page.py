"""`index.html`: a gallery of results that opens from the folder, with no network, in any current browser.

Each item shows its images, a video and an interactive 3D view of its mesh, with its scores; items with nothing to
show are listed with the reason. The 3D view is `<model-viewer>` (viewer/README.md: the pinned npm release), copied
into `viewer/` beside the page. Browsers refuse to fetch file:// URLs, so each mesh also travels as a small script,
`viewer/mesh-N.js`, holding its GLB gzipped in base64, loaded with a <script> tag (allowed from file://) when its view
scrolls near, and handed to the viewer as a Blob. The page checks itself: `<body data-gallery>` turns from `loading`
to `ready` once every image, video and mesh has loaded and been drawn, or to `failed`, with the reasons in
`data-failures` (JSON) and on the console.
"""

from __future__ import annotations

import base64
import gzip
import html
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import trimesh

from regress.store.files import write_atomic, write_folder

VIEWER_FILES = ("model-viewer-umd.min.js", "LICENSE", "LICENSE.three", "LICENSE.lit", "LICENSE.gainmap-js", "README.md")
VIEWER_SCRIPT = "model-viewer-umd.min.js"
VIEWER_FOLDER = "viewer"


@dataclass
class GalleryItem:
    """One result shown on the page. Paths are relative to the page's folder; `note` says what went wrong, if anything.

    `images`: (caption, path) pairs; `video`: an mp4; `mesh`: a .glb (.ply, .obj, .stl, .off and .gltf are converted
    with trimesh for the view); `scores`: numbers or words shown in a table.
    """

    name: str
    images: list[tuple[str, str]] = field(default_factory=list)
    video: str | None = None
    mesh: str | None = None
    scores: dict[str, float | str] = field(default_factory=dict)
    note: str = ""

    @property
    def shown(self) -> bool:
        return bool(self.images or self.video or self.mesh)


def write_gallery(folder: Path, title: str, items: list[GalleryItem], summary: dict | None = None) -> Path:
    """Write `folder/index.html` and its `viewer/` folder (the viewer and one script per mesh); the page's path.

    `summary`: the run's figures shown above the items (one level of nested dicts becomes `section · key` rows).
    The viewer folder is replaced whole and the page written last, each atomically.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    viewer = {name: files("regress.gallery").joinpath(VIEWER_FOLDER, name).read_bytes() for name in VIEWER_FILES}
    meshes = {}
    for index, item in enumerate(items):
        if item.mesh is not None:
            meshes[index] = mesh_script_name(index)
            viewer[meshes[index]] = mesh_script(index, folder / relative(item.mesh))
    write_folder(folder / VIEWER_FOLDER, viewer)
    page = folder / "index.html"
    write_atomic(page, render_page(title, items, summary or {}, meshes).encode())
    return page


def relative(path: str) -> str:
    """A path relative to the page, in URL form (forward slashes); an absolute one is refused."""
    posix = PurePosixPath(str(path).replace("\\", "/"))
    if posix.is_absolute() or not str(path):
        raise ValueError(f"gallery paths are relative to the page's folder, got {path!r}")
    return str(posix)


def mesh_script_name(index: int) -> str:
    return f"mesh-{index}.js"


def glb_bytes(path: Path) -> bytes:
    """The mesh file as GLB bytes: a .glb as it is, other formats through trimesh (with vertex normals, for shading)."""
    if not path.is_file():
        raise FileNotFoundError(f"mesh {path} not found: write the mesh before the gallery")
    if path.suffix.lower() == ".glb":
        return path.read_bytes()
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
        return trimesh.exchange.gltf.export_glb(mesh, include_normals=True)
    except Exception as error:  # trimesh raises many kinds for a file it cannot read
        raise ValueError(f"mesh {path} could not be read for the 3D view ({error}); write it as .glb, .ply or .obj") from error


def mesh_script(index: int, path: Path) -> bytes:
    """`viewer/mesh-N.js`: hands mesh N's GLB, gzipped and in base64, to the page's `regressGalleryMesh`."""
    data = base64.b64encode(gzip.compress(glb_bytes(path), compresslevel=6, mtime=0)).decode()
    return f'regressGalleryMesh("{index}", "{data}");\n'.encode()


def _text(value) -> str:
    return html.escape(str(value), quote=True)


def _url(path: str) -> str:
    return _text(quote(relative(path)))


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _table(rows: dict, css: str) -> str:
    cells = "".join(f"<tr><th>{_text(key)}</th><td>{_text(_number(value))}</td></tr>" for key, value in rows.items())
    return f'<table class="{css}">{cells}</table>' if cells else ""


def flat_summary(summary: dict) -> dict:
    """Nested sections (`{"depth": {"absrel": 0.1}}`) as `depth · absrel` rows; lists are left out (too long)."""
    rows = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            rows.update({f"{key} · {k}": v for k, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, list):
            rows[key] = value
    return rows


def render_item(index: int, item: GalleryItem, mesh_script_file: str | None) -> str:
    figures = [f'<figure><img src="{_url(path)}" alt="{_text(caption)}"><figcaption>{_text(caption)}</figcaption></figure>'
               for caption, path in item.images]  # fmt: skip
    if item.video:
        figures.append(f'<figure><video src="{_url(item.video)}" controls muted loop playsinline preload="metadata"></video>'
                       f'<figcaption>video</figcaption></figure>')  # fmt: skip
    if item.mesh:
        figures.append(
            f'<figure><model-viewer data-key="{index}" data-script="{_url(VIEWER_FOLDER + "/" + mesh_script_file)}" '
            f'data-file="{_text(relative(item.mesh))}" camera-controls touch-action="pan-y" interaction-prompt="none" '
            f'tone-mapping="neutral" exposure="0.6" shadow-intensity="1" '
            f'alt="3D mesh of {_text(item.name)}"></model-viewer>'
            f'<figcaption>3D: drag to turn, <a href="{_url(item.mesh)}">{_text(PurePosixPath(relative(item.mesh)).name)}</a>'
            "</figcaption></figure>"
        )
    note = f'<p class="note">{_text(item.note)}</p>' if item.note else ""
    return (f'<article id="item-{index}"><h2>{_text(item.name)}</h2>{note}<div class="media">{"".join(figures)}</div>'
            f'{_table(item.scores, "scores")}</article>')  # fmt: skip


def render_page(title: str, items: list[GalleryItem], summary: dict, mesh_scripts: dict[int, str]) -> str:
    """The page's HTML: the summary, the items not shown with their reasons, then one card per shown item."""
    shown = [render_item(i, item, mesh_scripts.get(i)) for i, item in enumerate(items) if item.shown]
    missing = [f"<li><b>{_text(item.name)}</b>: {_text(item.note or 'nothing to show')}</li>" for item in items if not item.shown]
    failed = f'<section class="failed"><h2>Not shown ({len(missing)})</h2><ul>{"".join(missing)}</ul></section>' if missing else ""
    counts = f"{len(shown)} shown" + (f", {len(missing)} not shown" if missing else "") if items else "nothing to show"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>{STYLE}</style>
<script src="{VIEWER_FOLDER}/{VIEWER_SCRIPT}"></script>
</head>
<body data-gallery="loading">
<h1>{_text(title)}</h1>
<p class="counts">{counts}</p>
{_table(flat_summary(summary), "summary")}
{failed}
{"".join(shown)}
<script>{SELF_CHECK}</script>
</body>
</html>
"""


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 0 0 .4em; }
article { border-top: 1px solid #ddd; padding: 1em 0; }
.media { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; text-align: center; }
img { display: block; height: 240px; width: auto; max-width: 100%; }
video { display: block; width: 256px; }
model-viewer { display: block; width: 300px; height: 300px; background: #cfd5dc; }
model-viewer::part(default-progress-bar) { display: none; }
model-viewer.failed { background: #fde8e8; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { padding: 1px 10px 1px 0; text-align: left; } th { font-weight: normal; color: #555; }
.note { color: #a00; } .failed li { color: #a00; }
"""

# Plain JavaScript, no build step: counts what has loaded, loads each mesh's script when its view comes near.
SELF_CHECK = r"""
(() => {
  const pending = new Set(), failures = [];
  const update = () => {
    document.body.dataset.failures = JSON.stringify(failures);
    document.body.dataset.gallery = pending.size ? "loading" : failures.length ? "failed" : "ready";
  };
  const settle = (what, error) => {
    if (!pending.delete(what)) return;
    if (error) { failures.push(error); console.error("gallery: " + error); }
    update();
  };
  for (const img of document.querySelectorAll("img")) {
    pending.add(img);
    const done = () => settle(img, img.naturalWidth > 0 ? null : `image ${img.getAttribute("src")} did not load`);
    if (img.complete) done(); else { img.addEventListener("load", done); img.addEventListener("error", done); }
  }
  for (const video of document.querySelectorAll("video")) {
    pending.add(video);
    const done = () => settle(video, video.error ? `video ${video.getAttribute("src")} did not load` : null);
    if (video.readyState >= 1 || video.error) done();
    else { video.addEventListener("loadedmetadata", done); video.addEventListener("error", done); }
  }
  const viewers = new Map();
  const fail = (viewer, why) => { viewer.classList.add("failed"); settle(viewer, `mesh ${viewer.dataset.file}: ${why}`); };
  window.regressGalleryMesh = async (key, data) => {
    const viewer = viewers.get(key);
    try {
      const packed = await (await fetch("data:application/gzip;base64," + data)).blob();
      const glb = await new Response(packed.stream().pipeThrough(new DecompressionStream("gzip"))).blob();
      viewer.src = URL.createObjectURL(new Blob([glb], { type: "model/gltf-binary" }));
    } catch (error) { fail(viewer, `unreadable (${error})`); }
  };
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      const script = document.createElement("script");
      script.src = entry.target.dataset.script;
      script.onerror = () => fail(entry.target, `${entry.target.dataset.script} is missing`);
      document.head.append(script);
    }
  }, { rootMargin: "400px" });
  for (const viewer of document.querySelectorAll("model-viewer")) {
    pending.add(viewer);
    viewers.set(viewer.dataset.key, viewer);
    if (!customElements.get("model-viewer")) { fail(viewer, "the viewer script (viewer/model-viewer-umd.min.js) did not load"); continue; }
    viewer.addEventListener("error", (event) => fail(viewer, `not a readable GLB (${event.detail && event.detail.type})`));
    viewer.addEventListener("model-visibility", (event) => { if (event.detail.visible) settle(viewer, null); });
    observer.observe(viewer);
  }
  update();
})();
"""
