r"""Training: stochastic gradient ascent on the ELBO with Adam, compiled with XLA.

The objective for a minibatch :math:`B` of a data set of :math:`N` images is the
unbiased estimate of the data set's ELBO

.. math::

    \mathcal L(\Theta, \phi) \approx \frac{N}{|B|} \sum_{n \in B} \Big(
        \log p_\Theta(x_n \mid z_n) - \mathrm{KL}(q_\phi(z \mid x_n) \,\|\, p(z)) \Big),
    \qquad z_n \sim q_\phi(z \mid x_n),

and the loss handed to Adam is its negative divided by :math:`N` (the mean
per-image ELBO): the constant factor changes nothing about where the optimum is,
and Adam's steps do not depend on it.

The per-image terms come from ``model.training_terms`` (given the training
progress in epochs): for ``model.VAE`` they are ``elbo_terms``, the ELBO above; a
model whose objective differs from its ELBO, such as the Gumbel-softmax relaxation
of ``discrete.CategoricalVAE``, returns its objective there, and the history's
training columns then hold that objective. The test columns are always the
model's ``elbo_terms``.

How the loop is made fast on a small CPU
----------------------------------------
* The training images stay in memory as one uint8 tensor. Each epoch draws a
  permutation; each step gathers its batch and applies the likelihood's data
  transform (dequantization or a fresh binarization) on the fly, so there is no
  ``tf.data`` pipeline whose threads compete with the math for two cores.
* Many steps run inside one XLA-compiled ``tf.while_loop`` call; the Python
  loop only sees a few calls per epoch (for the progress bar). Runs shorter than
  ``XLA_MIN_STEPS`` steps use the same loop as a plain ``tf.function``, since
  XLA's compilation would take longer than the run.
* Every random draw uses a stateless seed built from ``(seed, epoch, step)``.
  The same seed gives the same numbers, and a run resumed from the checkpoint of
  epoch e continues exactly as the uninterrupted run would have.

Steps per epoch are ``N // batch_size``: the last incomplete batch of a
permutation is left out (a different one every epoch).

Learning-rate schedule and KL warm-up
-------------------------------------
Both are off by default (a constant learning rate and the plain ELBO, exactly as
before they existed). Both are closed-form functions of the global step
``t = epoch * steps_per_epoch + step`` (counting from 0), computed inside the
compiled loop, so a resumed run follows them exactly as an uninterrupted one:

* ``learning_rate_at``: an optional linear warm-up, ``lr_t = peak * (t + 1) / W``
  for the first ``W = lr_warmup_epochs * steps_per_epoch`` steps, then the
  schedule from ``peak`` (``learning_rate``) to ``final_learning_rate`` over the
  steps up to ``lr_decay_epochs * steps_per_epoch`` (default: the run's
  ``epochs``), and ``final_learning_rate`` after that. With progress
  ``p = (t - W) / (T - W)`` clipped to [0, 1]: ``constant`` keeps ``peak``;
  ``cosine`` gives ``final + (peak - final) * (1 + cos(pi p)) / 2``;
  ``exponential`` gives ``peak * (final / peak) ** p``. The value is assigned to
  Adam's learning-rate variable before each step's update.
* ``kl_weight_at`` (KL warm-up, "beta annealing"): the objective maximised is
  ``reconstruction - beta_t * KL`` with
  ``beta_t = min(1, start + (1 - start) * t / (kl_warmup_epochs * steps_per_epoch))``.
  Only the gradient sees beta: the history's ``train_elbo`` (and its
  reconstruction and KL terms) is always the true ELBO, beta = 1.

The resolved settings (``training_schedule``) enter ``fit_settings``, so a resume
with another schedule is refused. A decaying schedule's horizon defaults to the
``epochs`` asked for, so resuming it to more epochs changes it and is refused too,
unless ``lr_decay_epochs`` is given explicitly (and kept).

Faults
------
With a ``checkpoint_dir``, ``fit`` holds that directory's lock (``locks.run_lock``)
and checkpoints every epoch's end: ``history.json`` first (atomically), then the
checkpoint, which ``CheckpointManager`` records as the latest only once its files
are complete. A process killed at any moment therefore resumes from its last
completed epoch with the numbers of an uninterrupted run; a write that fails
raises ``RunWriteError`` and leaves the last good checkpoint as it was; a NaN
raises ``TrainingDiverged`` before the bad update is applied or saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vae_helpers import data as data_lib
from vae_helpers import io
from vae_helpers._tf import tf
from vae_helpers.evaluate import evaluate_elbo, prepare_eval_data
from vae_helpers.locks import run_lock
from vae_helpers.progress import progress_bar
from vae_helpers.seeding import SALT_DATA, SALT_LATENT, SALT_SHUFFLE, stateless_seed

HISTORY_FIELDS = (
    "epoch", "train_elbo", "train_reconstruction", "train_kl",
    "test_elbo", "test_reconstruction", "test_kl", "seconds",
)


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite; the bad update was not applied."""


