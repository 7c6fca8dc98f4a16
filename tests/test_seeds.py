"""Several seeds in one call: runs.train_seeds, summarise_seeds, format_mean_se."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

import pytest

from vae_helpers import io
from vae_helpers.runs import format_mean_se, seed_dir, summarise_seeds, train_seeds

pytestmark = pytest.mark.unit


def test_summary_agrees_with_statistics():
    elbos = [-97.25, -98.5, -96.0, -101.125]
    kls = [6.5, 7.25, 6.0, 8.0]
    results = {s: {"test_elbo": e, "test_kl": k, "epochs": 3, "command": "train",
                   "versions": {"numpy": "2"}, "converged": True, "iwae_log_likelihood": None}
               for s, e, k in zip(range(4), elbos, kls, strict=True)}
    summary = summarise_seeds(results)
    assert set(summary) == {"test_elbo", "test_kl", "epochs"}  # numbers only, no bools
    for name, xs in (("test_elbo", elbos), ("test_kl", kls)):
        entry = summary[name]
        assert entry["n"] == 4
        assert entry["mean"] == pytest.approx(statistics.fmean(xs), rel=1e-12)
        assert entry["sd"] == pytest.approx(statistics.stdev(xs), rel=1e-12)
        assert entry["se"] == pytest.approx(statistics.stdev(xs) / math.sqrt(4), rel=1e-12)
    assert summary["epochs"] == {"mean": 3.0, "sd": 0.0, "se": 0.0, "n": 4}
    # a list of metrics is read the same way
    assert summarise_seeds(list(results.values())) == summary


def test_a_metric_missing_from_some_runs_counts_only_where_it_is():
    summary = summarise_seeds([{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 5.0, "b": float("nan")}])
    assert summary["a"]["n"] == 3 and summary["a"]["sd"] == pytest.approx(2.0)
    assert summary["b"] == {"mean": 2.0, "sd": None, "se": None, "n": 1}


def test_format_mean_se():
    xs = [-97.25, -98.5, -96.0]
    entry = summarise_seeds([{"test_elbo": x} for x in xs])["test_elbo"]
    se = statistics.stdev(xs) / math.sqrt(3)
    assert format_mean_se(entry) == f"{statistics.fmean(xs):.2f} ± {se:.2f} (3 seeds)"
    assert format_mean_se(entry, digits=1) == "-97.2 ± 0.7 (3 seeds)"
    assert format_mean_se({"mean": 1.5, "sd": None, "se": None, "n": 1}) == "1.50 (1 seed)"


@pytest.mark.parametrize("seeds, message", [([], "non-empty"), ([0, 0], "distinct"),
                                            ([1, -2], "non-negative"), ([True], "integers")])
def test_bad_seeds_are_refused(tmp_path, seeds, message):
    with pytest.raises(ValueError, match=message):
        train_seeds(tmp_path, seeds, epochs=1)
    assert not any(tmp_path.iterdir())


def test_settings_train_seeds_sets_itself_are_refused(tmp_path):
    with pytest.raises(TypeError, match="seed"):
        train_seeds(tmp_path, [0, 1], seed=3)


def test_seeds_train_into_their_own_directories_and_are_read_back(tmp_path):
    mnist = os.environ.get("VAE_MNIST")
    if not mnist or not Path(mnist).is_file():
        pytest.skip("needs MNIST: set VAE_MNIST to the path of mnist.npz")
    tiny = dict(epochs=1, batch_size=100, iwae_k=0, n_train=300, n_test=200,
                hidden_units=[16], progress=False, data_path=mnist)
    results = train_seeds(tmp_path, [2, 1], **tiny)
    assert list(results) == [2, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed-1", "seed-2"]
    for seed, metrics in results.items():
        out = seed_dir(tmp_path, seed)
        config = io.read_json(out / "config.json")
        assert config["training"]["seed"] == seed and config["model"]["seed"] == seed
        assert io.read_json(out / "metrics.json")["test_elbo"] == metrics["test_elbo"]
    elbos = [m["test_elbo"] for m in results.values()]
    assert len(set(elbos)) == 2  # the seeds made different models
    stamps = {s: (seed_dir(tmp_path, s) / "metrics.json").stat().st_mtime_ns for s in results}
    again = train_seeds(tmp_path, [2, 1], **tiny)
    assert again == results
    assert stamps == {s: (seed_dir(tmp_path, s) / "metrics.json").stat().st_mtime_ns
                      for s in results}, "a complete run is read back, not trained again"
    summary = summarise_seeds(again)
    assert summary["test_elbo"]["n"] == 2
    assert summary["test_elbo"]["mean"] == pytest.approx(statistics.fmean(elbos))
