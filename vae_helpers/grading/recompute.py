"""Metrics the grader computes itself from a submission's recorded weights.

A submission records its trained homework VAE as named float32 arrays
(``record.weights``; plain data, read without pickle and checked by
``recorded.load``). Outside the sandbox, the grader loads them into the package's
reference ``VAE`` with the parametrization the student interface fixes
(``model.from_homework_weights``) and computes the metrics the rubric marks
``recompute = true`` (``rubric.COMPUTABLE`` lists what can be) on the MNIST test set
with the reference run's settings (its number of test images, and the IWAE bound's
``k``):

``test_elbo``
    the mean ELBO of the test images (``data.test_set``, their one fixed
    dequantization), from ``ELBO_DRAWS`` draws of z per image. The spread of each
    image's draws gives the Monte Carlo standard error of a one-draw estimate such as
    the notebook's, which the ``reported.test_elbo`` check uses;
``iwae_log_likelihood``
    the importance-weighted bound with the reference's ``k``.

The value replaces whatever the submission recorded under that name: a submission's
own claim is kept apart, in ``Records.claimed``, and compared with the recomputed
value only (check ``reported.NAME``, for metrics the rubric marks ``reported = true``).

``load`` puts the weights into the reference VAE and prepares the test images once;
``recompute`` and ``regenerate`` use what it loaded. ``regenerate`` draws the graded
figures again from the same weights (samples from the prior, reconstructions of fixed
test digits, the test set's latent scatter and the manifold over the codes' range), for
the report to show beside the submission's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_helpers.course import record
from vae_helpers.grading.recorded import Records
from vae_helpers.grading.rubric import Rubric

#: seeds the grader's own Monte Carlo draws (not the submission's)
SEED = 7
#: draws of z per test image for the recomputed test ELBO
ELBO_DRAWS = 4
#: the test digits whose reconstructions the report shows (chosen with this seed)
FIGURE_SEED = 0


@dataclass
class Loaded:
    """A submission's recorded weights in the reference VAE, with the test images every
    recomputed metric and figure uses (the reference run's number of them, in the model's
    data variant); ``model`` is ``None`` and ``problem`` says why when they cannot be used."""

    model: object = None
    x: object = None
    labels: object = None
    problem: str | None = None


def load(submission: Records, reference: Records, data: Path) -> Loaded:
    """The recorded weights of ``submission`` in the reference VAE, and the test set, once
    for ``recompute`` and ``regenerate``."""
    from vae_helpers import data as data_lib
    from vae_helpers.model import from_homework_weights

    weights = submission.entries.get(record.WEIGHTS_NAME)
    if weights is None or weights["kind"] != "weights":
        return Loaded(problem=submission.problems.get(record.WEIGHTS_NAME,
                                                      "no weights were recorded"))
    try:
        model = from_homework_weights(weights["arrays"])
    except (ValueError, ArithmeticError) as err:  # weights the reference VAE cannot use
        return Loaded(problem=f"the reference VAE cannot hold them: {err}")
    _, (x_test, labels) = data_lib.load_mnist(data)
    counts = [(reference.entries.get(n) or {}).get("details", {}).get("n_test")
              for n in ("test_elbo", "iwae_log_likelihood")]
    n_test = next((n for n in counts if isinstance(n, int) and not isinstance(n, bool)), None)
    if n_test is not None and 0 < n_test < len(x_test):
        x_test, labels = x_test[:n_test], labels[:n_test]
    return Loaded(model, data_lib.test_set(x_test, model.likelihood.data_variant), labels)


def recompute(submission: Records, reference: Records, rubric: Rubric, loaded: Loaded) -> None:
    """Put the grader's own values of the rubric's ``recompute`` metrics, computed with
    ``loaded`` (``load``), into ``submission`` (in place), and what the submission recorded
    under those names into ``submission.claimed``.

    A metric the reference run does not have is left alone. Without usable weights, the
    metric becomes a problem that says so, whatever the submission recorded.
    """
    wanted = [name for name, rule in rubric.metrics.items()
              if rule.get("recompute") and reference.kind(name) == "metric"]
    for name in wanted:
        submission.claimed[name] = (submission.entries.pop(name, None),
                                    submission.problems.get(name))
        if loaded.model is None:
            submission.problems[name] = (f"not computed: the grader computes {name} from the "
                                         f"recorded weights, and {loaded.problem}")
            continue
        try:
            value, used = _compute(name, loaded.model, loaded.x,
                                   reference.entries[name]["details"])
        except (ValueError, ArithmeticError) as err:  # what these weights cannot give
            submission.problems[name] = f"not computed from the recorded weights: {err}"
            continue
        if not math.isfinite(value):
            submission.problems[name] = (f"computed by the grader from the recorded weights: "
                                         f"{value} (not a finite number)")
            continue
        submission.problems.pop(name, None)
        submission.entries[name] = {"kind": "metric", "value": value,
                                    "details": {**used, "computed_by": "grader"}}


def _compute(name: str, model, x, details: dict) -> tuple[float, dict]:
    from vae_helpers.evaluate import evaluate_elbo, iwae_log_likelihood

    if name == "test_elbo":
        draws = np.stack([evaluate_elbo(model, x, seed=SEED + i, per_example=True)["elbo"]
                          for i in range(ELBO_DRAWS)]).astype(np.float64)  # [draws, N]
        noise = float(draws.var(axis=0, ddof=1).mean())  # an image's variance over z
        return float(draws.mean()), {"n_test": int(x.shape[0]), "draws": ELBO_DRAWS,
                                     "noise_variance": noise}
    if name == "iwae_log_likelihood":
        k = int(details.get("k") or 1000)
        value = iwae_log_likelihood(model, x, k=k, seed=SEED)
        return float(value), {"k": k, "n_test": int(x.shape[0])}
    raise ValueError(f"the grader cannot compute {name}")


def standard_error(entry: dict) -> float | None:
    """The standard error of the difference between a one-draw estimate of the test ELBO
    on the same images (as a notebook reports it) and the grader's ``entry``; ``None``
    when ``entry`` does not carry the noise of its draws."""
    details = entry.get("details") or {}
    noise, n, draws = (details.get(k) for k in ("noise_variance", "n_test", "draws"))
    if not all(isinstance(v, (int, float)) for v in (noise, n, draws)) or n <= 0:
        return None
    return math.sqrt(noise * (1.0 / n + 1.0 / (n * draws)))


def regenerate(loaded: Loaded) -> dict:
    """The graded figures drawn again from the recorded weights (``load``), as PNG bytes
    by record name (empty without usable weights)."""
    import io as _io

    import matplotlib.pyplot as plt

    from vae_helpers import plots
    from vae_helpers.backend import tf

    model, x = loaded.model, loaded.x
    if model is None:
        return {}
    chosen = np.random.default_rng(FIGURE_SEED).choice(int(x.shape[0]), 100, replace=False)
    real = tf.gather(x, chosen)
    z = tf.random.stateless_normal([100, model.latent_dim], seed=[SEED, 0])
    figures = {
        "samples_10x10": plots.plot_grid(model.decode(z).numpy(), 10, 10,
                                         "100 samples: z ~ p(z), then the mean f(z, w)"),
        "reconstructions_10x10": plots.plot_grids_side_by_side(
            real.numpy(), model.reconstruct(real).numpy(), "100 test digits",
            "their reconstructions f(μ(x), w)"),
    }
    if model.latent_dim == 2:
        codes = np.concatenate([model.infer(x[i:i + 2000]).mean().numpy()
                                for i in range(0, int(x.shape[0]), 2000)])
        figures["latent_scatter"] = plots.plot_latent_scatter(codes, loaded.labels)
        figures["manifold_20x20"] = plots.plot_manifold(
            model, *plots.range_grid(codes, 20), "20×20 manifold over the codes' range")
    found = {}
    for name, fig in figures.items():
        buffer = _io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        found[name] = buffer.getvalue()
    return found
