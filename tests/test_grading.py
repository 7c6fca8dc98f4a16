"""Tests of vae_helpers.grading.grader and .batch on small stand-in notebooks.

The stand-ins record every deliverable of the homework from random numbers (no
TensorFlow), so a grade takes seconds. One batch, graded once for the module,
holds a good submission and every kind of hostile one: each must end as a failed
check with a clear reason, the good one must still pass, and nothing outside a
submission's own working directory may change. With bubblewrap available the
batch runs sandboxed; without it (``--sandbox off``, said so in the grades) the
attacks on other files are left out, since nothing would stop them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import vae_helpers
from vae_helpers.__main__ import main
from vae_helpers.grading import batch, gradebook, grader, rubric, sandbox

pytestmark = pytest.mark.unit

PACKAGE = Path(vae_helpers.__file__).resolve().parent
SECRET = ("VAE_GRADER_TEST_SECRET", "s3cret-token-of-the-grader")
SNOOP = '''
import json, os, vae_helpers
def attempt(action, path):
    try:
        return sorted(os.listdir(path)) if action == "list" else open(path).read()[:20]
    except OSError as err:
        return err.strerror
print(json.dumps({"environ": dict(os.environ), "shadow": attempt("read", "/etc/shadow"),
                  "root": attempt("list", "/root"), "home": attempt("list", "/home"),
                  "beside": attempt("list", os.path.dirname(os.path.dirname(
                      os.path.realpath(vae_helpers.__file__))))}))
'''
FIGURES = '''
import matplotlib.pyplot as plt
import numpy as np
from vae_helpers import plots
from vae_helpers.course import record
record.set_run_dir(run_dir)
rng = np.random.default_rng(0)
for name, n in [("real_10x10", 10), ("samples_10x10", 10), ("reconstructions_10x10", 10),
                ("manifold_20x20", 20)]:
    record.figure(name, plots.plot_grid(rng.random((n * n, 784)), n, n))
record.figure("latent_scatter", plots.plot_latent_scatter(rng.normal(size=(100, 2)),
                                                          rng.integers(0, 10, 100)))
record.array("latent_means", rng.normal(size=(100, 2)))
plt.close("all")
'''
METRICS = '''
from vae_helpers.course import record
record.set_run_dir(run_dir)
record.metric("test_elbo", 140.0 + offset, n_test=500)
record.metric("iwae_log_likelihood", 150.0 + offset, k=16)
record.model_spec({"latent_dim": latent_dim, "hidden_units": [512], "hidden_activation": "relu",
                   "output_activation": "sigmoid", "likelihood": "gaussian", "prior": "normal",
                   "num_parameters": 807701, "nonnegative_variances": True})
record.history([{"epoch": e, "train_elbo": 100.0 + e, "test_elbo": 95.0 + e}
                for e in range(1, epochs + 1)])
'''
# The stand-ins record no weights: here the spec and the IWAE value are taken as recorded
# (grading from weights is tested in test_grading_homework.py). They have no student module
# either: the hidden tests are off here (tested in test_hidden.py and, through the grader, in
# test_grading_homework.py), except in the test of a submission without a module.
TASKS = 'tasks = ["1a", "1b", "1c", "1d", "2a", "4a"]'
assert TASKS in rubric.DEFAULT.read_text()
RUBRIC = (rubric.DEFAULT.read_text().split("[parameters]")[0].replace(TASKS, "tasks = []")
          .replace('"weights"]', '"model_spec"]').replace("recompute = true", "recompute = false")
          .replace("reported = true", "reported = false")
          + '''
[parameters]
epochs = 2
not_declared = 5

[limits]
time_limit = 30
memory_mb = 1500
disk_mb = 64
output_mb = 2
file_mb = 64
submission_mb = 5
processes = 24
''')


def notebook(path: Path, *cells: str, params: str | None = None) -> Path:
    nb_cells = [new_code_cell(params, metadata={"tags": ["parameters"]})] if params else []
    nb_cells += [new_code_cell(c) for c in cells]
    nbformat.write(new_notebook(cells=nb_cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), path)
    return path


def good_notebook(path: Path, offset: float = 0.0) -> Path:
    """One notebook that records everything."""
    return notebook(path, FIGURES, METRICS,
                    params=f'run_dir = "runs/x"\noffset = {offset}\nlatent_dim = 2\nepochs = 9\n')


def snapshot(*folders: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A reference run, a rubric and a data file, shared by the module."""
    root = tmp_path_factory.mktemp("grading")
    reference = root / "reference"
    with pytest.MonkeyPatch.context() as patch:
        from vae_helpers.course import record

        patch.delenv(record.RECORD_DIR_ENV, raising=False)
        patch.setattr(record, "_state", {})
        namespace = {"run_dir": str(reference), "offset": 0.0, "latent_dim": 2, "epochs": 2}
        exec(FIGURES + METRICS, namespace)
    (root / "rubric.toml").write_text(RUBRIC)
    (root / "mnist.npz").write_bytes(b"stand-in: the stand-in notebooks do not read it")
    return {"root": root, "reference": reference, "rubric": rubric.load(root / "rubric.toml"),
            "data": root / "mnist.npz"}


