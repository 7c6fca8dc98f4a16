"""Tests of the command line ``python -m vae_helpers train``.

The commands run on the synthetic MNIST file of ``conftest.fake_mnist`` (through
``VAE_MNIST``). Most of them run in this process: ``cli`` calls
``vae_helpers.__main__.main`` and returns its exit code and what it wrote to
descriptors 1 and 2 (pytest's ``capfd``, so TensorFlow's C++ writes are seen too).
A fresh Python process pays about four seconds to import TensorFlow, so only what
depends on the process boundary runs as ``python -m vae_helpers`` in a subprocess
(the ``fresh`` fixture, two at a time): the real entry point's exit code, and the
stderr of processes that import TensorFlow (its start-up lines and once per
process messages may have gone out in this process before the test). The trainings are tiny, and the
one the tests of a run directory read is shared between them.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vae_helpers.__main__ import build_parser, main

pytestmark = pytest.mark.unit

TINY = ["--epochs", "1", "--n-train", "512", "--n-test", "256", "--iwae-k", "8",
        "--batch-size", "128", "--no-progress", "--hidden-units", "32"]
HISTORY_COLUMNS = ["epoch", "train_elbo", "train_reconstruction", "train_kl",
                   "test_elbo", "test_reconstruction", "test_kl", "sigma2", "seconds"]
METRIC_KEYS = {"test_elbo", "test_reconstruction", "test_kl", "iwae_k", "iwae_log_likelihood",
               "data_variant", "epochs", "num_parameters", "wall_seconds", "versions"}
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuda|oneDNN|rebuild TensorFlow",
                         re.IGNORECASE)
TIMEOUT_S = 300


# --- helpers ---------------------------------------------------------------------------------


def cli_env(data_path) -> dict:
    """The user's environment with VAE_MNIST set and TensorFlow's logging left at defaults."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VAE_HELPERS_VERBOSE_TF", "TF_CPP_MIN_LOG_LEVEL")}
    env["VAE_MNIST"] = str(data_path)
    return env


def run_cli(args, data_path, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vae_helpers", *map(str, args)],
                          env=cli_env(data_path), cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)


def run_all(commands: dict, data_path, cwd) -> dict:
    """Run ``{name: (args, data_path or None)}`` two at a time; results by name."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, args, path or data_path, cwd)
                   for name, (args, path) in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def _python_default_warning_filters() -> None:
    """The warning filters of a plain ``python -m vae_helpers`` (no -W option, no dev mode)."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                     ResourceWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning,
                            module=r"(vae_helpers\.)?__main__")


