r"""How much the homework's numbers vary from seed to seed, trained by the solution's own loop.

Run ``python benchmarks/seed_spread.py --help`` for the options. For each seed, a
fresh ``vae_homework.VAE(seed=s)`` (``notebooks/vae_homework.py``, the answer key) is
trained by ``vae_homework.train`` on the 60,000 dequantized training images with the
homework's settings (Adam at 0.001, batch 128) for ``--epochs`` epochs; its weights
are loaded into the package's reference VAE (``model.from_homework_weights``) and
evaluated there by ``evaluate.evaluate`` on the 10,000 test images with their one
fixed dequantization: the test ELBO and the IWAE bound with ``--iwae-k`` samples.
This is how a grader recomputes a student's numbers from the weights alone.

The table gives each seed's numbers, their mean and sample standard deviation, three
standard deviations, and the reference run's numbers (``03_train``: 142.39 and 156.66
at k = 1000) with the shipped rubric's tolerances beside them. The standard deviation
across seeds is the spread of independent students who all solve the homework
correctly: the rubric's tolerances are three of them, from this script's results.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (
    add_json_option,
    inputs_or_say_why,
    load_student_module,
    machine_description,
    note,
    write_results,
)

from vae_helpers.argtypes import non_negative_int, positive_int, positive_int_list

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "seed_spread.json"
REFERENCE = {"test_elbo": 142.39, "iwae_log_likelihood": 156.66, "iwae_k": 1000}


def rubric_tolerances() -> dict:
    """The shipped rubric's tolerance of each metric (nats per image)."""
    from vae_helpers.grading import rubric

    return {name: rule["tolerance"] for name, rule in rubric.load().metrics.items()}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train the homework's solution (notebooks/vae_homework.py) with several "
                    "seeds and recompute each model's test ELBO and IWAE bound from its "
                    "weights with the package's reference VAE. Needs VAE_MNIST. Nothing is "
                    "asserted: a table is printed and JSON written.")
    parser.add_argument("--seeds", type=positive_int_list, default=[1, 2, 3], metavar="S1,S2,...",
                        help="comma-separated seeds (default: 1,2,3)")
    parser.add_argument("--epochs", type=positive_int, default=100,
                        help="epochs per model (default: 100, the reference run's)")
    parser.add_argument("--iwae-k", type=non_negative_int, default=1000,
                        help="importance samples of the IWAE bound; 0 skips it (default: 1000)")
    add_json_option(parser, DEFAULT_JSON)
    return parser.parse_args(argv)


def train_and_evaluate(module, x_train, x_test, seed: int, epochs: int, iwae_k: int) -> dict:
    from vae_helpers import evaluate, model

    vae = module.VAE(seed=seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        rows = module.train(vae, x_train, epochs=epochs, run_dir=run_dir, seed=seed,
                            progress=False)
    seconds = time.perf_counter() - start
    reference = model.from_homework_weights({n: v.numpy() for n, v in vae.weights().items()})
    metrics = evaluate.evaluate(reference, x_test, k=iwae_k, seed=0)
    return {"seed": seed, "train_seconds": seconds, "final_train_elbo": rows[-1]["train_elbo"],
            "test_elbo": metrics["test_elbo"], "test_kl": metrics["test_kl"],
            "iwae_log_likelihood": metrics["iwae_log_likelihood"], "iwae_k": iwae_k}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def render(results: dict) -> str:
    k = results["settings"]["iwae_k"]
    lines = [f"The solution trained {results['settings']['epochs']} epochs per seed; metrics "
             "recomputed from the weights (nats per image, test set)", "",
             f"{'seed':>6}{'train s':>9}{'train ELBO':>12}{'test ELBO':>11}{'KL':>7}"
             f"{f'IWAE-{k}':>12}"]
    for r in results["runs"]:
        iwae = "" if r["iwae_log_likelihood"] is None else f"{r['iwae_log_likelihood']:.2f}"
        lines.append(f"{r['seed']:>6}{r['train_seconds']:>9.0f}{r['final_train_elbo']:>12.2f}"
                     f"{r['test_elbo']:>11.2f}{r['test_kl']:>7.2f}{iwae:>12}")
    for key, label in (("test_elbo", "test ELBO"), ("iwae_log_likelihood", f"IWAE-{k}")):
        s = results["spread"].get(key)
        if not s:
            continue
        sd = "n/a" if s["sd"] is None else f"{s['sd']:.2f}"
        line = (f"{label}: mean {s['mean']:.2f}, sd {sd}, range {s['min']:.2f} to "
                f"{s['max']:.2f}")
        if s["sd"] is not None:
            line += f", 3 sd {3 * s['sd']:.2f}"
        if key == "test_elbo" or k == REFERENCE["iwae_k"]:
            tolerance = results["rubric_tolerance"].get(key)
            line += (f"; reference run {REFERENCE[key]:.2f} ± {tolerance:g} (rubric), "
                     f"mean - reference {s['mean'] - REFERENCE[key]:+.2f}")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from vae_helpers.backend import tf, tfp

    mnist = inputs_or_say_why(args.json)
    if mnist is None:
        return 1
    (x_train, _), (x_test, _) = mnist
    module = load_student_module()
    runs = []
    for seed in args.seeds:
        note(f"[seed {seed}] {args.epochs} epochs, then the test ELBO and IWAE-{args.iwae_k} ...")
        runs.append(train_and_evaluate(module, x_train, x_test, seed, args.epochs, args.iwae_k))
    keys = ["test_elbo"] + (["iwae_log_likelihood"] if args.iwae_k else [])
    results = {
        "benchmark": "seed_spread",
        "settings": {"seeds": args.seeds, "epochs": args.epochs, "iwae_k": args.iwae_k,
                     "mnist": os.environ.get("VAE_MNIST")},
        "machine": machine_description(tf, tfp),
        "runs": runs,
        "spread": {key: spread([r[key] for r in runs]) for key in keys},
        "reference_run": REFERENCE,
        "rubric_tolerance": rubric_tolerances(),
        "script_seconds": time.perf_counter() - start,
    }
    write_results(results, render(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