def hostile_submissions(folder: Path, setup: dict, sandboxed: bool) -> None:
    alice = folder / "alice"
    alice.mkdir(parents=True)
    notebook(alice / "01_figures.ipynb", FIGURES, params='run_dir = "runs/x"\n')
    notebook(alice / "02_metrics.ipynb", METRICS,
             params='run_dir = "runs/x"\noffset = 0.0\nlatent_dim = 2\nepochs = 9\n')
    notebook(folder / "raises.ipynb", "raise RuntimeError('the student code failed')")
    notebook(folder / "loops.ipynb",
             "while True:\n    try:\n        pass\n    except KeyboardInterrupt:\n        pass")
    notebook(folder / "prints.ipynb",
             "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 2**20)")
    notebook(folder / "hog.ipynb",
             "hoard = []\nfor _ in range(80):\n    hoard.append(b'x' * 100 * 2**20)")
    notebook(folder / "fills.ipynb",  # writes until the disk is full, at 100 MB/s
             "import time\nfor i in range(10**6):\n    open(f'f{i}', 'wb').write(bytes(2**20))\n"
             "    time.sleep(0.01)")
    notebook(folder / "badrecords.ipynb", '''
import json, os
run = os.environ["VAE_RECORD_DIR"]
os.makedirs(f"{run}/records")
open(f"{run}/records/real_10x10.png", "wb").write(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(5 * 2**20))
os.symlink("/etc/passwd", f"{run}/records/samples_10x10.png")
figure = {"kind": "figure", "images": [[289, 289]]}
json.dump({"records": {
    "test_elbo": {"kind": "metric", "value": float("nan")},
    "iwae_log_likelihood": {"kind": "metric", "value": "150.0", "details": {"k": 16}},
    "model_spec": {"kind": "spec", "value": {"latent_dim": "2"}},
    "real_10x10": figure, "samples_10x10": figure}}, open(f"{run}/records.json", "w"))
''', "from vae_helpers.course import record\nrecord.metric('junk', float('nan'))")
    if sandboxed:
        out = setup["root"] / "batch"
        targets = [setup["reference"] / "records.json", PACKAGE / "__init__.py",
                   alice / "01_figures.ipynb", out / "batch.json", out / "alice" / "stolen.txt"]
        notebook(folder / "attack.ipynb",
                 f"print(open({str(setup['reference'] / 'records.json')!r}).read())",
                 f"import shutil\nshutil.rmtree({str(setup['reference'])!r})",
                 *[f"open({str(t)!r}, 'a').write('overwritten')" for t in targets])
    notebook(folder / "forks.ipynb",  # a fork loop: each child becomes a small sleep
             "import os, time\nfor i in range(500):\n    if os.fork() == 0:\n"
             "        os.execv('/bin/sleep', ['sleep', '300'])\n    time.sleep(0.02)\n"
             "time.sleep(300)")
    notebook(folder / "snoop.ipynb", SNOOP)
    (folder / "corrupt.ipynb").write_text("{not json")
    (folder / "fake.ipynb").write_text('{"hello": 1}')
    (folder / "bulky").mkdir()
    (folder / "bulky" / "data.bin").write_bytes(bytes(6 * 2**20))
    good_notebook(folder / "bulky" / "hw.ipynb")
    (folder / "nobody").mkdir()
    (folder / "notes.txt").write_text("not a submission")


