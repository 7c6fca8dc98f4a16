"""Tests of the environment files and of what importing the package does.

requirements.txt and environment.yml must pin the same packages at the same
versions; importing vae_helpers must be silent and free of side effects (no
seeding, no plotting state); CI's entry point must run the Makefile's test target.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s#;]+)$")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def requirements_pins() -> dict[str, str]:
    pins = {}
    for line in requirement_lines():
        spec = line.split("#", 1)[0].strip()
        match = PIN.match(spec)
        assert match, f"requirements.txt: not an exact `name==version` pin: {line!r}"
        name = canonical(match["name"])
        assert name not in pins, f"requirements.txt pins {name} twice"
        pins[name] = match["version"]
    return pins


def environment_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    pins = {}
    for entry in pip_sections[0]:
        if entry.startswith("-e "):  # the package itself
            continue
        match = PIN.match(entry.strip())
        assert match, f"environment.yml: not an exact `name==version` pin: {entry!r}"
        name = canonical(match["name"])
        assert name not in pins, f"environment.yml pins {name} twice"
        pins[name] = match["version"]
    return pins


# --- pins ------------------------------------------------------------------------------------


def test_requirements_and_environment_pin_the_same_versions():
    assert requirements_pins() == environment_pins()


def test_every_requirement_is_an_exact_pin_with_a_comment():
    for line in requirement_lines():
        spec, _, comment = line.partition("#")
        assert PIN.match(spec.strip()), f"not an exact pin: {line!r}"
        assert comment.strip(), f"no comment saying why it is needed: {line!r}"


def test_tensorflow_and_probability_pins():
    pins = requirements_pins()
    assert pins["tensorflow"] == "2.21.0"
    assert pins["tensorflow-probability"] == "0.25.0"
    assert pins["tf-keras"] == pins["tensorflow"], "tf-keras is released in step with TF"


def test_environment_installs_the_package_and_a_python_it_supports():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_entries = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_entries
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    major_minor = pythons[0].split("=", 1)[1]
    requires = pyproject()["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(major_minor + ".0")


def test_pins_satisfy_the_package_dependencies():
    """Every dependency of pyproject.toml, its extras' too, is pinned inside its range."""
    pins = requirements_pins()
    project = pyproject()["project"]
    extras = project.get("optional-dependencies", {})
    for text in [*project["dependencies"], *(t for texts in extras.values() for t in texts)]:
        requirement = Requirement(text)
        name = canonical(requirement.name)
        assert name in pins, f"{name} is a dependency but not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[name]), (text, pins[name])


def installed_closure(requirements) -> set[str]:
    """The distributions ``pip install`` of ``requirements`` brings, as this environment
    has them: the requirements and, recursively, what their metadata requires (extras
    and markers that do not apply left out)."""
    from importlib.metadata import requires

    found, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonical(req.name)
        if name in found:
            continue
        found.add(name)
        todo += [Requirement(r) for r in requires(name) or []]
    return found


def third_party_imports(sources) -> set[str]:
    """The top-level modules ``sources`` (Python code) import, beyond the standard library
    and the package itself."""
    import ast

    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    local = {p.stem for p in (ROOT / "notebooks").glob("*.py")}  # the student module
    return {n for n in names
            if n not in sys.stdlib_module_names and n != "vae_helpers" and n not in local}


