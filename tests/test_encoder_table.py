"""The encoder table: rows in order on held-out seeds, a perfect encoder at the metrics' ceiling and kept there by the
refine config, and the catch-up summary (the fewest steps after the regressor that reach the long projection)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from regress.evaluation.encoder_table import HELD_OUT_START, catch_up, encoder_table, markdown, score
from regress.generators import GeneratorSpec
from regress.inversion.project import REFINE, ProjectionConfig, project
from regress.sample import image_to_float

SEEDS = range(HELD_OUT_START, HELD_OUT_START + 3)
FAST = ProjectionConfig(spread_samples=100)

pytestmark = pytest.mark.single_thread  # tiny tensors: a second thread only adds synchronization


@pytest.fixture(scope="module")
def analytic():
    return GeneratorSpec("analytic", options={"image_resolution": 32, "render_resolution": 16, "depth_resolution": 16}).create()


@pytest.fixture(scope="module")
def held_out(analytic):
    return analytic.sample(SEEDS, psi=0.7, jitter=False)


def test_a_perfect_encoder_scores_the_ceiling_and_its_refinement_stays_near_it(analytic, held_out):
    reported = []
    table = encoder_table(analytic, lambda image: held_out["w"], SEEDS, k=[2], steps=4, refine=dataclasses.replace(REFINE, spread_samples=100),
                          projection=FAST, report=reported.append)  # fmt: skip
    rows = table["rows"]
    assert reported == rows  # each row as it was scored, in order
    assert [r["method"] for r in rows] == ["mean latent", "regressor", "regressor + 2 projection steps", "projection, 2 steps", "projection, 4 steps"]
    starts = [("mean latent", 0), ("regressor", 0), ("regressor", 2), ("mean latent", 2), ("mean latent", 4)]
    assert [(r["start"], r["steps"]) for r in rows] == starts
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if isinstance(v, float))
    assert all(r["ms_per_image"] > 0 for r in rows[2:]) and rows[0]["ms_per_image"] == 0.0
    regressor, refined = rows[1], rows[2]
    assert regressor["image_psnr"] == regressor["novel_psnr"] == 100.0 and regressor["render_depth_l1"] == 0.0  # psnr caps at 100 dB
    assert regressor["image_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert refined["image_psnr"] > 40 and refined["image_ssim"] > 0.99  # no latent noise, a small step: the start is kept
    assert rows[0]["image_psnr"] < rows[3]["image_psnr"] < rows[4]["image_psnr"] < 35  # projection from the mean latent improves
    assert table["summary"]["k"] == 0 and table["summary"]["reference_psnr"] == rows[4]["image_psnr"]
    assert table["seeds"] == list(SEEDS) and table["refine"]["noise"] == 0.0 and table["refine"]["lr"] == REFINE.lr


def test_the_default_projector_throws_a_perfect_start_away(analytic, held_out):
    target, camera = image_to_float(held_out["image"]), held_out["camera"]
    kept, lost = (project(analytic, target, camera, dataclasses.replace(config, steps=4, spread_samples=100), init=held_out["w"]).w
                  for config in (REFINE, ProjectionConfig()))  # fmt: skip
    assert score(analytic, kept, held_out)["image_psnr"] > score(analytic, lost, held_out)["image_psnr"] + 10


def test_without_an_encoder_only_projection_and_no_summary(analytic):
    table = encoder_table(analytic, None, SEEDS[:2], k=[2], steps=2, projection=FAST)  # k == steps: one projection row
    assert [r["method"] for r in table["rows"]] == ["mean latent", "projection, 2 steps"] and table["summary"] is None
    assert markdown(table).count("\n") == 3  # header, rule, two rows, no summary line


def rows(regressor: dict[int, float], reference: float) -> list[dict]:
    """Hand-made rows: regressor + k steps at PSNRs `regressor` (10 ms per step), projection 200 steps at `reference`."""
    made = [{"method": f"regressor + {k}", "start": "regressor", "steps": k, "image_psnr": p, "ms_per_image": 10.0 * k + 1}
            for k, p in regressor.items()]
    return made + [{"method": "projection, 200 steps", "start": "mean latent", "steps": 200, "image_psnr": reference, "ms_per_image": 2000.0}]


def test_catch_up_picks_the_fewest_steps_that_reach_the_reference():
    found = catch_up(rows({0: 22.0, 20: 35.0, 5: 29.0, 10: 30.5, 40: 38.0}, 30.0), 200)
    assert found["k"] == 10 and found["ms_per_image"] == 101.0 and found["time_fraction"] == pytest.approx(101.0 / 2000.0)
    assert found["reference_psnr"] == 30.0 and found["reference_ms_per_image"] == 2000.0 and found["speedup"] == 2000.0
    assert catch_up(rows({0: 31.0, 5: 33.0}, 30.0), 200)["k"] == 0  # the regressor alone
    assert catch_up(rows({5: 30.0}, 30.0), 200)["k"] == 5  # reaching counts
    missed = catch_up(rows({0: 22.0, 5: 25.0, 10: 29.9}, 30.0), 200)
    assert catch_up(rows({5: 30.0}, 30.0), 200)["speedup"] is None  # no row for the regressor alone
    assert missed["k"] is None and missed["time_fraction"] is None and missed["ms_per_image"] is None
    with pytest.raises(ValueError, match="no 100-step projection from the mean latent"):
        catch_up(rows({5: 25.0}, 30.0), 100)


def test_markdown_states_the_summary():
    scores = {"image_ssim": 0.9, "novel_psnr": 20.0, "novel_ssim": 0.8, "render_depth_l1": 0.01}
    table_rows = [{**r, **scores} for r in rows({0: 22.0, 5: 25.0, 10: 31.0}, 30.0)]
    found = markdown({"rows": table_rows, "k": [5, 10], "summary": catch_up(table_rows, 200)})
    assert "| regressor + 10 | 10 | 31.0 | 0.900 | 20.0 | 0.800 | 0.0100 | 101.0 |" in found
    assert "| regressor + 0 | 0 | 22.0 | 0.900 | 20.0 | 0.800 | 0.0100 | 1.00 |" in found  # two decimals under 10 ms
    assert found.endswith("The regressor alone is 2,000x faster than the 200-step projection. Regressor + 10 projection steps reaches the 200-step projection's PSNR (30.0 dB) in 5.1% of its time "
                          "(101.0 against 2000.0 ms per image).")  # fmt: skip
    table_rows[2]["image_psnr"] = 29.0
    missed = markdown({"rows": table_rows, "k": [5, 10], "summary": catch_up(table_rows, 200)})
    assert missed.endswith("faster than the 200-step projection. No regressor + k projection steps (k in 5, 10) reaches the 200-step projection's PSNR (30.0 dB).")
