"""Tests of ``python -m vae_helpers colab`` (vae_helpers.course.colab) and of the handouts'
Google Drive cell (``notebook.use_drive``) on a stand-in of Colab's ``google.colab``."""

from __future__ import annotations

import difflib
import json
import os
import shutil
import sys
import types
from pathlib import Path

import nbformat
import pytest

from vae_helpers.__main__ import main
from vae_helpers.course import colab, notebook, student

pytestmark = pytest.mark.unit

FOLDER = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = sorted(p.name for p in FOLDER.glob("*.ipynb"))
OLD_INSTALL = f'"vae_helpers @ git+https://github.com/{notebook.REPOSITORY}@{notebook.DEFAULT_REF}"'


def copy_notebooks(target: Path) -> Path:
    target.mkdir()
    for name in NAMES:
        shutil.copy(FOLDER / name, target / name)
    return target


def cells(path: Path) -> list:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_the_committed_notebooks_already_point_at_the_documented_default(tmp_path):
    folder = copy_notebooks(tmp_path / "nb")
    changes = colab.rewrite_folder(folder, notebook.REPOSITORY, notebook.DEFAULT_REF)
    assert [c.path.name for c in changes] == NAMES
    assert all(not c.changed and c.found_badges == 1 and c.found_installs == 1
               for c in changes)
    for name in NAMES:
        assert (folder / name).read_bytes() == (FOLDER / name).read_bytes()


