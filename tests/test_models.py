"""Regressor parts: timm backbones from local weights, losses and metrics on known values, previews, checkpoints."""

from __future__ import annotations

import dataclasses

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from safetensors.torch import save_file
from torchvision.models.vgg import cfgs, make_layers

from regress.evaluation.encoder import load_latent_regressor
from regress.generators import GeneratorSpec
from regress.models import DepthRegressor, LatentRegressor
from regress.models.backbones import Backbone
from regress.models.losses import DepthLoss, cycle_loss, gradient_l1, latent_loss, masked_l1, scale_invariant_log
from regress.camera import make_cameras
from regress.faces.perceptual import PerceptualDistance
from regress.models.metrics import NOVEL_VIEWS_DEG, DepthMetrics, ImageMetrics, LatentMetrics, landmark_points, pixel_landmarks
from regress.gallery.depth import BACKGROUND
from regress.models.previews import depth_columns, log_preview, preview_grid

from test_online import TINY_GENERATOR, tiny_data

# A LatentRegressor checkpoint written at a7e8aed, before checkpoints named their generator (tests/fixtures/README.md).
BEFORE_GENERATOR_RECORD = Path(__file__).parent / "fixtures" / "latent-regressor-a7e8aed.ckpt"


def test_backbone_loads_a_local_weights_file_and_never_needs_the_hub(tmp_path):
    reference = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.safetensors"
    save_file(reference.state_dict(), path)
    backbone = Backbone("test_resnet", weights=path)
    assert torch.equal(backbone.body.conv1[0].weight, reference.conv1[0].weight)
    assert not torch.equal(Backbone("test_resnet").body.conv1[0].weight, reference.conv1[0].weight)


def test_backbone_errors_name_the_encoder_option_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder weights .*missing.pth do not exist"):
        Backbone("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown encoder 'resnet_nope'"):
        Backbone("resnet_nope")
    with pytest.raises(ValueError, match="image size 100 does not fit encoder test_resnet.*multiple of .* 32 .*96 or 128"):
        Backbone("test_resnet").check_image_size(100)
    with pytest.raises(ValueError, match="image size 100"):
        DepthRegressor(encoder="test_resnet", image_size=100)


def test_depth_losses_on_known_values():
    target = torch.full((1, 1, 4, 4), 2.0)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    pred = target.clone()
    pred[..., :2, :] += 0.5  # on the mask
    pred[..., 2:, :] += 9.0  # off the mask: must not count
    assert masked_l1(pred, target, mask).item() == pytest.approx(0.5)
    assert gradient_l1(pred * 0 + 3.0, target, mask).item() == pytest.approx(0.0)  # a constant offset has no gradient
    assert scale_invariant_log(1.7 * target, target, mask, variance_focus=1.0).item() == pytest.approx(0.0, abs=1e-6)
    parts = DepthLoss(l1=2.0, gradient=1.0)(pred, target, mask)
    assert set(parts) == {"l1", "gradient", "loss"} and parts["loss"].item() == pytest.approx(1.0)


def test_latent_loss_weights_rows():
    target = torch.zeros(2, 3, 4)
    pred = target.clone()
    pred[:, 0] = 1.0  # only row 0 is wrong
    assert latent_loss(pred, target).item() == pytest.approx(1 / 3)
    assert latent_loss(pred, target, "mse", ws_weights=[2.0, 1.0, 1.0]).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one per ws row"):
        latent_loss(pred, target, ws_weights=[1.0, 1.0])


def test_cycle_loss_is_lowest_at_the_true_latent_and_differentiable():
    data = tiny_data(jitter=False, image_size=32)
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    mean = data.latent_space.mean.expand_as(batch["w"]).clone().requires_grad_(True)
    at_mean = cycle_loss(data.generator, mean, batch["camera"], batch["image"])
    at_truth = cycle_loss(data.generator, batch["w"], batch["camera"], batch["image"])
    assert at_truth.item() < 0.5 * at_mean.item()
    at_mean.backward()
    assert mean.grad.abs().sum() > 0


