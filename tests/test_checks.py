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
    summary = checks.summary(found, homework_rubric)
    # the shipped rubric's points of the checks this grade has, from the [points] table
    table, manual = homework_rubric.raw["points"], homework_rubric.raw["manual"]
    worth = {c.name: table.get(c.name, table.get(c.name.split(".")[0] + ".*"))
             for c in found if c.required}
    assert None not in worth.values()
    assert {k: v for k, v in summary.items() if k != "manual"} == {
        "passed": True, "required_passed": 22, "required": 22, "failed": [],
        "score": sum(worth.values()), "max_score": sum(worth.values()), "unscored": [],
        "manual_max": sum(m["points"] for m in manual.values())}
    assert summary["manual"] == [{"id": key, **item} for key, item in manual.items()]
    assert all(c.points == c.max_points == worth.get(c.name, 0) and c.caused_by is None
               for c in found)


def test_a_wrong_latent_size_fails_its_spec_check_only(homework_rubric):
    found = checks.run_checks(homework_rubric, homework(), homework(latent_dim=3), [])
    assert failed(found) == {"spec.latent_dim": "latent_dim = 3; the homework asks for 2"}
    summary = checks.summary(found, homework_rubric)
    assert summary["score"] == summary["max_score"] - homework_rubric.points["spec.*"]
    assert not summary["passed"] and summary["required_passed"] == 21


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
                            "beyond ±17",
        "metric.iwae_log_likelihood": "k = 100 but the reference used k = 1000: the values "
                                      "are not comparable"}
    close = checks.run_checks(homework_rubric, homework(), homework(test_elbo=158.7), [])
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


def by_name(found):
    return {c.name: c for c in found}


def test_a_missing_record_is_the_cause_of_its_grid_and_both_lose_their_points(
        homework_rubric):
    found = by_name(checks.run_checks(homework_rubric, homework(),
                                      homework(drop=["manifold_20x20"]), []))
    assert found["record.manifold_20x20"].caused_by is None  # execution passed
    assert found["grid.manifold_20x20"].caused_by == "record.manifold_20x20"
    assert (found["grid.manifold_20x20"].points, found["grid.manifold_20x20"].max_points) == (
        0, homework_rubric.points["grid.*"])
    assert found["record.manifold_20x20"].points == 0
    assert found["grid.real_10x10"].caused_by is None and found["grid.real_10x10"].points == 2


def test_a_failed_execution_is_blamed_for_the_records_and_they_for_the_rest(homework_rubric):
    nothing = Records(Path("run"), {}, {"": "no records.json: nothing was recorded"})
    found = checks.run_checks(homework_rubric, homework(), nothing, ["a.ipynb: stopped"])
    named = by_name(found)
    assert named["execution"].caused_by is None
    assert named["record.test_elbo"].caused_by == "execution"
    assert named["metric.test_elbo"].caused_by == "record.test_elbo"
    assert named["spec.prior"].caused_by == "record.weights"  # the spec's record, not its own
    assert {checks.root_cause(c, found) for c in found if not c.passed} == {"execution"}
    summary = checks.summary(found, homework_rubric)
    assert summary["score"] == 0 and summary["max_score"] > 0  # every failure costs its points


def test_the_first_failed_prerequisite_in_the_rubrics_order_is_blamed(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[records]\nrequired = ["test_elbo"]\n[metrics.test_elbo]\ntolerance = 1\n'
                    '[points]\n"record.*" = 1\nexecution = 1\n"metric.*" = 3\n"static.*" = 1\n'
                    '[depends]\n"metric.*" = ["hidden.2a", "execution", "record.*"]\n')
    chosen = rubric.load(path)
    off = homework(test_elbo=0.0)
    found = by_name(checks.run_checks(chosen, homework(), off, ["boom"]))
    assert found["metric.test_elbo"].caused_by == "execution"  # hidden.2a is not in the grade
    found["metric.test_elbo"].caused_by = "stale"
    extra = [*found.values(), checks.Check("hidden.2a", True, False, "wrong networks")]
    checks.summary(extra, chosen)  # scores again, the new check included
    assert found["metric.test_elbo"].caused_by == "hidden.2a"
    assert extra[-1].max_points is None  # the rubric gives hidden.2a no points
    assert checks.summary(extra, chosen)["unscored"] == ["hidden.2a"]
    alone = by_name(checks.run_checks(chosen, homework(), off, []))
    assert alone["metric.test_elbo"].caused_by is None  # nothing it needs failed


def test_without_points_every_counting_check_is_worth_one(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[records]\nrequired = ["test_elbo"]\ninformational = ["history"]\n'
                    '[metrics.test_elbo]\ntolerance = 1\n')
    found = checks.run_checks(rubric.load(path), homework(), homework(test_elbo=0.0), [])
    assert [(c.name, c.points, c.max_points) for c in found] == [
        ("execution", 1, 1), ("record.test_elbo", 1, 1), ("record.history", 0, 0),
        ("metric.test_elbo", 0, 1)]
    summary = checks.summary(found, rubric.load(path))
    assert (summary["score"], summary["max_score"]) == (2, 3)
    assert summary["manual"] == [] and summary["manual_max"] == 0
