"""Figures of the course: image grids, the latent scatter, manifold grids, learning curves,
contingency tables.

Every plotting function returns its ``matplotlib`` figure, so a notebook shows it
and ``save_figure`` writes it as a PNG into the run directory. Nothing here
changes matplotlib's global settings.

Manifold grids decode a regular grid of latent codes: row ``i`` of the picture
holds ``z2 = z2_values[i]`` with ``z2`` decreasing downwards (as on a plot's
y axis), column ``j`` holds ``z1 = z1_values[j]``. ``range_grid`` spans the
observed min..max of the codes (Problem 3b); ``prior_quantile_grid`` places the
codes at equally spaced quantiles of the prior's marginals, so every tile stands
for the same prior probability mass (Kingma & Welling, 2014, Fig. 4).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from vae_helpers import io

IMAGE_SHAPE = (28, 28)
FIGURES_DIR = "figures"


def tile_images(images, rows: int, cols: int, image_shape=IMAGE_SHAPE, pad: int = 1,
                pad_value: float = 1.0) -> np.ndarray:
    """Arrange ``rows * cols`` flattened images in one 2-D array, row by row.

    Args:
        images: ``[rows * cols, H * W]`` (or ``[rows * cols, H, W]``) pixel values.
        rows, cols: the grid.
        image_shape: ``(H, W)`` of one image.
        pad: pixels of ``pad_value`` between tiles.

    Returns:
        An array of shape ``[rows * (H + pad) - pad, cols * (W + pad) - pad]``.
    """
    images = np.asarray(images, dtype=np.float32)
    h, w = image_shape
    if images.shape[0] != rows * cols or images[0].size != h * w:
        raise ValueError(f"tile_images needs {rows}x{cols} = {rows * cols} images of "
                         f"{h}x{w} pixels, got an array of shape {images.shape}")
    images = images.reshape(rows, cols, h, w)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), pad_value, np.float32)
    for i in range(rows):
        for j in range(cols):
            out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = images[i, j]
    return out


def plot_grid(images, rows: int = 10, cols: int = 10, title: str | None = None, ax=None):
    """Show ``rows * cols`` images as one grid (grey scale, 0 = black, 1 = white)."""
    fig, ax = _figure(ax, (0.5 * cols, 0.5 * rows + 0.4))
    ax.imshow(tile_images(images, rows, cols), cmap="gray", vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def plot_grids_side_by_side(left, right, left_title: str, right_title: str,
                            rows: int = 10, cols: int = 10, suptitle: str | None = None):
    """Two image grids beside each other (e.g. real digits and model samples)."""
    fig, axes = plt.subplots(1, 2, figsize=(cols + 1, 0.5 * rows + 0.9), squeeze=True)
    plot_grid(left, rows, cols, left_title, ax=axes[0])
    plot_grid(right, rows, cols, right_title, ax=axes[1])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_latent_scatter(z, labels, title: str = "Test set in latent space (means of q(z|x))",
                        ax=None, max_points: int | None = None, seed: int = 0,
                        legend: bool = True):
    """Scatter 2-D latent codes coloured by digit label, with a legend.

    Args:
        z: ``[N, 2]`` codes (the means of q(z|x) for the test images).
        labels: ``[N]`` digit labels 0..9.
        max_points: plot a random subset of this size (all when ``None``).
        legend: draw the legend of the digits (right of the axes); when several
            scatters share a figure, draw it beside the last one only.
    """
    z = np.asarray(z, dtype=np.float32)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"plot_latent_scatter needs 2-D codes [N, 2], got shape {z.shape}; "
                         "for a larger latent space project the codes to 2-D first")
    if len(labels) != len(z):
        raise ValueError(f"{len(z)} codes but {len(labels)} labels")
    if max_points is not None and len(z) > max_points:
        keep = np.random.default_rng(seed).choice(len(z), max_points, replace=False)
        z, labels = z[keep], labels[keep]
    fig, ax = _figure(ax, (7.0, 6.0))
    cmap = plt.get_cmap("tab10")
    for digit in range(10):
        sel = labels == digit
        ax.scatter(z[sel, 0], z[sel, 1], s=3, alpha=0.6, color=cmap(digit), label=str(digit),
                   rasterized=True)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(title)
    if legend:
        ax.legend(title="digit", markerscale=4, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    fig.tight_layout()
    return fig


def range_grid(z, n: int = 20):
    """``n`` equally spaced values from min to max of each of the two columns of ``z``."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"range_grid needs 2-D codes [N, 2], got shape {z.shape}")
    lo, hi = z.min(axis=0), z.max(axis=0)
    return np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)


