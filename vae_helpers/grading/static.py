"""The static check ``static.no_premade_vae``: no pre-made VAE in a submission.

The homework asks students to write the model themselves ("one line
implementations like ``vae = VAE(...)`` are not in the spirit of this
assignment"). Before anything of a submission runs, ``check`` reads every ``.py``
file and every notebook's code cells of the working copy with Python's ``ast``
(nothing is executed) and fails when one imports

* anything of ``vae_helpers`` outside the student kit (``vae_helpers.course.checks.KIT``
  and ``KIT_NAMES``): the package's model, training, runs, evaluation,
  distributions and discrete modules are the reference the homework is graded
  against;
* a VAE library (``VAE_LIBRARIES``);

by an ``import`` statement or by ``importlib.import_module`` / ``__import__`` with a
constant name (``checks.imported_modules``, the scanner of the visible kit check).
IPython's ``%`` and ``!`` lines are skipped, as is a cell under a ``%%`` magic that is
not Python (``%%bash``, ``%%html``); a file or cell that is not Python fails the
check, named, since it cannot be checked. A name built at run time escapes a
static check; the hidden tests (``grading.hidden``) run the student's code as well.
When the rubric runs hidden tests, a submission without the student module
(``vae_homework.py``) fails this check too: there is nothing of the homework to read.
"""

from __future__ import annotations

import json
from pathlib import Path

from vae_helpers.course.checks import imported_modules, kit_violations
from vae_helpers.course.execution import first_line
from vae_helpers.course.student import STUDENT_MODULE as MODULE
from vae_helpers.grading.checks import Check
from vae_helpers.grading.rubric import STATIC_CHECK

NAME = STATIC_CHECK
RULE = ("one line implementations like `vae = VAE(...)` are not in the spirit of this "
        "assignment: write the model yourself with TensorFlow and TFP (from vae_helpers "
        "only the student kit)")
VAE_LIBRARIES = {
    "pythae": "Pythae, a collection of ready-made VAE models and trainers",
    "pl_bolts": "PyTorch Lightning Bolts, whose models include a VAE",
    "scvi": "scvi-tools, built on ready-made VAE modules",
    "disvae": "disvae, ready-made VAE variants and their losses",
}
"""Top-level modules of libraries that hand out a ready-made VAE, and what they are."""
SKIP = {".ipynb_checkpoints", "__pycache__", ".git"}
MAX_FILE_BYTES = 16 * 2**20


def findings(source: str) -> list[tuple[str, int]]:
    """``(what, line)`` for each forbidden import of ``source``: a package module outside the
    student kit, or a VAE library.

    Raises:
        SyntaxError: ``source`` is not Python.
    """
    found = [(name, line) for name, line in kit_violations(source, lines=True)]
    found += [(name, line) for name, line in imported_modules(source)
              if name.split(".")[0] in VAE_LIBRARIES]
    return sorted(found, key=lambda item: item[1])


def cells(notebook: Path) -> list[tuple[int, str, bool]] | str:
    """``(cell number, Python, under a cell magic)`` of a notebook's code cells (numbered
    from 1 among all cells), IPython's ``%`` and ``!`` lines blanked so that line numbers
    hold; or why the file is not a notebook."""
    try:
        document = json.loads(notebook.read_bytes())
    except (OSError, ValueError) as err:
        return f"not a readable notebook ({first_line(str(err))[:200]})"
    found = document.get("cells") if isinstance(document, dict) else None
    if not isinstance(found, list):
        return "not a Jupyter notebook (no list of cells)"
    code = []
    for number, cell in enumerate(found, 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        text = "".join(map(str, source)) if isinstance(source, list) else str(source)
        code.append((number, "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                                       for line in text.splitlines()),
                     text.lstrip().startswith("%%")))
    return code


def problems(work: Path) -> tuple[list[str], int]:
    """What ``check`` reports for the files under ``work``: one line per forbidden import or
    unreadable file, and the number of files read."""
    found, files = [], 0
    paths = sorted(p for p in Path(work).rglob("*")
                   if p.suffix in (".py", ".ipynb") and p.is_file() and not p.is_symlink()
                   and not SKIP & set(p.relative_to(work).parts))
    for path in paths:
        shown = str(path.relative_to(work))
        files += 1
        if path.stat().st_size > MAX_FILE_BYTES:
            found.append(f"{shown} has more than {MAX_FILE_BYTES // 2**20} MB and was not read")
            continue
        if path.suffix == ".py":
            try:
                units = [(None, path.read_bytes().decode("utf-8"), False)]
            except (OSError, UnicodeDecodeError) as err:
                found.append(f"{shown} cannot be read ({first_line(str(err))[:200]})")
                continue
        else:
            units = cells(path)
            if isinstance(units, str):
                found.append(f"{shown}: {units}")
                continue
        for cell, source, magic in units:
            where = shown if cell is None else f"{shown} cell {cell}"
            try:
                hits = findings(source)
            except (SyntaxError, ValueError) as err:
                if magic:  # %%bash, %%html, ...: not Python
                    continue
                line = getattr(err, "lineno", None)
                found.append(f"{where} is not Python and cannot be checked "
                             f"({type(err).__name__}{f' on line {line}' if line else ''})")
                continue
            found += [f"{where}, line {line}: imports {_describe(name)}" for name, line in hits]
    return found, files


def _describe(name: str) -> str:
    top = name.split(".")[0]
    if top in VAE_LIBRARIES:
        return f"{name} ({VAE_LIBRARIES[top]})"
    return f"{name}, outside the student kit"


def check(work, rubric=None, trouble: str | None = None) -> Check:
    """The check ``static.no_premade_vae`` of the working copy ``work``, read before anything
    runs (required unless the rubric's ``[checks] informational`` lists it).

    Args:
        work: the copy of the submission.
        rubric: the ``Rubric`` (for ``informational_checks``).
        trouble: why the submission was not copied, if it was not.
    """
    required = rubric is None or NAME not in rubric.informational_checks
    if trouble:
        return Check(NAME, required, False, f"not checked: {trouble}")
    if rubric is not None and rubric.hidden["tasks"] and not (Path(work) / MODULE).is_file():
        # the homework's code belongs in the module: without it there is nothing to check,
        # and an empty submission earns no points for importing nothing
        return Check(NAME, required, False, f"no {MODULE} in the submission: the homework's "
                     "model, its training and its math go there")
    found, files = problems(Path(work))
    if not found:
        return Check(NAME, required, True,
                     f"no import of vae_helpers outside the student kit, nor of a VAE "
                     f"library, in {files} file{'s' if files != 1 else ''}")
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    imports = any(": imports " in line for line in found)
    return Check(NAME, required, False, "; ".join(found[:3]) + more + (
        f": {RULE}" if imports else ": hand in Python the check can read"))
