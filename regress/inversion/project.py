"""GAN inversion: project images into W or W+ from the mean latent (or given latents, e.g. an encoder's
prediction), then optionally tune a copy of the generator.

The projection is the StyleGAN/EG3D projector's recipe: Adam on the latent with a learning-rate
ramp up and cosine ramp down, and latent noise that fades out early. The image loss is pixel L2
plus (1 - MS-SSIM), plus an LPIPS-style VGG distance when its weights are given. Pivotal tuning
(PTI) then fits a copy of the generator's weights around the found latent. With `optimize_camera`, a
small correction of each camera (yaw, pitch, roll, distance; camera.adjust_cameras) is optimized with
the latent under a Gaussian prior, for cameras fitted to landmarks that are a few degrees off; its gradient
comes from autograd or, for renderers whose camera gradient is only approximate, from central differences.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from regress.camera import adjust_cameras, frontal_camera
from regress.faces.perceptual import PerceptualDistance
from regress.faces.quality import ms_ssim
from regress.generators.base import Generator, seeded_normal


@dataclass(frozen=True)
class ProjectionConfig:
    """Choices of the projection and of pivotal tuning.

    Args:
        space: `w` (one row, shared by all ws) or `w+` (every row free).
        steps: Adam steps of the projection.
        lr: peak learning rate; ramped up over `lr_rampup` and down (cosine) over `lr_rampdown` of the steps.
        noise: latent noise at the start, as a fraction of the prior's spread; fades to 0 by `noise_ramp`.
        pixel_weight, ssim_weight, perceptual_weight: loss terms (the last only with perceptual weights).
        loss_resolution: images are compared at most this large (area downsampling).
        pti_steps: steps of pivotal tuning of a copy of the generator; 0 skips it.
        pti_lr: Adam learning rate of pivotal tuning.
        spread_samples: mapped latents that estimate the prior's spread.
        seed: seed of the latent noise and of the spread's samples.
        optimize_camera: also optimize a correction of each camera (yaw, pitch, roll, log distance) with the latent.
        camera_lr: Adam learning rate of the correction (radians; same schedule as the latent's).
        camera_prior_deg, camera_prior_distance: the correction's expected size (degrees; relative distance):
            a Gaussian prior of weight `camera_prior_weight` (per image, in units of the image loss) holds it there.
        camera_first_steps: with `optimize_camera`, steps before the projection's in which only the correction moves
            (the latent held at its start, no noise; the same schedule over these steps), so the latent cannot
            absorb the camera's error; 0 optimizes both together from the start.
        camera_gradient: how the image loss's gradient in the correction is found: `autograd`, or `differences`
            (central differences, `camera_difference_step` apart in each of the four numbers: eight more renders
            without backward per image and step), for renderers whose camera gradient is only approximate (the
            analytic head's comes from pixel-wide edges and points the wrong way on some heads).
    """

    space: Literal["w", "w+"] = "w"
    steps: int = 300
    lr: float = 0.05
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    noise: float = 0.05
    noise_ramp: float = 0.75
    pixel_weight: float = 1.0
    ssim_weight: float = 1.0
    perceptual_weight: float = 1.0
    loss_resolution: int = 256
    pti_steps: int = 0
    pti_lr: float = 3e-4
    spread_samples: int = 1000
    seed: int = 0
    optimize_camera: bool = False
    camera_lr: float = 0.01
    camera_prior_deg: float = 5.0
    camera_prior_distance: float = 0.05
    camera_prior_weight: float = 1e-3
    camera_first_steps: int = 0
    camera_gradient: Literal["autograd", "differences"] = "autograd"
    camera_difference_step: float = 0.002

    def record(self) -> dict:
        """The settings as a pairs set records them: the camera correction's only when it is on (older sets still resume)."""
        settings = asdict(self)
        camera = ("optimize_camera", "camera_lr", "camera_prior_deg", "camera_prior_distance", "camera_prior_weight")
        for name in camera if not self.optimize_camera else ():
            del settings[name]
        if not (self.optimize_camera and self.camera_first_steps):
            del settings["camera_first_steps"]
        if not (self.optimize_camera and self.camera_gradient != "autograd"):
            del settings["camera_gradient"], settings["camera_difference_step"]
        return settings


# From a good start (an encoder's w) the default latent noise and peak step throw much of it away.
REFINE = ProjectionConfig(noise=0.0, lr=0.02)


@dataclass
class ProjectionResult:
    """The found latents (N, num_ws, w_dim), the cameras they render from (N, 25: the given ones, corrected with
    `optimize_camera`), per-step losses (batch means), wall time, and the tuned generator if any."""

    w: torch.Tensor
    camera: torch.Tensor | None = None
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    generator: Generator | None = None
    pti_losses: list[dict[str, float]] = field(default_factory=list)


class ImageLoss(torch.nn.Module):
    """Per-image loss (N,) and its parts: pixel L2, 1 - MS-SSIM, and the perceptual distance when available."""

    def __init__(self, config: ProjectionConfig, perceptual: PerceptualDistance | None = None) -> None:
        super().__init__()
        self.config = config
        self.perceptual = perceptual

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        size = self.config.loss_resolution
        if image.shape[-1] > size:
            image, target = F.interpolate(image, size=(size, size), mode="area"), F.interpolate(target, size=(size, size), mode="area")
        parts = {
            "pixel": (image - target).square().flatten(1).mean(1),
            "ssim": 1 - ms_ssim(image, target),
        }
        weights = {"pixel": self.config.pixel_weight, "ssim": self.config.ssim_weight}
        if self.perceptual is not None:
            parts["perceptual"] = self.perceptual(image, target)
            weights["perceptual"] = self.config.perceptual_weight
        total = sum(weights[k] * v for k, v in parts.items())
        return total, parts


def latent_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root mean over rows of the squared L2 distance between latents (N, num_ws, w_dim) -> (N,)."""
    return (a - b).square().sum(-1).mean(-1).sqrt()


@torch.no_grad()
def latent_spread(generator: Generator, samples: int = 1000, seed: int = 0) -> float:
    """The prior's spread: RMS `latent_distance` of untruncated mapped latents from the mean latent."""
    z = seeded_normal(range(seed, seed + samples), generator.z_dim).to(generator.device)
    w = generator.mapping(z, frontal_camera(samples).to(generator.device), psi=1.0)
    return float(latent_distance(w, generator.mean_latent()[None].to(w)).square().mean().sqrt())


def learning_rate(config: ProjectionConfig, t: float) -> float:
    """The projector's schedule at progress t in [0, 1): linear ramp up, cosine ramp down."""
    ramp = min(1.0, (1.0 - t) / config.lr_rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return config.lr * ramp * min(1.0, t / config.lr_rampup)


def _check(generator: Generator, target: torch.Tensor, camera: torch.Tensor) -> None:
    expected = (3, generator.image_resolution, generator.image_resolution)
    if target.dim() != 4 or tuple(target.shape[1:]) != expected:
        raise ValueError(f"targets must be (N, {expected}) in [-1, 1] to match the generator, got {tuple(target.shape)}")
    if camera.shape != (target.shape[0], 25):
        raise ValueError(f"cameras must be ({target.shape[0]}, 25), got {tuple(camera.shape)}")


def start_latent(generator: Generator, rows: int, count: int, init: torch.Tensor | None) -> torch.Tensor:
    """Where the projection starts, (count, rows, w_dim): the mean latent, or `init` (count, num_ws, w_dim).

    In W (one row) an init starts from the mean of its rows, the one-row latent nearest to it.
    """
    if init is None:
        return generator.mean_latent().to(generator.device).float()[:rows].repeat(count, 1, 1)
    expected = (count, *generator.latent_shape)
    if tuple(init.shape) != expected:
        raise ValueError(f"initial latents have shape {tuple(init.shape)} but the generator's are {expected}; give one latent of its shape per target")
    init = init.detach().to(generator.device).float()
    return init.mean(1, keepdim=True) if rows == 1 else init.clone()


@torch.no_grad()
def central_differences(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, step: float) -> torch.Tensor:
    """The gradient (N, K) of a per-row loss (M, K) -> (M,) at x (N, K), by central differences `step` apart: one call
    of the loss on all 2K shifted copies of x (2K·N rows, copy after copy), so a renderer's fixed costs come once."""
    k = x.shape[1]
    shifts = torch.cat([torch.eye(k, dtype=x.dtype, device=x.device), -torch.eye(k, dtype=x.dtype, device=x.device)]) * step
    values = loss((x[None] + shifts[:, None]).reshape(-1, k)).reshape(2, k, -1)  # (sign, coordinate, row)
    return ((values[0] - values[1]) / (2 * step)).T


def project(
    generator: Generator,
    target: torch.Tensor,
    camera: torch.Tensor,
    config: ProjectionConfig = ProjectionConfig(),
    perceptual: PerceptualDistance | None = None,
    progress: bool = False,
    init: torch.Tensor | None = None,
) -> ProjectionResult:
    """Latents (N, num_ws, w_dim) whose renders from `camera` (N, 25) match `target` (N, 3, H, W) in [-1, 1].

    The search starts from `init` (N, num_ws, w_dim), e.g. an encoder's prediction, or else the mean
    latent. Each image gets its own latent (the loss is a sum over the batch); the generator is not
    changed. With `config.pti_steps > 0` a tuned copy of the generator comes back in `generator`.
    """
    _check(generator, target, camera)
    start = time.perf_counter()
    device = generator.device
    target, camera = target.to(device).float(), camera.to(device).float()
    loss_fn = ImageLoss(config, perceptual).to(device)
    spread = latent_spread(generator, config.spread_samples, config.seed)
    rows = 1 if config.space == "w" else generator.num_ws
    if config.space not in ("w", "w+"):
        raise ValueError(f"projection space must be 'w' or 'w+', got {config.space!r}")
    if config.camera_gradient not in ("autograd", "differences"):
        raise ValueError(f"camera_gradient must be 'autograd' or 'differences', got {config.camera_gradient!r}")
    latent = start_latent(generator, rows, target.shape[0], init).requires_grad_(True)
    correction = torch.zeros(target.shape[0], 4, device=device, requires_grad=config.optimize_camera)
    groups = [{"params": [latent], "scale": 1.0}]
    if config.optimize_camera:
        groups.append({"params": [correction], "scale": config.camera_lr / config.lr})
    optimizer = torch.optim.Adam(groups, lr=config.lr, betas=(0.9, 0.999))
    prior = torch.tensor([math.radians(config.camera_prior_deg)] * 3 + [config.camera_prior_distance], device=device)
    noise_rng = torch.Generator(device="cpu").manual_seed(config.seed)
    by_differences = config.optimize_camera and config.camera_gradient == "differences"

    def image_loss(w: torch.Tensor, turn: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the latents w (N, rows, w_dim) at the cameras corrected by `turn` (C·N, 4): C copies of the batch."""
        copies = len(turn) // len(w)
        cameras = adjust_cameras(camera.repeat(copies, 1), turn) if config.optimize_camera else camera
        image = generator.synthesis(w.expand(-1, generator.num_ws, -1).repeat(copies, 1, 1), cameras)["image"]
        return loss_fn(image, target.repeat(copies, 1, 1, 1))

    def render_loss(w: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts = image_loss(w, correction.detach() if by_differences else correction)
        if config.optimize_camera:
            parts["camera_prior"] = config.camera_prior_weight * (correction / prior).square().sum(1)
            loss = loss + parts["camera_prior"]
        return loss, parts

    def backward(loss: torch.Tensor, w: torch.Tensor, inputs: list[torch.Tensor]) -> None:
        loss.sum().backward(inputs=inputs)
        if by_differences:
            step = config.camera_difference_step
            correction.grad += central_differences(lambda turn: image_loss(w.detach(), turn)[0], correction.detach(), step)

    def record(step: int, lr: float, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"step": step, "lr": lr, "loss": float(loss.detach().mean()), **{k: float(v.detach().mean()) for k, v in parts.items()}}

    losses = []
    first_steps = config.camera_first_steps if config.optimize_camera else 0
    camera_optimizer = torch.optim.Adam([correction], lr=config.camera_lr, betas=(0.9, 0.999))
    for step in tqdm(range(first_steps), desc="camera first", disable=not progress, leave=False):
        lr = learning_rate(config, step / first_steps)
        camera_optimizer.param_groups[0]["lr"] = lr * config.camera_lr / config.lr
        loss, parts = render_loss(latent.detach())
        camera_optimizer.zero_grad(set_to_none=True)
        backward(loss, latent, [correction])
        camera_optimizer.step()
        losses.append(record(step, lr, loss, parts))
    for step in tqdm(range(config.steps), desc="project", disable=not progress, leave=False):
        t = step / config.steps
        lr = learning_rate(config, t)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        noise_scale = spread * config.noise * max(0.0, 1.0 - t / config.noise_ramp) ** 2
        noise = torch.randn(latent.shape, generator=noise_rng).to(device) * noise_scale
        noisy = latent + noise
        loss, parts = render_loss(noisy)
        optimizer.zero_grad(set_to_none=True)
        backward(loss, noisy, [latent, correction] if config.optimize_camera else [latent])
        optimizer.step()
        losses.append(record(first_steps + step, lr, loss, parts))
    w = latent.detach().expand(-1, generator.num_ws, -1).clone()
    camera = adjust_cameras(camera, correction.detach()) if config.optimize_camera else camera
    result = ProjectionResult(w=w, camera=camera, losses=losses)
    if config.pti_steps > 0:
        result.generator, result.pti_losses = pivotal_tuning(generator, w, target, camera, config, loss_fn, progress)
    result.seconds = time.perf_counter() - start
    return result


def pivotal_tuning(
    generator: Generator,
    w: torch.Tensor,
    target: torch.Tensor,
    camera: torch.Tensor,
    config: ProjectionConfig,
    loss_fn: ImageLoss,
    progress: bool = False,
) -> tuple[Generator, list[dict[str, float]]]:
    """A copy of the generator whose weights are tuned (Adam) so the pivot latents `w` render the targets."""
    tuned = copy.deepcopy(generator)
    params = [p for p in tuned.parameters() if p.is_floating_point()]
    if not params:
        raise ValueError(
            f"the {generator.name} generator has no weights to tune; set pti_steps: 0 (pivotal tuning needs e.g. eg3d)"
        )
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.pti_lr)
    losses = []
    for step in tqdm(range(config.pti_steps), desc="pivotal tuning", disable=not progress, leave=False):
        loss, parts = loss_fn(tuned.synthesis(w, camera)["image"], target)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        losses.append({"step": step, "loss": float(loss.detach().mean()), **{k: float(v.detach().mean()) for k, v in parts.items()}})
    return tuned.requires_grad_(False).eval(), losses
