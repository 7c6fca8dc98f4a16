"""Metrics the grader computes itself from a submission's recorded weights.

A submission records its trained homework VAE as named float32 arrays
(``record.weights``; plain data, read without pickle and checked by
``recorded.load``). Outside the sandbox, the grader loads them into the package's
reference ``VAE`` with the parametrization the student interface fixes
(``model.from_homework_weights``) and computes the metrics the rubric marks
``recompute = true`` (``rubric.COMPUTABLE`` lists what can be) on the MNIST test set
with the reference run's settings (its ``k`` and number of test images). The value
replaces whatever the submission recorded under that name: a submission's own claim
about these metrics is not used.
"""

from __future__ import annotations

import math
from pathlib import Path

from vae_helpers.course import record
from vae_helpers.grading.recorded import Records
from vae_helpers.grading.rubric import Rubric

#: seeds the grader's own Monte Carlo draws (not the submission's)
SEED = 7


def recompute(submission: Records, reference: Records, rubric: Rubric, data: Path) -> None:
    """Put the grader's own values of the rubric's ``recompute`` metrics into
    ``submission`` (in place).

    A metric the reference run does not have is left alone. Without valid weights,
    the metric becomes a problem that says so, whatever the submission recorded.
    """
    wanted = [name for name, rule in rubric.metrics.items()
              if rule.get("recompute") and reference.kind(name) == "metric"]
    if not wanted:
        return
    for name in wanted:
        submission.entries.pop(name, None)
    weights = submission.entries.get(record.WEIGHTS_NAME)
    if weights is None or weights["kind"] != "weights":
        why = submission.problems.get(record.WEIGHTS_NAME, "no weights were recorded")
        for name in wanted:
            submission.problems[name] = (f"not computed: the grader computes {name} from the "
                                         f"recorded weights, and {why}")
        return
    for name in wanted:
        details = reference.entries[name]["details"]
        value, used = _compute(name, weights["arrays"], details, data)
        if not math.isfinite(value):
            submission.problems[name] = (f"computed by the grader from the recorded weights: "
                                         f"{value} (not a finite number)")
            continue
        submission.problems.pop(name, None)
        submission.entries[name] = {"kind": "metric", "value": value,
                                    "details": {**used, "computed_by": "grader"}}


def _compute(name: str, arrays: dict, details: dict, data: Path) -> tuple[float, dict]:
    from vae_helpers import data as data_lib
    from vae_helpers.evaluate import iwae_log_likelihood
    from vae_helpers.model import from_homework_weights

    if name != "iwae_log_likelihood":
        raise ValueError(f"the grader cannot compute {name}")
    model = from_homework_weights(arrays)
    _, (x_test, _) = data_lib.load_mnist(data)
    n_test = details.get("n_test")
    if isinstance(n_test, int) and 0 < n_test < len(x_test):
        x_test = x_test[:n_test]
    k = int(details.get("k") or 1000)
    x = data_lib.test_set(x_test, model.likelihood.data_variant)
    value = iwae_log_likelihood(model, x, k=k, seed=SEED)
    return float(value), {"k": k, "n_test": int(x.shape[0])}
