"""A shard set: a folder (or `pipe:` template) of shards with one seed layout, resumable, and its manifest.

Shard `i` always holds the same seeds, whatever the number of ranks that write the set. Every
shard's record carries the fingerprint of the settings that made it: a rerun keeps the complete,
verified shards of the same settings, regenerates the others and refuses a folder of other
settings. `manifest.json` gathers the records once every shard exists, so a manifest always
means complete; `verify_dataset` checks a finished set against it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

from regress.store.files import parse_manifest, stale_partials, write_failed, write_json
from regress.store.locks import hold_folder
from regress.store.pipes import PipeCommand
from regress.store.shards import ShardReadError, check_shard, read_shard_record, record_path, shard_is_complete

MANIFEST = "manifest.json"
SHARD_RECORD_KEYS = {"file", "index", "count", "bytes", "sha256"}  # what readers and --verify take from each shard's record
FORMAT = "regress-shards-v1"


@dataclass(frozen=True)
class ShardLayout:
    """Which seeds go in which shard: fixed by the seed range and shard size, never by the number of workers."""

    name: str
    seed_start: int
    num_samples: int
    samples_per_shard: int

    def __post_init__(self) -> None:
        if self.seed_start < 0 or self.num_samples < 1 or self.samples_per_shard < 1:
            raise ValueError(
                f"need seed_start >= 0, num_samples >= 1 and samples_per_shard >= 1, got {self.seed_start}, "
                f"{self.num_samples} and {self.samples_per_shard}"
            )
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"shard name {self.name!r} must be a plain file name prefix")

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.samples_per_shard)

    def seeds(self, index: int) -> range:
        start = self.seed_start + index * self.samples_per_shard
        return range(start, min(start + self.samples_per_shard, self.seed_start + self.num_samples))

    def filename(self, index: int) -> str:
        return f"{self.name}-{index:06d}.tar"

    def indices_for_rank(self, rank: int, world_size: int) -> range:
        """Shard i goes to rank i % world_size."""
        return range(rank, self.num_shards, world_size)


def setting_differences(saved: Any, given: Any, name: str = "") -> list[str]:
    """Dotted names of the settings that differ, with both values: `psi: 0.7 -> 0.5`."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return [d for key in sorted(saved.keys() | given.keys()) for d in setting_differences(saved.get(key), given.get(key), f"{name}.{key}".lstrip("."))]
    return [] if saved == given else [f"{name}: {saved!r} -> {given!r}"]


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 of the settings as canonical JSON: the mark every shard of one set carries."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def shard_destination(output: str | Path, staging: Path | None) -> tuple[Path, PipeCommand | None]:
    """The local folder shards are written to (created and proved writable) and the `pipe:` command that then
    takes each finished file, None for a plain folder."""
    target = PipeCommand.parse(output)
    if target is not None and staging is None:
        raise ValueError("a pipe: output needs a local --staging folder, where shards are written and verified before they are piped")
    if not str(staging if target is not None else output).strip():
        raise ValueError("the output folder is empty: give --output DIR")
    folder = Path(staging if target is not None else output)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"output {folder} is a file, not a folder; choose another output folder")
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"output folder {folder} is not writable ({error.strerror or error}); choose another output folder or fix its permissions") from error
    return folder, target