class _FreshProcessLogging(logging.Handler):
    """Python logging on stderr as in a plain ``python -m vae_helpers``, whose root logger
    has no handlers: TensorFlow's logger then gets one of its own (``tf.get_logger`` adds
    it, in ``BASIC_FORMAT``), and other records from WARNING up go to
    ``logging.lastResort`` (the bare message). In pytest the root logger has pytest's
    handlers, so neither happens and the records never reach stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        tf_logger = logging.getLogger("tensorflow")
        if record.name == "tensorflow" or record.name.startswith("tensorflow."):
            if tf_logger.handlers or record.levelno < (tf_logger.level or logging.WARNING):
                return  # written by TensorFlow's own handler, or below its level
            text = logging.Formatter(logging.BASIC_FORMAT).format(record)
        elif record.levelno >= logging.WARNING:
            text = logging.Formatter().format(record)
        else:
            return
        sys.stderr.write(text + "\n")


def call_main(args, capfd, monkeypatch, data_path, cwd) -> subprocess.CompletedProcess:
    """``run_cli`` in this process: ``main(args)`` in ``cli_env``'s environment and in ``cwd``.

    The result holds what the interpreter would make of it: the code of a SystemExit
    (argparse's 2) or main's return value as ``returncode``, exit code 1 with the
    traceback on stderr for an exception main lets through, and on stderr the warnings
    that Python's default filters show and the log records a plain process prints
    (pytest would keep both for its own reports, out of reach of the assertions on
    stderr).
    """
    monkeypatch.delenv("VAE_HELPERS_VERBOSE_TF", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("VAE_MNIST", str(data_path))
    monkeypatch.chdir(cwd)
    argv = [str(arg) for arg in args]
    capfd.readouterr()  # what came before is not the command's
    log_handler = _FreshProcessLogging()
    logging.getLogger().addHandler(log_handler)
    with warnings.catch_warnings(record=True) as caught:
        _python_default_warning_filters()
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: 0 after --help, 2 on a usage error
            code = 0 if exit_.code is None else exit_.code
            if not isinstance(code, int):  # sys.exit("message")
                print(code, file=sys.stderr)
                code = 1
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            logging.getLogger().removeHandler(log_handler)
    for w in caught:
        sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno,
                                                w.line))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "vae_helpers", *argv], code, out, err)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    lines = stderr_lines(result)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` (relative path -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def read_history(run_dir: Path) -> tuple[list[str], list[dict], list[str]]:
    """history.csv as (header, rows with float values, None where a cell is empty, such as
    a Bernoulli model's sigma2, raw lines)."""
    text = (run_dir / "history.csv").read_text()
    reader = csv.DictReader(text.splitlines())
    rows = [{k: float(v) if v != "" else None for k, v in row.items()} for row in reader]
    return list(reader.fieldnames), rows, text.splitlines()


def train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def expected_num_parameters(model_config: dict) -> int:
    """Dense layers of both networks (the normal posterior has a mean and a scale per
    latent dimension) plus the gaussian likelihood's learned variance."""
    d, p, hidden = model_config["input_dim"], model_config["latent_dim"], \
        model_config["hidden_units"]

    def dense(sizes):
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    count = dense([d, *hidden, 2 * p]) + dense([p, *hidden, d])
    if model_config["likelihood"] == "gaussian":
        count += 1 if model_config["covariance"] == "scalar" else d
    return count


def assert_finite_numbers(metrics: dict, keys) -> None:
    for key in keys:
        value = metrics[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture
def cli(capfd, monkeypatch, fake_mnist, workdir):
    """``cli(args, data_path=None)``: ``call_main`` with this test's capfd and monkeypatch,
    on the synthetic MNIST file unless ``data_path`` is given, in ``workdir``."""
    def call(args, data_path=None) -> subprocess.CompletedProcess:
        return call_main(args, capfd, monkeypatch, data_path or fake_mnist, workdir)
    return call


@pytest.fixture(scope="module")
def fresh(workdir, fake_mnist) -> dict:
    """The commands that run as a fresh ``python -m vae_helpers``, two at a time.

    They are subprocesses because the process boundary is what they test:

    ``gaussian``
        one tiny training with the default (gaussian) likelihood, which the tests of a
        run directory read; its stderr is that of a process that imports TensorFlow and
        trains: TensorFlow's start-up lines and its once per process messages are
        written there, and in this process they went out long before.
    ``missing_data``
        a data error that comes after TensorFlow is imported: one line on stderr in all,
        start-up included (this process may have loaded TensorFlow before the test).
    ``bad_epochs``
        a usage error: the exit code and message of the real entry point
        (``python -m`` runs ``sys.exit(main())``).
    """
    missing = workdir / "no-such-dir" / "mnist.npz"
    return run_all({
        "gaussian": (["train", "--out", workdir / "gaussian", *TINY], None),
        "missing_data": (["train", "--out", workdir / "missing", *TINY], missing),
        "bad_epochs": (["train", "--out", workdir / "bad", "--epochs", "-1"], None),
    }, fake_mnist, workdir) | {"missing_path": missing}


@pytest.fixture(scope="module")
def gaussian_run(workdir, fresh):
    """One tiny training with the default (gaussian) likelihood: (run dir, result)."""
    out, result = workdir / "gaussian", fresh["gaussian"]
    assert result.returncode == 0, result.stderr
    return out, result


# --- help ------------------------------------------------------------------------------------


def test_help_exits_zero_and_lists_the_train_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    captured = capsys.readouterr()
    assert re.search(r"^\s+train\s+\S", captured.out, re.MULTILINE), captured.out
    assert captured.err == ""


def test_train_help_documents_every_option(cli):
    result = cli(["train", "--help"])
    assert result.returncode == 0, result.stderr
    assert stderr_lines(result) == []
    options = [a for a in train_parser()._actions if a.option_strings]
    assert len(options) >= 16
    for action in options:
        assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
            f"{action.option_strings} has no help"
        for option in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", result.stdout), \
                f"{option} missing from `train --help`"


def test_help_defaults_match_the_parser():
    """A "(default X)" in a help text states the option's real default."""
    checked = 0
    for action in train_parser()._actions:
        match = re.search(r"default ([\w.,]+)", action.help or "")
        if not match:
            continue
        default = action.default
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        assert match.group(1).rstrip(",.") == shown, (action.option_strings, action.help)
        checked += 1
    assert checked >= 8


# --- bad options -----------------------------------------------------------------------------

BAD_OPTIONS = [
    (["--epochs=-1"], "--epochs"),
    (["--epochs=0"], "--epochs"),
    (["--epochs=1.5"], "--epochs"),
    (["--epochs=ten"], "--epochs"),
    (["--epochs", "-1"], "--epochs"),
    (["--batch-size=0"], "--batch-size"),
    (["--batch-size=-128"], "--batch-size"),
    (["--batch-size=12.8"], "--batch-size"),
    (["--latent-dim=0"], "--latent-dim"),
    (["--latent-dim=-2"], "--latent-dim"),
    (["--latent-dim=two"], "--latent-dim"),
    (["--learning-rate=0"], "--learning-rate"),
    (["--learning-rate=-1"], "--learning-rate"),
    (["--learning-rate=nan"], "--learning-rate"),
    (["--learning-rate=inf"], "--learning-rate"),
    (["--learning-rate=-inf"], "--learning-rate"),
    (["--learning-rate=abc"], "--learning-rate"),
    (["--learning-rate=1e-400"], "--learning-rate"),  # underflows to 0
    (["--hidden-units=0"], "--hidden-units"),
    (["--hidden-units=a,b"], "--hidden-units"),
    (["--hidden-units="], "--hidden-units"),
    (["--hidden-units=512,-1"], "--hidden-units"),
    (["--likelihood=poisson"], "--likelihood"),
    (["--covariance=full"], "--covariance"),
    (["--seed=-1"], "--seed"),
    ([f"--seed={2**62}"], "--seed"),                   # would wrap in two int32 words
    (["--iwae-k=-5"], "--iwae-k"),
    (["--n-train=0"], "--n-train"),
    (["--n-test=x"], "--n-test"),
    (["--bogus"], "--bogus"),
    (["--epochs"], "--epochs"),  # value missing
    (["--lr-schedule=step"], "--lr-schedule"),
    (["--lr-warmup-epochs=-1"], "--lr-warmup-epochs"),
    (["--lr-warmup-epochs=inf"], "--lr-warmup-epochs"),
    (["--final-learning-rate=-1e-5"], "--final-learning-rate"),
    (["--final-learning-rate=nan"], "--final-learning-rate"),
    (["--lr-decay-epochs=0"], "--lr-decay-epochs"),
    (["--kl-warmup-epochs=ten"], "--kl-warmup-epochs"),
    (["--kl-warmup-start=1.5"], "--kl-warmup-start"),
    (["--kl-warmup-start=-0.1"], "--kl-warmup-start"),
]


@pytest.mark.parametrize("bad, option", BAD_OPTIONS,
                         ids=[" ".join(bad) or "empty" for bad, _ in BAD_OPTIONS])
def test_bad_option_is_one_line_exit_2(bad, option, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", str(tmp_path / "run"), *bad])
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert option in lines[0]
    assert "--help" in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["train"], ["train", "--epochs", "3"]],
                         ids=["bare", "with-epochs"])
def test_missing_out_is_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--out" in lines[0]


def test_covariance_with_a_non_gaussian_likelihood_is_one_line_exit_1(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--likelihood", "bernoulli",
                 "--covariance", "diagonal"])
    assert code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--covariance" in lines[0] and "gaussian" in lines[0]
    assert not (tmp_path / "run").exists()


SCHEDULE_CASES = [
    (["--lr-schedule", "exponential"], "--final-learning-rate"),
    (["--final-learning-rate", "1e-5"], "--lr-schedule"),
    (["--lr-schedule", "cosine", "--final-learning-rate", "0.1"], "--learning-rate"),
    (["--lr-schedule", "cosine", "--epochs", "3", "--lr-warmup-epochs", "3"],
     "--lr-warmup-epochs"),
    (["--kl-warmup-start", "0.5"], "--kl-warmup-epochs"),
]


@pytest.mark.parametrize("argv, option", SCHEDULE_CASES,
                         ids=[" ".join(argv) for argv, _ in SCHEDULE_CASES])
def test_schedule_options_that_do_not_fit_together_are_one_line_exit_1(argv, option, tmp_path,
                                                                       capsys):
    code = main(["train", "--out", str(tmp_path / "run"), *argv])
    assert code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], lines
    assert "_" not in lines[0].split(":", 1)[1], "Python names instead of the options"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    ([], dict(lr_schedule="constant", lr_warmup_epochs=0.0, final_learning_rate=None,
              lr_decay_epochs=None, kl_warmup_epochs=0.0, kl_warmup_start=0.0)),
    (["--lr-schedule", "cosine", "--lr-warmup-epochs", "1.5", "--final-learning-rate", "1e-5",
      "--lr-decay-epochs", "80", "--kl-warmup-epochs", "10", "--kl-warmup-start", "0.2"],
     dict(lr_schedule="cosine", lr_warmup_epochs=1.5, final_learning_rate=1e-5,
          lr_decay_epochs=80.0, kl_warmup_epochs=10.0, kl_warmup_start=0.2)),
], ids=["defaults", "all-set"])
def test_schedule_options_reach_train_run(argv, expected, tmp_path, monkeypatch, capsys):
    from vae_helpers import runs

    seen = {}

    def fake_train_run(out, settings=None, **kwargs):
        seen.update(kwargs, settings=settings)
        return {"test_elbo": -1.0, "test_reconstruction": -0.5, "test_kl": 0.5,
                "iwae_log_likelihood": None, "data_description": "fake"}

    monkeypatch.setattr(runs, "train_run", fake_train_run)
    assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 0
    assert {k: getattr(seen["settings"], k) for k in expected} == expected  # one settings object
    capsys.readouterr()


