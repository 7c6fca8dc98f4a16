"""The README names only things that exist: modules, functions, CLI options, files."""

import importlib
import re
from pathlib import Path

import pytest

from vae_helpers.__main__ import build_parser

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _module_rows():
    for line in README.splitlines():
        match = re.match(r"\| `(vae_helpers(?:\.\w+)+)` \| (.*) \|$", line)
        if match:
            yield match.group(1), match.group(2)


def test_module_table_names_existing_modules_and_functions():
    rows = list(_module_rows())
    assert len(rows) >= 6
    for module_name, text in rows:
        module = importlib.import_module(module_name)
        for name in re.findall(r"`(\w+)[`(]", text):
            classes = [v for v in vars(module).values() if isinstance(v, type)]
            if hasattr(module, name) or any(hasattr(c, name) for c in classes):
                continue
            # names of registry entries (e.g. `gaussian`) are looked up in the registries
            registries = [getattr(module, r, {}) for r in ("LIKELIHOODS", "PRIORS", "POSTERIORS")]
            assert any(name in reg for reg in registries), f"{module_name} has no {name!r}"
        for name in re.findall(r"`([A-Z]\w+)`", text):
            assert hasattr(module, name), f"{module_name} has no {name!r}"


def test_every_cli_option_in_the_readme_exists_and_every_option_is_documented():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {s for a in train._actions for s in a.option_strings if s.startswith("--")}
    options.discard("--help")
    section = README[README.index("## Command line"):README.index("## Reference run")]
    mentioned = set(re.findall(r"`(--[a-z-]+)", section)) - {"--help"}
    assert mentioned <= options, mentioned - options
    assert options <= mentioned, options - mentioned


def test_every_grading_option_is_documented_and_every_flag_named_is_used():
    from vae_helpers.grading import sandbox

    section = README[README.index("## Grading and comparing"):
                     README.index("## Tests and benchmarks")]
    commands = build_parser()._subparsers._group_actions[0].choices
    options = {s for name in ("compare", "grade", "gradescope", "student", "colab")
               for a in commands[name]._actions
               for s in a.option_strings if s.startswith("--")} - {"--help"}
    mentioned = set(re.findall(r"(--[a-z][a-z-]+)", section))
    assert options <= mentioned, options - mentioned
    bwrap_flags = mentioned - options
    assert bwrap_flags, "the sandbox's flags are named"
    source = Path(sandbox.__file__).read_text()
    assert all(f'"{flag}"' in source for flag in bwrap_flags), bwrap_flags


def test_the_record_names_of_the_readme_are_the_homeworks():
    from vae_helpers.course import record

    section = README[README.index("### What a homework notebook records"):
                     README.index("### Comparing two runs")]
    names = re.findall(r"^\| `(\w+)` \| (figure|metric|spec|history|array|weights) \|",
                       section, re.M)
    assert {n for n, _ in names} == set(record.HOMEWORK_RECORDS)
    for name, kind in names:
        assert record.HOMEWORK_RECORDS[name].startswith(kind)


def test_paths_the_readme_names_exist():
    paths = {p for p in re.findall(r"`([\w./-]+)`", README)
             if re.search(r"\.(txt|yml|toml|md|py|json|csv)$|/$", p)
             and not p.startswith(("runs/", "run_dir/", "grades/", "gradescope/",
                                   "/autograder/"))}
    # files and folders inside run directories
    paths -= {"config.json", "history.csv", "metrics.json", "checkpoint/", "mnist.npz",
              "pipeline.json", "homework/", "bernoulli/", "records.json", "records/"}
    # what compare, grade and student write, and the folders of their examples
    paths -= {"report.json", "grade.json", "summary.csv", "grades.csv", "results.json",
              "logs/", "regenerated/", "submissions/", "handout/"}
    assert {"requirements.txt", "benchmarks/README.md"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_the_readme_example_runs(tmp_path):
    """The README's Python example, executed as written (it needs the real MNIST)."""
    import os
    import subprocess
    import sys

    if not os.environ.get("VAE_MNIST"):
        import pytest

        pytest.skip("VAE_MNIST is not set: the README example loads the real MNIST")
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "807,701" in result.stdout
    assert (tmp_path / "runs" / "demo" / "checkpoint" / "ckpt-5.index").exists()
