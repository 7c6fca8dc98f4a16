r"""The learning-rate schedule and the KL warm-up, as functions of the global step.

Both are closed-form functions of the global step ``t = epoch * steps_per_epoch + step``
(counting from 0), evaluated inside the compiled training loop, so a resumed run follows
them exactly as an uninterrupted one. ``schedule`` is ``TrainingSettings.schedule``
(default ``SCHEDULE_DEFAULTS``: a constant rate, no warm-up).

* ``learning_rate_at``: an optional linear warm-up, ``lr_t = peak * (t + 1) / W`` for the
  first ``W = lr_warmup_epochs * steps_per_epoch`` steps, then the schedule from ``peak``
  (``learning_rate``) to ``final_learning_rate`` over the steps up to
  ``lr_decay_epochs * steps_per_epoch``, and ``final_learning_rate`` after that. With
  progress ``p = (t - W) / (T - W)`` clipped to [0, 1]: ``constant`` keeps ``peak``;
  ``cosine`` gives ``final + (peak - final) * (1 + cos(pi p)) / 2``; ``exponential``
  gives ``peak * (final / peak) ** p``. The value is assigned to Adam's learning-rate
  variable before each step's update.
* ``kl_weight_at`` (KL warm-up, "beta annealing"): the objective maximised is
  ``reconstruction - beta_t * KL`` with
  ``beta_t = min(1, start + (1 - start) * t / (kl_warmup_epochs * steps_per_epoch))``.
  Only the gradient sees beta: the history's ``train_elbo`` (and its reconstruction and
  KL terms) is always the true ELBO, beta = 1.
"""

from __future__ import annotations

import math

from vae_helpers.backend import tf
from vae_helpers.training.settings import SCHEDULE_DEFAULTS


def _step_tensor(step) -> tf.Tensor:
    return tf.cast(step, tf.float64)


def learning_rate_at(step, steps_per_epoch: int, learning_rate: float,
                     schedule: dict | None = None) -> tf.Tensor:
    """The learning rate of the update made at global step ``step`` (from 0).

    ``schedule`` is a ``TrainingSettings.schedule`` (default: constant). Computed
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