class CheckpointError(RuntimeError):
    """No checkpoint in the directory can be read back."""


class RunWriteError(OSError):
    """A checkpoint or a run file could not be written: the disk is full, a file size
    limit was reached, the directory is not writable, ...

    Nothing already written is damaged: the message names what failed, where, and
    the last good checkpoint, from which the run can be resumed once the cause is
    fixed. ``errno`` is the underlying error number when it is known, ``path``
    the file or checkpoint that could not be written.
    """

    def __init__(self, message: str, errno: int | None = None, path=None):
        super().__init__(message)
        self.errno = errno
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return self.args[0]


def _reason(err: BaseException) -> str:
    """The cause of a failed write in a few words (``No space left on device``)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, tf.errors.OpError):
        # e.g. "{{function_node ...}} dir/ckpt-3_temp/part-...; File too large [Op:SaveV2]"
        text = re.sub(r"\{\{[^}]*\}\}\s*", "", err.message)
        text = re.sub(r"\s*\[Op:\w+\]\s*$", "", text.strip().splitlines()[0] if text else "")
        return text.rsplit("; ", 1)[-1] or type(err).__name__
    return str(err).splitlines()[0] if str(err) else type(err).__name__


_FIXES = "full disk, file size limit, permissions"


def write_failure(what: str, path, err: BaseException, checkpoint_dir) -> RunWriteError:
    """The ``RunWriteError`` for a failed write of ``what`` (at ``path``), stating which
    checkpoint in ``checkpoint_dir`` is the last good one and how to go on."""
    latest = None
    if checkpoint_dir is not None and Path(checkpoint_dir).is_dir():
        with contextlib.suppress(Exception):  # a directory we cannot read has no checkpoint
            latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest:
        kept = (f"the last good checkpoint ({latest}, epoch {latest.rsplit('-', 1)[1]}) is "
                f"intact: fix the cause ({_FIXES}) and resume the run (--resume, or "
                "resume=True)")
    else:
        kept = (f"no epoch had been checkpointed yet: fix the cause ({_FIXES}) and start "
                "the run again")
    return RunWriteError(f"could not write {what} ({path}): {_reason(err)}; {kept}",
                         errno=getattr(err, "errno", None), path=path)


@dataclass
class History:
    """One row per completed epoch (see ``HISTORY_FIELDS``)."""

    rows: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        """All epochs' values of one field, as a float array (NaN where missing)."""
        return np.array([np.nan if r.get(name) is None else r[name] for r in self.rows],
                        dtype=float)

    @property
    def last(self) -> dict:
        return self.rows[-1] if self.rows else {}

    def to_csv(self, path) -> Path:
        return io.write_csv(path, self.rows)


