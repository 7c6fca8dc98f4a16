r"""How fast ``vae_helpers.training.fit`` trains the homework VAE, and how near the limit that is.

Run ``python benchmarks/train_speed.py --help`` for the options. One run measures:

1. **fit() throughput.** ``fit()`` trains a fresh ``VAE()`` (the homework network:
   784-512-4 encoder, 2-512-784 decoder, Gaussian likelihood with a learned scalar
   variance) on the 60,000 MNIST training images with ``progress=False``, for one
   warm-up epoch (it includes the XLA compilation) and then ``--epochs`` timed epochs.
   Images per second come from the per-epoch ``seconds`` of the returned History:
   ``(60000 // B) * B`` images (the images an epoch actually uses) divided by the
   epoch's seconds. The headline is the median over the timed epochs.

2. **The matmul-bound limit** at the same batch size B, measured in the same run.
   One training step of the homework network needs eleven matrix products:

   ==================  =====================================  ===================
   part                product                                shape (m·k @ k·n)
   ==================  =====================================  ===================
   forward             x @ W1, h @ W2, z @ W3, h2 @ W4        [B,784]@[784,512],
                                                              [B,512]@[512,4],
                                                              [B,2]@[2,512],
                                                              [B,512]@[512,784]
   weight gradients    x^T @ dh, h^T @ de, z^T @ dh2,         [784,B]@[B,512], ...
                       h2^T @ dout                            (same m·n·k as fwd)
   input gradients     de @ W2^T, dh2 @ W3^T, dout @ W4^T     [B,4]@[4,512], ...
   ==================  =====================================  ===================

   Layer 1's input gradient (dx = dh @ W1^T) is not needed: the data take no gradient.
   A product of an [m, k] and a [k, n] matrix counts ``2·m·n·k`` FLOPs (one multiply
   and one add per term). With F = forward sum of ``n_in·n_out`` over the four layers
   = 784·512 + 512·4 + 2·512 + 512·784 = 805,888, one image costs
   ``2·(F + F + (F - 784·512)) = 4,032,512`` FLOPs (≈ 4.0 MFLOP): 1,611,776 forward,
   1,611,776 for the weight gradients and 808,960 for the input gradients.

   The eleven products run on random float32 tensors inside one
   ``tf.function(jit_compile=True)`` that loops over many steps in a
   ``tf.while_loop`` (so Python's per-call overhead is amortised, as in ``fit()``).
   To stop XLA from dropping a product whose result is unused, or hoisting one out
   of the loop, the products are chained like a real step: each step reads one of
   four random input batches (chosen by the step number), ``dout = out - x``,
   ``z`` is the first half of the encoder output and ``de`` joins ``dz`` with its
   second half; the four weight gradients are the loop's carried outputs. That is
   the only non-matmul work (a subtraction over [B,784], a slice and a concat:
   well under 1% of the step). ``--repeats`` calls of about a quarter second each
   are timed just before and again just after ``fit()`` at the same batch size, so
   a change in the machine's load during the run affects both sides alike; the time
   per step is the median of all of them, GFLOP/s = FLOPs per step / that time, and
   the limit in images/s = GFLOP/s / FLOPs per image.

3. **The fraction** of that limit reached by ``fit()``: fit images/s / limit images/s.
   Everything a real step does besides the matmuls (data gathering, dequantization
   noise, ReLU/sigmoid, the Gaussian log-density and KL, the non-finite check, Adam
   over 807,701 parameters) is what separates the two.

4. **A plain eager Keras loop written the homework's way**, as the baseline: batch
   128; every step builds new ``tf.keras`` Sequential encoder (784-512-4) and decoder
   (2-512-784, sigmoid output) models and copies the current weights in with
   ``set_weights``; two gradient tapes (encoder, decoder); two Adam optimizers; a
   Gaussian log-likelihood with a learned scalar variance and the closed-form KL, on
   pixels scaled to [0, 1] (NumPy indexing and ``/ 255`` each step). It is timed
   over ``--eager-steps`` steps after 5 warm-up steps, and ``fit()``'s speed-up at
   batch 128 is fit images/s / eager images/s.

5. **The machine**: CPU model (``/proc/cpuinfo``), ``os.cpu_count()``, the load
   average before and after, the Python/TensorFlow/TFP/NumPy/Keras versions, and for
   each measurement the share of the CPUs other processes used meanwhile ("others":
   machine-wide busy time from ``/proc/stat`` minus this process's CPU time), so a
   run on a busy machine can be recognised.

Nothing is asserted about time: the targets (fraction ≥ 0.6 at batch 128, speed-up
≥ 25×) are printed beside the numbers. Everything printed is also written as JSON
(default ``benchmarks/results/train_speed.json``). The MNIST file is found by
``vae_helpers.data.load_mnist`` (set ``VAE_MNIST`` to the path of ``mnist.npz``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    CpuMeter,
    add_json_option,
    inputs_or_say_why,
    load_average,
    machine_description,
    noise_note,
    note,
    others,
    write_results,
)
from matmul_limit import MatmulBenchmark, matmuls_per_image, network_dims, summarize_matmul

from vae_helpers.argtypes import non_negative_int, positive_int, positive_int_list

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "train_speed.json"
TARGET_FRACTION = 0.6  # fraction of the matmul-bound limit at batch 128 to aim for
TARGET_SPEEDUP = 25.0  # fit() over the eager homework loop at batch 128
EAGER_BATCH = 128
EAGER_WARMUP_STEPS = 5


# --------------------------------------------------------------------------- arguments
def _batch_sizes(text: str) -> list[int]:
    return list(dict.fromkeys(positive_int_list(text)))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure fit()'s training speed on MNIST at several batch sizes, the "
            "matmul-bound limit of the homework network at each, the fraction reached, "
            "and fit()'s speed-up over a plain eager Keras loop. Needs VAE_MNIST (the "
            "path of mnist.npz) unless MNIST is in the Keras cache. Nothing is asserted: "
            "the numbers are printed as a table and written as JSON."
        ),
    )
    parser.add_argument("--epochs", type=positive_int, default=3,
                        help="timed epochs per batch size, after one warm-up epoch that "
                             "includes the XLA compilation (default: 3)")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=[128, 2048],
                        metavar="B1,B2,...",
                        help="comma-separated batch sizes (default: 128,2048)")
    add_json_option(parser, DEFAULT_JSON)
    parser.add_argument("--eager-steps", type=non_negative_int, default=50, metavar="N",
                        help="timed steps of the eager Keras baseline at batch 128, after "
                             f"{EAGER_WARMUP_STEPS} warm-up steps; 0 skips it (default: 50)")
    parser.add_argument("--repeats", type=positive_int, default=7,
                        help="timed calls of the matmul benchmark just before and again "
                             "just after fit() at each batch size; the median of all is "
                             "reported (default: 7)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- fit()
def measure_fit(x_train, batch: int, epochs: int) -> dict:
    from vae_helpers.model import VAE
    from vae_helpers.training import TrainingSettings, fit

    model = VAE(seed=0)
    history = fit(model, x_train, TrainingSettings(epochs=1 + epochs, batch_size=batch,
                                                   jit_compile=True), progress=False)
    seconds = [float(s) for s in history.column("seconds")]
    images = (len(x_train) // batch) * batch
    rates = [images / s for s in seconds[1:]]
    return {
        "batch_size": batch,
        "images_per_epoch": images,
        "steps_per_epoch": len(x_train) // batch,
        "warmup_epoch_seconds": seconds[0],
        "timed_epoch_seconds": seconds[1:],
        "images_per_s_per_epoch": rates,
        "images_per_s": statistics.median(rates),
        "images_per_s_mean": images * len(rates) / sum(seconds[1:]),
        "final_train_elbo": float(history.last["train_elbo"]),
    }


# --------------------------------------------------------------------------- eager baseline
def measure_eager_loop(tf, x_train, steps: int) -> dict:
    """The homework's way: new Keras models every step, two tapes, Adam, eager."""
    rng = np.random.default_rng(0)
    n_pixels, latent = 784, 2

    def make_encoder():
        return tf.keras.Sequential([
            tf.keras.Input(shape=(n_pixels,)),
            tf.keras.layers.Dense(512, activation="relu"),
            tf.keras.layers.Dense(2 * latent),
        ])

    def make_decoder():
        return tf.keras.Sequential([
            tf.keras.Input(shape=(latent,)),
            tf.keras.layers.Dense(512, activation="relu"),
            tf.keras.layers.Dense(n_pixels, activation="sigmoid"),
        ])

    # The weights live between steps in these variables; each step's fresh models get
    # a copy with set_weights, and Adam updates these from the models' gradients.
    encoder_weights = [tf.Variable(w) for w in make_encoder().get_weights()]
    decoder_weights = [tf.Variable(w) for w in make_decoder().get_weights()]
    log_variance = tf.Variable(math.log(0.1), dtype=tf.float32)
    encoder_optimizer = tf.keras.optimizers.Adam(1e-3)
    decoder_optimizer = tf.keras.optimizers.Adam(1e-3)
    images = x_train.reshape(len(x_train), -1)

    def train_step():
        batch = images[rng.choice(len(images), EAGER_BATCH, replace=False)]
        x = tf.constant(batch.astype(np.float32) / 255.0)
        encoder = make_encoder()
        encoder.set_weights([w.numpy() for w in encoder_weights])
        decoder = make_decoder()
        decoder.set_weights([w.numpy() for w in decoder_weights])
        with tf.GradientTape() as encoder_tape, tf.GradientTape() as decoder_tape:
            params = encoder(x)
            mean, log_var_z = params[:, :latent], params[:, latent:]
            eps = tf.random.normal(tf.shape(mean))
            z = mean + tf.exp(0.5 * log_var_z) * eps
            x_mean = decoder(z)
            variance = tf.exp(log_variance)
            log_lik = (-0.5 * tf.reduce_sum(tf.square(x - x_mean), axis=1) / variance
                       - 0.5 * n_pixels * (math.log(2 * math.pi) + log_variance))
            kl = 0.5 * tf.reduce_sum(tf.exp(log_var_z) + tf.square(mean) - 1.0 - log_var_z,
                                     axis=1)
            loss = -tf.reduce_mean(log_lik - kl)
        encoder_grads = encoder_tape.gradient(loss, encoder.trainable_variables)
        decoder_grads = decoder_tape.gradient(loss, decoder.trainable_variables + [log_variance])
        encoder_optimizer.apply_gradients(zip(encoder_grads, encoder_weights, strict=True))
        decoder_optimizer.apply_gradients(
            zip(decoder_grads, decoder_weights + [log_variance], strict=True))
        return float(loss)

    for _ in range(EAGER_WARMUP_STEPS):
        train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = train_step()
    seconds = time.perf_counter() - t0
    return {
        "batch_size": EAGER_BATCH,
        "warmup_steps": EAGER_WARMUP_STEPS,
        "timed_steps": steps,
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "images_per_s": steps * EAGER_BATCH / seconds,
        "final_loss": loss,
    }


