"""Tests of the points in the grade report, the gradebook (grades.csv), Gradescope's
results.json and the Gradescope autograder, on checks built in memory."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests.test_checks import homework
from vae_helpers.grading import checks, gradebook, report, rubric
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
