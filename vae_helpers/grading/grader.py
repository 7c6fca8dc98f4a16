"""Grading one homework submission: run it apart from the grader, check its records, report.

``python -m vae_helpers grade SUBMISSION --reference RUN --out DIR`` calls
``grade``. A submission is one ``.ipynb`` file, or a folder whose notebooks run
in name order in one working copy, sharing one run directory. ``grade``

1. copies the submission into ``DIR/work/`` (at most the rubric's
   ``submission_mb``);
2. runs each notebook there with papermill, in a child process inside the
   sandbox (``vae_helpers.grading.sandbox``), with the rubric's parameters (those the
   notebook declares), ``run_dir`` and ``$VAE_RECORD_DIR`` pointing at
   ``DIR/work/run``, ``$VAE_MNIST`` at the data, and the rubric's limits: time per
   notebook, memory, disk, outputs, file size, processes. A cell that raises is
   reported and the cells after it still run. A notebook that is stopped (time,
   memory, disk, processes) costs only its own records: the next notebooks still
   run, and fail on what they find missing;
3. reads the records back as untrusted input (``vae_helpers.grading.recorded``),
   computes the rubric's ``recompute`` metrics itself from the recorded weights
   (``vae_helpers.grading.recompute``), and runs the checks
   (``vae_helpers.grading.checks``) against the rubric and the reference run,
   with two more: ``static.no_premade_vae`` (``vae_helpers.grading.static``: the copy,
   read before anything runs, imports no pre-made VAE) and the hidden tests
   ``hidden.TASK`` (``vae_helpers.grading.hidden``: after the notebooks, the student
   module as handed in, run in the sandbox on inputs drawn from a fresh seed, which
   ``grade.json`` keeps under ``hidden``);
4. writes ``DIR/notebooks/`` (the executed notebooks), ``DIR/logs/`` (the first
   256 KB of what the processes printed), ``DIR/regenerated/`` (the graded figures
   drawn again by the grader from the recorded weights, ``recompute.regenerate``),
   ``DIR/report.html`` (the comparison with the reference, the regenerated figures
   beside the submission's, and the checks), ``DIR/results.json`` (the same for
   Gradescope, ``vae_helpers.grading.gradebook``) and, last, ``DIR/grade.json``: the
   checks (each with its ``points``, ``max_points`` and, when it failed because a check
   it depends on failed, ``caused_by``), the summary (the verdict, ``score`` and
   ``max_score`` in points, the items graded by hand still open: ``manual`` and
   ``manual_max``), the timings, the sandbox, the versions, and the hashes of the
   submission, the rubric and the reference's records.

``FORMAT`` names the layout of ``grade.json``; it changes when a field's meaning
does (version 2: ``score`` is points, no longer the fraction of required checks
passed), and a batch grades again what an older format holds.

Nothing a submission does raises in the grader: every failure becomes a failed
check with its reason. ``GradingError`` is for what stops the grader itself: a
reference without the metrics to compare, a missing data file, an output
directory that would be overwritten; ``sandbox.SandboxError`` when bubblewrap
does not work here and the sandbox was not turned off (``sandbox="off"``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from vae_helpers import io
from vae_helpers.course import execution
from vae_helpers.course.execution import first_line
from vae_helpers.grading import checks as checks_lib
from vae_helpers.grading import gradebook, recompute, recorded, report, static
from vae_helpers.grading import hidden as hidden_tests
from vae_helpers.grading import rubric as rubric_lib
from vae_helpers.grading import sandbox as sandbox_lib
from vae_helpers.grading.compare import comparison, learning_curves, shown_path
from vae_helpers.outdirs import claim, run_lock

FORMAT = "vae_helpers.grade/2"
GRADE_FILE = "grade.json"
LOG_BYTES = 256 * 2**10
SKIP = {".ipynb_checkpoints", "__pycache__", ".git"}


class GradingError(RuntimeError):
    """The grader cannot grade: bad reference, data or output directory."""


def load_reference(path, rubric) -> recorded.Records:
    """The reference run's records; it must hold every metric the rubric compares.

    Raises:
        GradingError: no readable records, or a metric missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise GradingError(f"the reference run {path} is not a directory")
    found = recorded.load(recorded.find(path))
    if recorded.FILE_PROBLEM in found.problems:
        raise GradingError(f"the reference run {path}: {found.problems[recorded.FILE_PROBLEM]}"
                           " (run the homework's notebooks into it first)")
    lacking = [m for m in rubric.metrics if found.metric(m) is None]
    if lacking:
        raise GradingError(f"the reference run {path} has no valid {', '.join(lacking)} to "
                           "compare with; run the homework's notebooks into it again")
    return found


