"""`python -m regress.export`: a shard set or a pairs set written as the origin's loose-file layout, for any other tool.

    python -m regress.export --source data/shards/analytic --output data/folder/analytic
    python -m regress.export --source data/pairs/analytic --output data/folder/pairs --relative_depth true --mesh_format ply

One folder per member, one file per sample (`regress.store.loose_files`): `images/KEY.png` (the pairs' real photo),
`depth/KEY.png` (16-bit, world units: `gallery.depth.depth_png_bytes`) and `depth/KEY.npy` (exact), with
`--relative_depth` also `depthRxR/KEY.png` (the origin's 8-bit relative depth), `mask/`, `latent/`, `cam_poses/`,
`camera_cond/` (.npy, the stored bytes) and `shapes/KEY.obj|.ply`. KEY is `seedNNNN` for shards, the record's key for
pairs. Every file is written whole (`store.files`), the image last, so a rerun skips the samples done and gives the same
bytes; `manifest.json` lists every file's size and SHA-256. `--data folder` reads the result. A bad command line exits
with status 2, other bad input with 1, in one line (`regress.errors`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Literal

from regress.configs import run_job

EXPORTED = {"image": "images", "depth": "depth", "mask": "mask", "w": "latent", "camera": "cam_poses", "camera_cond": "camera_cond", "mesh": "shapes"}
COPIED = ("mask", "w", "camera", "camera_cond")  # .npy members written with the stored bytes


def source_samples(source: Path, image: str) -> tuple[dict[str, Any], int, Iterator[tuple[str, dict[str, bytes]]]]:
    """A shard or pairs set's manifest, its number of samples and (file key, members) of each, verified as read; pairs
    give `image` (real or inverted) as `image.png`."""
    from regress.store.loose_files import seed_key
    from regress.store.pairs import PAIRS_FORMAT, RECORDS, check_pair_records, read_pair_record, read_pairs_manifest
    from regress.store.shard_set import FORMAT as SHARDS_FORMAT
    from regress.store.shard_set import read_shard_manifest, shard_url
    from regress.store.shards import iter_shard

    path = source / "manifest.json"
    found = json.loads(path.read_bytes()).get("format") if path.is_file() else None
    if found == SHARDS_FORMAT:
        manifest = read_shard_manifest(source)
        records = sorted(manifest["shards"], key=lambda r: r["index"])
        stream = ((seed_key(int(key)), members) for r in records for key, members in iter_shard(shard_url(source, r["file"]), r["count"], r["bytes"], r["sha256"]))
        return manifest, sum(r["count"] for r in records), stream
    if found == PAIRS_FORMAT:
        manifest = read_pairs_manifest(source)
        if (source / RECORDS).is_dir():
            keys, problems = check_pair_records(source, manifest)
            if problems:
                raise ValueError(f"{problems[0]}; rebuild the set with python -m regress.evaluate pairs")
            pairs = ((key, read_pair_record(source, key)) for key in keys)
        else:
            pairs = (pair for s in manifest.get("shards", []) for pair in iter_shard(str(source / s["file"]), s["count"], s.get("bytes"), s.get("sha256")))
        count = len(manifest.get("record_files") or []) or sum(s["count"] for s in manifest.get("shards", []))
        return manifest, count, ((key, {**members, "image.png": members["real.png"] if image == "real" else members["image.png"]}) for key, members in pairs)
    raise FileNotFoundError(f"{source} is neither a shard set nor a pairs set (no manifest.json of either); give the --output of "
                            "python -m regress.generate or python -m regress.evaluate pairs")  # fmt: skip


def sample_files(key: str, members: dict[str, bytes], mesh_format: str, relative_depth: bool) -> dict[str, bytes]:
    """One sample's files (path under the output -> bytes), the image last: its presence marks the sample done."""
    import numpy as np

    from regress.gallery.depth import depth_png_bytes, relative_depth_png_bytes
    from regress.geometry.mesh_files import SURFACE_FORMATS, mesh_file_bytes, read_mesh
    from regress.sample import decode_image, decode_npy, encode_image

    files: dict[str, bytes] = {}
    if "depth.npy" in members:
        depth = decode_npy(members["depth.npy"])[0]
        files[f"{EXPORTED['depth']}/{key}.npy"] = members["depth.npy"]
        files[f"{EXPORTED['depth']}/{key}.png"] = depth_png_bytes(depth)[0]
        if relative_depth:
            files[f"depth{depth.shape[0]}x{depth.shape[1]}/{key}.png"] = relative_depth_png_bytes(depth)
    for member in COPIED:
        if f"{member}.npy" in members:
            files[f"{EXPORTED[member]}/{key}.npy"] = members[f"{member}.npy"]
    stored = next((f for f in SURFACE_FORMATS if f"mesh.{f}" in members), None)
    if stored is not None:
        data = members[f"mesh.{stored}"]
        files[f"{EXPORTED['mesh']}/{key}.{mesh_format}"] = data if stored == mesh_format else mesh_file_bytes(read_mesh(data, stored), mesh_format)
    image = next((m for m in members if m.startswith("image.")), None)
    if image is None:
        raise ValueError(f"sample {key} has no image member; the set is damaged: rebuild it")
    files[f"{EXPORTED['image']}/{key}.png"] = members[image] if image == "image.png" else encode_image(np.asarray(decode_image(members[image]).permute(1, 2, 0)))
    return files


