"""The settings of a training run: checked once, when they are made, then passed down.

``TrainingSettings`` is a frozen dataclass of what ``fit`` needs besides the model and
the data. Its fields name the command-line flags that set them
(``TrainingSettings.flag("lr_schedule") == "--lr-schedule"``), and a bad value is a
``ValueError`` raised when the object is made, whose message names the field
(``with_flags`` turns the names into the flags, for the command line).

The learning-rate schedule and the KL warm-up (``schedule``)
-------------------------------------------------------------
Both are off by default (a constant learning rate and the plain ELBO). ``schedule``
resolves their defaults: a decaying schedule (``cosine``, ``exponential``) ends at
``final_learning_rate`` (default 0 for cosine, required for exponential) at epoch
``lr_decay_epochs`` (default: the run's ``epochs``, so resuming it to more epochs
changes it and is refused, unless ``lr_decay_epochs`` is given explicitly); a warm-up of
``lr_warmup_epochs`` precedes it; the KL weight rises from ``kl_warmup_start`` to 1 over
``kl_warmup_epochs``. ``training.schedule`` evaluates them at every step. The warm-up's
weight multiplies the model's own fixed KL weight ``beta`` (a model argument, default 1,
see ``model.VAE``): the KL term of the loss is weighted by ``w * beta``.

What a run is (``IDENTITY``)
----------------------------
A checkpoint is resumed only with the settings it was trained with: the fields of
``IDENTITY`` enter the run's ``fit.json`` (with the schedule resolved). ``steps_per_call``
and ``jit_compile`` only decide how the loop is run, and are not part of it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field

import numpy as np

#: The learning-rate schedules ``fit`` knows.
LR_SCHEDULES = ("constant", "cosine", "exponential")

#: The schedule of a run that sets none: plain training. A run whose ``fit.json``
#: predates the schedule settings is read with these values.
SCHEDULE_DEFAULTS = {
    "lr_schedule": "constant", "lr_warmup_epochs": 0.0, "final_learning_rate": None,
    "lr_decay_epochs": None, "kl_warmup_epochs": 0.0, "kl_warmup_start": 0.0,
}


def _flag(default, flag: str | None = None):
    return field(default=default, metadata={"flag": flag})


@dataclass(frozen=True)
class TrainingSettings:
    """How a model is trained: ``fit(model, x_train, settings, ...)``.

    Attributes:
        epochs: total number of epochs (a resumed run trains up to this number).
        batch_size: images per step.
        learning_rate: Adam's step size (the peak of a schedule).
        seed: seeds the permutations, the data transforms and the z samples.
        lr_schedule: ``"constant"``, ``"cosine"`` or ``"exponential"``.
        lr_warmup_epochs: epochs (may be fractional) of linear learning-rate warm-up.
        final_learning_rate: where a decaying schedule ends (at most ``learning_rate``).
        lr_decay_epochs: the epoch at which the decay ends, counted from the start.
        kl_warmup_epochs: epochs over which the KL weight rises linearly to 1 (0: none).
        kl_warmup_start: the KL weight at the first step of a warm-up, in [0, 1].
        n_samples: z samples per image in the training ELBO.
        data_variant: the data variant to train on (``"dequantized"``, ``"binarized"``,
            ``"scaled"``); ``None``: the likelihood's own.
        steps_per_call: steps per compiled call (``None``: about a tenth of an epoch).
        jit_compile: compile the loop with XLA; ``None``: for runs of at least
            ``training.loop.XLA_MIN_STEPS`` steps, where the compilation pays for itself.

    Raises:
        ValueError: on construction, a value that is out of range or does not apply
            (the message names the field).
    """

    epochs: int = _flag(100, "--epochs")
    batch_size: int = _flag(128, "--batch-size")
    learning_rate: float = _flag(1e-3, "--learning-rate")
    seed: int = _flag(0, "--seed")
    lr_schedule: str = _flag("constant", "--lr-schedule")
    lr_warmup_epochs: float = _flag(0.0, "--lr-warmup-epochs")
    final_learning_rate: float | None = _flag(None, "--final-learning-rate")
    lr_decay_epochs: float | None = _flag(None, "--lr-decay-epochs")
    kl_warmup_epochs: float = _flag(0.0, "--kl-warmup-epochs")
    kl_warmup_start: float = _flag(0.0, "--kl-warmup-start")
    n_samples: int = _flag(1)
    data_variant: str | None = _flag(None)
    steps_per_call: int | None = _flag(None)
    jit_compile: bool | None = _flag(None)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "n_samples"):
            _check_positive_int(name, getattr(self, name))
            object.__setattr__(self, name, int(getattr(self, name)))
        rate = self.learning_rate
        if not (isinstance(rate, numbers.Real) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {rate!r}")
        object.__setattr__(self, "learning_rate", float(rate))
        _resolve(self)  # checks the schedule

    @property
    def schedule(self) -> dict:
        """The learning-rate schedule and the KL warm-up with their defaults resolved
        (the keys of ``SCHEDULE_DEFAULTS``, numbers as floats), as ``fit.json`` and
        ``config.json`` store them."""
        return _resolve(self)

    def replace(self, **changes) -> TrainingSettings:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def flag(cls, name: str) -> str | None:
        """The command-line flag that sets the field ``name`` (``None``: none does)."""
        return {f.name: f.metadata["flag"] for f in dataclasses.fields(cls)}[name]

    @classmethod
    def with_flags(cls, text: str) -> str:
        """``text`` with the names of the fields that have a flag replaced by the flag."""
        flags = {f.name: f.metadata["flag"] for f in dataclasses.fields(cls)
                 if f.metadata["flag"]}
        return re.sub(r"\b(" + "|".join(flags) + r")\b", lambda m: flags[m.group(1)], text)


#: The fields that make a run what it is: resuming with another value of one is refused.
IDENTITY = ("batch_size", "learning_rate", "seed", "n_samples")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _non_negative(name, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _resolve(s: TrainingSettings) -> dict:
    """``TrainingSettings.schedule``; raises ``ValueError`` for settings that conflict."""
    if s.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                         f"got {s.lr_schedule!r}")
    peak = s.learning_rate
    warmup = _non_negative("lr_warmup_epochs", s.lr_warmup_epochs)
    kl_epochs = _non_negative("kl_warmup_epochs", s.kl_warmup_epochs)
    kl_start = _non_negative("kl_warmup_start", s.kl_warmup_start)
    if kl_start > 1:
        raise ValueError(f"kl_warmup_start must be between 0 and 1, got {s.kl_warmup_start!r}")
    if kl_start and not kl_epochs:
        raise ValueError("kl_warmup_start needs a KL warm-up (kl_warmup_epochs > 0)")
    final = decay = None
    if s.lr_schedule == "constant":
        for name, value in (("final_learning_rate", s.final_learning_rate),
                            ("lr_decay_epochs", s.lr_decay_epochs)):
            if value is not None:
                raise ValueError(f"{name} applies to a decaying schedule (lr_schedule cosine "
                                 "or exponential), not to the constant one")
    else:
        if s.final_learning_rate is None and s.lr_schedule == "exponential":
            raise ValueError("the exponential schedule needs a final_learning_rate "
                             "(> 0, at most learning_rate)")
        final = _non_negative("final_learning_rate",
                              0.0 if s.final_learning_rate is None else s.final_learning_rate)
        if s.lr_schedule == "exponential" and final <= 0:
            raise ValueError(f"the exponential schedule needs final_learning_rate > 0, "
                             f"got {s.final_learning_rate!r}")
        if final > peak:
            raise ValueError(f"final_learning_rate ({final:g}) must be at most learning_rate "
                             f"({peak:g}): the schedule decays")
        decay = _non_negative("lr_decay_epochs", s.epochs if s.lr_decay_epochs is None
                              else s.lr_decay_epochs)
        if decay <= warmup:
            what = ("lr_decay_epochs" if s.lr_decay_epochs is not None
                    else "the decay's end (the run's epochs, as lr_decay_epochs is not given)")
            raise ValueError(f"{what} ({decay:g}) must be larger than lr_warmup_epochs "
                             f"({warmup:g}): the decay follows the warm-up")
    return {"lr_schedule": s.lr_schedule, "lr_warmup_epochs": warmup,
            "final_learning_rate": final, "lr_decay_epochs": decay,
            "kl_warmup_epochs": kl_epochs, "kl_warmup_start": kl_start}
