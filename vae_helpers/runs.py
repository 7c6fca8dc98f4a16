"""Run directories: what a training run leaves behind, and how to load it again.

A run directory holds

``config.json``
    the model's constructor arguments, the training settings, the data variant
    and where the data came from;
``history.csv``
    one row per epoch: train and test ELBO, their reconstruction and KL terms,
    seconds;
``metrics.json``
    the final test metrics (ELBO terms, IWAE-k with its k, bits/dim where
    defined), epochs, parameter count, wall-clock seconds, library versions;
``checkpoint/``
    the ``tf.train.Checkpoint`` of every epoch's end (the newest two are kept),
    from which ``load_model`` rebuilds the trained model.

Stages hand results to each other through this directory only.

Several seeds. ``train_seeds(folder, seeds, **settings)`` trains one configuration
once per seed, each into ``folder/seed-<seed>`` (resumable, and read back rather than
trained again once complete, as ``train_run(..., resume=True)``);
``summarise_seeds`` gives each numeric metric's mean, sample standard deviation,
standard error of the mean (sd/√n) and n over the seeds, and ``format_mean_se``
writes one as "mean ± SE (n seeds)".

Faults. A run holds the directory's lock (``outdirs.run_lock``) from start to end,
so a second run into the same directory is refused at once and touches nothing.
Every file is written whole or not at all, and a checkpoint becomes the latest
only once it is complete: a run killed at any moment (even by SIGKILL) continues
with ``resume`` from its last completed epoch and ends with the numbers an
uninterrupted run would have. A write that fails (disk full, directory not
writable) stops the run with a ``RunWriteError`` naming the file and the last
good checkpoint, which is left intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

import vae_helpers
from vae_helpers import data as data_lib
from vae_helpers import io
from vae_helpers.backend import tf, tfp
from vae_helpers.discrete import CategoricalVAE
from vae_helpers.evaluate import TEST_SEED, evaluate
from vae_helpers.model import VAE
from vae_helpers.outdirs import claim, run_lock
from vae_helpers.seeding import set_seed
from vae_helpers.training.checkpoints import (
    Checkpoints,
    completed_epochs,
    run_identity,
    write_failure,
)
from vae_helpers.training.loop import fit
from vae_helpers.training.settings import TrainingSettings

RUN_FILES = ("config.json", "history.csv", "metrics.json", "checkpoint")
SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingSettings))


class RunError(RuntimeError):
    """A run directory is missing, incomplete, or would be overwritten."""


def build_model(latent_type: str = "continuous", **options) -> VAE | CategoricalVAE:
    """The model a ``config`` describes: ``build_model(**model.config)`` rebuilds it.

    Args:
        latent_type: ``"continuous"`` (``model.VAE``, the default) or ``"categorical"``
            (``discrete.CategoricalVAE``).
        **options: the constructor arguments of that class.
    """
    if latent_type == "continuous":
        return VAE(**options)
    if latent_type == "categorical":
        return CategoricalVAE(**options)
    raise ValueError(f"unknown latent_type {latent_type!r}; choose continuous or categorical")


def library_versions() -> dict:
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "tensorflow_probability": tfp.__version__, "numpy": np.__version__,
            "vae_helpers": vae_helpers.__version__}


def _claim(out: Path, resume: bool, force: bool) -> None:
    """Make sure writing into ``out`` loses nothing the user did not ask to lose
    (``outdirs.claim``, with the lock of ``out`` held).

    A run counts once it has a checkpoint or its metrics; files left by a start
    that never completed an epoch are replaced without asking.
    """
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory; choose another --out")
    done = completed_epochs(out / "checkpoint") if (out / "checkpoint").is_dir() else 0
    has_run = done > 0 or (out / "metrics.json").exists()
    if resume and has_run and not done:
        raise RunError(f"{out} has no checkpoint to resume from; start it without --resume")
    present = [out / name for name in RUN_FILES if (out / name).exists()]
    if resume and not done and present:
        print(f"note: {out} holds no completed epoch to resume; starting a new run",
              file=sys.stderr)
    names = ", ".join(path.name for path in present)
    try:
        claim(out, force=force, keep=resume and done > 0, blocking=present if has_run else [],
              replace=present, refuse=RunError(
                  f"{out} already holds a run ({names}); pass --resume to continue it, "
                  "--force to replace it, or choose another --out"))
    except OSError as err:
        raise RunError(f"cannot replace {err.filename}: {err.strerror or err}") from err


@contextlib.contextmanager
def _locked(out: Path):
    """``outdirs.run_lock(out)``; failing to create its lock file is a ``RunWriteError``."""
    acquired = False
    try:
        with run_lock(out):
            acquired = True
            yield
    except OSError as err:
        if acquired:
            raise
        what, path = (("the lock file", err.filename or out) if out.is_dir()
                      else ("the run directory", out))
        raise write_failure(what, path, err, out / "checkpoint") from err


def _write(writer, path: Path, content, what: str, out: Path) -> None:
    """``writer(path, content)``; a failure becomes a ``RunWriteError`` that names
    the file and the run's last good checkpoint."""
    try:
        writer(path, content)
    except OSError as err:
        raise write_failure(what, path, err, out / "checkpoint") from err


