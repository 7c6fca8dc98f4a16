"""Training: it learns, it is reproducible, it resumes exactly, it stops cleanly on NaN
and on writes that fail."""

import contextlib
import dataclasses
import errno
import json
import math
import os
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from vae_helpers import evaluate, io, training
from vae_helpers.backend import tf
from vae_helpers.model import VAE
from vae_helpers.training import (
    HISTORY_FIELDS,
    SCHEDULE_DEFAULTS,
    RunWriteError,
    TrainingDiverged,
    TrainingSettings,
    kl_weight_at,
    learning_rate_at,
)

pytestmark = pytest.mark.unit

SMALL = dict(latent_dim=2, hidden_units=[64])
SETTINGS = {f.name for f in dataclasses.fields(TrainingSettings)}


def run_fit(model, x, **options):
    """``training.fit(model, x, settings, ...)`` with the ``TrainingSettings`` fields among
    ``options`` as its settings: the tests spell a run's settings and fit's own arguments
    (``x_test``, ``checkpoint_dir``, ``resume``, ``progress``, ...) side by side."""
    settings = TrainingSettings(**{k: options.pop(k) for k in SETTINGS & set(options)})
    return training.fit(model, x, settings, **options)


def resolved_schedule(epochs, learning_rate, **options) -> dict:
    """The schedule of ``TrainingSettings(epochs=..., learning_rate=..., **options)``."""
    return TrainingSettings(epochs=epochs, learning_rate=learning_rate, **options).schedule


@pytest.fixture(scope="module")
def digits():
    """Synthetic 28x28 uint8 'digits': 10 blob templates, shifted and noised."""
    rng = np.random.default_rng(0)
    templates = (rng.uniform(size=(10, 28, 28)) < 0.15) * 255
    labels = rng.integers(0, 10, size=1280)
    noise = rng.integers(0, 60, size=(1280, 28, 28))
    images = np.clip(templates[labels] * rng.uniform(0.6, 1.0, (1280, 1, 1)) + noise, 0, 255)
    return images.astype(np.uint8)


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


# --- checkpointed runs shared by several tests (read-only) -----------------------------------


def _files(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _shared_run(tmp_path_factory, digits, name, **kwargs):
    """Train ``VAE(**SMALL)`` on ``digits[:256]`` into a checkpoint directory of its own;
    yield ``(directory, history)``, and check at teardown that no test changed a file."""
    directory = tmp_path_factory.mktemp(name)
    history = run_fit(VAE(**SMALL), digits[:256], checkpoint_dir=directory, progress=False,
                  **kwargs)
    files = _files(directory)
    yield directory, history
    assert _files(directory) == files, f"a test wrote into the shared run {directory}"


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, digits):
    """``run_fit(VAE(**SMALL), digits[:256], epochs=1, checkpoint_dir=...)`` at the defaults
    (batch 128, seed 0): ``(checkpoint directory, history)``.

    Read-only: shared by the tests of this module. A test that resumes, damages or writes
    into the run works on its own copy (``copy_run``), never on the directory itself, and
    does not mutate the history; the teardown checks that the directory is unchanged.
    """
    yield from _shared_run(tmp_path_factory, digits, "one_epoch_run", epochs=1)


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory, digits):
    """``run_fit(VAE(**SMALL), digits[:256], epochs=2, batch_size=64, seed=0,
    checkpoint_dir=...)``: ``(checkpoint directory, history)``, an uninterrupted run.

    Read-only: shared by the tests of this module. A test that resumes, damages or writes
    into the run works on its own copy (``copy_run``), never on the directory itself, and
    does not mutate the history; the teardown checks that the directory is unchanged.
    """
    yield from _shared_run(tmp_path_factory, digits, "two_epoch_run", epochs=2, batch_size=64,
                           seed=0)


def copy_run(run, destination: Path) -> Path:
    """Copy the checkpoint directory of a shared run into ``destination`` (e.g. an empty
    ``tmp_path``), for a test to change as it likes."""
    shutil.copytree(run[0], destination, dirs_exist_ok=True)
    return destination


def test_a_few_hundred_steps_raise_the_elbo(digits):
    model = VAE(**SMALL)
    held_out = evaluate.prepare_eval_data(digits[-256:], "dequantized")
    before = evaluate.evaluate_elbo(model, held_out, n_samples=10)["elbo"]
    history = run_fit(model, digits[:1024], epochs=40, batch_size=128, learning_rate=3e-3,
                  progress=False)                             # 40 x 8 = 320 steps
    after = evaluate.evaluate_elbo(model, held_out, n_samples=10)["elbo"]
    assert after > before + 200, (before, after)
    train = history.column("train_elbo")
    assert train[-5:].mean() > train[:5].mean() + 100
    assert list(history.last) == list(HISTORY_FIELDS)


