"""What the course notebooks share: set-up, run directories, and printed numeric checks.

A notebook's setup cell seeds (``set_seed``) and calls ``check_versions``; its
parameters cell names a run directory, which ``resolve_run_dir`` turns into an
absolute path the same way in Jupyter, under papermill and on Colab;
``check_close`` prints one stable ``PASS`` / ``FAIL`` line per comparison, the
kind of output nbval compares; ``check_rejects`` shows that such a check can fail,
and ``mean_and_se`` gives a Monte Carlo estimate with its standard error.

On Colab: a notebook's first code cell installs the package from a GitHub
repository at a tag (``install_spec``), its badge opens it there (``colab_url``,
``colab_badge``); ``python -m vae_helpers colab`` writes both
(``vae_helpers.course.colab``). Colab gives every notebook a fresh runtime, so the
handouts call ``use_drive`` first: it keeps the student module and the run
directory in ``DRIVE_FOLDER`` on the student's Google Drive, where ``03_train``'s
weights reach ``04_analysis`` and ``05_discussion``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = "vae-helpers/vae-course"
"""The GitHub repository (owner/name) the committed notebooks' Colab badges and install
cells point to (``python -m vae_helpers colab --repo`` sets another)."""

DEFAULT_REF = "main"
"""The git ref (branch or tag) the committed notebooks point to; a course publishes a tag
with ``python -m vae_helpers colab --ref TAG``."""

NOTEBOOK_PATH = "notebooks"
"""The folder of the committed notebooks in the repository."""

DRIVE_FOLDER = "MyDrive/vae-course"
"""The folder of the student's Google Drive, under the mount point, that holds
``vae_homework.py`` and the run directories on Colab (``use_drive``)."""

DRIVE_MOUNT = "/content/drive"
"""Where Colab mounts Google Drive."""

COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"

TESTED_VERSIONS = {"tensorflow": "2.21", "tensorflow_probability": "0.25"}
"""The TensorFlow / TFP release pair the notebooks are tested with (requirements.txt)."""

RUNS_ROOT_ENV = "VAE_RUNS_ROOT"


def colab_url(notebook: str, ref: str = DEFAULT_REF, repository: str = REPOSITORY,
              path: str = NOTEBOOK_PATH) -> str:
    """The "Open in Colab" address of ``path/notebook`` in ``repository`` (owner/name) at
    ``ref`` (a branch or a tag); ``path`` ``""`` or ``"."`` is the repository's top
    folder."""
    folder = path.strip("/")
    where = f"{folder}/{notebook}" if folder not in ("", ".") else notebook
    return f"https://colab.research.google.com/github/{repository}/blob/{ref}/{where}"


def colab_badge(url: str) -> str:
    """The markdown of an "Open in Colab" badge that opens ``url``."""
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({url})"


def install_spec(ref: str = DEFAULT_REF, repository: str = REPOSITORY) -> str:
    """What a notebook's Colab install cell hands to pip: the package from ``repository``
    at ``ref``."""
    return f"vae_helpers @ git+https://github.com/{repository}@{ref}"


def on_colab() -> bool:
    """Whether this runs on Colab (its ``google.colab`` module is loaded)."""
    import sys

    return "google.colab" in sys.modules


def use_drive(folder: str = DRIVE_FOLDER, mount_point: str = DRIVE_MOUNT) -> Path | None:
    """On Colab: mount Google Drive and work in its course folder; elsewhere, nothing.

    Colab runs every notebook on a fresh runtime, whose disk is gone when it ends. So
    that ``03_train``'s weights reach ``04_analysis`` and ``05_discussion``, the
    handouts call this first: Drive is mounted at ``mount_point``, the course folder
    ``mount_point/folder`` (``MyDrive/vae-course``) is created if needed and becomes
    the working directory, the folder ``import vae_homework`` searches first and the
    base of relative run directories (``$VAE_RUNS_ROOT``), so ``runs/homework`` is
    ``MyDrive/vae-course/runs/homework``.

    Returns:
        The course folder on Colab, ``None`` elsewhere.

    Raises:
        FileNotFoundError: the course folder holds no ``vae_homework.py`` (the student
            uploads the handouts' copy there once; every notebook then edits and
            imports that one).
    """
    import sys

    if not on_colab():
        return None
    from google.colab import drive  # only on Colab

    drive.mount(mount_point)
    course = Path(mount_point) / folder
    course.mkdir(parents=True, exist_ok=True)
    os.environ[RUNS_ROOT_ENV] = str(course)
    os.chdir(course)
    if str(course) not in sys.path:
        sys.path.insert(0, str(course))
    if not (course / "vae_homework.py").is_file():
        raise FileNotFoundError(
            f"{course} has no vae_homework.py: upload the handouts' vae_homework.py to "
            f"{folder} on your Google Drive, then run this cell again")
    print(f"working in {course} on Google Drive: vae_homework.py and the run directories "
          "are kept there")
    return course


def project_root(start=None) -> Path | None:
    """The checkout of this project that contains ``start`` (default: the working
    directory), found by its ``pyproject.toml``; ``None`` outside a checkout."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and 'name = "vae_helpers"' in pyproject.read_text(errors="ignore"):
            return folder
    return None


def resolve_run_dir(run_dir) -> Path:
    """The absolute path of a notebook's ``run_dir`` parameter.

    Absolute paths are kept. A relative path is taken relative to
    ``$VAE_RUNS_ROOT`` if set, else to the project's checkout when the notebook
    runs inside one (so ``runs/homework`` is the same folder from ``notebooks/``
    in Jupyter, under the pipeline, and for ``make run``), else to the working
    directory (Colab: ``/content``).
    """
    path = Path(run_dir).expanduser()
    if path.is_absolute():
        return path
    root = os.environ.get(RUNS_ROOT_ENV)
    base = Path(root) if root else (project_root() or Path.cwd())
    return (base / path).resolve()


