"""Tests of the points in the grade report, the gradebook (grades.csv), Gradescope's
results.json and the Gradescope autograder, on checks built in memory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_checks import homework
from vae_helpers.grading import checks, report, rubric
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