def test_each_epoch_records_the_learned_variance(digits):
    model = VAE(**SMALL)
    start = float(model.likelihood.variance)
    history = run_fit(model, digits[:384], epochs=1, batch_size=64, progress=False)
    sigma2 = history.last["sigma2"]
    assert sigma2 > 0 and sigma2 != pytest.approx(start, rel=1e-3)   # it was learned
    assert sigma2 == pytest.approx(float(model.likelihood.variance), rel=1e-6)
    assert training.learned_variance(model) == pytest.approx(sigma2, rel=1e-6)


@pytest.mark.parametrize("options", [dict(likelihood="bernoulli"), dict(covariance="diagonal")])
def test_no_learned_scalar_variance_records_none(digits, options):
    model = VAE(**SMALL, **options)
    history = run_fit(model, digits[:128], epochs=1, batch_size=64, progress=False)
    assert history.last["sigma2"] is None and training.learned_variance(model) is None


def test_same_seed_same_numbers_different_seed_different(digits):
    runs = []
    for seed in (1, 1, 2):
        model = VAE(seed=seed, **SMALL)
        h = run_fit(model, digits[:512], epochs=3, seed=seed, x_test=digits[-128:], progress=False)
        runs.append((_weights(model), h.column("train_elbo"), h.column("test_elbo")))
    for a, b in zip(runs[0][0], runs[1][0], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    assert not np.array_equal(runs[0][1], runs[2][1])


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_interrupted_then_resumed_equals_uninterrupted(digits, tmp_path, likelihood):
    kwargs = dict(epochs=4, batch_size=64, seed=3, x_test=digits[-128:], progress=False)
    straight = VAE(likelihood=likelihood, seed=3, **SMALL)
    h_straight = run_fit(straight, digits[:512], checkpoint_dir=tmp_path / "a", **kwargs)

    first = VAE(likelihood=likelihood, seed=3, **SMALL)
    run_fit(first, digits[:512], checkpoint_dir=tmp_path / "b", **{**kwargs, "epochs": 2})
    resumed = VAE(likelihood=likelihood, seed=3, **SMALL)   # a new process would start here
    h_resumed = run_fit(resumed, digits[:512], checkpoint_dir=tmp_path / "b", resume=True, **kwargs)

    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(h_resumed) == 4
    for name in ("train_elbo", "test_elbo", "train_kl"):
        np.testing.assert_array_equal(h_straight.column(name), h_resumed.column(name))


def test_resume_after_a_crash_between_history_and_checkpoint(digits, tmp_path, two_epoch_run):
    """history.json is written before the checkpoint; one row ahead is dropped on resume."""
    kwargs = dict(batch_size=64, seed=0, progress=False)
    copy_run(two_epoch_run, tmp_path)  # run_fit(VAE(**SMALL), digits[:256], epochs=2, **kwargs)
    rows = io.read_json(tmp_path / "history.json")
    io.write_json(tmp_path / "history.json", rows + [dict(rows[-1], epoch=3)])
    h = run_fit(VAE(**SMALL), digits[:256], epochs=3, checkpoint_dir=tmp_path, resume=True,
            **kwargs)
    assert [r["epoch"] for r in h.rows] == [1, 2, 3]
    assert h.rows[2]["train_elbo"] != rows[-1]["train_elbo"]


def test_existing_checkpoint_is_never_overwritten_without_resume(digits, tmp_path,
                                                                one_epoch_run):
    copy_run(one_epoch_run, tmp_path)  # run_fit(VAE(**SMALL), digits[:256], epochs=1)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(FileExistsError, match="resume=True"):
        run_fit(VAE(**SMALL), digits[:256], epochs=1, checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_resume_with_different_settings_is_refused(digits, tmp_path, one_epoch_run):
    copy_run(one_epoch_run, tmp_path)  # run_fit(VAE(**SMALL), digits[:256], epochs=1)
    with pytest.raises(ValueError, match="learning_rate"):
        run_fit(VAE(**SMALL), digits[:256], epochs=2, learning_rate=0.01, checkpoint_dir=tmp_path,
            resume=True, progress=False)


def test_divergence_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(digits, tmp_path):
    model = VAE(**SMALL)
    good = {}

    def poison_after_first_epoch(epoch, history):
        if epoch == 1:
            good["weights"] = _weights(model)
            model.decoder.layers[0].w.assign(tf.fill(model.decoder.layers[0].w.shape, np.nan))

    with pytest.raises(TrainingDiverged) as err:
        run_fit(model, digits[:256], epochs=3, batch_size=64, checkpoint_dir=tmp_path,
            progress=False, on_epoch_end=poison_after_first_epoch)
    message = str(err.value)
    assert "epoch 2, step 1 of 4" in message and "ckpt-1" in message
    restored = VAE(**SMALL)
    tf.train.Checkpoint(model=restored).restore(
        tf.train.latest_checkpoint(str(tmp_path))).expect_partial()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")
    for a, b in zip(good["weights"], _weights(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(io.read_json(tmp_path / "history.json")) == 1


def test_a_huge_learning_rate_is_caught_and_the_bad_update_not_applied(digits):
    model = VAE(**SMALL)
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+ of 8.*learning_rate"):
        run_fit(model, digits[:512], epochs=2, batch_size=64, learning_rate=1e30, progress=False)
    assert all(np.all(np.isfinite(w)) for w in _weights(model))


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs"),
    (dict(epochs=1, batch_size=0), "batch_size"),
    (dict(epochs=1, batch_size=10_000), "larger than the training set"),
    (dict(epochs=1, learning_rate=-1.0), "learning_rate"),
    (dict(epochs=1, learning_rate=float("nan")), "learning_rate"),
])
def test_bad_arguments(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_fit(VAE(**SMALL), digits[:256], progress=False, **kwargs)


def test_bad_data():
    with pytest.raises(ValueError, match="NaN"):
        run_fit(VAE(**SMALL), np.full((256, 784), np.nan, "float32"), epochs=1, progress=False)
    with pytest.raises(ValueError, match="shape"):
        run_fit(VAE(**SMALL), np.zeros(256, "uint8"), epochs=1, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        run_fit(VAE(**SMALL), np.zeros((256, 784), "int64"), epochs=1, progress=False)


def test_float_data_are_used_as_given(digits):
    x = (digits[:256].reshape(256, -1) / 255.0).astype("float32")
    h = run_fit(VAE(**SMALL), x, epochs=2, batch_size=64, progress=False)
    assert np.all(np.isfinite(h.column("train_elbo")))



def test_every_epoch_draws_a_fresh_binarization(digits):
    """A frozen model whose log p(x|z) depends on x only: epoch means move with the noise.

    Zero weights and per-pixel decoder biases make log p(x|z) = sum_j x_j b_j - softplus(b_j)
    for every z, and the KL constant; with a learning rate of 1e-30 nothing trains. If the
    binarization were drawn once, every epoch (one full batch) would give the same mean.
    """
    model = VAE(likelihood="bernoulli", **SMALL)
    for layer in model.encoder.layers + model.decoder.layers:
        layer.w.assign(tf.zeros_like(layer.w))
    model.decoder.layers[-1].b.assign(tf.linspace(-2.0, 2.0, 784))
    pixels = np.full((256, 784), 128, np.uint8)
    h = run_fit(model, pixels, epochs=4, batch_size=256, learning_rate=1e-30, progress=False)
    rec = h.column("train_reconstruction")
    assert len(set(rec.round(3))) == 4, rec
    assert np.std(rec) > 0.05


def test_the_test_set_transform_does_not_depend_on_the_training_seed(digits, monkeypatch):
    from vae_helpers.training import loop as train_mod

    seen = []
    original = train_mod.prepare_eval_data

    def spy(x, variant, seed=evaluate.TEST_SEED):
        seen.append(seed)
        return original(x, variant, seed)

    monkeypatch.setattr(train_mod, "prepare_eval_data", spy)
    for seed in (0, 5):
        run_fit(VAE(**SMALL), digits[:256], epochs=1, seed=seed, x_test=digits[-64:],
                progress=False)
    assert seen == [evaluate.TEST_SEED, evaluate.TEST_SEED]


def test_resume_falls_back_to_the_older_checkpoint_when_the_newest_is_damaged(digits, tmp_path,
                                                                              two_epoch_run):
    kwargs = dict(batch_size=64, seed=0, progress=False)
    copy_run(two_epoch_run, tmp_path)  # run_fit(VAE(**SMALL), digits[:256], epochs=2, **kwargs)
    (tmp_path / "ckpt-2.data-00000-of-00001").write_bytes(b"\0" * 100)   # truncated
    with pytest.warns(UserWarning, match="resuming from ckpt-1"):
        h = run_fit(VAE(**SMALL), digits[:256], epochs=3, checkpoint_dir=tmp_path, resume=True,
                **kwargs)
    assert [r["epoch"] for r in h.rows] == [1, 2, 3]
    straight = run_fit(VAE(**SMALL), digits[:256], epochs=3, **kwargs)
    np.testing.assert_array_equal(h.column("train_elbo"), straight.column("train_elbo"))


def test_resume_with_no_readable_checkpoint_is_a_clear_error(digits, tmp_path, two_epoch_run):
    from vae_helpers.training import CheckpointError

    copy_run(two_epoch_run, tmp_path)  # run_fit(VAE(**SMALL), digits[:256], 2 epochs, batch 64)
    for data_file in tmp_path.glob("ckpt-*.data-*"):
        data_file.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no checkpoint there can be read"):
        run_fit(VAE(**SMALL), digits[:256], epochs=3, batch_size=64, checkpoint_dir=tmp_path,
            resume=True, progress=False)


def test_resume_to_fewer_epochs_or_on_other_data_is_refused(digits, tmp_path, two_epoch_run):
    copy_run(two_epoch_run, tmp_path)  # run_fit(VAE(**SMALL), digits[:256], 2 epochs, batch 64)
    with pytest.raises(ValueError, match="already trained 2"):
        run_fit(VAE(**SMALL), digits[:256], epochs=1, batch_size=64, checkpoint_dir=tmp_path,
            resume=True, progress=False)
    with pytest.raises(ValueError, match="data_sha256"):
        run_fit(VAE(**SMALL), digits[256:512], epochs=3, batch_size=64, checkpoint_dir=tmp_path,
            resume=True, progress=False)


def test_numpy_learning_rates_are_accepted(digits):
    h = run_fit(VAE(**SMALL), digits[:256], epochs=1, learning_rate=np.float32(1e-3),
                progress=False)
    assert len(h) == 1


# --- writes that fail ------------------------------------------------------------------------


@contextlib.contextmanager
def file_size_limit(limit: int):
    """A genuine EFBIG for every write past ``limit`` bytes, in this process (even as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Python ignores it anyway
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_checkpoint_that_cannot_be_written_leaves_the_last_good_one(digits, tmp_path):
    kwargs = dict(batch_size=64, seed=0, x_test=digits[-64:], progress=False)
    limits = contextlib.ExitStack()

    def fill_the_disk_after(epoch, history):
        if epoch == 2:  # the checkpoint of epoch 3 (about 1 MB) will not fit
            limits.enter_context(file_size_limit(64 * 1024))

    with limits, pytest.raises(RunWriteError) as err:
        run_fit(VAE(**SMALL), digits[:256], epochs=4, checkpoint_dir=tmp_path,
            on_epoch_end=fill_the_disk_after, **kwargs)
    message = str(err.value)
    assert f"could not write the checkpoint of epoch 3 ({tmp_path / 'ckpt-3'})" in message
    assert "File too large" in message and "resume" in message
    assert f"the last good checkpoint ({tmp_path / 'ckpt-2'}, epoch 2) is intact" in message
    assert err.value.path == str(tmp_path / "ckpt-3")
    # nothing of the failed checkpoint is left, and the two good ones are untouched
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index",
        "ckpt-2.data-00000-of-00001", "ckpt-2.index", "fit.json", "history.json"]
    resumed = run_fit(VAE(**SMALL), digits[:256], epochs=4, checkpoint_dir=tmp_path, resume=True,
                  **kwargs)
    straight = run_fit(VAE(**SMALL), digits[:256], epochs=4, **kwargs)
    for name in ("train_elbo", "test_elbo"):
        np.testing.assert_array_equal(resumed.column(name), straight.column(name))


def test_a_full_disk_before_the_first_checkpoint(digits, tmp_path):
    with file_size_limit(64 * 1024), pytest.raises(RunWriteError) as err:
        run_fit(VAE(**SMALL), digits[:256], epochs=2, batch_size=64, checkpoint_dir=tmp_path,
            progress=False)
    assert "could not write the checkpoint of epoch 1" in str(err.value)
    assert "no epoch had been checkpointed yet" in str(err.value)
    assert err.value.errno is None or err.value.errno == errno.EFBIG
    assert tf.train.latest_checkpoint(str(tmp_path)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.json", "history.json"]


def test_a_history_that_cannot_be_written_stops_before_the_checkpoint(digits, tmp_path,
                                                                     monkeypatch):
    """ENOSPC while writing history.json (simulated: the JSON files are too small for a
    genuine file size limit): the previous history and checkpoint stay as they were."""
    from vae_helpers import io as io_mod

    real_write = io_mod.atomic_write_bytes

    def full_after_epoch_1(path, data):
        if path.name == "history.json" and len(json.loads(data)) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) + ".tmp")
        return real_write(path, data)

    monkeypatch.setattr(io_mod, "atomic_write_bytes", full_after_epoch_1)
    with pytest.raises(RunWriteError) as err:
        run_fit(VAE(**SMALL), digits[:256], epochs=3, batch_size=64, checkpoint_dir=tmp_path,
            progress=False)
    assert str(err.value).startswith(f"could not write the training history "
                                     f"({tmp_path / 'history.json'}): No space left on device;")
    assert f"({tmp_path / 'ckpt-1'}, epoch 1) is intact" in str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-1")
    assert [row["epoch"] for row in io.read_json(tmp_path / "history.json")] == [1]


# --- learning-rate schedules and KL warm-up --------------------------------------------------


def closed_form_lr(t, steps, peak, kind="constant", warmup=0.0, final=None, decay=None):
    """The learning rate of update t (from 0), written out from the formulas in the docs."""
    w = warmup * steps
    if kind == "constant":
        rate = peak
    else:
        p = min(max((t - w) / (decay * steps - w), 0.0), 1.0)
        if kind == "cosine":
            rate = final + (peak - final) * (1 + math.cos(math.pi * p)) / 2
        else:
            rate = peak * (final / peak) ** p
    return rate * min(1.0, (t + 1) / w) if w else rate


SCHEDULES = [
    dict(lr_schedule="constant"),
    dict(lr_schedule="constant", lr_warmup_epochs=2),
    dict(lr_schedule="cosine"),
    dict(lr_schedule="cosine", final_learning_rate=1e-5, lr_warmup_epochs=0.5),
    dict(lr_schedule="exponential", final_learning_rate=1e-4),
    dict(lr_schedule="exponential", final_learning_rate=1e-5, lr_warmup_epochs=1,
         lr_decay_epochs=6),
]


@pytest.mark.parametrize("options", SCHEDULES, ids=lambda o: "-".join(map(str, o.values())))
def test_learning_rate_at_is_the_closed_form(options):
    epochs, steps, peak = 10, 7, 2e-3
    schedule = resolved_schedule(epochs, peak, **options)
    kind = options["lr_schedule"]
    final = schedule["final_learning_rate"]
    decay = schedule["lr_decay_epochs"]
    for t in [0, 1, 3, 6, 7, 10, 13, 14, 20, 35, 41, 42, 55, 69, 70, 100]:
        expected = closed_form_lr(t, steps, peak, kind, options.get("lr_warmup_epochs", 0.0),
                                  final, decay)
        got = float(learning_rate_at(t, steps, peak, schedule))
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-12), (t, got, expected)
    if kind != "constant":  # starts at the peak (after any warm-up), ends at the final rate
        start = math.ceil(options.get("lr_warmup_epochs", 0.0) * steps)
        assert float(learning_rate_at(start, steps, peak, schedule)) == pytest.approx(
            peak, rel=1e-3)
        assert float(learning_rate_at(decay * steps, steps, peak, schedule)) == pytest.approx(
            final, rel=1e-6, abs=1e-12)
        assert float(learning_rate_at(10**6, steps, peak, schedule)) == pytest.approx(
            final, rel=1e-6, abs=1e-12)


def test_cosine_decays_to_zero_by_default_and_the_defaults_are_constant():
    schedule = resolved_schedule(5, 1e-3, lr_schedule="cosine")
    assert schedule["final_learning_rate"] == 0.0 and schedule["lr_decay_epochs"] == 5.0
    assert float(learning_rate_at(5 * 4, 4, 1e-3, schedule)) == 0.0
    assert resolved_schedule(5, 1e-3) == SCHEDULE_DEFAULTS
    for t in (0, 1, 10**7):
        assert float(learning_rate_at(t, 4, 1e-3)) == np.float32(1e-3)
        assert float(kl_weight_at(t, 4)) == 1.0


@pytest.mark.parametrize("start", [0.0, 0.25])
def test_kl_weight_rises_linearly_per_epoch(start):
    steps, epochs = 9, 4
    schedule = resolved_schedule(10, 1e-3, kl_warmup_epochs=epochs, kl_warmup_start=start)
    for epoch in range(8):  # beta at the first step of each epoch
        expected = min(1.0, start + (1 - start) * epoch / epochs)
        assert float(kl_weight_at(epoch * steps, steps, schedule)) == pytest.approx(expected,
                                                                                  abs=1e-7)
    mid = float(kl_weight_at(steps // 2 + 2 * steps, steps, schedule))  # within epoch 3
    assert start + (1 - start) * 2 / epochs < mid < start + (1 - start) * 3 / epochs


@pytest.mark.parametrize("options,match", [
    (dict(lr_schedule="step"), "lr_schedule"),
    (dict(lr_schedule="exponential"), "final_learning_rate"),
    (dict(lr_schedule="exponential", final_learning_rate=0.0), "final_learning_rate > 0"),
    (dict(lr_schedule="cosine", final_learning_rate=0.1), "at most learning_rate"),
    (dict(final_learning_rate=1e-5), "decaying schedule"),
    (dict(lr_decay_epochs=3), "decaying schedule"),
    (dict(lr_schedule="cosine", lr_warmup_epochs=2, lr_decay_epochs=2), "larger than"),
    (dict(lr_schedule="cosine", lr_warmup_epochs=3), "the run's epochs"),
    (dict(lr_warmup_epochs=-1), "lr_warmup_epochs"),
    (dict(kl_warmup_epochs=float("nan")), "kl_warmup_epochs"),
    (dict(kl_warmup_epochs=1, kl_warmup_start=1.5), "between 0 and 1"),
    (dict(kl_warmup_start=0.5), "kl_warmup_epochs > 0"),
])
def test_bad_schedules_are_refused(digits, tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        run_fit(VAE(**SMALL), digits[:256], epochs=2, checkpoint_dir=tmp_path, progress=False,
            **options)
    assert not list(tmp_path.iterdir())


def _reference_training(x, model, epochs, batch_size, seed, lr, beta):
    """A plain eager loop with the seeds the module docs name: Adam on the batch mean of
    reconstruction - beta(t) * KL, at the learning rate lr(t) of update t."""
    from vae_helpers import data as data_lib
    from vae_helpers.seeding import SALT_DATA, SALT_LATENT, SALT_SHUFFLE, stateless_seed

    x = tf.constant(x.reshape(len(x), -1))
    steps = len(x) // batch_size
    optimizer = tf.keras.optimizers.Adam(lr(0))
    variables = model.trainable_variables
    for epoch in range(epochs):
        keys = tf.random.stateless_uniform(
            [len(x)], seed=stateless_seed(seed, SALT_SHUFFLE, epoch), alg="philox")
        order = np.argsort(keys.numpy())[: steps * batch_size].reshape(steps, batch_size)
        for step in range(steps):
            t = epoch * steps + step
            xb = data_lib.prepare(tf.gather(x, order[step]), "binarized",
                                  stateless_seed(seed, SALT_DATA, epoch, step))
            with tf.GradientTape() as tape:
                _, rec, kl = model.elbo_terms(
                    xb, 1, seed=stateless_seed(seed, SALT_LATENT, epoch, step))
                loss = -tf.reduce_mean(rec - beta(t) * kl)
            optimizer.learning_rate = lr(t)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables,
                                          strict=True))
    return _weights(model)


def test_the_loop_trains_with_the_scheduled_rate_and_kl_weight(digits):
    """fit (compiled without XLA, so that its random draws are the eager ones) takes the
    same steps as a hand-written loop with the closed-form learning rate and beta."""
    epochs, batch, seed, steps = 2, 32, 4, 4
    options = dict(lr_schedule="exponential", learning_rate=1e-2, final_learning_rate=1e-3,
                   lr_warmup_epochs=0.5, kl_warmup_epochs=1.5, kl_warmup_start=0.2)
    model = VAE(likelihood="bernoulli", seed=seed, **SMALL)
    run_fit(model, digits[:128], epochs=epochs, batch_size=batch, seed=seed, progress=False,
        jit_compile=False, **options)
    got = _weights(model)

    def lr(t):
        return closed_form_lr(t, steps, 1e-2, "exponential", 0.5, 1e-3, epochs)

    def beta(t):
        return min(1.0, 0.2 + 0.8 * t / (1.5 * steps))

    def distance(weights):
        return max(float(np.max(np.abs(a - b))) for a, b in zip(got, weights, strict=True))

    same = _reference_training(digits[:128], VAE(likelihood="bernoulli", seed=seed, **SMALL),
                               epochs, batch, seed, lr, beta)
    plain_beta = _reference_training(digits[:128], VAE(likelihood="bernoulli", seed=seed,
                                                       **SMALL),
                                     epochs, batch, seed, lr, lambda t: 1.0)
    plain_lr = _reference_training(digits[:128], VAE(likelihood="bernoulli", seed=seed,
                                                     **SMALL),
                                   epochs, batch, seed, lambda t: 1e-2, beta)
    for a, b in zip(got, same, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # the comparison can tell: without the KL weight or the schedule the steps differ
    assert distance(plain_beta) > 100 * max(distance(same), 1e-8)
    assert distance(plain_lr) > 100 * max(distance(same), 1e-8)


def test_the_checkpointed_learning_rate_is_the_scheduled_one(digits, tmp_path):
    """Adam's learning-rate variable, read back from the checkpoint, holds the rate of the
    last update; its step counter the number of updates."""
    kwargs = dict(batch_size=64, learning_rate=3e-3, lr_schedule="cosine", lr_warmup_epochs=1.5,
                  final_learning_rate=1e-4, lr_decay_epochs=4, progress=False,
                  checkpoint_dir=tmp_path)
    steps = 4  # 256 images of 64
    for epochs in (1, 2, 3):
        run_fit(VAE(**SMALL), digits[:256], epochs=epochs, resume=epochs > 1, **kwargs)
        t = epochs * steps - 1
        assert tf.train.load_variable(
            str(tmp_path), "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == t + 1
        rate = tf.train.load_variable(
            str(tmp_path), "optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE")
        assert rate == pytest.approx(closed_form_lr(t, steps, 3e-3, "cosine", 1.5, 1e-4, 4),
                                     rel=1e-6)


def test_with_kl_warmup_the_history_reports_the_true_elbo(digits):
    """A frozen model (a learning rate of 1e-30 moves no weight): the recorded ELBO and its
    terms are the same whatever beta the objective used."""
    rows = []
    for options in ({}, dict(kl_warmup_epochs=3, kl_warmup_start=0.0)):
        h = run_fit(VAE(**SMALL), digits[:256], epochs=2, batch_size=64, learning_rate=1e-30,
                seed=2, progress=False, x_test=digits[-64:], **options)
        rows.append(h)
    for name in ("train_elbo", "train_reconstruction", "train_kl", "test_elbo"):
        np.testing.assert_allclose(rows[0].column(name), rows[1].column(name), rtol=1e-6)
    h = rows[1]
    np.testing.assert_allclose(h.column("train_elbo"),
                               h.column("train_reconstruction") - h.column("train_kl"),
                               rtol=1e-5)


def test_the_new_options_at_their_defaults_change_nothing(digits):
    explicit = dict(lr_schedule="constant", lr_warmup_epochs=0.0, final_learning_rate=None,
                    lr_decay_epochs=None, kl_warmup_epochs=0.0, kl_warmup_start=0.0)
    runs = []
    for options in ({}, explicit):
        model = VAE(likelihood="bernoulli", **SMALL)
        h = run_fit(model, digits[:256], epochs=2, batch_size=64, seed=1, x_test=digits[-64:],
                progress=False, **options)
        runs.append((h, _weights(model)))
    for name in ("train_elbo", "train_kl", "test_elbo"):
        np.testing.assert_array_equal(runs[0][0].column(name), runs[1][0].column(name))
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_with_a_schedule_and_warmups_equals_uninterrupted(digits, tmp_path):
    options = dict(lr_schedule="cosine", learning_rate=3e-3, final_learning_rate=1e-5,
                   lr_warmup_epochs=0.5, lr_decay_epochs=4, kl_warmup_epochs=3,
                   kl_warmup_start=0.1)
    kwargs = dict(batch_size=64, seed=3, x_test=digits[-128:], progress=False, **options)
    straight = VAE(likelihood="bernoulli", seed=3, **SMALL)
    h_straight = run_fit(straight, digits[:512], epochs=4, checkpoint_dir=tmp_path / "a", **kwargs)
    run_fit(VAE(likelihood="bernoulli", seed=3, **SMALL), digits[:512], epochs=2,
        checkpoint_dir=tmp_path / "b", **kwargs)
    resumed = VAE(likelihood="bernoulli", seed=3, **SMALL)
    h_resumed = run_fit(resumed, digits[:512], epochs=4, checkpoint_dir=tmp_path / "b",
                    resume=True, **kwargs)
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in ("train_elbo", "test_elbo", "train_kl"):
        np.testing.assert_array_equal(h_straight.column(name), h_resumed.column(name))


def test_resume_with_another_schedule_is_refused(digits, tmp_path):
    kwargs = dict(batch_size=64, progress=False, checkpoint_dir=tmp_path)
    run_fit(VAE(**SMALL), digits[:256], epochs=1, lr_schedule="cosine", kl_warmup_epochs=1,
        **kwargs)
    with pytest.raises(ValueError, match=r"different settings \(final_learning_rate, "
                                         r"kl_warmup_epochs, lr_decay_epochs, lr_schedule\);"):
        run_fit(VAE(**SMALL), digits[:256], epochs=1, resume=True, **kwargs)
    # the cosine decays over the epochs asked for: more epochs would change it
    with pytest.raises(ValueError, match=r"lr_decay_epochs\).*decays over 1 epochs"):
        run_fit(VAE(**SMALL), digits[:256], epochs=2, resume=True, lr_schedule="cosine",
            kl_warmup_epochs=1, **kwargs)
    # with its horizon given, it trains on past it at the final rate
    h = run_fit(VAE(**SMALL), digits[:256], epochs=2, resume=True, lr_schedule="cosine",
            lr_decay_epochs=1, kl_warmup_epochs=1, **kwargs)
    assert len(h) == 2


def test_a_run_from_before_the_schedule_settings_resumes(digits, tmp_path, two_epoch_run):
    """Its fit.json lacks the schedule keys: it was trained without a schedule."""
    kwargs = dict(batch_size=64, seed=0, progress=False)
    run_fit(VAE(**SMALL), digits[:256], epochs=1, checkpoint_dir=tmp_path, **kwargs)
    settings = io.read_json(tmp_path / "fit.json")
    assert {k: settings[k] for k in SCHEDULE_DEFAULTS} == SCHEDULE_DEFAULTS
    io.write_json(tmp_path / "fit.json",
                  {k: v for k, v in settings.items() if k not in SCHEDULE_DEFAULTS})
    resumed = run_fit(VAE(**SMALL), digits[:256], epochs=2, checkpoint_dir=tmp_path, resume=True,
                  **kwargs)
    # the same training uninterrupted: run_fit(VAE(**SMALL), digits[:256], epochs=2, **kwargs)
    straight = two_epoch_run[1]
    np.testing.assert_array_equal(resumed.column("train_elbo"), straight.column("train_elbo"))
    with pytest.raises(ValueError, match="lr_schedule"):
        run_fit(VAE(**SMALL), digits[:256], epochs=3, checkpoint_dir=tmp_path, resume=True,
            lr_schedule="cosine", lr_decay_epochs=3, **kwargs)


def test_xla_only_for_runs_long_enough_to_pay_for_its_compilation(digits, monkeypatch):
    from vae_helpers.training import loop

    seen = []
    original = loop._Trainer

    def spy(*args, **kwargs):
        trainer = original(*args, **kwargs)
        seen.append(trainer.run_steps._jit_compile)
        return trainer

    monkeypatch.setattr(loop, "_Trainer", spy)
    monkeypatch.setattr(loop, "XLA_MIN_STEPS", 16)             # 1024 images: 8 steps an epoch
    run_fit(VAE(**SMALL), digits[:1024], epochs=1, progress=False)
    run_fit(VAE(**SMALL), digits[:1024], epochs=2, progress=False)
    run_fit(VAE(**SMALL), digits[:1024], epochs=2, progress=False, jit_compile=False)
    assert seen == [False, True, False]


def test_settings_are_checked_when_made_frozen_and_name_their_flags():
    from vae_helpers.__main__ import build_parser

    settings = TrainingSettings(epochs=5, lr_schedule="cosine")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 6
    assert settings.replace(epochs=7).schedule["lr_decay_epochs"] == 7.0  # resolved anew
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        settings.replace(epochs=0)
    commands = build_parser()._subparsers._group_actions[0].choices
    options = {s for a in commands["train"]._actions for s in a.option_strings}
    flags = {f.name: TrainingSettings.flag(f.name) for f in dataclasses.fields(TrainingSettings)}
    assert {flag for flag in flags.values() if flag} <= options
    assert flags["lr_schedule"] == "--lr-schedule" and flags["n_samples"] is None
    assert (TrainingSettings.with_flags("final_learning_rate (0.1) must be at most learning_rate")
            == "--final-learning-rate (0.1) must be at most --learning-rate")
    with pytest.raises(TypeError, match="settings must be a TrainingSettings, got dict"):
        training.fit(VAE(**SMALL), np.zeros((256, 784), np.uint8), {"epochs": 1})