def train_run(out, settings: TrainingSettings | None = None, *, iwae_k: int = 5000,
              n_train: int | None = None, n_test: int | None = None, data_path=None,
              resume: bool = False, force: bool = False, progress: bool = True,
              command: str | None = None, **options) -> dict:
    """Train a VAE on MNIST and write a complete run directory.

    Args:
        out: the run directory (created if missing).
        settings: how to train, a ``TrainingSettings`` (default: the homework's, 100
            epochs). Its fields may instead be given as keywords (``epochs=5,
            learning_rate=0.001, ...``), as the notebooks do; not both.
        iwae_k: importance samples for the test log-likelihood (0 skips it).
        n_train, n_test: use only the first images of each set (quick runs).
        data_path: MNIST .npz; default: ``data.load_mnist``'s search order.
        resume: continue the run in ``out`` from its last checkpoint; a run that is
            already complete with these settings is not trained or evaluated again
            (its stored metrics are returned).
        force: replace a run already in ``out``.
        progress: progress bars.
        command: the command line to record in ``metrics.json``.
        **options: fields of ``TrainingSettings``, and ``build_model`` arguments:
            ``latent_type`` (``"continuous"`` or ``"categorical"``) and the model's own
            (``latent_dim``, ``hidden_units``, ``prior``, ``posterior``, ``prior_scale``,
            ``likelihood``, ``covariance``, ...).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        RunLocked: another process is running in ``out`` (nothing is touched).
        RunError: ``out`` holds a run and neither ``resume`` nor ``force`` is given, or
            it is not a directory.
        RunWriteError: a file could not be written (disk full, not writable); the
            message names it and the last good checkpoint, which is left intact.
        TrainingDiverged, CheckpointError, ValueError: as in ``training.fit``.
    """
    keywords = {name: options.pop(name) for name in SETTINGS_FIELDS if name in options}
    if settings is None:
        settings = TrainingSettings(**keywords)
    elif keywords:
        raise TypeError(f"train_run got settings and {', '.join(keywords)} as well: give the "
                        "training settings one way")
    out = Path(out)
    started = time.perf_counter()
    set_seed(settings.seed)  # a command may seed the process; training uses stateless seeds
    source, rule = data_lib.locate_mnist(data_path)
    (x_train, _), (x_test, _) = data_lib.load_mnist(data_path)
    x_train = x_train[:n_train] if n_train else x_train
    x_test = x_test[:n_test] if n_test else x_test
    model = build_model(seed=settings.seed, **options)
    variant = model.likelihood.data_variant
    # Everything that could refuse the run is checked before any file is touched.
    if len(x_train) < settings.batch_size:
        raise ValueError(f"--batch-size {settings.batch_size} is larger than the training set "
                         f"({len(x_train)} images)")
    checkpoints = Checkpoints(out / "checkpoint", run_identity(model, x_train, settings),
                              settings.epochs, resume, lock=False)  # the run's lock covers it
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory; choose another --out")
    with _locked(out):  # held to the end: a second run into `out` is refused at once
        _claim(out, resume, force)
        if resume:
            done = checkpoints.check()
            finished = (_finished_metrics(out, settings.epochs, iwae_k, len(x_test))
                        if done == settings.epochs else None)
            if finished is not None:
                print(f"{out.name}: the run is already complete ({settings.epochs} epochs, "
                      f"IWAE k={iwae_k}); its stored metrics are returned", file=sys.stderr)
                return finished
        config = {
            "model": model.config,
            "training": {"epochs": settings.epochs, "batch_size": settings.batch_size,
                         "learning_rate": settings.learning_rate, "seed": settings.seed,
                         "optimizer": "adam", "n_train": int(len(x_train)),
                         "n_test": int(len(x_test)), "iwae_k": iwae_k, **settings.schedule},
            "data": _data_config(variant, source, rule),
            "versions": library_versions(),
        }
        # on resume: states the new epoch total
        _write(io.write_json, out / "config.json", config, "the run's configuration", out)
        history = fit(model, x_train, settings, x_test=x_test, checkpoint_dir=checkpoints,
                      progress=progress)
        _write(io.write_csv, out / "history.csv", history.rows, "the training history", out)
        return _final_metrics(out, model, x_test, history.rows, iwae_k=iwae_k,
                              seed=settings.seed, progress=progress, started=started,
                              command=command)


