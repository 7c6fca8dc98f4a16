"""The matmul-bound limit of the homework network: ``train_speed.py``'s yardstick.

``network_dims`` and ``matmuls_per_image`` count the FLOPs of one training step (the
eleven matrix products of ``train_speed.py``'s docstring); ``MatmulBenchmark`` times
exactly those products, chained as in a real step inside one XLA-compiled loop, and
``summarize_matmul`` turns the timings into GFLOP/s and the images per second that
bound any implementation of the step.
"""

from __future__ import annotations

import math
import statistics
import time

INPUT_POOL = 4  # distinct random input batches the matmul benchmark cycles through
CALL_SECONDS = 0.25  # aim for timed matmul calls about this long


# --------------------------------------------------------------------------- FLOP count
def network_dims(model) -> dict:
    """The homework network's sizes, read from the model: D, H, E (encoder outputs), P."""
    enc = [tuple(layer.w.shape) for layer in model.encoder.layers]
    dec = [tuple(layer.w.shape) for layer in model.decoder.layers]
    if len(enc) != 2 or len(dec) != 2:
        raise SystemExit("error: the matmul benchmark expects one hidden layer per network "
                         f"(the homework's), got encoder {enc} and decoder {dec}")
    (d, h), (_, e) = enc
    (p, h2), (_, d2) = dec
    if h2 != h or d2 != d or e != 2 * p:
        raise SystemExit(f"error: unexpected layer shapes: encoder {enc}, decoder {dec}")
    return {"D": d, "H": h, "E": e, "P": p}


def matmuls_per_image(dims: dict) -> list[dict]:
    """The eleven products of one step, per image: name, role and (m/B)·n·k as FLOPs."""
    d, h, e, p = dims["D"], dims["H"], dims["E"], dims["P"]
    rows = [
        # name, role, shape with B symbolic, n_in*n_out of the layer
        ("x@W1", "forward", f"[B,{d}]@[{d},{h}]", d * h),
        ("h@W2", "forward", f"[B,{h}]@[{h},{e}]", h * e),
        ("z@W3", "forward", f"[B,{p}]@[{p},{h}]", p * h),
        ("h2@W4", "forward", f"[B,{h}]@[{h},{d}]", h * d),
        ("x^T@dh", "weight gradient", f"[{d},B]@[B,{h}]", d * h),
        ("h^T@de", "weight gradient", f"[{h},B]@[B,{e}]", h * e),
        ("z^T@dh2", "weight gradient", f"[{p},B]@[B,{h}]", p * h),
        ("h2^T@dout", "weight gradient", f"[{h},B]@[B,{d}]", h * d),
        ("de@W2^T", "input gradient", f"[B,{e}]@[{e},{h}]", e * h),
        ("dh2@W3^T", "input gradient", f"[B,{h}]@[{h},{p}]", h * p),
        ("dout@W4^T", "input gradient", f"[B,{d}]@[{d},{h}]", d * h),
    ]
    return [{"product": name, "role": role, "shape": shape, "flop_per_image": 2 * mnk}
            for name, role, shape, mnk in rows]


# --------------------------------------------------------------------------- matmul limit
def make_matmul_step(tf, p: int):
    """A compiled function running ``steps`` chained copies of one step's eleven products."""

    def run(x_pool, w1, w2, w3, w4, steps):
        pool = tf.shape(x_pool)[0]

        def body(i, dw1, dw2, dw3, dw4):
            x = tf.gather(x_pool, i % pool)          # [B, D]: a different batch each step
            h = tf.matmul(x, w1)                     # [B, H]
            e = tf.matmul(h, w2)                     # [B, E]
            z = e[:, :p]                             # [B, P]
            h2 = tf.matmul(z, w3)                    # [B, H]
            out = tf.matmul(h2, w4)                  # [B, D]
            dout = out - x                           # [B, D]
            dw4 = tf.matmul(h2, dout, transpose_a=True)
            dh2 = tf.matmul(dout, w4, transpose_b=True)
            dw3 = tf.matmul(z, dh2, transpose_a=True)
            dz = tf.matmul(dh2, w3, transpose_b=True)
            de = tf.concat([dz, e[:, p:]], axis=1)   # [B, E]
            dw2 = tf.matmul(h, de, transpose_a=True)
            dh = tf.matmul(de, w2, transpose_b=True)
            dw1 = tf.matmul(x, dh, transpose_a=True)
            return i + 1, dw1, dw2, dw3, dw4

        start = (tf.constant(0), tf.zeros_like(w1), tf.zeros_like(w2), tf.zeros_like(w3),
                 tf.zeros_like(w4))
        _, dw1, dw2, dw3, dw4 = tf.while_loop(lambda i, *_: i < steps, body, start)
        return dw1, dw2, dw3, dw4

    return tf.function(run, jit_compile=True)


class MatmulBenchmark:
    """The compiled eleven products at one batch size; ``time(repeats)`` gives s/step."""

    def __init__(self, tf, dims: dict, batch: int):
        d, h, e, p = dims["D"], dims["H"], dims["E"], dims["P"]
        gen = tf.random.Generator.from_seed(batch)
        self.tf, self.batch = tf, batch
        # Weights scaled by 1/sqrt(fan-in): the values stay O(1), far from denormals.
        self.args = (gen.uniform([INPUT_POOL, batch, d]),
                     gen.normal([d, h]) / math.sqrt(d), gen.normal([h, e]) / math.sqrt(h),
                     gen.normal([p, h]) / math.sqrt(p), gen.normal([h, d]) / math.sqrt(h))
        self.step_fn = make_matmul_step(tf, p)
        self._call(1)  # compilation
        probe = min(self._call(2), self._call(2)) / 2
        self.steps = max(1, round(CALL_SECONDS / max(probe, 1e-6)))

    def _call(self, steps: int) -> float:
        t0 = time.perf_counter()
        outputs = self.step_fn(*self.args, self.tf.constant(steps))
        _ = [o.numpy() for o in outputs]  # wait for the result
        return time.perf_counter() - t0

    def time(self, repeats: int) -> list[float]:
        """Seconds per step of ``repeats`` timed calls."""
        return [self._call(self.steps) / self.steps for _ in range(repeats)]


def summarize_matmul(bench: MatmulBenchmark, before: list[float], after: list[float],
                     flop_per_image: int) -> dict:
    """The limit from the calls timed just before and just after fit() at this batch."""
    per_step = before + after
    seconds = statistics.median(per_step)
    flop_per_step = flop_per_image * bench.batch
    gflops = flop_per_step / seconds / 1e9
    return {
        "batch_size": bench.batch,
        "steps_per_timed_call": bench.steps,
        "timed_calls": len(per_step),
        "seconds_per_step_median": seconds,
        "seconds_per_step_median_before_fit": statistics.median(before),
        "seconds_per_step_median_after_fit": statistics.median(after),
        "seconds_per_step_min": min(per_step),
        "seconds_per_step_max": max(per_step),
        "flop_per_step": flop_per_step,
        "gflop_per_s": gflops,
        "gflop_per_s_best": flop_per_step / min(per_step) / 1e9,
        "limit_images_per_s": gflops * 1e9 / flop_per_image,
    }


