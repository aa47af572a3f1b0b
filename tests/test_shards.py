"""Shards read back: exact round trip to the generator, the WebDataset data module, corrupt and truncated shards
(each checked against its manifest before use)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from regress.camera import ViewMixture
from regress.datamodules.shards import ShardDataModule
from regress.generate import generate
from regress.generators import GeneratorSpec
from regress.sample import ARRAY_FIELDS, collate_samples, decode_sample
from regress.store.shard_set import ShardLayout, read_shard_manifest
from regress.store.shards import ShardReadError, iter_shard, read_shard_record

SMALL = {"image_resolution": 32, "render_resolution": 16, "depth_resolution": 16}
SEED_START, NUM_SAMPLES, PER_SHARD = 10, 6, 2


@pytest.fixture(scope="module")
def generator():
    return GeneratorSpec("analytic", options=SMALL).create()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Seeds 10..15 in 3 shards of 2, with 16^3 meshes."""
    output = tmp_path_factory.mktemp("shards")
    generate(
        output, generator="analytic", generator_options=SMALL, seed_start=SEED_START, num_samples=NUM_SAMPLES,
        samples_per_shard=PER_SHARD, batch_size=PER_SHARD, with_mesh=True, mesh_resolution=16, progress=False,
    )  # fmt: skip
    return output


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    """A private copy of the dataset to damage."""
    return Path(shutil.copytree(dataset, tmp_path / "shards"))


def expected_batch(generator, seeds) -> dict:
    """What the generator gives for seeds, with the settings `generate` uses by default."""
    with torch.no_grad():
        return generator.sample(list(seeds), ViewMixture.load("published"), psi=0.7, cutoff=None, jitter=True)


def assert_batches_equal(batch: dict, expected: dict) -> None:
    for name in ARRAY_FIELDS:
        assert torch.equal(batch[name], expected[name]), name  # exact, images included (png is lossless)
    assert batch["meta"] == expected["meta"]


def data_module(root: Path, **options) -> ShardDataModule:
    defaults = dict(batch_size=2, val_shards=1, image_size=None, num_workers=0, shuffle_buffer=4)
    return ShardDataModule(root, **{**defaults, **options})


def test_layout_fixes_seeds_by_shard_index_whatever_the_number_of_ranks():
    layout = ShardLayout("synth", seed_start=100, num_samples=25, samples_per_shard=10)
    assert layout.num_shards == 3 and [layout.seeds(i) for i in range(3)] == [range(100, 110), range(110, 120), range(120, 125)]
    assert layout.filename(2) == "synth-000002.tar"
    for world_size in (1, 2, 3, 5):
        shares = [list(layout.indices_for_rank(r, world_size)) for r in range(world_size)]
        assert sorted(sum(shares, [])) == [0, 1, 2]
    with pytest.raises(ValueError, match="samples_per_shard >= 1"):
        ShardLayout("synth", 0, 10, 0)


def test_shard_reads_back_exactly_what_the_generator_samples(dataset, generator):
    """Both ways in: the plain shard reader, and the data module's validation pipeline."""
    expected = expected_batch(generator, [12, 13])
    samples = [decode_sample(members, f"sample {key}") for key, members in iter_shard(str(dataset / "synth-000001.tar"), expected=2)]
    assert_batches_equal(collate_samples(samples), expected)
    batches = list(data_module(dataset, val_shards=2).val_dataloader())
    assert [[m["seed"] for m in b["meta"]] for b in batches] == [[12, 13], [14, 15]]
    assert_batches_equal(batches[0], expected)
    assert set(batches[0]) == set(expected)  # the online module's batch layout, nothing more


def test_a_pipe_template_reads_the_same_batches_as_the_folder(dataset, generator):
    module = data_module(f"pipe:cat {dataset}/{{name}}", val_shards=2)
    assert module.val_urls == [f"pipe:cat {dataset}/synth-00000{i}.tar" for i in (1, 2)]
    batches = list(module.val_dataloader())
    assert [[m["seed"] for m in b["meta"]] for b in batches] == [[12, 13], [14, 15]]
    assert_batches_equal(batches[0], expected_batch(generator, [12, 13]))
    with pytest.raises(FileNotFoundError, match=r"no manifest.json at pipe:cat .*missing/manifest.json .*pipe: command failed"):
        data_module(f"pipe:cat {dataset}/missing/{{name}}")