def display_path(path) -> str:
    """``path`` for printing: relative to ``$VAE_RUNS_ROOT`` when set and inside it
    (the base ``resolve_run_dir`` used), else to the project's checkout when inside
    it, else absolute. A run directory parameter ``runs/homework`` therefore prints
    as ``runs/homework/...`` wherever the runs are kept."""
    path = Path(path).resolve()
    runs_root = os.environ.get(RUNS_ROOT_ENV)
    for root in (Path(runs_root).resolve() if runs_root else None, project_root()):
        if root is not None and path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def homework_run(run_dir, fallback_epochs: int, seed: int = 0,
                 command: str = "notebook (stand-in)") -> tuple[Path, str]:
    """The folder of the homework model that ``03_train`` trained into ``run_dir``.

    If ``run_dir/homework`` holds no finished run (``03_train`` was not run into this
    run directory), a stand-in of the same model is trained for ``fallback_epochs``
    epochs into ``run_dir/homework_stand_in`` (or read from there if it is complete),
    and a line says so: figures made from it are not the homework's results. (On Colab,
    where every notebook has a fresh runtime, the answer key always takes this path; the
    handouts keep the run directory on Google Drive, ``use_drive``.)

    Returns:
        ``(folder, source)``, the run's folder and a few words on where it came from.
    """
    from vae_helpers import runs

    folder = Path(run_dir) / "homework"
    if (folder / "metrics.json").exists():
        return folder, "03_train"
    folder = Path(run_dir) / "homework_stand_in"
    print(f"03_train's run is missing from {display_path(run_dir)}"
          + (" (this Colab runtime did not run it)" if on_colab() else "")
          + f": training a {fallback_epochs}-epoch stand-in, NOT the homework's model; run "
          "03_train into this run directory for the homework's results")
    runs.train_run(folder, epochs=fallback_epochs, seed=seed, iwae_k=100, resume=True,
                   command=command)
    return folder, f"a {fallback_epochs}-epoch stand-in"


def versions() -> dict:
    """The versions of the libraries the notebooks depend on."""
    from vae_helpers.runs import library_versions

    return library_versions()


def check_versions() -> None:
    """Print the TensorFlow / TFP versions and whether they are the tested pair.

    Returns nothing, so a notebook cell that ends with it shows only the printed line.

    Another release only warns: the notebooks may still work (e.g. on Colab), but
    their printed checks were made with the tested pair.
    """
    import warnings

    found = versions()
    line = ", ".join(f"{name} {found[name]}" for name in ("tensorflow", "tensorflow_probability"))
    untested = [name for name, want in TESTED_VERSIONS.items()
                if not (found[name] == want or found[name].startswith(want + "."))]
    if untested:
        warnings.warn(f"{line}: the notebooks are tested with tensorflow "
                      f"{TESTED_VERSIONS['tensorflow']}.x and tensorflow_probability "
                      f"{TESTED_VERSIONS['tensorflow_probability']}.x; results may differ",
                      stacklevel=2)
    print(f"{line} ({'the tested pair' if not untested else 'NOT the tested pair'})")


def check_close(label: str, value, reference, atol: float = 0.0, rtol: float = 0.0,
                verbose: bool = False) -> bool:
    """Print ``PASS`` or ``FAIL``: is ``|value - reference| <= atol + rtol * |reference|``
    everywhere?

    Only the verdict and the tolerance are printed (stable across machines);
    ``verbose=True`` adds the largest difference. Returns the verdict.
    """
    import numpy as np

    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape and value.size != 1 and reference.size != 1:
        raise ValueError(f"{label}: shapes differ: {value.shape} vs {reference.shape}")
    diff = np.abs(value - reference)
    bound = atol + rtol * np.abs(reference)
    ok = bool(np.all(np.isfinite(value)) and np.all(diff <= bound))
    tol = " + ".join(part for part in (f"{atol:g}" if atol else "",
                                        f"{rtol:g}·|ref|" if rtol else "") if part) or "0"
    extra = f" (largest difference {float(diff.max()):.3g})" if verbose else ""
    print(f"{'PASS' if ok else 'FAIL'}  {label}: within {tol}{extra}")
    return ok


def check(label: str, condition) -> None:
    """Print ``PASS`` or ``FAIL  label`` for a yes/no check (e.g. a test's p-value above a level).

    Returns nothing, so a notebook cell that ends with it shows only its line.
    """
    print(f"{'PASS' if bool(condition) else 'FAIL'}  {label}")


def check_rejects(label: str, value, reference, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Print ``PASS`` when ``check_close`` with the same tolerance rejects ``value``.

    A check is only worth something if it can fail: feed it a deliberately wrong
    formula and this prints ``PASS`` when the test notices. Returns nothing, so a
    notebook cell that ends with it shows only its line.
    """
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        accepted = check_close(label, value, reference, atol=atol, rtol=rtol)
    print(f"{'FAIL' if accepted else 'PASS'}  {label}: rejected by the same test")


def mean_and_se(samples, axis: int = 0):
    """The Monte Carlo mean of ``samples`` along ``axis`` and its standard error."""
    import numpy as np

    samples = np.asarray(samples, dtype=np.float64)
    return samples.mean(axis=axis), samples.std(axis=axis, ddof=1) / np.sqrt(samples.shape[axis])
