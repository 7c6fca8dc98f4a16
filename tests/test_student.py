"""Tests of vae_helpers.course.student: solution regions become stubs, everything else stays."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from vae_helpers.__main__ import main
from vae_helpers.course import checks, student

pytestmark = pytest.mark.unit

FOLDER = Path(__file__).resolve().parent.parent / "notebooks"


def test_a_region_becomes_a_stub_with_its_hint_at_its_indentation():
    source = ("x = 1\n"
              "for i in range(3):\n"
              "    # BEGIN SOLUTION: add i to x (μ is fine)\n"
              "    x += i\n"
              "    print(x)\n"
              "    # END SOLUTION\n"
              "print('done')")
    stubbed, count = student.strip_solutions(source)
    assert count == 1
    assert stubbed == ("x = 1\n"
                       "for i in range(3):\n"
                       "    # TODO: add i to x (μ is fine)\n"
                       '    raise NotImplementedError("add i to x (μ is fine)")\n'
                       "print('done')")
    with pytest.raises(NotImplementedError, match=r"add i to x \(μ is fine\)"):
        exec(stubbed, {})
    assert student.solution_regions(source) == ["    x += i\n    print(x)"]


def test_a_region_without_a_hint_gets_a_default_one():
    stubbed, _ = student.strip_solutions("# BEGIN SOLUTION\ny = 2\n# END SOLUTION")
    assert stubbed.splitlines() == ["# TODO: complete this part",
                                    'raise NotImplementedError("complete this part")']


@pytest.mark.parametrize("source, message", [
    ("a = 1\n# END SOLUTION", "line 2: END SOLUTION without a BEGIN SOLUTION"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION",
     "line 2: BEGIN SOLUTION inside the region opened on line 1"),
    ("x = 0\n# BEGIN SOLUTION: h\nx = 1", "line 2: BEGIN SOLUTION is never ended"),
])
def test_unbalanced_markers_are_errors_that_name_the_line(source, message):
    with pytest.raises(student.StudentError, match=f"nb.ipynb, cell 3, {message}"):
        student.strip_solutions(source, "nb.ipynb, cell 3")


def test_cells_tagged_solution_are_replaced_and_outputs_cleared():
    nb = new_notebook(cells=[
        new_markdown_cell("# Title"),
        new_code_cell("# load the data from VAE_MNIST\nx = load()", metadata={"tags": ["solution"]},
                      execution_count=3, outputs=[new_output("stream", text="answer 42\n")]),
        new_code_cell("print(1)", execution_count=4,
                      outputs=[new_output("stream", text="1\n")]),
    ])
    version, count = student.student_notebook(nb)
    assert count == 1
    assert version.cells[0].source == "# Title"
    assert version.cells[1].source == ('# TODO: load the data from VAE_MNIST\n'
                                       'raise NotImplementedError("load the data from VAE_MNIST")')
    assert version.cells[2].source == "print(1)"
    assert all(c.outputs == [] and c.execution_count is None for c in version.cells[1:])


def answer_key(nb) -> list:
    return [c for c in nb.cells if student.KEY_TAG in c.metadata.get("tags", [])]


def without_drive_cell(version):
    """The handout's cells without the Drive cell, which must follow the install cell."""
    drive = [i for i, c in enumerate(version.cells)
             if student.DRIVE_TAG in c.metadata.get("tags", [])]
    assert len(drive) == 1, "a handout has one Drive cell"
    assert "google.colab" in version.cells[drive[0] - 1].source  # right after the install
    return [c for i, c in enumerate(version.cells) if i != drive[0]]


