"""Student versions of the homework notebooks: the solutions replaced by stubs.

In the reference notebooks (and the student module), the student's parts are marked
inside code cells::

    # BEGIN SOLUTION: draw 100 images from the model (VAE.sample)
    samples = model.sample(100, seed=seed).numpy()
    # END SOLUTION

(the markers are comments, so the reference notebooks run as they are), or a whole
code cell is tagged ``solution`` (its first comment line, if any, is the hint). In a
markdown cell a marked region becomes an answer prompt (its hint the question). The
markers of nbgrader (``### BEGIN SOLUTION`` ... ``### END SOLUTION``, any number of
``#``; the lines between its ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``
are left out entirely) and otter (``# BEGIN SOLUTION NO PROMPT``, and a line of code
ending in ``# SOLUTION``, which becomes a stub of its own) are understood too, and a
line that still looks like a marker afterwards is an error rather than a leak.
A markdown cell tagged ``solution`` is a prose answer (a "comment on the results"):
in the student version its leading heading or bold lead-in stays and the answer
becomes the prompt ``ANSWER_PROMPT``. A cell tagged ``answer-key`` (``KEY_TAG``)
belongs to the answer key only and is left out: the reference run's extra
models, and the metrics the grader computes itself from the saved weights.
``python -m vae_helpers student --out DIR`` writes copies in which each region
becomes, at the same indentation::

    # TODO: draw 100 images from the model (VAE.sample)
    raise NotImplementedError("draw 100 images from the model (VAE.sample)")

Everything else is kept, except the outputs, which are cleared (they would show
the answers). After its Colab install cell, a handout gets one more cell
(tagged ``DRIVE_TAG``, ``DRIVE_CELL``): on Colab only, it mounts the student's Google
Drive and works in its course folder ``MyDrive/vae-course``
(``vae_helpers.course.notebook.use_drive``), which holds ``vae_homework.py`` and the
run directory, since Colab runs each notebook on a fresh runtime; elsewhere it does
nothing. The handouts' badges and install cells still point at the answer key's
folder: ``python -m vae_helpers colab --notebooks DIR --path PATH_IN_REPO`` points
them at the handouts where they are published. A Python file (the student module,
``STUDENT_MODULE``) is stubbed the same way, region by region, and written beside the
notebooks. A student version completed by the student records the same names as the
reference, so the grader accepts it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# "# BEGIN SOLUTION: hint", nbgrader's "### BEGIN SOLUTION", otter's "# BEGIN SOLUTION NO PROMPT"
BEGIN = re.compile(r"^(?P<indent>[ \t]*)#+[ \t]*BEGIN SOLUTION(?:[ \t]+NO PROMPT)?"
                   r"(?:[ \t]*:[ \t]*(?P<hint>.*?))?[ \t]*$")
END = re.compile(r"^[ \t]*#+[ \t]*END SOLUTION[ \t]*$")
# otter's one-line solution: code followed by "# SOLUTION" (or "# SOLUTION NO PROMPT")
LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<code>\S.*?)[ \t]*#[ \t]*SOLUTION"
                  r"(?:[ \t]+NO PROMPT)?[ \t]*$")
# nbgrader's hidden tests: the lines between are left out of the student version entirely
BEGIN_HIDDEN = re.compile(r"^[ \t]*#+[ \t]*BEGIN HIDDEN TESTS[ \t]*$")
END_HIDDEN = re.compile(r"^[ \t]*#+[ \t]*END HIDDEN TESTS[ \t]*$")
# anything left that still looks like a marker: a handout is never written with one
LEFTOVER = re.compile(r"#.*\b(?:BEGIN|END)[ \t]+(?:SOLUTION|HIDDEN[ \t]+TESTS)\b"
                      r"|#[ \t]*SOLUTION\b")
LINE_HINT = "complete this line"
TAG = "solution"
#: a cell of the answer key only (the reference run's extra models and metrics, what the
#: grader computes itself): left out of the handouts entirely
KEY_TAG = "answer-key"
HOMEWORK = ("03_train", "04_analysis")
#: the notebooks the student command writes by default
HANDOUTS = ("01_math", "02_build", "03_train", "04_analysis", "05_discussion")
#: the module the student edits, beside the notebooks (its solution is the answer key)
STUDENT_MODULE = "vae_homework.py"
DEFAULT_HINT = "complete this part"
#: the handouts' Google Drive cell, inserted after the Colab install cell
DRIVE_TAG = "colab-drive"
DRIVE_CELL = (
    "# On Colab only: each notebook gets a fresh runtime, so your vae_homework.py and the run\n"
    "# directory live on your Google Drive, in MyDrive/vae-course (upload the handouts'\n"
    "# vae_homework.py there once). Elsewhere this does nothing.\n"
    "from vae_helpers.course import notebook\n"
    "\n"
    "notebook.use_drive()"
)
ANSWER_PROMPT = ("*Your answer:* what do the results above show, and why? Cite the figures "
                 "and the numbers.")


class StudentError(ValueError):
    """Unbalanced solution markers, or an output that would be overwritten."""


def stub(hint: str, indent: str = "") -> list[str]:
    """The lines that replace a solution."""
    literal = json.dumps(hint, ensure_ascii=False)
    return [f"{indent}# TODO: {hint}", f"{indent}raise NotImplementedError({literal})"]


def prose_stub(hint: str, indent: str = "") -> list[str]:
    """The line that replaces a marked region of a markdown cell: an answer prompt."""
    return [f"{indent}*Your answer:* {hint}" if hint not in (DEFAULT_HINT, LINE_HINT)
            else f"{indent}{ANSWER_PROMPT}"]


def _parse(source: str, where: str, replace=stub) -> tuple[list[str], list[str]]:
    """The lines of ``source`` with each marked region replaced by ``replace(hint,
    indent)`` (a code stub), and the code of the regions in order (markers excluded; a
    one-line solution is its code)."""
    out, opened, regions, hidden = [], None, [], None
    for number, line in enumerate(source.split("\n"), 1):
        if hidden:  # inside hidden tests: nothing is kept, and only their end is a marker
            if END_HIDDEN.match(line):
                hidden = None
            elif BEGIN.match(line) or END.match(line) or LEFTOVER.search(line):
                raise StudentError(f"{where}, line {number}: a solution marker inside the "
                                   f"hidden tests opened on line {hidden}")
            continue
        if BEGIN_HIDDEN.match(line) or END_HIDDEN.match(line):
            if opened or END_HIDDEN.match(line):
                raise StudentError(f"{where}, line {number}: {line.strip().lstrip('#').strip()}"
                                   + (f" inside the region opened on line {opened[0]}"
                                      if opened else " without a BEGIN HIDDEN TESTS"))
            hidden = number
            continue
        begin, end = BEGIN.match(line), END.match(line)
        one_line = None if (begin or end or opened) else LINE.match(line)
        if begin:
            if opened:
                raise StudentError(f"{where}, line {number}: BEGIN SOLUTION inside the region "
                                   f"opened on line {opened[0]}")
            opened = (number, begin["indent"], begin["hint"] or DEFAULT_HINT, [])
        elif end:
            if not opened:
                raise StudentError(f"{where}, line {number}: END SOLUTION without a "
                                   "BEGIN SOLUTION")
            out += replace(opened[2], opened[1])
            regions.append("\n".join(opened[3]))
            opened = None
        elif one_line:
            out += replace(LINE_HINT, one_line["indent"])
            regions.append(one_line["indent"] + one_line["code"])
        elif opened:
            opened[3].append(line)
        else:
            if LEFTOVER.search(line):
                raise StudentError(f"{where}, line {number}: a solution marker this command "
                                   f"does not understand ({line.strip()[:60]!r}); use "
                                   "# BEGIN SOLUTION / # END SOLUTION or a trailing # SOLUTION")
            out.append(line)
    if opened:
        raise StudentError(f"{where}, line {opened[0]}: BEGIN SOLUTION is never ended "
                           "(add # END SOLUTION)")
    if hidden:
        raise StudentError(f"{where}, line {hidden}: BEGIN HIDDEN TESTS is never ended "
                           "(add ### END HIDDEN TESTS)")
    return out, regions


def strip_solutions(source: str, where: str = "cell", markdown: bool = False
                    ) -> tuple[str, int]:
    """``source`` with every marked region replaced by a stub (in ``markdown``, by an
    answer prompt); and how many there were.

    Raises:
        StudentError: an ``END`` without ``BEGIN``, a ``BEGIN`` inside a region, or a
            region left open (the message names ``where`` and the line).
    """
    out, regions = _parse(source, where, prose_stub if markdown else stub)
    return "\n".join(out), len(regions)


def solution_regions(source: str, where: str = "cell") -> list[str]:
    """The code inside each marked region of ``source``, in order (markers excluded); a
    one-line solution (``code  # SOLUTION``) is a region of its code."""
    return _parse(source, where)[1]


def fill_stubs(source: str, regions) -> tuple[str, int]:
    """``source`` (a student version) with its stubs replaced, in order, by ``regions``
    (each a region's code, as ``solution_regions`` gives it); and how many it used.

    Raises:
        StudentError: more stubs than regions.
    """
    regions, lines, out, used = list(regions), source.split("\n"), [], 0
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1].lstrip() if index + 1 < len(lines) else ""
        if line.lstrip().startswith("# TODO: ") and following.startswith(
                "raise NotImplementedError("):
            if used == len(regions):
                raise StudentError(f"more stubs than the {len(regions)} solutions given")
            out.append(regions[used])
            used, index = used + 1, index + 2
            continue
        out.append(line)
        index += 1
    return "\n".join(out), used


