"""Figures of the course: image grids, the latent scatter, manifold grids, learning curves,
contingency tables.

Every plotting function returns its ``matplotlib`` figure, so a notebook shows it
and ``save_figure`` writes it as a PNG into the run directory. Nothing here
changes matplotlib's global settings.

Manifold grids decode a regular grid of latent codes: row ``i`` of the picture
holds ``z2 = z2_values[i]`` with ``z2`` decreasing downwards (as on a plot's
y axis), column ``j`` holds ``z1 = z1_values[j]``. ``range_grid`` spans the
observed min..max of the codes (Problem 3b), or a central quantile range of them
when a few far-out codes would waste most tiles; ``prior_quantile_grid`` places the
codes at equally spaced quantiles of the prior's marginals, so every tile stands
for the same prior probability mass (Kingma & Welling, 2014, Fig. 4). A 20×20 grid
is drawn about a notebook wide (``NOTEBOOK_WIDTH``); ``plot_manifolds`` puts several
one below the other rather than side by side.

Figures of a stand-in model (trained for a few epochs when ``03_train``'s run is
missing) say so: the plotting functions take a ``note`` appended to the title,
e.g. ``"(stand-in: 5 epochs)"``.
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


def plot_grid(images, rows: int = 10, cols: int = 10, title: str | None = None, ax=None,
              note: str | None = None):
    """Show ``rows * cols`` images as one grid (grey scale, 0 = black, 1 = white);
    ``note`` is appended to the title (e.g. ``"(stand-in: 5 epochs)"``)."""
    fig, ax = _figure(ax, (0.5 * cols, 0.5 * rows + 0.4))
    ax.imshow(tile_images(images, rows, cols), cmap="gray", vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    title = with_note(title, note)
    if title:
        ax.set_title(title)
    return fig


def plot_grids_side_by_side(left, right, left_title: str, right_title: str,
                            rows: int = 10, cols: int = 10, suptitle: str | None = None,
                            note: str | None = None):
    """Two image grids beside each other (e.g. real digits and model samples); ``note``
    is appended to the figure's title (e.g. ``"(stand-in: 5 epochs)"``)."""
    fig, axes = plt.subplots(1, 2, figsize=(cols + 1, 0.5 * rows + 0.9), squeeze=True)
    plot_grid(left, rows, cols, left_title, ax=axes[0])
    plot_grid(right, rows, cols, right_title, ax=axes[1])
    suptitle = with_note(suptitle, note)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


DIGIT_COLOURS = ("#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6",
                 "#a96b59", "#e76300", "#b9ac70", "#717581", "#92dadd")
"""The ten digits' colours in the latent scatter, digit ``d`` in ``DIGIT_COLOURS[d]``.

M. A. Petroff's ten-colour sequence ("Accessible Color Sequences for Data
Visualization", 2021, arXiv:2107.02270; matplotlib ships it as the colour sequence
``petroff10``). It was chosen by a perceptual model over simulations of the common
colour-vision deficiencies (protanopia, deuteranopia, tritanopia), so its colours stay
apart for most colour-blind readers, and it keeps its lightness differences in grey
scale. The Okabe–Ito palette is the better known colour-blind-safe set but has only 8
colours; ``tab10``, matplotlib's default, puts pairs such as its green and red or its
blue and purple close together for red-green colour blindness.
"""


