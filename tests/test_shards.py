"""Shards read back: exact round trip to the generator, the WebDataset data module, corrupt and truncated shards."""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from regress.camera import ViewMixture
from regress.datamodules.shards import ShardDataModule
from regress.generate import generate
from regress.generators import create_generator
from regress.sample import ARRAY_FIELDS, collate_samples, decode_sample
from regress.shards import ShardLayout, ShardReadError, iter_shard, read_manifest

SMALL = {"image_resolution": 32, "render_resolution": 16, "depth_resolution": 16}
SEED_START, NUM_SAMPLES, PER_SHARD = 10, 6, 2


@pytest.fixture(scope="module")
def generator():
    return create_generator("analytic", **SMALL)


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


def test_a_manifest_of_another_format_is_refused_by_name(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else", "shards": []}))
    with pytest.raises(ValueError, match=r"manifest.json is not a regress shard manifest \(format 'something-else'"):
        data_module(tmp_path)


def test_manifest_gives_the_latent_shape_and_mean_latent(dataset, generator):
    module = data_module(dataset)
    assert module.latent_shape == generator.latent_shape and module.depth_resolution == 16
    assert torch.equal(module.mean_latent(), generator.mean_latent().float())


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


def test_truncated_shard_names_the_file_and_sample_or_is_skipped_and_counted(copy, caplog):
    shard = copy / "synth-000001.tar"
    header, data = member_offsets(shard)["0000000013.depth.npy"]
    shard.write_bytes(shard.read_bytes()[: data + 100])  # cut inside sample 13's depth
    with pytest.raises(ShardReadError, match=r"synth-000001.tar: corrupt or truncated in sample 0000000013 after 1 complete samples"):
        list(data_module(copy, val_shards=2).val_dataloader())
    module = data_module(copy, val_shards=2, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="regress.datamodules.shards"):
        seeds = [m["seed"] for b in module.val_dataloader() for m in b["meta"]]
    assert seeds == [12, 14, 15] and module.corrupt.count == 1
    assert "skipped corrupt shard data (1 so far in this process)" in caplog.text and "synth-000001.tar" in caplog.text


def test_shard_cut_at_a_member_boundary_is_caught(copy):
    shard = copy / "synth-000002.tar"
    header, _ = member_offsets(shard)["0000000015.meta.json"]
    shard.write_bytes(shard.read_bytes()[:header])  # a tar reader sees a clean end here
    with pytest.raises(ShardReadError, match=r"synth-000002.tar: sample 0000000015 is incomplete .*no meta.json"):
        list(data_module(copy, val_shards=1).val_dataloader())
    header, _ = member_offsets(copy / "synth-000001.tar")["0000000013.image.png"]
    (copy / "synth-000001.tar").write_bytes((copy / "synth-000001.tar").read_bytes()[:header])  # whole sample 13 gone
    with pytest.raises(ShardReadError, match=r"synth-000001.tar: holds 1 samples, its manifest says 2"):
        list(data_module(copy, val_shards=2).val_dataloader())


def test_corrupt_image_names_file_sample_and_member_or_is_skipped(copy):
    shard = copy / "synth-000002.tar"
    _, data = member_offsets(shard)["0000000014.image.png"]
    raw = bytearray(shard.read_bytes())
    raw[data + 20 : data + 60] = bytes(40)  # zero the PNG header chunk: same size, undecodable
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"synth-000002.tar sample 0000000014: member 'image.png' cannot be decoded"):
        list(data_module(copy, val_shards=1).val_dataloader())
    module = data_module(copy, val_shards=1, skip_corrupt=True)
    assert [m["seed"] for b in module.val_dataloader() for m in b["meta"]] == [15]
    assert module.corrupt.count == 1
    np.testing.assert_array_equal(read_manifest(copy)["latent_shape"], [14, 32])
