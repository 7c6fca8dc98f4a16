"""Tests of vae_helpers.grading.recompute and the ``reported.NAME`` check.

The grader's test ELBO carries the Monte Carlo noise of its draws of z; the check of
a submission's own value allows ``n_se`` standard errors of the difference between a
one-draw estimate and the grader's. Here that standard error is checked against the
spread of many independent one-draw estimates, and the check against recorded values
that agree, disagree, or have the sign flipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vae_helpers.grading import checks, recompute, rubric
from vae_helpers.grading.recorded import Records

pytestmark = pytest.mark.unit


def random_weights(rng, latent_dim=2, hidden_units=32):
    from vae_helpers.model import homework_weight_shapes

    return {name: rng.normal(0.0, 0.1, shape).astype(np.float32) for name, shape in
            homework_weight_shapes(latent_dim, hidden_units).items()}


def test_the_standard_error_matches_the_spread_of_one_draw_estimates():
    from vae_helpers import data
    from vae_helpers.evaluate import evaluate_elbo
    from vae_helpers.model import from_homework_weights

    rng = np.random.default_rng(3)
    arrays = random_weights(rng)
    pixels = rng.integers(0, 256, (400, 28, 28), dtype=np.uint8)
    model = from_homework_weights(arrays)
    x = data.test_set(pixels)
    value, details = recompute._compute("test_elbo", model, x, {})
    assert details["n_test"] == 400 and details["draws"] == recompute.ELBO_DRAWS
    one_draw = np.array([evaluate_elbo(model, x, seed=100 + s)["elbo"] for s in range(60)])
    assert value == pytest.approx(one_draw.mean(), abs=4 * one_draw.std(ddof=1) / np.sqrt(60)
                                  + 4 * recompute.standard_error({"details": details}))
    # the spread of one-draw estimates is sqrt(noise / n); the standard error of their
    # difference from the grader's adds the grader's own noise, 1 / draws as much
    alone = np.sqrt(details["noise_variance"] / 400)
    se = recompute.standard_error({"details": details})
    assert se == pytest.approx(alone * np.sqrt(1 + 1 / recompute.ELBO_DRAWS))
    assert one_draw.std(ddof=1) == pytest.approx(alone, rel=0.3)  # 60 estimates: ~9% sd


def graded(claimed, computed=142.0, noise=64.0, n=10000):
    records = Records(Path("."))
    records.entries["test_elbo"] = {"kind": "metric", "value": computed, "details": {
        "n_test": n, "draws": 4, "noise_variance": noise, "computed_by": "grader"}}
    records.claimed["test_elbo"] = (None if claimed is None else {
        "kind": "metric", "value": claimed, "details": {}}, None if claimed is not None
        else "not recorded")
    rule = rubric.load().metrics["test_elbo"]
    return checks._reported(records, "test_elbo", rule), checks._record(
        records, "test_elbo", "metric", rule)


def test_a_reported_value_within_the_noise_passes_and_one_beyond_fails():
    se = np.sqrt(64.0 * (1 / 10000 + 1 / 40000))  # 0.089
    (ok, reason), _ = graded(142.0 + 4 * se)
    assert ok and reason.startswith("reported 142.36, recomputed 142.00 from the recorded "
                                    "weights (± 0.45, 5 standard errors")
    (ok, reason), _ = graded(142.0 + 6 * se)
    assert not ok and reason.endswith("the recorded value is not what these weights give")
    (ok, reason), _ = graded(-142.1)
    assert not ok and reason.endswith("the sign is flipped (record the ELBO, not the loss "
                                      "−ELBO)")


def test_a_value_the_submission_did_not_record_fails_both_its_checks():
    (ok, reason), (recorded_ok, why) = graded(None)
    assert not ok and reason == "no test_elbo recorded to compare (not recorded)"
    assert not recorded_ok and why == "not recorded"  # the grader's value does not count