def test_depth_metrics_on_known_values():
    metric = DepthMetrics()
    target = torch.tensor([2.0, 2.0, 4.0, 5.0]).view(1, 1, 2, 2)
    pred = torch.tensor([2.2, 1.0, 4.0, 100.0]).view(1, 1, 2, 2)
    mask = torch.tensor([1.0, 1.0, 0.9, 0.2]).view(1, 1, 2, 2)  # the last pixel is background
    metric.update(pred[..., :1, :], target[..., :1, :], mask[..., :1, :])  # two batches: dataset-level result
    metric.update(pred[..., 1:, :], target[..., 1:, :], mask[..., 1:, :])
    values = metric.compute()
    assert values["depth_absrel"].item() == pytest.approx((0.1 + 0.5 + 0.0) / 3)
    assert values["depth_rmse"].item() == pytest.approx(((0.04 + 1.0) / 3) ** 0.5)
    assert values["depth_delta1"].item() == pytest.approx(2 / 3)


def test_depth_metrics_without_a_face_pixel_are_nan_not_perfect():
    metric = DepthMetrics()
    metric.update(torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 0.3))
    assert all(math.isnan(v.item()) for v in metric.compute().values())


def test_latent_metrics_on_known_values():
    metric = LatentMetrics()
    mean = torch.ones(2, 3)
    target = torch.stack([mean + 1.0, mean - 1.0])
    pred = torch.stack([mean + 2.0, mean + 1.0])  # same direction, then the opposite one
    metric.update(pred, target, mean)
    values = metric.compute()
    assert values["latent_l1"].item() == pytest.approx(1.5)
    assert values["latent_cosine"].item() == pytest.approx(0.0)


def test_previews_colour_depth_and_reach_tensorboard(tmp_path):
    depth = torch.linspace(2.0, 3.0, 16).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    depth[1] += 5.0  # the second sample lies further away: its own scale
    mask = torch.ones_like(depth)
    mask[:, :, 0, 0] = 0
    colours, shifted = depth_columns([depth, depth + 0.4], [mask, mask])
    assert colours.dtype == torch.uint8 and colours.shape == (2, 3, 4, 4)
    assert tuple(colours[0, :, 0, 0].tolist()) == BACKGROUND
    assert colours[0, :, 0, 1].sum() > colours[0, :, 3, 3].sum()  # near is the bright end
    assert torch.equal(colours[0], colours[1])  # each row on its own scale
    assert torch.equal(shifted[0, :, 0, 1], colours[0, :, 1, 3])  # one scale per row: depth 2 + 7/15 is one colour
    grid = preview_grid([torch.zeros(2, 3, 8, 8, dtype=torch.uint8), colours], size=16)
    assert grid.shape == (3, 32, 32)
    logger = TensorBoardLogger(tmp_path)
    log_preview([logger], "val/preview", grid, step=3)
    logger.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert events.Tags()["images"] == ["val/preview"]


def test_latent_regressor_takes_the_data_latent_space_and_restores_from_checkpoint(tmp_path):
    data = tiny_data(epoch_length=2)
    model = LatentRegressor(encoder="test_resnet", hidden=16, image_size=data.image_size, latent_space=data.latent_space)
    assert model.hparams.latent_shape == data.latent_space.shape == (14, 32) and "latent_space" not in model.hparams
    assert torch.equal(model.mean_latent, data.generator.mean_latent()) and model.mean_latent.abs().sum() > 0
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "latent.ckpt")
    restored = LatentRegressor.load_from_checkpoint(tmp_path / "latent.ckpt")
    assert restored.hparams.image_size == 32 and restored.hparams.latent_shape == (14, 32) and restored.generator_spec is None
    recorded = restored.hparams.generator_record  # the checkpoint names its generator: spec and checksum, plain data
    assert recorded == model.hparams.generator_record == {**dataclasses.asdict(data.generator_spec), "checksum": data.generator.identity()["checksum"]}
    assert recorded["name"] == "analytic" and recorded["checkpoint"] is None and recorded["options"]["image_resolution"] == 32
    image = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    model.eval(), restored.eval()
    assert torch.equal(restored(image), model(image))