def usable_box() -> sandbox.Sandbox:
    """Bubblewrap where it works; else the sandbox turned off, as a user must ask for."""
    found = sandbox.detect()
    return found if found.isolated else sandbox.probe("off")


@pytest.fixture(scope="module")
def hostile_batch(setup):
    box = usable_box()
    submissions = setup["root"] / "submissions"
    hostile_submissions(submissions, setup, box.isolated)
    before = snapshot(setup["reference"], PACKAGE, submissions)
    messages = []
    out = setup["root"] / "batch"
    with pytest.MonkeyPatch.context() as patch:  # in the grader's environment, not the notebook's
        patch.setenv(*SECRET)
        rows = batch.grade_batch(submissions, setup["reference"], out, rubric=setup["rubric"],
                                 data=setup["data"], jobs=2, sandbox=box, log=messages.append)
    grades = {r["student"]: json.loads((out / r["student"] / "grade.json").read_text())
              for r in rows if r["status"] != "ERROR"}
    return {"rows": {r["student"]: r for r in rows}, "grades": grades, "out": out,
            "messages": messages, "before": before, "box": box, "submissions": submissions,
            "after": snapshot(setup["reference"], PACKAGE, submissions)}


def failures(grade: dict) -> dict:
    return {c["name"]: c["reason"] for c in grade["checks"] if not c["passed"]}


def test_the_good_submission_passes_among_the_hostile_ones(hostile_batch, setup):
    alice = hostile_batch["grades"]["alice"]
    assert failures(alice) == {}
    assert hostile_batch["rows"]["alice"]["status"] == "PASS"
    first, second = alice["notebooks"]  # a folder: its notebooks in name order, one run_dir
    assert first["notebook"] == "01_figures.ipynb" and second["notebook"] == "02_metrics.ipynb"
    run_dir = str(hostile_batch["out"] / "alice" / "work" / "run")
    assert first["parameters"] == {"run_dir": run_dir}  # only what each notebook declares
    assert second["parameters"] == {"epochs": 2, "run_dir": run_dir}
    assert alice["sandbox"]["kind"] == hostile_batch["box"].kind
    summary = alice["summary"]
    assert {k: summary[k] for k in ("passed", "required_passed", "required", "failed")} == {
        "passed": True, "required_passed": 23, "required": 23, "failed": []}
    worth = {c["name"]: setup["rubric"].max_points(c["name"], c["required"])
             for c in alice["checks"]}
    assert summary["score"] == summary["max_score"] == sum(worth.values()) > 0
    assert all(c["points"] == c["max_points"] == worth[c["name"]] for c in alice["checks"])
    assert summary["manual_max"] == sum(m["points"] for m in summary["manual"]) > 0
    assert alice["format"] == grader.FORMAT == "vae_helpers.grade/2"