def export(
    source: str,
    output: str,
    mesh_format: Literal["obj", "ply"] = "obj",
    relative_depth: bool = False,
    image: Literal["real", "inverted"] = "real",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the samples of a shard set or a pairs set to `output` as the origin's loose-file layout, with a manifest.

    Args:
        source: a shard set (python -m regress.generate's --output) or a pairs set (python -m regress.evaluate pairs')
        output: the folder written; a rerun with the same options skips the samples already there
        mesh_format: the meshes' files, obj or ply (samples without a surface get none)
        relative_depth: also write the origin's 8-bit relative depth PNGs (depthRxR/, near bright, no scale)
        image: for a pairs set, the image written: the real photo's crop or the inverted render
        progress: show a progress bar
    """
    from tqdm import tqdm

    from regress import __version__
    from regress.store.files import file_sha256, write_atomic, write_json
    from regress.store.locks import hold_folder
    from regress.store.loose_files import FILES, FORMAT, MANIFEST, SETTINGS
    from regress.store.shard_set import setting_differences

    src, out = Path(source), Path(output)
    if src.resolve() == out.resolve():
        raise ValueError(f"--output {out} is the source itself; choose another folder")
    settings = {"source": str(source), "mesh_format": mesh_format, "relative_depth": relative_depth, "image": image}
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / SETTINGS).is_file():
        raise FileExistsError(f"{out} exists and holds no regress.export output; choose another --output")
    manifest, count, samples = source_samples(src, image)
    with hold_folder(out, "python -m regress.export", f"exporting {source}", "let it finish, or give another --output"):
        saved = json.loads((out / SETTINGS).read_text()) if (out / SETTINGS).is_file() else settings
        if saved != settings:
            raise ValueError(f"{out} holds an export with other options ({', '.join(setting_differences(saved, settings))}); "
                             "give the same options, or another --output")  # fmt: skip
        write_json(out / SETTINGS, settings)
        (out / MANIFEST).unlink(missing_ok=True)  # a manifest means complete
        written = skipped = 0
        hashed: dict[str, list] = {}  # the files written now, hashed from memory: only those of an earlier run are read back
        for key, members in tqdm(samples, total=count, desc="export", unit="sample", disable=not progress, dynamic_ncols=True):
            if (out / EXPORTED["image"] / f"{key}.png").is_file():
                skipped += 1
                continue
            for name, data in sample_files(key, members, mesh_format, relative_depth).items():
                (out / name).parent.mkdir(exist_ok=True)
                write_atomic(out / name, data)
                hashed[name] = [len(data), hashlib.sha256(data).hexdigest()]
            written += 1
        folders = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
        files = (f"{p.relative_to(out)}" for folder in folders for p in sorted(folder.iterdir()) if p.is_file())
        listed = {name: hashed.get(name) or [(out / name).stat().st_size, file_sha256(out / name)] for name in files}
        facts = {k: manifest[k] for k in ("latent_shape", "mean_latent", "generator", "settings") if k in manifest}
        write_json(out / MANIFEST, {"format": FORMAT, "export": settings, "samples": written + skipped, "regress_version": __version__, **facts, FILES: listed})
    print(f"regress.export: {written} samples written to {out} ({skipped} already there), {len(listed)} files in {MANIFEST}", file=sys.stderr)
    return {"output": str(out), "written": written, "skipped": skipped, "files": len(listed)}


def main(args: list[str] | None = None) -> Any:
    """Command line; errors exit 2 (usage) or 1 with one line (regress.errors)."""
    return run_job("regress.export", export, "export", args)


if __name__ == "__main__":
    main()