def test_a_latent_checkpoint_names_its_generator_and_one_from_before_still_loads_with_a_note(tmp_path, capsys):
    data = tiny_data(epoch_length=2)
    model = LatentRegressor(encoder="test_resnet", hidden=16, image_size=data.image_size, latent_space=data.latent_space)
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    assert torch.load(tmp_path / "new.ckpt", weights_only=True)["hyper_parameters"]["generator_record"]["name"] == "analytic"
    capsys.readouterr()
    loaded = load_latent_regressor(tmp_path / "new.ckpt", data.generator)
    assert loaded.hparams.generator_record["checksum"] == data.generator.identity()["checksum"] and capsys.readouterr().err == ""
    other = GeneratorSpec("analytic", options={**TINY_GENERATOR, "readout_gain": 2.001}).build()  # other draws, the same mean latent
    load_latent_regressor(tmp_path / "new.ckpt", other)
    assert f"was trained against analytic {data.generator.identity()['checksum']} (no checkpoint file named), but renders with analytic " in capsys.readouterr().err
    old = load_latent_regressor(BEFORE_GENERATOR_RECORD, data.generator)  # written by the code before checkpoints named it
    assert "generator_record" not in torch.load(BEFORE_GENERATOR_RECORD, weights_only=True)["hyper_parameters"]
    assert old.hparams.generator_record is None and torch.equal(old.mean_latent, loaded.mean_latent)
    assert "does not name the generator it was trained against (written before checkpoints recorded it): its generator is unknown" in capsys.readouterr().err
    assert old(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 14, 32)


def test_latent_regressor_refuses_a_cycle_term_without_a_generator():
    model = LatentRegressor(encoder="test_resnet", latent_shape=(14, 32), cycle_weight=1.0)
    with pytest.raises(ValueError, match="cycle_weight > 0 renders predictions, but the model has no generator"):
        model.setup("fit")  # no latent space with a generator: nothing to render with


def test_latent_regressor_needs_a_shape_that_agrees_with_the_data():
    space = tiny_data().latent_space
    with pytest.raises(ValueError, match="LatentRegressor needs latent_shape, or the latent_space of its data"):
        LatentRegressor(encoder="test_resnet")
    with pytest.raises(ValueError, match=r"the data's latents have shape \(14, 32\) but latent_shape is \(14, 8\)"):
        LatentRegressor(encoder="test_resnet", latent_shape=(14, 8), latent_space=space)


def test_the_latent_model_and_its_data_render_with_one_generator_built_from_the_spec():
    data = tiny_data(jitter=False)
    model = LatentRegressor(encoder="test_resnet", hidden=16, cycle_weight=1.0, latent_space=data.latent_space)
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)
    parts, _ = model.losses(batch)
    assert model.generator_spec == data.generator_spec and parts["cycle"] > 0
    assert model._generator_on(batch["image"].device) is data.generator  # one instance a process, not a copy each
    assert not any(name.startswith("generator") for name, _ in model.named_modules() if name)  # never a submodule, never saved
    assert not any(key.startswith(("generator", "_generator")) for key in model.state_dict())


def validation_batch(data):
    return data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)