@pytest.mark.parametrize("argv, expected", [
    ([], dict(prior="normal", prior_scale=1.0, posterior="normal")),
    (["--prior", "laplace", "--prior-scale", "0.5", "--posterior", "laplace"],
     dict(prior="laplace", prior_scale=0.5, posterior="laplace")),
], ids=["defaults", "laplace"])
def test_prior_and_posterior_options_reach_train_run(argv, expected, tmp_path, monkeypatch,
                                                     capsys):
    from vae_helpers import runs

    seen = {}

    def fake_train_run(out, settings=None, **kwargs):
        seen.update(kwargs)
        return {"test_elbo": 1.0, "test_reconstruction": 1.5, "test_kl": 0.5,
                "iwae_log_likelihood": None, "data_description": "fake"}

    monkeypatch.setattr(runs, "train_run", fake_train_run)
    assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 0
    assert {k: seen[k] for k in expected} == expected
    capsys.readouterr()


def test_prior_scale_with_the_normal_prior_is_one_line_exit_1(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--prior-scale", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prior-scale applies to the laplace prior only" in err
    assert not (tmp_path / "run").exists()


def test_missing_command_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "COMMAND" in lines[0]


def test_bad_option_in_a_fresh_process(fresh, workdir):
    """The same through ``python -m``: exit 2, one line, no TensorFlow chatter.

    A subprocess: the exit code is the real entry point's."""
    assert_one_line_error(fresh["bad_epochs"], 2, "--epochs", "error", "'-1'")
    assert fresh["bad_epochs"].stdout == ""
    assert not (workdir / "bad").exists()


# --- data errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_bad_data_file_is_one_line_exit_1(cli, fake_mnist, tmp_path, case):
    path = tmp_path / "no-such-dir" / "mnist.npz"
    if case == "corrupt":
        path = tmp_path / "corrupt.npz"
        with open(fake_mnist, "rb") as f:
            path.write_bytes(f.read(4096))  # a truncated archive
    line = assert_one_line_error(cli(["train", "--out", tmp_path / case, *TINY], path),
                                 1, str(path), "VAE_MNIST", "To fix")
    assert line.startswith("error: ")
    assert ("does not exist" if case == "missing" else "not a readable .npz") in line
    assert not (tmp_path / case).exists(), "a failed start must not create the run directory"


def test_bad_data_file_in_a_fresh_process(fresh, workdir):
    """The missing file through ``python -m``: still one line on stderr, in a process that
    imports TensorFlow before it fails.

    A subprocess: TensorFlow's start-up output only shows in a process that loads it."""
    path = fresh["missing_path"]
    line = assert_one_line_error(fresh["missing_data"], 1, str(path), "VAE_MNIST", "To fix")
    assert line.startswith("error: ")
    assert "does not exist" in line
    assert not (workdir / "missing").exists(), "a failed start must not create the run directory"


def test_out_that_cannot_be_a_directory_is_one_line_exit_1(tmp_path, fake_mnist, monkeypatch,
                                                           capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    monkeypatch.setenv("VAE_MNIST", str(fake_mnist))
    assert main(["train", "--out", str(blocker / "run"), *TINY]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(blocker) in lines[0]
    assert blocker.read_text() == "not a directory\n"


# --- a tiny run ------------------------------------------------------------------------------


def test_run_writes_the_run_directory(gaussian_run):
    out, _ = gaussian_run
    assert {p.name for p in out.iterdir()} == {"config.json", "history.csv", "metrics.json",
                                              "checkpoint"}
    assert (out / "checkpoint").is_dir()
    assert (out / "checkpoint" / "checkpoint").is_file()
    assert list((out / "checkpoint").glob("ckpt-1.index"))
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_run_config_records_the_options(gaussian_run, fake_mnist):
    out, _ = gaussian_run
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hidden_units"] == [32]
    assert config["model"]["latent_dim"] == 2
    assert config["model"]["likelihood"] == "gaussian"
    training = config["training"]
    assert (training["epochs"], training["batch_size"], training["n_train"],
            training["n_test"], training["iwae_k"]) == (1, 128, 512, 256, 8)
    assert training["learning_rate"] == pytest.approx(1e-3)
    assert config["data"]["variant"] == "dequantized"


def test_run_history_has_one_row_per_epoch(gaussian_run):
    out, _ = gaussian_run
    header, rows, _ = read_history(out)
    assert header == HISTORY_COLUMNS
    assert [row["epoch"] for row in rows] == [1]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
        assert row["seconds"] > 0 and row["sigma2"] > 0  # the Gaussian's learned variance
        for split in ("train", "test"):
            assert row[f"{split}_elbo"] == pytest.approx(
                row[f"{split}_reconstruction"] - row[f"{split}_kl"], abs=1e-3, rel=1e-5)
            assert row[f"{split}_kl"] >= 0


def test_run_metrics(gaussian_run):
    out, _ = gaussian_run
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert METRIC_KEYS | {"bits_per_dim_elbo", "bits_per_dim_iwae"} <= set(metrics)
    assert_finite_numbers(metrics, ["test_elbo", "test_reconstruction", "test_kl",
                                    "iwae_log_likelihood", "wall_seconds", "bits_per_dim_elbo",
                                    "bits_per_dim_iwae"])
    assert metrics["test_elbo"] == pytest.approx(
        metrics["test_reconstruction"] - metrics["test_kl"], abs=1e-3, rel=1e-5)
    assert metrics["test_kl"] >= 0
    # IWAE-k is a tighter bound than the ELBO (equal in expectation at worst).
    tolerance = 1.0 + 0.005 * abs(metrics["test_elbo"])
    assert metrics["iwae_log_likelihood"] >= metrics["test_elbo"] - tolerance
    assert metrics["iwae_k"] == 8
    assert metrics["data_variant"] == "dequantized"
    assert metrics["epochs"] == 1
    assert metrics["num_parameters"] == expected_num_parameters(config["model"])
    assert metrics["wall_seconds"] > 0
    # bits/dim: -(log-likelihood - D log 256) / (D log 2) on dequantized pixels
    dims = config["model"]["input_dim"]
    for name, nats in (("elbo", metrics["test_elbo"]),
                       ("iwae", metrics["iwae_log_likelihood"])):
        expected = -(nats - dims * math.log(256)) / (dims * math.log(2))
        assert metrics[f"bits_per_dim_{name}"] == pytest.approx(expected, rel=1e-9)
    from importlib.metadata import version
    assert metrics["versions"]["tensorflow"] == version("tensorflow")
    assert metrics["versions"]["tensorflow_probability"] == version("tensorflow-probability")
    assert metrics["versions"]["numpy"] == version("numpy")


def test_run_final_history_row_matches_metrics(gaussian_run):
    """The last epoch's test ELBO and the final metrics evaluate the same model on the
    same test transform with the same seed."""
    out, _ = gaussian_run
    metrics = json.loads((out / "metrics.json").read_text())
    _, rows, _ = read_history(out)
    for key in ("test_elbo", "test_reconstruction", "test_kl"):
        assert rows[-1][key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-6)


def test_run_prints_a_summary(gaussian_run):
    out, result = gaussian_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"run written to {out}" in result.stdout
    for label, key in (("test ELBO", "test_elbo"), ("reconstruction", "test_reconstruction"),
                       ("KL", "test_kl"), (r"IWAE \(k=8\)", "iwae_log_likelihood")):
        match = re.search(rf"{label}\s+(-?\d+\.\d+) nats", result.stdout)
        assert match, f"{label} missing from the summary:\n{result.stdout}"
        assert float(match.group(1)) == pytest.approx(metrics[key], abs=0.006)
    assert "bits/dim" in result.stdout


def test_run_stderr_has_no_tensorflow_log_lines(gaussian_run):
    """On the subprocess of ``fresh``: TensorFlow's start-up lines come once per process."""
    _, result = gaussian_run
    noisy = [line for line in result.stderr.splitlines() if TF_LOG_LINE.search(line)]
    assert noisy == [], result.stderr
    assert "Traceback" not in result.stderr


# --- an existing run -------------------------------------------------------------------------


def test_rerun_without_flags_refuses_and_changes_nothing(gaussian_run, cli):
    out, _ = gaussian_run
    before = snapshot(out)
    result = cli(["train", "--out", out, *TINY])
    line = assert_one_line_error(result, 1, "--resume", "--force", str(out))
    assert line.startswith("error: ")
    assert result.stdout == ""
    assert snapshot(out) == before


def test_resume_continues_to_the_new_epoch_count(gaussian_run, cli, tmp_path):
    """--resume on a copy of the gaussian run (trained in another process)."""
    original, _ = gaussian_run
    resumed = tmp_path / "resumed"
    shutil.copytree(original, resumed)
    resume_args = [*TINY, "--resume"]
    resume_args[resume_args.index("--epochs") + 1] = "2"
    result = cli(["train", "--out", resumed, *resume_args])
    assert result.returncode == 0, result.stderr
    header, rows, lines = read_history(resumed)
    _, _, original_lines = read_history(original)
    assert header == HISTORY_COLUMNS
    assert [row["epoch"] for row in rows] == [1, 2]
    assert lines[:2] == original_lines[:2], "resuming rewrote the earlier epochs"
    assert math.isfinite(rows[1]["train_elbo"]) and math.isfinite(rows[1]["test_elbo"])
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    assert metrics["command"].startswith("python -m vae_helpers train ")
    config = json.loads((resumed / "config.json").read_text())
    assert config["training"]["epochs"] == 2, "config.json must state the new epoch total"
    assert rows[-1]["test_elbo"] == pytest.approx(metrics["test_elbo"], rel=1e-6, abs=1e-6)
    assert (resumed / "checkpoint" / "ckpt-2.index").exists()


def test_force_replaces_the_run_with_a_bernoulli_run(gaussian_run, cli, tmp_path):
    """--force --likelihood bernoulli on a copy of the gaussian run: the run is replaced,
    and the bernoulli run's metrics are those of binarized data."""
    original, _ = gaussian_run
    forced = tmp_path / "forced"
    shutil.copytree(original, forced)
    result = cli(["train", "--out", forced, *TINY, "--force", "--likelihood", "bernoulli"])
    assert result.returncode == 0, result.stderr
    config = json.loads((forced / "config.json").read_text())
    assert config["model"]["likelihood"] == "bernoulli"
    fit_settings = json.loads((forced / "checkpoint" / "fit.json").read_text())
    assert fit_settings["data_variant"] == "binarized", "the old checkpoint survived --force"
    _, rows, _ = read_history(forced)
    assert [row["epoch"] for row in rows] == [1]
    assert not list(forced.rglob("*.tmp"))

    metrics = json.loads((forced / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["data_variant"] == "binarized"
    assert config["data"]["variant"] == "binarized"
    assert not [key for key in metrics if key.startswith("bits_per_dim")]
    assert "bits/dim" not in result.stdout
    assert_finite_numbers(metrics, ["test_elbo", "test_reconstruction", "test_kl",
                                    "iwae_log_likelihood"])
    # log p(x|z) of binary pixels is a log-probability, and KL >= 0: the ELBO is <= 0
    assert metrics["test_reconstruction"] <= 0 and metrics["test_elbo"] <= 0
    tolerance = 1.0 + 0.005 * abs(metrics["test_elbo"])
    assert metrics["iwae_log_likelihood"] >= metrics["test_elbo"] - tolerance
    assert metrics["num_parameters"] == expected_num_parameters(config["model"])


# --- divergence ------------------------------------------------------------------------------


def test_a_huge_learning_rate_stops_with_one_line_naming_the_step(tmp_path, fake_mnist,
                                                                  monkeypatch, capsys):
    monkeypatch.setenv("VAE_MNIST", str(fake_mnist))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--learning-rate", "1e30"]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert re.fullmatch(r"error: training diverged at epoch 1, step \d+ of 4: .*"
                        r"no checkpoint was written before it\. .*learning_rate.*", lines[0])
    assert captured.out == ""
    assert not (out / "metrics.json").exists() and not (out / ".vae_helpers.lock").exists()


def test_divergence_after_a_checkpoint_keeps_it_loadable(tmp_path, fake_mnist, monkeypatch,
                                                         capsys):
    """NaN weights after epoch 1 (injected: a real learning rate that diverges only later
    would depend on the platform's arithmetic) stop the run in epoch 2 with one line; the
    checkpoint of epoch 1 is the run's latest and restores the weights it had."""
    from vae_helpers import runs
    from vae_helpers.backend import tf

    real_fit, good = runs.fit, {}

    def poisoned_fit(model, *args, **kwargs):
        def poison(epoch, history):
            if epoch == 1:
                good["weights"] = [v.numpy().copy() for v in model.trainable_variables]
                w = model.decoder.layers[0].w
                w.assign(tf.fill(w.shape, float("nan")))
        return real_fit(model, *args, on_epoch_end=poison, **kwargs)

    monkeypatch.setattr(runs, "fit", poisoned_fit)
    monkeypatch.setenv("VAE_MNIST", str(fake_mnist))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--epochs", "3"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: training diverged at epoch 2, step 1 of 4")
    assert f"the last good checkpoint ({out / 'checkpoint' / 'ckpt-1'}) is intact" in lines[0]
    loaded = runs.load_model(out)
    for a, b in zip(good["weights"], [v.numpy() for v in loaded.trainable_variables],
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert not (out / ".vae_helpers.lock").exists()