def _pixels_tensor(x) -> tf.Tensor:
    """Training data as one flat tensor: uint8 pixels, or floats used as given."""
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a batch of images [N, 28, 28] or [N, D], got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if x.dtype == np.uint8:
        return tf.constant(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected uint8 pixels or float data, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("the training data contain NaN or infinite values")
    return tf.constant(x, tf.float32)


#: Runs of at least this many steps are compiled with XLA by default. XLA's compilation
#: takes about ten seconds per model on two cores and then saves some 7 ms per step of the
#: homework network (about 10 against 17.5 ms at batch 128), so it pays from about 1,400
#: steps (three epochs of MNIST); shorter runs (tests, the smoke profile) skip it.
XLA_MIN_STEPS = 2000

#: The learning-rate schedules ``fit`` knows (see the module docs).
LR_SCHEDULES = ("constant", "cosine", "exponential")

#: The schedule settings of a run that sets none: today's plain training. A run
#: directory whose ``fit.json`` predates these settings is read with these values.
SCHEDULE_DEFAULTS = {
    "lr_schedule": "constant", "lr_warmup_epochs": 0.0, "final_learning_rate": None,
    "lr_decay_epochs": None, "kl_warmup_epochs": 0.0, "kl_warmup_start": 0.0,
}


def _non_negative(name, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def training_schedule(
    epochs: float,
    learning_rate: float,
    lr_schedule: str = "constant",
    lr_warmup_epochs: float = 0.0,
    final_learning_rate: float | None = None,
    lr_decay_epochs: float | None = None,
    kl_warmup_epochs: float = 0.0,
    kl_warmup_start: float = 0.0,
) -> dict:
    """Check the schedule settings of a run and resolve their defaults.

    Args:
        epochs: the run's epochs: the decay horizon unless ``lr_decay_epochs`` is given.
        learning_rate: the peak learning rate (the constant one without a schedule).
        lr_schedule: ``"constant"`` (default), ``"cosine"`` or ``"exponential"``.
        lr_warmup_epochs: epochs (may be fractional) of linear learning-rate warm-up (0: none).
        final_learning_rate: the rate a decaying schedule ends at: at most
            ``learning_rate``; default 0 for ``cosine``; required (> 0) for
            ``exponential``; not allowed with ``constant``.
        lr_decay_epochs: the epoch at which the decay ends (counted from the run's
            start, so it includes the warm-up); default ``epochs``. Give it to be
            able to resume a decaying run to more epochs (at the final rate).
        kl_warmup_epochs: epochs over which the KL weight beta rises linearly to 1
            (0: none, beta = 1 throughout).
        kl_warmup_start: beta at the first step, in [0, 1] (needs ``kl_warmup_epochs``).

    Returns:
        A dict with the keys of ``SCHEDULE_DEFAULTS``, defaults resolved (numbers as
        floats), as stored in ``fit.json`` and ``config.json``.

    Raises:
        ValueError: an unknown schedule, a negative or non-finite number, or a
            setting that does not apply to the chosen schedule.
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                         f"got {lr_schedule!r}")
    peak = float(learning_rate)
    warmup = _non_negative("lr_warmup_epochs", lr_warmup_epochs)
    kl_epochs = _non_negative("kl_warmup_epochs", kl_warmup_epochs)
    kl_start = _non_negative("kl_warmup_start", kl_warmup_start)
    if kl_start > 1:
        raise ValueError(f"kl_warmup_start must be between 0 and 1, got {kl_warmup_start!r}")
    if kl_start and not kl_epochs:
        raise ValueError("kl_warmup_start needs a KL warm-up (kl_warmup_epochs > 0)")
    final = decay = None
    if lr_schedule == "constant":
        for name, value in (("final_learning_rate", final_learning_rate),
                            ("lr_decay_epochs", lr_decay_epochs)):
            if value is not None:
                raise ValueError(f"{name} applies to a decaying schedule (lr_schedule cosine "
                                 "or exponential), not to the constant one")
    else:
        if final_learning_rate is None and lr_schedule == "exponential":
            raise ValueError("the exponential schedule needs a final_learning_rate "
                             "(> 0, at most learning_rate)")
        final = _non_negative("final_learning_rate",
                              0.0 if final_learning_rate is None else final_learning_rate)
        if lr_schedule == "exponential" and final <= 0:
            raise ValueError(f"the exponential schedule needs final_learning_rate > 0, "
                             f"got {final_learning_rate!r}")
        if final > peak:
            raise ValueError(f"final_learning_rate ({final:g}) must be at most learning_rate "
                             f"({peak:g}): the schedule decays")
        decay = _non_negative("lr_decay_epochs", epochs if lr_decay_epochs is None
                              else lr_decay_epochs)
        if decay <= warmup:
            what = ("lr_decay_epochs" if lr_decay_epochs is not None
                    else "the decay's end (the run's epochs, as lr_decay_epochs is not given)")
            raise ValueError(f"{what} ({decay:g}) must be larger than lr_warmup_epochs "
                             f"({warmup:g}): the decay follows the warm-up")
    return {"lr_schedule": lr_schedule, "lr_warmup_epochs": warmup,
            "final_learning_rate": final, "lr_decay_epochs": decay,
            "kl_warmup_epochs": kl_epochs, "kl_warmup_start": kl_start}


def _step_tensor(step) -> tf.Tensor:
    return tf.cast(step, tf.float64)


def learning_rate_at(step, steps_per_epoch: int, learning_rate: float,
                     schedule: dict | None = None) -> tf.Tensor:
    """The learning rate of the update made at global step ``step`` (from 0).

    ``schedule`` is a ``training_schedule`` result (default: constant). Computed
    in float64 and returned as a float32 scalar tensor; ``fit`` evaluates exactly
    this function inside its compiled loop.
    """
    schedule = SCHEDULE_DEFAULTS if schedule is None else schedule
    t = _step_tensor(step)
    peak = tf.constant(float(learning_rate), tf.float64)
    warm = float(schedule["lr_warmup_epochs"]) * steps_per_epoch
    kind = schedule["lr_schedule"]
    if kind == "constant":
        rate = peak
    else:
        final = tf.constant(float(schedule["final_learning_rate"]), tf.float64)
        span = float(schedule["lr_decay_epochs"]) * steps_per_epoch - warm
        progress = tf.clip_by_value((t - warm) / span, 0.0, 1.0)
        if kind == "cosine":
            rate = final + (peak - final) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:  # exponential
            rate = peak * tf.exp(progress * tf.math.log(final / peak))
    if warm > 0:
        rate = rate * tf.minimum((t + 1.0) / warm, 1.0)
    return tf.cast(rate, tf.float32)


def kl_weight_at(step, steps_per_epoch: int, schedule: dict | None = None) -> tf.Tensor:
    """beta, the weight of the KL term in the objective at global step ``step`` (from 0).

    1 without a KL warm-up; otherwise ``min(1, start + (1 - start) * step / (E * S))``
    with ``E = kl_warmup_epochs`` and ``S = steps_per_epoch``: ``start`` at the
    first step, 1 from the first step of epoch ``E`` on. A float32 scalar tensor.
    """
    schedule = SCHEDULE_DEFAULTS if schedule is None else schedule
    epochs = float(schedule["kl_warmup_epochs"])
    if not epochs:
        return tf.constant(1.0, tf.float32)
    start = float(schedule["kl_warmup_start"])
    beta = start + (1.0 - start) * _step_tensor(step) / (epochs * steps_per_epoch)
    return tf.cast(tf.minimum(beta, 1.0), tf.float32)


def _transform(batch: tf.Tensor, variant: str, seed) -> tf.Tensor:
    if batch.dtype != tf.uint8:  # float data are used as they are
        return batch
    return data_lib.prepare(batch, variant, seed)


class _Trainer:
    """The compiled pieces of one ``fit`` call."""

    def __init__(self, model, optimizer, x, variant, batch_size, seed, n_samples, jit,
                 learning_rate=None, schedule=None):
        self.model, self.optimizer = model, optimizer
        self.x, self.variant, self.batch_size = x, variant, batch_size
        self.seed, self.n_samples = seed, n_samples
        self.n = int(x.shape[0])
        self.steps_per_epoch = self.n // batch_size
        # Without a schedule the compiled step is exactly the one of plain training: the
        # learning-rate variable is never assigned and the loss is the plain ELBO.
        schedule = SCHEDULE_DEFAULTS if schedule is None else schedule
        self.learning_rate, self.schedule = learning_rate, schedule
        self.scheduled_lr = (schedule["lr_schedule"] != "constant"
                             or schedule["lr_warmup_epochs"] > 0)
        self.kl_warmup = schedule["kl_warmup_epochs"] > 0
        optimizer.build(model.trainable_variables)
        self.permutation = tf.function(self._permutation, jit_compile=jit)
        self.run_steps = tf.function(self._run_steps, jit_compile=jit)

    def _permutation(self, epoch):
        """The epoch's batches as rows of image indices: ``[steps_per_epoch, batch_size]``."""
        keys = tf.random.stateless_uniform(
            [self.n], seed=stateless_seed(self.seed, SALT_SHUFFLE, epoch), alg="philox")
        used = self.steps_per_epoch * self.batch_size
        return tf.reshape(tf.argsort(keys)[:used], [self.steps_per_epoch, self.batch_size])

    def _run_steps(self, epoch, perm, start, count):
        """Steps ``start .. start+count-1`` of ``epoch``; stops early at a non-finite update."""
        model, variables = self.model, self.model.trainable_variables

        def body(i, sums, bad_step):
            step = start + i
            global_step = (tf.cast(epoch, tf.int64) * self.steps_per_epoch
                           + tf.cast(step, tf.int64))
            if self.scheduled_lr:  # Adam reads the variable when it applies the update
                self.optimizer.learning_rate = learning_rate_at(
                    global_step, self.steps_per_epoch, self.learning_rate, self.schedule)
            # gather, not slice: XLA treats a slice's offset as a compile-time
            # constant and would compile the loop again for every chunk.
            xb = _transform(tf.gather(self.x, tf.gather(perm, step)), self.variant,
                            stateless_seed(self.seed, SALT_DATA, epoch, step))
            with tf.GradientTape() as tape:
                elbo, rec, kl = model.training_terms(
                    xb, self.n_samples, seed=stateless_seed(self.seed, SALT_LATENT, epoch, step),
                    epoch=tf.cast(global_step, tf.float32) / self.steps_per_epoch)
                if self.kl_warmup:  # the objective weighs the KL by beta; elbo stays the ELBO
                    beta = kl_weight_at(global_step, self.steps_per_epoch, self.schedule)
                    loss = -tf.reduce_mean(rec - beta * kl)
                else:
                    loss = -tf.reduce_mean(elbo)
            grads = tape.gradient(loss, variables)
            finite = tf.math.is_finite(loss)
            for g in grads:
                finite = finite & tf.reduce_all(tf.math.is_finite(g))

            def apply():
                self.optimizer.apply_gradients(zip(grads, variables, strict=True))
                return tf.constant(True)

            tf.cond(finite, apply, lambda: tf.constant(False))
            means = tf.stack([tf.reduce_mean(elbo), tf.reduce_mean(rec), tf.reduce_mean(kl)])
            sums = tf.where(finite, sums + means, sums)
            return i + 1, sums, tf.where(finite, bad_step, step)

        _, sums, bad = tf.while_loop(
            lambda i, sums, bad: (i < count) & (bad < 0), body,
            [tf.constant(0), tf.zeros([3]), tf.constant(-1)])
        return sums, bad


def fit_settings(model, x_train, batch_size: int = 128, learning_rate: float = 1e-3,
                 seed: int = 0, n_samples: int = 1, data_variant: str | None = None,
                 schedule: dict | None = None) -> dict:
    """What a run's checkpoint must agree with to be resumed (stored as ``fit.json``).

    The training data enter as their count and a fingerprint (SHA-256 of the bytes);
    ``schedule`` is a ``training_schedule`` result (default: none, ``SCHEDULE_DEFAULTS``).
    """
    x = np.ascontiguousarray(x_train)
    return dict(model=model.config, n_train=int(x.shape[0]),
                data_sha256=hashlib.sha256(x.tobytes()).hexdigest(),
                data_variant=data_variant or model.likelihood.data_variant,
                batch_size=int(batch_size), learning_rate=float(learning_rate), seed=int(seed),
                n_samples=int(n_samples), **(SCHEDULE_DEFAULTS if schedule is None
                                             else schedule))


def completed_epochs(checkpoint_dir) -> int:
    """Epochs recorded by the newest checkpoint in ``checkpoint_dir`` (0 if there is none)."""
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def check_resume(checkpoint_dir, settings: dict, epochs: int) -> int:
    """Check that the run in ``checkpoint_dir`` can be resumed with ``settings`` up to ``epochs``.

    Returns:
        The epochs already completed (0 if there is no checkpoint).

    Raises:
        ValueError: the run was trained with other settings (named in the message),
            or it has already trained more than ``epochs`` epochs.
    """
    checkpoint_dir = Path(checkpoint_dir)
    done = completed_epochs(checkpoint_dir)
    if not done:
        return 0
    settings_path = checkpoint_dir / "fit.json"
    if settings_path.exists():
        # a fit.json written before the schedule settings existed: trained without them
        saved = {**SCHEDULE_DEFAULTS, **io.read_json(settings_path)}
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            hint = ""
            if (changed == ["lr_decay_epochs"] and saved.get("lr_decay_epochs") is not None
                    and settings["lr_decay_epochs"] is not None):
                hint = (f" (its learning rate decays over {saved['lr_decay_epochs']:g} "
                        "epochs: to train it longer, give that lr_decay_epochs explicitly)")
            raise ValueError(
                f"cannot resume {checkpoint_dir}: it was trained with different settings "
                f"({', '.join(changed)}){hint}; resume with the same settings or start a "
                "new run")
    if epochs < done:
        raise ValueError(f"cannot resume {checkpoint_dir} to {epochs} epochs: it has already "
                         f"trained {done}; ask for at least {done}")
    return done


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def fit(
    model,
    x_train,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    x_test=None,
    checkpoint_dir=None,
    resume: bool = False,
    progress: bool = True,
    n_samples: int = 1,
    data_variant: str | None = None,
    steps_per_call: int | None = None,
    jit_compile: bool | None = None,
    on_epoch_end=None,
    lr_schedule: str = "constant",
    lr_warmup_epochs: float = 0.0,
    final_learning_rate: float | None = None,
    lr_decay_epochs: float | None = None,
    kl_warmup_epochs: float = 0.0,
    kl_warmup_start: float = 0.0,
) -> History:
    """Train ``model`` by stochastic gradient ascent on the ELBO with Adam.

    Args:
        model: a ``vae_helpers.model.VAE``.
        x_train: uint8 pixels ``[N, 28, 28]`` or ``[N, 784]`` (transformed each
            step into the likelihood's data variant), or float data used as given.
        epochs: total number of epochs (a resumed run trains up to this number).
        batch_size: images per step.
        learning_rate: Adam's step size.
        seed: seeds the permutations, the data transforms and the z samples.
        x_test: optional test pixels; the test ELBO is then recorded every epoch
            (on one fixed transform of the test set).
        checkpoint_dir: where to write a checkpoint after every epoch.
        resume: continue from the newest checkpoint in ``checkpoint_dir``.
        progress: show a progress bar (drawn as ``$VAE_PROGRESS`` asks, see ``progress``).
        n_samples: z samples per image in the training ELBO.
        data_variant: override the likelihood's data variant
            (``"dequantized"``, ``"binarized"``, ``"scaled"``).
        steps_per_call: steps per compiled call (default: about a tenth of an epoch).
        jit_compile: compile the loop with XLA; ``None`` (the default) does so for runs
            of at least ``XLA_MIN_STEPS`` steps, where the compilation pays for itself.
        on_epoch_end: optional ``callback(epoch, history)`` called after each
            epoch's row is recorded and checkpointed (``epoch`` counts from 1),
            e.g. to redraw a learning curve.
        lr_schedule, lr_warmup_epochs, final_learning_rate, lr_decay_epochs: the
            learning-rate schedule (default: constant ``learning_rate``, no warm-up);
            see ``training_schedule`` and ``learning_rate_at``.
        kl_warmup_epochs, kl_warmup_start: KL warm-up (default: none); see
            ``kl_weight_at``. The recorded train ELBO is the true ELBO all the same.

    Returns:
        The ``History``: per epoch the mean training ELBO, reconstruction and KL
        over its steps, the test ELBO terms, and the wall-clock seconds.

    Randomness comes only from stateless seeds derived from ``seed``, the epoch and
    the step; ``fit`` does not touch global random state. A second ``fit`` call on
    the same model without ``resume`` starts at epoch 1 again (same shuffles and
    noise as the first call, fresh Adam state); to continue training, use a
    ``checkpoint_dir`` and ``resume=True``.

    Raises:
        TrainingDiverged: the loss or a gradient became non-finite. The message
            names the epoch and step; the offending update is not applied, and
            the checkpoint of the last completed epoch is left as it was.
        FileExistsError: ``checkpoint_dir`` holds a checkpoint and ``resume`` is False.
        ValueError: bad arguments, or a resume with settings (or data) other than the
            checkpoint's, or to fewer epochs than it already has.
        CheckpointError: ``resume`` found checkpoints, but none can be read.
        RunWriteError: a checkpoint or ``history.json`` could not be written (disk
            full, file too large, directory not writable). The message names the
            file and the last good checkpoint, which is left intact: a half-written
            checkpoint never becomes the latest one.
        RunLocked: another process is training in ``checkpoint_dir`` (a checkpoint
            directory is locked while ``fit`` writes into it, see ``locks.run_lock``).
    """
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("n_samples", n_samples)
    if not (isinstance(learning_rate, numbers.Real) and math.isfinite(learning_rate)
            and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    learning_rate = float(learning_rate)
    schedule = training_schedule(epochs, learning_rate, lr_schedule, lr_warmup_epochs,
                                 final_learning_rate, lr_decay_epochs, kl_warmup_epochs,
                                 kl_warmup_start)
    variant = data_variant or model.likelihood.data_variant
    x = _pixels_tensor(x_train)
    if x.shape[0] < batch_size:
        raise ValueError(f"batch_size ({batch_size}) is larger than the training set "
                         f"({x.shape[0]} images)")
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    if jit_compile is None:  # decided by the whole run, so a resumed run decides alike
        jit_compile = epochs * (x.shape[0] // batch_size) >= XLA_MIN_STEPS
    trainer = _Trainer(model, optimizer, x, variant, batch_size, seed, n_samples, jit_compile,
                       learning_rate, schedule)
    steps = trainer.steps_per_epoch
    chunk = steps_per_call or max(1, math.ceil(steps / 10))
    # The test set is transformed once with the fixed TEST_SEED, whatever the training
    # seed, so that test numbers of different runs are computed on the same data.
    test = None if x_test is None else prepare_eval_data(x_test, variant)

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    with contextlib.ExitStack() as stack:
        history = History()
        manager = None
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            try:  # one process at a time writes checkpoints here
                stack.enter_context(run_lock(checkpoint_dir))
            except OSError as err:
                raise write_failure("the lock file", err.filename or checkpoint_dir, err,
                                    checkpoint_dir) from err
            ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
            manager = tf.train.CheckpointManager(ckpt, str(checkpoint_dir), max_to_keep=2)
            settings = fit_settings(model, x_train, batch_size, learning_rate, seed, n_samples,
                                    variant, schedule)
            history = _start_or_resume(manager, ckpt, checkpoint_dir, settings, resume, epochs,
                                       epoch_var)
            _remove_leftovers(checkpoint_dir)
        start_epoch = int(epoch_var.numpy())

        if progress:
            bar = progress_bar(epochs * steps, "training", "step", initial=start_epoch * steps)
            if bar is not None:
                stack.callback(bar.close)
        else:
            bar = None
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            perm = trainer.permutation(tf.constant(epoch, tf.int64))
            totals = np.zeros(3)
            done = 0
            while done < steps:
                count = min(chunk, steps - done)
                sums, bad = trainer.run_steps(tf.constant(epoch, tf.int64), perm,
                                              tf.constant(done), tf.constant(count))
                bad = int(bad)
                if bad >= 0:
                    raise TrainingDiverged(_divergence_message(epoch, bad, steps, manager))
                totals += sums.numpy()
                done += count
                if bar is not None:
                    bar.update(count)
                    bar.set_postfix(epoch=epoch + 1, elbo=f"{totals[0] / done:.2f}",
                                    refresh=False)
            row = dict(epoch=epoch + 1, train_elbo=totals[0] / steps,
                       train_reconstruction=totals[1] / steps, train_kl=totals[2] / steps,
                       test_elbo=None, test_reconstruction=None, test_kl=None)
            if test is not None:
                result = evaluate_elbo(model, test, seed=seed)
                row.update(test_elbo=result["elbo"], test_reconstruction=result["reconstruction"],
                           test_kl=result["kl"])
            row["seconds"] = time.perf_counter() - t0
            history.rows.append({k: _py(v) for k, v in row.items()})
            epoch_var.assign(epoch + 1)
            if manager is not None:
                # History first: after a crash between the two writes it is one row
                # ahead of the checkpoint, and resuming truncates it to the checkpoint.
                _write_json(checkpoint_dir / "history.json", history.rows,
                            "the training history", checkpoint_dir)
                _save_checkpoint(manager, checkpoint_dir, epoch + 1)
            if bar is not None and test is not None:
                bar.set_postfix(epoch=epoch + 1, elbo=f"{row['train_elbo']:.2f}",
                                test_elbo=f"{row['test_elbo']:.2f}", refresh=True)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, history)
    return history


def _write_json(path: Path, obj, what: str, checkpoint_dir) -> None:
    try:
        io.write_json(path, obj)
    except OSError as err:
        raise write_failure(what, path, err, checkpoint_dir) from err


def _save_checkpoint(manager, checkpoint_dir: Path, number: int) -> None:
    """``manager.save``; a failed save leaves the previous checkpoint the latest one.

    ``CheckpointManager.save`` writes the new checkpoint's files (data into a
    temporary directory, then renamed; the index through a temporary file), and
    only then records it as the latest in the ``checkpoint`` state file (written
    atomically) and deletes the oldest. A save that fails part-way therefore has
    recorded and deleted nothing; its unrecorded files are removed here.
    """
    try:
        manager.save(checkpoint_number=number)
    except (OSError, tf.errors.OpError) as err:
        _remove_unrecorded(checkpoint_dir, number)
        raise write_failure(f"the checkpoint of epoch {number}",
                            checkpoint_dir / f"ckpt-{number}", err, checkpoint_dir) from err


def _remove_leftovers(checkpoint_dir: Path) -> None:
    """Temporary files of saves that were killed or failed (none is ever read back; the
    directory's lock guarantees that no other process is saving meanwhile)."""
    for path in checkpoint_dir.glob("ckpt-*_temp"):
        shutil.rmtree(path, ignore_errors=True)
    for path in checkpoint_dir.glob("checkpoint.tmp*"):
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_unrecorded(checkpoint_dir: Path, number: int) -> None:
    """Remove the files of checkpoint ``number`` unless the state file records it."""
    with contextlib.suppress(Exception):
        state = tf.train.get_checkpoint_state(str(checkpoint_dir))
        recorded = set() if state is None else {
            Path(p).name for p in [state.model_checkpoint_path,
                                   *state.all_model_checkpoint_paths]}
        if f"ckpt-{number}" not in recorded:
            for path in checkpoint_dir.glob(f"ckpt-{number}.*"):
                with contextlib.suppress(OSError):
                    path.unlink()
    _remove_leftovers(checkpoint_dir)


def _py(v):
    return None if v is None else (int(v) if isinstance(v, (int, np.integer)) else float(v))


def _divergence_message(epoch, step, steps, manager) -> str:
    where = f"epoch {epoch + 1}, step {step + 1} of {steps}"
    if manager is not None and manager.latest_checkpoint:
        kept = f"the last good checkpoint ({manager.latest_checkpoint}) is intact"
    else:
        kept = "no checkpoint was written before it"
    return (f"training diverged at {where}: the loss or a gradient became NaN or infinite, "
            f"so that update was not applied and training stopped; {kept}. "
            "Try a smaller learning_rate.")


def _start_or_resume(manager, ckpt, checkpoint_dir: Path, settings, resume, epochs, epoch_var):
    latest = manager.latest_checkpoint
    if latest and not resume:
        raise FileExistsError(
            f"{checkpoint_dir} already holds a checkpoint ({Path(latest).name}); pass "
            "resume=True to continue that run, or give an empty checkpoint_dir")
    if not latest:
        _write_json(checkpoint_dir / "fit.json", settings, "the training settings",
                    checkpoint_dir)
        return History()
    check_resume(checkpoint_dir, settings, epochs)
    failures = []
    for path in reversed(manager.checkpoints):  # newest first; an older one if it is damaged
        try:
            ckpt.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, OSError) as err:
            failures.append(f"{Path(path).name} ({type(err).__name__})")
            continue
        if failures:
            warnings.warn(f"{', '.join(failures)} could not be read; resuming from "
                          f"{Path(path).name} instead", stacklevel=3)
        break
    else:
        raise CheckpointError(
            f"cannot resume {checkpoint_dir}: no checkpoint there can be read "
            f"({', '.join(failures)}); start a new run")
    rows = []
    if (checkpoint_dir / "history.json").exists():
        rows = io.read_json(checkpoint_dir / "history.json")
    return History(rows=rows[: int(epoch_var.numpy())])
