"""Tests of vae_helpers.runs: train_run's run directory, load_model, load_run.

One tiny run (in this process, on the synthetic MNIST of ``conftest.fake_mnist``)
is shared by the module.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vae_helpers import data as data_lib
from vae_helpers import io
from vae_helpers.backend import tf
from vae_helpers.evaluate import evaluate
from vae_helpers.model import VAE
from vae_helpers.outdirs import LOCK_NAME, RunLocked
from vae_helpers.runs import RunError, load_model, load_run, train_run
from vae_helpers.training import HISTORY_FIELDS, RunWriteError

pytestmark = pytest.mark.unit

TINY = dict(epochs=1, batch_size=128, iwae_k=8, n_train=512, n_test=256, seed=3,
            progress=False, hidden_units=[32])


@pytest.fixture(scope="module")
def run(tmp_path_factory, fake_mnist):
    """(run dir, the metrics train_run returned)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    metrics = train_run(out, data_path=fake_mnist, **TINY)
    return out, metrics


@pytest.fixture(scope="module")
def x_test(fake_mnist):
    (_, _), (x, _) = data_lib.load_mnist(fake_mnist)
    return x[: TINY["n_test"]]


def read_json(path):
    return json.loads(path.read_text())


def weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


def test_train_run_returns_what_it_writes(run, fake_mnist):
    out, metrics = run
    assert read_json(out / "metrics.json") == json.loads(json.dumps(metrics))
    config = read_json(out / "config.json")
    assert config["data"]["source"] == str(fake_mnist)
    assert config["training"]["seed"] == TINY["seed"]
    assert config["model"]["seed"] == TINY["seed"]


def test_load_model_restores_the_trained_weights(run):
    out, _ = run
    config = read_json(out / "config.json")
    loaded = load_model(out)
    assert isinstance(loaded, VAE)
    assert loaded.config == VAE(**config["model"]).config

    # Restoring must change something: a fresh model of the same config starts elsewhere.
    fresh = VAE(**config["model"])
    assert any(not np.array_equal(a, b) for a, b in zip(weights(loaded), weights(fresh),
                                                        strict=True))

    # ... and must restore everything: compare with a strict manual restore.
    manual = VAE(**config["model"])
    latest = tf.train.latest_checkpoint(str(out / "checkpoint"))
    tf.train.Checkpoint(model=manual).restore(latest).assert_existing_objects_matched()
    assert len(weights(loaded)) == len(weights(manual))
    for a, b in zip(weights(loaded), weights(manual), strict=True):
        np.testing.assert_array_equal(a, b)

    x = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    elbo_loaded = loaded.compute_elbo(x, seed=7).numpy()
    np.testing.assert_array_equal(elbo_loaded, manual.compute_elbo(x, seed=7).numpy())
    np.testing.assert_array_equal(elbo_loaded, load_model(out).compute_elbo(x, seed=7).numpy())
    assert np.all(np.isfinite(elbo_loaded))
    assert not np.array_equal(elbo_loaded, fresh.compute_elbo(x, seed=7).numpy())


def test_loaded_model_reproduces_the_run_metrics(run, x_test):
    """The test ELBO of the reloaded model is the one the trained model reported."""
    out, metrics = run
    loaded = load_model(out)
    again = evaluate(loaded, x_test, k=0, seed=TINY["seed"])
    fresh = evaluate(VAE(**read_json(out / "config.json")["model"]), x_test, k=0,
                     seed=TINY["seed"])
    for key in ("test_elbo", "test_reconstruction", "test_kl"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-5), key
    # the check can fail: an untrained model scores differently
    assert fresh["test_elbo"] != pytest.approx(metrics["test_elbo"], rel=1e-6, abs=1e-5)


def test_load_model_on_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="not a run directory") as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "vae_helpers train" in str(info.value)
    with pytest.raises(RunError, match="not a run directory"):
        load_model(tmp_path / "missing")