@dataclass(frozen=True)
class ShardSet:
    """The shards of one layout being written to `folder` with one run's settings (each shard carries their
    fingerprint); with a `target`, each finished file is piped to its command and dropped from the folder unless `keep_staged`."""

    folder: Path
    layout: ShardLayout
    settings: dict[str, Any]
    target: PipeCommand | None = None
    keep_staged: bool = False

    @functools.cached_property
    def fingerprint(self) -> str:
        return settings_fingerprint(self.settings)

    def path(self, index: int) -> Path:
        return self.folder / self.layout.filename(index)

    def plan(self, mine: range) -> tuple[list[int], list[int]]:
        """Split these shards into those to (re)generate and those complete and verified (and, for a pipe: output,
        taken by its command: complete ones not yet taken are sent now); drop stale partial files (this rank's claim on
        the folder says no other writer of them runs), the shard's and its record's."""
        todo, skipped = [], []
        for stale in stale_partials(self.folder, {name for i in mine for name in (self.path(i).name, record_path(self.path(i)).name)}):
            stale.unlink(missing_ok=True)
        for index in mine:
            shard = self.path(index)
            record = read_shard_record(shard)
            if record is not None and record.get("fingerprint") != self.fingerprint and (shard.is_file() or record.get("sent_to")):
                raise ValueError(
                    f"{shard} was generated with other settings than this run's{self._what_differs()}; use a new output folder, "
                    "or delete the shards there to regenerate them"
                )
            seeds = self.layout.seeds(index)
            same_seeds = record is not None and record.get("seed_start") == seeds.start and record.get("count") == len(seeds)
            if same_seeds and self.target is not None and self.target.has_taken(shard.name, record):
                skipped.append(index)
            elif same_seeds and shard_is_complete(shard, record, verify=True):
                self.send(index, record)
                skipped.append(index)
            else:
                if shard.is_file():
                    print(f"regress.generate: {shard.name} is incomplete or fails its checksum; regenerating it", file=sys.stderr)
                todo.append(index)
        return todo, skipped

    def send(self, index: int, record: dict[str, Any]) -> None:
        """Pipe a finished shard to the target, note it in the shard's record, then drop the staged file unless kept;
        nothing for a local output."""
        if self.target is None:
            return
        shard = self.path(index)
        write_json(record_path(shard), {**record, "sent_to": self.target.send(shard)})
        if not self.keep_staged:
            shard.unlink()

    def claimed(self, rank: int, world_size: int) -> contextlib.AbstractContextManager[None]:
        """This rank's hold on the folder while it plans and writes. The ranks of this set (its settings, one world
        size) share it; another set, another layout of ranks, or a second writer of this rank's shards is refused: it
        would replace this set's manifest, or delete its partial files under it."""
        return hold_folder(self.folder, "python -m regress.generate", f"writing the {self.layout.name!r} shards of rank {rank}",
                           "let it finish, or use another output folder", share=f"{self.fingerprint}/{world_size}", part=str(rank))  # fmt: skip

    def _manifest(self) -> dict[str, Any] | None:
        """The folder's manifest.json as it is; None when there is none. A ValueError when it is not one of ours."""
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path} cannot be read ({error}); if this tool wrote it, delete it and rerun, else use another output folder") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a regress shard manifest; use another output folder, so that it is not replaced")
        return manifest

    def _what_differs(self) -> str:
        """` (psi: 0.7 -> 0.5, ...)` from the finished set's manifest, when there is one to compare with."""
        try:
            manifest = self._manifest()
        except ValueError:
            return ""
        given = json.loads(json.dumps(self.settings))  # as the manifest spells them: tuples are lists
        differ = setting_differences(manifest["settings"], given) if manifest and manifest.get("settings") else []
        return f" ({', '.join(differ[:4])})" if differ else ""

    def check_output(self) -> None:
        """Refuse a folder whose manifest belongs to something else (another tool, another set's name), or that
        holds more shards of this set's name than this run makes: writing would replace or orphan them."""
        manifest = self._manifest()
        if manifest is not None and manifest.get("name") != self.layout.name:
            raise ValueError(f"{self.folder} holds the shard set {manifest.get('name')!r}, whose manifest this run (--name "
                             f"{self.layout.name}) would replace; use another output folder for a second set")  # fmt: skip
        beyond = sorted(p.name for p in self.folder.glob(f"{self.layout.name}-*.tar") if p.name > self.layout.filename(self.layout.num_shards - 1))
        if beyond:
            raise ValueError(f"{self.folder} holds {len(beyond)} more shards of {self.layout.name!r} than this run makes ({beyond[0]} ...): "
                             "a smaller --num_samples would leave them out of the manifest; use another output folder, or move them away")  # fmt: skip

    def drop_stale_manifest(self) -> None:
        """Remove a manifest of another seed range (a set being extended): a manifest always means complete."""
        manifest = self._manifest()
        if manifest is not None and (manifest.get("seed_start"), manifest.get("num_samples")) != (self.layout.seed_start, self.layout.num_samples):
            (self.folder / MANIFEST).unlink(missing_ok=True)

    def write_manifest_if_complete(self, facts: dict[str, Any]) -> Path | None:
        """Gather every shard's record, the settings and the generator's `facts` into manifest.json once all shards
        of the layout exist; None until then."""
        records = []
        for index in range(self.layout.num_shards):
            shard = self.path(index)
            record = read_shard_record(shard)
            if record is None or record.get("fingerprint") != self.fingerprint:
                return None
            taken = self.target.has_taken(shard.name, record) if self.target is not None else shard_is_complete(shard, record, verify=False)
            if not taken:
                return None
            records.append({k: v for k, v in record.items() if k != "sent_to"})
        layout = self.layout
        manifest = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "name": layout.name,
            "seed_start": layout.seed_start,
            "num_samples": layout.num_samples,
            "samples_per_shard": layout.samples_per_shard,
            **facts,
            "shards": records,
        }
        path = self.folder / MANIFEST
        try:
            write_json(path, manifest)
        except OSError as error:
            raise write_failed(path, error) from error
        if self.target is not None:
            self.target.send(path)
        return path


