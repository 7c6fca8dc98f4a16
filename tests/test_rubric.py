"""Tests of vae_helpers.grading.rubric: the shipped rubric and the errors of a bad one."""

from __future__ import annotations

import hashlib

import pytest

from vae_helpers.course import record
from vae_helpers.grading import rubric

pytestmark = pytest.mark.unit


def test_the_shipped_rubric_asks_for_the_homework():
    found = rubric.load()
    assert set(found.required) | set(found.informational) <= set(record.HOMEWORK_RECORDS)
    assert set(found.required) == {"real_10x10", "samples_10x10", "reconstructions_10x10",
                                   "latent_scatter", "manifold_20x20", "test_elbo",
                                   "iwae_log_likelihood", "weights"}
    assert found.metrics["iwae_log_likelihood"]["recompute"] is True
    assert found.metrics["test_elbo"]["recompute"] is False
    assert found.grids == {"real_10x10": 10, "samples_10x10": 10, "reconstructions_10x10": 10,
                           "manifold_20x20": 20}
    assert found.spec["latent_dim"] == 2 and found.spec["hidden_units"] == [512]
    assert found.spec["nonnegative_variances"] is True
    assert {m["tolerance"] for m in found.metrics.values()} == {3.0}
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
    ("[metrics.test_elbo]\ntolerance = 1\nrecompute = true\n",
     r"the grader can compute iwae_log_likelihood from the weights, not test_elbo"),
    ("[limits]\ntime = 5\n", r"\[limits\] unknown key time"),
    ("[limits]\nmemory_mb = 0\n", r"memory_mb must be a positive number"),
    ("[parameters_none]\nnames = ['n-train']\n", r"'n-train' is not a record name"),
    ("[spec]\nLatent = 2\n", r"'Latent' is not a spec key"),
    ("[records\n", r"is not valid TOML"),
    ("[hidden]\ntasks = ['2b']\n", r"\[hidden\] tasks: '2b' is not a task the hidden tests run"),
    ("[hidden]\ntime_limit = 0\n", r"\[hidden\] time_limit must be a positive number"),
    ("[hidden]\nseed = 1\n", r"\[hidden\] unknown key seed"),
    ("[hidden.forbidden.3a]\ncalls = []\n", r"\[hidden.forbidden.3a\] is not a task"),
    ("[hidden.forbidden.1c]\ncalls = ['tfd.kl_divergence']\n",
     r"calls must be a list of function or method names"),
    ("[hidden.forbidden.1c]\ncall = ['kl_divergence']\n", r"with the keys calls and why"),
])
def test_a_bad_rubric_names_the_table_and_the_key(tmp_path, text, message):
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    with pytest.raises(rubric.RubricError, match=message):
        rubric.load(path)


def test_the_shipped_rubric_runs_every_hidden_task_and_forbids_what_each_derives():
    hidden = rubric.load().hidden
    assert hidden["tasks"] == rubric.HIDDEN_TASKS and hidden["time_limit"] > 0
    assert "1a" not in hidden["forbidden"]
    assert "kl_divergence" in hidden["forbidden"]["1c"]["calls"]
    assert "sample" in hidden["forbidden"]["1d"]["calls"]
    assert {"sample", "kl_divergence"} <= set(hidden["forbidden"]["4a"]["calls"])
    assert all(rule["why"] for rule in hidden["forbidden"].values())


def test_without_a_hidden_table_no_hidden_tests_run(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[limits]\ntime_limit = 60\n")
    assert rubric.load(path).hidden == {"tasks": (), "time_limit": rubric.HIDDEN_TIME_LIMIT,
                                        "forbidden": {}}


def test_a_missing_rubric(tmp_path):
    with pytest.raises(rubric.RubricError, match="cannot read the rubric .*nope.toml"):
        rubric.load(tmp_path / "nope.toml")


def test_a_partial_rubric_keeps_the_default_limits(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[limits]\ntime_limit = 60\n[parameters]\nepochs = 2\n")
    found = rubric.load(path)
    assert found.limits == {**rubric.LIMITS, "time_limit": 60}
    assert found.parameters == {"epochs": 2} and found.required == ()