def test_image_metrics_score_the_true_latent_at_their_ceiling_and_a_wrong_one_below():
    data = tiny_data()
    batch = validation_batch(data)
    perfect, mean = ImageMetrics(), ImageMetrics()
    perfect.update(data.generator, batch["w"], batch["w"], batch["camera"])
    mean.update(data.generator, data.generator.mean_latent().expand_as(batch["w"]), batch["w"], batch["camera"])
    best, worse = perfect.compute(), mean.compute()
    assert best["image_psnr"] == 100.0 and best["novel_psnr"] == 100.0  # psnr caps a zero error at 100 dB
    assert best["image_ssim"] == pytest.approx(1.0, abs=1e-6) and best["novel_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert best["render_depth_l1"] == 0.0
    assert worse["image_psnr"] < 40 and worse["image_ssim"] < best["image_ssim"] and worse["render_depth_l1"] > 0
    assert perfect.samples == 2 and perfect.novel_images == 2 * len(NOVEL_VIEWS_DEG)


def test_image_metrics_give_no_depth_error_where_no_face_pixel_is_seen():
    data = tiny_data()
    batch = validation_batch(data)
    far = batch["camera"].clone()
    far[:, [3, 7, 11]] *= 100  # the camera 100x further out: the rays end before the head
    metric = ImageMetrics()
    metric.update(data.generator, batch["w"], batch["w"], far)
    scores = metric.compute()
    assert metric.pixels == 0 and math.isnan(scores["render_depth_l1"]) and scores["image_psnr"] == 100.0


def test_latent_regressor_scores_a_fixed_number_of_validation_samples_in_image_space():
    data = tiny_data()
    model = LatentRegressor(encoder="test_resnet", hidden=16, image_metrics_samples=3, latent_space=data.latent_space)
    for batch in map(lambda b: data.on_after_batch_transfer(b, 0), data.val_dataloader()):  # 2 batches of 2
        model.update_metrics(batch, batch["w"])
    assert model.image_metrics.samples == 3 and model.image_metrics.compute()["image_psnr"] == 100.0
    assert model.validation_metrics() == [model.metrics, model.image_metrics]
    without = LatentRegressor(encoder="test_resnet", hidden=16, latent_shape=(14, 32))  # data from disk: nothing renders
    batch = validation_batch(data)
    without.update_metrics(batch, batch["w"])
    assert without.validation_metrics() == [without.metrics] and without.image_metrics.samples == 0


def random_vgg(tmp_path) -> str:
    """A torchvision VGG16 features state dict with random weights (no weights can be downloaded here)."""
    torch.manual_seed(0)
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}, path)
    return str(path)


def test_image_metrics_add_perceptual_and_identity_scores_when_asked(tmp_path):
    data = tiny_data(generator_options={**TINY_GENERATOR, "image_resolution": 128})
    batch = validation_batch(data)
    perfect, mean = (ImageMetrics(PerceptualDistance(random_vgg(tmp_path)), identity=True) for _ in range(2))
    perfect.update(data.generator, batch["w"], batch["w"], batch["camera"])
    mean.update(data.generator, data.generator.mean_latent().expand_as(batch["w"]), batch["w"], batch["camera"])
    best, worse = perfect.compute(), mean.compute()
    assert {"image_perceptual_distance", "novel_perceptual_distance", "image_identity", "novel_identity"} <= best.keys()
    assert best["image_perceptual_distance"] == pytest.approx(0.0, abs=1e-9) and best["novel_perceptual_distance"] == pytest.approx(0.0, abs=1e-9)
    assert best["image_identity"] == pytest.approx(1.0) and best["novel_identity"] == pytest.approx(1.0)
    assert worse["image_perceptual_distance"] > 0 and worse["novel_perceptual_distance"] > 0
    assert worse["image_identity"] < 0.999 and worse["novel_identity"] < 0.999
    assert worse["image_psnr"] == mean.compute()["image_psnr"] and ImageMetrics().scores == ("psnr", "ssim")


def test_true_landmarks_follow_the_head_and_the_camera():
    data = tiny_data()
    batch = validation_batch(data)
    size = 64
    points = landmark_points(data.generator, batch["w"])
    marks = pixel_landmarks(points, batch["camera"], size)
    assert marks.shape == (2, 68, 2) and ((marks > 0) & (marks < size)).all()  # the face is inside the crop
    turned = pixel_landmarks(points, make_cameras(math.radians(30), 0.0).expand(2, -1), size)
    assert abs(np.mean(turned[:, :, 0] - marks[:, :, 0])) > 1  # a yawed camera moves the face sideways


def test_latent_regressor_scores_lpips_in_validation_from_local_weights(tmp_path):
    data = tiny_data(epoch_length=2)
    model = LatentRegressor(encoder="test_resnet", hidden=16, image_size=data.image_size, image_metrics_samples=2,
                            vgg_weights=random_vgg(tmp_path), latent_space=data.latent_space)  # fmt: skip
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    logged = trainer.callback_metrics
    assert logged["val/image_perceptual_distance"] > 0 and logged["val/novel_perceptual_distance"] > 0
    assert "features.0.weight" not in "".join(model.state_dict())  # the VGG stays out of the checkpoint
    with pytest.raises(ValueError, match="lpips_weights needs vgg_weights too"):
        LatentRegressor(encoder="test_resnet", latent_shape=(14, 32), lpips_weights=str(tmp_path / "lpips.pth"))