def prior_quantile_grid(prior, n: int = 20, tail: float | None = None):
    """Codes at the quantiles ``(i + 0.5) / n`` (or ``tail .. 1 - tail``) of a prior's marginals.

    Args:
        prior: a 2-D prior distribution with independent marginals (``model.prior_distribution()``).
        n: values per axis.
        tail: if given, the quantiles run evenly from ``tail`` to ``1 - tail``.
    """
    from vae_helpers.backend import tfd

    if tail is None:
        probs = (np.arange(n) + 0.5) / n
    else:
        probs = np.linspace(tail, 1.0 - tail, n)
    if isinstance(prior, tfd.Independent):
        marginal = prior.distribution
    elif isinstance(prior, tfd.MultivariateNormalDiag):
        marginal = tfd.Normal(prior.mean(), prior.stddev())
    else:
        raise ValueError(f"prior_quantile_grid needs a prior with independent marginals "
                         f"(Independent or MultivariateNormalDiag), not {type(prior).__name__}")
    values = np.asarray(marginal.quantile(probs[:, None].astype(np.float32)))
    if values.ndim != 2 or values.shape[1] != 2:
        raise ValueError("prior_quantile_grid needs a prior over a 2-D latent space")
    return values[:, 0], values[:, 1]


def grid_codes(z1_values, z2_values) -> np.ndarray:
    """The ``[n2 * n1, 2]`` codes of a manifold grid, top row (largest ``z2``) first."""
    z1 = np.asarray(z1_values, np.float32)
    z2 = np.asarray(z2_values, np.float32)[::-1]
    zz1, zz2 = np.meshgrid(z1, z2)
    return np.stack([zz1.ravel(), zz2.ravel()], axis=1)


def plot_manifold(model, z1_values, z2_values, title: str | None = None, ax=None):
    """Decode a grid of codes and show the images at their places.

    ``model`` is any object whose ``generate(z)`` returns p(x|z) as a TFP distribution
    (the student's VAE or the package's): each tile is the mean of p(x|z) at its code.
    The axes are labelled with the code values at the tile centres.
    """
    z1_values = np.asarray(z1_values, np.float32)
    z2_values = np.asarray(z2_values, np.float32)
    n1, n2 = len(z1_values), len(z2_values)
    images = np.asarray(model.generate(grid_codes(z1_values, z2_values)).mean())
    fig, ax = _figure(ax, (0.42 * n1 + 1.2, 0.42 * n2 + 1.0))
    h, w = IMAGE_SHAPE
    ax.imshow(tile_images(images, n2, n1, pad=0), cmap="gray", vmin=0.0, vmax=1.0,
              interpolation="nearest")
    step = max(1, n1 // 5)
    ax.set_xticks([(j + 0.5) * w - 0.5 for j in range(0, n1, step)])
    ax.set_xticklabels([f"{v:.2f}" for v in z1_values[::step]])
    ax.set_yticks([(i + 0.5) * h - 0.5 for i in range(0, n2, step)])
    ax.set_yticklabels([f"{v:.2f}" for v in z2_values[::-1][::step]])
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_contingency(table, title: str | None = None, ax=None, row_label: str = "digit",
                     col_label: str = "code"):
    """A contingency table as a heat map with the counts written in the cells.

    Args:
        table: ``[rows, cols]`` counts (``discrete.contingency_table``: digits by codes).
        title: the axes' title.
        row_label, col_label: what the rows and columns are.
    """
    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"plot_contingency needs a 2-D table, got shape {table.shape}")
    fig, ax = _figure(ax, (0.55 * table.shape[1] + 1.5, 0.5 * table.shape[0] + 1.0))
    ax.imshow(table, cmap="Blues", aspect="auto")
    high = table.max() / 2 if table.size else 0
    for (i, j), count in np.ndenumerate(table):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > high else "black")
    ax.set_xticks(range(table.shape[1]))
    ax.set_yticks(range(table.shape[0]))
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_learning_curves(history, title: str | None = None):
    """Train and test ELBO, reconstruction and KL per epoch: one panel per quantity the
    history has (the ELBO always; a loop that records only the ELBO gets one panel).

    Args:
        history: a ``training.History``, or its rows (dicts with ``epoch``, ``train_elbo``,
            and optionally ``test_elbo``, ``train_reconstruction``, ... as in
            ``history.csv``; missing or ``None`` values are not drawn).
    """
    rows = getattr(history, "rows", history)
    if not rows:
        raise ValueError("the history has no epochs to plot")
    epoch = np.array([r["epoch"] for r in rows])

    def column(name):
        return np.array([np.nan if r.get(name) is None else r[name] for r in rows], float)

    panels = [(key, label) for key, label in [("elbo", "ELBO (nats / image)"),
                                              ("reconstruction", "E_q[log p(x|z)] (nats)"),
                                              ("kl", "KL(q(z|x) || p(z)) (nats)")]
              if key == "elbo" or any(np.isfinite(column(f"{part}_{key}")).any()
                                      for part in ("train", "test"))]
    fig, axes = plt.subplots(1, len(panels), figsize=(13 * len(panels) / 3 + 0.6 * (
        len(panels) == 1), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        ax.plot(epoch, column(f"train_{key}"), label="train", lw=1.5)
        test = column(f"test_{key}")
        if np.isfinite(test).any():
            ax.plot(epoch, test, label="test", lw=1.5)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, run_dir, name: str, dpi: int = 100) -> Path:
    """Write ``fig`` as ``run_dir/figures/name.png`` (atomically) and return the path."""
    import io as _io

    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"figure name {name!r} must be a plain file name without a suffix")
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    path = Path(run_dir) / FIGURES_DIR / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    io.atomic_write_bytes(path, buffer.getvalue())
    return path


def _figure(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax
