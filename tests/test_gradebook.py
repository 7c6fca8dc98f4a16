"""Tests of the points in the grade report, the gradebook (grades.csv), Gradescope's
results.json and the Gradescope autograder, on checks built in memory."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests.test_checks import homework
from vae_helpers.grading import checks, gradebook, report, rubric, sandbox
from vae_helpers.grading.recorded import Records

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def shipped():
    return rubric.load()


def grade_of(found, chosen, student="ann", seconds=12.3):
    """What grade.json holds, for the parts the exports read."""
    summary = checks.summary(found, chosen)
    return {"format": "vae_helpers.grade/2", "student": student, "summary": summary,
            "checks": [c.to_dict() for c in found], "timings": {"total_seconds": seconds},
            "sandbox": {"kind": "none", "note": ""}, "notebooks": []}


def test_the_report_nests_each_failure_under_the_one_that_caused_it(shipped):
    nothing = Records(Path("run"), {}, {"": "no records.json: nothing was recorded"})
    found = checks.run_checks(shipped, homework(), nothing, ["a.ipynb: stopped"])
    grade = grade_of(found, shipped)
    section = report._checks(found)
    rows = re.findall(r"<tr class=\"[^\"]*\">.*?</tr>", section)
    names = [re.search(r"<code>([^<]+)</code>", r).group(1) for r in rows]
    assert names[0] == "execution"  # the one root failure, first
    dependents = [r for r in rows if "also failed, because" in r]
    assert len(dependents) == sum(not c.passed for c in found) - 1
    assert "also failed, because <code>record.test_elbo</code>" in next(
        r for r in rows if "<code>metric.test_elbo</code>" in r)
    execution = next(c for c in found if c.name == "execution")
    assert f"0 / {execution.max_points:g}" in rows[0]
    header = report._grade_header(grade)
    assert f"0 / {grade['summary']['max_score']:g}" in header
    manual = report._manual(grade["summary"])
    assert f"{shipped.manual_max:g} points still open" in manual
    assert all(report.esc(m["title"]) in manual for m in shipped.manual)


def test_a_report_of_passed_checks_has_no_nesting(shipped):
    found = checks.run_checks(shipped, homework(), homework(), [])
    section = report._checks(found)
    assert "also failed" not in section and section.count("<tr class=") == len(found)


def test_grades_csv_has_the_rubrics_columns_for_every_student(shipped, tmp_path):
    good = grade_of(checks.run_checks(shipped, homework(), homework(), []), shipped)
    off = grade_of(checks.run_checks(shipped, homework(), homework(test_elbo=0.0,
                                                                   drop=["latent_scatter"]),
                                     []), shipped, "bob")
    rows = [gradebook.grade_row("ann", good, shipped), gradebook.grade_row("bob", off, shipped),
            gradebook.grade_row("cat", None, shipped)]
    gradebook.write_grades(tmp_path / "grades.csv", rows, shipped)
    with open(tmp_path / "grades.csv", newline="") as f:
        table = list(csv.reader(f))
    header = table[0]
    assert header[:3] == ["student", "score", "max_score"]
    assert header[3:] == shipped.columns()  # the same for every student, from the rubric
    assert header.index("execution") < header.index("metric.test_elbo") < header.index(
        "hidden.1a")  # the rubric's own checks first, then the others it names
    ann, bob, cat = ({h: v for h, v in zip(header, row, strict=True)} for row in table[1:])
    produced = {c["name"] for c in good["checks"]}
    for row, grade in ((ann, good), (bob, off)):
        points = {c["name"]: c["points"] for c in grade["checks"]}
        assert float(row["score"]) == grade["summary"]["score"] == sum(
            float(row[n]) for n in header[3:] if row[n] != "")
        assert all(float(row[n]) == points[n] for n in header[3:] if n in produced)
        assert all(row[n] == "" for n in header[3:] if n not in produced)  # not made here
    assert bob["metric.test_elbo"] == "0" and ann["metric.test_elbo"] == str(
        shipped.points["metric.test_elbo"])
    assert bob["grid.real_10x10"] == str(shipped.points["grid.*"])
    assert bob["record.latent_scatter"] == "0"
    assert set(cat.values()) == {"cat", ""}  # not graded: no points at all
    assert "record.history" not in header  # informational: worth nothing, no column
    gradebook.write_grades(tmp_path / "empty.csv", [], shipped)
    assert (tmp_path / "empty.csv").read_text().strip().split(",") == header


def test_results_json_follows_gradescopes_format(shipped):
    nothing = Records(Path("run"), {}, {"": "no records.json: nothing was recorded"})
    found = checks.run_checks(shipped, homework(), nothing, ["a.ipynb: stopped"])
    grade = grade_of(found, shipped, seconds=61.6)
    results = gradebook.results_json(grade)
    check_results_format(results)
    assert results["score"] == 0 and results["execution_time"] == 62
    assert [t["name"] for t in results["tests"]] == [c.name for c in found]
    metric = next(t for t in results["tests"] if t["name"] == "metric.test_elbo")
    assert metric == {"name": "metric.test_elbo", "score": 0,
                      "max_score": shipped.points["metric.test_elbo"], "status": "failed",
                      "output": "Also failed, because record.test_elbo failed. no metric "
                                "test_elbo to compare (no records.json: nothing was recorded)",
                      "visibility": "visible"}
    assert f"Graded by hand later ({shipped.manual_max:g} points)" in results["output"]
    passed = gradebook.results_json(grade_of(checks.run_checks(shipped, homework(),
                                                               homework(), []), shipped))
    assert passed["score"] == sum(t["max_score"] for t in passed["tests"]) > 0
    assert {t["status"] for t in passed["tests"]} == {"passed"}


VISIBILITIES = {"hidden", "after_due_date", "after_published", "visible"}


def check_results_format(results: dict) -> None:
    """``results`` follows Gradescope's autograder output format: the keys it knows, of the
    types it reads, and a score on the top level or on every test."""
    known = {"score", "execution_time", "output", "output_format", "test_output_format",
             "test_name_format", "visibility", "stdout_visibility", "extra_data", "tests",
             "leaderboard"}
    assert set(results) <= known, set(results) - known
    number = (int, float)
    assert isinstance(results["score"], number) and not isinstance(results["score"], bool)
    assert isinstance(results["execution_time"], int) and results["execution_time"] >= 0
    assert isinstance(results["output"], str)
    assert results["output_format"] in ("text", "html", "simple_format", "md", "ansi")
    assert results["visibility"] in VISIBILITIES
    assert results["stdout_visibility"] in VISIBILITIES
    for test in results["tests"]:
        assert set(test) <= {"score", "max_score", "status", "name", "name_format", "number",
                             "output", "output_format", "tags", "visibility", "extra_data"}
        assert isinstance(test["name"], str) and isinstance(test["output"], str)
        assert isinstance(test["score"], number) and isinstance(test["max_score"], number)
        assert 0 <= test["score"] <= test["max_score"]
        assert test["status"] in ("passed", "failed")
        assert test["visibility"] in VISIBILITIES
    assert results["score"] == sum(t["score"] for t in results["tests"])


AUTOGRADER_RUBRIC = '''
[records]
required = ["test_elbo", "iwae_log_likelihood"]
informational = ["history"]

[metrics.test_elbo]
tolerance = 1.0

[metrics.iwae_log_likelihood]
tolerance = 1.0

[points]
execution = 2
"static.no_premade_vae" = 1
"record.*" = 1
"metric.*" = 3

[depends]
"metric.*" = ["record.*", "execution"]

[manual.why]
notebook = "04_analysis"
title = "Why the samples are blurry"
points = 4

[limits]
time_limit = 120
'''


def test_the_gradescope_autograder_runs_on_a_folder_of_gradescopes_layout(tmp_path, capsys):
    """Build the autograder with the command, unpack its zip as Gradescope does, and run
    run_autograder on a submission that records one of the two metrics."""
    import json
    import os
    import subprocess
    import sys
    import zipfile

    from nbformat import write
    from nbformat.v4 import new_code_cell, new_notebook

    from vae_helpers.__main__ import main
    from vae_helpers.course import record

    reference = tmp_path / "reference"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(record.RECORD_DIR_ENV, raising=False)
        patch.setattr(record, "_state", {})
        record.set_run_dir(reference)
        record.metric("test_elbo", 140.0, n_test=10)
        record.metric("iwae_log_likelihood", 150.0, k=16)
    (tmp_path / "rubric.toml").write_text(AUTOGRADER_RUBRIC)
    (tmp_path / "mnist.npz").write_bytes(b"stand-in: the submission does not read it")
    command = ["gradescope", "--reference", str(reference), "--out", str(tmp_path / "built"),
               "--rubric", str(tmp_path / "rubric.toml"), "--data", str(tmp_path / "mnist.npz")]
    assert main(command) == 0
    assert "autograder.zip" in capsys.readouterr().out
    assert main(command) == 1  # an --out that holds files needs --force
    assert "--force" in capsys.readouterr().err

    root = tmp_path / "autograder"  # Gradescope's /autograder
    with zipfile.ZipFile(tmp_path / "built" / "autograder.zip") as archive:
        names = set(archive.namelist())
        assert {"setup.sh", "run_autograder", "rubric.toml", "reference/records.json",
                "data/mnist.npz", "package/pyproject.toml", "package/requirements.txt",
                "package/vae_helpers/grading/gradescope/__init__.py"} <= names
        assert not any("__pycache__" in n for n in names)
        mode = archive.getinfo("run_autograder").external_attr >> 16
        assert mode & 0o111  # executable once unpacked
        archive.extractall(root / "source")
    source = root / "source"
    assert (source / "data" / "mnist.npz").read_bytes() == (tmp_path / "mnist.npz").read_bytes()
    for script in ("setup.sh", "run_autograder"):
        subprocess.run(["bash", "-n", str(source / script)], check=True)
    (root / "submission").mkdir()
    write(new_notebook(cells=[new_code_cell(
        "from vae_helpers.course import record\nrecord.metric('test_elbo', 140.5, n_test=10)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}}), root / "submission" / "hw.ipynb")
    env = {"PATH": os.environ["PATH"], "AUTOGRADER_ROOT": str(root),
           "AUTOGRADER_PYTHON": sys.executable,
           "AUTOGRADER_SANDBOX": "require" if sandbox.detect().isolated else "off"}
    done = subprocess.run(["bash", str(source / "run_autograder")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    check_results_format(results)
    tests = {t["name"]: t for t in results["tests"]}
    assert {n: (t["status"], t["score"], t["max_score"]) for n, t in tests.items()} == {
        "execution": ("passed", 2, 2), "record.test_elbo": ("passed", 1, 1),
        "record.iwae_log_likelihood": ("failed", 0, 1), "record.history": ("failed", 0, 0),
        "metric.test_elbo": ("passed", 3, 3), "metric.iwae_log_likelihood": ("failed", 0, 3),
        "static.no_premade_vae": ("passed", 1, 1)}
    assert results["score"] == 7
    assert tests["metric.iwae_log_likelihood"]["output"].startswith(
        "Also failed, because record.iwae_log_likelihood failed.")
    assert "Graded by hand later (4 points): Why the samples are blurry" in results["output"]
    grade = json.loads((root / "grade" / "grade.json").read_text())
    assert grade["summary"]["max_score"] == 11 and grade["summary"]["manual_max"] == 4

    (source / "rubric.toml").unlink()  # a broken autograder: an error, and no results
    (root / "results" / "results.json").unlink()
    broken = subprocess.run(["bash", str(source / "run_autograder")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and "cannot read the rubric" in broken.stderr
    assert broken.stderr.count("\n") == 1 and not (root / "results" / "results.json").exists()