def plot_latent_scatter(z, labels, title: str = "Test set in latent space (means of q(z|x))",
                        ax=None, max_points: int | None = None, seed: int = 0,
                        legend: bool = True, note: str | None = None):
    """Scatter 2-D latent codes coloured by digit label, with a legend.

    The points are drawn in one seeded random order, not digit by digit, so that no
    digit's points cover another's where classes overlap (drawing the digits one after
    the other would hide the earlier ones under the later ones); the same ``seed`` gives
    the same figure. Each digit has its colour from ``DIGIT_COLOURS``, a colour-blind-safe
    palette (see there).

    Args:
        z: ``[N, 2]`` codes (the means of q(z|x) for the test images).
        labels: ``[N]`` digit labels 0..9.
        title: the axes' title.
        max_points: plot a random subset of this size (all when ``None``).
        seed: seeds the subset and the drawing order.
        legend: draw the legend of the digits (right of the axes); when several
            scatters share a figure, draw it beside the last one only.
        note: words appended to the title, e.g.
            ``"(stand-in: 5 epochs)"`` for a figure that is not the homework's result.
    """
    from matplotlib.lines import Line2D

    z = np.asarray(z, dtype=np.float32)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"plot_latent_scatter needs 2-D codes [N, 2], got shape {z.shape}; "
                         "for a larger latent space project the codes to 2-D first")
    if len(labels) != len(z):
        raise ValueError(f"{len(z)} codes but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(DIGIT_COLOURS)):
        raise ValueError(f"digit labels must be 0..{len(DIGIT_COLOURS) - 1}, got "
                         f"{labels.min()}..{labels.max()}")
    rng = np.random.default_rng(seed)
    if max_points is not None and len(z) > max_points:
        keep = rng.choice(len(z), max_points, replace=False)
        z, labels = z[keep], labels[keep]
    order = rng.permutation(len(z))
    colours = np.array(DIGIT_COLOURS)
    fig, ax = _figure(ax, (7.0, 6.0))
    ax.scatter(z[order, 0], z[order, 1], s=3, alpha=0.6, c=colours[labels[order]],
               rasterized=True)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(with_note(title, note))
    if legend:
        handles = [Line2D([], [], ls="", marker="o", markersize=6, color=colour, label=str(d))
                   for d, colour in enumerate(DIGIT_COLOURS)]
        ax.legend(handles=handles, title="digit", loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False)
    fig.tight_layout()
    return fig


def with_note(title: str | None, note: str | None) -> str | None:
    """``title`` followed by ``note`` (e.g. ``"(stand-in: 5 epochs)"``), or either alone."""
    parts = [part for part in (title, note) if part]
    return " ".join(parts) if parts else None


def range_grid(z, n: int = 20, quantiles: tuple[float, float] | None = None):
    """``n`` equally spaced values over the range of each of the two columns of ``z``.

    Args:
        z: ``[N, 2]`` codes.
        n: values per axis.
        quantiles: ``None`` (the default, Problem 3b): from the smallest to the largest
            code. ``(lo, hi)``, e.g. ``(0.01, 0.99)``: from the ``lo`` to the ``hi``
            quantile of each column, for codes with heavy tails, where a few far-out
            codes would otherwise stretch the grid so that most tiles decode codes no
            test image has.

    Returns:
        ``(z1_values, z2_values)``, each ``[n]``.
    """
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"range_grid needs 2-D codes [N, 2], got shape {z.shape}")
    if quantiles is None:
        lo, hi = z.min(axis=0), z.max(axis=0)
    else:
        q_lo, q_hi = (float(q) for q in quantiles)
        if not 0.0 <= q_lo < q_hi <= 1.0:
            raise ValueError(f"quantiles must be (lo, hi) with 0 <= lo < hi <= 1, e.g. "
                             f"(0.01, 0.99); got {quantiles!r}")
        lo, hi = np.quantile(z, [q_lo, q_hi], axis=0)
    return (np.linspace(lo[0], hi[0], n, dtype=np.float32),
            np.linspace(lo[1], hi[1], n, dtype=np.float32))


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


NOTEBOOK_WIDTH = 10.0
"""Inches: about the width a notebook shows a figure at without shrinking it."""