def adopt_weights(out, history=None, *, iwae_k: int = 5000, n_test: int | None = None,
                  seed: int = 0, data_path=None, progress: bool = True,
                  command: str | None = None) -> dict:
    """Make the folder of a homework model trained by the student interface a run directory.

    ``out/weights.npz`` holds the named float32 arrays the student module's training
    loop saves (``vae_helpers.course.record.save_weights``). They are loaded into the
    reference ``VAE`` (``model.from_homework_weights``, the interface's
    parametrization of the variances), which is evaluated on the test set as
    ``train_run`` evaluates its models; ``config.json``, a ``checkpoint/``,
    ``history.csv`` (from ``history``, the loop's rows, if given) and ``metrics.json``
    are written beside the weights, so ``load_model``, ``load_run`` and every reader of
    run directories work on it.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        RecordError: ``out/weights.npz`` is missing or not a homework weights file.
        RunLocked: another process works in ``out``.
    """
    from vae_helpers.course import record
    from vae_helpers.model import from_homework_weights

    out = Path(out)
    started = time.perf_counter()
    model = from_homework_weights(record.load_weights(out / "weights.npz"))
    source, rule = data_lib.locate_mnist(data_path)
    _, (x_test, _) = data_lib.load_mnist(data_path)
    x_test = x_test[:n_test] if n_test else x_test
    rows = [dict(row) for row in history or []]
    variant = model.likelihood.data_variant
    with _locked(out):
        config = {
            "model": model.config,
            "training": {"epochs": len(rows), "seed": seed, "optimizer": "adam",
                         "n_test": int(len(x_test)), "iwae_k": iwae_k,
                         "trained_by": "the student interface (weights.npz)"},
            "data": _data_config(variant, source, rule),
            "versions": library_versions(),
        }
        _write(io.write_json, out / "config.json", config, "the run's configuration", out)
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                             str(out / "checkpoint"), max_to_keep=1)
        _write(lambda path, _: manager.save(), out / "checkpoint", None, "the checkpoint", out)
        if rows:
            _write(io.write_csv, out / "history.csv", rows, "the training history", out)
        return _final_metrics(out, model, x_test, rows, iwae_k=iwae_k, seed=seed,
                              progress=progress, started=started, command=command)


def _data_config(variant: str, source, rule: str) -> dict:
    """The ``data`` part of a run's ``config.json``."""
    return {"variant": variant, "test_transform_seed": TEST_SEED,
            "description": data_lib.DATA_VARIANT_DESCRIPTIONS[variant],
            "source": str(source) if source is not None else rule, "found_by": rule}


def _final_metrics(out: Path, model, x_test, rows: list, *, iwae_k: int, seed: int,
                   progress: bool, started: float, command: str | None) -> dict:
    """Evaluate a trained run's model on the test set, add the run's bookkeeping (its
    epochs, parameters, seconds, versions, command) and write ``metrics.json``."""
    metrics = evaluate(model, x_test, k=iwae_k, seed=seed, progress=progress)
    metrics.update(
        data_description=data_lib.DATA_VARIANT_DESCRIPTIONS[model.likelihood.data_variant],
        epochs=len(rows), num_parameters=model.num_parameters,
        final_train_elbo=rows[-1].get("train_elbo") if rows else None,
        train_seconds=float(sum(r.get("seconds", 0.0) for r in rows)),
        wall_seconds=time.perf_counter() - started,
        versions=library_versions(), command=command or " ".join(sys.argv),
    )
    _write(io.write_json, out / "metrics.json", metrics, "the final metrics", out)
    return metrics


