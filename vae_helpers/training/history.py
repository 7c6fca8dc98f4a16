"""The history of a training run: one row per completed epoch.

A row holds the epoch (counted from 1), the mean training ELBO, reconstruction and KL
over the epoch's steps, the test ELBO terms after the epoch (``None`` without a test
set), ``sigma2``, the likelihood's learned variance after the epoch (``None`` for a
model without a learned scalar variance: a Bernoulli likelihood, or a diagonal
covariance), and the epoch's wall-clock seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vae_helpers import io

HISTORY_FIELDS = (
    "epoch", "train_elbo", "train_reconstruction", "train_kl",
    "test_elbo", "test_reconstruction", "test_kl", "sigma2", "seconds",
)


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
        """The last epoch's row (empty before the first epoch)."""
        return self.rows[-1] if self.rows else {}

    def to_csv(self, path) -> Path:
        """Write the rows as a CSV file (atomically); returns its path."""
        return io.write_csv(path, self.rows)