def test_pip_install_brings_what_the_course_imports_and_only_the_grading_extra_brings_dask():
    """``pip install .``: every module the library, the course and the notebooks import is in
    the distributions it installs, and dask is not; ``.[grading]`` adds what the grader
    imports, dask among them."""
    from importlib.metadata import packages_distributions

    from vae_helpers.course.checks import notebook_python

    project = pyproject()["project"]
    base = installed_closure(project["dependencies"])
    full = installed_closure([*project["dependencies"],
                              *project["optional-dependencies"]["grading"]])
    owners = {module: {canonical(d) for d in dists}
              for module, dists in packages_distributions().items()}
    package = ROOT / "vae_helpers"
    course = [p.read_text() for p in [*package.glob("*.py"), *(package / "course").glob("*.py")]]
    course += [p.read_text() for p in (ROOT / "notebooks").glob("*.py")]
    cells = [notebook_python(nb) for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    for module in sorted(third_party_imports(course + cells)):
        assert owners.get(module, set()) & base, f"pip install . lacks {module}"
    assert {"dask", "distributed"}.isdisjoint(base), "dask belongs to the grading extra only"
    assert {"dask", "distributed"} <= full
    grader = [p.read_text() for p in (package / "grading").glob("*.py")]
    for module in sorted(third_party_imports(grader)):
        assert owners.get(module, set()) & full, f"pip install '.[grading]' lacks {module}"


def test_installed_versions_are_the_pinned_ones():
    """The environment running the tests is the pinned one (`make install`)."""
    wrong = {}
    for name, pinned in requirements_pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pinned:
            wrong[name] = (pinned, installed)
    assert wrong == {}, f"pinned vs installed: {wrong}"


# --- importing the package -------------------------------------------------------------------

IMPORT_PROBE = r"""
import json, pkgutil, random
import matplotlib
before = dict(matplotlib.rcParams)
import vae_helpers
imported = []
for info in pkgutil.walk_packages(vae_helpers.__path__, "vae_helpers."):
    if not info.name.endswith("__main__"):
        __import__(info.name)
        imported.append(info.name.removeprefix("vae_helpers."))
after = dict(matplotlib.rcParams)
changed = sorted(k for k in set(before) | set(after)
                 if repr(before.get(k)) != repr(after.get(k)))
import numpy as np
from vae_helpers.backend import tf
determinism = getattr(tf.config.experimental, "is_op_determinism_enabled", None)
if determinism is None:  # not exported by every TF release
    from tensorflow.python.framework.config import is_op_determinism_enabled as determinism
report = {
    "imported": imported,
    "rc_changed": changed,
    "determinism": bool(determinism()),
    "numpy": [float(np.random.rand()), float(np.random.rand())],
    "python": random.random(),
    "tf": float(tf.random.uniform([])),
}
vae_helpers.set_seed(0)  # the control: what seeding looks like to this probe
report["seeded"] = {"determinism": bool(determinism()), "numpy": float(np.random.rand()),
                    "python": random.random(), "tf": float(tf.random.uniform([]))}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def import_probes(tmp_path_factory) -> list[tuple[subprocess.CompletedProcess, dict]]:
    """Two fresh interpreters that import every module of the package, run side by side."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VAE_HELPERS_VERBOSE_TF", "TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS",
                        "PYTHONHASHSEED")}
    cwd = tmp_path_factory.mktemp("import")
    procs = [subprocess.Popen([sys.executable, "-c", IMPORT_PROBE], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        completed = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        assert proc.returncode == 0, stderr
        results.append((completed, json.loads(stdout.strip().splitlines()[-1])))
    return results


def test_import_writes_nothing_to_stderr(import_probes):
    for completed, _ in import_probes:
        assert completed.stderr == "", completed.stderr


RETRACING_PROBE = r"""
import numpy as np
from vae_helpers import evaluate
from vae_helpers.model import VAE
from vae_helpers.backend import tf
x = np.random.default_rng(0).uniform(size=(40, 784)).astype("float32")
for i in range(8):  # a new model (so new compiled functions) and a new shape each time
    evaluate.evaluate_elbo(VAE(hidden_units=[8]), x[:10 + i])
tf.get_logger().warning("a warning that must still get through")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_the_retracing_warning_of_many_models_is_dropped_and_nothing_else(verbose, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VAE_HELPERS_VERBOSE_TF"}
    if verbose:
        env["VAE_HELPERS_VERBOSE_TF"] = "1"
    done = subprocess.run([sys.executable, "-c", RETRACING_PROBE], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "a warning that must still get through" in done.stderr
    assert ("triggered tf.function retracing" in done.stderr) is verbose


def test_import_covers_every_module(import_probes):
    _, report = import_probes[0]
    expected = {"data", "model", "training", "training.loop", "training.checkpoints", "evaluate",
                "runs", "distributions", "io", "seeding", "outdirs",
                "course", "course.notebook", "course.pipeline", "course.record",
                "grading", "grading.grader", "grading.batch", "grading.recorded"}
    assert expected <= set(report["imported"])


def test_import_leaves_matplotlib_alone(import_probes):
    # (matplotlib.pyplot itself gets imported: TensorFlow's bundled Keras imports it.)
    for _, report in import_probes:
        assert report["rc_changed"] == []


def test_import_sets_no_seed_and_no_determinism(import_probes):
    (_, first), (_, second) = import_probes
    assert first["determinism"] is False and second["determinism"] is False
    assert first["numpy"] != second["numpy"], "numpy's global generator was seeded"
    assert first["python"] != second["python"], "Python's random was seeded"
    assert first["tf"] != second["tf"], "TensorFlow's global seed was set"
    # the probe can tell: after set_seed both processes agree and determinism is on
    assert first["seeded"] == second["seeded"]
    assert first["seeded"]["determinism"] is True


# --- CI and the Makefile ---------------------------------------------------------------------


def commands(script: str) -> list[str]:
    """Non-comment, non-empty lines of a shell script."""
    return [line.strip() for line in script.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_exports_vae_mnist_and_runs_make_test():
    lines = commands((ROOT / ".ci" / "run").read_text())
    exports = [i for i, line in enumerate(lines) if re.match(r"export\b.*\bVAE_MNIST\b", line)]
    assert exports, "`.ci/run` does not export VAE_MNIST"
    sets = [i for i, line in enumerate(lines) if re.match(r"(export\s+)?VAE_MNIST=\S", line)]
    assert sets, "`.ci/run` does not give VAE_MNIST a value"
    make = [i for i, line in enumerate(lines) if re.fullmatch(r"(exec\s+)?make\s+test", line)]
    assert make, "`.ci/run` does not run `make test`"
    assert max(exports[0], sets[0]) < make[0], "VAE_MNIST must be set before `make test`"
    assert any(re.match(r"set -\w*e", line) for line in lines), "`.ci/run` must stop on errors"


def test_ci_installs_bubblewrap_before_make_test():
    lines = commands((ROOT / ".ci" / "run").read_text())
    install = [i for i, line in enumerate(lines)
               if re.search(r"apt-get install -y\b.*\bbubblewrap\b", line)]
    make = [i for i, line in enumerate(lines) if re.fullmatch(r"(exec\s+)?make\s+test", line)]
    assert install and make and install[0] < make[0]
    guard = next(i for i, line in enumerate(lines) if "command -v bwrap" in line)
    assert guard < install[0], "bubblewrap is installed only when missing"


def make_dry_run(target: str) -> list[str]:
    """The commands ``make TARGET`` would run."""
    try:
        result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, check=False)
    except FileNotFoundError:
        pytest.skip("make is not installed")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_test_runs_ruff_and_pytest():
    lines = make_dry_run("test")
    ruff = [i for i, line in enumerate(lines) if re.search(r"\bruff check\b", line)]
    pytest_ = [i for i, line in enumerate(lines) if re.search(r"-m pytest\b|\bpytest\b", line)]
    assert ruff and pytest_, lines
    assert ruff[0] < pytest_[-1]


def test_make_test_leaves_out_the_slow_tier_and_make_test_full_runs_all_at_full_size():
    test = [line for line in make_dry_run("test") if "-m pytest" in line]
    full = [line for line in make_dry_run("test-full") if "-m pytest" in line]
    assert len(test) == 1 and '-m "not slow"' in test[0] and "--notebook-profile" not in test[0]
    assert len(full) == 1 and "--notebook-profile full" in full[0]
    assert not re.search(r" -m ['\"]", full[0]), "make test-full runs every tier"
    assert any(re.search(r"\bruff check\b", line) for line in make_dry_run("test-full"))


def test_make_render_deps_installs_chromium_and_only_it_does():
    """make test-full's render check needs Chromium and chromedriver from apt; make install,
    make test and make test-full never run apt-get (CI runs make test without them)."""
    install = [line for line in make_dry_run("render-deps") if "apt-get install" in line]
    assert len(install) == 1, install
    assert {"chromium", "chromium-driver"} <= set(install[0].split()), install
    for target in ("install", "test", "test-full"):
        assert not any("apt-get" in line for line in make_dry_run(target)), target