def test_every_hostile_submission_fails_with_a_clear_reason(hostile_batch, setup):
    grades = hostile_batch["grades"]
    reasons = {student: failures(grade).get("execution") for student, grade in grades.items()}
    assert reasons["raises"] == "raises.ipynb: In [1]: RuntimeError: the student code failed"
    assert reasons["loops"] == "loops.ipynb: did not finish within its time limit of 30 s"
    assert reasons["prints"] == "prints.ipynb: its outputs went over 2 MB and were cut"
    assert reasons["hog"] == ("hog.ipynb: used more than the memory cap of 1500 MB and was "
                              "stopped")
    assert reasons["fills"] == ("fills.ipynb: wrote more than the disk cap of 64 MB (or 100,000 "
                                "files) into its working directory and was stopped")
    assert reasons["corrupt"] == ("corrupt.ipynb: not a readable notebook (Expecting property "
                                  "name enclosed in double quotes: line 1 column 2 (char 1))")
    assert reasons["fake"] == ("fake.ipynb: not a Jupyter notebook (no list of cells in "
                               "nbformat 4)")
    assert reasons["forks"] == ("forks.ipynb: started more than the cap of 24 processes and "
                                "was stopped")
    assert reasons["bulky"] == "the submission has 6.0 MB, more than the 5 allowed"
    assert reasons["nobody"] == "the submission holds no .ipynb notebook"
    assert reasons["badrecords"] == ("badrecords.ipynb: In [2]: RecordError: junk: nan is not "
                                     "a finite number")
    for student in ("raises", "loops", "prints", "hog", "fills", "forks", "corrupt", "fake",
                    "bulky", "nobody", "snoop"):
        assert hostile_batch["rows"][student]["status"] == "FAIL"
        assert failures(grades[student])["record.test_elbo"] in (
            "no records.json: nothing was recorded", "not recorded")
    raised = {c["name"]: c for c in grades["raises"]["checks"]}  # one mistake, named first
    assert raised["execution"]["caused_by"] is None
    assert raised["record.test_elbo"]["caused_by"] == "execution"
    assert raised["metric.test_elbo"]["caused_by"] == "record.test_elbo"
    assert raised["spec.latent_dim"]["caused_by"] == "execution"  # no record.weights here
    # each failure loses its points; only the static check passes, as nothing is imported
    static = setup["rubric"].max_points("static.no_premade_vae")
    assert grades["raises"]["summary"]["score"] == static > 0
    page = (hostile_batch["out"] / "raises" / "report.html").read_text()
    assert page.count("also failed, because") == sum(
        c["caused_by"] is not None for c in raised.values())
    printed = hostile_batch["out"] / "prints" / "notebooks" / "prints.ipynb"
    assert printed.stat().st_size < 3 * 2**20  # the 200 MB were not kept
    assert "[output truncated" in printed.read_text()
    assert sorted(hostile_batch["rows"]) == sorted(
        {"alice", "raises", "loops", "prints", "hog", "fills", "forks", "snoop", "badrecords",
         "corrupt", "fake", "bulky", "nobody"}
        | ({"attack"} if hostile_batch["box"].isolated else set()))
    assert "ignored (neither a notebook nor a folder): notes.txt" in hostile_batch["messages"]


def test_the_graders_environment_and_files_do_not_reach_a_submission(hostile_batch, setup):
    executed = json.loads((hostile_batch["out"] / "snoop" / "notebooks" / "snoop.ipynb"
                           ).read_text())
    text = executed["cells"][0]["outputs"][0]["text"]
    seen = json.loads("".join(text) if isinstance(text, list) else text)
    environ = seen["environ"]
    assert environ["VAE_MNIST"] == str(setup["data"].resolve())  # the listing is real
    assert SECRET[0] not in environ and SECRET[1] not in json.dumps(environ)
    work = hostile_batch["out"] / "snoop" / "work"
    box = hostile_batch["box"]
    expected = grader._environment(box, work, Path(environ["VAE_MNIST"]))
    assert {k: environ[k] for k in expected} == expected
    # the rest is what the kernel sets for itself (colours, pagers, its parent, its backend)
    kernel_own = {"CLICOLOR", "CLICOLOR_FORCE", "FORCE_COLOR", "GIT_PAGER", "PAGER", "TERM",
                  "JPY_PARENT_PID", "JPY_SESSION_NAME", "MPLBACKEND", "PYDEVD_USE_FRAME_EVAL",
                  "PWD"}
    assert set(environ) - set(expected) <= kernel_own, set(environ) - set(expected)
    if not box.isolated:
        return
    assert seen["shadow"] == "No such file or directory"
    for folder in ("/root", "/home"):
        ways = sorted({p.relative_to(folder).parts[0] for p in sandbox.environment_paths()
                       if p.is_relative_to(folder)})
        assert seen[folder[1:]] == (ways or "No such file or directory")
    assert "notebooks" not in seen["beside"] and "runs" not in seen["beside"]


def test_the_static_check_reads_every_submission_before_it_runs(hostile_batch):
    grades = hostile_batch["grades"]
    reasons = {student: failures(grade).get("static.no_premade_vae")
               for student, grade in grades.items()}
    assert reasons["alice"] is None and reasons["raises"] is None
    assert reasons["corrupt"].startswith("corrupt.ipynb: not a readable notebook (")
    assert reasons["fake"] == ("fake.ipynb: not a Jupyter notebook (no list of cells): hand "
                               "in Python the check can read")
    assert reasons["bulky"] == ("not checked: the submission has 6.0 MB, more than the 5 "
                                "allowed")