@pytest.mark.parametrize("checkpoint", ["absent", "empty"])
def test_load_model_without_a_checkpoint(run, tmp_path, checkpoint):
    out, _ = run
    shutil.copy(out / "config.json", tmp_path / "config.json")
    if checkpoint == "empty":
        (tmp_path / "checkpoint").mkdir()
    with pytest.raises(RunError, match="no checkpoint") as info:
        load_model(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_run_parses_the_three_files(run):
    out, metrics = run
    loaded = load_run(out)
    assert set(loaded) == {"config", "history", "metrics"}
    assert loaded["config"] == read_json(out / "config.json")
    assert loaded["metrics"] == read_json(out / "metrics.json")
    history = loaded["history"]
    assert [row["epoch"] for row in history] == list(range(1, TINY["epochs"] + 1))
    for row in history:
        assert list(row) == list(HISTORY_FIELDS)
        assert isinstance(row["epoch"], int)
        assert all(isinstance(v, float) for k, v in row.items() if k != "epoch"), row
    assert history[-1]["test_elbo"] == pytest.approx(metrics["test_elbo"], rel=1e-6)


def test_load_run_missing_files_are_none(run, tmp_path):
    out, _ = run
    shutil.copy(out / "config.json", tmp_path / "config.json")
    loaded = load_run(tmp_path)
    assert loaded["config"] == read_json(out / "config.json")
    assert loaded["history"] is None and loaded["metrics"] is None


def test_load_run_on_a_missing_directory(tmp_path):
    with pytest.raises(RunError, match="does not exist") as info:
        load_run(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_train_run_refuses_an_existing_run(run, fake_mnist):
    out, _ = run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="--resume") as info:
        train_run(out, data_path=fake_mnist, **TINY)
    assert "--force" in str(info.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resume_of_a_finished_run_without_its_checkpoint_is_refused(run, tmp_path, fake_mnist):
    out, _ = run
    for name in ("config.json", "metrics.json"):
        shutil.copy(out / name, tmp_path / name)
    with pytest.raises(RunError, match="no checkpoint to resume from"):
        train_run(tmp_path, data_path=fake_mnist, resume=True, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.json"]


def test_leftovers_of_a_start_that_never_finished_an_epoch_do_not_block(run, tmp_path,
                                                                        fake_mnist, capsys):
    out, _ = run
    shutil.copy(out / "config.json", tmp_path / "config.json")   # no checkpoint, no metrics
    train_run(tmp_path, data_path=fake_mnist, resume=True, **TINY)
    assert "starting a new run" in capsys.readouterr().err
    assert (tmp_path / "metrics.json").exists()


def test_a_refused_resume_changes_nothing(run, fake_mnist):
    out, _ = run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="model"):
        train_run(out, data_path=fake_mnist, resume=True, **{**TINY, "latent_dim": 3})
    with pytest.raises(ValueError, match="learning_rate"):
        train_run(out, data_path=fake_mnist, resume=True, **{**TINY, "learning_rate": 0.5})
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert load_model(out).latent_dim == 2


def test_a_resume_with_a_schedule_the_run_did_not_have_is_refused(run, fake_mnist):
    out, _ = run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="kl_warmup_epochs"):
        train_run(out, data_path=fake_mnist, resume=True, **{**TINY, "kl_warmup_epochs": 1})
    with pytest.raises(ValueError, match="lr_schedule"):
        train_run(out, data_path=fake_mnist, resume=True,
                  **{**TINY, "epochs": 2, "lr_schedule": "cosine"})
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_scheduled_run_records_its_schedule_and_resumes_with_it(fake_mnist, tmp_path):
    schedule = dict(lr_schedule="cosine", lr_warmup_epochs=0.5, final_learning_rate=1e-5,
                    lr_decay_epochs=2, kl_warmup_epochs=1.5, kl_warmup_start=0.1)
    out = tmp_path / "run"
    train_run(out, data_path=fake_mnist, **TINY, **schedule)
    resolved = {**schedule, "lr_decay_epochs": 2.0}
    training = read_json(out / "config.json")["training"]
    assert {k: training[k] for k in resolved} == resolved
    fit_json = read_json(out / "checkpoint" / "fit.json")
    assert {k: fit_json[k] for k in resolved} == resolved
    with pytest.raises(ValueError, match="final_learning_rate"):
        train_run(out, data_path=fake_mnist, resume=True,
                  **{**TINY, **schedule, "epochs": 2, "final_learning_rate": 0.0})
    metrics = train_run(out, data_path=fake_mnist, resume=True, **{**TINY, **schedule,
                                                                  "epochs": 2})
    assert metrics["epochs"] == 2 and read_json(out / "config.json")["training"]["epochs"] == 2
    # the default decay horizon is the run's epochs: 1 here, so a resume to 2 is refused
    short = tmp_path / "short"
    train_run(short, data_path=fake_mnist, **TINY, lr_schedule="exponential",
              final_learning_rate=1e-4)
    assert read_json(short / "config.json")["training"]["lr_decay_epochs"] == 1.0
    with pytest.raises(ValueError, match="lr_decay_epochs explicitly"):
        train_run(short, data_path=fake_mnist, resume=True,
                  **{**TINY, "epochs": 2, "lr_schedule": "exponential",
                     "final_learning_rate": 1e-4})


def test_force_with_settings_that_cannot_train_keeps_the_old_run(run, fake_mnist):
    out, _ = run
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="larger than the training set"):
        train_run(out, data_path=fake_mnist, force=True, **{**TINY, "n_train": 100})
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_resuming_a_complete_run_returns_its_metrics_without_training(run, fake_mnist, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoint").iterdir()}
    again = train_run(out, data_path=fake_mnist, resume=True, **TINY)
    assert again == read_json(out / "metrics.json") == json.loads(json.dumps(run[1]))
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoint").iterdir()} == before


def test_resuming_a_complete_run_with_another_iwae_k_evaluates_again(run, fake_mnist, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run[0], out)
    again = train_run(out, data_path=fake_mnist, resume=True, **{**TINY, "iwae_k": 4})
    assert again["iwae_k"] == 4 == read_json(out / "metrics.json")["iwae_k"]
    assert again["test_elbo"] == pytest.approx(run[1]["test_elbo"], abs=1e-4)


# --- faults: a locked directory, a write that fails --------------------------------------------

HOLD_LOCK = """
import sys, time
from vae_helpers.outdirs import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold_lock(directory) -> subprocess.Popen:
    """Another process that holds the lock of ``directory`` until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_in_a_locked_directory_is_refused_and_touches_nothing(run, fake_mnist, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run[0], out)
    holder = hold_lock(out)
    try:
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        for flags in (dict(force=True), dict(resume=True)):
            with pytest.raises(RunLocked, match=rf"pid {holder.pid}\)") as info:
                train_run(out, data_path=fake_mnist, **TINY, **flags)
            assert info.value.path == out and str(out) in str(info.value)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_file_neither_blocks_nor_counts_as_a_run(fake_mnist, tmp_path,
                                                             monkeypatch):
    out = tmp_path / "run"
    holder = hold_lock(out)
    holder.kill()   # SIGKILL: the lock file stays, the lock goes with the process
    holder.wait()
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]

    class Reached(Exception):
        pass

    def fit_reached(*args, checkpoint_dir, **kwargs):
        assert (checkpoint_dir.folder.parent / "config.json").exists()  # a Checkpoints
        raise Reached

    monkeypatch.setattr("vae_helpers.runs.fit", fit_reached)
    with pytest.raises(Reached):   # neither resume nor force was needed to get to training
        train_run(out, data_path=fake_mnist, **TINY)
    assert [p.name for p in out.iterdir()] == ["config.json"]


