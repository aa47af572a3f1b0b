"""The online data module: seed stream layout, rank sharding, determinism, on-device synthesis, resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from regress.camera import ViewMixture
from regress.datamodules.online import TRAIN_FLAG, SynthOnlineDataModule, echoed, train_seed, train_seeds, val_seeds
from regress.models import DepthRegressor

TINY_GENERATOR = {"image_resolution": 32, "render_resolution": 8, "depth_resolution": 8}


def tiny_data(**overrides) -> SynthOnlineDataModule:
    options = dict(generator="analytic", generator_options=TINY_GENERATOR, epoch_length=8, batch_size=2, val_size=4, image_size=32)
    return SynthOnlineDataModule(**{**options, **overrides})


def loader_seeds(loader) -> list[int]:
    return [s for batch in loader for s in batch["seed"].tolist()]


def test_ranks_and_epochs_never_share_a_seed_and_never_touch_validation():
    world, length, epochs = 4, 1000, 3
    shares = {(e, r): train_seeds(7, e, r, world, length) for e in range(epochs) for r in range(world)}
    assert all(len(s) == length // world for s in shares.values())
    everything = [s for share in shares.values() for s in share]
    assert len(set(everything)) == len(everything) == epochs * length
    assert min(everything) >= TRAIN_FLAG and max(everything) < 2**63  # fits int64, above validation
    assert set(everything).isdisjoint(val_seeds(0, 10_000))
    assert shares[(1, 2)][5] == train_seed(7, 1, 2, 5)


def test_seed_stream_is_a_pure_function_of_global_seed_epoch_rank_index():
    assert train_seeds(3, 2, 1, 2, 64) == train_seeds(3, 2, 1, 2, 64)
    assert set(train_seeds(3, 0, 0, 1, 64)).isdisjoint(train_seeds(4, 0, 0, 1, 64))
    with pytest.raises(ValueError, match="rank 5000 is outside"):
        train_seed(0, 0, 5000, 0)


def test_validation_seeds_are_a_fixed_range_split_over_ranks():
    assert list(val_seeds(100, 6)) == [100, 101, 102, 103, 104, 105]
    assert list(val_seeds(100, 6, rank=1, world_size=2)) == [101, 103, 105]
    with pytest.raises(ValueError, match="below the training seeds"):
        val_seeds(TRAIN_FLAG - 2, 4)


def test_loaders_yield_the_stream_of_the_current_epoch():
    data = tiny_data(epoch_length=8, batch_size=4)
    loader = data.train_dataloader()
    assert loader_seeds(loader) == data.train_seeds(0)
    loader.sampler.set_epoch(3)
    assert loader_seeds(loader) == data.train_seeds(3) != data.train_seeds(0)
    assert loader_seeds(data.val_dataloader()) == [0, 1, 2, 3]
    simulated = [set(data.train_seeds(e, rank, 2)) for e in range(3) for rank in range(2)]
    assert sum(map(len, simulated)) == len(set().union(*simulated)) == 24


def test_training_batches_all_have_one_shape():
    data = tiny_data(epoch_length=6, batch_size=4)  # 6 seeds: one batch of 4, the 2 left over are not drawn
    assert [len(b["seed"]) for b in data.train_dataloader()] == [4]
    assert loader_seeds(data.train_dataloader()) == data.train_seeds(0)[:4]
    assert [len(b["seed"]) for b in tiny_data(val_size=3, batch_size=2).val_dataloader()] == [2, 1]  # validation keeps every seed


def test_views_travel_with_seeds_and_batches_match_the_generator():
    data = tiny_data(views="published", jitter=False, image_size=16)
    batch = next(iter(data.train_dataloader()))
    views = ViewMixture.load("published").draw_many(batch["seed"].tolist())
    assert [v.category for v in data._dataset.to_views(batch)] == [v.category for v in views]
    sample = data.on_after_batch_transfer(batch, 0)
    direct = data.generator.sample(batch["seed"].tolist(), ViewMixture.load("published"), psi=0.7, jitter=False)
    for name in ("depth", "mask", "w", "z", "camera", "camera_cond"):
        assert torch.equal(sample[name], direct[name]), name
    assert sample["image"].shape == (2, 3, 16, 16) and sample["image"].dtype == torch.uint8
    assert [m["seed"] for m in sample["meta"]] == batch["seed"].tolist()


def test_same_seed_gives_the_same_batch():
    first, second = tiny_data(), tiny_data()
    a = first.on_after_batch_transfer(next(iter(first.train_dataloader())), 0)
    b = second.on_after_batch_transfer(next(iter(second.train_dataloader())), 0)
    for name in ("image", "depth", "mask", "w", "camera"):
        assert torch.equal(a[name], b[name]), name
    other = tiny_data(seed=1)
    c = other.on_after_batch_transfer(next(iter(other.train_dataloader())), 0)
    assert not torch.equal(a["w"], c["w"])


def test_echoed_batches_come_reuse_times_in_a_row_and_keep_the_epoch_length():
    seeds = list(range(100, 110))  # 10 seeds, batches of 2: 5 batches
    assert echoed(seeds, 2, 1) == seeds
    assert echoed(seeds, 2, 2) == [100, 101, 100, 101, 102, 103, 102, 103, 104, 105]
    assert echoed(seeds, 4, 3) == [100, 101, 102, 103] * 2 + [100, 101]  # a partial last batch is a prefix
    assert echoed(seeds, 3, 10) == [100, 101, 102] * 3 + [100]


def test_reuse_renders_each_training_batch_once_and_hands_it_out_again():
    data = tiny_data(epoch_length=8, reuse=2)
    batches = [data.on_after_batch_transfer(b, 0) for b in data.train_dataloader()]
    seeds = [[m["seed"] for m in b["meta"]] for b in batches]
    assert seeds[0] == seeds[1] != seeds[2] == seeds[3] and len({s for b in seeds for s in b}) == 4
    assert batches[1]["image"] is batches[0]["image"] and batches[3]["w"] is batches[2]["w"]  # not rendered again
    once = tiny_data(epoch_length=8)
    fresh = once.on_after_batch_transfer(next(iter(once.train_dataloader())), 0)
    assert torch.equal(fresh["image"], batches[0]["image"])  # the same stream, each batch twice
    with pytest.raises(ValueError, match="reuse must be positive"):
        tiny_data(reuse=0)


class SeedRecorder(L.Callback):
    """Records the seeds of every training batch the model sees."""

    def __init__(self) -> None:
        self.seeds: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seeds.append([m["seed"] for m in batch["meta"]])


def fit_recording(tmp_path, ckpt_path=None, every_n_steps=None, reuse=1) -> list[list[int]]:
    L.seed_everything(0)
    recorder = SeedRecorder()
    callbacks = [recorder]
    if every_n_steps:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=every_n_steps, save_top_k=-1))
    trainer = L.Trainer(
        max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=bool(every_n_steps), callbacks=callbacks, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(DepthRegressor(encoder="test_resnet", decoder_width=8), tiny_data(epoch_length=6, reuse=reuse), ckpt_path=ckpt_path)
    return recorder.seeds


def test_resumed_run_continues_the_same_stream(tmp_path):
    full = fit_recording(tmp_path, every_n_steps=2)  # 3 batches per epoch, 2 epochs; checkpoints at steps 2, 4, 6
    assert len(full) == 6 and len({s for b in full for s in b}) == 12
    assert fit_recording(tmp_path, ckpt_path=tmp_path / "step=2.ckpt") == full[2:]  # mid-epoch, then the next epoch
    assert fit_recording(tmp_path, ckpt_path=tmp_path / "step=4.ckpt") == full[4:]  # mid-epoch of epoch 1


def test_a_resumed_run_with_reuse_continues_between_the_repeats(tmp_path):
    full = fit_recording(tmp_path, every_n_steps=1, reuse=2)
    assert full[0] == full[1] != full[2] and len(full) == 6
    assert fit_recording(tmp_path, ckpt_path=tmp_path / "step=1.ckpt", reuse=2) == full[1:]  # between a batch's two steps


@pytest.mark.gpu
def test_synthesis_follows_the_batch_to_the_gpu_and_matches_the_cpu():
    data = tiny_data(jitter=False)
    batch = next(iter(data.train_dataloader()))
    on_cpu = data.on_after_batch_transfer(batch, 0)
    on_gpu = data.on_after_batch_transfer({k: v.cuda() for k, v in batch.items()}, 0)
    assert data.generator.device.type == "cuda" and on_gpu["image"].is_cuda and on_gpu["depth"].is_cuda
    torch.testing.assert_close(on_gpu["w"].cpu(), on_cpu["w"], atol=1e-5, rtol=0)
    assert (on_gpu["depth"].cpu() - on_cpu["depth"]).abs().median() < 1e-3


@pytest.mark.gpu
def test_fit_on_the_gpu_renders_on_the_gpu(tmp_path):
    recorder = SeedRecorder()
    trainer = L.Trainer(accelerator="gpu", devices=1, max_steps=2, limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[recorder], default_root_dir=tmp_path)  # fmt: skip
    data = tiny_data()
    trainer.fit(DepthRegressor(encoder="test_resnet", decoder_width=8), data)
    assert trainer.global_step == 2 and data.generator.device.type == "cuda"
    assert [s for b in recorder.seeds for s in b] == data.train_seeds(0)[:4]
