"""Grading a folder of submissions in parallel, on this machine or on a dask cluster.

``python -m vae_helpers grade --batch SUBMISSIONS --reference RUN --out DIR``
calls ``grade_batch``. Every ``.ipynb`` file and every sub-folder of
``SUBMISSIONS`` is one student, graded by ``grader.grade`` into ``DIR/NAME/``
(other files are listed and left alone). The grades run ``jobs`` at a time in a
local process pool, or, with ``scheduler``, as tasks of an existing
``dask.distributed`` cluster (whose workers must see the same paths and have the
same environment). Each submission is hidden from the others' sandboxes.

``DIR/summary.csv`` and ``DIR/summary.html`` list one row per student (verdict,
points scored of the maximum, required checks passed, failed checks, the first one's
reason, seconds, link to the report); they are rewritten as grades complete, so an
interrupted batch leaves a summary of what it did. ``DIR/grades.csv`` is the
gradebook: one row per student with the points of each check, for a learning
management system (``vae_helpers.grading.gradebook``, which also writes
Gradescope's ``results.json`` beside each ``grade.json``); it is rewritten with
the summary. Run again, a batch keeps every
grade whose ``grade.json`` has the current format and matches the submission, the
rubric and the reference (their SHA-256) and grades the rest; ``force`` grades
everything again.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from vae_helpers import io
from vae_helpers.course.execution import first_line
from vae_helpers.grading import gradebook, grader, report
from vae_helpers.grading import rubric as rubric_lib
from vae_helpers.grading import sandbox as sandbox_lib
from vae_helpers.outdirs import claim, run_lock

BATCH_FILE = "batch.json"
DASK_CONNECT_TIMEOUT = "20s"
SUMMARY_FIELDS = ("student", "status", "score", "max_score", "checks", "failed", "reason",
                  "seconds", "report")


class BatchError(RuntimeError):
    """The batch cannot start: no submissions, clashing names, an output directory in use."""


def find_submissions(folder) -> tuple[list[tuple[str, Path]], list[str]]:
    """``(student, path)`` for each ``.ipynb`` file and sub-folder, and the names of the
    other entries (ignored). Hidden entries are skipped.

    Raises:
        BatchError: the folder does not exist, or two submissions share a student name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BatchError(f"{folder} is not a folder of submissions")
    found, ignored, seen = [], [], {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in grader.SKIP:
            continue
        if not (path.is_dir() or path.suffix == ".ipynb"):
            ignored.append(path.name)
            continue
        student = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.name)
        if student in (BATCH_FILE, "summary.csv", "summary.html", gradebook.GRADES_FILE):
            raise BatchError(f"{path.name} would be graded into {student}/, a name the batch "
                             "uses for itself; rename it")
        if student in seen:
            raise BatchError(f"{seen[student]} and {path.name} would both be graded as "
                             f"{student!r}; rename one of them")
        seen[student] = path.name
        found.append((student, path))
    return found, ignored


def grade_batch(submissions, reference, out, rubric=None, data=None, jobs: int = 1,
                scheduler: str | None = None, sandbox="require", force: bool = False,
                log=print) -> list[dict]:
    """Grade every submission of a folder; return the summary rows.

    ``sandbox`` is as for ``grader.grade``: ``require`` (the default) or ``off``, or a
    ``sandbox.Sandbox``; with ``off`` the batch says once that nothing is isolated.

    Raises:
        BatchError, grader.GradingError: the batch cannot start.
        sandbox.SandboxError: the sandbox is required but bubblewrap does not work here.
        outdirs.RunLocked: another batch runs into ``out``.
    """
    given = Path(out)  # as the user wrote it, for messages
    submissions, out = Path(submissions).absolute(), given.absolute()
    rubric = rubric or rubric_lib.load()
    students, ignored = find_submissions(submissions)
    if not students:
        raise BatchError(f"{submissions} holds no .ipynb file and no folder to grade")
    grader.load_reference(reference, rubric)
    data = grader.data_path(data)
    reference = Path(reference).absolute()
    if out == submissions or out.is_relative_to(submissions) or submissions.is_relative_to(out):
        raise BatchError(f"--out {given} overlaps the submissions folder; choose another")
    box = sandbox if isinstance(sandbox, sandbox_lib.Sandbox) else sandbox_lib.probe(sandbox)
    if box.warning():
        log(box.warning())
    if ignored:
        log(f"ignored (neither a notebook nor a folder): {', '.join(ignored)}")
    with run_lock(out):
        # an earlier batch is continued; anything else is replaced only with force
        claim(out, force=force, keep=(out / BATCH_FILE).exists() and not force,
              refuse=BatchError(f"{given} holds files that are not a batch of grades; choose "
                                "another --out, or pass --force to replace them"))
        io.write_json(out / BATCH_FILE, {"submissions": str(submissions),
                                         "reference": str(reference),
                                         "rubric": {"path": rubric.path,
                                                    "sha256": rubric.sha256}})
        reference_hash = grader.reference_hash(reference)
        rows, pending = {}, []
        for student, path in students:
            kept = None if force else _kept(out / student, path, rubric, reference_hash)
            if kept is not None:
                rows[student] = kept
                log(f"{student}: graded before ({kept['status']}, {kept['score']:g} of "
                    f"{kept['max_score']:g} points), kept")
            else:
                pending.append((student, path))
        _write_summary(out, rows, rubric)
        jobs_args = [(student, path, reference, out, rubric, data, box, [submissions, out])
                     for student, path in pending]
        for number, row in enumerate(_run(jobs_args, jobs, scheduler), 1):
            rows[row["student"]] = row
            log(f"[{number}/{len(pending)}] {row['student']}: {row['status']}"
                + (f" {row['score']:g}/{row['max_score']:g}" if row["score"] != "" else "")
                + (f" ({row['reason']})" if row["reason"] else ""))
            _write_summary(out, rows, rubric)
        return [{k: v for k, v in rows[s].items() if k != "grade"} for s in sorted(rows)]