def answer_prompt(source: str) -> str:
    """A prose answer's cell as the student gets it: its headings (and a bold lead-in
    such as ``**What changes.**``) kept, the answer replaced by a prompt: the cell's own
    question when it has one (an invisible ``<!-- prompt: ... -->`` line), else
    ``ANSWER_PROMPT``."""
    asked = re.search(r"<!--\s*prompt:\s*(.*?)\s*-->", source, re.S)
    prompt = f"*Your answer:* {' '.join(asked.group(1).split())}" if asked else ANSWER_PROMPT
    kept = []
    for line in source.split("\n"):
        if line.strip().startswith("<!--"):
            continue
        if line.startswith("#") or (not line.strip() and kept):
            kept.append(line)
            continue
        lead = re.match(r"\*\*[^*]+\*\*", line)
        if lead:
            kept.append(lead.group(0))
        break
    heading = "\n".join(kept).rstrip()
    return f"{heading}\n\n{prompt}" if heading else prompt


def student_notebook(nb, name: str = "notebook") -> tuple:
    """The student version of a notebook node (changed in place) and its number of stubs
    (code regions and prose answers)."""
    from vae_helpers.course.pipeline import clean_notebook

    count = 0
    nb.cells = [cell for cell in nb.cells if KEY_TAG not in cell.metadata.get("tags", [])]
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source, found = strip_solutions(cell.source, f"{name}, cell {index}",
                                                 markdown=True)
            if TAG in cell.metadata.get("tags", []):
                cell.source = answer_prompt(cell.source)
                found = 1
            count += found
        if cell.cell_type != "code":
            continue
        if TAG in cell.metadata.get("tags", []):
            comments = [ln.strip().lstrip("#").strip() for ln in cell.source.split("\n")
                        if ln.strip().startswith("#")]
            cell.source = "\n".join(stub(comments[0] if comments else DEFAULT_HINT))
            count += 1
        else:
            cell.source, found = strip_solutions(cell.source, f"{name}, cell {index}")
            count += found
        cell.outputs = []
        cell.execution_count = None
    _add_drive_cell(nb)
    return clean_notebook(nb), count