@pytest.mark.parametrize("name", student.HANDOUTS)
def test_the_handouts_keep_no_line_of_a_solution_and_everything_else(name):
    reference = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
    kept_cells = [c for c in reference.cells if c not in answer_key(reference)]
    solutions = [r for c in kept_cells if c.cell_type == "code"
                 for r in student.solution_regions(c.source)]
    answers = [c for c in kept_cells
               if c.cell_type == "markdown" and "solution" in c.metadata.get("tags", [])]
    version, count = student.student_notebook(nbformat.read(FOLDER / f"{name}.ipynb",
                                                            as_version=4), name)
    assert count == len(solutions) + len(answers)
    text = "\n".join(c.source for c in version.cells)
    assert "SOLUTION" not in text and text.count("raise NotImplementedError(") == \
        len(solutions)
    kept = {line.strip() for line in text.splitlines()}
    for solution in solutions:
        for line in solution.splitlines():
            assert line.strip() not in kept, line  # no line of a solution is left
    for cell in answer_key(reference):  # nor of the answer key's own cells
        assert cell.source not in text
    # everything else is kept: same cells, same tags, same parameters cell (and the Drive cell)
    cells = without_drive_cell(version)
    assert [c.cell_type for c in cells] == [c.cell_type for c in kept_cells]
    assert [c.metadata.get("tags") for c in cells] == \
        [c.metadata.get("tags") for c in kept_cells]


@pytest.mark.parametrize("name", student.HANDOUTS)
def test_filling_a_handouts_stubs_with_the_solutions_gives_back_the_solution(name):
    reference = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
    kept_cells = [c for c in reference.cells if c not in answer_key(reference)]
    version, _ = student.student_notebook(nbformat.read(FOLDER / f"{name}.ipynb",
                                                        as_version=4), name)
    solutions = [r for c in kept_cells if c.cell_type == "code"
                 for r in student.solution_regions(c.source)]
    used = 0
    for mine, theirs in zip(without_drive_cell(version), kept_cells, strict=True):
        if mine.cell_type != "code":
            continue
        filled, n = student.fill_stubs(mine.source, solutions[used:])
        used += n
        # the solution with its markers removed, line for line
        assert filled == "\n".join(line for line in theirs.source.split("\n")
                                   if not (student.BEGIN.match(line) or student.END.match(line)))
    assert used == len(solutions)


def test_filling_the_student_modules_stubs_gives_back_the_solution():
    solution = (FOLDER / student.STUDENT_MODULE).read_text(encoding="utf-8")
    handout, count = student.strip_solutions(solution, student.STUDENT_MODULE)
    filled, used = student.fill_stubs(handout, student.solution_regions(solution))
    assert used == count == len(student.solution_regions(solution)) > 0
    assert filled == "\n".join(line for line in solution.split("\n")
                               if not (student.BEGIN.match(line) or student.END.match(line)))