def _kept(folder: Path, path: Path, rubric, reference_hash: str) -> dict | None:
    """The summary row of an earlier grade of the same submission, rubric and reference."""
    try:
        earlier = io.read_json(folder / grader.GRADE_FILE)
        same = (earlier["format"] == grader.FORMAT
                and earlier["submission"]["sha256"] == grader.submission_hash(path)
                and earlier["rubric"]["sha256"] == rubric.sha256
                and earlier["reference"]["sha256"] == reference_hash)
        return _row(folder.name, earlier) if same else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _row(student: str, result: dict) -> dict:
    """A summary row: verdict, points, checks passed, failed checks and the reason of the
    first that counts."""
    summary = result["summary"]
    first = next((c for c in result["checks"] if c["required"] and not c["passed"]), None)
    return {"student": student, "status": "PASS" if summary["passed"] else "FAIL",
            "score": summary["score"], "max_score": summary["max_score"],
            "checks": f"{summary['required_passed']}/{summary['required']}",
            "failed": "; ".join(summary["failed"]),
            "reason": f"{first['name']}: {first['reason']}" if first else "",
            "seconds": result["timings"]["total_seconds"], "report": f"{student}/report.html",
            "grade": {"summary": summary, "checks": result["checks"]}}


def grade_one(student, path, reference, out, rubric, data, box, hide) -> dict:
    """Grade one student of a batch (in a worker); a summary row, never an exception."""
    started = time.perf_counter()
    try:
        if box.isolated:
            sandbox_lib.probe("require")  # this worker's machine must sandbox as well
        result = grader.grade(path, reference, Path(out) / student, rubric=rubric, data=data,
                               sandbox=box, force=True, name=student, hide=hide)
        return _row(student, result)
    except Exception as err:
        return {"student": student, "status": "ERROR", "score": "", "max_score": "",
                "checks": "", "failed": "", "reason": f"not graded: {type(err).__name__}: "
                                      f"{first_line(str(err))}",
                "seconds": round(time.perf_counter() - started, 1), "report": ""}


def _run(jobs_args: list, jobs: int, scheduler: str | None):
    """Yield the summary rows as the grades complete."""
    if not jobs_args:
        return
    if scheduler:
        yield from _run_dask(jobs_args, scheduler)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
        futures = {pool.submit(grade_one, *args): args[0] for args in jobs_args}
        try:
            for future in as_completed(futures):
                yield _result(future, futures[future])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _run_dask(jobs_args: list, scheduler: str):
    try:
        from distributed import Client, as_completed
    except ImportError as err:
        raise BatchError("--dask-scheduler needs the packages dask and distributed "
                         "(pip install -r requirements.txt)") from err
    try:
        client = Client(scheduler, timeout=DASK_CONNECT_TIMEOUT)
    except OSError as err:
        raise BatchError(f"cannot reach the dask scheduler at {scheduler}: "
                         f"{first_line(str(err))}") from None
    with client:
        futures = {client.submit(grade_one, *args, pure=False, key=f"grade-{args[0]}-"
                                 f"{time.time_ns()}"): args[0] for args in jobs_args}
        for future in as_completed(futures):
            yield _result(future, futures[future])


def _result(future, student: str) -> dict:
    try:
        return future.result()
    except Exception as err:  # the worker died, or the task could not run there
        return {"student": student, "status": "ERROR", "score": "", "max_score": "",
                "checks": "", "failed": "", "reason": f"not graded: {type(err).__name__}: "
                                      f"{first_line(str(err))}",
                "seconds": None, "report": ""}


def _write_summary(out: Path, rows: dict, rubric) -> None:
    ordered = [rows[s] for s in sorted(rows)]
    gradebook.write_grades(out / gradebook.GRADES_FILE,
                           [gradebook.grade_row(r["student"], r.get("grade"), rubric)
                            for r in ordered], rubric)
    if ordered:
        io.write_csv(out / "summary.csv", [{k: r.get(k) for k in SUMMARY_FIELDS}
                                           for r in ordered])
    else:
        io.atomic_write_text(out / "summary.csv", ",".join(SUMMARY_FIELDS) + "\n")
    io.atomic_write_text(out / "summary.html", report.render_summary(
        f"Grades: {len(ordered)} submission{'s' * (len(ordered) != 1)}", ordered))