def plot_manifold(model, z1_values, z2_values, title: str | None = None, ax=None,
                  figsize: tuple[float, float] | None = None, note: str | None = None):
    """Decode a grid of codes and show the images at their places.

    ``model`` is any object whose ``generate(z)`` returns p(x|z) as a TFP distribution
    (the student's VAE or the package's): each tile is the mean of p(x|z) at its code.
    The axes are labelled with the code values at the tile centres.

    Args:
        model: the model.
        z1_values, z2_values: the grid (``range_grid`` or ``prior_quantile_grid``).
        title: the axes' title.
        ax: draw into these axes (e.g. one of ``plot_manifolds``'); else a new figure.
        figsize: the new figure's size in inches; by default about 0.42 inches a tile,
            which makes a 20×20 grid about a notebook wide (``NOTEBOOK_WIDTH``).
        note: words appended to the title, e.g. ``"(stand-in: 5 epochs)"``.
    """
    z1_values = np.asarray(z1_values, np.float32)
    z2_values = np.asarray(z2_values, np.float32)
    n1, n2 = len(z1_values), len(z2_values)
    images = np.asarray(model.generate(grid_codes(z1_values, z2_values)).mean())
    fig, ax = _figure(ax, figsize or (0.42 * n1 + 1.2, 0.42 * n2 + 1.0))
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
    title = with_note(title, note)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_manifolds(panels, width: float = NOTEBOOK_WIDTH, note: str | None = None):
    """Several manifold grids one below the other, in a figure ``width`` inches wide.

    Side by side, three 20×20 grids either make a figure three notebooks wide, which a
    notebook shrinks until the digits are unreadable, or tiles too small to see; one a
    row, each keeps the whole width.

    Args:
        panels: ``(model, z1_values, z2_values, title)`` for each grid, top to bottom.
        width: the figure's width in inches (default ``NOTEBOOK_WIDTH``); each grid is
            drawn about that wide, and the figure as tall as its grids need.
        note: words appended to every grid's title, e.g. ``"(stand-in: 5 epochs)"``.
    """
    panels = list(panels)
    if not panels:
        raise ValueError("plot_manifolds needs at least one (model, z1, z2, title) panel")
    heights = [(width - 1.2) * len(z2) / len(z1) + 1.0 for _, z1, z2, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (model, z1, z2, title) in zip(axes[:, 0], panels, strict=True):
        plot_manifold(model, z1, z2, title=title, ax=ax, note=note)
    fig.tight_layout()
    return fig


def plot_contingency(table, title: str | None = None, ax=None, row_label: str = "digit",
                     col_label: str = "code", note: str | None = None):
    """A contingency table as a heat map with the counts written in the cells.

    A column without a single count (a dead code: no image has it as its most probable
    class) is hatched in grey, its tick reads ``k†``, and the title ends with a line
    naming the dead codes, so an empty column is not mistaken for a drawing fault.

    Args:
        table: ``[rows, cols]`` counts (``discrete.contingency_table``: digits by codes).
        title: the axes' title.
        row_label, col_label: what the rows and columns are.
        note: words appended to the title, e.g. ``"(stand-in: 5 epochs)"``.
    """
    from matplotlib.patches import Rectangle

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
    dead = dead_columns(table)
    for j in dead:
        ax.add_patch(Rectangle((j - 0.5, -0.5), 1.0, table.shape[0], facecolor="0.85",
                               edgecolor="0.55", hatch="///", lw=0.0))
    ax.set_xticks(range(table.shape[1]))
    ax.set_xticklabels([f"{j}†" if j in dead else str(j) for j in range(table.shape[1])])
    ax.set_yticks(range(table.shape[0]))
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    title = with_note(title, note)
    if dead:
        caption = f"† dead {col_label}{'s' if len(dead) > 1 else ''} " \
                  f"{', '.join(map(str, dead))}: no image assigned"
        title = f"{title}\n{caption}" if title else caption
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def dead_columns(table) -> list[int]:
    """The columns of a contingency table without a single count (dead codes)."""
    table = np.asarray(table)
    return [int(j) for j in np.flatnonzero(table.sum(axis=0) == 0)]


def plot_class_examples(images, counts, n_examples: int, title: str | None = None, ax=None,
                        note: str | None = None):
    """``discrete.category_examples``' rows, without the rows of dead classes.

    Row k of ``images`` is class k decoded, then up to ``n_examples`` images assigned to
    it. A class that no image has as its most probable class (a dead class, ``counts[k]
    == 0``) would be a decoded prototype followed by blank tiles: its row is left out,
    and the title names the dead classes instead. Each shown row is labelled with its
    class and how many images it has.

    Args:
        images: ``[K * (1 + n_examples), D]`` (``discrete.category_examples``).
        counts: ``[K]`` images assigned to each class (e.g. a contingency table's column
            sums).
        n_examples: the examples per row after the prototype.
        title: the axes' title.
        note: words appended to the title, e.g. ``"(stand-in: 5 epochs)"``.
    """
    counts = np.asarray(counts).reshape(-1)
    cols = 1 + n_examples
    images = np.asarray(images, np.float32).reshape(len(counts), cols, -1)
    live = np.flatnonzero(counts > 0)
    if not len(live):
        raise ValueError("plot_class_examples: no class has an image assigned (all counts 0)")
    fig, ax = _figure(ax, (0.5 * cols + 1.2, 0.5 * len(live) + 0.8))
    ax.imshow(tile_images(images[live].reshape(len(live) * cols, -1), len(live), cols),
              cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    h, _ = IMAGE_SHAPE
    ax.set_yticks([i * (h + 1) + h / 2 - 0.5 for i in range(len(live))])
    ax.set_yticklabels([f"{k} ({counts[k]})" for k in live], fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    dead = [int(k) for k in np.flatnonzero(counts == 0)]
    title = with_note(title, note)
    if dead:
        caption = (f"dead class{'es' if len(dead) > 1 else ''} "
                   f"{', '.join(map(str, dead))} (no image assigned): not shown")
        title = f"{title}\n{caption}" if title else caption
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_learning_curves(history, title: str | None = None, note: str | None = None):
    """Train and test ELBO, reconstruction and KL per epoch, and the learned σ²: one
    panel per quantity the history has (the ELBO always; a loop that records only the
    ELBO gets one panel).

    The σ² panel (``sigma2``, the likelihood's learned variance after each epoch, on a
    log scale) is drawn when some row has it. Up to three panels stand in one row; four
    make a 2×2 grid, so the figure stays about as wide as a notebook.

    Args:
        history: a ``training.History``, or its rows (dicts with ``epoch``, ``train_elbo``,
            and optionally ``test_elbo``, ``train_reconstruction``, ..., ``sigma2`` as in
            ``history.csv``; missing or ``None`` values are not drawn).
        title: the figure's title.
        note: words appended to the title, e.g. ``"(stand-in: 5 epochs)"``.
    """
    title = with_note(title, note)
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
    sigma2 = column("sigma2")
    if np.isfinite(sigma2).any():
        panels.append(("sigma2", "learned σ² of p(x|z)"))
    cols = len(panels) if len(panels) <= 3 else 2
    grid_rows = -(-len(panels) // cols)
    width = {1: 5.0, 2: 9.0, 3: 13.0}[cols] if len(panels) <= 3 else 10.0
    fig, axes = plt.subplots(grid_rows, cols, figsize=(width, 3.6 * grid_rows), squeeze=False)
    for ax, (key, label) in zip(axes.ravel(), panels, strict=True):
        if key == "sigma2":
            ax.plot(epoch, sigma2, label="σ²", lw=1.5, color="0.25")
            ax.set_yscale("log")
        else:
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
