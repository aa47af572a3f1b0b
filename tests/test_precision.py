"""Generators render in their own precision when a model's bf16 step calls them inside autocast."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from regress.camera import make_cameras
from regress.generators import GeneratorSpec
from regress.models import LatentRegressor

from eg3d_tiny import TINY_EG3D
from test_online import TINY_GENERATOR, tiny_data


def _renders(generator, device: str) -> tuple[dict, dict, torch.Tensor]:
    """The render of the mean latent without autocast, inside bf16 autocast (w in bf16, as a model predicts it), and dL/dw there."""
    generator = generator.to(device).eval()
    w = generator.mean_latent()[None].to(device)
    camera = make_cameras(0.3, -0.1).float().to(device)
    with torch.no_grad():
        reference = generator.synthesis(w, camera)
    w_reduced = w.bfloat16().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        inside = generator.synthesis(w_reduced, camera)
    inside["image"].float().mean().backward()
    return reference, inside, w_reduced.grad


def _assert_same_render(reference: dict, inside: dict, grad: torch.Tensor, tolerance: float) -> None:
    for name in ("image", "depth", "mask"):
        assert inside[name].dtype == reference[name].dtype, name
        assert (inside[name].float() - reference[name].float()).abs().max() < tolerance, name
    assert grad is not None and grad.dtype == torch.bfloat16 and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_analytic_renders_the_same_inside_cpu_autocast():
    # before: the tracer ran its matmuls in bf16 and the depth moved by 0.66, the image by 0.39
    reference, inside, grad = _renders(GeneratorSpec("analytic", options=TINY_GENERATOR).create(), "cpu")
    _assert_same_render(reference, inside, grad, tolerance=5e-3)  # w rounded to bf16 is the only difference


def test_rendering_methods_of_every_backend_are_guarded():
    from regress.generators.analytic import AnalyticGenerator
    from regress.generators.eg3d import EG3DGenerator

    for cls in (AnalyticGenerator, EG3DGenerator):
        for name in ("mapping", "synthesis", "density"):
            assert getattr(cls, name).__qualname__ == f"{cls.__name__}.{name}" and hasattr(getattr(cls, name), "__wrapped__"), (cls, name)
    assert hasattr(AnalyticGenerator.landmarks_3d, "__wrapped__")


def test_analytic_landmarks_are_the_same_inside_cpu_autocast():
    generator = GeneratorSpec("analytic", options=TINY_GENERATOR).create()
    w = generator.mean_latent()[None]
    with torch.no_grad():
        reference = generator.landmarks_3d(w)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = generator.landmarks_3d(w)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, reference, rtol=0, atol=1e-6)


def test_latent_regressor_with_cycle_loss_trains_in_bf16_on_the_cpu():
    data = tiny_data(epoch_length=4, val_size=2)
    model = LatentRegressor(encoder="test_resnet", cycle_weight=1.0, latent_space=data.latent_space)
    trainer = L.Trainer(max_steps=2, precision="bf16-mixed", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["val/loss"])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["analytic", "eg3d", "eg3d-fast"])
def test_every_backend_renders_the_same_inside_cuda_autocast(backend):
    torch.manual_seed(0)
    if backend == "analytic":
        generator = GeneratorSpec("analytic", options=TINY_GENERATOR).create()
    else:
        generator = GeneratorSpec("eg3d", options={**TINY_EG3D, **({"render_precision": "float16"} if backend == "eg3d-fast" else {})}).create()
    reference, inside, grad = _renders(generator, "cuda")
    _assert_same_render(reference, inside, grad, tolerance=2e-2 if backend != "analytic" else 5e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("cycle_weight", [0.0, 1.0])
def test_latent_regressor_on_the_analytic_generator_trains_in_bf16_on_the_gpu(cycle_weight, tmp_path):
    # the issue-15 defect: index_copy_ of BFloat16 and Float at the first step (cycle) or the first previews
    data = tiny_data(epoch_length=4, val_size=4)  # 2 steps: one epoch, so validation and its previews run
    model = LatentRegressor(encoder="resnet18", cycle_weight=cycle_weight, latent_space=data.latent_space)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["val/loss"])
