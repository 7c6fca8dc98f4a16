"""Tests of vae_helpers.plots: tile layout, grid codes, quantiles, figures and PNG files."""

from __future__ import annotations

from statistics import NormalDist

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from vae_helpers import plots
from vae_helpers.model import VAE

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def numbered_images(n, h=28, w=28):
    """Image i is filled with the value i, so a tile's position tells which image it is."""
    return np.repeat(np.arange(n, dtype=np.float32)[:, None], h * w, axis=1)


def test_tile_images_places_images_row_by_row_with_padding():
    tiled = plots.tile_images(numbered_images(6), rows=2, cols=3, pad=1, pad_value=-1)
    assert tiled.shape == (2 * 29 - 1, 3 * 29 - 1)
    for i in range(2):
        for j in range(3):
            tile = tiled[i * 29:i * 29 + 28, j * 29:j * 29 + 28]
            assert np.all(tile == i * 3 + j)
    assert np.all(tiled[28, :] == -1) and np.all(tiled[:, 28] == -1)


def test_tile_images_accepts_square_images_and_no_padding():
    images = numbered_images(4).reshape(4, 28, 28)
    tiled = plots.tile_images(images, 2, 2, pad=0)
    assert tiled.shape == (56, 56)
    assert tiled[0, 0] == 0 and tiled[0, 28] == 1 and tiled[28, 0] == 2 and tiled[55, 55] == 3


def test_tile_images_names_the_wrong_count():
    with pytest.raises(ValueError, match="10x10 = 100 images of 28x28 pixels, got .*99, 784"):
        plots.tile_images(np.zeros((99, 784)), 10, 10)


def test_grid_codes_top_row_has_the_largest_z2_and_z1_grows_to_the_right():
    codes = plots.grid_codes([0.0, 1.0, 2.0], [-1.0, 1.0])
    np.testing.assert_array_equal(codes, [[0, 1], [1, 1], [2, 1], [0, -1], [1, -1], [2, -1]])


def test_range_grid_spans_min_to_max_of_each_axis():
    z = np.array([[0.0, -3.0], [2.0, 5.0], [1.0, 0.0]])
    z1, z2 = plots.range_grid(z, n=5)
    np.testing.assert_allclose(z1, np.linspace(0, 2, 5))
    np.testing.assert_allclose(z2, np.linspace(-3, 5, 5))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plots.range_grid(np.zeros((4, 3)))


def test_prior_quantile_grid_matches_the_standard_normal_inverse_cdf():
    prior = VAE(latent_dim=2, hidden_units=[8], seed=0).prior_distribution()
    z1, z2 = plots.prior_quantile_grid(prior, n=20)
    expected = [NormalDist().inv_cdf((i + 0.5) / 20) for i in range(20)]
    np.testing.assert_allclose(z1, expected, atol=1e-5)
    np.testing.assert_allclose(z2, expected, atol=1e-5)
    t1, _ = plots.prior_quantile_grid(prior, n=3, tail=0.05)
    np.testing.assert_allclose(t1, [NormalDist().inv_cdf(p) for p in (0.05, 0.5, 0.95)],
                               atol=1e-5)


def test_plot_manifold_decodes_each_code_at_its_tile():
    class Likelihood:
        def __init__(self, mean):
            self._mean = mean

        def mean(self):
            return self._mean

    class Model:  # the mean image = constant z1 + 10 * z2, so every tile shows its own code
        def generate(self, z):
            z = np.asarray(z)
            return Likelihood(np.repeat((z[:, :1] + 10 * z[:, 1:]), 784, axis=1))

    fig = plots.plot_manifold(Model(), [0.0, 0.05], [0.0, 0.01, 0.02])
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (3 * 28, 2 * 28)
    assert image[0, 0] == pytest.approx(0.2) and image[0, 28] == pytest.approx(0.25)
    assert image[2 * 28, 0] == pytest.approx(0.0)
    assert fig.axes[0].get_xlabel() == "$z_1$"


