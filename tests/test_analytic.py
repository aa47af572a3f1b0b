"""The embedded analytic generator: geometry and depth meaning, determinism, latents, gradients, landmarks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, binary_fill_holes

from regress.camera import ViewMixture, adjust_cameras, camera_rays, frontal_camera, make_cameras
from regress.generators import GeneratorSpec
from regress.generators.analytic import AnalyticGenerator
from regress.generators.analytic.head import HeadField
from regress.generators.analytic.head import sdf as head_sdf
from regress.sample import validate_batch

SIZE = 64


@pytest.fixture(scope="module")
def generator() -> AnalyticGenerator:
    return GeneratorSpec("analytic", options={"image_resolution": SIZE, "depth_resolution": SIZE, "render_resolution": SIZE}).create()


@pytest.fixture(scope="module")
def published_batch(generator):
    return generator.sample(range(12), ViewMixture.load("published"))


def project(points: torch.Tensor, camera: torch.Tensor, resolution: int) -> torch.Tensor:
    """Pixel coordinates (N, P, 2) as (column, row) of world points (N, P, 3) seen by cameras (N, 25)."""
    cam2world = camera[:, :16].reshape(-1, 4, 4)
    rotation, origin = cam2world[:, :3, :3], cam2world[:, :3, 3]
    local = (points - origin[:, None]) @ rotation  # world -> OpenCV camera axes
    k = camera[:, 16:].reshape(-1, 3, 3)
    u = k[:, None, 0, 0] * local[..., 0] / local[..., 2] + k[:, None, 0, 2]
    v = k[:, None, 1, 1] * local[..., 1] / local[..., 2] + k[:, None, 1, 2]
    return torch.stack([u, v], dim=-1) * resolution


def test_sample_matches_the_schema(generator, published_batch):
    validate_batch(published_batch)
    assert published_batch["w"].shape == (12, 14, 32)
    assert published_batch["image"].shape == (12, 3, SIZE, SIZE)
    assert published_batch["depth"].shape == published_batch["mask"].shape == (12, 1, SIZE, SIZE)
    assert published_batch["meta"][0]["generator"] == "analytic"
    assert generator.latent_shape == (14, 32)


def test_depth_lies_in_the_ray_range_inside_the_mask_and_corners_are_background(generator, published_batch):
    depth, mask = published_batch["depth"], published_batch["mask"]
    inside = mask > 0.5
    assert inside.float().mean(dim=(1, 2, 3)).min() > 0.15  # every view shows a good part of the head
    assert depth[inside].min() >= generator.ray_start and depth[inside].max() <= generator.ray_end
    assert depth[inside].max() < 3.1  # the head (and neck) lie well in front of the far plane
    for row, col in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        if row == -1:
            continue  # the neck reaches the bottom edge
        assert mask[:, 0, row, col].max() < 1e-3
        assert depth[:, 0, row, col].min() == pytest.approx(generator.ray_end)
    assert mask.min() >= 0 and mask.max() <= 1
    edge = (mask > 0.02) & (mask < 0.5)  # EG3D's depth is normalized by the ray's weight: edges keep the head's depth
    assert edge.sum() > 100 and depth[edge].max() < 3.1


def test_same_seed_gives_the_same_sample_whatever_the_batch(generator):
    seeds = list(range(100, 107))
    views = ViewMixture.load("published")
    together = generator.sample(seeds, views)
    for i in (0, 3, 6):
        alone = generator.sample([seeds[i]], views)
        for name in ("w", "z", "camera", "depth", "mask"):
            torch.testing.assert_close(alone[name][0], together[name][i], atol=1e-6, rtol=0)
        assert (alone["image"][0].int() - together["image"][i].int()).abs().max() <= 1


def test_different_seeds_give_different_heads(generator):
    batch = generator.sample([1, 2], None)
    assert (batch["w"][0] - batch["w"][1]).abs().mean() > 0.1
    depth_gap = (batch["depth"][0] - batch["depth"][1]).abs()
    assert depth_gap[(batch["mask"] > 0.5).all(dim=0)].mean() > 0.003
    assert (batch["image"][0].float() - batch["image"][1].float()).abs().mean() > 10


def test_truncation_zero_gives_the_mean_latent_and_cutoff_keeps_late_rows(generator):
    z = torch.randn(3, generator.z_dim, generator=torch.Generator().manual_seed(0))
    c = frontal_camera(3)
    torch.testing.assert_close(generator.mapping(z, c, psi=0.0), generator.mean_latent().expand(3, -1, -1))
    full, cut = generator.mapping(z, c), generator.mapping(z, c, psi=0.5, cutoff=8)
    torch.testing.assert_close(cut[:, 8:], full[:, 8:])
    mean = generator.mean_latent()
    torch.testing.assert_close(cut[:, :8], mean[:8] + 0.5 * (full[:, :8] - mean[:8]))
    assert torch.equal(full[:, 0], full[:, -1])  # mapping broadcasts one w to all rows


def test_frontal_centre_depth_is_the_distance_to_the_nose_bridge(generator):
    """Mean head: nose tip at z = 0.400, so its depth is 2.7 - 0.400 = 2.300, the nearest point of the
    frontal view; the centre ray (through the pivot) meets the upper nose at depth ~2.335."""
    w = generator.mean_latent()[None]
    depth = generator.synthesis(w, frontal_camera())["depth"][0, 0]
    centre = depth[SIZE // 2 - 1 : SIZE // 2 + 1, SIZE // 2 - 1 : SIZE // 2 + 1].mean()
    z = torch.linspace(0.5, 0.0, 5001)
    axis = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], dim=-1)[None]
    density = generator.density(axis, w)[0, :, 0]
    surface_z = z[(density > generator.surface_level).nonzero()[0, 0]]
    nose_tip = generator.params(w)["nose_z"][0]
    assert centre.item() == pytest.approx(2.7 - surface_z.item(), abs=3e-3)
    assert 2.7 - nose_tip < centre < 2.7 - nose_tip + 0.08
    assert centre.item() == pytest.approx(2.335, abs=0.01)
    assert nose_tip.item() == pytest.approx(0.4, abs=1e-3)
    assert depth.min().item() == pytest.approx(2.7 - nose_tip.item(), abs=4e-3)


def test_density_is_high_inside_low_outside_and_crosses_the_surface_level(generator):
    w = generator.mean_latent()[None]
    corners = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    points = torch.cat([torch.zeros(1, 3), corners])[None]
    density = generator.density(points, w)[0, :, 0]
    assert density[0] > 0.99 * 2 * generator.surface_level
    assert density[1:].max() < 1e-3
    assert generator.box_size == 1.0 and generator.surface_level == 10.0


def test_synthesis_is_differentiable_and_inversion_recovers_an_image(generator):
    camera = make_cameras(0.3, -0.1)
    z = torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(5))
    target_w = generator.mapping(z, frontal_camera())
    with torch.no_grad():
        target = generator.synthesis(target_w, camera)["image"]
    w = generator.mean_latent()[None].clone().requires_grad_(True)
    out = generator.synthesis(w, camera)
    (out["image"].square().mean() + out["depth"].mean() + out["mask"].mean()).backward()
    assert torch.isfinite(w.grad).all() and (w.grad.abs().sum(dim=-1) > 0).all()
    optimizer = torch.optim.Adam([w], lr=0.03)
    losses = []
    for _ in range(20):
        loss = (generator.synthesis(w, camera)["image"] - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.12 * losses[0]


def test_rows_control_separate_parts_like_w_plus(generator):
    w = generator.mean_latent()[None].clone()
    camera = frontal_camera()
    base = generator.synthesis(w, camera)
    scene = w.clone()
    scene[:, 10:] += 0.5  # the scene rows: light and background
    lit = generator.synthesis(scene, camera)
    torch.testing.assert_close(lit["depth"], base["depth"])
    assert (lit["image"] - base["image"]).abs().mean() > 0.05
    shaped = w.clone()
    shaped[:, :3] += 0.5  # the skull rows
    assert (generator.synthesis(shaped, camera)["depth"] - base["depth"]).abs().max() > 0.02


def test_landmarks_project_inside_the_frontal_face_in_ibug_order(generator):
    batch = generator.sample([0, 1, 2], None, psi=1.0)
    marks = generator.landmarks_3d(batch["w"])
    assert marks.shape == (3, 68, 3)
    pixels = project(marks, batch["camera"], SIZE)
    col, row = pixels[..., 0].long(), pixels[..., 1].long()
    inside = batch["mask"][torch.arange(3)[:, None], 0, row, col]
    assert inside.min() > 0.5
    z = marks[..., 2]
    assert (z[:, 30] > z[:, 36]).all() and (z[:, 30] > z[:, 8]).all()  # the nose tip is closest to the camera
    assert (pixels[:, 0, 0] < pixels[:, 16, 0]).all()  # jaw runs from the image's left to its right
    assert (pixels[:, 36, 0] < pixels[:, 45, 0]).all() and (pixels[:, 39, 0] < pixels[:, 42, 0]).all()
    eye_row, nose_row, mouth_row, chin_row = (pixels[:, i, 1] for i in (37, 30, 51, 8))
    assert (eye_row < nose_row).all() and (nose_row < mouth_row).all() and (mouth_row < chin_row).all()
    field = HeadField(generator.params(batch["w"]), torch.arange(3).repeat_interleave(68))
    assert field(marks.reshape(-1, 3)).abs().max() < 2e-3  # on the surface
    with torch.no_grad():
        template = generator.landmarks_3d(generator.mean_latent()[None])[0]  # the camera fit's template (inversion.align)
    assert template.shape == (68, 3)
    for left, right in ((0, 16), (36, 45), (39, 42), (48, 54), (31, 35)):  # the mean head is mirror-symmetric
        torch.testing.assert_close(template[left] * torch.tensor([-1.0, 1.0, 1.0]), template[right], atol=1e-4, rtol=0)


def test_bad_configuration_and_inputs_are_explained():
    with pytest.raises(ValueError, match="num_ws >= 4"):
        AnalyticGenerator(num_ws=3)
    with pytest.raises(ValueError, match="no weights"):
        GeneratorSpec("analytic", __file__).create()
    generator = AnalyticGenerator(image_resolution=32, depth_resolution=32, render_resolution=32)
    with pytest.raises(ValueError, match="w must have shape"):
        generator.synthesis(torch.zeros(1, 14, 31), frontal_camera())
    with pytest.raises(ValueError, match="camera must have shape"):
        generator.synthesis(torch.zeros(2, 14, 32), frontal_camera())


def test_identity_names_the_backend_and_hashes_the_config():
    a, b = AnalyticGenerator(), AnalyticGenerator(seed=1)
    assert a.identity()["generator"] == "analytic"
    assert a.identity()["checksum"] == AnalyticGenerator().identity()["checksum"]
    assert a.identity()["checksum"] != b.identity()["checksum"]
    assert not torch.equal(a.mean_latent(), b.mean_latent())


@pytest.mark.gpu
def test_cuda_renders_what_the_cpu_renders(generator):
    cuda = GeneratorSpec("analytic", options={"image_resolution": SIZE, "depth_resolution": SIZE, "render_resolution": SIZE}).create().cuda()
    views = ViewMixture.load("published")
    on_cpu, on_gpu = generator.sample(range(8), views), cuda.sample(range(8), views)
    torch.testing.assert_close(on_gpu["w"].cpu(), on_cpu["w"], atol=1e-6, rtol=0)
    inside = (on_cpu["mask"] > 0.99) & (on_gpu["mask"].cpu() > 0.99)
    assert inside.float().mean() > 0.2
    assert (on_gpu["depth"].cpu() - on_cpu["depth"])[inside].abs().median() < 1e-4
    assert (on_gpu["mask"].cpu() - on_cpu["mask"]).abs().mean() < 1e-3
    assert (on_gpu["image"].cpu().float() - on_cpu["image"].float()).abs().mean() < 0.5
    marks = cuda.landmarks_3d(on_gpu["w"])
    torch.testing.assert_close(marks.cpu(), generator.landmarks_3d(on_cpu["w"]), atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_compiled_field_renders_and_differentiates_like_the_eager_one():
    eager = GeneratorSpec("analytic", options={"image_resolution": SIZE, "depth_resolution": SIZE}).create().cuda()
    compiled = GeneratorSpec("analytic", options={"image_resolution": SIZE, "depth_resolution": SIZE, "compile": True}).create().cuda()
    assert compiled.identity() == eager.identity()  # it changes how, not what, the generator draws
    seeds = range(6)
    views = ViewMixture.load("published").draw_many(list(seeds))
    a, b = eager.sample(seeds, views, jitter=False), compiled.sample(seeds, views, jitter=False)
    assert (a["image"].int() - b["image"].int()).abs().max() <= 2
    assert (a["depth"] - b["depth"]).abs().max() < 2e-4 and (a["mask"] - b["mask"]).abs().max() < 2e-4
    grads = []
    for generator in (eager, compiled):
        w = a["w"].clone().requires_grad_(True)
        generator.synthesis(w, a["camera"])["image"].square().mean().backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-3 * float(grads[0].abs().max()), rtol=0)


@pytest.mark.parametrize("radius", [2.1, 2.3, 3.3])  # from the pivot: 2.3 is as close as a photo's fitted camera came (2.42 from the origin)
def test_heads_stay_closed_from_cameras_closer_or_farther_than_eg3d_s(generator, radius):
    """Issue 30, item 8: from a camera closer than EG3D's near plane allows, rays started inside the face and the
    mask had holes (background depth in the face). Any latent, mean, random or saturating every parameter,
    renders a closed head whose depth inside lies on the surface."""
    count = 4
    spread = torch.randn(count, 1, generator.w_dim, generator=torch.Generator().manual_seed(3))
    w = generator.mean_latent()[None] + torch.tensor([0.0, 1.0, 10.0, -10.0])[:, None, None] * spread
    camera = make_cameras(torch.tensor([0.0, 0.3, -0.3, 0.1]), torch.tensor([0.0, -0.15, 0.1, 0.2]), radius=radius)
    with torch.no_grad():
        out = generator.synthesis(w.expand(-1, generator.num_ws, -1), camera)
    solid = (out["mask"][:, 0] > 0.5).numpy()
    for view in solid:
        assert view.mean() > 0.05 and (binary_fill_holes(view) == view).all()
    inner = torch.from_numpy(binary_erosion(solid, np.ones((1, 3, 3)))) & (out["mask"][:, 0] > 0.999)
    origins, directions = camera_rays(camera, SIZE)
    points = origins + out["depth"].reshape(count, -1, 1) * directions
    params = {name: value[:, None] for name, value in generator.params(w.expand(-1, generator.num_ws, -1)).items()}
    on_surface = head_sdf(points, params).reshape(count, SIZE, SIZE)[inner]
    assert on_surface.abs().quantile(0.99) < 1e-3 and on_surface.abs().max() < 0.02  # a few blend two layers' depths


def test_camera_gradients_see_silhouettes_move_and_change_no_pixel(generator):
    """Issue 25: the surface renderer's camera gradients come from pixel-wide edges (TraceSettings.gradient_blur), so
    the head's area shrinks under autograd as the camera backs away, as it does drawn (its sub-pixel edge and
    opacity read at a fixed depth gave the wrong sign), and the lateral shift of a yaw matches; the drawing with
    gradients on is the drawing without them, to the bit."""
    w = generator.mapping(torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(5)), frontal_camera(2), psi=0.7)
    camera = make_cameras(torch.tensor([0.3, -0.2]), torch.tensor([-0.1, 0.15]))
    column = (torch.arange(SIZE) + 0.5) / SIZE

    def area_and_moment(correction: torch.Tensor) -> tuple[dict, torch.Tensor]:
        out = generator.synthesis(w, adjust_cameras(camera, correction))
        mask = out["mask"][:, 0]
        return out, torch.stack([mask.sum((1, 2)), (mask * column).sum((1, 2))], dim=1)

    correction = torch.zeros(2, 4, requires_grad=True)
    drawn, measures = area_and_moment(correction)
    area_by_distance = torch.autograd.grad(measures[:, 0].sum(), correction, retain_graph=True)[0][:, 3]
    moment_by_yaw = torch.autograd.grad(measures[:, 1].sum(), correction)[0][:, 0]
    step = torch.zeros(2, 4)
    with torch.no_grad():
        assert all(torch.equal(drawn[k], area_and_moment(torch.zeros(2, 4))[0][k]) for k in ("image", "depth", "mask"))
        step[:, 3] = 0.01
        area_fd = (area_and_moment(step)[1] - area_and_moment(-step)[1])[:, 0] / 0.02
        step[:, 3], step[:, 0] = 0.0, 0.01
        moment_fd = (area_and_moment(step)[1] - area_and_moment(-step)[1])[:, 1] / 0.02
    assert (area_fd < -1000).all() and (area_by_distance < area_fd / 4).all() and (area_by_distance > area_fd * 2).all()
    torch.testing.assert_close(moment_by_yaw, moment_fd, rtol=0.25, atol=0)


class _Spheres:
    """A union of spheres as a distance field of render_layers (every ray sees the same spheres)."""

    def __init__(self, centres: torch.Tensor, radii: torch.Tensor) -> None:
        self.centres, self.radii = centres, radii

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        return ((points[:, None] - self.centres).norm(dim=-1) - self.radii).amin(1)

    def take(self, index: torch.Tensor) -> "_Spheres":
        return self


def test_occlusion_edges_inside_the_silhouette_reach_the_gradients_and_change_no_pixel():
    """Issue 25: a ray that passes just under a small sphere and hits a large one behind it records the pass
    (`Trace.pass_closest`), and the small sphere's pixel-wide edge gives its colour a gradient in the small sphere's
    position (before, only the rays that hit it had one: the nose's tip over the lip pulled fits the wrong way); the
    drawing is unchanged, and a ray far from the small sphere gets no gradient from it."""
    from regress.generators.analytic.render import render_layers
    from regress.generators.analytic.trace import TraceSettings, sphere_trace

    blur, gap = 0.005, 0.0075  # the first ray passes 1.5 blur widths under the small sphere
    small = torch.tensor([0.0, 0.1, 1.2], requires_grad=True)
    field = _Spheres(torch.stack([small, torch.tensor([0.0, 0.0, 3.0])]), torch.tensor([0.05, 1.0]))
    heights = torch.tensor([(0.1 - 0.05 - gap) / 1.2, -0.2])  # the ray's slope under the small sphere; one far off
    directions = torch.nn.functional.normalize(torch.stack([torch.zeros(2), heights, torch.ones(2)], 1), dim=1)
    origins, start = torch.zeros(2, 3), torch.full((2,), 0.5)
    settings = TraceSettings(steps=64, gradient_blur=blur)
    with torch.no_grad():
        trace = sphere_trace(field, origins, directions, start, 5.0, settings)
    passed = gap * directions[0, 2]  # the ray's closest distance to the small sphere's surface (to first order)
    assert passed * 0.9 < trace.pass_closest[0] < passed + 0.003 and trace.pass_depth[0] < trace.depth[0] - 0.5
    shade = lambda surface: surface.points[:, 2:3].expand(-1, 3)  # noqa: E731 - colour = depth, 1.15 or 2.0
    colour = render_layers(field, origins, directions, start, torch.zeros(2, 3), 0.5, 5.0, settings, shade).colour
    with torch.no_grad():
        drawn = render_layers(field, origins, directions, start, torch.zeros(2, 3), 0.5, 5.0, settings, shade).colour
    assert torch.equal(colour.detach(), drawn) and drawn[0, 0] > 1.9
    near = torch.autograd.grad(colour[0, 0], small, retain_graph=True)[0]
    far = torch.autograd.grad(colour[1, 0], small, allow_unused=True)[0]
    assert near[1] > 1.0  # the small sphere moving down covers more of the ray: its colour falls towards 1.15
    assert far is None or far.abs().max() == 0
