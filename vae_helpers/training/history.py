"""The history of a training run: one row per completed epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vae_helpers import io

HISTORY_FIELDS = (
    "epoch", "train_elbo", "train_reconstruction", "train_kl",
    "test_elbo", "test_reconstruction", "test_kl", "seconds",
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