def test_plot_latent_scatter_has_one_legend_entry_per_digit():
    rng = np.random.default_rng(0)
    fig = plots.plot_latent_scatter(rng.normal(size=(200, 2)), np.arange(200) % 10)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [str(d) for d in range(10)]
    total = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert total == 200
    small = plots.plot_latent_scatter(rng.normal(size=(200, 2)), np.arange(200) % 10,
                                      max_points=50)
    assert sum(len(c.get_offsets()) for c in small.axes[0].collections) == 50


def drawn_points(fig):
    """The scatter's points in drawing order: ``(offsets [N, 2], digit of each point)``,
    the digit read back from the point's colour in the documented palette."""
    from matplotlib.colors import to_rgb

    (collection,) = fig.axes[0].collections
    palette = np.array([to_rgb(c) for c in plots.DIGIT_COLOURS])
    faces = collection.get_facecolors()[:, :3]
    distance = np.abs(faces[:, None, :] - palette[None]).sum(-1)
    assert np.allclose(distance.min(axis=1), 0.0)          # every colour is the palette's
    return np.asarray(collection.get_offsets()), distance.argmin(axis=1)


def test_latent_scatter_draws_a_seeded_shuffle_in_the_documented_palette():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 30)                  # given sorted by digit
    z = rng.normal(size=(300, 2)) + labels[:, None]
    offsets, digits = drawn_points(plots.plot_latent_scatter(z, labels, seed=3))
    # each drawn point is one code, each code drawn once: a permutation of the input
    order = [int(np.flatnonzero(np.all(z.astype(np.float32) == p, axis=1))[0]) for p in offsets]
    assert sorted(order) == list(range(300))
    np.testing.assert_array_equal(digits, labels[order])   # and coloured by its own digit
    assert np.any(np.diff(digits) < 0)                     # not drawn digit by digit
    # the palette is Petroff's ten colours, as matplotlib ships them when it does
    import matplotlib

    sequences = getattr(matplotlib, "color_sequences", {})
    if "petroff10" in sequences:
        from matplotlib.colors import to_hex

        assert [to_hex(c) for c in sequences["petroff10"]] == list(plots.DIGIT_COLOURS)
    assert len(set(plots.DIGIT_COLOURS)) == 10
    legend = [h.get_color() for h in plt.gcf().axes[0].get_legend().legend_handles]
    assert legend == list(plots.DIGIT_COLOURS)
    # the same seed draws the same figure; another seed another order
    again, _ = drawn_points(plots.plot_latent_scatter(z, labels, seed=3))
    other, _ = drawn_points(plots.plot_latent_scatter(z, labels, seed=4))
    np.testing.assert_array_equal(offsets, again)
    assert not np.array_equal(offsets, other)
    plt.close("all")


def test_latent_scatter_title_carries_a_note():
    fig = plots.plot_latent_scatter(np.zeros((10, 2)), np.arange(10), title="codes",
                                    note="(stand-in: 5 epochs)")
    assert fig.axes[0].get_title() == "codes (stand-in: 5 epochs)"
    plt.close(fig)


@pytest.mark.parametrize("z, labels, message", [
    (np.zeros((5, 3)), np.zeros(5), r"2-D codes \[N, 2\]"),
    (np.zeros((5, 2)), np.zeros(4), "5 codes but 4 labels"),
    (np.zeros((2, 2)), np.array([0, 10]), r"digit labels must be 0..9"),
])
def test_plot_latent_scatter_rejects_bad_input(z, labels, message):
    with pytest.raises(ValueError, match=message):
        plots.plot_latent_scatter(z, labels)


def test_plot_learning_curves_draws_train_and_test_and_skips_missing_test_values():
    rows = [dict(epoch=e, train_elbo=-100.0 + e, test_elbo=-101.0 + e, train_reconstruction=-90.0,
                 test_reconstruction=-91.0, train_kl=10.0, test_kl=10.0) for e in (1, 2, 3)]
    fig = plots.plot_learning_curves(rows)
    assert len(fig.axes) == 3
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2]
    np.testing.assert_array_equal(fig.axes[0].lines[1].get_ydata(), [-100, -99, -98])
    no_test = [{**r, "test_elbo": None, "test_reconstruction": None, "test_kl": None}
               for r in rows]
    assert [len(ax.lines) for ax in plots.plot_learning_curves(no_test).axes] == [1, 1, 1]
    # a loop that records only the ELBO (the student interface's train) gets one panel
    elbo_only = [dict(epoch=e, train_elbo=-100.0 + e, test_elbo=-101.0 + e, seconds=1.0)
                 for e in (1, 2, 3)]
    fig = plots.plot_learning_curves(elbo_only)
    assert [ax.get_title() for ax in fig.axes] == ["ELBO (nats / image)"]
    assert [len(ax.lines) for ax in fig.axes] == [2]
    with pytest.raises(ValueError, match="no epochs"):
        plots.plot_learning_curves([])


def test_plot_learning_curves_draws_sigma2_when_the_history_has_it():
    sigma2 = [0.1, 0.03, 0.02]
    rows = [dict(epoch=e, train_elbo=-100.0 + e, test_elbo=-101.0 + e, sigma2=v, seconds=1.0)
            for e, v in zip((1, 2, 3), sigma2, strict=True)]
    fig = plots.plot_learning_curves(rows)
    assert [ax.get_title() for ax in fig.axes] == ["ELBO (nats / image)", "learned σ² of p(x|z)"]
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), sigma2)
    assert fig.axes[1].get_yscale() == "log"
    # a model without a learned scalar variance records None: no panel
    assert len(plots.plot_learning_curves([{**r, "sigma2": None} for r in rows]).axes) == 1
    # all four quantities: a 2 x 2 grid about a notebook wide
    full = [dict(r, train_reconstruction=-90.0, train_kl=10.0) for r in rows]
    fig = plots.plot_learning_curves(full)
    assert len(fig.axes) == 4 and fig.get_size_inches()[0] <= 10.5
    plt.close("all")


def test_save_figure_writes_a_png_under_figures(tmp_path):
    fig = plots.plot_grid(numbered_images(4) / 4, 2, 2, "four")
    path = plots.save_figure(fig, tmp_path / "run", "tiny_grid")
    assert path == tmp_path / "run" / "figures" / "tiny_grid.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(path).ndim == 3
    assert [p.name for p in path.parent.iterdir()] == ["tiny_grid.png"]  # no temporary left


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden"])
def test_save_figure_rejects_names_that_are_not_plain(tmp_path, name):
    with pytest.raises(ValueError, match="plain file name"):
        plots.save_figure(plt.figure(), tmp_path, name)


def test_the_scatter_legend_can_be_left_out_for_shared_figures():
    z = np.random.default_rng(0).normal(size=(50, 2))
    labels = np.arange(50) % 10
    fig, axes = plt.subplots(1, 2)
    plots.plot_latent_scatter(z, labels, ax=axes[0], legend=False)
    plots.plot_latent_scatter(z, labels, ax=axes[1])
    assert axes[0].get_legend() is None and len(axes[1].get_legend().texts) == 10
    plt.close(fig)


def test_prior_quantile_grid_of_a_laplace_prior_is_its_inverse_cdf():
    from vae_helpers.distributions import make_prior

    z1, z2 = plots.prior_quantile_grid(make_prior("laplace", 2, scale=0.5)(), 4)
    probs = (np.arange(4) + 0.5) / 4
    # the Laplace(0, b) quantile: b log(2p) below 1/2, -b log(2 - 2p) above
    expected = np.where(probs < 0.5, 0.5 * np.log(2 * probs), -0.5 * np.log(2 - 2 * probs))
    np.testing.assert_allclose(z1, expected, rtol=1e-5)
    np.testing.assert_allclose(z2, expected, rtol=1e-5)


def test_plot_contingency_writes_every_nonzero_count_in_its_cell():
    table = np.array([[5, 0, 1], [0, 7, 0]])
    fig = plots.plot_contingency(table, title="t")
    ax = fig.axes[0]
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
               for t in ax.texts}
    assert written == {(0, 0): "5", (0, 2): "1", (1, 1): "7"}
    assert ax.get_xlabel() == "code" and ax.get_ylabel() == "digit"
    np.testing.assert_array_equal(ax.images[0].get_array(), table)
    plt.close(fig)
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_contingency(np.arange(3))


def test_contingency_marks_dead_codes_and_names_them_in_the_title():
    table = np.array([[5, 0, 0, 1], [0, 0, 7, 0], [2, 0, 0, 0]])   # code 1 never used
    fig = plots.plot_contingency(table, title="accuracy 90%", note="(stand-in: 5 epochs)")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1†", "2", "3"]
    assert ax.get_title() == "accuracy 90% (stand-in: 5 epochs)\n† dead code 1: no image assigned"
    (patch,) = ax.patches                                  # one hatched column, over code 1
    assert patch.get_x() == 0.5 and patch.get_width() == 1.0 and patch.get_hatch() == "///"
    assert plots.dead_columns(table) == [1]
    alive = plots.plot_contingency(table[:, [0, 2, 3]], title="t")
    assert alive.axes[0].get_title() == "t" and not alive.axes[0].patches
    plt.close("all")


def test_class_examples_leave_out_dead_classes_and_say_so():
    k, n = 4, 3
    images = np.stack([np.full(784, (c + 1) / 10) for c in range(k) for _ in range(1 + n)])
    counts = np.array([12, 0, 3, 0])
    fig = plots.plot_class_examples(images, counts, n, title="classes")
    ax = fig.axes[0]
    shown = ax.get_images()[0].get_array()
    assert shown.shape == (2 * 28 + 1, (1 + n) * 28 + n)   # two rows: classes 0 and 2
    assert shown[0, 0] == pytest.approx(0.1) and shown[29, 0] == pytest.approx(0.3)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0 (12)", "2 (3)"]
    assert ax.get_title() == "classes\ndead classes 1, 3 (no image assigned): not shown"
    with pytest.raises(ValueError, match="no class has an image"):
        plots.plot_class_examples(images, np.zeros(k), n)
    plt.close("all")


def test_range_grid_from_quantiles_ignores_planted_outliers():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 2))
    z[:5] = [[80.0, -60.0], [-90.0, 70.0], [50.0, 50.0], [-70.0, -40.0], [60.0, 90.0]]
    z1, z2 = plots.range_grid(z, 7, quantiles=(0.01, 0.99))
    normal = NormalDist()
    for values in (z1, z2):          # near N(0, 1)'s 1st and 99th percentiles, +-2.33
        assert values[0] == pytest.approx(normal.inv_cdf(0.01), abs=0.25)
        assert values[-1] == pytest.approx(normal.inv_cdf(0.99), abs=0.25)
        assert np.allclose(np.diff(values), np.diff(values)[0], rtol=1e-4)
    full1, _ = plots.range_grid(z, 7)
    assert full1[0] == -90.0 and full1[-1] == 80.0         # min..max: the outliers
    with pytest.raises(ValueError, match="quantiles must be"):
        plots.range_grid(z, 7, quantiles=(0.9, 0.1))


def test_manifolds_one_per_row_at_notebook_width():
    class Mean:
        def __init__(self, z):
            self.z = np.asarray(z)

        def mean(self):
            return np.full((len(self.z), 784), 0.5)

    class Model:
        def generate(self, z):
            return Mean(z)

    z1, z2 = np.linspace(-2, 2, 20), np.linspace(-2, 2, 20)
    fig = plots.plot_manifolds([(Model(), z1, z2, f"model {i}") for i in range(3)],
                               note="(stand-in: 5 epochs)")
    assert fig.get_size_inches()[0] == pytest.approx(plots.NOTEBOOK_WIDTH)
    assert [ax.get_title() for ax in fig.axes] == [f"model {i} (stand-in: 5 epochs)"
                                                   for i in range(3)]
    boxes = [ax.get_position() for ax in fig.axes]          # stacked, not side by side
    assert boxes[0].y0 > boxes[1].y0 > boxes[2].y0
    assert all(im.get_array().shape == (560, 560) for ax in fig.axes for im in ax.get_images())
    single = plots.plot_manifold(Model(), z1, z2, figsize=(6.0, 6.5))
    assert tuple(single.get_size_inches()) == (6.0, 6.5)
    plt.close("all")
