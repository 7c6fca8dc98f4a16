"""Tests of vae_helpers.grading.rubric: the shipped rubric and the errors of a bad one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vae_helpers.course import record
from vae_helpers.grading import rubric

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_rubric_asks_for_the_homework():
    found = rubric.load()
    assert set(found.required) | set(found.informational) <= set(record.HOMEWORK_RECORDS)
    assert set(found.required) == {"real_10x10", "samples_10x10", "reconstructions_10x10",
                                   "latent_scatter", "manifold_20x20", "test_elbo",
                                   "iwae_log_likelihood", "weights"}
    assert found.metrics["iwae_log_likelihood"]["recompute"] is True
    assert found.metrics["test_elbo"]["recompute"] is True
    assert found.metrics["test_elbo"]["reported"] is True
    assert found.metrics["iwae_log_likelihood"]["reported"] is False
    assert found.grids == {"real_10x10": 10, "samples_10x10": 10, "reconstructions_10x10": 10,
                           "manifold_20x20": 20}
    assert found.spec["latent_dim"] == 2 and found.spec["hidden_units"] == [512]
    assert found.spec["nonnegative_variances"] is True
    # three standard deviations over three seeds (benchmarks/seed_spread.py)
    spread = json.loads((ROOT / "benchmarks" / "results" / "seed_spread.json").read_text())
    for name, rule in found.metrics.items():
        assert len(spread["runs"]) >= 3 and rule["tolerance_source"]
        assert rule["tolerance"] == pytest.approx(3 * spread["spread"][name]["sd"], abs=0.05)
    assert found.parameters["n_train"] is None and found.parameters["bernoulli_epochs"] == 0
    assert found.sha256 == hashlib.sha256(rubric.DEFAULT.read_bytes()).hexdigest()
    assert set(found.spec) <= set(record.SPEC_KEYS)  # what every recorded spec states


def test_the_shipped_rubric_sets_only_parameters_the_homework_declares():
    from vae_helpers.course.pipeline import declared_parameters, notebook_dir

    declared = set().union(*(declared_parameters(notebook_dir() / f"{n}.ipynb")
                             for n in ("03_train", "04_analysis")))
    assert set(rubric.load().parameters) <= declared


@pytest.mark.parametrize("text, message", [
    ("[record]\n", r"\[record\] is not a rubric table"),
    ("records = 3\n", r"\[records\] must be a table"),
    ("[records]\nrequired = 'test_elbo'\n", r"\[records\] required must be a list of names"),
    ("[records]\nrequired = ['Test']\n", r"'Test' is not a record name"),
    ("[grids]\nreal_10x10 = 0\n", r"\[grids\] real_10x10 must be an integer from 1 to 100"),
    ("[metrics.test_elbo]\n", r"\[metrics.test_elbo\] tolerance must be a number >= 0"),
    ("[metrics.test_elbo]\ntolerance = -1\n", r"tolerance must be a number >= 0, got -1"),
    ("[metrics.test_elbo]\ntolerance = 1\nk = 2\n", r"unknown key k"),
    ("[metrics.test_elbo]\ntolerance = 1\nrecompute = 'yes'\n", r"recompute must be true or false"),
    ("[metrics.kl]\ntolerance = 1\nrecompute = true\n",
     r"the grader can compute test_elbo, iwae_log_likelihood from the weights, not kl"),
    ("[metrics.iwae_log_likelihood]\ntolerance = 1\nrecompute = true\nreported = true\n",
     r"reported = true needs recompute = true, and is possible for test_elbo"),
    ("[metrics.test_elbo]\ntolerance = 1\nreported = true\n", r"reported = true needs"),
    ("[metrics.test_elbo]\ntolerance = 1\nn_se = 0\n", r"n_se must be a positive number"),
    ("[metrics.test_elbo]\ntolerance = 1\ntolerance_source = 3\n",
     r"tolerance_source must be a string"),
    ("[limits]\ntime = 5\n", r"\[limits\] unknown key time"),
    ("[limits]\nmemory_mb = 0\n", r"memory_mb must be a positive number"),
    ("[limits]\nprocesses = 2.5\n", r"processes must be a whole number, got 2.5"),
    ("[parameters_none]\nnames = ['n-train']\n", r"'n-train' is not a record name"),
    ("[spec]\nLatent = 2\n", r"'Latent' is not a spec key"),
    ("[records\n", r"is not valid TOML"),
])
def test_a_bad_rubric_names_the_table_and_the_key(tmp_path, text, message):
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    with pytest.raises(rubric.RubricError, match=message):
        rubric.load(path)


def test_a_missing_rubric(tmp_path):
    with pytest.raises(rubric.RubricError, match="cannot read the rubric .*nope.toml"):
        rubric.load(tmp_path / "nope.toml")


def test_a_partial_rubric_keeps_the_default_limits(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[limits]\ntime_limit = 60\n[parameters]\nepochs = 2\n")
    found = rubric.load(path)
    assert found.limits == {**rubric.LIMITS, "time_limit": 60}
    assert found.parameters == {"epochs": 2} and found.required == ()
