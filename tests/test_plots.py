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


@pytest.mark.parametrize("z, labels, message", [
    (np.zeros((5, 3)), np.zeros(5), r"2-D codes \[N, 2\]"),
    (np.zeros((5, 2)), np.zeros(4), "5 codes but 4 labels"),
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