def _finished_metrics(out: Path, epochs: int, iwae_k: int, n_test: int) -> dict | None:
    """The stored metrics of a run that is complete as asked, else ``None``."""
    path = out / "metrics.json"
    if not path.exists():
        return None
    metrics = io.read_json(path)
    same = (metrics.get("epochs") == epochs and metrics.get("iwae_k") == iwae_k
            and metrics.get("n_test") == n_test)
    return metrics if same else None


def load_model(run_dir) -> VAE:
    """Rebuild the model of a run directory and restore its newest checkpoint."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise RunError(f"{run_dir} is not a run directory (no config.json); "
                       "train one with `python -m vae_helpers train --out DIR`")
    model = build_model(**io.read_json(config_path)["model"])
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoint"))
    if latest is None:
        raise RunError(f"{run_dir} has no checkpoint; the run did not finish an epoch")
    # The optimizer's slots in the checkpoint are not needed here (expect_partial);
    # every variable of the model must be restored.
    status = tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    status.assert_existing_objects_matched()
    return model


def load_run(run_dir) -> dict:
    """The files of a run directory as Python objects (missing ones are ``None``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} does not exist or is not a directory")
    def maybe(name, reader):
        path = run_dir / name
        return reader(path) if path.exists() else None
    return {"config": maybe("config.json", io.read_json),
            "history": maybe("history.csv", io.read_csv),
            "metrics": maybe("metrics.json", io.read_json)}


# ---------------------------------------------------------------------- several seeds
def seed_dir(folder, seed: int) -> Path:
    """The run directory of ``seed`` in a ``train_seeds`` folder: ``folder/seed-<seed>``."""
    return Path(folder) / f"seed-{int(seed)}"


def train_seeds(folder, seeds, **options) -> dict[int, dict]:
    """Train one configuration once per seed, each into its own run directory.

    Every seed's run is ``train_run(seed_dir(folder, seed), seed=seed, resume=True,
    **options)``: a run that is complete is read back, not trained again; one that
    was interrupted continues from its last checkpoint.

    Args:
        folder: the folder that holds the runs (``seed-0``, ``seed-1``, ...).
        seeds: distinct non-negative integers.
        **options: ``train_run``'s keywords (training settings, model arguments,
            ``n_train``, ``iwae_k``, ...), the same for every seed; not ``seed``,
            ``settings``, ``resume`` or ``force``.

    Returns:
        ``{seed: metrics}`` in the order of ``seeds`` (``summarise_seeds`` reads it).
    """
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0
                        for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative integers, "
                         f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds!r}")
    refused = sorted({"seed", "settings", "resume", "force", "out"} & set(options))
    if refused:
        raise TypeError(f"train_seeds sets {', '.join(refused)} itself for each seed; "
                        "give the seeds as its second argument and the settings as keywords")
    return {int(s): train_run(seed_dir(folder, s), seed=int(s), resume=True, **options)
            for s in seeds}


def summarise_seeds(results) -> dict[str, dict]:
    """Each numeric metric's mean, sample standard deviation, standard error and n.

    Args:
        results: ``{seed: metrics}`` as ``train_seeds`` returns, or a list of metrics.

    Returns:
        ``{metric: {"mean", "sd", "se", "n"}}`` for every metric that is a finite number
        (not a bool) in at least one run, over the runs where it is; ``sd`` is the
        sample standard deviation (n - 1 in the denominator) and ``se = sd / sqrt(n)``,
        both ``None`` when n is 1.
    """
    runs = list(results.values()) if isinstance(results, dict) else list(results)
    values: dict[str, list[float]] = {}
    for metrics in runs:
        for name, value in metrics.items():
            if (isinstance(value, (int, float, np.integer, np.floating))
                    and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)):
                values.setdefault(name, []).append(float(value))
    summary = {}
    for name, xs in values.items():
        n = len(xs)
        mean = math.fsum(xs) / n
        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
        summary[name] = {"mean": mean, "sd": sd, "se": None if sd is None else sd / math.sqrt(n),
                         "n": n}
    return summary


def format_mean_se(entry: dict, digits: int = 2) -> str:
    """One entry of ``summarise_seeds`` as ``"mean ± SE (n seeds)"``, e.g.
    ``"-97.41 ± 0.52 (3 seeds)"`` (``"-97.41 (1 seed)"`` for one)."""
    n = entry["n"]
    if entry.get("se") is None:
        return f"{entry['mean']:.{digits}f} ({n} seed{'' if n == 1 else 's'})"
    return f"{entry['mean']:.{digits}f} ± {entry['se']:.{digits}f} ({n} seeds)"
