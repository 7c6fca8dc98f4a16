"""Training: stochastic gradient ascent on the ELBO with Adam, in four pieces.

``settings``
    ``TrainingSettings``: epochs, batch size, learning rate and its schedule, KL
    warm-up, seed; checked once, frozen, each field naming its command-line flag.
``schedule``
    the learning rate and the KL weight at every step (closed forms).
``checkpoints``
    ``Checkpoints``, the one owner of a run's checkpoint folder (``fit.json``,
    ``history.json``, ``ckpt-N``): resume checks, restores, saves, write failures.
``loop``
    ``fit(model, x_train, settings, ...)``: the compiled loop, ``TrainingDiverged``, and
    ``learned_variance(model)``, the σ² each history row records.

The names a user needs are here::

    from vae_helpers.training import TrainingSettings, fit

    history = fit(model, x_train, TrainingSettings(epochs=5), x_test=x_test)
"""

from vae_helpers.training.checkpoints import (
    CheckpointError,
    Checkpoints,
    RunWriteError,
    completed_epochs,
)
from vae_helpers.training.history import HISTORY_FIELDS, History
from vae_helpers.training.loop import TrainingDiverged, fit, learned_variance
from vae_helpers.training.schedule import kl_weight_at, learning_rate_at
from vae_helpers.training.settings import SCHEDULE_DEFAULTS, TrainingSettings

__all__ = ["CheckpointError", "Checkpoints", "HISTORY_FIELDS", "History", "RunWriteError",
           "SCHEDULE_DEFAULTS", "TrainingDiverged", "TrainingSettings", "completed_epochs",
           "fit", "kl_weight_at", "learned_variance", "learning_rate_at"]
