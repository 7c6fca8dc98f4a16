"""Tests of vae_helpers.grading.rubric: the shipped rubric and the errors of a bad one."""

from __future__ import annotations

import hashlib
import re
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
    # three standard deviations over the seeds of benchmarks/seed_spread.py, as its
    # measured results (benchmarks/README.md) record them
    measured = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    section = measured.split("## `seed_spread.py`", 1)[1]
    seeds = re.findall(r"^\| (\d+) \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", section, re.M)
    row = re.search(r"^\| mean ± sd \| \| [\d.]+ ± ([\d.]+) \| \| [\d.]+ ± ([\d.]+) \|$",
                    section, re.M)
    assert len(seeds) >= 3 and row
    for name, sd in zip(("test_elbo", "iwae_log_likelihood"), row.groups(), strict=True):
        rule = found.metrics[name]
        assert rule["tolerance"] == pytest.approx(3 * float(sd), abs=0.06)  # sd to 0.01
        assert sd in rule["tolerance_source"]
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


def test_the_shipped_rubric_gives_every_check_points_with_exact_names_first():
    found = rubric.load()
    assert found.max_points("grid.manifold_20x20") == found.points["grid.*"]
    assert found.max_points("metric.test_elbo") == found.points["metric.test_elbo"]
    assert found.max_points("record.history", required=False) == 0
    assert found.max_points("nothing.here") is None
    assert all(found.max_points(n) for n, counts in found.own_checks() if counts)
    for name in ("hidden.1a", "hidden.1b", "hidden.1c", "hidden.1d", "hidden.2a", "hidden.4a",
                 "static.no_premade_vae", "reported.test_elbo"):  # checks made outside
        assert found.max_points(name) > 0 and name in found.columns()
    assert sum(found.max_points(n) for n in found.columns()) == sum(
        found.points[k] * (sum(n.startswith(k[:-1]) for n, c in found.own_checks() if c)
                           if k.endswith(".*") else 1) for k in found.points)
    assert found.prerequisites("grid.real_10x10") == ("hidden.2a", "record.real_10x10",
                                                      "execution")
    assert found.prerequisites("spec.latent_dim")[1] == "record.weights"
    assert found.prerequisites("hidden.1a") == ()


def test_the_manual_items_are_the_prose_answers_of_the_notebooks():
    """One item per markdown answer of the answer key: a cell tagged solution, or a marked
    region in a markdown cell."""
    import nbformat

    from vae_helpers.course import pipeline, student

    answers = {}
    for name in ("01_math", "02_build", "03_train", "04_analysis", "05_discussion"):
        nb = nbformat.read(pipeline.notebook_dir() / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                tagged = "solution" in cell.metadata.get("tags", [])
                regions = student.strip_solutions(cell.source, markdown=True)[1]
                answers[name] = answers.get(name, 0) + (1 if tagged else regions)
    items = rubric.load().manual
    listed = {n: sum(m["notebook"] == n for m in items) for n in answers}
    assert listed == answers and sum(answers.values()) == 6
    assert all(m["points"] > 0 and m["title"] for m in items)
    assert rubric.load().manual_max == sum(m["points"] for m in items)


@pytest.mark.parametrize("text, message", [
    ("[points]\n'grid.*.x' = 1\n", r"'grid.\*.x' is neither a check name"),
    ("[points]\nexecution = -1\n", r"\[points\] execution must be a number >= 0, got -1"),
    ("[points]\nexecution = 'ten'\n", r"execution must be a number >= 0, got 'ten'"),
    ("[points]\nexecution = true\n", r"execution must be a number >= 0, got True"),
    ("[points]\nexecution = nan\n", r"execution must be a number >= 0, got nan"),
    ("[records]\nrequired = ['test_elbo']\n[points]\nexecution = 1\n",
     r'\[points\] no points for the check record.test_elbo: give it, or its family "record.\*"'),
    ("[records]\ninformational = ['history']\n[points]\nexecution = 1\n'record.history' = 2\n"
     "'static.no_premade_vae' = 1\n",
     r"record.history is informational \(it does not count\), so it is worth 0 points, not 2"),
    ("[checks]\ninformational = ['hidden.1a']\n[points]\nexecution = 1\n'hidden.1a' = 2\n"
     "'static.no_premade_vae' = 1\n",
     r"hidden.1a is informational"),
    ("[depends]\n'grid.*' = 'record.*'\n", r"\[depends\] grid.\* must be a list of check names"),
    ("[depends]\n'metric.x' = ['record.*']\n", r"'record.\*' is not a check name \(a pattern"),
    ("[depends]\nexecution = ['execution']\n", r"execution cannot depend on itself"),
    ("[manual.a]\nnotebook = '04_analysis'\ntitle = 'x'\n",
     r"\[manual.a\] points must be a number > 0, got None"),
    ("[manual.a]\nnotebook = '04_analysis'\ntitle = ''\npoints = 2\n",
     r"\[manual.a\] title must be a non-empty string"),
    ("[manual.a]\nnotebook = '04'\ntitle = 't'\npoints = 2\ncell = 3\n", r"unknown key cell"),
    ("[manual]\nA = 2\n", r"\[manual\] 'A' is not an item id"),
    ("[manual]\na = 2\n", r"\[manual.a\] must be a table with notebook, title and points"),
])
def test_a_bad_points_depends_or_manual_table_names_the_table_and_the_key(tmp_path, text,
                                                                           message):
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    with pytest.raises(rubric.RubricError, match=message):
        rubric.load(path)
