"""The embedded default generator: a procedural head driven by a real latent, no weights needed.

z -> w through a fixed, seeded tanh map (broadcast to num_ws rows, truncated towards the mean
like EG3D); row groups of w set the head's shape, colours, light and background (`params.py`);
the head is a signed distance field (`head.py`) traced with EG3D's cameras (`render.py`).
Outputs mean what EG3D's do: `depth` is the expected ray depth in world units, normalized by
the ray's total weight (ray_end where a ray meets nothing), `mask` the accumulated opacity. Everything is shaded
at `render_resolution` (default: depth_resolution) and the image is resized bilinearly to
`image_resolution`, much as EG3D renders at 128 and super-resolves to 512; depth and mask are
area-averaged to `depth_resolution` when that is smaller.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import torch
import torch.nn.functional as F

from regress.camera import DEFAULT_FOV_DEG, fov_to_focal, frontal_camera
from regress.generators.registry import register
from regress.generators.analytic import head, landmarks
from regress.generators.analytic.params import GROUPS, group_rows, read_params, readout_matrices
from regress.generators.analytic.render import Surface, blur_gradient, lambert, render_layers
from regress.generators.analytic.trace import TraceSettings, ray_starts
from regress.generators.base import Generator

VERSION = "analytic-v1"  # bump when the head or renderer changes what a latent looks like
MEAN_LATENT_SAMPLES = 4096
DENSITY_MAX = 20.0  # density = DENSITY_MAX * sigmoid(-sdf / DENSITY_SCALE): surface at level 10,
DENSITY_SCALE = 0.01  # the level EG3D meshes use
GRADIENT_BLUR_PIXELS = 0.5  # gradients see edges, normals and textures about this many pixels wide
HEAD_FRONT, HEAD_BACK = 0.43, 0.3  # the head reaches at most this far from the origin towards (away from) a camera


@register("analytic")
class AnalyticGenerator(Generator):
    """Procedural head generator with EG3D's interface, cameras and depth meaning; fast on a CPU.

    `compile` fuses the distance field into one kernel with torch.compile (dynamic shapes): on a GPU,
    where the eager field is memory-bound, training synthesis runs several times faster after a
    compile of about a minute; the draws are the same up to float rounding.
    """

    has_weights = False
    option_bounds = {"image_resolution": (8, 4096), "depth_resolution": (8, 2048), "render_resolution": (8, 2048), "z_dim": (1, 4096),
                     "w_dim": (1, 4096), "num_ws": (1, 64), "seed": (0, 2**63 - 1), "readout_gain": (0.0, 100.0), "march_steps": (1, 1024)}  # fmt: skip

    def __init__(
        self,
        z_dim: int = 64,
        num_ws: int = 14,
        w_dim: int = 32,
        image_resolution: int = 512,
        depth_resolution: int = 128,
        render_resolution: int | None = None,
        seed: int = 0,
        readout_gain: float = 2.0,
        march_steps: int = 24,
        compile: bool = False,
    ) -> None:
        super().__init__()
        render_resolution = render_resolution or depth_resolution
        sizes = dict(image_resolution=image_resolution, depth_resolution=depth_resolution)
        for name, value in dict(sizes, render_resolution=render_resolution).items():
            if value < 8:
                raise ValueError(f"{name} must be at least 8 pixels, got {value}")
        self.config = dict(
            z_dim=z_dim, num_ws=num_ws, w_dim=w_dim, image_resolution=image_resolution,
            depth_resolution=depth_resolution, render_resolution=render_resolution, seed=seed,
            readout_gain=readout_gain, march_steps=march_steps,
        )  # fmt: skip
        self.z_dim, self.num_ws, self.w_dim = z_dim, num_ws, w_dim
        self.image_resolution, self.depth_resolution = image_resolution, depth_resolution
        self.render_resolution = render_resolution
        self.ray_start, self.ray_end, self.box_size, self.surface_level = 2.25, 3.3, 1.0, DENSITY_MAX / 2
        self.readout_gain = readout_gain
        self.compile = compile  # how it runs, not what it draws: not part of the config or checksum
        pixel = (self.ray_start + self.ray_end) / 2 / (fov_to_focal(DEFAULT_FOV_DEG) * render_resolution)  # world units
        self.trace = TraceSettings(steps=march_steps, gradient_blur=GRADIENT_BLUR_PIXELS * pixel)
        group_rows(num_ws)  # checks that every row group gets a row
        rng = torch.Generator().manual_seed(seed)
        self.register_buffer("z_weight", torch.randn(z_dim, w_dim, generator=rng, dtype=torch.float64) / z_dim**0.5)
        self.register_buffer("c_weight", 0.02 * torch.randn(25, w_dim, generator=rng, dtype=torch.float64))
        self.register_buffer("bias", 0.1 * torch.randn(w_dim, generator=rng, dtype=torch.float64))
        for group, matrix in readout_matrices(w_dim, rng).items():
            self.register_buffer(f"readout_{group}", matrix)
        z = torch.randn(MEAN_LATENT_SAMPLES, z_dim, generator=rng)
        self.register_buffer("w_avg", self.mapping(z, frontal_camera(MEAN_LATENT_SAMPLES)).mean(0)[0].float())

    def mapping(
        self, z: torch.Tensor, camera_cond: torch.Tensor, psi: float = 1.0, cutoff: int | None = None
    ) -> torch.Tensor:
        """w (N, num_ws, w_dim) = tanh(normalized z A + c C + b), in float64 so it is batch-size exact."""
        if z.shape[1:] != (self.z_dim,) or camera_cond.shape != (len(z), 25):
            raise ValueError(
                f"mapping needs z (N, {self.z_dim}) and camera_cond (N, 25), "
                f"got {tuple(z.shape)} and {tuple(camera_cond.shape)}"
            )
        z = z.double()
        z = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        w = torch.tanh(z @ self.z_weight + camera_cond.double() @ self.c_weight + self.bias)
        w = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            rows = slice(0, self.num_ws if cutoff is None else cutoff)
            w_avg = self.w_avg.double()
            w[:, rows] = w_avg + psi * (w[:, rows] - w_avg)
        return w.float()

    def mean_latent(self) -> torch.Tensor:
        return self.w_avg.unsqueeze(0).repeat(self.num_ws, 1)

    def params(self, w: torch.Tensor) -> head.Params:
        """Semantic head parameters (name -> (N,)) of latents w (N, num_ws, w_dim)."""
        if w.shape[1:] != self.latent_shape:
            raise ValueError(f"w must have shape (N, {self.num_ws}, {self.w_dim}), got {tuple(w.shape)}")
        readout = {group: getattr(self, f"readout_{group}") for group in GROUPS}
        return read_params(w.float(), self.w_avg, readout, self.readout_gain)

    def density(self, points: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """DENSITY_MAX * sigmoid(-sdf / DENSITY_SCALE) (N, P, 1): surface at `surface_level` = 10."""
        p = {name: value.unsqueeze(1) for name, value in self.params(w).items()}
        return DENSITY_MAX * torch.sigmoid(-head.sdf(points, p) / DENSITY_SCALE).unsqueeze(-1)

    def point_colours(self, points: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The head's albedo (N, P, 3) at world points (N, P, 3): its colour before lighting."""
        p = {name: value.unsqueeze(1) for name, value in self.params(w).items()}
        return head.albedo(points, p)

    def landmarks_3d(self, w: torch.Tensor) -> torch.Tensor:
        """World positions (N, 68, 3) of the 68 iBUG facial landmarks on the heads of w (differentiable)."""
        return landmarks.landmarks_3d(self.params(w))

    def synthesis(
        self,
        w: torch.Tensor,
        camera: torch.Tensor,
        noise_seeds: Sequence[int] | None = None,
        keep_density_state: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Render the heads of w from cameras (N, 25); differentiable w.r.t. w.

        The renderer has no sampling noise, so `noise_seeds` are accepted and ignored; its density has no per-latent
        state worth keeping, so neither is `keep_density_state`.
        """
        if camera.shape != (w.shape[0], 25):
            raise ValueError(f"camera must have shape ({w.shape[0]}, 25) to match w, got {tuple(camera.shape)}")
        p = self.params(w)
        n, r = w.shape[0], self.render_resolution
        make_field = lambda samples: head.HeadField(p, samples, self.compile)  # noqa: E731
        shift = self.window_shift(camera.float()).detach()  # where tracing looks, not a function of the camera to differentiate
        origins, directions, start = ray_starts(
            make_field, camera.float(), r, self.ray_start, self.ray_end, self.trace, shift
        )  # fmt: skip
        samples = torch.arange(n, device=w.device).repeat_interleave(r * r)
        background = self._background(p, r).reshape(-1, 3)
        layers = render_layers(
            make_field(samples), origins, directions, start, background, self.ray_start, self.ray_end, self.trace,
            self._shade,
        )  # fmt: skip
        image, mask = layers.colour, layers.alpha
        depth = layers.expected_depth(self.ray_end) + shift.repeat_interleave(r * r)
        image = image.reshape(n, r, r, 3).permute(0, 3, 1, 2) * 2 - 1
        return {
            "image": self._resize(image, self.image_resolution),
            "depth": self._resize(depth.reshape(n, 1, r, r), self.depth_resolution),
            "mask": self._resize(mask.reshape(n, 1, r, r), self.depth_resolution),
        }

    def window_shift(self, camera: torch.Tensor) -> torch.Tensor:
        """How far (N,) each camera's depth window moves from EG3D's [ray_start, ray_end].

        That window holds the head for cameras 2.68 to 3.0 from the origin (EG3D's are 2.7 from their
        pivot): there it stays, so their renders keep their bytes. A closer camera (a photo's fitted
        one, 2.42 away) would start its rays inside the face, a farther one stop them before the
        head: their windows move with them.
        """
        distance = camera[:, [3, 7, 11]].norm(dim=1)
        closer = (distance - (self.ray_start + HEAD_FRONT)).clamp(max=0)
        return closer + (distance - (self.ray_end - HEAD_BACK)).clamp(min=0)

    def _shade(self, surface: Surface) -> torch.Tensor:
        """Lambertian colours (K, 3) of a traced surface, lit from the direction its scene rows set."""
        q = surface.field.gather(list(surface.field.per_sample))
        el, az = q["light_elevation"], q["light_azimuth"]
        light = torch.stack([az.sin() * el.cos(), el.sin(), az.cos() * el.cos()], dim=-1)
        albedo = head.albedo(surface.points, q)
        if self.trace.gradient_blur > 0 and torch.is_grad_enabled():
            albedo = blur_gradient(albedo, head.albedo(surface.points, q, self.trace.gradient_blur))
        return lambert(albedo, surface.normals, light, q["ambient"], q["diffuse"])

    @staticmethod
    def _background(p: head.Params, r: int) -> torch.Tensor:
        """A vertical colour gradient (N, r, r, 3) in screen space, set by the scene rows of w."""
        rows = (torch.arange(r, dtype=p["bg_r"].dtype, device=p["bg_r"].device) + 0.5) / r
        base = torch.stack([p["bg_r"], p["bg_g"], p["bg_b"]], dim=-1)[:, None, None, :]
        shade = (0.5 - rows)[None, :, None, None] * p["bg_gradient"][:, None, None, None]
        return (base + shade).clamp(0, 1).expand(-1, r, r, 3)

    @staticmethod
    def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
        if x.shape[-1] == size:
            return x
        if x.shape[-1] > size:
            return F.interpolate(x, size=(size, size), mode="area")
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def identity(self) -> dict:
        """The backend name, a checksum of the version tag and config, and the config."""
        text = json.dumps({"version": VERSION, **self.config}, sort_keys=True)
        checksum = f"{VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        return {"generator": "analytic", "checksum": checksum, "config": dict(self.config)}