def test_a_manifest_of_another_format_or_damaged_is_refused_by_name(tmp_path, dataset):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else", "shards": []}))
    with pytest.raises(ValueError, match=r"manifest.json is not a regress shard manifest \(format 'something-else'"):
        data_module(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps([1]))
    with pytest.raises(ValueError, match=r"manifest.json is not a regress shard manifest \(format None"):
        data_module(tmp_path)
    manifest = json.loads((dataset / "manifest.json").read_text())
    del manifest["shards"][0]["sha256"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest.json is damaged: its 'shards' are not a list of records with bytes, count, file"):
        data_module(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=r"manifest.json is damaged \(Expecting value.*\); rerun the python -m regress.generate command"):
        data_module(tmp_path)


def test_manifest_gives_the_latent_shape_and_mean_latent(dataset, generator):
    space = data_module(dataset).latent_space
    assert space.shape == generator.latent_shape and space.generator is None
    assert torch.equal(space.mean, generator.mean_latent().float())


def test_meshes_decode_into_the_batch(dataset, generator):
    batch = next(iter(data_module(dataset, val_shards=1, with_mesh=True).val_dataloader()))
    assert [m["seed"] for m in batch["meta"]] == [14, 15] and len(batch["mesh"]) == 2
    mesh = batch["mesh"][0]
    assert mesh["vertices"].dtype == torch.float32 and mesh["faces"].shape[1] == 3 and len(mesh["faces"]) > 100
    assert mesh["vertices"].abs().max() <= generator.box_size / 2 + 1e-6


def test_validation_with_two_workers_sees_every_sample_once(dataset):
    module = data_module(dataset, val_shards=2, num_workers=2)
    seeds = sorted(m["seed"] for b in module.val_dataloader() for m in b["meta"])
    assert seeds == [12, 13, 14, 15]


def test_training_resamples_endlessly_in_epochs_and_resizes_on_device(dataset):
    module = data_module(dataset, val_shards=1, epoch_length=12, image_size=16)
    loader, epochs = module.train_dataloader(), []
    for _ in range(2):  # two epochs of 12 samples in batches of 2
        batches = list(loader)
        assert len(batches) == 6 and all(len(b["meta"]) == 2 for b in batches)
        epochs.append([m["seed"] for b in batches for m in b["meta"]])
    assert set(epochs[0]) | set(epochs[1]) <= {10, 11, 12, 13}  # training shards only
    assert epochs[0] != epochs[1] and min(len(set(e)) for e in epochs) >= 3  # shuffled anew each epoch
    batch = module.on_after_batch_transfer(batches[0], 0)
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.uint8
    assert batch["depth"].shape == (2, 1, 16, 16) and batch["w"].shape == (2, 14, 32)


def test_missing_manifest_and_too_many_validation_shards_are_clear_errors(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no manifest.json at .*run \(or rerun\) python -m regress.generate"):
        ShardDataModule(tmp_path)
    with pytest.raises(ValueError, match="val_shards must be in \\[0, 2\\]"):
        data_module(dataset, val_shards=3)


def member_offsets(shard: Path) -> dict[str, tuple[int, int]]:
    """Header and data offsets of every member of a tar."""
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def flip_bytes(shard: Path, member: str, count: int = 16) -> None:
    """Invert `count` bytes inside a member's array data: the shard keeps its size and still reads as a tar."""
    _, data = member_offsets(shard)[member]
    raw = bytearray(shard.read_bytes())
    raw[data + 200 : data + 200 + count] = bytes(b ^ 0xFF for b in raw[data + 200 : data + 200 + count])
    shard.write_bytes(bytes(raw))


def val_seeds(module: ShardDataModule) -> list[int]:
    return [m["seed"] for b in module.val_dataloader() for m in b["meta"]]


def test_flipped_bytes_in_a_member_never_reach_the_model(copy, caplog):
    """16 bytes of a depth.npy inverted: the shard fails its manifest's SHA-256 before any of its samples is used."""
    flip_bytes(copy / "synth-000001.tar", "0000000013.depth.npy")
    with pytest.raises(ShardReadError, match=r"synth-000001.tar: SHA-256 \w{16}\.\.\. differs from its manifest's \w{16}\.\.\.: corrupt .*regenerate it"):
        list(data_module(copy, val_shards=2).val_dataloader())
    module = data_module(copy, val_shards=2, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="regress.datamodules.shards"):
        assert val_seeds(module) == [14, 15]  # seed 12, before the damage in its shard, is held back too
    assert module.corrupt.count == 1
    assert "skipped corrupt data (1 so far in this process)" in caplog.text and "synth-000001.tar: SHA-256" in caplog.text


def test_a_pipe_shard_is_verified_before_use_too(copy):
    flip_bytes(copy / "synth-000002.tar", "0000000014.mask.npy")
    module = data_module(f"pipe:cat {copy}/{{name}}", val_shards=2, skip_corrupt=True)
    assert val_seeds(module) == [12, 13] and module.corrupt.count == 1
    (copy / "synth-000002.tar").unlink()
    with pytest.raises(ShardReadError, match=r"pipe:cat .*synth-000002.tar: cannot be read \(.*exit 1"):
        val_seeds(data_module(f"pipe:cat {copy}/{{name}}", val_shards=1))


def test_an_unchanged_local_shard_is_hashed_once_per_process_and_a_touched_one_again(copy):
    shard = copy / "synth-000001.tar"
    record = read_shard_record(shard)

    def read() -> list[str]:
        return [key for key, _ in iter_shard(str(shard), record["count"], record["bytes"], record["sha256"])]

    assert read() == ["0000000012", "0000000013"]  # verified: the hash pass, then the parse
    stat = shard.stat()
    flip_bytes(shard, "0000000013.depth.npy")
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # same inode, size and mtime: the file this process already verified, so no second hash pass
    assert read() == ["0000000012", "0000000013"]
    os.utime(shard)  # written since: hashed again before use
    with pytest.raises(ShardReadError, match=r"synth-000001.tar: SHA-256 \w{16}\.\.\. differs from its manifest's"):
        read()


@pytest.mark.parametrize("change", ["truncate", "append"])
def test_a_shard_of_the_wrong_size_is_refused_before_use(copy, change):
    shard = copy / "synth-000001.tar"
    header, data = member_offsets(shard)["0000000013.depth.npy"]
    raw = shard.read_bytes()
    shard.write_bytes(raw[: data + 100] if change == "truncate" else raw + bytes(1024))
    size = shard.stat().st_size
    with pytest.raises(ShardReadError, match=rf"synth-000001.tar: {size} bytes, its manifest says {len(raw)}: truncated or replaced"):
        list(data_module(copy, val_shards=2).val_dataloader())
    module = data_module(copy, val_shards=2, skip_corrupt=True)
    assert val_seeds(module) == [14, 15] and module.corrupt.count == 1


def test_truncated_shard_read_without_its_record_names_the_file_and_sample(copy):
    """What a reader without the manifest's size and hash (a pairs set) still reports."""
    shard = copy / "synth-000001.tar"
    header, data = member_offsets(shard)["0000000013.depth.npy"]
    shard.write_bytes(shard.read_bytes()[: data + 100])  # cut inside sample 13's depth
    with pytest.raises(ShardReadError, match=r"synth-000001.tar: corrupt or truncated in sample 0000000013 after 1 complete samples"):
        list(iter_shard(str(shard), expected=2))


def test_shard_cut_at_a_member_boundary_is_caught_without_its_record(copy):
    shard = copy / "synth-000002.tar"
    header, _ = member_offsets(shard)["0000000015.meta.json"]
    shard.write_bytes(shard.read_bytes()[:header])  # a tar reader sees a clean end here
    with pytest.raises(ShardReadError, match=r"synth-000002.tar: sample 0000000015 is incomplete .*no meta.json"):
        list(iter_shard(str(shard), expected=2))
    shard = copy / "synth-000001.tar"
    header, _ = member_offsets(shard)["0000000013.image.png"]
    shard.write_bytes(shard.read_bytes()[:header])  # whole sample 13 gone
    with pytest.raises(ShardReadError, match=r"synth-000001.tar: holds 1 samples, its manifest says 2"):
        list(iter_shard(str(shard), expected=2))


def record_as_is(root: Path, shard: Path) -> None:
    """Give a shard's manifest record its current size and SHA-256: a shard that was written damaged."""
    manifest = json.loads((root / "manifest.json").read_text())
    record = next(r for r in manifest["shards"] if r["file"] == shard.name)
    record["bytes"], record["sha256"] = shard.stat().st_size, hashlib.sha256(shard.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_corrupt_image_names_file_sample_and_member_or_is_skipped(copy):
    shard = copy / "synth-000002.tar"
    _, data = member_offsets(shard)["0000000014.image.png"]
    raw = bytearray(shard.read_bytes())
    raw[data + 20 : data + 60] = bytes(40)  # zero the PNG header chunk: same size, undecodable
    shard.write_bytes(bytes(raw))
    record_as_is(copy, shard)
    with pytest.raises(ValueError, match=r"synth-000002.tar sample 0000000014: member 'image.png' cannot be decoded"):
        list(data_module(copy, val_shards=1).val_dataloader())
    module = data_module(copy, val_shards=1, skip_corrupt=True)
    assert val_seeds(module) == [15]
    assert module.corrupt.count == 1
    np.testing.assert_array_equal(read_shard_manifest(copy)["latent_shape"], [14, 32])