def shard_url(root: str | Path, name: str) -> str:
    """Where a file of a shard set is read from: a path in the folder `root`, or a `pipe:` template's URL."""
    pipe = PipeCommand.parse(root)
    return pipe.url_for(name) if pipe is not None else str(Path(root) / name)


def read_shard_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a shard folder (or `pipe:` template); a clear error when generation has not finished there."""
    url = shard_url(root, MANIFEST)
    if PipeCommand.parse(root) is None and not Path(root).is_dir():
        state = "is a file, not a folder" if Path(root).exists() else "does not exist"
        raise FileNotFoundError(f"shard folder {root} {state}; give the --output of a python -m regress.generate run")
    try:
        with wds.gopen(url, "rb") as stream:
            text = stream.read()
    except OSError as error:
        reason = error.strerror or error
        raise FileNotFoundError(
            f"no {MANIFEST} at {url} ({reason}): shards were never generated there, generation has not finished, "
            "or the pipe: command failed; run (or rerun) python -m regress.generate with the same config"
        ) from error
    rewrite = "rerun the python -m regress.generate command that made the set to write it again"
    manifest = parse_manifest(text, url, "a regress shard manifest", FORMAT, rewrite)
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(r, dict) and SHARD_RECORD_KEYS <= r.keys() for r in shards):
        raise ValueError(f"{url} is damaged: its 'shards' are not a list of records with {', '.join(sorted(SHARD_RECORD_KEYS))}; {rewrite}")
    return manifest


def verify_dataset(root: str | Path, progress: bool = True) -> tuple[int, list[str]]:
    """(shards checked, one line per bad shard) of a dataset: each shard of its manifest present with its size and
    SHA-256, and in a folder no shard beside them that the manifest does not list. Reads every byte once."""
    manifest = read_shard_manifest(root)
    records, problems, done = manifest["shards"], [], 0
    with tqdm(total=sum(r["bytes"] for r in records), unit="B", unit_scale=True, desc="verify", disable=not progress) as bar:
        for record in records:
            try:
                check_shard(shard_url(root, record["file"]), record["bytes"], record["sha256"], on_read=bar.update)
            except ShardReadError as error:
                problems.append(str(error))
            done += record["bytes"]
            bar.update(done - bar.n)
    if PipeCommand.parse(root) is None:
        listed = {r["file"] for r in records}
        extra = sorted(p for p in Path(root).glob("*.tar") if p.name not in listed)
        problems += [f"{p}: a shard its manifest does not list (another run's or seed range's); move it away" for p in extra]
    return len(records), problems