def test_metrics_that_cannot_be_written_leave_a_run_that_resume_completes(
        run, fake_mnist, tmp_path, monkeypatch):
    """ENOSPC on metrics.json (simulated): the message says how to finish the run, and
    --resume then evaluates and writes the metrics without training again."""
    out = tmp_path / "copy"
    shutil.copytree(run[0], out)
    (out / "metrics.json").unlink()
    real_write = io.atomic_write_bytes

    def no_space_for_metrics(path, data):
        if path.name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write(path, data)

    monkeypatch.setattr(io, "atomic_write_bytes", no_space_for_metrics)
    with pytest.raises(RunWriteError) as info:
        train_run(out, data_path=fake_mnist, resume=True, **TINY)
    message = str(info.value)
    assert message.startswith(f"could not write the final metrics ({out / 'metrics.json'}): "
                              "No space left on device; the last good checkpoint (")
    assert "ckpt-1, epoch 1) is intact" in message and "--resume" in message
    assert not (out / "metrics.json").exists() and not (out / LOCK_NAME).exists()

    monkeypatch.setattr(io, "atomic_write_bytes", real_write)
    checkpoints = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoint").iterdir()}
    metrics = train_run(out, data_path=fake_mnist, resume=True, **TINY)
    assert metrics["test_elbo"] == pytest.approx(run[1]["test_elbo"], abs=1e-4)
    assert read_json(out / "metrics.json")["epochs"] == TINY["epochs"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoint").iterdir()} == checkpoints