def data_path(data=None) -> Path:
    """The MNIST file to give the submissions: ``data``, else ``$VAE_MNIST``.

    Raises:
        GradingError: neither is given, or the file does not exist.
    """
    chosen = data or os.environ.get("VAE_MNIST")
    if not chosen:
        raise GradingError("no MNIST file for the submissions: pass --data PATH or set "
                           "VAE_MNIST")
    path = Path(chosen).expanduser().resolve()
    if not path.is_file():
        raise GradingError(f"the MNIST file {chosen} does not exist")
    return path


def submission_hash(path) -> str:
    """SHA-256 of a submission: the file's bytes, or every file of a folder with its
    relative path (checkpoint folders and caches left out)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        return digest.hexdigest()
    for item in sorted(p for p in path.rglob("*") if not SKIP & set(p.relative_to(path).parts)):
        digest.update(str(item.relative_to(path)).encode() + b"\0")
        if item.is_symlink():
            digest.update(b"link:" + os.readlink(item).encode())
        elif item.is_file():
            digest.update(hashlib.sha256(item.read_bytes()).digest())
    return digest.hexdigest()


def grade(submission, reference, out, rubric=None, data=None, sandbox="require",
          force: bool = False, name: str | None = None, hide=(), log=None) -> dict:
    """Grade one submission into ``out`` and return what ``grade.json`` holds.

    Args:
        submission: an ``.ipynb`` file or a folder of notebooks.
        reference: the reference run (a directory with ``records.json``).
        out: the output directory; one that holds files is replaced only with ``force``.
        rubric: a ``Rubric`` (default: the shipped one).
        data: the MNIST file (default ``$VAE_MNIST``).
        sandbox: a ``sandbox.Sandbox``, or a mode for ``sandbox.probe``: ``require``
            (bubblewrap, else ``SandboxError``) or ``off`` (no isolation, said so in
            ``grade.json`` and the report).
        name: the student's name in the report (default: the submission's name).
        hide: more paths the submission must not see (e.g. the other submissions).
        log: called with one-line progress messages.

    Raises:
        GradingError: the reference, the data or the output directory cannot be used.
        sandbox.SandboxError: the sandbox is required but bubblewrap does not work here.
        outdirs.RunLocked: another grader works in ``out``.
    """
    given = Path(out)  # as the user wrote it, for messages
    submission, out = Path(submission).absolute(), given.absolute()
    rubric = rubric or rubric_lib.load()
    reference_records = load_reference(reference, rubric)
    data = data_path(data)
    box = sandbox if isinstance(sandbox, sandbox_lib.Sandbox) else sandbox_lib.probe(sandbox)
    if not submission.exists():
        raise GradingError(f"the submission {submission} does not exist")
    _refuse_overlap(out, submission, Path(reference))
    if out.exists() and not out.is_dir():
        raise GradingError(f"{given} exists and is not a directory; choose another --out")
    name = name or submission.stem
    log = log or (lambda _: None)
    with run_lock(out):
        claim(out, force=force, refuse=GradingError(
            f"{given} already holds files; pass --force to replace them, or choose another "
            "--out"))
        started, started_at = time.perf_counter(), datetime.now(UTC)
        digest = submission_hash(submission)  # of what is graded, before it is copied
        work, results, problems = out / "work", [], []
        trouble = _copy(submission, work, rubric.limits["submission_mb"])
        # read before anything of the submission runs
        premade, module = static.check(work, rubric, trouble), hidden_tests.submitted(work, trouble)
        notebooks = [] if trouble else sorted(p for p in work.glob("*.ipynb") if p.is_file())
        if trouble or not notebooks:
            problems.append(trouble or "the submission holds no .ipynb notebook")
        hidden = [Path(reference), submission, out, *hide]
        for notebook in notebooks:
            entry = {"notebook": notebook.name, "parameters": {}}
            results.append(entry)
            names, unreadable = declared_names(notebook)
            if unreadable:
                entry.update(status="unreadable", message=unreadable)
                problems.append(f"{notebook.name}: {unreadable}")
                continue
            log(f"{name}: running {notebook.name}")
            entry.update(_run(notebook, names, work, out, rubric, box, data, hidden))
            problems += entry.pop("problems")
        records = recorded.load(work / "run")
        log(f"{name}: computing its metrics and figures from its recorded weights")
        loaded = recompute.load(records, reference_records, data)
        recompute.recompute(records, reference_records, rubric, loaded)
        regenerated = recompute.regenerate(loaded)
        if regenerated:
            (out / "regenerated").mkdir(exist_ok=True)
        for figure, image in regenerated.items():
            io.atomic_write_bytes(out / "regenerated" / f"{figure}.png", image)
        log(f"{name}: running the hidden tests of its vae_homework.py")
        tested, tests_run = hidden_tests.run(
            module, rubric, work, box.wrapper(work, hide=hidden, read_only=[data]),
            _environment(box, work, data), out / "logs" / "hidden.log")
        checks = [*checks_lib.run_checks(rubric, reference_records, records, problems),
                  premade, *tested]
        summary = checks_lib.summary(checks, rubric)  # scores every check
        result = {
            "format": FORMAT, "student": name,
            "submission": {"path": shown_path(submission), "sha256": digest},
            "reference": {"path": shown_path(reference),
                          "sha256": reference_hash(reference)},
            "rubric": {"path": shown_path(rubric.path), "sha256": rubric.sha256},
            "sandbox": box.to_dict(),
            "summary": summary,
            "checks": [c.to_dict() for c in checks],
            "notebooks": results, "hidden": tests_run,
            "timings": {"started": started_at.isoformat(timespec="seconds"),
                        "total_seconds": round(time.perf_counter() - started, 1)},
            "limits": dict(rubric.limits), "versions": _versions(),
        }
        data_view = comparison(reference_records, records, rubric)
        curves = learning_curves(reference_records.history(), records.history(), "reference",
                                 name)
        page = report.render_comparison(
            f"Grade of {name}", data_view, reference_records, records, ("reference", name),
            curves, checks, result, regenerated=regenerated,
            subtitle=f"submission: {result['submission']['path']} · reference run: "
                     f"{result['reference']['path']} · rubric: {result['rubric']['path']}")
        io.atomic_write_text(out / "report.html", page)
        gradebook.write_results(out / gradebook.RESULTS_FILE, result)
        io.write_json(out / GRADE_FILE, result)  # last: its presence means "graded"
        return result


def declared_names(notebook: Path) -> tuple[set, str | None]:
    """The names a notebook's ``parameters`` cell assigns, or why it is not a notebook (read
    as plain JSON: papermill checks the rest when it runs the notebook)."""
    try:
        document = json.loads(notebook.read_bytes())
    except (OSError, ValueError) as err:  # corrupt JSON, not UTF-8, unreadable
        return set(), f"not a readable notebook ({first_line(str(err))[:200]})"
    cells = document.get("cells") if isinstance(document, dict) else None
    if not isinstance(cells, list) or document.get("nbformat") != 4:
        return set(), "not a Jupyter notebook (no list of cells in nbformat 4)"
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") == "code" and isinstance(tags, list) and "parameters" in tags:
            source = cell.get("source", "")
            try:
                tree = ast.parse("".join(source) if isinstance(source, list) else str(source))
            except (SyntaxError, ValueError):
                return set(), None
            return {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)}, None
    return set(), None


def _run(notebook: Path, names: set, work: Path, out: Path, rubric, box, data: Path,
         hidden) -> dict:
    """Execute one notebook of the working copy; its entry in ``grade.json``."""
    limits = rubric.limits
    run_dir = work / "run"
    parameters = {k: v for k, v in {**rubric.parameters, "run_dir": str(run_dir)}.items()
                  if k in names}
    executed = work / ".grader" / notebook.name
    for folder in (run_dir, executed.parent, out / "logs", out / "notebooks"):
        folder.mkdir(parents=True, exist_ok=True)
    outcome = execution.run_notebook(
        notebook, executed, parameters, cwd=work, env=_environment(box, work, data),
        wrapper=box.wrapper(work, hide=hidden, read_only=[data]), allow_errors=True,
        log=out / "logs" / f"{notebook.stem}.log",
        limits=execution.Limits(timeout=limits["time_limit"],
                                memory_mb=limits["memory_mb"],
                                disk_mb=limits["disk_mb"],
                                output_bytes=int(limits["output_mb"] * 2**20),
                                file_bytes=int(limits["file_mb"] * 2**20),
                                log_bytes=LOG_BYTES, processes=limits["processes"]))
    problems = []
    if outcome.status == "error" and outcome.cell_errors:
        more = [e.split(":", 1)[0] for e in outcome.cell_errors[1:]]
        problems.append(f"{notebook.name}: {outcome.cell_errors[0]}"
                        + (f" (more cells raised: {', '.join(more)})" if more else ""))
    elif outcome.status != "ok":
        problems.append(f"{notebook.name}: {outcome.message}")
    if outcome.truncated:
        problems.append(f"{notebook.name}: its outputs went over {limits['output_mb']:g} MB "
                        "and were cut")
    try:
        copy = recorded.read_inside(work, executed, int(limits["output_mb"] * 2**20) + 2**24)
        io.atomic_write_bytes(out / "notebooks" / notebook.name, copy)
    except (OSError, ValueError):
        pass  # no executed notebook (it did not start), or one tampered with
    return {"status": outcome.status, "message": outcome.message,
            "cell_errors": outcome.cell_errors, "truncated": outcome.truncated,
            "seconds": outcome.seconds, "peak_memory_mb": outcome.peak_memory_mb,
            "parameters": parameters, "problems": problems}


def _environment(box, work: Path, data: Path) -> dict:
    """The submission's environment: nothing of the grader's but ``PATH``."""
    tmp = Path("/tmp") if box.isolated else work / ".grader" / "tmp"
    if not box.isolated:
        tmp.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8",
            "HOME": str(tmp / "home"), "TMPDIR": str(tmp),
            "MPLCONFIGDIR": str(tmp / "matplotlib"), "IPYTHONDIR": str(tmp / "ipython"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter"), "VAE_MNIST": str(data),
            "VAE_RECORD_DIR": str(work / "run"), "VAE_RUNS_ROOT": str(work),
            "VAE_PROGRESS": "off", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


def _copy(submission: Path, work: Path, limit_mb: float) -> str | None:
    """Copy the submission into ``work``; a problem (too large) instead of raising."""
    limit = limit_mb * 2**20
    if submission.is_file():
        size = submission.stat().st_size
        if size > limit:
            return f"the submission has {size / 2**20:.1f} MB, more than the {limit_mb:g} allowed"
        work.mkdir(parents=True)
        shutil.copyfile(submission, work / submission.name)
        return None
    files = [p for p in submission.rglob("*") if p.is_file() and not p.is_symlink()
             and not SKIP & set(p.relative_to(submission).parts)]
    size = sum(p.stat().st_size for p in files)
    if size > limit:
        return f"the submission has {size / 2**20:.1f} MB, more than the {limit_mb:g} allowed"
    shutil.copytree(submission, work, symlinks=True, ignore=shutil.ignore_patterns(*SKIP))
    return None


def _refuse_overlap(out: Path, submission: Path, reference: Path) -> None:
    out = out.resolve()
    for what, path in (("the submission", submission), ("the reference run", reference)):
        path = path.resolve()
        if out == path or path.is_relative_to(out) or (path.is_dir() and out.is_relative_to(path)):
            raise GradingError(f"--out {out} overlaps {what} {path}; choose a directory "
                               "outside both")


def reference_hash(reference) -> str:
    """SHA-256 of the reference run's ``records.json`` (empty if there is none)."""
    path = recorded.find(reference) / "records.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("vae_helpers", "papermill", "nbclient", "tensorflow", "tensorflow-probability"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