def _add_drive_cell(nb) -> None:
    """Insert ``DRIVE_CELL`` after the Colab install cell (the first code cell that tests
    for ``google.colab``), unless the notebook has it already or has no such cell (it
    does not install the package on Colab)."""
    import nbformat

    if any(DRIVE_TAG in cell.metadata.get("tags", []) for cell in nb.cells):
        return
    install = [i for i, cell in enumerate(nb.cells)
               if cell.cell_type == "code" and "google.colab" in cell.source]
    if not install:
        return
    at = install[0] + 1
    cell = nbformat.v4.new_code_cell(DRIVE_CELL, metadata={"tags": [DRIVE_TAG]})
    if (nb.nbformat, nb.nbformat_minor) >= (4, 5):
        cell.id = DRIVE_TAG
    else:
        cell.pop("id", None)
    nb.cells.insert(at, cell)


def write_student_versions(notebooks, out, force: bool = False) -> list[tuple[Path, int]]:
    """Write the student version of each notebook (or ``.py`` module) into ``out``;
    ``(path, stubs)`` each.

    Raises:
        StudentError: bad markers, or a file in ``out`` would be overwritten without
            ``force``.
        OSError: a notebook cannot be read.
    """
    import nbformat

    from vae_helpers import io

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StudentError(f"{out} exists and is not a directory; choose another --out")
    sources = [Path(n) for n in notebooks]
    targets = [out / s.name for s in sources]
    clash = [t for s, t in zip(sources, targets, strict=True)
             if t.exists() and t.resolve() != s.resolve()]
    if clash and not force:
        raise StudentError(f"{clash[0]} already exists; pass --force to replace it, or "
                           "choose another --out")
    if any(t.resolve() == s.resolve() for s, t in zip(sources, targets, strict=True)):
        raise StudentError(f"--out {out} is where the notebooks are; choose another folder")
    versions = []
    for source in sources:
        if source.suffix == ".py":
            try:
                text = source.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise StudentError(f"{source} cannot be read ({err})") from None
            versions.append(strip_solutions(text, source.name))
            continue
        try:
            nb = nbformat.read(source, as_version=4)
        except (ValueError, AttributeError, TypeError) as err:
            raise StudentError(f"{source} is not a readable notebook ({err})") from None
        version, count = student_notebook(nb, source.name)
        versions.append((nbformat.writes(version) + "\n", count))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for target, (text, count) in zip(targets, versions, strict=True):
        io.atomic_write_text(target, text)
        written.append((target, count))
    return written
