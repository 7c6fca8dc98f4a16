"""Tests of vae_helpers.course.notebook: Colab links, run directories, version and numeric
checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vae_helpers.course import notebook

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_colab_url_points_at_the_notebook_in_the_repository():
    assert notebook.colab_url("01_math.ipynb") == (
        "https://colab.research.google.com/github/vae-helpers/vae-course/blob/main/"
        "notebooks/01_math.ipynb")
    assert notebook.colab_url("03_train.ipynb", ref="v2.0", repository="me/course",
                              path="handouts/") == (
        "https://colab.research.google.com/github/me/course/blob/v2.0/handouts/03_train.ipynb")


def test_the_install_spec_pins_the_repository_at_the_ref():
    assert notebook.install_spec() == "vae_helpers @ git+https://github.com/vae-helpers/" \
        "vae-course@main"
    assert notebook.install_spec("v2.0", "me/course") == \
        "vae_helpers @ git+https://github.com/me/course@v2.0"


def test_repository_is_the_one_pyproject_names():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'Repository = "https://github.com/{notebook.REPOSITORY}"' in text


def test_project_root_is_found_from_inside_and_not_from_outside(tmp_path):
    assert notebook.project_root(ROOT / "notebooks") == ROOT
    assert notebook.project_root(tmp_path) is None


def test_relative_run_dirs_resolve_against_the_checkout(monkeypatch):
    monkeypatch.delenv(notebook.RUNS_ROOT_ENV, raising=False)
    monkeypatch.chdir(ROOT / "notebooks")
    assert notebook.resolve_run_dir("runs/homework") == ROOT / "runs" / "homework"
    assert notebook.display_path(ROOT / "runs" / "homework") == "runs/homework"


def test_outside_a_checkout_relative_run_dirs_resolve_against_the_working_directory(
        monkeypatch, tmp_path):
    monkeypatch.delenv(notebook.RUNS_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert notebook.resolve_run_dir("runs/x") == tmp_path.resolve() / "runs" / "x"
    assert notebook.display_path(tmp_path / "a") == str((tmp_path / "a").resolve())


def test_runs_root_variable_and_absolute_paths(monkeypatch, tmp_path):
    monkeypatch.setenv(notebook.RUNS_ROOT_ENV, str(tmp_path))
    assert notebook.resolve_run_dir("runs/x") == tmp_path.resolve() / "runs" / "x"
    assert notebook.resolve_run_dir(tmp_path / "abs") == tmp_path / "abs"
    # printed the same way as without the variable: relative to where it resolved from
    assert notebook.display_path(notebook.resolve_run_dir("runs/x")) == "runs/x"


def test_check_close_prints_a_stable_verdict(capsys):
    assert notebook.check_close("kl", 1.0004, 1.0, atol=1e-3)
    assert not notebook.check_close("kl", [1.0, 2.0], [1.0, 2.1], rtol=1e-3)
    assert not notebook.check_close("nan", float("nan"), 0.0, atol=1.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["PASS  kl: within 0.001", "FAIL  kl: within 0.001·|ref|",
                     "FAIL  nan: within 1"]


def test_check_close_verbose_adds_the_difference_and_rejects_mismatched_shapes(capsys):
    notebook.check_close("x", [1.0, 2.0], [1.0, 2.5], atol=1.0, verbose=True)
    assert "largest difference 0.5" in capsys.readouterr().out
    with pytest.raises(ValueError, match="shapes differ"):
        notebook.check_close("x", [1.0, 2.0], [1.0, 2.0, 3.0], atol=1.0)


def test_tested_versions_are_the_pinned_ones():
    pins = dict(re.findall(r"^([a-z_-]+)==([\d.]+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert pins["tensorflow"].startswith(notebook.TESTED_VERSIONS["tensorflow"] + ".")
    assert pins["tensorflow-probability"].startswith(
        notebook.TESTED_VERSIONS["tensorflow_probability"] + ".")


def test_check_versions_reports_the_pair_and_warns_for_another(monkeypatch, capsys):
    assert notebook.check_versions() is None
    assert "(the tested pair)" in capsys.readouterr().out
    found = notebook.versions()
    monkeypatch.setattr(notebook, "versions",
                        lambda: {**found, "tensorflow": "2.99.0"})
    with pytest.warns(UserWarning, match="tested with tensorflow 2.21.x"):
        notebook.check_versions()
    assert "NOT the tested pair" in capsys.readouterr().out


def test_check_rejects_passes_only_when_the_check_fails(capsys):
    assert notebook.check_rejects("off by 10%", 1.1, 1.0, rtol=0.01) is None
    assert notebook.check_rejects("equal", 1.0, 1.0, rtol=0.01) is None
    assert capsys.readouterr().out.splitlines() == [
        "PASS  off by 10%: rejected by the same test",
        "FAIL  equal: rejected by the same test",
    ]


def test_mean_and_se_is_the_sample_mean_and_its_standard_error():
    import numpy as np

    samples = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    mean, se = notebook.mean_and_se(samples)
    np.testing.assert_allclose(mean, [3.0, 6.0])
    np.testing.assert_allclose(se, [2.0 / np.sqrt(3), 4.0 / np.sqrt(3)])   # std (ddof 1) / √n


def test_check_prints_a_verdict_for_a_condition(capsys):
    assert notebook.check("p-value above 0.001", 0.3 > 1e-3) is None
    notebook.check("rejected", False)
    assert capsys.readouterr().out.splitlines() == ["PASS  p-value above 0.001",
                                                    "FAIL  rejected"]


def test_homework_run_reads_03s_run_or_trains_a_stand_in(tmp_path, monkeypatch, capsys):
    from vae_helpers import runs

    calls = []
    monkeypatch.setattr(runs, "train_run", lambda out, **kw: calls.append((out, kw)))
    folder, source = notebook.homework_run(tmp_path, fallback_epochs=3, seed=7)
    assert folder == tmp_path / "homework_stand_in" and source == "a 3-epoch stand-in"
    assert calls == [(folder, dict(epochs=3, seed=7, iwae_k=100, resume=True,
                                   command="notebook (stand-in)"))]
    assert "03_train's run is missing" in capsys.readouterr().out
    (tmp_path / "homework").mkdir()
    (tmp_path / "homework" / "metrics.json").write_text("{}")
    assert notebook.homework_run(tmp_path, fallback_epochs=3) == (tmp_path / "homework",
                                                                   "03_train")
    assert len(calls) == 1