def test_without_a_student_module_the_hidden_checks_fail_and_nothing_crashes(setup, tmp_path):
    with_hidden = tmp_path / "rubric.toml"
    with_hidden.write_text(RUBRIC.replace("tasks = []", TASKS))
    grade = grader.grade(good_notebook(tmp_path / "hw.ipynb"), setup["reference"],
                         tmp_path / "g", rubric=rubric.load(with_hidden), data=setup["data"],
                         sandbox=usable_box())
    assert failures(grade) == {
        **{f"hidden.{t}": "no vae_homework.py in the submission" for t in rubric.HIDDEN_TASKS},
        "static.no_premade_vae": "no vae_homework.py in the submission: the homework's model, "
                                 "its training and its math go there"}
    assert grade["hidden"]["status"] == "no module" and grade["hidden"]["seed"] >= 0
    assert grade["summary"]["required"] == 23 + 6


def test_records_written_behind_the_api_are_checked_again(hostile_batch):
    bad = failures(hostile_batch["grades"]["badrecords"])
    assert bad["record.test_elbo"] == "nan is not a finite number"
    assert bad["record.iwae_log_likelihood"] == "expected a number, got str"
    assert bad["record.model_spec"] == "the spec lacks hidden_units, " \
        "hidden_activation, output_activation, likelihood, prior, num_parameters, " \
        "nonnegative_variances"
    assert bad["record.real_10x10"] == ("real_10x10.png has 5,242,888 bytes, more than the "
                                        "4,194,304 allowed")
    assert bad["record.samples_10x10"] == ("samples_10x10.png is a symbolic link; records must "
                                           "be plain files")
    report = (hostile_batch["out"] / "badrecords" / "report.html").read_text()
    assert "root:x:0:0" not in report  # the linked file was not read


def test_nothing_outside_a_submissions_own_directory_changed(hostile_batch):
    assert hostile_batch["after"] == hostile_batch["before"]
    out = hostile_batch["out"]
    assert not (out / "alice" / "stolen.txt").exists()
    assert json.loads((out / "batch.json").read_text())["submissions"] == str(
        hostile_batch["submissions"])


def test_an_attack_on_other_files_fails_and_changes_nothing(hostile_batch):
    if not hostile_batch["box"].isolated:
        pytest.skip(f"no sandbox here ({hostile_batch['box'].note}): the attack is not run")
    attack = hostile_batch["grades"]["attack"]
    reason = failures(attack)["execution"]
    assert reason.startswith("attack.ipynb: In [1]: FileNotFoundError: [Errno 2] No such file")
    assert "more cells raised: In [2], In [3], In [4], In [5], In [6], In [7]" in reason
    errors = attack["notebooks"][0]["cell_errors"]
    # the reference run does not exist inside; what is bound is read-only
    assert errors[1].startswith("In [2]: FileNotFoundError: [Errno 2] No such file")
    assert errors[3].startswith("In [4]: OSError: [Errno 30] Read-only file system: "
                                f"'{PACKAGE / '__init__.py'}'")
    assert all(e.split(": ")[1] in ("OSError", "FileNotFoundError") for e in errors), errors