# --------------------------------------------------------------------------- report
def render(results: dict) -> str:
    m = results["machine"]
    f = results["flops"]
    lines = [
        "Training speed of vae_helpers.training.fit (homework VAE, MNIST 60k, float32, CPU)",
        "",
        f"Machine : {m['cpu_model']}, os.cpu_count()={m['cpu_count']} "
        f"(usable {m['usable_cpus']})",
        f"Software: Python {m['python']}, TensorFlow {m['tensorflow']}, "
        f"TFP {m['tensorflow_probability']}, Keras {m['keras']}, NumPy {m['numpy']}",
        f"Load avg: before {results['load_average_before']}, "
        f"after {results['load_average_after']} (1/5/15 min)",
        f"FLOPs   : {f['per_image']:,} per image = {f['per_image'] / 1e6:.3f} MFLOP "
        f"(11 matmuls, 2*m*n*k: forward {f['forward']:,}, weight grads "
        f"{f['weight_gradients']:,}, input grads {f['input_gradients']:,})",
        f"fit()   : 1 warm-up epoch + {results['settings']['epochs']} timed epochs; "
        "images/s = median over the timed epochs [min - max]",
        "limit   : the 11 matmuls alone under XLA, median of the calls timed just before "
        "and just after fit()",
        "others  : share of all CPUs used by other processes meanwhile (0% = idle machine)",
        "",
    ]
    header = (f"{'batch':>5} | {'fit() images/s':>14} {'[min - max]':>19} | "
              f"{'matmul GFLOP/s':>14} | {'limit images/s':>14} | {'fraction':>8} | "
              f"{'others':>6} | target")
    lines += [header, "-" * (len(header) + 12)]
    for row in results["batch_sizes"]:
        fit_r, mm = row["fit"], row["matmul_limit"]
        rates = fit_r["images_per_s_per_epoch"]
        spread = f"[{min(rates):,.0f} - {max(rates):,.0f}]"
        target = ""
        if row["batch_size"] == EAGER_BATCH:
            met = row["fraction_of_limit"] >= TARGET_FRACTION
            target = f">= {TARGET_FRACTION}: {'met' if met else 'NOT met'}"
        lines.append(
            f"{row['batch_size']:>5} | {fit_r['images_per_s']:>14,.0f} {spread:>19} | "
            f"{mm['gflop_per_s']:>14.1f} | {mm['limit_images_per_s']:>14,.0f} | "
            f"{row['fraction_of_limit']:>8.3f} | {others(row.get('cpu')):>6} | {target}")
    lines.append("")
    for row in results["batch_sizes"]:
        mm = row["matmul_limit"]
        flop = mm["flop_per_step"]
        lines.append(
            f"batch {row['batch_size']}: matmul GFLOP/s before fit() "
            f"{flop / mm['seconds_per_step_median_before_fit'] / 1e9:.1f}, after "
            f"{flop / mm['seconds_per_step_median_after_fit'] / 1e9:.1f}, best call "
            f"{mm['gflop_per_s_best']:.1f}; fit() warm-up epoch (compilation) "
            f"{row['fit']['warmup_epoch_seconds']:.1f} s; final train ELBO "
            f"{row['fit']['final_train_elbo']:.1f}")
    lines.append("")
    eager = results["eager_baseline"]
    if eager is None:
        lines.append("Eager Keras baseline: skipped (--eager-steps 0)")
    else:
        lines.append(
            f"Eager Keras baseline (batch {eager['batch_size']}, new models every step, two "
            f"tapes, Adam; {eager['timed_steps']} steps after {eager['warmup_steps']} warm-up): "
            f"{eager['images_per_s']:,.0f} images/s ({eager['seconds_per_step'] * 1e3:.1f} "
            f"ms/step; others {others(eager.get('cpu'))})")
        speedup = results["speedup_at_128"]
        if speedup is None:
            lines.append(f"fit() speed-up at batch {EAGER_BATCH}: n/a "
                         f"({EAGER_BATCH} not among --batch-sizes)")
        else:
            verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
            lines.append(f"fit() speed-up over it at batch {EAGER_BATCH}: {speedup:.1f}x "
                         f"(target >= {TARGET_SPEEDUP:.0f}x: {verdict})")
    lines += noise_note([r.get("cpu") for r in results["batch_sizes"]]
                        + [None if eager is None else eager.get("cpu")])
    lines.append(f"Total script time: {results['script_seconds']:.0f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_before = load_average()

    from vae_helpers.backend import tf, tfp
    from vae_helpers.model import VAE

    mnist = inputs_or_say_why(args.json)
    if mnist is None:
        return 1
    (x_train, _), _ = mnist

    dims = network_dims(VAE(seed=0))
    products = matmuls_per_image(dims)
    flop_per_image = sum(r["flop_per_image"] for r in products)
    by_role = {role: sum(r["flop_per_image"] for r in products if r["role"] == role)
               for role in ("forward", "weight gradient", "input gradient")}

    rows = []
    for batch in args.batch_sizes:
        note(f"[batch {batch}] matmul-bound limit: {args.repeats} timed calls ...")
        meter = CpuMeter()
        bench = MatmulBenchmark(tf, dims, batch)
        before = bench.time(args.repeats)
        note(f"[batch {batch}] fit(): 1 warm-up + {args.epochs} timed epochs ...")
        fit_r = measure_fit(x_train, batch, args.epochs)
        note(f"[batch {batch}] matmul-bound limit again: {args.repeats} timed calls ...")
        limit = summarize_matmul(bench, before, bench.time(args.repeats), flop_per_image)
        rows.append({
            "batch_size": batch,
            "fit": fit_r,
            "matmul_limit": limit,
            "fraction_of_limit": fit_r["images_per_s"] / limit["limit_images_per_s"],
            "cpu": meter.stop(),
        })

    eager = None
    if args.eager_steps:
        note(f"[eager] Keras baseline: {EAGER_WARMUP_STEPS} warm-up + {args.eager_steps} "
              "timed steps ...")
        meter = CpuMeter()
        eager = measure_eager_loop(tf, x_train, args.eager_steps)
        eager["cpu"] = meter.stop()
    fit128 = next((r["fit"]["images_per_s"] for r in rows if r["batch_size"] == EAGER_BATCH),
                  None)
    speedup = None if eager is None or fit128 is None else fit128 / eager["images_per_s"]

    results = {
        "benchmark": "train_speed",
        "settings": {"epochs": args.epochs, "batch_sizes": args.batch_sizes,
                     "eager_steps": args.eager_steps, "repeats": args.repeats,
                     "mnist": os.environ.get("VAE_MNIST")},
        "machine": machine_description(tf, tfp),
        "load_average_before": load_before,
        "network": dims,
        "flops": {"per_image": flop_per_image, "forward": by_role["forward"],
                  "weight_gradients": by_role["weight gradient"],
                  "input_gradients": by_role["input gradient"], "products": products},
        "batch_sizes": rows,
        "eager_baseline": eager,
        "speedup_at_128": speedup,
        "targets": {"fraction_of_limit_at_128": TARGET_FRACTION, "speedup_at_128": TARGET_SPEEDUP},
    }
    results["load_average_after"] = load_average()
    results["script_seconds"] = time.perf_counter() - t_start
    write_results(results, render(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
