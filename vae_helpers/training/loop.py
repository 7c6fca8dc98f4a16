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
progress in epochs) as ``(objective, reconstruction, kl)``: for ``model.VAE`` with
the default β = 1 the objective is ``elbo_terms``'s ELBO above; a model with a KL
weight β ascends ``reconstruction - β * kl`` instead, and a model whose estimator
differs from its ELBO, such as the Gumbel-softmax relaxation of
``discrete.CategoricalVAE``, returns the terms of that estimator. With a KL warm-up
the loss is ``-(reconstruction - w * β * kl)``, w the warm-up's weight at the step.

What the history records: its training columns are the means over the epoch's steps
of ``reconstruction``, ``kl`` and ``reconstruction - kl`` of ``training_terms``,
never weighted by β or the warm-up (for a relaxed model they are the relaxed terms,
which do not bound :math:`\log p(x)`); its test columns are always the model's
``elbo_terms``, the true ELBO.

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

The settings come checked, as a ``TrainingSettings``; the learning-rate schedule and the
KL warm-up are ``training.schedule``'s closed-form functions of the global step, computed
inside the compiled loop. With a ``checkpoint_dir``, the folder's files are
``training.checkpoints``'s: the run resumes from its last completed epoch with the numbers
of an uninterrupted run, a write that fails raises ``RunWriteError`` and leaves the last
good checkpoint as it was, and a NaN raises ``TrainingDiverged`` before the bad update is
applied or saved.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from vae_helpers import data as data_lib
from vae_helpers.backend import tf
from vae_helpers.evaluate import evaluate_elbo, prepare_eval_data
from vae_helpers.progress import progress_bar
from vae_helpers.seeding import SALT_DATA, SALT_LATENT, SALT_SHUFFLE, stateless_seed
from vae_helpers.training.checkpoints import Checkpoints, run_identity
from vae_helpers.training.history import History
from vae_helpers.training.schedule import kl_weight_at, learning_rate_at
from vae_helpers.training.settings import TrainingSettings


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite; the bad update was not applied."""


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


def _transform(batch: tf.Tensor, variant: str, seed) -> tf.Tensor:
    if batch.dtype != tf.uint8:  # float data are used as they are
        return batch
    return data_lib.prepare(batch, variant, seed)


class _Trainer:
    """The compiled pieces of one ``fit`` call."""

    def __init__(self, model, optimizer, x, variant: str, settings: TrainingSettings, jit: bool):
        self.model, self.optimizer = model, optimizer
        self.x, self.variant, self.batch_size = x, variant, settings.batch_size
        self.seed, self.n_samples = settings.seed, settings.n_samples
        self.n = int(x.shape[0])
        self.steps_per_epoch = self.n // self.batch_size
        # Without a schedule the compiled step is exactly the one of plain training: the
        # learning-rate variable is never assigned and the loss is the plain ELBO.
        schedule = settings.schedule
        self.learning_rate, self.schedule = settings.learning_rate, schedule
        self.scheduled_lr = (schedule["lr_schedule"] != "constant"
                             or schedule["lr_warmup_epochs"] > 0)
        self.kl_warmup = schedule["kl_warmup_epochs"] > 0
        self.beta = float(getattr(model, "beta", 1.0))
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
                objective, rec, kl = model.training_terms(
                    xb, self.n_samples, seed=stateless_seed(self.seed, SALT_LATENT, epoch, step),
                    epoch=tf.cast(global_step, tf.float32) / self.steps_per_epoch)
                if self.kl_warmup:  # the warm-up's weight times the model's beta
                    weight = kl_weight_at(global_step, self.steps_per_epoch, self.schedule)
                    loss = -tf.reduce_mean(rec - weight * self.beta * kl)
                else:
                    loss = -tf.reduce_mean(objective)
            elbo = rec - kl  # what the history records: the terms unweighted
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


def fit(model, x_train, settings: TrainingSettings | None = None, x_test=None,
        checkpoint_dir=None, resume: bool = False, progress: bool = True,
        on_epoch_end=None) -> History:
    """Train ``model`` by stochastic gradient ascent on the ELBO with Adam.

    Args:
        model: a ``vae_helpers.model.VAE`` (or ``discrete.CategoricalVAE``).
        x_train: uint8 pixels ``[N, 28, 28]`` or ``[N, 784]`` (transformed each
            step into the data variant), or float data used as given.
        settings: a ``TrainingSettings`` (default: ``TrainingSettings()``, the homework's
            100 epochs of Adam at 0.001, batch 128, seed 0).
        x_test: optional test pixels; the test ELBO is then recorded every epoch
            (on one fixed transform of the test set).
        checkpoint_dir: a folder to write a checkpoint into after every epoch, or a
            ``checkpoints.Checkpoints`` made (and checked) for this run by the caller.
        resume: continue from the newest checkpoint in ``checkpoint_dir`` (a
            ``Checkpoints`` says itself whether it resumes).
        progress: show a progress bar (drawn as ``$VAE_PROGRESS`` asks, see ``progress``).
        on_epoch_end: optional ``callback(epoch, history)`` called after each
            epoch's row is recorded and checkpointed (``epoch`` counts from 1),
            e.g. to redraw a learning curve.

    Returns:
        The ``History``: per epoch the mean training ELBO, reconstruction and KL
        over its steps, the test ELBO terms, the learned likelihood variance σ² after
        the epoch (``learned_variance``), and the wall-clock seconds.

    Randomness comes only from stateless seeds derived from the seed, the epoch and
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
            directory is locked while ``fit`` writes into it, see ``outdirs.run_lock``).
    """
    settings = TrainingSettings() if settings is None else settings
    if not isinstance(settings, TrainingSettings):
        raise TypeError(f"settings must be a TrainingSettings, got {type(settings).__name__}")
    epochs, batch_size = settings.epochs, settings.batch_size
    variant = settings.data_variant or model.likelihood.data_variant
    x = _pixels_tensor(x_train)
    if x.shape[0] < batch_size:
        raise ValueError(f"batch_size ({batch_size}) is larger than the training set "
                         f"({x.shape[0]} images)")
    optimizer = tf.keras.optimizers.Adam(settings.learning_rate)
    jit = settings.jit_compile
    if jit is None:  # decided by the whole run, so a resumed run decides alike
        jit = epochs * (x.shape[0] // batch_size) >= XLA_MIN_STEPS
    trainer = _Trainer(model, optimizer, x, variant, settings, jit)
    steps = trainer.steps_per_epoch
    chunk = settings.steps_per_call or max(1, math.ceil(steps / 10))
    # The test set is transformed once with the fixed TEST_SEED, whatever the training
    # seed, so that test numbers of different runs are computed on the same data.
    test = None if x_test is None else prepare_eval_data(x_test, variant)

    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    store = checkpoint_dir
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, Checkpoints):
        store = Checkpoints(checkpoint_dir, run_identity(model, x_train, settings), epochs,
                            resume)
    with contextlib.ExitStack() as stack:
        history = History()
        if store is not None:
            history = stack.enter_context(store.open(model, optimizer, epoch_var))
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
                    raise TrainingDiverged(_divergence_message(epoch, bad, steps, store))
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
                result = evaluate_elbo(model, test, seed=settings.seed)
                row.update(test_elbo=result["elbo"], test_reconstruction=result["reconstruction"],
                           test_kl=result["kl"])
            row["sigma2"] = learned_variance(model)
            row["seconds"] = time.perf_counter() - t0
            history.rows.append({k: _py(v) for k, v in row.items()})
            epoch_var.assign(epoch + 1)
            if store is not None:
                store.save(history, epoch + 1)
            if bar is not None and test is not None:
                bar.set_postfix(epoch=epoch + 1, elbo=f"{row['train_elbo']:.2f}",
                                test_elbo=f"{row['test_elbo']:.2f}", refresh=True)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, history)
    return history


def learned_variance(model) -> float | None:
    """The learned scalar variance σ² of ``model``'s likelihood, or ``None`` when it has
    none (a Bernoulli likelihood, or a diagonal covariance with one variance per pixel)."""
    likelihood = getattr(model, "likelihood", None)
    if getattr(likelihood, "covariance", None) != "scalar":
        return None
    return float(likelihood.variance)


def _py(v):
    return None if v is None else (int(v) if isinstance(v, (int, np.integer)) else float(v))


def _divergence_message(epoch, step, steps, store) -> str:
    where = f"epoch {epoch + 1}, step {step + 1} of {steps}"
    if store is not None and store.latest:
        kept = f"the last good checkpoint ({store.latest}) is intact"
    else:
        kept = "no checkpoint was written before it"
    return (f"training diverged at {where}: the loss or a gradient became NaN or infinite, "
            f"so that update was not applied and training stopped; {kept}. "
            "Try a smaller learning_rate.")