def test_the_summary_lists_every_student_with_a_link_to_the_report(hostile_batch, setup):
    out = hostile_batch["out"]
    lines = (out / "summary.csv").read_text().splitlines()
    assert lines[0] == "student,status,score,max_score,checks,failed,reason,seconds,report"
    assert len(lines) == 1 + len(hostile_batch["rows"])
    full = setup["rubric"].max_points  # alice passes all: every counting check's points
    most = sum(full(c["name"], c["required"]) for c in hostile_batch["grades"]["alice"]["checks"])
    assert lines[1].startswith(f"alice,PASS,{most},{most},23/23,,,")
    assert hostile_batch["rows"]["raises"]["reason"] == (
        "execution: raises.ipynb: In [1]: RuntimeError: the student code failed")
    header, *rows = (out / "grades.csv").read_text().splitlines()
    assert header.split(",") == gradebook.columns(setup["rubric"])
    assert [r.split(",")[0] for r in rows] == sorted(hostile_batch["rows"])
    for student, grade in hostile_batch["grades"].items():
        row = dict(zip(header.split(","), rows[sorted(hostile_batch["rows"]).index(student)]
                       .split(","), strict=True))
        assert float(row["score"]) == grade["summary"]["score"]
        results = json.loads((out / student / "results.json").read_text())
        assert results["score"] == grade["summary"]["score"]
        assert [t["name"] for t in results["tests"]] == [c["name"] for c in grade["checks"]]
    page = (out / "summary.html").read_text()
    for student in hostile_batch["rows"]:
        assert f'href="{student}/report.html"' in page
        assert (out / student / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_a_batch_started_again_grades_only_what_is_new(hostile_batch, setup, tmp_path):
    """Interrupted (a grade.json missing) and changed submissions are graded; the rest kept."""
    out, submissions = tmp_path / "batch", tmp_path / "submissions"
    shutil.copytree(hostile_batch["out"], out)
    shutil.copytree(hostile_batch["submissions"], submissions, symlinks=True)
    (out / "hog" / "grade.json").unlink()  # as if the batch had been stopped while grading it
    (submissions / "hog.ipynb").unlink()
    notebook(submissions / "hog.ipynb", "print('fixed')")
    notebook(submissions / "raises.ipynb", "print('a new version')")
    kept_before = (out / "alice" / "grade.json").read_bytes()
    messages = []
    rows = batch.grade_batch(submissions, setup["reference"], out, rubric=setup["rubric"],
                             data=setup["data"], jobs=2, sandbox=hostile_batch["box"],
                             log=messages.append)
    graded = sorted(m.split("] ")[1].split(":")[0] for m in messages if m.startswith("["))
    assert graded == ["hog", "raises"]
    assert (out / "alice" / "grade.json").read_bytes() == kept_before
    again = json.loads((out / "raises" / "grade.json").read_text())
    assert again["submission"]["sha256"] == grader.submission_hash(submissions / "raises.ipynb")
    assert "execution" not in failures(again)  # the new version runs (and records nothing)
    assert sum("graded before" in m for m in messages) == len(rows) - 2


def test_a_batch_never_takes_over_a_folder_that_is_not_a_batch(setup, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    (tmp_path / "subs").mkdir()
    notebook(tmp_path / "subs" / "a.ipynb", "1")
    with pytest.raises(batch.BatchError, match="holds files that are not a batch"):
        batch.grade_batch(tmp_path / "subs", setup["reference"], out, rubric=setup["rubric"],
                          data=setup["data"], sandbox=usable_box())
    assert (out / "thesis.tex").read_text() == "precious"
    with pytest.raises(batch.BatchError, match="overlaps the submissions folder"):
        batch.grade_batch(tmp_path / "subs", setup["reference"], tmp_path / "subs" / "g",
                          rubric=setup["rubric"], data=setup["data"])
    (tmp_path / "subs" / "a").mkdir()
    with pytest.raises(batch.BatchError, match="a and a.ipynb would both be graded as 'a'"):
        batch.find_submissions(tmp_path / "subs")
    (tmp_path / "subs" / "a").rmdir()
    notebook(tmp_path / "subs" / "summary.csv.ipynb", "1")
    with pytest.raises(batch.BatchError, match="a name the batch uses for itself"):
        batch.find_submissions(tmp_path / "subs")


def test_without_a_sandbox_the_batch_warns_once_and_the_grades_say_so(setup, tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("a", "b", "c"):
        (subs / f"{name}.ipynb").write_text("{not json")  # nothing to execute: fast
    messages = []
    rows = batch.grade_batch(subs, setup["reference"], tmp_path / "out", rubric=setup["rubric"],
                             data=setup["data"], sandbox="off", log=messages.append)
    assert [r["status"] for r in rows] == ["FAIL"] * 3
    warnings = [m for m in messages if m.startswith("warning:")]
    assert warnings == ["warning: the sandbox is off (--sandbox off): submissions run as plain "
                        "child processes with the grader's permissions (they can read and "
                        "change whatever the grader can)"]
    grade = json.loads((tmp_path / "out" / "a" / "grade.json").read_text())
    assert grade["sandbox"] == {"kind": "none", "isolated": False,
                                "note": "the sandbox is off (--sandbox off)"}
    page = (tmp_path / "out" / "a" / "report.html").read_text()
    assert ('<p class="alert">Not isolated: the sandbox is off (--sandbox off); the submission '
            "ran with the grader&#x27;s permissions</p>") in page
    assert "<b>OFF</b>" in page


def test_without_a_working_sandbox_grading_refuses_unless_it_is_turned_off(setup, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setattr(sandbox, "_probed", {"result": sandbox.Sandbox(
        "none", note="bubblewrap (bwrap) is not installed")})
    (tmp_path / "subs").mkdir()
    good = good_notebook(tmp_path / "subs" / "hw.ipynb")
    expected = ("cannot grade in a sandbox: bubblewrap (bwrap) is not installed; install "
                "bubblewrap (Debian: apt-get install bubblewrap; in a container, allow "
                "unprivileged user namespaces) or pass --sandbox off to grade without isolation")
    with pytest.raises(sandbox.SandboxError) as info:
        grader.grade(good, setup["reference"], tmp_path / "g", rubric=setup["rubric"],
                     data=setup["data"])
    assert str(info.value) == expected
    with pytest.raises(sandbox.SandboxError):
        batch.grade_batch(tmp_path / "subs", setup["reference"], tmp_path / "b",
                          rubric=setup["rubric"], data=setup["data"])
    common = ["--reference", str(setup["reference"]), "--rubric",
              str(setup["root"] / "rubric.toml"), "--data", str(setup["data"])]
    for target in ([str(good), "--out", str(tmp_path / "g")],
                   ["--batch", str(tmp_path / "subs"), "--out", str(tmp_path / "b")]):
        assert main(["grade", *target, *common]) == 1
        assert capsys.readouterr().err == f"error: {expected}\n"
    assert not (tmp_path / "g").exists() and not (tmp_path / "b").exists()


def test_the_grader_refuses_what_it_cannot_grade(setup, tmp_path, monkeypatch):
    monkeypatch.delenv("VAE_MNIST", raising=False)
    good = good_notebook(tmp_path / "hw.ipynb")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(grader.GradingError, match="empty_run: no records.json"):
        grader.grade(good, empty, tmp_path / "g", rubric=setup["rubric"], data=setup["data"])
    with pytest.raises(grader.GradingError, match="no MNIST file"):
        grader.grade(good, setup["reference"], tmp_path / "g", rubric=setup["rubric"],
                      data="")
    with pytest.raises(grader.GradingError, match="overlaps the reference run"):
        grader.grade(good, setup["reference"], setup["reference"] / "g",
                      rubric=setup["rubric"], data=setup["data"], sandbox=usable_box())
    rubric_without = rubric.load(setup["root"] / "rubric.toml")
    rubric_without.metrics["bits_per_dim"] = {"tolerance": 1.0, "same_details": []}
    with pytest.raises(grader.GradingError, match="has no valid bits_per_dim to compare"):
        grader.grade(good, setup["reference"], tmp_path / "g", rubric=rubric_without,
                      data=setup["data"])
    assert not (tmp_path / "g").exists()


def test_the_command_line_grades_one_submission(setup, tmp_path, capsys):
    good = good_notebook(tmp_path / "hw.ipynb", offset=2.5)  # within the tolerances
    out = tmp_path / "grade"
    args = ["grade", str(good), "--reference", str(setup["reference"]), "--out", str(out),
            "--rubric", str(setup["root"] / "rubric.toml"), "--data", str(setup["data"]),
            *([] if sandbox.detect().isolated else ["--sandbox", "off"])]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    grade = json.loads((out / "grade.json").read_text())
    most, manual = grade["summary"]["max_score"], setup["rubric"].manual
    assert printed[-3] == f"PASS: 23 of 23 required checks passed, {most} of {most} points"
    assert printed[-2] == (f"graded by hand, still open: {len(manual)} answers, "
                           f"{sum(m['points'] for m in manual)} points")
    assert printed[-1] == f"report written to {out}/report.html"
    assert grade["submission"]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert grade["rubric"]["sha256"] == setup["rubric"].sha256
    assert set(grade["versions"]) >= {"python", "papermill", "vae_helpers"}
    assert grade["timings"]["total_seconds"] > 0 and grade["notebooks"][0]["seconds"] > 0
    page = (out / "report.html").read_text()
    assert "+2.50" in page and "PASS" in page
    # an existing grade is kept unless --force
    assert main(args) == 1
    assert "already holds files; pass --force" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.ipynb"
    corrupt.write_text("{")
    assert main([*args[:1], str(corrupt), *args[2:4], "--out", str(tmp_path / "g2"),
                 "--rubric", str(setup["root"] / "rubric.toml"), "--data", str(setup["data"]),
                 "--sandbox", "off"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("warning: the sandbox is off") == 1
    assert "FAIL: 0 of 23 required checks passed" in captured.out


@pytest.mark.parametrize("extra, message", [
    ([], "give either a SUBMISSION or --batch DIR"),
    (["x.ipynb", "--batch", "d"], "give either a SUBMISSION or --batch DIR"),
    (["x.ipynb", "--jobs", "2"], "--jobs and --dask-scheduler go with --batch"),
    (["--batch", "d", "--jobs", "0"], "argument --jobs: expected a positive integer"),
    (["x.ipynb", "--sandbox", "maybe"], "argument --sandbox: invalid choice"),
    (["x.ipynb", "--sandbox", "auto"], "invalid choice: 'auto' (choose from"),
])
def test_bad_options_are_one_line_errors_with_exit_code_2(extra, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["grade", *extra, "--reference", "r", "--out", "o"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("\n") == 1


def test_runtime_errors_are_one_line_errors_with_exit_code_1(setup, tmp_path, capsys):
    bad_rubric = tmp_path / "r.toml"
    bad_rubric.write_text("[limits]\ntime = 1\n")
    for args, message in (
            (["--rubric", str(bad_rubric)], "[limits] unknown key time"),
            (["--reference", str(tmp_path / "none")], "is not a directory"),
            (["--batch", str(tmp_path / "none")], "is not a folder of submissions")):
        base = {"--reference": str(setup["reference"]), "--out": str(tmp_path / "o")}
        command = ["grade", "--data", str(setup["data"])]
        if "--batch" not in args:
            command.append(str(tmp_path / "x.ipynb"))
        for key, value in base.items():
            if key not in args:
                command += [key, value]
        assert main(command + args) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_dask_cluster_grades_a_batch(setup, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    subs = tmp_path / "subs"
    subs.mkdir()
    good_notebook(subs / "ann.ipynb")
    good_notebook(subs / "bob.ipynb", offset=20.0)  # beyond the tolerances
    box = usable_box()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        rows = batch.grade_batch(subs, setup["reference"], tmp_path / "out",
                                 rubric=setup["rubric"], data=setup["data"],
                                 scheduler=cluster.scheduler_address, sandbox=box,
                                 log=lambda _: None)
    assert [(r["student"], r["status"]) for r in rows] == [("ann", "PASS"), ("bob", "FAIL")]
    bob = json.loads((tmp_path / "out" / "bob" / "grade.json").read_text())
    assert bob["summary"]["failed"] == ["metric.test_elbo", "metric.iwae_log_likelihood"]
    monkeypatch.setattr(batch, "DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(batch.BatchError, match="cannot reach the dask scheduler"):
        batch.grade_batch(subs, setup["reference"], tmp_path / "out2", rubric=setup["rubric"],
                          data=setup["data"], scheduler="tcp://127.0.0.1:9", sandbox=box,
                          log=lambda _: None)


def test_a_stopped_notebook_costs_only_its_own_records(setup, tmp_path):
    """03 out of time: what it recorded before still counts, and 04 still runs and is graded."""
    bob = tmp_path / "bob"
    bob.mkdir()
    notebook(bob / "03_train.ipynb", METRICS, "import time\nwhile True:\n    time.sleep(1)",
             params='run_dir = "runs/x"\noffset = 0.0\nlatent_dim = 2\nepochs = 9\n')
    notebook(bob / "04_analysis.ipynb", FIGURES, params='run_dir = "runs/x"\n')
    quick = tmp_path / "rubric.toml"
    quick.write_text(RUBRIC.replace("time_limit = 30", "time_limit = 15"))
    grade = grader.grade(bob, setup["reference"], tmp_path / "out", rubric=rubric.load(quick),
                         data=setup["data"], sandbox=usable_box())
    assert [n["status"] for n in grade["notebooks"]] == ["timeout", "ok"]
    assert failures(grade).keys() == {"execution"}
    assert failures(grade)["execution"].startswith("03_train.ipynb: ")
    assert "15" in failures(grade)["execution"]