def test_rewriting_a_copy_changes_the_badge_and_the_install_and_nothing_else(tmp_path,
                                                                              capsys):
    folder = copy_notebooks(tmp_path / "nb")
    assert main(["colab", "--repo", "my-school/vae-2026", "--ref", "v1.2", "--notebooks",
                 str(folder), "--path", "course/handouts"]) == 0
    out = capsys.readouterr().out
    assert f"5 of {len(NAMES)} notebooks changed" in out
    assert out.count("pointed 1 badge and 1 install cell at my-school/vae-2026@v1.2") == 5
    for name in NAMES:
        before, after = cells(FOLDER / name), cells(folder / name)
        new_url = ("https://colab.research.google.com/github/my-school/vae-2026/blob/v1.2/"
                   f"course/handouts/{name}")
        old_url = ("https://colab.research.google.com/github/vae-helpers/vae-course/blob/main/"
                   f"notebooks/{name}")
        new_install = '"vae_helpers @ git+https://github.com/my-school/vae-2026@v1.2"'
        assert len(before) == len(after)
        changed = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if b != a]
        assert changed == [0, 1], (name, changed)
        for b, a in zip(before, after, strict=True):  # outputs, metadata, ids: all kept
            assert {k: v for k, v in b.items() if k != "source"} == \
                {k: v for k, v in a.items() if k != "source"}
        assert "".join(after[0]["source"]) == "".join(before[0]["source"]).replace(old_url,
                                                                                   new_url)
        assert "".join(after[1]["source"]) == "".join(before[1]["source"]).replace(OLD_INSTALL,
                                                                                   new_install)
        # the file as nbformat writes it: the only lines of the diff are the two sources'
        diff = [line for line in difflib.unified_diff(
            (FOLDER / name).read_text().splitlines(), (folder / name).read_text().splitlines(),
            lineterm="", n=0) if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        assert len(diff) == 4 and all(new_url in d or new_install.strip('"') in d
                                      for d in diff if d.startswith("+")), diff


def test_a_second_run_changes_nothing(tmp_path, capsys):
    folder = copy_notebooks(tmp_path / "nb")
    argv = ["colab", "--repo", "me/course", "--ref", "2026.1", "--notebooks", str(folder)]
    assert main(argv) == 0
    first = {name: (folder / name).read_bytes() for name in NAMES}
    stamps = {name: (folder / name).stat().st_mtime_ns for name in NAMES}
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("already up to date") == len(NAMES)
    assert f"0 of {len(NAMES)} notebooks changed" in out
    assert {name: (folder / name).read_bytes() for name in NAMES} == first
    assert {name: (folder / name).stat().st_mtime_ns for name in NAMES} == stamps  # not written
    # and back to the defaults gives the committed files again, byte for byte
    colab.rewrite_folder(folder, notebook.REPOSITORY, notebook.DEFAULT_REF)
    assert all((folder / n).read_bytes() == (FOLDER / n).read_bytes() for n in NAMES)


def test_the_handouts_point_at_their_own_folder(tmp_path, capsys):
    out = tmp_path / "handouts"
    assert main(["student", "--out", str(out)]) == 0
    assert f"--notebooks {out} --path PATH_IN_REPO" in capsys.readouterr().out
    assert main(["colab", "--repo", "me/course", "--ref", "v0", "--notebooks", str(out)]) == 0
    assert "without --path their badges open notebooks/" in capsys.readouterr().err
    assert main(["colab", "--repo", "me/course", "--ref", "v1", "--notebooks", str(out),
                 "--path", "handouts"]) == 0
    assert capsys.readouterr().err == ""
    for name in student.HANDOUTS:
        nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
        assert (f"(https://colab.research.google.com/github/me/course/blob/v1/handouts/"
                f"{name}.ipynb)") in nb.cells[0].source
        install = [c for c in nb.cells if c.cell_type == "code"][0]
        assert '"vae_helpers @ git+https://github.com/me/course@v1"' in install.source
        drive = [c for c in nb.cells if student.DRIVE_TAG in c.metadata.get("tags", [])]
        assert [c.source for c in drive] == [student.DRIVE_CELL]


def test_the_top_folder_of_the_repository_has_no_path_segment():
    assert notebook.colab_url("a.ipynb", "v1", "o/n", ".") == \
        "https://colab.research.google.com/github/o/n/blob/v1/a.ipynb"


@pytest.mark.parametrize("option, value, expected", [
    ("--repo", "vae-course", "OWNER/NAME"),
    ("--repo", "owner/name/extra", "OWNER/NAME"),
    ("--repo", "-owner/name", "OWNER/NAME"),
    ("--repo", "owner/..", "OWNER/NAME"),
    ("--repo", "own er/name", "OWNER/NAME"),
    ("--ref", "v1..2", "tag or branch"),
    ("--ref", "v 1", "tag or branch"),
    ("--ref", "v1.lock", "tag or branch"),
    ("--ref", "v1@{0}", "tag or branch"),
    ("--ref", "release/", "tag or branch"),
    ("--ref", "", "tag or branch"),
    ("--path", "../elsewhere", "folder of the repository"),
    ("--path", "a/../b", "folder of the repository"),
    ("--path", "a b", "folder of the repository"),
])
def test_bad_options_are_one_line_exit_2(option, value, expected, tmp_path, capsys):
    folder = copy_notebooks(tmp_path / "nb")
    argv = {"--repo": "me/course", "--ref": "v1", "--notebooks": str(folder)}
    argv[option] = value
    with pytest.raises(SystemExit) as exit_:
        main(["colab", *(f"{k}={v}" for k, v in argv.items())])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err and option in err, err
    assert all((folder / n).read_bytes() == (FOLDER / n).read_bytes() for n in NAMES)


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_a_folder_without_notebooks_is_one_line_exit_1(make, tmp_path, capsys):
    target = tmp_path / "folder"
    if make == "empty":
        target.mkdir()
        (target / "vae_homework.py").write_text("x = 1\n")
    elif make == "file":
        target.write_text("not a folder")
    code = main(["colab", "--repo", "me/course", "--ref", "v1", "--notebooks", str(target)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert str(target) in err and "--notebooks" in err


def test_an_unreadable_notebook_stops_before_anything_is_written(tmp_path, capsys):
    folder = copy_notebooks(tmp_path / "nb")
    (folder / "99_broken.ipynb").write_text("{not json")
    code = main(["colab", "--repo", "me/course", "--ref", "v1", "--notebooks", str(folder)])
    err = capsys.readouterr().err
    assert code == 1 and "99_broken.ipynb is not a readable notebook" in err
    assert all((folder / n).read_bytes() == (FOLDER / n).read_bytes() for n in NAMES)


# ------------------------------------------------------------------- the Drive cell
def test_use_drive_does_nothing_off_colab(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(notebook.RUNS_ROOT_ENV, raising=False)
    path = list(sys.path)
    assert notebook.use_drive(mount_point=str(tmp_path / "drive")) is None
    assert not (tmp_path / "drive").exists() and Path.cwd() == tmp_path
    assert notebook.RUNS_ROOT_ENV not in os.environ and sys.path == path


@pytest.fixture
def fake_colab(monkeypatch, tmp_path):
    """``google.colab`` with a ``drive.mount`` that makes the mount point a folder with
    ``MyDrive``, as Colab's does; the mounts it was asked for."""
    mounts = []

    def mount(point):
        mounts.append(point)
        (Path(point) / "MyDrive").mkdir(parents=True, exist_ok=True)

    google = types.ModuleType("google")
    package = types.ModuleType("google.colab")
    package.drive = types.SimpleNamespace(mount=mount)
    google.colab = package
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", package)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(notebook.RUNS_ROOT_ENV, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return mounts


def test_on_colab_the_run_directory_and_the_module_live_on_drive(fake_colab, tmp_path):
    point = tmp_path / "drive"
    course = point / "MyDrive" / "vae-course"
    with pytest.raises(FileNotFoundError, match="upload the handouts' vae_homework.py to "
                                                "MyDrive/vae-course"):
        notebook.use_drive(mount_point=str(point))
    assert course.is_dir()  # made, so that the student can upload into it
    (course / "vae_homework.py").write_text("WHERE = 'drive'\n")
    assert notebook.use_drive(mount_point=str(point)) == course
    assert fake_colab == [str(point), str(point)]
    assert Path.cwd() == course and sys.path[0] == str(course)
    # 03_train's run directory, as 04 and 05 resolve it on their own fresh runtimes
    assert notebook.resolve_run_dir("runs/homework") == course / "runs" / "homework"
    sys.modules.pop("vae_homework", None)
    try:
        import vae_homework
        assert vae_homework.WHERE == "drive"
    finally:
        sys.modules.pop("vae_homework", None)


@pytest.mark.parametrize("on_colab", [False, True])
def test_the_answer_keys_stand_in_says_it_is_not_the_homeworks_model(on_colab, request,
                                                                      tmp_path, monkeypatch,
                                                                      capsys):
    from vae_helpers import runs

    if on_colab:
        request.getfixturevalue("fake_colab")
    trained = []
    monkeypatch.setattr(runs, "train_run", lambda folder, **kw: trained.append((folder, kw)))
    folder, source = notebook.homework_run(tmp_path / "run", 5)
    line = capsys.readouterr().out
    assert folder == tmp_path / "run" / "homework_stand_in" and source == "a 5-epoch stand-in"
    assert trained[0][1]["epochs"] == 5
    assert "training a 5-epoch stand-in, NOT the homework's model" in line
    assert ("this Colab runtime did not run it" in line) == on_colab