def test_the_command_writes_the_homework_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["student", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "01_math.ipynb", "02_build.ipynb", "03_train.ipynb", "04_analysis.ipynb",
        "05_discussion.ipynb", "vae_homework.py"]
    printed = capsys.readouterr().out
    assert "03_train.ipynb (2 stubs)" in printed and "04_analysis.ipynb (6 stubs)" in printed
    assert "05_discussion.ipynb (3 stubs)" in printed
    solution = (FOLDER / "vae_homework.py").read_text(encoding="utf-8")
    regions = student.solution_regions(solution)
    assert f"vae_homework.py ({len(regions)} stubs)" in printed
    handout = (out / "vae_homework.py").read_text(encoding="utf-8")
    kept = {line.strip() for line in handout.splitlines()}
    for region in regions:  # not one line of a solution is left in the student's module
        for line in region.splitlines():
            assert not line.strip() or line.strip() not in kept, line
    assert "SOLUTION" not in handout and handout.count("raise NotImplementedError(") == \
        len(regions)
    assert checks.kit_violations(handout) == []
    before = (out / "03_train.ipynb").read_text()
    (out / "03_train.ipynb").write_text("my work")
    assert main(["student", "--out", str(out)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "03_train.ipynb").read_text() == "my work"
    assert main(["student", "--out", str(out), "--force"]) == 0
    assert (out / "03_train.ipynb").read_text() == before
    assert main(["student", "--out", str(FOLDER)]) == 1
    assert "is where the notebooks are" in capsys.readouterr().err
    bad = tmp_path / "bad.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("# BEGIN SOLUTION\nx = 1")]), bad)
    assert main(["student", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "bad.ipynb, cell 0, line 1: BEGIN SOLUTION is never ended" in \
        capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_prose_answer_becomes_a_prompt_under_its_heading():
    assert student.answer_prompt("## What the figures show\n\n* **Samples.** blurry\n") == \
        f"## What the figures show\n\n{student.ANSWER_PROMPT}"
    assert student.answer_prompt("**What changes.** Its density falls\nlinearly.") == \
        f"**What changes.**\n\n{student.ANSWER_PROMPT}"
    assert student.answer_prompt("Three things:\n\n* one") == student.ANSWER_PROMPT
    asked = "### Where\n\n<!-- prompt: where did the model\n use continuity? -->\nIt did."
    assert student.answer_prompt(asked) == \
        "### Where\n\n*Your answer:* where did the model use continuity?"


@pytest.mark.parametrize("name", [n for n in student.HANDOUTS if n not in ("01_math",
                                                                         "02_build")])
def test_no_handout_keeps_the_prose_of_an_answer(name):
    reference = nbformat.read(FOLDER / f"{name}.ipynb", as_version=4)
    answers = [c.source for c in reference.cells
               if c.cell_type == "markdown" and "solution" in c.metadata.get("tags", [])]
    assert answers, f"{name} has no prose answer tagged solution"
    version, _ = student.student_notebook(nbformat.read(FOLDER / f"{name}.ipynb",
                                                        as_version=4), name)
    text = "\n".join(c.source for c in version.cells)
    assert text.count("*Your answer:*") == len(answers)
    for answer in answers:
        for line in answer.splitlines():
            if len(line.strip()) > 25 and not line.lstrip().startswith(("#", "<!--")):
                assert line.strip() not in text, line


@pytest.mark.parametrize("source, stubbed", [
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION",
     '# TODO: complete this part\nraise NotImplementedError("complete this part")'),
    ("    ## BEGIN SOLUTION\n    x = 1\n    ####  END SOLUTION",
     '    # TODO: complete this part\n    raise NotImplementedError("complete this part")'),
    ("# BEGIN SOLUTION NO PROMPT\nx = 1\n# END SOLUTION",
     '# TODO: complete this part\nraise NotImplementedError("complete this part")'),
    ("y = 2\n    z = compute(y)  # SOLUTION\nprint(z)",
     'y = 2\n    # TODO: complete this line\n    raise NotImplementedError("complete this line")'
     "\nprint(z)"),
    ("z = compute()  # SOLUTION NO PROMPT",
     '# TODO: complete this line\nraise NotImplementedError("complete this line")'),
])
def test_the_markers_of_nbgrader_and_otter_are_stripped_too(source, stubbed):
    result, count = student.strip_solutions(source)
    assert (result, count) == (stubbed, 1)
    assert "compute" not in result and "x = 1" not in result
    assert len(student.solution_regions(source)) == 1


def test_nbgraders_hidden_tests_are_left_out_entirely():
    source = ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION\nassert x > 0\n"
              "### BEGIN HIDDEN TESTS\nassert x == 1  # the expected value\n"
              "## END HIDDEN TESTS\nprint(x)")
    result, count = student.strip_solutions(source)
    assert count == 1 and "x == 1" not in result and "HIDDEN" not in result
    assert result.endswith("assert x > 0\nprint(x)")
    assert student.solution_regions(source) == ["x = 1"]


@pytest.mark.parametrize("source, message", [
    ("### BEGIN HIDDEN TESTS\nassert x == 1", "line 1: BEGIN HIDDEN TESTS is never ended"),
    ("x = 1\n### END HIDDEN TESTS", "line 2: END HIDDEN TESTS without a BEGIN HIDDEN TESTS"),
    ("# BEGIN SOLUTION\n# BEGIN HIDDEN TESTS\n# END HIDDEN TESTS\n# END SOLUTION",
     "line 2: BEGIN HIDDEN TESTS inside the region opened on line 1"),
    ("# BEGIN HIDDEN TESTS\n# BEGIN SOLUTION\n# END HIDDEN TESTS",
     "line 2: a solution marker inside the hidden tests opened on line 1"),
    ("x = 1\n# the END  HIDDEN TESTS of it", "a solution marker this command does not"),
])
def test_bad_hidden_test_markers_stop_the_student_version(source, message):
    with pytest.raises(student.StudentError, match=message):
        student.strip_solutions(source)


@pytest.mark.parametrize("line", ["#BEGIN  SOLUTION here", "# solution: END SOLUTION",
                                  "print('a')  # SOLUTION please", "    # SOLUTION"])
def test_a_line_that_still_looks_like_a_marker_is_an_error_not_a_leak(line):
    with pytest.raises(student.StudentError, match="a solution marker this command does not "
                                                   "understand"):
        student.strip_solutions(f"x = 0\n{line}\n", "nb.ipynb, cell 2")
    assert student.strip_solutions("# the solution of the equation\nx = 1")[1] == 0


def test_a_marked_region_in_a_markdown_cell_becomes_an_answer_prompt():
    nb = new_notebook(cells=[
        new_markdown_cell("## Why a sigmoid?\n\n### BEGIN SOLUTION\nThe pixels lie in [0, 1], "
                          "so the mean must too.\n### END SOLUTION\n\nThen go on."),
        new_markdown_cell("Explain.\n<!-- -->\n# BEGIN SOLUTION: why is the KL positive?\n"
                          "Gibbs' inequality.\n# END SOLUTION"),
    ])
    version, count = student.student_notebook(nb)
    assert count == 2
    assert version.cells[0].source == ("## Why a sigmoid?\n\n" + student.ANSWER_PROMPT
                                       + "\n\nThen go on.")
    assert version.cells[1].source == ("Explain.\n<!-- -->\n"
                                       "*Your answer:* why is the KL positive?")
    text = "\n".join(c.source for c in version.cells)
    assert "Gibbs" not in text and "must too" not in text


@pytest.mark.parametrize("source, message", [
    ("Text\n### BEGIN SOLUTION\nthe answer", "cell 0, line 2: BEGIN SOLUTION is never ended"),
    ("Text\n#### END SOLUTION", "cell 0, line 2: END SOLUTION without a BEGIN SOLUTION"),
    ("The answer is 4. # SOLUTION!", "a solution marker this command does not understand"),
])
def test_bad_markers_in_a_markdown_cell_stop_the_student_version(source, message):
    with pytest.raises(student.StudentError, match=message):
        student.student_notebook(new_notebook(cells=[new_markdown_cell(source)]))


def test_the_drive_cell_follows_the_colab_install_once_and_uses_only_the_kit():
    install = new_code_cell('import sys\nif "google.colab" in sys.modules:\n    pass')
    nb = new_notebook(cells=[new_markdown_cell("# Title"), install, new_code_cell("x = 1")])
    version, _ = student.student_notebook(nb)
    assert [c.source for c in version.cells] == ["# Title", install.source,
                                                 student.DRIVE_CELL, "x = 1"]
    assert version.cells[2].metadata["tags"] == [student.DRIVE_TAG]
    assert checks.kit_violations(student.DRIVE_CELL) == []
    nbformat.validate(version)
    again, _ = student.student_notebook(version)  # a handout made a handout again
    assert [c.source for c in again.cells] == [c.source for c in version.cells]
    plain = new_notebook(cells=[new_code_cell("x = 1")])  # no install cell: nothing to add
    assert [c.source for c in student.student_notebook(plain)[0].cells] == ["x = 1"]
