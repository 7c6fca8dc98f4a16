"""Tests of vae_helpers.grading.checks: each check's verdict and reason, on records built
in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from vae_helpers.grading import checks, rubric
from vae_helpers.grading.recorded import PNG_SIGNATURE, Records

pytestmark = pytest.mark.unit

SPEC = {"latent_dim": 2, "hidden_units": [512], "hidden_activation": "relu",
        "output_activation": "sigmoid", "likelihood": "gaussian", "prior": "normal",
        "num_parameters": 807701, "nonnegative_variances": True}
GRIDS = {"real_10x10": [[289, 289]], "samples_10x10": [[289, 289]],
         "reconstructions_10x10": [[289, 289], [289, 289]], "manifold_20x20": [[560, 560]],
         "latent_scatter": []}


def homework(test_elbo=141.7, iwae=156.1, k=1000, spec=None, latent_dim=2, drop=(),
             **images) -> Records:
    entries = {name: {"kind": "figure", "images": images.get(name, shapes), "png": PNG_SIGNATURE}
               for name, shapes in GRIDS.items()}
    entries.update(
        test_elbo={"kind": "metric", "value": test_elbo, "details": {}},
        iwae_log_likelihood={"kind": "metric", "value": iwae, "details": {"k": k}},
        weights={"kind": "weights", "arrays": {}, "latent_dim": latent_dim,
                 "hidden_units": 512, "input_dim": 784},
        history={"kind": "history", "rows": [{"epoch": 1, "train_elbo": 1.0}]},
        latent_means={"kind": "array", "shape": [10000, 2], "dtype": "float32"})
    if spec is not None:
        entries["model_spec"] = {"kind": "spec", "value": spec}
    return Records(Path("run"), {k: v for k, v in entries.items() if k not in drop}, {})


def failed(found):
    return {c.name: c.reason for c in found if not c.passed}


@pytest.fixture(scope="module")
def homework_rubric():
    return rubric.load()


@pytest.mark.parametrize("size, n, gap", [
    (289, 10, 1), (280, 10, 0), (316, 10, 4), (560, 20, 0), (579, 20, 1), (28, 1, 0),
    (290, 10, None), (317, 10, None), (279, 10, None), (289, 20, None), (320, 10, None),
])
def test_tiles_decomposes_n_tiles_of_28_with_a_uniform_gap_of_at_most_4(size, n, gap):
    assert checks.tiles(size, n) == gap


def test_the_reference_against_itself_passes_every_check(homework_rubric):
    found = checks.run_checks(homework_rubric, homework(), homework(), [])
    assert failed(found) == {}
    names = [c.name for c in found]
    assert names[0] == "execution" and len(names) == len(set(names)) == 24
    assert {c.name for c in found if not c.required} == {"record.history",
                                                         "record.latent_means"}
    assert checks.summary(found) == {"passed": True, "required_passed": 22, "required": 22,
                                     "score": 1.0, "failed": []}


def test_a_wrong_latent_size_fails_its_spec_check_only(homework_rubric):
    found = checks.run_checks(homework_rubric, homework(), homework(latent_dim=3), [])
    assert failed(found) == {"spec.latent_dim": "latent_dim = 3; the homework asks for 2"}
    assert checks.summary(found)["score"] == round(21 / 22, 4)


def test_the_spec_is_the_weights_and_a_recorded_spec_cannot_contradict_them(homework_rubric):
    claims = homework(latent_dim=3, spec=SPEC)  # weights of P = 3, a spec that says 2
    from vae_helpers.model import VAE  # the reference model of the same sizes counts them

    assert claims.spec() == {**SPEC, "latent_dim": 3,
                             "num_parameters": VAE(latent_dim=3).num_parameters}
    assert homework().spec() == SPEC
    without = homework(drop=("weights",), spec={**SPEC, "prior": "laplace"})
    assert without.spec()["prior"] == "laplace"  # no weights: the recorded spec is all there is


def test_a_missing_manifold_fails_its_record_and_grid_checks(homework_rubric):
    found = checks.run_checks(homework_rubric, homework(), homework(drop=["manifold_20x20"]), [])
    assert failed(found) == {
        "record.manifold_20x20": "not recorded",
        "grid.manifold_20x20": "no figure manifold_20x20 to check (not recorded)"}


def test_metrics_beyond_the_tolerance_or_with_other_details_fail(homework_rubric):
    found = checks.run_checks(homework_rubric, homework(), homework(test_elbo=-141.7, k=100), [])
    assert failed(found) == {
        "metric.test_elbo": "-141.70 vs the reference's 141.70: a difference of -283.40, "
                            "beyond ±3",
        "metric.iwae_log_likelihood": "k = 100 but the reference used k = 1000: the values "
                                      "are not comparable"}
    close = checks.run_checks(homework_rubric, homework(), homework(test_elbo=144.7), [])
    assert failed(close) == {}  # exactly at the tolerance passes


def test_grids_of_the_wrong_size_or_without_images_fail(homework_rubric):
    submission = homework(real_10x10=[[290, 290]], samples_10x10=[],
                          reconstructions_10x10=[[28, 28]] * 100, manifold_20x20=[[289, 579]])
    assert failed(checks.run_checks(homework_rubric, homework(), submission, [])) == {
        "grid.real_10x10": "no 10×10 grid of 28×28 images: the figure shows 1 image of "
                           "290×290 pixels",
        "grid.samples_10x10": "the figure shows no image (draw the grid with imshow)",
        "grid.manifold_20x20": "no 20×20 grid of 28×28 images: the figure shows 1 image of "
                               "289×579 pixels"}
    # 100 separate 28×28 images (a 10×10 grid of subplots) are a grid too
    by_subplots = checks.run_checks(homework_rubric, homework(), submission, [])
    assert next(c for c in by_subplots if c.name == "grid.reconstructions_10x10").reason == \
        "100 images of 28×28"


def test_records_of_the_wrong_kind_and_invalid_extra_records(homework_rubric):
    submission = homework()
    submission.entries["test_elbo"] = {"kind": "array", "shape": [1], "dtype": "float64"}
    submission.problems["junk"] = "nan is not a finite number"
    found = checks.run_checks(homework_rubric, homework(), submission,
                              ["a.ipynb: In [3]: ValueError: boom"])
    assert failed(found) == {
        "execution": "a.ipynb: In [3]: ValueError: boom",
        "record.test_elbo": "recorded as an array; it should be a metric",
        "metric.test_elbo": "test_elbo is not a metric",
        "record.junk": "nan is not a finite number"}
    junk = next(c for c in found if c.name == "record.junk")
    assert not junk.required  # reported, but it does not fail the homework


def test_nothing_recorded_fails_every_record_with_the_file_problem(homework_rubric):
    nothing = Records(Path("run"), {}, {"": "no records.json: nothing was recorded"})
    found = checks.run_checks(homework_rubric, homework(), nothing, [])
    assert sum(c.passed for c in found) == 1  # only execution
    assert next(c for c in found if c.name == "record.test_elbo").reason == \
        "no records.json: nothing was recorded"
    assert next(c for c in found if c.name == "spec.prior").reason == \
        "no valid weights (or model_spec) recorded"
