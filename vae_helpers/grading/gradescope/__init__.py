"""The grader as a Gradescope autograder.

``python -m vae_helpers gradescope --reference RUN --out DIR`` calls ``build``: it
writes ``DIR/autograder/`` and ``DIR/autograder.zip`` (the same files at the root of
the zip, as Gradescope wants them), holding

* ``setup.sh`` and ``run_autograder`` (this package's scripts);
* ``rubric.toml``: the rubric the grades use;
* ``reference/``: the reference run's ``records.json`` and ``records/``;
* ``data/mnist.npz``: the MNIST file the submissions read (``--data``, else
  ``$VAE_MNIST``; Gradescope's machines have no other copy);
* ``package/``: the project's source (``pyproject.toml``, ``requirements.txt``,
  ``vae_helpers/``), which ``setup.sh`` installs with the pinned requirements into
  ``/autograder/venv``. It is taken from the source tree the running
  ``vae_helpers`` was installed from, so build from a checkout (``make install``).

On Gradescope, ``run_autograder`` runs ``python -m vae_helpers.grading.gradescope``,
which calls ``run(root)``: it grades ``ROOT/submission`` (the files the student
uploaded) with ``grader.grade`` into ``ROOT/grade``, against ``ROOT/source``'s
reference, rubric and data, and copies the grade's ``results.json``
(``vae_helpers.grading.gradebook``) to ``ROOT/results/results.json``. ``ROOT`` is
``/autograder`` there; it is a parameter so that the same code runs on any folder of
that layout. What stops the grader itself (a broken autograder folder) is a one-line
error and exit code 1, with no ``results.json``: Gradescope then reports that the
autograder failed, rather than a score the student did not earn.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from importlib import resources
from pathlib import Path

import vae_helpers
from vae_helpers import io
from vae_helpers.course import record
from vae_helpers.grading import gradebook, grader
from vae_helpers.grading import rubric as rubric_lib
from vae_helpers.grading.sandbox import SandboxError
from vae_helpers.outdirs import RunLocked, claim, run_lock

SCRIPTS = ("setup.sh", "run_autograder")
RUBRIC_FILE = "rubric.toml"
REFERENCE_DIR = "reference"
DATA_FILE = "data/mnist.npz"
PACKAGE_DIR = "package"
PACKAGE_FILES = ("pyproject.toml", "requirements.txt", "README.md", "LICENSE")
ZIP_NAME = "autograder.zip"


class AutograderError(RuntimeError):
    """The autograder cannot be built: no source tree, a bad reference or data file."""


def source_tree() -> Path:
    """The project checkout the running ``vae_helpers`` comes from.

    Raises:
        AutograderError: the package was installed without its source tree.
    """
    root = Path(vae_helpers.__file__).resolve().parent.parent
    missing = [name for name in PACKAGE_FILES[:2] if not (root / name).is_file()]
    if missing:
        raise AutograderError(f"vae_helpers is not installed from a source checkout (no "
                              f"{', '.join(missing)} beside {root / 'vae_helpers'}); build the "
                              "autograder from a checkout of the project after make install")
    return root


def build(reference, out, rubric=None, data=None, force: bool = False) -> Path:
    """Write the autograder folder and its zip into ``out``; returns the zip's path.

    Raises:
        AutograderError, grader.GradingError, rubric.RubricError: what is given cannot be
            used; outdirs.RunLocked: another command works in ``out``.
    """
    given = Path(out)
    out = given.absolute()
    rubric = rubric or rubric_lib.load()
    found = grader.load_reference(reference, rubric)
    data = grader.data_path(data)
    package = source_tree()
    with run_lock(out):
        claim(out, force=force, refuse=AutograderError(
            f"{given} already holds files; pass --force to replace them, or choose another "
            "--out"))
        folder = out / "autograder"
        folder.mkdir()
        for name in SCRIPTS:
            target = folder / name
            target.write_bytes(resources.files(__package__).joinpath(name).read_bytes())
            target.chmod(0o755)
        shutil.copyfile(rubric.path, folder / RUBRIC_FILE)
        records = folder / REFERENCE_DIR
        records.mkdir()
        shutil.copyfile(found.directory / record.RECORDS_FILE, records / record.RECORDS_FILE)
        if (found.directory / "records").is_dir():
            shutil.copytree(found.directory / "records", records / "records")
        (folder / DATA_FILE).parent.mkdir()
        shutil.copyfile(data, folder / DATA_FILE)
        (folder / PACKAGE_DIR).mkdir()
        for name in PACKAGE_FILES:
            if (package / name).is_file():
                shutil.copyfile(package / name, folder / PACKAGE_DIR / name)
        shutil.copytree(package / "vae_helpers", folder / PACKAGE_DIR / "vae_helpers",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        zipped = out / ZIP_NAME
        with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                info = zipfile.ZipInfo.from_file(path, path.relative_to(folder))
                if path.is_file():
                    archive.writestr(info, path.read_bytes())
        return zipped


def run(root="/autograder", sandbox="require", log=print) -> dict:
    """Grade ``root/submission`` as Gradescope's ``run_autograder`` does; returns the
    ``results.json`` written into ``root/results``.

    Raises:
        grader.GradingError, rubric.RubricError, sandbox.SandboxError, OSError: the
            autograder folder is broken (or ``sandbox="require"`` cannot be met).
    """
    root = Path(root)
    source = root / "source"
    rubric = rubric_lib.load(source / RUBRIC_FILE)
    grade = grader.grade(root / "submission", source / REFERENCE_DIR, root / "grade",
                         rubric=rubric, data=source / DATA_FILE, sandbox=sandbox, force=True,
                         name="submission", log=log)
    results = gradebook.results_json(grade)
    (root / "results").mkdir(parents=True, exist_ok=True)
    io.write_json(root / "results" / gradebook.RESULTS_FILE, results)
    return results


def main(argv=None) -> int:
    """The command ``run_autograder`` runs; a broken autograder is a one-line error."""
    parser = argparse.ArgumentParser(prog="python -m vae_helpers.grading.gradescope",
                                     description="Grade a Gradescope submission.")
    parser.add_argument("--root", default="/autograder",
                        help="the autograder's folder: source/, submission/, results/ "
                             "(default /autograder)")
    parser.add_argument("--sandbox", choices=["require", "off"], default="require",
                        help="as for python -m vae_helpers grade (default require: "
                             "bubblewrap, or a one-line error)")
    args = parser.parse_args(argv)
    try:
        results = run(args.root, sandbox=args.sandbox)
    except (grader.GradingError, SandboxError, RunLocked, OSError, ValueError) as err:
        print(f"error: the autograder cannot grade: {err}", file=sys.stderr)
        return 1
    print(results["output"])
    return 0

