"""Grades for a gradebook: ``grades.csv`` for a learning management system, and
Gradescope's ``results.json`` for each submission.

``grades.csv`` (``write_grades``) has one row per student, shaped like the grade
exports of otter-grader and nbgrader (an identifier first, the total and the
maximum, then one column per graded part): ``student``, ``score``, ``max_score``
(the automatic points), then one column per check worth points, named as in
``grade.json`` and ordered as ``Rubric.columns`` gives them (the rubric's own
checks in the order of the grade, then the other checks its ``[points]`` names).
The columns come from the rubric, not from the grades, so every row has the same
ones. A cell holds the points the check earned (0 when it failed); it is empty
when the grade has no such check (a check this version of the grader does not
make) and, with ``score`` and ``max_score``, when the submission could not be
graded. The items graded by hand are not in it: their points come from whoever
grades them.

``results_json(grade)`` is what Gradescope's autograder reads from
``/autograder/results/results.json``: the top-level ``score`` (the automatic
points; it overrides the sum of the tests), ``execution_time`` (seconds),
``output`` (the verdict and the answers still to be graded by hand, which are not
tests there), ``output_format`` and ``visibility``, and one test per check with its
``name``, ``score``, ``max_score``, ``status`` (``passed`` or ``failed``) and
``output`` (the reason; for a failure caused by another, which one).
"""

from __future__ import annotations

from pathlib import Path

from vae_helpers import io

GRADES_FILE = "grades.csv"
RESULTS_FILE = "results.json"
#: when Gradescope shows the tests and their outputs to the student
VISIBILITY = "visible"


def columns(rubric) -> list[str]:
    """The header of ``grades.csv`` for ``rubric``."""
    return ["student", "score", "max_score", *rubric.columns()]


def grade_row(student: str, grade: dict | None, rubric) -> dict:
    """One row of ``grades.csv``: ``grade`` is what ``grade.json`` holds, or ``None`` for a
    submission that could not be graded (every cell but the student empty)."""
    row = dict.fromkeys(columns(rubric), "")
    row["student"] = student
    if grade is None:
        return row
    row["score"], row["max_score"] = grade["summary"]["score"], grade["summary"]["max_score"]
    for check in grade["checks"]:
        if check["name"] in row and check["name"] not in ("student", "score", "max_score") \
                and check.get("points") is not None:
            row[check["name"]] = check["points"]
    return row


def write_grades(path, rows: list[dict], rubric) -> Path:
    """Write ``grades.csv`` (atomically) from rows made by ``grade_row``."""
    if rows:
        return io.write_csv(path, rows)
    return io.atomic_write_text(path, ",".join(columns(rubric)) + "\n")


def results_json(grade: dict) -> dict:
    """Gradescope's ``results.json`` for one grade (what ``grade.json`` holds)."""
    summary = grade["summary"]
    lines = [f"{'PASS' if summary['passed'] else 'FAIL'}: {summary['required_passed']} of "
             f"{summary['required']} required checks passed, {summary['score']:g} of "
             f"{summary['max_score']:g} automatic points."]
    if summary["manual"]:
        lines.append(f"Graded by hand later ({summary['manual_max']:g} points): " + "; ".join(
            f"{m['title']} ({m['notebook']}, {m['points']:g})" for m in summary["manual"]) + ".")
    if summary.get("unscored"):
        lines.append("Checks the rubric gives no points: " + ", ".join(summary["unscored"]))
    tests = []
    for check in grade["checks"]:
        output = check["reason"]
        if check.get("caused_by"):
            output = f"Also failed, because {check['caused_by']} failed. {output}"
        tests.append({"name": check["name"], "score": check.get("points") or 0,
                      "max_score": check.get("max_points") or 0,
                      "status": "passed" if check["passed"] else "failed",
                      "output": output, "visibility": VISIBILITY})
    return {"score": summary["score"],
            "execution_time": round(grade["timings"]["total_seconds"]),
            "output": "\n".join(lines), "output_format": "text",
            "visibility": VISIBILITY, "stdout_visibility": "hidden", "tests": tests}


def write_results(path, grade: dict) -> Path:
    """Write Gradescope's ``results.json`` for ``grade`` (atomically)."""
    return io.write_json(path, results_json(grade))
