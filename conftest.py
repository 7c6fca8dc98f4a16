"""How pytest runs this repository: the test tiers, and nbval at a pipeline profile.

Tiers (markers registered in ``pyproject.toml``; ``--strict-markers``):

``unit``
    tests of the package that execute no course notebook (minutes in all);
``notebooks``
    nbval over ``notebooks/`` and the tests that execute the course notebooks;
``slow``
    what takes too long for every change (a fresh install, full-size runs, the notebooks
    rendered in a browser): ``make test-full``.

Every test in ``tests/`` names exactly one tier (a module's ``pytestmark`` or a mark of
its own); collection stops with the names of the tests that do not. nbval's items are in
the ``notebooks`` tier.

nbval executes the committed notebooks and compares the outputs of the cells tagged
``nbval-check-output``. ``--notebook-profile`` chooses the sizes it executes them at:

``smoke`` (default)
    the pipeline's smoke profile (``pipeline.PROFILES``): its values are assigned at the
    end of each notebook's ``parameters`` cell, in memory, as papermill injects them; the
    files are not changed. Cells also tagged ``reference-run`` compare the reference
    run's numbers and are executed without comparing their output. The run directories
    go to ``runs/nbval-smoke/``, emptied first.
``full``
    the committed parameters (the reference run); every checked cell is compared. The run
    directories go to ``runs/nbval/``, kept between sessions so that a finished training
    run is read instead of trained again.

``--notebook-runs DIR`` puts the run directories elsewhere (the kernels'
``$VAE_RUNS_ROOT``). Under pytest-xdist (``-n 2`` in ``make test``) the notebooks run in
one worker, in order, since each reads the run directory of the ones before it, followed by
the tests of the notebooks tier (``NOTEBOOK_TESTS``), which reuse what they executed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
TIERS = ("unit", "notebooks", "slow")
REFERENCE_TAG = "reference-run"
NOTEBOOK_RUNS = {"smoke": ROOT / "runs" / "nbval-smoke", "full": ROOT / "runs" / "nbval"}
NOTEBOOK_GROUP = "notebooks"
NOTEBOOK_TESTS = ("tests/test_grading_homework.py", "tests/test_nbval_smoke.py",
                  "tests/test_grading_full.py")
"""The test modules that reuse what nbval executed (the notebooks tier, and the full-size
grade of the slow tier): they run after nbval, in its worker."""
EXECUTED = pytest.StashKey[dict]()  # stage: cells that passed
CELLS = pytest.StashKey[dict]()  # stage: cells collected


def pytest_addoption(parser):
    group = parser.getgroup("course notebooks")
    group.addoption("--notebook-profile", choices=("smoke", "full"), default="smoke",
                    help="sizes nbval executes the notebooks at: the pipeline's smoke profile "
                         "(default) or the committed parameters (full)")
    group.addoption("--notebook-runs", default=None, metavar="DIR",
                    help="folder of the notebooks' run directories (default runs/nbval-smoke, "
                         "emptied first, or runs/nbval for the full profile)")


def pytest_configure(config):
    config.stash[EXECUTED] = {}
    config.stash[CELLS] = {}


def notebook_runs(config) -> Path:
    """The folder the notebooks' kernels resolve their run directories against."""
    chosen = config.getoption("notebook_runs")
    return Path(chosen).resolve() if chosen else NOTEBOOK_RUNS[config.getoption("notebook_profile")]


def _nbval_cell_type():
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: no notebook items to handle
        return ()
    return IPyNbCell


def pytest_collection_modifyitems(config, items):
    from vae_helpers.course import pipeline

    profile = config.getoption("notebook_profile")
    cell_type = _nbval_cell_type()
    injected, untiered, misplaced = {}, [], []
    for item in items:
        if cell_type and isinstance(item, cell_type):
            item.add_marker(pytest.mark.notebooks)
            counts = config.stash[CELLS]
            counts[item.path.stem] = counts.get(item.path.stem, 0) + 1
            tags = item.cell.metadata.get("tags", [])
            if "parameters" in tags:
                values = injected.setdefault(
                    item.path, pipeline.profile_parameters(item.path, profile))
                if values:
                    item.cell.source += (f"\n# the {profile} profile's values (nbval)\n"
                                         + "".join(f"{k} = {v!r}\n" for k, v in values.items()))
            if profile != "full" and REFERENCE_TAG in tags:
                item.options["check"] = False
            continue
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        if len(tiers) != 1:
            untiered.append(f"{item.nodeid} ({', '.join(sorted(tiers)) or 'no tier'})")
        elif "notebooks" in tiers and _module(item.nodeid) not in NOTEBOOK_TESTS:
            misplaced.append(item.nodeid)
    if untiered:
        raise pytest.UsageError(
            "every test names exactly one tier (pytestmark = pytest.mark.unit, notebooks or "
            "slow); these do not:\n  " + "\n  ".join(untiered))
    if misplaced:
        raise pytest.UsageError(
            "tests of the notebooks tier run in the notebooks' worker: add their module to "
            "NOTEBOOK_TESTS in conftest.py:\n  " + "\n  ".join(misplaced))


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (``-n``): each worker runs whole test modules, so a module's fixtures
    are made once; the notebooks, then the modules of ``NOTEBOOK_TESTS``, run in order in
    one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return NOTEBOOK_GROUP if module.endswith(".ipynb") or module in NOTEBOOK_TESTS \
                else module

    return TierScheduling(config, log)


def _mnist_available() -> bool:
    return bool(os.environ.get("VAE_MNIST")) or (
        Path.home() / ".keras" / "datasets" / "mnist.npz").is_file()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """A notebook's kernel starts with the setup of its first cell: it gets the run folder
    and text progress lines; without MNIST the cells are skipped with the reason."""
    cell_type = _nbval_cell_type()
    if not (cell_type and isinstance(item, cell_type)):
        return (yield)
    if not _mnist_available():
        pytest.skip("VAE_MNIST is not set: the notebooks load the real MNIST")
    config = item.config
    runs = notebook_runs(config)
    if not config.stash[EXECUTED] and config.getoption("notebook_runs") is None \
            and config.getoption("notebook_profile") == "smoke":
        shutil.rmtree(runs, ignore_errors=True)  # a smoke run starts from nothing
    config.stash[EXECUTED].setdefault(item.path.stem, 0)
    saved = {k: os.environ.get(k) for k in ("VAE_RUNS_ROOT", "VAE_PROGRESS")}
    runs.mkdir(parents=True, exist_ok=True)
    os.environ.update(VAE_RUNS_ROOT=str(runs), VAE_PROGRESS="text")
    try:
        return (yield)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    cell_type = _nbval_cell_type()
    if call.when == "call" and cell_type and isinstance(item, cell_type) and report.passed:
        item.config.stash[EXECUTED][item.path.stem] += 1
    return report


@pytest.fixture(scope="session")
def notebooks_executed(request):
    """The course notebooks nbval executed in this process so far, every cell passing.

    Returns:
        ``(profile, runs, stages)``: the profile, the folder of their run directories
        (``runs / "runs/homework"`` is the one they share), and the stages whose cells all
        executed and passed.
    """
    config = request.config
    cells = config.stash[CELLS]
    passed = config.stash[EXECUTED]
    complete = sorted(stage for stage, n in passed.items() if n == cells.get(stage))
    return config.getoption("notebook_profile"), notebook_runs(config), complete
